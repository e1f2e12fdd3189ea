//! The status the agent serves on its control socket and `timeguard status` prints: one
//! type, written by the agent and read back by the command (and by the tests, as JSON).

use std::{
    collections::BTreeMap,
    io::{self, Write},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub host: String,
    /// The agent's process id (`timeguard apply` asks it to reload at once with SIGHUP).
    #[serde(default)]
    pub pid: u32,
    /// When the agent started (RFC 3339).
    pub started: String,
    pub enforcement: String,
    /// Why this kernel does not let the agent enforce (empty when it does).
    pub enforcement_unavailable: Vec<String>,
    /// The programs attached, as "name (hook)".
    pub attached: Vec<String>,
    pub unobserved: Vec<String>,
    pub policy: PolicyStatus,
    pub reloads: Reloads,
    /// The clock's exact counters since start.
    pub counters: Vec<Counter>,
    pub events_lost: u64,
    pub events_thinned: u64,
    pub audit_log: Option<PathBuf>,
    pub audit_write_failures: u64,
    pub network: NetworkStatus,
    pub self_protection: SelfProtectionStatus,
    /// Decisions in which a process lost its rule because another process acted as it.
    #[serde(default)]
    pub rules_lost: Vec<RuleLostCount>,
    /// Clock requests refused because no policy could be read once one was in force (an
    /// internal error: the policy maps were rewritten by another writer).
    #[serde(default)]
    pub policy_unreadable: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// None before a policy is in force.
    pub name: Option<String>,
    pub generation: u32,
    pub sha256: Option<String>,
    pub sources: Vec<PathBuf>,
    /// The configured path, followed whatever policy is in force.
    pub path: PathBuf,
    /// Where the policy in force comes from: configured (the files at `path`),
    /// last_known_good or built_in_default (the configured policy was refused at start).
    #[serde(default = "configured")]
    pub source: String,
    /// Why the configured policy is not in force, while a fallback is.
    #[serde(default)]
    pub configured_problems: Vec<String>,
    #[serde(default)]
    pub last_known_good: LastKnownGood,
}

fn configured() -> String {
    "configured".into()
}

/// The last known good policy the agent keeps (the last one it accepted from `path`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastKnownGood {
    /// The file it is kept in.
    pub file: PathBuf,
    /// Its hash and when it was accepted; None while none is known.
    pub sha256: Option<String>,
    pub accepted: Option<String>,
    /// Why it could not be kept, or used at start.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reloads {
    pub ok: u64,
    pub failed: u64,
    /// The problems of the last rejected reload, until one succeeds.
    pub last_error: Option<Vec<String>>,
}

/// One clock counter, or why the counters could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Counter {
    Count {
        rule: String,
        operation: String,
        verdict: String,
        count: u64,
    },
    Unreadable {
        error: String,
    },
}

/// The network guard: where it is attached, and its exact counters by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// The cgroup it is attached to; None: not attached.
    pub attached: Option<String>,
    /// Why it is not attached, when a policy asked for it.
    pub unavailable: Option<String>,
    pub ptp_interfaces: Vec<String>,
    /// Interfaces the PTP guard could not attach to, and why.
    pub ptp_refused: BTreeMap<String, String>,
    pub ntp_packets: Vec<ModeCount>,
    pub nts_ke: Vec<ModeCount>,
    pub ptp_messages: Vec<MessageCount>,
    pub sockets: Vec<SocketCount>,
    /// Why the counters could not be read (then the lists are empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// NTP packets or NTS-KE connections of one mode, verdict and reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeCount {
    pub mode: String,
    pub verdict: String,
    pub reason: String,
    pub count: u64,
}

/// PTP messages of one type, verdict and reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageCount {
    pub message: String,
    pub verdict: String,
    pub reason: String,
    pub count: u64,
}

