//! What the guest's tests and its benchmark share: the files of the guest (built by xtask's
//! initramfs), an agent each test starts and tears down, and the checks the scenarios make
//! of the clock and of the agent's records.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    clock::{self, realtime_ns},
    harness::{counted, read_records, sh, wait_for, Run},
};

/// The agent's records as it prints them on stdout (the trail itself may be on a full disk).
pub const EVENTS: &str = "/tmp/events.jsonl";
pub const AGENT_LOG: &str = "/tmp/agent.log";
/// Where the agent's policy is: on the same file system as the agent's executable, so that
/// a rename over either is decided by self-protection, not refused as cross-device.
pub const POLICY: &str = "/etc/timeguard/policy.yaml";
/// The audit trail of an agent a test starts, removed before each start.
pub const TRAIL: &str = "/tmp/timeguard/audit.jsonl";
/// Where the agent pins its programs (its default).
pub const PIN_DIR: &str = "/sys/fs/bpf/timeguard";
/// The test program twice: the guest policy allows only the first file, by its inode.
pub const ALLOWED: &str = "/usr/local/sbin/tg-clock-allowed";
pub const COPY: &str = "/usr/local/bin/tg-clock";
/// util-linux's hwclock where Debian puts it (allowed), and a copy elsewhere (not).
pub const HWCLOCK_ALLOWED: &str = "/usr/sbin/hwclock";
pub const HWCLOCK_COPY: &str = "/usr/local/bin/hwclock";
/// How far the clock may drift on its own during one scenario.
pub const SLACK_NS: i128 = 5_000_000_000;

/// A scenario's verdict: what it saw, or what went wrong.
pub type Outcome = Result<String, String>;

/// The agent's records so far (those of the agent running now: each start begins afresh).
pub fn records() -> Vec<Value> {
    read_records(Path::new(EVENTS))
}

