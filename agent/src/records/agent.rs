//! The agent's own records: what it did (started, loaded or rejected a policy, fell back to
//! the last known good or built-in policy, was asked to stop, stopped, removed the pins), stamped like the kernel's with CLOCK_BOOTTIME beside the
//! wall time, so they order right across a step.

use std::{path::PathBuf, time::SystemTime};

use serde::Serialize;

use crate::events::{clock_ns, rfc3339};

/// One record of the agent: the envelope every kind shares, and the event.
#[derive(Debug, Serialize)]
pub struct AgentRecord {
    time: String,
    boot_ns: u64,
    /// Absent when no agent runs (`timeguard stop --unpin` writes the record itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    kind: &'static str,
    #[serde(flatten)]
    event: AgentEvent,
}

/// What the agent did; `event` in the record.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    Started {
        enforcement: &'static str,
        policy: String,
        policy_sha256: String,
        generation: u32,
        attached: Vec<String>,
        adopted: Vec<String>,
        inherited_generation: u32,
        pins: PathBuf,
        audit_log: Option<PathBuf>,
        metrics_addr: Option<String>,
    },
    PolicyLoaded {
        reason: String,
        policy: String,
        policy_sha256: String,
        generation: u32,
        /// configured, last_known_good or built_in_default.
        source: &'static str,
    },
    /// The configured policy failed validation at start: a fallback is enforced instead.
    PolicyFallback {
        /// The configured path, and why its policy was refused.
        configured: PathBuf,
        problems: Vec<String>,
        /// What is enforced instead: last_known_good or built_in_default.
        enforced: &'static str,
        policy: String,
        policy_sha256: String,
        generation: u32,
        /// When the last known good policy enforced was accepted.
        accepted: Option<String>,
        /// Why the last known good policy is not enforced, when the built-in default is.
        last_known_good_unusable: Option<String>,
    },
    PolicyRejected {
        reason: String,
        problems: Vec<String>,
        generation_in_force: u32,
    },
    StopRequested {
        unpin: bool,
        by: Option<Peer>,
    },
    Stopped {
        enforcement: &'static str,
        generation: u32,
        enforcement_stays: bool,
        unpinned: Vec<PathBuf>,
    },
    /// The pins removed with no agent running.
    Unpinned {
        by: Caller,
        pins: Vec<PathBuf>,
        reason: &'static str,
    },
}

/// The client of the control socket, as the kernel names it.
#[derive(Debug, Serialize)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// The process running a command that acts without the agent.
#[derive(Debug, Serialize)]
pub struct Caller {
    pub pid: i32,
    pub uid: u32,
    pub exe: Option<PathBuf>,
}

impl Caller {
    /// This process.
    pub fn this_process() -> Self {
        // SAFETY: getters without preconditions.
        let (pid, uid) = unsafe { (libc::getpid(), libc::getuid()) };
        Caller {
            pid,
            uid,
            exe: std::env::current_exe().ok(),
        }
    }
}

impl AgentRecord {
    /// A record of `event` now, by the agent on `host` (None: no agent runs).
    pub fn now(host: Option<&str>, event: AgentEvent) -> Self {
        AgentRecord {
            time: rfc3339(SystemTime::now()),
            boot_ns: clock_ns(libc::CLOCK_BOOTTIME),
            host: host.map(str::to_string),
            kind: "agent",
            event,
        }
    }

    /// The record as a JSON value: its keys sorted, as the trail's agent records always were.
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The record without its stamps (checked here to be present), and its text.
    fn fields(host: Option<&str>, event: AgentEvent) -> (serde_json::Value, String) {
        let mut v = AgentRecord::now(host, event).to_json().expect("json");
        let text = v.to_string();
        let map = v.as_object_mut().expect("an object");
        assert!(map.remove("time").is_some_and(|t| t.is_string()), "{text}");
        assert!(map.remove("boot_ns").is_some_and(|t| t.is_u64()), "{text}");
        (v, text)
    }

