//! The real agent, started by an integration test with a policy of its own.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use crate::harness::{is_root, read_records, temp_dir, timeguard};

/// An agent this test started, with its own directory, policy, status socket and pin
/// directory.
pub struct RunningAgent {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub policy: PathBuf,
    pub socket: PathBuf,
    /// Where its programs are pinned (bpffs), removed when the test ends, passed or failed.
    pub pin_dir: PinDir,
    pub agent: Child,
}

/// Removes what an agent pinned (its programs detach once no process holds them).
pub fn unpin(pin_dir: &Path) {
    let _ = std::fs::remove_dir_all(pin_dir);
}

/// A pin directory of one test's own (never the agent's default), removed when it goes out
/// of scope: a failing test leaves nothing attached on the development host.
pub struct PinDir(PathBuf);

impl PinDir {
    /// `/sys/fs/bpf/tg-test-TAG-PID`.
    pub fn new(tag: &str) -> Self {
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/tg-test-{tag}-{}",
            std::process::id()
        )))
    }
}

impl PinDir {
    /// A pin directory a test chose itself.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        PinDir(path.into())
    }
}

impl std::ops::Deref for PinDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for PinDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        unpin(&self.0);
    }
}

impl RunningAgent {
    /// `timeguard status --json` of this agent.
    pub fn status(&self) -> Option<Value> {
        agent_status(&self.bin, &self.socket)
    }

    /// The agent's audit trail as records.
    pub fn records(&self) -> Vec<Value> {
        read_records(&self.dir.join("audit.jsonl"))
    }

    /// Stops the agent the way an operator removes timeguard, `timeguard stop --unpin`
    /// (SIGKILL, by its id, if it does not answer), and returns what it logged.
    pub fn stop(self) -> String {
        self.stop_unpinning().1
    }

    /// The same, with the agent's exit code (None: killed by a signal).
    pub fn stop_unpinning(mut self) -> (Option<i32>, String) {
        let asked = Command::new(&self.bin)
            .args(["stop", "--unpin", "--socket"])
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--audit-log")
            .arg(self.dir.join("audit.jsonl"))
            .output()
            .is_ok_and(|o| o.status.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while asked && std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.agent.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if !matches!(self.agent.try_wait(), Ok(Some(_))) {
            // Only the agent this test started, by its id.
            let _ = self.agent.kill();
        }
        let out = self.agent.wait_with_output();
        unpin(&self.pin_dir);
        out.map(|o| {
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap_or_default()
    }
}

/// Starts the agent with `policy_text` and more arguments, in a fresh temporary directory
/// (the audit trail goes to `audit.jsonl` there), through `prefix` when given: a command
/// that takes the agent's command line after its own (`nsenter --net=…`, to run it in a
/// network namespace). An error says why it cannot run here.
pub fn start_agent_via(
    prefix: &[&str],
    tag: &str,
    stdout: Stdio,
    policy_text: &str,
    args: &[&str],
) -> Result<RunningAgent, String> {
    let policy = temp_dir(tag).join("policy.yaml");
    std::fs::write(&policy, policy_text).map_err(|e| format!("{}: {e}", policy.display()))?;
    start_agent_on(prefix, tag, stdout, policy, args)
}

/// The same, on a policy the test wrote (a file or a directory). Its last known good
/// policy is kept in `state_dir`, the directory's `state`: a test starting the agent again
/// with the same tag finds it there.
pub fn start_agent_on(
    prefix: &[&str],
    tag: &str,
    stdout: Stdio,
    policy: PathBuf,
    args: &[&str],
) -> Result<RunningAgent, String> {
    let bin = timeguard();
    if !is_root() {
        return Err(
            "loading BPF programs needs root: run the tests as root through `cargo xtask test`"
                .into(),
        );
    }
    let dir = temp_dir(tag);
    let socket = dir.join("status.sock");
    // A `--pin-dir` among `args` is the test's own choice; otherwise one of its own.
    let chosen = args
        .iter()
        .position(|a| *a == "--pin-dir")
        .and_then(|i| args.get(i + 1));
    let pin_dir = chosen.map_or_else(|| PinDir::new(tag), |p| PinDir::at(*p));
    let mut cmd = match prefix {
        [first, rest @ ..] => {
            let mut c = Command::new(first);
            c.args(rest).arg(&bin);
            c
        }
        [] => Command::new(&bin),
    };
    let agent = cmd
        .args(["run", "--policy"])
        .arg(&policy)
        .arg("--socket")
        .arg(&socket)
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .args(chosen.is_none().then_some("--pin-dir"))
        .args(chosen.is_none().then_some(&pin_dir))
        .arg("--state-dir")
        .arg(state_dir(&dir))
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    Ok(RunningAgent {
        bin,
        dir,
        policy,
        socket,
        pin_dir,
        agent,
    })
}

/// Where an agent started in `dir` keeps its last known good policy.
pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

/// `timeguard status --json` of an agent a test started.
pub fn agent_status(bin: &Path, socket: &Path) -> Option<Value> {
    let out = Command::new(bin)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}