/// How many `started` records the agents wrote so far. Counted by line, not parsed: under a
/// flood of clock records (the start-up tests) parsing every record each time costs the
/// emulated guest the time the agent needs to answer.
pub fn started_records() -> usize {
    fs::read_to_string(EVENTS)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(r#""event":"started""#))
        .count()
}

/// Waits for a record that satisfies `pred`, for up to 3 s (events are asynchronous).
pub fn wait_record(what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value, String> {
    wait_record_since(what, 0, pred)
}

/// The same, among the records after the first `since` (those an attempt just caused).
pub fn wait_record_since(
    what: &str,
    since: usize,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    crate::harness::wait_record(Path::new(EVENTS), since, Duration::from_secs(3), pred)
        .ok_or_else(|| format!("no event {what} in {EVENTS}"))
}

/// A clock event for this command name, verdict and operation.
pub fn clock_event(comm: &str, verdict: &str, operation: &str) -> Result<Value, String> {
    clock_event_since(0, comm, verdict, operation)
}

/// The same, among the records after the first `since` (those an attempt just caused); an
/// empty `comm` matches any.
pub fn clock_event_since(
    since: usize,
    comm: &str,
    verdict: &str,
    operation: &str,
) -> Result<Value, String> {
    crate::harness::wait_record(Path::new(EVENTS), since, Duration::from_secs(3), |v| {
        v["kind"] == "clock"
            && (comm.is_empty() || v["who"]["comm"] == comm)
            && v["verdict"] == verdict
            && v["what"]["operations"]
                .as_array()
                .is_some_and(|ops| ops.iter().any(|o| o == operation))
    })
    .ok_or_else(|| {
        format!("no event {{comm: {comm}, verdict: {verdict}, operation: {operation}}} in {EVENTS}")
    })
}

pub fn clock_unchanged(before: i128) -> Result<(), String> {
    let drift = realtime_ns() - before;
    if drift.abs() > SLACK_NS {
        return Err(format!("the clock moved by {:.3}s", drift as f64 / 1e9));
    }
    Ok(())
}

/// The outcome a `tg-clock` run printed.
pub fn outcome(run: Run) -> Result<clock::Outcome, String> {
    clock::Outcome::from_json(&run.stdout).map_err(|e| format!("{e} (stderr: {})", run.stderr))
}

/// `program cmd +secs`, then `program cmd -secs`: both must succeed, the clock must move by
/// `secs` in between and be back where it was after.
pub fn step_and_back(program: &str, cmd: &str, secs: i64) -> Result<(), String> {
    let before = realtime_ns();
    let forward = outcome(sh(program, &[cmd, &secs.to_string()])?)?;
    let moved = realtime_ns() - before;
    let back = outcome(sh(program, &[cmd, &(-secs).to_string()])?)?;
    if forward.errno != 0 || back.errno != 0 {
        return Err(format!(
            "{program} {cmd} ±{secs}s failed: errno {} / {}",
            forward.errno, back.errno
        ));
    }
    if (moved - secs as i128 * 1_000_000_000).abs() > SLACK_NS {
        return Err(format!(
            "the clock moved {:.3}s instead of {secs}s",
            moved as f64 / 1e9
        ));
    }
    clock_unchanged(before)
}

/// A step of +3600 s by `program args…` must fail with EPERM and leave the clock, and the
/// kernel must record this very attempt as denied by the default (under the process name
/// `comm`, where the test knows it: after exec through a file descriptor it is the fd's).
pub fn denied_step(program: &str, args: &[&str], comm: Option<&str>) -> Outcome {
    let since = records().len();
    let before = realtime_ns();
    let o = outcome(sh(program, args)?)?;
    if o.errno != libc::EPERM {
        return Err(format!(
            "{program} {args:?} got errno {} (expected EPERM)",
            o.errno
        ));
    }
    clock_unchanged(before)?;
    let ev = clock_event_since(since, comm.unwrap_or(""), "deny", "step")?;
    if ev["rule"] != "default" {
        return Err(format!(
            "decided by rule {} instead of the default",
            ev["rule"]
        ));
    }
    Ok(format!(
        "EPERM, clock unchanged, event comm={} exe_id={}",
        ev["who"]["comm"], ev["who"]["exe_id"]
    ))
}

/// `timeguard status --json` of the agent running now.
pub fn agent_status() -> Result<Value, String> {
    let r = sh("timeguard", &["status", "--json"])?;
    serde_json::from_str(&r.stdout)
        .map_err(|e| format!("timeguard status --json: {e}: {} {}", r.stdout, r.stderr))
}

/// The exact kernel count for (rule, operation, verdict).
pub fn counter(status: &Value, rule: &str, operation: &str, verdict: &str) -> u64 {
    counted(
        &status["counters"],
        &[
            ("rule", rule),
            ("operation", operation),
            ("verdict", verdict),
        ],
    )
}

/// Writes the next policy through the agent's own path (`timeguard apply`, which returns
/// once the running agent enforces it): self-protection refuses direct edits while it
/// enforces.
pub fn write_policy(text: &str) -> Result<(), String> {
    let src = "/tmp/next-policy.yaml";
    fs::write(src, text).map_err(|e| e.to_string())?;
    let r = sh("timeguard", &["apply", src, "--policy", POLICY])?;
    if r.status != 0 {
        return Err(format!("timeguard apply: {} {}", r.stdout, r.stderr));
    }
    Ok(())
}

/// An upgrade of the allowed test program: a new copy renamed over ALLOWED, the old file
/// kept at `old` through a hard link (the policy's rule must follow the path, not the old
/// file).
pub fn upgrade_allowed(old: &str) -> Result<(), String> {
    let staged = format!("{ALLOWED}.new");
    let _ = fs::remove_file(old);
    fs::hard_link(ALLOWED, old).map_err(|e| format!("{old}: {e}"))?;
    fs::copy(ALLOWED, &staged).map_err(|e| format!("{staged}: {e}"))?;
    fs::rename(&staged, ALLOWED).map_err(|e| format!("{ALLOWED}: {e}"))
}

/// Waits up to 10 s for the running agent's status to satisfy `pred`, and returns it.
pub fn wait_status(what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value, String> {
    wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        agent_status().ok().filter(|st| pred(st))
    })
    .ok_or_else(|| format!("the agent's status did not show {what} within 10s"))
}

/// `timeguard stop --unpin` with no agent running, then the wait until the kernel has let go
/// of the programs: it releases a link whose last pin and descriptor are gone from a work
/// queue, and a trampoline only after the tasks in it have left (a moment, longer emulated).
pub fn unpin_and_wait() -> Result<(), String> {
    let r = sh("timeguard", &["stop", "--unpin", "--audit-log", EVENTS])?;
    if r.status != 0 || !r.stdout.contains("no longer guarded") {
        return Err(format!("timeguard stop --unpin: {} {}", r.stdout, r.stderr));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if outcome(sh(COPY, &["step", "0"])?)?.errno == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("20 s after stop --unpin the copy's step is still refused".into());
        }
        sleep(Duration::from_millis(100));
    }
}