    #[test]
    fn started_and_stopped() {
        let (v, text) = fields(
            Some("h"),
            AgentEvent::Started {
                enforcement: "enforce",
                policy: "p".into(),
                policy_sha256: "ab".into(),
                generation: 1,
                attached: vec!["clock_settime_guard (lsm/settime)".into()],
                adopted: vec![],
                inherited_generation: 0,
                pins: "/sys/fs/bpf/timeguard/x".into(),
                audit_log: None,
                metrics_addr: Some("127.0.0.1:9817".into()),
            },
        );
        assert_eq!(
            v,
            json!({"host": "h", "kind": "agent", "event": "started", "enforcement": "enforce",
                "policy": "p", "policy_sha256": "ab", "generation": 1,
                "attached": ["clock_settime_guard (lsm/settime)"], "adopted": [],
                "inherited_generation": 0, "pins": "/sys/fs/bpf/timeguard/x", "audit_log": null,
                "metrics_addr": "127.0.0.1:9817"})
        );
        // Keys in order, as a `json!` record wrote them.
        assert!(text.starts_with(r#"{"adopted":[],"attached":"#), "{text}");
        let (v, _) = fields(
            Some("h"),
            AgentEvent::Stopped {
                enforcement: "observe-only",
                generation: 3,
                enforcement_stays: false,
                unpinned: vec!["/sys/fs/bpf/timeguard/x".into()],
            },
        );
        assert_eq!(
            v,
            json!({"host": "h", "kind": "agent", "event": "stopped", "enforcement": "observe-only",
                "generation": 3, "enforcement_stays": false, "unpinned": ["/sys/fs/bpf/timeguard/x"]})
        );
    }

    #[test]
    fn reloads() {
        let (v, _) = fields(
            Some("h"),
            AgentEvent::PolicyLoaded {
                reason: "SIGHUP".into(),
                policy: "p".into(),
                policy_sha256: "ab".into(),
                generation: 2,
                source: "configured",
            },
        );
        assert_eq!(
            v,
            json!({"host": "h", "kind": "agent", "event": "policy_loaded", "reason": "SIGHUP",
                "policy": "p", "policy_sha256": "ab", "generation": 2, "source": "configured"})
        );
        let (v, _) = fields(
            Some("h"),
            AgentEvent::PolicyFallback {
                configured: "/etc/timeguard".into(),
                problems: vec!["p.yaml:1:1: error: x".into()],
                enforced: "built_in_default",
                policy: "default".into(),
                policy_sha256: "cd".into(),
                generation: 1,
                accepted: None,
                last_known_good_unusable: Some("no last known good policy is kept".into()),
            },
        );
        assert_eq!(
            v,
            json!({"host": "h", "kind": "agent", "event": "policy_fallback",
                "configured": "/etc/timeguard", "problems": ["p.yaml:1:1: error: x"],
                "enforced": "built_in_default", "policy": "default", "policy_sha256": "cd",
                "generation": 1, "accepted": null,
                "last_known_good_unusable": "no last known good policy is kept"})
        );
        let (v, _) = fields(
            Some("h"),
            AgentEvent::PolicyRejected {
                reason: "policy files changed".into(),
                problems: vec!["p.yaml:1:1: error: x".into()],
                generation_in_force: 2,
            },
        );
        assert_eq!(
            v,
            json!({"host": "h", "kind": "agent", "event": "policy_rejected",
                "reason": "policy files changed", "problems": ["p.yaml:1:1: error: x"],
                "generation_in_force": 2})
        );
    }

    #[test]
    fn stop_requested_and_unpinned() {
        let (v, _) = fields(
            Some("h"),
            AgentEvent::StopRequested {
                unpin: true,
                by: Some(Peer {
                    uid: 0,
                    pid: Some(7),
                }),
            },
        );
        assert_eq!(
            v,
            json!({"host": "h", "kind": "agent", "event": "stop_requested", "unpin": true,
                "by": {"uid": 0, "pid": 7}})
        );
        let (v, _) = fields(
            Some("h"),
            AgentEvent::StopRequested {
                unpin: false,
                by: None,
            },
        );
        assert_eq!(v["by"], serde_json::Value::Null);
        // With no agent running there is no host.
        let (v, _) = fields(
            None,
            AgentEvent::Unpinned {
                by: Caller {
                    pid: 9,
                    uid: 0,
                    exe: None,
                },
                pins: vec![],
                reason: "timeguard stop --unpin with no agent running",
            },
        );
        assert_eq!(
            v,
            json!({"kind": "agent", "event": "unpinned", "by": {"pid": 9, "uid": 0, "exe": null},
                "pins": [], "reason": "timeguard stop --unpin with no agent running"})
        );
    }
}
