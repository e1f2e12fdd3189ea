//! Start-up: enforcement begins whole. A program the policy denies and an allowed daemon
//! step the clock without pause, through both paths different hooks decide, from before
//! the agent starts until after it enforces: there is one moment where the whole policy
//! comes into force, never a part of it.

use crate::prelude::*;

/// The probers step until this file exists.
const STOP: &str = "/tmp/probe-steps.stop";

/// `tg-clock probe-steps` from `exe` (the denied copy or the allowed file), its report
/// piped.
fn start_prober(exe: &str) -> Result<std::process::Child, String> {
    Command::new(exe)
        .args(["probe-steps", STOP])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {exe} probe-steps: {e}"))
}

/// Stops a prober and reads its attempts back, each one's errno by sequence number.
fn finish_prober(prober: std::process::Child) -> Result<Vec<i32>, String> {
    let out = prober.wait_with_output().map_err(|e| e.to_string())?;
    let report: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("prober's report: {e}"))?;
    clock::step_outcomes(&report)
}

/// Attempt `seq` as an operator reads it.
fn attempt(seq: usize) -> String {
    format!("attempt {seq} ({})", clock::STEP_PATHS[seq % 2])
}

/// The denied prober: both paths went through before the agent, and from the first
/// refusal on every attempt on either path is refused.
fn judge_denied(outcomes: &[i32]) -> Outcome {
    if outcomes.len() < 2 || outcomes[..2] != [0, 0] {
        return Err(format!(
            "the denied prober was not stepping before the agent started: {:?}",
            &outcomes[..outcomes.len().min(2)]
        ));
    }
    if let Some(seq) = outcomes.iter().position(|&e| e != 0 && e != libc::EPERM) {
        return Err(format!(
            "{} failed with errno {}",
            attempt(seq),
            outcomes[seq]
        ));
    }
    let first = outcomes
        .iter()
        .position(|&e| e == libc::EPERM)
        .ok_or("the denied prober was never refused")?;
    let allowed_after: Vec<usize> = (first..outcomes.len())
        .filter(|&seq| outcomes[seq] == 0)
        .collect();
    if let (Some(&seq), Some(&last)) = (allowed_after.first(), allowed_after.last()) {
        return Err(format!(
            "enforcement began in part: {} was refused, then {} attempts went through, the \
             first {}, the last {}",
            attempt(first),
            allowed_after.len(),
            attempt(seq),
            attempt(last)
        ));
    }
    Ok(format!(
        "denied prober: {} attempts, {} allowed before the first refusal ({}), all {} after refused",
        outcomes.len(),
        first,
        attempt(first),
        outcomes.len() - first
    ))
}

/// The allowed daemon's steps are never refused.
fn judge_allowed(outcomes: &[i32]) -> Outcome {
    match outcomes.iter().position(|&e| e != 0) {
        Some(seq) => Err(format!(
            "the allowed daemon's {} failed with errno {}",
            attempt(seq),
            outcomes[seq]
        )),
        None => Ok(format!(
            "allowed daemon: {} attempts, none refused",
            outcomes.len()
        )),
    }
}

#[test]
fn enforcement_begins_whole() {
    let _ = fs::remove_file(STOP);
    let denied = start_prober(COPY).unwrap_or_else(|e| panic!("{e}"));
    let allowed = start_prober(ALLOWED).unwrap_or_else(|e| panic!("{e}"));
    // Both are stepping before the agent starts.
    sleep(Duration::from_millis(300));
    let agent = GuestAgent::spawn(policies::GUEST, &[]).and_then(|mut agent| {
        agent.wait_started(0)?;
        let started = wait_record("agent started", |v| v["event"] == "started")?;
        if started["enforcement"] != "enforce" {
            return Err(format!(
                "agent reports enforcement {}",
                started["enforcement"]
            ));
        }
        // Probes go on under the policy in force.
        sleep(Duration::from_secs(1));
        Ok(agent)
    });
    // The probers stop whatever happened to the agent.
    if let Err(e) = fs::write(STOP, "") {
        panic!("{STOP}: {e}");
    }
    let denied = finish_prober(denied);
    let allowed = finish_prober(allowed);
    let _agent = agent.unwrap_or_else(|e| panic!("{e}"));
    let verdicts = [
        denied.and_then(|o| judge_denied(&o)),
        allowed.and_then(|o| judge_allowed(&o)),
    ];
    let _ = fs::remove_file(STOP);
    for v in &verdicts {
        match v {
            Ok(detail) => println!("{detail}"),
            Err(detail) => println!("FAILED: {detail}"),
        }
    }
    if verdicts.iter().any(Result::is_err) {
        panic!("enforcement did not begin whole (see above)");
    }
}
