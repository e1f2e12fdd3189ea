//! The clock itself: what is read, stepped, slewed and tuned, by whom, through every entry
//! (native, 32-bit compat, settimeofday), and what is not a change of the host's clock.

use crate::prelude::*;

#[test]
fn read_only_adjtimex_keeps_working() {
    scenario(|_| {
        let r = sh("adjtimex", &[] as &[&str])?;
        if r.status != 0 {
            return Err(format!(
                "busybox adjtimex (read-only) exited {}: {}",
                r.status, r.stderr
            ));
        }
        let o = clock::read();
        if o.errno != 0 {
            return Err(format!("adjtimex(modes=0) failed with errno {}", o.errno));
        }
        Ok("read-only adjtimex succeeds".into())
    })
}

#[test]
fn busybox_date_s_is_denied() {
    scenario(|_| {
        let before = realtime_ns();
        // busybox date only warns when the kernel refuses ("can't set date") and exits 0, so
        // the kernel's answer is read from its message, and the clock itself is checked.
        let r = sh("date", &["-s", "2030-01-01 00:00:00"])?;
        if !r.stderr.contains("not permitted") {
            return Err(format!(
                "date -s was not refused with EPERM (exit {}): {} {}",
                r.status, r.stdout, r.stderr
            ));
        }
        clock_unchanged(before)?;
        let ev = clock_event("date", "deny", "step")?;
        Ok(format!(
            "EPERM, clock unchanged, event rule={} syscall={}",
            ev["rule"], ev["what"]["syscall"]
        ))
    })
}

#[test]
fn busybox_adjtimex_f_is_denied() {
    scenario(|_| {
        let before = clock::read().freq;
        let r = sh("adjtimex", &["-f", "6553600"])?;
        if r.status == 0 {
            return Err("busybox adjtimex -f succeeded".into());
        }
        let after = clock::read().freq;
        if after != before {
            return Err(format!("frequency changed from {before} to {after}"));
        }
        let ev = clock_event("adjtimex", "deny", "frequency")?;
        Ok(format!(
            "EPERM ({}), frequency unchanged, event modes={}",
            r.stderr, ev["what"]["timex_modes"]
        ))
    })
}

#[test]
fn allowed_binary_may_step() {
    scenario(|_| {
        let before = realtime_ns();
        step_and_back(ALLOWED, "step", 3600)?;
        let ev = clock_event("tg-clock-allowe", "allow", "step")?;
        // The event of the forward step is stamped with the instant it was decided, not
        // shifted by the hour the clock jumped before the agent read it.
        let stamped = ev["time"].as_str().unwrap_or_default();
        let stamped_ns = clock::parse_rfc3339_ns(stamped)
            .ok_or_else(|| format!("event time {stamped:?} is not RFC 3339"))?;
        if (stamped_ns - before).abs() > SLACK_NS {
            return Err(format!(
                "the step event is stamped {stamped}, {:.1}s away from when it happened",
                (stamped_ns - before) as f64 / 1e9
            ));
        }
        Ok(format!(
            "stepped +3600s and back, event rule={} stamped {stamped}",
            ev["rule"]
        ))
    })
}

#[test]
fn allowed_binary_may_tune_frequency() {
    scenario(|_| {
        let set = outcome(sh(ALLOWED, &["freq", "10"])?)?;
        let now = clock::read().freq;
        let reset = outcome(sh(ALLOWED, &["freq", "0"])?)?;
        if set.errno != 0 || reset.errno != 0 {
            return Err(format!(
                "allowed frequency change failed: errno {} / {}",
                set.errno, reset.errno
            ));
        }
        if now != 10 << 16 {
            return Err(format!("frequency is {now}, expected {}", 10 << 16));
        }
        Ok("set +10ppm and back".into())
    })
}

