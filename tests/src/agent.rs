//! The real agent, started by an integration test with a policy of its own.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use crate::harness::{is_root, timeguard};

/// An agent this test started, with its own directory, policy and status socket.
pub struct RunningAgent {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub policy: PathBuf,
    pub socket: PathBuf,
    pub agent: Child,
}

impl RunningAgent {
    /// `timeguard status --json` of this agent.
    pub fn status(&self) -> Option<Value> {
        agent_status(&self.bin, &self.socket)
    }

    /// The agent's audit trail as records.
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Stops the agent (SIGINT, by its id) and returns what it logged.
    pub fn stop(self) -> String {
        // SAFETY: signalling the agent this test started, by its id.
        unsafe { libc::kill(self.agent.id() as i32, libc::SIGINT) };
        let out = self.agent.wait_with_output();
        out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    }
}

/// Starts the agent with `policy_text` and more arguments, in a fresh temporary directory;
/// the audit trail goes to `audit.jsonl` there. None (said in one line) where it cannot run.
pub fn start_agent_with(
    tag: &str,
    stdout: Stdio,
    policy_text: &str,
    args: &[&str],
) -> Option<RunningAgent> {
    start_agent_via(&[], tag, stdout, policy_text, args)
}

/// The same, through a command that takes the agent's command line after its own
/// (`nsenter --net=…`, to run it in a network namespace).
pub fn start_agent_via(
    prefix: &[&str],
    tag: &str,
    stdout: Stdio,
    policy_text: &str,
    args: &[&str],
) -> Option<RunningAgent> {
    let bin = timeguard()?;
    if !is_root() {
        eprintln!("skipped: loading BPF programs needs root");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("tg-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let policy = dir.join("policy.yaml");
    let socket = dir.join("status.sock");
    std::fs::write(&policy, policy_text).expect("write the policy");
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
        .arg("--status-socket")
        .arg(&socket)
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent starts");
    Some(RunningAgent {
        bin,
        dir,
        policy,
        socket,
        agent,
    })
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
