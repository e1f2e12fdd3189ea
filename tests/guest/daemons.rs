//! Real time daemons under their rules: Debian's chronyd (its slews go through, a step beyond
//! its maxStep does not, whatever its own configuration says) and phc2sys (it disciplines
//! the clock from a PHC, its libraries and all, and keeps its rule); a jump of hours asked of
//! chronyd through chronyc is refused; NTPsec's ntpd,
//! systemd-timesyncd and ptp4l started as their units start them, under the bundled
//! policies, keep their rules with all the code glibc loads for them.

use std::{collections::BTreeSet, process::Child};

use timeguard_tests::ntp;

use crate::prelude::*;

pub const NTP_ADDR: &str = "127.0.0.1:10123";

/// Runs chronyd in the foreground with `conf` and `args` until it exits or `secs` pass.
pub fn chronyd(conf: &str, args: &[&str], secs: u64) -> Result<String, String> {
    chronyd_as(&[], conf, args, secs)
}

/// The same, started through `launcher` (a command that ends by executing its arguments).
pub fn chronyd_as(
    launcher: &[&str],
    conf: &str,
    args: &[&str],
    secs: u64,
) -> Result<String, String> {
    let mut child = start_chronyd(launcher, conf, args)?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    if child.try_wait().map_err(|e| e.to_string())?.is_none() {
        // SAFETY: signalling the chronyd this scenario started, by its id.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
    Ok(fs::read_to_string("/tmp/chronyd.log").unwrap_or_default())
}

/// Starts chronyd in the foreground through `launcher` with `conf` and `args`, logging to
/// /tmp/chronyd.log.
fn start_chronyd(launcher: &[&str], conf: &str, args: &[&str]) -> Result<Child, String> {
    fs::write("/tmp/chrony.conf", conf).map_err(|e| e.to_string())?;
    let log = fs::File::create("/tmp/chronyd.log").map_err(|e| e.to_string())?;
    let mut argv: Vec<&str> = launcher.to_vec();
    argv.extend([
        "/usr/sbin/chronyd",
        "-d",
        "-u",
        "root",
        "-f",
        "/tmp/chrony.conf",
    ]);
    Command::new(argv[0])
        .args(&argv[1..])
        .args(args)
        .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("cannot start chronyd: {e}"))
}

/// chronyd's configuration: the test NTP server on loopback, polled fast, no command port.
pub fn chrony_conf(extra: &str) -> String {
    format!(
        "server 127.0.0.1 port 10123 iburst minpoll -6 maxpoll -6\ncmdport 0\nbindcmdaddress /\npidfile /tmp/chronyd.pid\n{extra}"
    )
}

/// chronyd, following a source 0.3 s ahead without makestep, slews: its rate changes are
/// allowed by its rule, and none of its calls is refused.
#[test]
fn chronyd_slews_within_its_rule() {
    scenario(|_| {
        let since = records().len();
        let server = ntp::Server::start(NTP_ADDR, 300_000_000).map_err(|e| e.to_string())?;
        // chronyd's rate is its drift estimate plus its slew: both bounded here, so that their
        // sum fits the rule's maxFrequency (1100 ppm), as an operator would configure it.
        let log = chronyd(&chrony_conf("maxslewrate 500\nmaxdrift 500\n"), &[], 12)?;
        drop(server);
        let freq = clock::read();
        let reset = outcome(sh(ALLOWED, &["freq", "0"])?)?;
        if let Some(v) = records()
            .into_iter()
            .skip(since)
            .find(|v| v["who"]["comm"] == "chronyd" && v["verdict"] != "allow")
        {
            return Err(format!("chronyd was refused: {v}\nchronyd log:\n{log}"));
        }
        let ev = clock_event_since(since, "chronyd", "allow", "frequency")
            .map_err(|e| format!("{e}\nchronyd log:\n{log}"))?;
        Ok(format!(
            "chronyd slewed (rate {} ppm, kernel freq then {:.1} ppm, reset errno {}), no refusal",
            ev["what"]["frequency_ppm"],
            freq.freq as f64 / 65536.0,
            reset.errno
        ))
    })
}

