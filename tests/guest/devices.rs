//! Clock devices: a PTP hardware clock (e1000e's /dev/ptp0), a PPS source bound to the
//! kernel's discipline, the RTC through util-linux's hwclock, and the kernel's own writes
//! of the RTC.

use std::path::Path;

use timeguard_tests::{devices, harness::wait_record};

use crate::prelude::*;

/// A change under a rule's comm, after `since`, with this verdict, operation and hook.
fn device_event(since: usize, comm: &str, verdict: &str, operation: &str, hook: &str) -> Outcome {
    let found = wait_record(
        Path::new(timeguard_tests::guest::EVENTS),
        since,
        Duration::from_secs(3),
        |v| {
            v["who"]["comm"] == comm
                && v["verdict"] == verdict
                && v["hook"] == hook
                && v["what"]["operations"]
                    .as_array()
                    .is_some_and(|ops| ops.iter().any(|o| o == operation))
        },
    );
    match found {
        Some(v) => Ok(format!(
            "{hook} {verdict} device={} ioctl={}",
            v["what"]["device"], v["what"]["ioctl"]
        )),
        None => Err(format!(
            "no {verdict} {operation} event from {comm} at {hook}"
        )),
    }
}

const PHC: &str = "/dev/ptp0";

/// A PTP hardware clock: the kernel only asks that it be open for writing, so the open is
/// decided, and the ioctls that change it.
#[test]
fn ptp_hardware_clock_open_step_ioctl() {
    scenario(|_| {
        if !Path::new(PHC).exists() {
            return Err(format!(
                "{PHC} is missing: the e1000e NIC's PTP clock did not register"
            ));
        }
        let since = records().len();
        let before = devices::phc_seconds(PHC)?;
        for args in [
            ["phc-open", PHC, ""],
            ["phc-step", PHC, "100"],
            ["phc-pps", PHC, "on"],
        ] {
            let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
            let o = outcome(sh(COPY, &args)?)?;
            if o.errno != libc::EPERM {
                return Err(format!(
                    "{args:?} by the copy got errno {} (expected EPERM)",
                    o.errno
                ));
            }
        }
        let after = devices::phc_seconds(PHC)?;
        if (after - before).abs() > 5 {
            return Err(format!("the PHC moved {}s", after - before));
        }
        let opened = device_event(since, "tg-clock", "deny", "phc", "lsm/file_open")?;
        let ioctl = device_event(since, "tg-clock", "deny", "phc", "lsm/file_ioctl")?;
        let forward = outcome(sh(ALLOWED, &["phc-step", PHC, "100"])?)?;
        let moved = devices::phc_seconds(PHC)? - after;
        let back = outcome(sh(ALLOWED, &["phc-step", PHC, "-100"])?)?;
        if forward.errno != 0 || back.errno != 0 || (moved - 100).abs() > 5 {
            return Err(format!(
                "the allowed program's PHC step: errno {} / {}, moved {moved}s",
                forward.errno, back.errno
            ));
        }
        let pps = outcome(sh(ALLOWED, &["phc-pps", PHC, "off"])?)?;
        if pps.errno == libc::EPERM {
            return Err("PTP_ENABLE_PPS by the allowed program got EPERM".into());
        }
        device_event(since, "tg-clock-allowe", "allow", "phc", "lsm/file_open")?;
        Ok(format!(
            "copy: open rw, step and PTP_ENABLE_PPS all EPERM, PHC unchanged ({opened}; {ioctl}); allowed: stepped +100s and back, PTP_ENABLE_PPS reached the driver (errno {})",
            pps.errno
        ))
    })
}

/// A PPS source bound to the kernel clock discipline (PPS_KC_BIND) steers the clock.
#[test]
fn pps_source_binding() {
    scenario(|_| {
        let tty = devices::pps_attach("/dev/ttyS1")?;
        let dev = "/dev/pps0";
        let deadline = Instant::now() + Duration::from_secs(3);
        while !Path::new(dev).exists() {
            if Instant::now() > deadline {
                return Err(format!(
                    "{dev} did not appear after attaching the PPS line discipline"
                ));
            }
            sleep(Duration::from_millis(50));
        }
        let since = records().len();
        let denied = outcome(sh(COPY, &["pps-bind", dev, "on"])?)?;
        let allowed = outcome(sh(ALLOWED, &["pps-bind", dev, "off"])?)?;
        // SAFETY: closing the tty this scenario opened, which removes the PPS source.
        unsafe { libc::close(tty) };
        if denied.errno != libc::EPERM {
            return Err(format!(
                "PPS_KC_BIND by the copy got errno {} (expected EPERM)",
                denied.errno
            ));
        }
        if allowed.errno == libc::EPERM {
            return Err("PPS_KC_BIND by the allowed program got EPERM".into());
        }
        let ev = clock_event_since(since, "tg-clock", "deny", "pps")?;
        clock_event_since(since, "tg-clock-allowe", "allow", "pps")?;
        Ok(format!(
            "PPS_KC_BIND: copy EPERM (ioctl {}), allowed program reaches the kernel (errno {})",
            ev["what"]["ioctl"], allowed.errno
        ))
    })
}

fn hwclock(program: &str, args: &[&str]) -> Result<Run, String> {
    let mut all = args.to_vec();
    all.extend(["--utc", "--noadjfile"]);
    sh(program, &all)
}