/// Sockets of one action (bind, connect, raw_socket), service, verdict and reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketCount {
    pub action: String,
    pub service: String,
    pub verdict: String,
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfProtectionStatus {
    /// enforce, audit or off.
    pub mode: String,
    pub unavailable: Vec<String>,
    pub protected_files: usize,
    pub pins: PathBuf,
    /// Timeguard's own maps and links, with the kernel's ids.
    pub objects: Vec<OwnObject>,
    pub attempts: Vec<TamperCount>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnObject {
    pub name: String,
    /// map or link.
    pub kind: String,
    pub id: u32,
}

/// Attempts on the guard of one action, target and verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TamperCount {
    pub action: String,
    pub target: String,
    pub verdict: String,
    pub count: u64,
}

/// Decisions in which a tainted process lost a rule, for one set of reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleLostCount {
    pub rule: String,
    pub reason: String,
    pub count: u64,
}

/// What an absent value prints as.
const UNKNOWN: &str = "?";

impl Counter {
    /// Rule, operation, verdict and count as printed; unknowns for counters that could not
    /// be read.
    pub fn shown(&self) -> (&str, &str, &str, String) {
        match self {
            Counter::Count {
                rule,
                operation,
                verdict,
                count,
            } => (rule, operation, verdict, count.to_string()),
            Counter::Unreadable { .. } => (UNKNOWN, UNKNOWN, UNKNOWN, "null".into()),
        }
    }
}

