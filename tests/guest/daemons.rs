//! Real time daemons under their rules: Debian's chronyd (its slews go through, a step beyond
//! its maxStep does not, whatever its own configuration says) and phc2sys (it disciplines
//! the clock from a PHC, its libraries and all, and keeps its rule).

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
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .args(args)
        .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("cannot start chronyd: {e}"))?;
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