/// The RTC's time (seconds since the epoch), read through util-linux.
fn rtc_seconds() -> Result<i64, String> {
    let r = hwclock(HWCLOCK_COPY, &["--get"])?;
    if r.status != 0 {
        return Err(format!("hwclock --get: {} {}", r.stdout, r.stderr));
    }
    let d = sh(
        "date",
        &["-d", r.stdout.get(..19).unwrap_or_default(), "+%s"],
    )?;
    d.stdout
        .parse()
        .map_err(|e| format!("RTC time {:?} -> {:?}: {e}", r.stdout, d.stdout))
}

/// A UTC date for hwclock --set, `secs` from now.
fn utc_date_in(secs: i64) -> Result<String, String> {
    let at = (realtime_ns() / 1_000_000_000) as i64 + secs;
    Ok(sh(
        "date",
        &["-u", "-d", &format!("@{at}"), "+%Y-%m-%d %H:%M:%S"],
    )?
    .stdout)
}

/// util-linux hwclock: --systohc sets the RTC (RTC_SET_TIME), --hctosys steps the system
/// clock from it; only the allowed file may do either, and its step stays under maxStep.
#[test]
fn util_linux_hwclock_systohc_and_hctosys() {
    scenario(|_| {
        if !Path::new("/dev/rtc0").exists() {
            return Err("/dev/rtc0 is missing".into());
        }
        let since = records().len();
        // The allowed hwclock sets the RTC half an hour ahead of the system clock.
        let ahead = utc_date_in(1800)?;
        let set = hwclock(HWCLOCK_ALLOWED, &["--set", "--date", &ahead])?;
        if set.status != 0 {
            return Err(format!(
                "allowed hwclock --set failed: {} {}",
                set.stdout, set.stderr
            ));
        }
        let rtc = rtc_seconds()?;
        // The copy may neither set the RTC from the system clock nor the clock from the RTC.
        let systohc = hwclock(HWCLOCK_COPY, &["--systohc"])?;
        if systohc.status == 0 || (rtc_seconds()? - rtc).abs() > 5 {
            return Err(format!(
                "the copy's hwclock --systohc went through: {}",
                systohc.stderr
            ));
        }
        clock_event_since(since, "hwclock", "deny", "rtc")?;
        let before = realtime_ns();
        let tried = records().len();
        let hctosys = hwclock(HWCLOCK_COPY, &["--hctosys"])?;
        if hctosys.status == 0 {
            return Err("the copy's hwclock --hctosys succeeded".into());
        }
        clock_unchanged(before)?;
        // hwclock sets the kernel timezone first (settimeofday without a time), then the time;
        // the first refusal already stops it.
        clock_event_since(tried, "hwclock", "deny", "timezone")?;
        // The allowed hwclock steps the clock to the RTC (+30 min, within maxStep 2h)...
        let before = realtime_ns();
        let to_sys = hwclock(HWCLOCK_ALLOWED, &["--hctosys"])?;
        let moved = (realtime_ns() - before) / 1_000_000_000;
        if to_sys.status != 0 || (moved - 1800).abs() > 5 {
            return Err(format!(
                "allowed hwclock --hctosys: exit {}, clock moved {moved}s: {}",
                to_sys.status, to_sys.stderr
            ));
        }
        clock_event_since(since, "hwclock", "allow", "step")?;
        // ...and back, and the RTC from the clock again.
        let back = outcome(sh(ALLOWED, &["step", "-1800"])?)?;
        let to_rtc = hwclock(HWCLOCK_ALLOWED, &["--systohc"])?;
        let rtc_now = rtc_seconds()?;
        let sys_now = (realtime_ns() / 1_000_000_000) as i64;
        if back.errno != 0 || to_rtc.status != 0 || (rtc_now - sys_now).abs() > 5 {
            return Err(format!(
                "restoring: step errno {}, hwclock --systohc exit {} ({}), RTC {rtc_now} vs clock {sys_now}",
                back.errno, to_rtc.status, to_rtc.stderr
            ));
        }
        clock_event_since(since, "hwclock", "allow", "rtc")?;
        Ok("copy: --systohc and --hctosys refused, RTC and clock unchanged; allowed: --set, --hctosys (+1800s), --systohc".into())
    })
}

/// The kernel writes the RTC itself while the clock is declared synchronized (the
/// 11-minute mode): nothing can refuse it, and it is recorded as the kernel's.
#[test]
fn the_kernels_own_rtc_update_is_observed() {
    scenario(|_| {
        // A daemon that declared the clock synced earlier in this boot (phc2sys, chronyd)
        // left the kernel's next RTC write up to 11 minutes away, and declaring sync again
        // does not bring it forward. A step past it fires that timer while the step has
        // made the clock unsynced, so it is not armed again; the clock is then put back.
        step_and_back(ALLOWED, "step", 700)?;
        let since = records().len();
        let synced = outcome(sh(ALLOWED, &["synced", "yes"])?)?;
        if synced.errno != 0 {
            return Err(format!(
                "declaring the clock synced got errno {}",
                synced.errno
            ));
        }
        let found = wait_record(
            Path::new(timeguard_tests::guest::EVENTS),
            since,
            Duration::from_secs(5),
            |v| {
                v["hook"] == "kprobe/kernel"
                    && v["what"]["operations"] == serde_json::json!(["rtc"])
            },
        )
        .ok_or_else(|| "no record of the kernel writing the RTC within 5s".to_string());
        let unsynced = outcome(sh(ALLOWED, &["synced", "no"])?)?;
        let v = found?;
        if v["verdict"] != "observed" || v["what"]["abi"] != "kernel" || unsynced.errno != 0 {
            return Err(format!("the kernel's RTC write was recorded as {v}"));
        }
        Ok(format!(
            "STA_UNSYNC cleared by the allowed program; the kernel's RTC write observed (comm {})",
            v["who"]["comm"]
        ))
    })
}