/// The 32-bit entries (`int 0x80`): clock_settime, stime and adjtimex through the i386
/// table are decided like the native ones, and recorded as compat.
#[test]
fn compat32_entries_are_decided_too() {
    scenario(|_| {
        let since = records().len();
        let before = realtime_ns();
        let freq_before = clock::read().freq;
        for args in [
            ["compat-step", "3600"],
            ["compat-stime", "3600"],
            ["compat-freq", "50"],
        ] {
            let o = outcome(sh(COPY, &args)?)?;
            if o.errno != libc::EPERM {
                return Err(format!(
                    "{} got errno {} (expected EPERM)",
                    args[0], o.errno
                ));
            }
        }
        clock_unchanged(before)?;
        if clock::read().freq != freq_before {
            return Err("the compat adjtimex changed the frequency".into());
        }
        for syscall in ["clock_settime", "stime", "adjtimex"] {
            let deadline = Instant::now() + Duration::from_secs(3);
            while !records().iter().skip(since).any(|v| {
                v["kind"] == "clock"
                    && v["verdict"] == "deny"
                    && v["what"]["abi"] == "compat32"
                    && v["what"]["syscall"] == syscall
            }) {
                if Instant::now() > deadline {
                    return Err(format!("no denied compat32 {syscall} event"));
                }
                sleep(Duration::from_millis(50));
            }
        }
        step_and_back(ALLOWED, "compat-step", 60)?;
        Ok("clock_settime32, stime, adjtimex32 denied (compat32 events); the allowed program's compat step works".into())
    })
}

/// settimeofday with a time (and a timezone alongside) is a step; with only a timezone it
/// is a timezone change, decided as such.
#[test]
fn settimeofday_time_timezone_only_and_max_step() {
    scenario(|_| {
        let since = records().len();
        let tz_only = outcome(sh(COPY, &["timezone"])?)?;
        if tz_only.errno != libc::EPERM {
            return Err(format!(
                "a timezone-only settimeofday by the copy got errno {}",
                tz_only.errno
            ));
        }
        let ev = clock_event_since(since, "tg-clock", "deny", "timezone")?;
        if ev["what"]["operations"] != serde_json::json!(["timezone"])
            || !ev["what"]["time"].is_null()
        {
            return Err(format!(
                "the timezone-only call was recorded as {}",
                ev["what"]
            ));
        }
        let before = realtime_ns();
        let forward = outcome(sh(ALLOWED, &["settimeofday", "600", "tz"])?)?;
        let moved = realtime_ns() - before;
        let back = outcome(sh(ALLOWED, &["settimeofday", "-600"])?)?;
        if forward.errno != 0 || back.errno != 0 || (moved - 600_000_000_000).abs() > SLACK_NS {
            return Err(format!(
                "the allowed settimeofday ±600s: errno {} / {}, moved {:.1}s",
                forward.errno,
                back.errno,
                moved as f64 / 1e9
            ));
        }
        clock_unchanged(before)?;
        let big = outcome(sh(ALLOWED, &["settimeofday", "10800"])?)?;
        if big.errno != libc::EPERM {
            return Err(format!("a 3h settimeofday got errno {}", big.errno));
        }
        clock_unchanged(before)?;
        Ok("timezone-only denied as `timezone`; allowed ±600s with and without a timezone; 3h beyond maxStep denied".into())
    })
}

#[test]
fn leap_flags_need_the_leap_operation() {
    scenario(|_| {
        // The allowed program may write the status word, but its rule does not allow leap.
        let insert = outcome(sh(ALLOWED, &["leap", "insert"])?)?;
        if insert.errno != libc::EPERM {
            return Err(format!(
                "scheduling a leap second got errno {} (expected EPERM)",
                insert.errno
            ));
        }
        if clock::read().status & clock::STA_INS != 0 {
            return Err("STA_INS is set in the kernel".into());
        }
        clock_event("tg-clock-allowe", "deny", "leap")?;
        let plain = outcome(sh(ALLOWED, &["leap", "none"])?)?;
        if plain.errno != 0 {
            return Err(format!(
                "writing the status without leap bits failed: errno {}",
                plain.errno
            ));
        }
        Ok("STA_INS denied (rule allows status, not leap), plain status write allowed".into())
    })
}

/// Setting a time namespace's offsets passes a CAP_SYS_TIME check in the initial user
/// namespace, but moves nothing of the host's clock: not denied, not recorded.
#[test]
fn time_namespace_offsets_are_not_host_clock_changes() {
    scenario(|_| {
        let since = records().len();
        let before = realtime_ns();
        let o = outcome(sh(COPY, &["timens", "3600"])?)?;
        if o.errno != 0 {
            return Err(format!(
                "writing timens_offsets got errno {} (expected success)",
                o.errno
            ));
        }
        clock_unchanged(before)?;
        sleep(Duration::from_millis(500));
        if let Some(v) = records()
            .into_iter()
            .skip(since)
            .find(|v| v["kind"] == "clock" && v["who"]["comm"] == "tg-clock")
        {
            return Err(format!("recorded as a clock change: {v}"));
        }
        Ok("time namespace offset set by a denied program, no clock event".into())
    })
}
