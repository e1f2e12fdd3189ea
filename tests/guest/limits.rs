//! The limits a rule sets (maxStep, maxFrequency, a tick counted as frequency), held by the
//! kernel, and the exact count of a flood of denied attempts.

use crate::prelude::*;

/// The allowed program is held to its rule's maxStep (2h) and maxFrequency (100ppm), by
/// the kernel, whoever asks it.
#[test]
fn max_step_and_max_frequency_hold_in_the_kernel() {
    scenario(|_| {
        let before = realtime_ns();
        let big = outcome(sh(ALLOWED, &["step", "10800"])?)?;
        if big.errno != libc::EPERM {
            return Err(format!(
                "a 3h step by the allowed program got errno {} (expected EPERM)",
                big.errno
            ));
        }
        clock_unchanged(before)?;
        let ev = clock_event("tg-clock-allowe", "deny", "step")?;
        if ev["reason"] != "step larger than maxStep" || ev["rule"] != "test-allowed" {
            return Err(format!(
                "the denial names rule {} and reason {}",
                ev["rule"], ev["reason"]
            ));
        }
        let back_steps = outcome(sh(ALLOWED, &["step", "-10800"])?)?;
        if back_steps.errno != libc::EPERM {
            return Err(format!(
                "a -3h step got errno {} (expected EPERM)",
                back_steps.errno
            ));
        }
        let freq_before = clock::read().freq;
        let fast = outcome(sh(ALLOWED, &["freq", "200"])?)?;
        if fast.errno != libc::EPERM || clock::read().freq != freq_before {
            return Err(format!(
                "a 200ppm frequency got errno {} (expected EPERM, frequency unchanged)",
                fast.errno
            ));
        }
        let fev = clock_event("tg-clock-allowe", "deny", "frequency")?;
        if fev["reason"] != "frequency beyond maxFrequency" {
            return Err(format!(
                "the frequency denial's reason is {}",
                fev["reason"]
            ));
        }
        Ok("3h steps (both ways) and 200ppm denied with their reasons; 1h steps and 10ppm allowed (clock::)".into())
    })
}

/// The ADJ_TICK a frequency limit must also hold: a tick 10 µs fast is +1000 ppm.
#[test]
fn a_tick_change_counts_toward_max_frequency() {
    scenario(|_| {
        let since = records().len();
        let fast = outcome(sh(ALLOWED, &["tick", "10010"])?)?;
        if fast.errno != libc::EPERM {
            return Err(format!(
                "tick 10010 (+1000ppm) got errno {} (expected EPERM)",
                fast.errno
            ));
        }
        let ev = clock_event_since(since, "tg-clock-allowe", "deny", "frequency")?;
        if ev["reason"] != "frequency beyond maxFrequency" {
            return Err(format!("the tick denial's reason is {}", ev["reason"]));
        }
        let nominal = outcome(sh(ALLOWED, &["tick", "10000"])?)?;
        if nominal.errno != 0 {
            return Err(format!("the nominal tick got errno {}", nominal.errno));
        }
        Ok(format!(
            "tick +10µs denied as {}ppm beyond maxFrequency; nominal tick allowed",
            ev["what"]["frequency_ppm"]
        ))
    })
}