/// Prints a file of the guest (for the host to read off the console), its last `lines`.
pub fn dump(path: &str, lines: usize) {
    println!("---- {path} ----");
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            if from > 0 {
                println!("({from} earlier lines left out)");
            }
            println!("{}", all[from..].join("\n"));
        }
        Err(e) => println!("(unreadable: {e})"),
    }
}

/// An agent a test started: `timeguard run` with the test's policy, a fresh trail and fresh
/// records. Dropping it (also when an assertion failed) stops it and unpins what it left,
/// waiting until the kernel has let go, so that the next test starts clean; a failed
/// test's agent log and records are printed first.
pub struct GuestAgent {
    child: Option<Child>,
    args: Vec<String>,
}

impl GuestAgent {
    /// Starts the agent on `policy` and waits for its `started` record.
    pub fn start(policy: &str) -> Result<Self, String> {
        Self::start_with(policy, &[])
    }

    /// The same, with more arguments for `timeguard run`.
    pub fn start_with(policy: &str, args: &[&str]) -> Result<Self, String> {
        let mut agent = Self::spawn(policy, args)?;
        agent.wait_started(0)?;
        Ok(agent)
    }

    /// Writes the policy and starts the agent, without waiting for it.
    pub fn spawn(policy: &str, args: &[&str]) -> Result<Self, String> {
        fs::write(POLICY, policy).map_err(|e| format!("{POLICY}: {e}"))?;
        let trail = Path::new(TRAIL);
        let _ = fs::remove_file(trail);
        if let Some(dir) = trail.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut agent = GuestAgent {
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        agent.spawn_child(false)?;
        Ok(agent)
    }

    /// Starts `timeguard run`, its records on stdout (`--audit-stdout`) going to EVENTS
    /// (appended to, for a restart), as well as in the trail file.
    fn spawn_child(&mut self, append: bool) -> Result<(), String> {
        let open = |path: &str| {
            fs::OpenOptions::new()
                .create(true)
                .append(append)
                .write(true)
                .truncate(!append)
                .open(path)
                .map_err(|e| format!("{path}: {e}"))
        };
        let (out, err) = (open(EVENTS)?, open(AGENT_LOG)?);
        let mut cmd = Command::new("timeguard");
        cmd.args(["run", "--policy", POLICY, "--audit-stdout"]);
        // A test may put the trail elsewhere (the full-disk test does).
        if !self.args.iter().any(|a| a == "--audit-log") {
            cmd.args(["--audit-log", TRAIL]);
        }
        cmd.args(&self.args)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start timeguard: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits for the agent's `started` record, the first after the first `before` of them,
    /// and then for its status to answer: the agent writes the record before its event loop
    /// installs the SIGINT handler (and then binds the status socket), so a test that stops
    /// it at once would otherwise kill it instead.
    pub fn wait_started(&mut self, before: usize) -> Result<(), String> {
        let started = wait_for(Duration::from_secs(90), Duration::from_millis(50), || {
            (started_records() > before).then_some(())
        })
        .and_then(|()| {
            // Under the start-up tests' flood of records the loop answers late.
            wait_for(Duration::from_secs(60), Duration::from_millis(50), || {
                agent_status().ok()
            })
        });
        if started.is_some() {
            return Ok(());
        }
        if let Some(Ok(Some(exit))) = self.child.as_mut().map(Child::try_wait) {
            return Err(format!(
                "the agent exited ({exit}) before it reported started"
            ));
        }
        Err("the agent did not report started within 90 s, or its status did not answer within 60 s".into())
    }

    /// The agent's process id (0 once it is stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn sighup(&self) {
        if let Some(child) = &self.child {
            // SAFETY: signalling the agent this test started, by its id.
            unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        }
    }

    /// Installs a policy through a reload and waits until the agent has it in force; its
    /// generation.
    pub fn reload_to(&self, text: &str, name: &str) -> Result<u64, String> {
        write_policy(text)?;
        self.sighup();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(st) = agent_status() {
                if st["policy"]["name"] == name {
                    return st["policy"]["generation"]
                        .as_u64()
                        .ok_or_else(|| "status without generation".into());
                }
            }
            sleep(Duration::from_millis(50));
        }
        Err(format!("policy {name} was not in force within 10s"))
    }