/// chronyd -q, told by its source that the time is 2 h ahead, tries to step: its rule's
/// maxStep (1 s) refuses it in the kernel, whatever chronyd's own configuration says.
#[test]
fn chronyd_is_refused_a_step_beyond_max_step() {
    scenario(|_| {
        let since = records().len();
        let before = realtime_ns();
        let server = ntp::Server::start(NTP_ADDR, 7_200_000_000_000).map_err(|e| e.to_string())?;
        let log = chronyd(&chrony_conf("makestep 1 -1\n"), &["-q"], 20)?;
        drop(server);
        clock_unchanged(before).map_err(|e| format!("{e}\nchronyd log:\n{log}"))?;
        let ev = clock_event_since(since, "chronyd", "deny", "step")
            .map_err(|e| format!("{e}\nchronyd log:\n{log}"))?;
        if ev["reason"] != "step larger than maxStep" {
            return Err(format!("chronyd's step was refused for {}", ev["reason"]));
        }
        let said = log
            .lines()
            .find(|l| l.contains("step") || l.contains("Could not"))
            .unwrap_or("")
            .trim()
            .to_string();
        Ok(format!(
            "2h step refused (maxStep 1s), clock unchanged; chronyd said: {said}"
        ))
    })
}

/// phc2sys, following the e1000e PHC without stepping, opens the PHC and tunes the clock's
/// frequency: every call allowed by its rule, none of its records saying it lost the rule.
#[test]
fn phc2sys_disciplines_from_a_phc_within_its_rule() {
    scenario(|_| {
        let since = records().len();
        let log = fs::File::create("/tmp/phc2sys.log").map_err(|e| e.to_string())?;
        let mut child = Command::new("/usr/sbin/phc2sys")
            .args([
                "-s",
                "/dev/ptp0",
                "-c",
                "CLOCK_REALTIME",
                "-O",
                "0",
                "-F",
                "0",
                "-S",
                "0",
            ])
            .args(["-R", "8", "-m"])
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start phc2sys: {e}"))?;
        sleep(Duration::from_secs(4));
        let early = child.try_wait().map_err(|e| e.to_string())?;
        if early.is_none() {
            // SAFETY: signalling the phc2sys this scenario started, by its id.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        let reset = outcome(sh(ALLOWED, &["freq", "0"])?)?;
        let log = fs::read_to_string("/tmp/phc2sys.log").unwrap_or_default();
        if let Some(status) = early {
            return Err(format!("phc2sys exited early ({status}):\n{log}"));
        }
        let mine: Vec<Value> = records()
            .into_iter()
            .skip(since)
            .filter(|v| v["who"]["comm"] == "phc2sys")
            .collect();
        if let Some(v) = mine
            .iter()
            .find(|v| v["verdict"] != "allow" || v.get("integrity").is_some())
        {
            return Err(format!(
                "phc2sys was refused or lost its rule: {v}\nphc2sys log:\n{log}"
            ));
        }
        let tuned = mine
            .iter()
            .filter(|v| {
                v["rule"] == "phc2sys" && v["what"]["operations"].to_string().contains("frequency")
            })
            .count();
        if tuned == 0 {
            return Err(format!(
                "no frequency change of phc2sys recorded\nphc2sys log:\n{log}"
            ));
        }
        let st = agent_status()?;
        let lost = counted(&st["rules_lost"], &[("rule", "phc2sys")]);
        if lost != 0 {
            return Err(format!("rules lost: {}", st["rules_lost"]));
        }
        Ok(format!(
            "phc2sys: {tuned} frequency changes allowed by its rule, none refused, rule never lost (reset errno {})",
            reset.errno
        ))
    })
}

/// A command line that starts `argv` the way the guest's service manager would start it in
/// the unit whose cgroup is `cgroup`: busybox (PID 1's program, as systemd's own child is
/// systemd) moves itself into the cgroup, then executes the program.
pub fn in_unit(cgroup: &str) -> Vec<String> {
    vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        format!("echo $$ > {cgroup}/cgroup.procs && exec \"$@\""),
        "unit".into(),
    ]
}