impl Status {
    /// The status in a person's words, as `timeguard status` prints it.
    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "host:        {} (agent started {})",
            self.host, self.started
        )?;
        writeln!(out, "enforcement: {}", self.enforcement)?;
        for r in &self.enforcement_unavailable {
            writeln!(out, "  unavailable: {r}")?;
        }
        for a in &self.attached {
            writeln!(out, "  attached: {a}")?;
        }
        for u in &self.unobserved {
            writeln!(out, "  not observed: {u}")?;
        }
        let p = &self.policy;
        writeln!(
            out,
            "policy:      \"{}\" generation {} sha256 {}",
            p.name.as_deref().unwrap_or(UNKNOWN),
            p.generation,
            p.sha256.as_deref().unwrap_or(UNKNOWN)
        )?;
        match p.source.as_str() {
            "configured" => writeln!(out, "  from:      {}", p.path.display())?,
            other => writeln!(
                out,
                "  from:      {other} (FALLBACK: the configured policy at {} is not valid)",
                p.path.display()
            )?,
        }
        for e in &p.configured_problems {
            writeln!(out, "  configured policy refused: {e}")?;
        }
        let k = &p.last_known_good;
        match (&k.sha256, &k.accepted) {
            (Some(hash), Some(when)) => writeln!(
                out,
                "  last known good: sha256 {hash} accepted {when} ({})",
                k.file.display()
            )?,
            _ => writeln!(out, "  last known good: none kept ({})", k.file.display())?,
        }
        if let Some(e) = &k.error {
            writeln!(out, "  last known good unusable: {e}")?;
        }
        let r = &self.reloads;
        writeln!(out, "reloads:     {} ok, {} rejected", r.ok, r.failed)?;
        for e in r.last_error.iter().flatten() {
            writeln!(out, "  last rejection: {e}")?;
        }
        writeln!(out, "attempts since start:")?;
        for c in &self.counters {
            let (rule, operation, verdict, count) = c.shown();
            writeln!(out, "  {rule:<20} {operation:<10} {verdict:<9} {count}")?;
        }
        for l in &self.rules_lost {
            writeln!(
                out,
                "  rule {} lost by tainted processes ({}): {}",
                l.rule, l.reason, l.count
            )?;
        }
        if self.policy_unreadable != 0 {
            writeln!(
                out,
                "  refused with no policy readable (internal error: the policy maps were rewritten): {}",
                self.policy_unreadable
            )?;
        }
        writeln!(
            out,
            "events thinned: {} (over {} per process per second), lost: {}",
            self.events_thinned,
            agent_common::event::thinning::EVENTS_PER_WINDOW,
            self.events_lost
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A status as an agent serves it, with every kind of entry.
    fn served() -> serde_json::Value {
        json!({
            "host": "h", "pid": 42, "started": "2026-11-22T04:25:52Z", "enforcement": "enforce",
            "enforcement_unavailable": [], "attached": ["clock_settime_guard (lsm/settime)"],
            "unobserved": ["x"],
            "policy": {"name": "p", "generation": 2, "sha256": "ab", "sources": ["/etc/timeguard/p.yaml"], "path": "/etc/timeguard",
                "source": "last_known_good", "configured_problems": ["p.yaml:2:1: error: y"],
                "last_known_good": {"file": "/var/lib/timeguard/last-known-good.json", "sha256": "ab",
                    "accepted": "2026-11-22T04:00:00Z", "error": null}},
            "reloads": {"ok": 1, "failed": 1, "last_error": ["p.yaml:1:1: error: x"]},
            "counters": [{"rule": "default", "operation": "step", "verdict": "deny", "count": 3}, {"error": "unreadable"}],
            "events_lost": 0, "events_thinned": 4, "audit_log": null, "audit_write_failures": 0,
            "network": {"attached": "/sys/fs/cgroup", "unavailable": null, "ptp_interfaces": ["eth0"],
                "ptp_refused": {"lo": "no"},
                "ntp_packets": [{"mode": "client", "verdict": "allow", "reason": "", "count": 1}],
                "nts_ke": [], "ptp_messages": [{"message": "announce", "verdict": "deny", "reason": "grandmaster_not_listed", "count": 2}],
                "sockets": [{"action": "bind", "service": "ntp", "verdict": "deny", "reason": "x", "count": 1}]},
            "self_protection": {"mode": "enforce", "unavailable": [], "protected_files": 3,
                "pins": "/sys/fs/bpf/timeguard/x", "objects": [{"name": "POLICY", "kind": "map", "id": 12}],
                "attempts": [{"action": "signal", "target": "agent", "verdict": "deny", "count": 1}]},
            "rules_lost": [{"rule": "chronyd", "reason": "traced", "count": 2}],
            "policy_unreadable": 1,
        })
    }

    #[test]
    fn round_trip_keeps_every_key_and_value() {
        let v = served();
        let status: Status = serde_json::from_value(v.clone()).expect("a status");
        assert_eq!(serde_json::to_value(&status).expect("json"), v);
        // A network guard whose counters could not be read says why.
        let mut v = served();
        v["network"]["error"] = json!("unreadable");
        let status: Status = serde_json::from_value(v.clone()).expect("a status");
        assert_eq!(status.network.error.as_deref(), Some("unreadable"));
        assert_eq!(serde_json::to_value(&status).expect("json"), v);
    }

    #[test]
    fn printed_in_a_persons_words() {
        let status: Status = serde_json::from_value(served()).expect("a status");
        let mut out = Vec::new();
        status.print(&mut out).expect("print");
        let text = String::from_utf8(out).expect("text");
        assert!(
            text.starts_with("host:        h (agent started 2026-11-22T04:25:52Z)\nenforcement: enforce\n  attached: clock_settime_guard (lsm/settime)\n  not observed: x\n"),
            "{text}"
        );
        assert!(
            text.contains("policy:      \"p\" generation 2 sha256 ab\n  from:      last_known_good (FALLBACK: the configured policy at /etc/timeguard is not valid)\n  configured policy refused: p.yaml:2:1: error: y\n  last known good: sha256 ab accepted 2026-11-22T04:00:00Z (/var/lib/timeguard/last-known-good.json)\nreloads:     1 ok, 1 rejected\n  last rejection: p.yaml:1:1: error: x\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "  {:<20} {:<10} {:<9} 3\n",
                "default", "step", "deny"
            )),
            "{text}"
        );
        assert!(text.contains("events thinned: 4 (over "), "{text}");
        assert!(text.ends_with("lost: 0\n"), "{text}");
    }
}