/// One million denied attempts: each counted exactly, none succeeded.
#[test]
fn a_million_denied_attempts_are_counted_exactly() {
    scenario(|_| {
        const N: u64 = 1_000_000;
        let before = agent_status()?;
        let started = Instant::now();
        let r = sh(COPY, &["flood", &N.to_string()])?;
        let took = started.elapsed();
        let counts: Value = serde_json::from_str(&r.stdout)
            .map_err(|e| format!("flood output {:?}: {e}", r.stdout))?;
        sleep(Duration::from_millis(300));
        let after = agent_status()?;
        let denied = counter(&after, "default", "step", "deny")
            - counter(&before, "default", "step", "deny");
        if counts["eperm"] != N || counts["ok"] != 0 {
            return Err(format!("flood outcomes {counts}"));
        }
        if denied != N {
            return Err(format!("{N} denied attempts, the kernel counted {denied}"));
        }
        let thinned = after["events_thinned"].as_u64().unwrap_or(0)
            - before["events_thinned"].as_u64().unwrap_or(0);
        let lost = after["events_lost"].as_u64().unwrap_or(0)
            - before["events_lost"].as_u64().unwrap_or(0);
        let sent = records()
            .iter()
            .filter(|v| v["who"]["comm"] == "tg-clock" && v["verdict"] == "deny")
            .count();
        if thinned == 0 || thinned + lost >= N {
            return Err(format!(
                "{N} attempts: {thinned} events thinned, {lost} lost: thinning did not hold the flood to its budget"
            ));
        }
        Ok(format!(
            "{N} EPERM in {:.1}s, kernel count exact; events: {thinned} thinned, {lost} lost (both counted), {sent} denials of tg-clock in the trail",
            took.as_secs_f64()
        ))
    })
}

/// The kernel's preemption model, switched for a test and put back when dropped.
struct Preemption {
    was: String,
}

/// Where a PREEMPT_DYNAMIC kernel (Debian's) lets root change its preemption at run time.
const SCHED_PREEMPT: &str = "/sys/kernel/debug/sched/preempt";

impl Preemption {
    /// Makes the kernel fully preemptible: LSM programs can then be preempted mid-decision.
    fn full() -> Result<Self, String> {
        let modes =
            fs::read_to_string(SCHED_PREEMPT).map_err(|e| format!("{SCHED_PREEMPT}: {e}"))?;
        let was = modes
            .split_whitespace()
            .find_map(|m| m.strip_prefix('(')?.strip_suffix(')'))
            .ok_or_else(|| format!("{SCHED_PREEMPT} names no current mode: {modes:?}"))?
            .to_string();
        fs::write(SCHED_PREEMPT, "full").map_err(|e| format!("{SCHED_PREEMPT}: full: {e}"))?;
        Ok(Preemption { was })
    }
}

impl Drop for Preemption {
    fn drop(&mut self) {
        let _ = fs::write(SCHED_PREEMPT, &self.was);
    }
}

/// Root makes the kernel preemptible at run time and races, on one CPU, a program the
/// policy denies (steps of zero, each one decided) against the allowed program's steps of
/// 3h (beyond its maxStep): a decision preempted by the other's never takes the other's
/// request for its own. Every 3h step is refused, every denied step too.
#[test]
fn a_step_raced_on_one_cpu_is_decided_on_its_own_request() {
    scenario(|_| {
        const MS: &str = "4000";
        let _preemption = Preemption::full()?;
        let since = records().len();
        let on_cpu0 = |exe: &str, args: &[&str]| {
            Command::new("busybox")
                .args(["taskset", "1", exe])
                .args(args)
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start {exe} on CPU 0: {e}"))
        };
        let racer = on_cpu0(COPY, &["hammer", MS])?;
        let big = on_cpu0(ALLOWED, &["hammer-steps", "10800", MS])?;
        let counts = |child: std::process::Child| -> Result<Value, String> {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            serde_json::from_slice(&out.stdout).map_err(|e| format!("counts: {e}"))
        };
        let (racer, big) = (counts(racer)?, counts(big)?);
        if big["ok"] != 0 || racer["ok"] != 0 {
            return Err(format!(
                "went through: {} of the allowed program's 3h steps (net {}s), {} of the denied program's steps",
                big["ok"], big["net"], racer["ok"]
            ));
        }
        if big["eperm"] == 0 || racer["eperm"] == 0 {
            return Err(format!("no race: allowed {big}, denied {racer}"));
        }
        let preempted = records()[since..]
            .iter()
            .filter(|v| v["reason"] == "preempted while deciding")
            .count();
        Ok(format!(
            "on one preemptible CPU: {} 3h steps and {} denied steps of zero, all refused; {preempted} recorded as preempted while deciding",
            big["eperm"], racer["eperm"]
        ))
    })
}
