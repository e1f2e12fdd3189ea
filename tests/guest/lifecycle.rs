//! The agent's life: it starts enforcing, reloads (into audit mode, under a flood, after an
//! upgrade replaced an allowed executable), survives kill -9 and a full trail disk, and
//! `stop --unpin` gives the clock back to the kernel's own rules.

use crate::prelude::*;

/// How long clock_settime is hammered while policies are swapped.
const HAMMER_MS: u64 = 1500;

#[test]
fn the_agent_enforces_with_bpf_lsm() {
    scenario(|_| {
        let started = wait_record("agent started", |v| v["event"] == "started")?;
        if started["enforcement"] != "enforce" {
            return Err(format!(
                "agent reports enforcement {}",
                started["enforcement"]
            ));
        }
        Ok(format!("attached {}", started["attached"]))
    })
}

/// `timeguard kernel` on a kernel that runs BPF LSM says so in its exit code (0: the whole
/// guard, 3: the clock enforced, part of the guard missing, each named), and leaves no pins.
#[test]
fn the_kernel_report_exits_by_what_is_enforced() {
    scenario(|_| {
        let out = sh("timeguard", &["kernel"])?;
        let partly = out.stdout.lines().any(|l| l.starts_with("missing: "));
        let (state, code) = if partly {
            ("enforce_partly", 3)
        } else {
            ("enforce", 0)
        };
        if out.status != code
            || !out
                .stdout
                .contains(&format!("state: {state} (exit {code})"))
        {
            return Err(format!(
                "timeguard kernel exited {} (expected {code}, {state}):\n{}{}",
                out.status, out.stdout, out.stderr
            ));
        }
        let probes: Vec<String> = fs::read_dir("/sys/fs/bpf")
            .map_err(|e| format!("/sys/fs/bpf: {e}"))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("timeguard-probe-"))
            .collect();
        if !probes.is_empty() {
            return Err(format!("the trial left its pins: {probes:?}"));
        }
        Ok(format!("state {state}, exit {code}"))
    })
}

#[test]
fn audit_mode_allows_what_enforce_denies() {
    scenario(|agent| {
        // The guest policy in audit mode, then back (which must work too).
        agent.reload_to(policies::AUDIT, "vm-test-audit")?;
        let stepped = step_and_back(COPY, "step", 10);
        let restored = agent.reload_to(policies::GUEST, "vm-test");
        stepped.map_err(|e| format!("audit mode blocked a step: {e}"))?;
        clock_event("tg-clock", "audit", "step")?;
        restored?;
        Ok("what enforce denies is allowed and recorded as verdict=audit".into())
    })
}