/// A real daemon as its unit starts it, under the bundled policy that names it.
struct Unit<'a> {
    policy: &'a str,
    /// The unit's cgroup, where systemd would put it.
    cgroup: &'a str,
    /// The unit's `ExecStart=`.
    argv: &'a [&'a str],
    /// Where the daemon logs (its output goes there too).
    log: &'a str,
    /// Its rule in the policy, and the process name its records carry.
    rule: &'a str,
    comm: &'a str,
    /// The changes it must make under its rule (one of them, allowed, ends the wait).
    changes: &'a [&'a str],
    secs: u64,
}

/// chrony.service's cgroup, where systemd would put chronyd.
pub const CHRONY_UNIT: &str = "/sys/fs/cgroup/system.slice/chrony.service";

/// Where chronyd listens for chronyc: root's commands, `chronyc settime` and `makestep`.
const CHRONYD_SOCKET: &str = "/run/chrony/chronyd.sock";

/// The intruder has chronyd make the jump: chronyd, run as its unit under the bundled chrony
/// policy, is given a correction of 3 h (by a source 3 h ahead, the intruder's as after
/// `chronyc add server`; or by `chronyc settime` to a time 3 h ahead, with `manual` on), which
/// it slews; a root shell's `chronyc makestep` then asks it to step the rest at once. The
/// step is chronyd's, under its rule, and larger than its maxStep (10 s): refused in the
/// kernel, the clock unchanged.
#[test]
fn a_jump_of_hours_relayed_through_chronyd_is_refused() {
    let played = (|| {
        let _server =
            ntp::Server::start(NTP_ADDR, 3 * 3600 * 1_000_000_000).map_err(|e| e.to_string())?;
        let mut agent = GuestAgent::start(policies::CHRONY)?;
        let mut seen = Vec::new();
        let relayed = (|| {
            for (how, conf, settime) in [
                (
                    "a source 3 h ahead",
                    "server 127.0.0.1 port 10123 iburst minpoll -6 maxpoll -6\n",
                    false,
                ),
                ("settime 3 h ahead", "manual\n", true),
            ] {
                seen.push(step_relayed_through_chronyd(how, conf, settime)?);
            }
            Ok(())
        })();
        stop_unit(CHRONY_UNIT);
        let _ = agent.finish();
        let log = fs::read_to_string("/tmp/chronyd.log").unwrap_or_default();
        relayed.map_err(|e: String| format!("{e}\nchronyd log:\n{log}"))?;
        Ok(seen.join("; "))
    })();
    let _ = sh(ALLOWED, &["freq", "0"]);
    report(played);
}

