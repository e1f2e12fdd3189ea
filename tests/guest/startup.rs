//! Start-up: enforcement begins whole. A program the policy denies and an allowed daemon
//! step the clock without pause, through both paths different hooks decide, from before
//! the agent starts until after it enforces: there is one moment where the whole policy
//! comes into force, never a part of it.

use crate::prelude::*;
use timeguard_tests::harness::wait_for;

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

/// A denied prober and an allowed daemon probing while `play` runs (and a second more):
/// each one's attempts judged once they are stopped, whatever became of the agent. `play`
/// leaves its agent in `agent`, so that it is torn down (and on failure shown) last.
fn while_probing(
    agent: &mut Option<GuestAgent>,
    play: impl FnOnce(&mut Option<GuestAgent>) -> Result<(), String>,
    judge_denied: impl Fn(&[i32]) -> Outcome,
) {
    let _ = fs::remove_file(STOP);
    let denied = start_prober(COPY).unwrap_or_else(|e| panic!("{e}"));
    let allowed = start_prober(ALLOWED).unwrap_or_else(|e| panic!("{e}"));
    // Both are stepping before anything happens.
    sleep(Duration::from_millis(300));
    let played = play(agent);
    // Probes go on under the policy in force.
    sleep(Duration::from_secs(1));
    if let Err(e) = fs::write(STOP, "") {
        panic!("{STOP}: {e}");
    }
    let denied = finish_prober(denied);
    let allowed = finish_prober(allowed);
    let _ = fs::remove_file(STOP);
    let verdicts = [
        played.map(|()| "the agent enforces".to_string()),
        denied.and_then(|o| judge_denied(&o)),
        allowed.and_then(|o| judge_allowed(&o)),
    ];
    for v in &verdicts {
        match v {
            Ok(detail) => println!("{detail}"),
            Err(detail) => println!("FAILED: {detail}"),
        }
    }
    if verdicts.iter().any(Result::is_err) {
        panic!("see above");
    }
}

/// Waits for the agent's next `started` record (after the first `before`) and checks it
/// enforces. Under emulation, with every step of two probers allowed until the switch
/// (each one interrupts every CPU), a start takes longer than `wait_started` waits.
fn enforcing(agent: &mut GuestAgent, before: usize) -> Result<(), String> {
    wait_for(Duration::from_secs(240), Duration::from_millis(200), || {
        (started_records() > before).then_some(())
    })
    .ok_or("the agent did not report started within 240 s")?;
    agent.wait_started(before)?;
    let started = records()
        .into_iter()
        .filter(|v| v["event"] == "started")
        .nth(before)
        .ok_or("no started record")?;
    if started["enforcement"] != "enforce" {
        return Err(format!(
            "agent reports enforcement {}",
            started["enforcement"]
        ));
    }
    Ok(())
}

/// Probing from before the agent starts: once any path refuses, every path refuses.
#[test]
fn enforcement_begins_whole() {
    let mut agent = None;
    while_probing(
        &mut agent,
        |agent| {
            let agent = agent.insert(GuestAgent::spawn(policies::GUEST, &[])?);
            enforcing(agent, 0)
        },
        judge_denied,
    );
}

/// Probing while the agent is killed and started again: the policy it left stays in force,
/// whole, until the new one switches to its own (the same policy, the next generation);
/// the denied prober is refused at every attempt.
#[test]
fn a_restart_keeps_the_policy_whole() {
    let mut agent = Some(GuestAgent::start(policies::GUEST).unwrap_or_else(|e| panic!("{e}")));
    while_probing(
        &mut agent,
        |agent| {
            let agent = agent.as_mut().ok_or("no agent")?;
            agent.kill9()?;
            let before = started_records();
            agent.restart()?;
            enforcing(agent, before)
        },
        |outcomes| match outcomes.iter().position(|&e| e != libc::EPERM) {
            _ if outcomes.is_empty() => Err("the denied prober made no attempt".into()),
            Some(seq) => Err(format!(
                "across the restart the denied prober's {} got errno {}",
                attempt(seq),
                outcomes[seq]
            )),
            None => Ok(format!(
                "denied prober: {} attempts across the restart, every one refused",
                outcomes.len()
            )),
        },
    );
}