    /// `kill -9`: the agent has no chance to clean up; its pins stay.
    pub fn kill9(&mut self) -> Result<(), String> {
        let mut child = self.child.take().ok_or("the agent is not running")?;
        // The agent this test started, by its id.
        child.kill().map_err(|e| format!("kill -9: {e}"))?;
        let _ = child.wait();
        Ok(())
    }

    /// Starts the agent again (after `kill9`), appending to its records, and waits for its
    /// new `started` record.
    pub fn restart(&mut self) -> Result<(), String> {
        let before = started_records();
        self.spawn_child(true)?;
        self.wait_started(before)
    }

    /// Stops the agent with SIGINT (as Ctrl-C or systemd would): it must exit cleanly and
    /// record it. Its pins stay.
    pub fn stop(&mut self) -> Result<String, String> {
        let mut child = self.child.take().ok_or("the agent is not running")?;
        // SAFETY: signalling the child this test started, by its id.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("the agent exited with {status}"));
        }
        wait_record("agent stopped", |v| v["event"] == "stopped")?;
        Ok("the agent stopped cleanly".into())
    }

    /// Stops the agent (if it runs) and unpins what it left (if anything is pinned).
    pub fn finish(&mut self) -> Result<(), String> {
        let stopped = match self.child {
            Some(_) => self.stop().map(drop),
            None => Ok(()),
        };
        let unpinned = if Path::new(PIN_DIR).exists() {
            unpin_and_wait()
        } else {
            Ok(())
        };
        stopped.and(unpinned)
    }
}

impl Drop for GuestAgent {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        // The demo (`cargo xtask vm --demo`) sets TG_SHOW_AGENT: every agent is shown.
        if failed || std::env::var_os("TG_SHOW_AGENT").is_some() {
            dump(AGENT_LOG, usize::MAX);
            dump(EVENTS, 300);
        }
        if let Err(e) = self.finish() {
            if let Some(mut child) = self.child.take() {
                // Only the agent this test started, by its id.
                let _ = child.kill();
                let _ = child.wait();
            }
            if failed {
                println!("tearing the agent down: {e}");
            } else {
                // Not shown above: what the agent said is the evidence.
                dump(AGENT_LOG, usize::MAX);
                panic!("tearing the agent down: {e}");
            }
        }
    }
}