/// chronyd as its unit with `conf`, given its 3 h correction (by `settime`, or by the
/// source `conf` names), then asked by chronyc to step it.
fn step_relayed_through_chronyd(how: &str, conf: &str, settime: bool) -> Outcome {
    stop_unit(CHRONY_UNIT);
    fs::create_dir_all(CHRONY_UNIT).map_err(|e| format!("{CHRONY_UNIT}: {e}"))?;
    let conf = format!(
        "{conf}cmdport 0\nbindcmdaddress {CHRONYD_SOCKET}\npidfile /tmp/chronyd.pid\nmaxslewrate 500\n"
    );
    let launcher = in_unit(CHRONY_UNIT);
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    let mut chronyd = start_chronyd(&launcher, &conf, &[])?;
    let before = realtime_ns();
    let chronyc = |args: &[&str]| -> Result<String, String> {
        let mut argv = vec!["-h", CHRONYD_SOCKET];
        argv.extend_from_slice(args);
        let r = sh("/usr/bin/chronyc", &argv)?;
        Ok(format!("{}{}", r.stdout, r.stderr).trim().to_string())
    };
    // chronyd has the correction once `System time` in its tracking report (seconds, CSV
    // field 5) shows it; settime is asked once chronyd answers.
    let mut asked = !settime;
    let deadline = Instant::now() + Duration::from_secs(40);
    let offset = loop {
        let tracking = chronyc(&["-c", "tracking"])?;
        let offset = tracking
            .split(',')
            .nth(4)
            .and_then(|f| f.parse::<f64>().ok());
        if !asked && offset.is_some() {
            let said = chronyc(&["settime", &utc_in(3 * 3600)])?;
            if !said.starts_with("200 OK") {
                return Err(format!("chronyc settime: {said}"));
            }
            asked = true;
        }
        if let Some(offset) = offset.filter(|o| o.abs() > 3600.0) {
            break offset;
        }
        if Instant::now() > deadline || chronyd.try_wait().is_ok_and(|s| s.is_some()) {
            return Err(format!(
                "{how}: chronyd did not take up the 3 h correction (tracking: {tracking})"
            ));
        }
        sleep(Duration::from_millis(500));
    };
    let since = records().len();
    let said = chronyc(&["makestep"])?;
    let refused = wait_record_since(&format!("{how}: chronyd's step"), since, |v| {
        v["kind"] == "clock"
            && v["who"]["comm"] == "chronyd"
            && v["rule"] == "chronyd"
            && v["verdict"] == "deny"
            && v["what"]["operations"]
                .as_array()
                .is_some_and(|ops| ops.iter().any(|o| o == "step"))
    })
    .map_err(|e| format!("{e} (chronyc makestep said: {said})"))?;
    if refused["reason"] != "step larger than maxStep" {
        return Err(format!("{how}: refused for {}", refused["reason"]));
    }
    clock_unchanged(before).map_err(|e| format!("{how}, then makestep: {e}"))?;
    Ok(format!(
        "{how}: chronyd as its unit slewing {offset:.0} s, makestep's step refused (step larger than maxStep, chronyc said {said:?}), clock unchanged"
    ))
}