/// Policies swapped under a flood of clock_settime: every attempt is decided exactly once
/// (the exact counters move by exactly the number of attempts), by a whole policy (each
/// event's verdict is the one its generation's policy gives).
#[test]
fn policy_reload_under_a_flood_has_no_gap() {
    scenario(|agent| {
        let before = agent_status()?;
        // Only this scenario's events count: earlier ones may carry the same process name.
        let earlier = records().len();
        let mut hammer = Command::new(ALLOWED)
            .args(["hammer", &HAMMER_MS.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the hammer: {e}"))?;
        let mut flips = 0;
        while hammer.try_wait().map_err(|e| e.to_string())?.is_none() {
            write_policy(if flips % 2 == 0 {
                policies::NO_STEP
            } else {
                policies::MAY_STEP
            })?;
            agent.sighup();
            flips += 1;
            sleep(Duration::from_millis(30));
        }
        let out = hammer.wait_with_output().map_err(|e| e.to_string())?;
        let counts: Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("hammer output: {e}"))?;
        write_policy(policies::MAY_STEP)?;
        agent.sighup();
        sleep(Duration::from_millis(500));
        let after = agent_status()?;
        let (ok, eperm, other) = (
            counts["ok"].as_u64().unwrap_or(0),
            counts["eperm"].as_u64().unwrap_or(0),
            counts["other"].as_u64().unwrap_or(0),
        );
        let allowed = counter(&after, "test-allowed", "step", "allow")
            - counter(&before, "test-allowed", "step", "allow");
        let denied = counter(&after, "test-allowed", "step", "deny")
            - counter(&before, "test-allowed", "step", "deny");
        let attempts = ok + eperm + other;
        if other != 0 {
            return Err(format!("hammer saw errors other than EPERM: {counts}"));
        }
        if allowed + denied != attempts {
            return Err(format!(
                "{attempts} attempts but the kernel decided {} (allow {allowed}, deny {denied})",
                allowed + denied
            ));
        }
        if allowed != ok || denied != eperm {
            return Err(format!(
                "kernel counted allow {allowed}/deny {denied}, callers saw ok {ok}/EPERM {eperm}"
            ));
        }
        if ok == 0 || eperm == 0 {
            return Err(format!("both policies should have decided some attempts: ok {ok}, EPERM {eperm} over {flips} flips"));
        }
        // Each event's verdict must be its own generation's: allow under vm-test, deny under
        // vm-test-no-step.
        let all: Vec<Value> = records().into_iter().skip(earlier).collect();
        let name_of: std::collections::HashMap<u64, String> = records()
            .iter()
            .filter(|v| v["event"] == "started" || v["event"] == "policy_loaded")
            .filter_map(|v| Some((v["generation"].as_u64()?, v["policy"].as_str()?.to_string())))
            .collect();
        let mut mixed = 0;
        let mut seen = 0;
        for ev in all.iter().filter(|v| {
            v["kind"] == "clock"
                && v["who"]["comm"] == "tg-clock-allowe"
                && v["what"]["time"].is_object()
        }) {
            let Some(g) = ev["generation"].as_u64() else {
                continue;
            };
            let expected = match name_of.get(&g).map(String::as_str) {
                Some("vm-test") => "allow",
                Some("vm-test-no-step") => "deny",
                _ => continue,
            };
            seen += 1;
            if ev["verdict"] != expected {
                mixed += 1;
            }
        }
        if mixed > 0 {
            return Err(format!(
                "{mixed} of {seen} events carry a verdict their generation's policy does not give"
            ));
        }
        let reloads = &after["reloads"];
        Ok(format!(
            "{attempts} attempts over {flips} swaps: allow {allowed} = ok {ok}, deny {denied} = EPERM {eperm}; {seen} events all consistent with their generation; reloads {} ok, {} rejected; events lost {}",
            reloads["ok"], reloads["failed"], after["events_lost"]
        ))
    })
}

/// An upgrade renames a new file over an allowed executable: the agent follows the path to
/// the new file within its watch interval, and the old file (kept here through a hard link)
/// loses the rule.
#[test]
fn a_replaced_executable_is_followed() {
    scenario(|_| {
        let old = "/usr/local/sbin/tg-clock-previous";
        let generation = |st: &Value| st["policy"]["generation"].as_u64().unwrap_or(0);
        let before = generation(&agent_status()?);
        upgrade_allowed(old)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let g = generation(&agent_status()?);
            if g > before {
                break g;
            }
            if Instant::now() > deadline {
                return Err("the agent did not follow the replaced executable within 10s".into());
            }
            sleep(Duration::from_millis(100));
        };
        wait_record("policy reloaded for the executable", |v| {
            v["event"] == "policy_loaded"
                && v["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("executable"))
        })?;
        step_and_back(ALLOWED, "step", 60).map_err(|e| format!("the new file: {e}"))?;
        let was = denied_step(old, &["step", "3600"], None)?;
        let _ = fs::remove_file(old);
        Ok(format!(
            "generation {before} -> {after}: the new file steps, the old one is denied ({was})"
        ))
    })
}

/// `kill -9` of the agent during a flood of denied steps: the pinned programs deny every
/// one in the gap, and the restarted agent takes them over with the count exact.
#[test]
fn kill_9_during_a_flood_no_gap_counted_on() {
    scenario(|agent| {
        const N: u64 = 300_000;
        let before = agent_status()?;
        let flood = Command::new(COPY)
            .args(["flood", &N.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        sleep(Duration::from_millis(300));
        // No chance to clean up.
        agent.kill9()?;
        sleep(Duration::from_millis(500));
        agent.restart()?;
        let out = flood.wait_with_output().map_err(|e| e.to_string())?;
        let counts: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "flood output {:?}: {e}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        sleep(Duration::from_millis(300));
        let after = agent_status()?;
        let denied = counter(&after, "default", "step", "deny")
            - counter(&before, "default", "step", "deny");
        let started = records()
            .into_iter()
            .rev()
            .find(|v| v["event"] == "started")
            .unwrap_or_default();
        if counts["eperm"] != N || counts["ok"] != 0 {
            return Err(format!("flood outcomes across the kill {counts}"));
        }
        if denied != N {
            return Err(format!("{N} denied attempts, the counters say {denied}"));
        }
        let adopted = started["adopted"].as_array().map_or(0, Vec::len);
        if adopted == 0 || started["inherited_generation"].as_u64().unwrap_or(0) == 0 {
            return Err(format!("the restarted agent took nothing over: {started}"));
        }
        Ok(format!(
            "{N} EPERM across kill -9 and restart, counted exactly; {adopted} links adopted"
        ))
    })
}

/// Stopping the agent leaves its last policy enforced; `timeguard stop --unpin` (recorded)
/// gives the clock back to the kernel's own rules.
#[test]
fn stopping_keeps_enforcement_stop_unpin_removes_it() {
    scenario(|agent| {
        let stopped = agent.stop()?;
        let o = outcome(sh(COPY, &["step", "3600"])?)?;
        if o.errno != libc::EPERM {
            return Err(format!(
                "after the agent stopped, the copy's step got errno {} (expected EPERM: enforcement stays)",
                o.errno
            ));
        }
        unpin_and_wait()?;
        wait_record("the unpinning recorded", |v| v["event"] == "unpinned")?;
        step_and_back(COPY, "step", 10).map_err(|e| format!("after stop --unpin: {e}"))?;
        Ok(format!(
            "{stopped}; the copy still EPERM with no agent; after stop --unpin (recorded) the clock is the kernel's own again"
        ))
    })
}

/// Where this test's agent writes its audit trail: a tmpfs of 128 KiB, filled up.
const SMALL_TRAIL_DIR: &str = "/var/log/timeguard";

/// A tmpfs of 128 KiB on SMALL_TRAIL_DIR (once per boot).
fn small_trail_disk() -> Result<(), String> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.contains(&format!(" {SMALL_TRAIL_DIR} ")) {
        return Ok(());
    }
    fs::create_dir_all(SMALL_TRAIL_DIR).map_err(|e| e.to_string())?;
    let r = sh(
        "mount",
        &["-t", "tmpfs", "-o", "size=128k", "tmpfs", SMALL_TRAIL_DIR],
    )?;
    if r.status != 0 {
        return Err(format!(
            "mounting a small tmpfs on {SMALL_TRAIL_DIR}: {}",
            r.stderr
        ));
    }
    Ok(())
}

/// Fills the rest of the small disk, so that the agent's next trail write fails.
fn fill_the_disk(filler: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut f = fs::File::create(filler).map_err(|e| format!("{filler}: {e}"))?;
    let block = [0u8; 4096];
    loop {
        match f.write(&block) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(()),
            Err(e) => return Err(format!("{filler}: {e}")),
        }
    }
}

/// The audit trail's disk is full: writes fail, are counted and reported, and enforcement
/// and the exact counters go on.
#[test]
fn a_full_audit_trail_disk_does_not_stop_enforcement() {
    if let Err(e) = small_trail_disk() {
        panic!("a small disk for the audit trail: {e}");
    }
    let trail = format!("{SMALL_TRAIL_DIR}/audit.jsonl");
    let filler = format!("{SMALL_TRAIL_DIR}/filler");
    scenario_with(&["--audit-log", &trail], |_| {
        fill_the_disk(&filler)?;
        // Records to write on the full disk: denied steps, as an intruder would make them.
        let flood = sh(COPY, &["flood", "1000"])?;
        let failing = |st: &Value| st["audit_write_failures"].as_u64().unwrap_or(0) > 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        let st = loop {
            let st = agent_status()?;
            if failing(&st) || Instant::now() > deadline {
                break st;
            }
            sleep(Duration::from_millis(100));
        };
        let failures = st["audit_write_failures"].as_u64().unwrap_or(0);
        if failures == 0 {
            return Err(format!(
                "the trail on a full 128 KiB disk reports no failed writes (flood: {}): {st}",
                flood.stdout
            ));
        }
        let before = counter(&st, "default", "step", "deny");
        denied_step(COPY, &["step", "3600"], Some("tg-clock"))?;
        let after = counter(&agent_status()?, "default", "step", "deny");
        if after != before + 1 {
            return Err(format!("the denial was counted {} times", after - before));
        }
        let logged = fs::read_to_string(AGENT_LOG).unwrap_or_default();
        if !logged.contains("audit trail") {
            return Err("the agent's log does not report the failing trail".into());
        }
        let _ = fs::remove_file(&filler);
        Ok(format!(
            "{failures} records not written to the full trail (counted, logged); denial still EPERM and counted"
        ))
    });
}