/// The UTC time `secs` from now, as chronyc's settime reads it.
fn utc_in(secs: i64) -> String {
    let t = (realtime_ns() / 1_000_000_000) as libc::time_t + secs as libc::time_t;
    // SAFETY: a zeroed tm is a valid value for gmtime_r to fill.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: gmtime_r writes the broken-down time of `t` into `tm`, both ours.
    unsafe { libc::gmtime_r(&t, &mut tm) };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The NTP server the NTP daemons follow: on a loopback address of its own, port 123 as
/// theirs (timesyncd has no other), so that ntpd, bound to 127.0.0.1:123, leaves it be.
const NTP_SERVER_ADDR: &str = "127.0.0.2:123";

impl Unit<'_> {
    /// Starts the daemon in its unit under its policy until it makes one of its changes
    /// (or `secs` pass), stops every process of the unit, and checks its records: every
    /// call allowed by its rule, none saying it lost the rule, none lost in the status.
    fn keeps_its_rule(&self) -> Outcome {
        let mut agent = GuestAgent::start(self.policy)?;
        let played = self.played();
        // The unit's processes stop while the agent still decides what they do.
        stop_unit(self.cgroup);
        let _ = agent.finish();
        let log = fs::read_to_string(self.log).unwrap_or_default();
        played.map_err(|e| format!("{e}\n{} log:\n{log}", self.comm))
    }

    fn played(&self) -> Outcome {
        fs::create_dir_all(self.cgroup).map_err(|e| format!("{}: {e}", self.cgroup))?;
        let since = records().len();
        let log = fs::File::create(self.log).map_err(|e| format!("{}: {e}", self.log))?;
        let launcher = in_unit(self.cgroup);
        let mut argv: Vec<&str> = launcher.iter().map(String::as_str).collect();
        argv.extend_from_slice(self.argv);
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.argv[0]))?;
        let mine = |v: &Value| v["rule"] == self.rule || v["who"]["comm"] == self.comm;
        let changed = |v: &Value| {
            v["kind"] == "clock"
                && v["verdict"] == "allow"
                && v["rule"] == self.rule
                && v["what"]["operations"]
                    .as_array()
                    .is_some_and(|ops| ops.iter().any(|o| self.changes.iter().any(|c| o == c)))
        };
        let deadline = Instant::now() + Duration::from_secs(self.secs);
        while Instant::now() < deadline && !records().iter().skip(since).any(changed) {
            sleep(Duration::from_millis(250));
        }
        // The launcher exits when a daemon forks into the background (ntpd); reaped here.
        let _ = child.try_wait();
        let seen: Vec<Value> = records().into_iter().skip(since).filter(mine).collect();
        if let Some(v) = seen
            .iter()
            .find(|v| v["verdict"] != "allow" || v.get("integrity").is_some())
        {
            return Err(format!("{} was refused or lost its rule: {v}", self.comm));
        }
        let changes: Vec<&Value> = seen.iter().filter(|v| changed(v)).collect();
        if changes.is_empty() {
            return Err(format!(
                "{} made none of {:?} under its rule within {} s (records: {seen:?})",
                self.comm, self.changes, self.secs
            ));
        }
        let st = agent_status()?;
        let lost = counted(&st["rules_lost"], &[("rule", self.rule)]);
        if lost != 0 {
            return Err(format!("rules lost: {}", st["rules_lost"]));
        }
        let ops: BTreeSet<String> = changes
            .iter()
            .filter_map(|v| v["what"]["operations"].as_array())
            .flatten()
            .map(|o| o.as_str().unwrap_or_default().to_string())
            .collect();
        Ok(format!(
            "{} as {} under the bundled {} policy: {} calls allowed by its rule ({}), none refused, rule never lost",
            self.comm,
            self.cgroup.trim_start_matches("/sys/fs/cgroup/"),
            agent_status()?["policy"]["name"],
            seen.len(),
            ops.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

/// busybox's `ip` with `args`, which must succeed.
fn ip(args: &[&str]) -> Result<(), String> {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    let r = sh("/bin/busybox", &argv)?;
    if r.status != 0 {
        return Err(format!("ip {}: {}", args.join(" "), r.stderr));
    }
    Ok(())
}

/// Ends what this scenario started in the unit `cgroup` (a daemon that forked is there
/// too), by id, and removes the cgroup.
fn stop_unit(cgroup: &str) {
    let procs = || -> Vec<i32> {
        fs::read_to_string(format!("{cgroup}/cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    for (signal, wait) in [(libc::SIGTERM, 5), (libc::SIGKILL, 5)] {
        for pid in procs() {
            // SAFETY: signalling a process of the unit this scenario started, by its id.
            unsafe { libc::kill(pid, signal) };
        }
        let deadline = Instant::now() + Duration::from_secs(wait);
        while Instant::now() < deadline && !procs().is_empty() {
            sleep(Duration::from_millis(100));
        }
    }
    let _ = fs::remove_dir(cgroup);
}

/// Debian's ntpsec.service: its wrapper starts ntpd with `-g -N` (/etc/default/ntpsec) as
/// user ntpsec (initgroups: systemd's NSS module is loaded), and ntpd forks. Its source is
/// 20 ms off: ntpd slews through the kernel's PLL, every call allowed by its rule.
#[test]
fn ntpd_as_its_unit_keeps_its_rule() {
    let conf = format!(
        "driftfile /tmp/ntp.drift\nlogfile /tmp/ntpd.log\ninterface ignore wildcard\ninterface listen 127.0.0.1\nserver {} iburst minpoll 0 maxpoll 0\n",
        NTP_SERVER_ADDR.trim_end_matches(":123")
    );
    let played = (|| {
        for dir in ["/etc/ntpsec", "/etc/default", "/run/lock"] {
            fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
        }
        fs::write("/etc/ntpsec/ntp.conf", &conf).map_err(|e| e.to_string())?;
        fs::write("/etc/default/ntpsec", "NTPD_OPTS='-g -N'\n").map_err(|e| e.to_string())?;
        let _server = ntp::Server::start(NTP_SERVER_ADDR, 20_000_000).map_err(|e| e.to_string())?;
        Unit {
            policy: policies::NTPSEC,
            cgroup: "/sys/fs/cgroup/system.slice/ntpsec.service",
            argv: &["/usr/libexec/ntpsec/ntp-systemd-wrapper"],
            log: "/tmp/ntpd.log",
            rule: "ntpd",
            comm: "ntpd",
            changes: &["slew"],
            secs: 40,
        }
        .keeps_its_rule()
    })();
    let _ = sh(ALLOWED, &["freq", "0"]);
    report(played);
}

/// Debian's systemd-timesyncd.service starts it as root where ambient capabilities are not
/// to be had (`!!`): it looks its user up (systemd's NSS module beside the files) and drops
/// to it, keeping CAP_SYS_TIME. Its source is 2 s ahead: it steps, within maxStep (10 s).
#[test]
fn systemd_timesyncd_as_its_unit_keeps_its_rule() {
    // systemd-timesync in the guest's /etc/passwd (xtask's vm.rs).
    const TIMESYNC_ID: u32 = 102;
    const HOST_ADDR: &str = "192.0.2.10/24";
    let played = (|| {
        fs::create_dir_all("/etc/systemd").map_err(|e| e.to_string())?;
        // Its StateDirectory= and RuntimeDirectory=, which systemd makes its user's.
        for dir in ["/var/lib/systemd/timesync", "/run/systemd/timesync"] {
            fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
            std::os::unix::fs::chown(dir, Some(TIMESYNC_ID), Some(TIMESYNC_ID))
                .map_err(|e| format!("{dir}: {e}"))?;
        }
        fs::write(
            "/etc/systemd/timesyncd.conf",
            format!("[Time]\nNTP={}\n", NTP_SERVER_ADDR.trim_end_matches(":123")),
        )
        .map_err(|e| e.to_string())?;
        // It resolves its server with AI_ADDRCONFIG: no IPv4 address but loopback's, no
        // IPv4 server. A host's address on the (unplugged) NIC, as a time server has one.
        ip(&["addr", "add", HOST_ADDR, "dev", "eth0"])?;
        let _server =
            ntp::Server::start(NTP_SERVER_ADDR, 2_000_000_000).map_err(|e| e.to_string())?;
        Unit {
            policy: policies::TIMESYNCD,
            cgroup: "/sys/fs/cgroup/system.slice/systemd-timesyncd.service",
            // Its log to its output, not to the kernel's (there is no journal here).
            argv: &[
                "/bin/busybox",
                "env",
                "SYSTEMD_LOG_TARGET=console",
                "SYSTEMD_LOG_LEVEL=debug",
                "/usr/lib/systemd/systemd-timesyncd",
            ],
            log: "/tmp/timesyncd.log",
            rule: "systemd-timesyncd",
            comm: "systemd-timesyn",
            changes: &["step"],
            secs: 30,
        }
        .keeps_its_rule()
    })();
    // Back to the time it had (no guard runs now), and the NIC without an address.
    let _ = sh(ALLOWED, &["step", "-2"]);
    let _ = ip(&["addr", "del", HOST_ADDR, "dev", "eth0"]);
    report(played);
}

/// Debian's ptp4l@eth0.service, on the e1000e (hardware time stamps, its PHC /dev/ptp0),
/// with Debian's ptp4l.conf: it tunes its PHC as it starts, allowed by its rule.
#[test]
fn ptp4l_as_its_unit_keeps_its_rule() {
    let played = (|| {
        ip(&["link", "set", "eth0", "up"])?;
        Unit {
            policy: policies::LINUXPTP,
            cgroup: "/sys/fs/cgroup/system.slice/system-ptp4l.slice/ptp4l@eth0.service",
            argv: &[
                "/usr/sbin/ptp4l",
                "-f",
                "/etc/linuxptp/ptp4l.conf",
                "-i",
                "eth0",
                "-m",
            ],
            log: "/tmp/ptp4l.log",
            rule: "ptp4l",
            comm: "ptp4l",
            changes: &["phc"],
            secs: 20,
        }
        .keeps_its_rule()
    })();
    let _ = fs::remove_dir("/sys/fs/cgroup/system.slice/system-ptp4l.slice");
    report(played);
}
