//! Tamper records of the audit trail: one per attempt on the agent, its files, pins or
//! BPF objects.

use std::path::PathBuf;

use agent_common::{
    policy::Verdict,
    tamper::{prctl, Action, TamperEvent, Target},
};
use serde::Serialize;
use serde_json::Value;

use crate::{events, policy::ExeId, records::Who};

/// One tamper attempt as a record.
#[derive(Serialize)]
pub struct TamperRecord<'a> {
    time: String,
    boot_ns: u64,
    host: &'a str,
    kind: &'static str,
    action: &'static str,
    verdict: &'static str,
    policy: &'a str,
    generation: u32,
    who: Who<'a>,
    what: What,
}

impl TamperRecord<'_> {
    pub fn action(&self) -> &'static str {
        self.action
    }

    pub fn verdict(&self) -> &'static str {
        self.verdict
    }
}

/// What was attempted on, by action.
#[derive(Serialize)]
#[serde(untagged)]
enum What {
    Signal {
        target: &'static str,
        signal: String,
        pid: u32,
    },
    Ptrace {
        target: &'static str,
        pid: u32,
        ptrace_mode: String,
        exe: Option<PathBuf>,
    },
    Bpf {
        target: &'static str,
        bpf_command: u32,
        id: u64,
    },
    /// `prctl(PR_SET_MM)`: the request, and the file offered as the executable.
    RewriteIdentity {
        target: &'static str,
        pid: u32,
        prctl: &'static str,
        exe_offered: Option<PathBuf>,
    },
    File {
        target: &'static str,
        file: Option<PathBuf>,
        file_id: String,
    },
}

fn signal_name(sig: u32) -> String {
    const NAMES: [&str; 32] = [
        "0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES
        .get(sig as usize)
        .map_or_else(|| format!("signal {sig}"), |n| n.to_string())
}

/// One tamper attempt as a record; `exe` is the caller's executable path while known,
/// `path_of` names a protected file by its identity.
pub fn tamper_record<'a>(
    ev: &TamperEvent,
    policy: &'a str,
    host: &'a str,
    exe: Option<&'a str>,
    path_of: &dyn Fn(u64, u64) -> Option<PathBuf>,
) -> TamperRecord<'a> {
    let target = Target::name_of(ev.target);
    let what = match Action::from_code(ev.action) {
        Some(Action::Signal) => What::Signal {
            target,
            signal: signal_name(ev.detail),
            pid: ev.target_tgid,
        },
        Some(Action::Ptrace) => What::Ptrace {
            target,
            pid: ev.target_tgid,
            ptrace_mode: format!("{:#x}", ev.detail),
            exe: path_of(ev.target_dev, ev.target_ino),
        },
        Some(Action::Bpf) => What::Bpf {
            target,
            bpf_command: ev.detail,
            id: ev.target_ino,
        },
        Some(Action::RewriteIdentity) => What::RewriteIdentity {
            target,
            pid: ev.target_tgid,
            prctl: prctl::set_mm_request(ev.detail),
            exe_offered: (ev.target_ino != 0)
                .then(|| path_of(ev.target_dev, ev.target_ino))
                .flatten(),
        },
        _ => What::File {
            target,
            file: path_of(ev.target_dev, ev.target_ino),
            file_id: ExeId {
                dev: ev.target_dev,
                ino: ev.target_ino,
            }
            .to_string(),
        },
    };
    TamperRecord {
        time: events::rfc3339(events::wall_time(ev.tai_ns)),
        boot_ns: ev.boot_ns,
        host,
        kind: "tamper",
        action: Action::name_of(ev.action),
        verdict: Verdict::name_of(ev.verdict),
        policy,
        generation: ev.generation,
        who: Who::of(&ev.caller, exe),
        what,
    }
}

/// One tamper attempt as a JSON record, the caller's executable read now; `path_of` names
/// a protected file by its identity.
pub fn tamper_json(
    ev: &TamperEvent,
    policy: &str,
    host: &str,
    path_of: &dyn Fn(u64, u64) -> Option<PathBuf>,
) -> Value {
    let exe = events::exe_path(&ev.caller);
    serde_json::json!(tamper_record(ev, policy, host, exe.as_deref(), path_of))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(action_: u8, target_: u32) -> TamperEvent {
        // SAFETY: TamperEvent is plain data; all zeroes is a valid value.
        let mut ev: TamperEvent = unsafe { std::mem::zeroed() };
        ev.action = action_;
        ev.target = target_;
        ev.verdict = Verdict::Deny.code();
        ev.caller.tgid = u32::MAX;
        ev.caller.pid = 9;
        ev.generation = 2;
        ev.boot_ns = 5;
        ev.caller.comm[..4].copy_from_slice(b"kill");
        ev
    }

    fn record(ev: &TamperEvent) -> Value {
        tamper_json(ev, "p", "h", &|dev, ino| {
            ((dev, ino) == (8, 12)).then(|| PathBuf::from("/etc/timeguard/default.yaml"))
        })
    }

    #[test]
    fn tamper_records_keep_the_trail_schema() {
        let mut ev = event(Action::Signal.code(), Target::Agent.code());
        ev.detail = 9;
        ev.target_tgid = 100;
        let v = record(&ev);
        // serde_json's objects keep their keys sorted.
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "action",
                "boot_ns",
                "generation",
                "host",
                "kind",
                "policy",
                "time",
                "verdict",
                "what",
                "who"
            ]
        );
        assert_eq!(v["kind"], "tamper");
        assert_eq!(v["action"], Action::name_of(Action::Signal.code()));
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["policy"], "p");
        assert_eq!(v["generation"], 2);
        assert_eq!(v["boot_ns"], 5);
        assert_eq!(v["who"]["comm"], "kill");
        assert_eq!(v["who"]["pid"], 9);
        assert_eq!(v["who"]["exe"], Value::Null);
        assert_eq!(
            v["what"],
            json!({"target": Target::name_of(Target::Agent.code()), "signal": "SIGKILL", "pid": 100})
        );

        let mut ev = event(Action::Ptrace.code(), Target::Agent.code());
        ev.detail = 0x11;
        ev.target_tgid = 100;
        assert_eq!(
            record(&ev)["what"],
            json!({"target": Target::name_of(Target::Agent.code()), "pid": 100, "ptrace_mode": "0x11", "exe": null})
        );

        let mut ev = event(Action::Bpf.code(), Target::Map.code());
        ev.detail = 2;
        ev.target_ino = 77;
        assert_eq!(
            record(&ev)["what"],
            json!({"target": Target::name_of(Target::Map.code()), "bpf_command": 2, "id": 77})
        );

        let mut ev = event(Action::Unlink.code(), Target::Policy.code());
        ev.target_dev = 8;
        ev.target_ino = 12;
        assert_eq!(
            record(&ev)["what"],
            json!({"target": Target::name_of(Target::Policy.code()), "file": "/etc/timeguard/default.yaml",
                "file_id": ExeId { dev: 8, ino: 12 }.to_string()})
        );
        ev.target_ino = 13;
        assert_eq!(record(&ev)["what"]["file"], Value::Null);

        let mut ev = event(Action::RewriteIdentity.code(), Target::Identity.code());
        ev.detail = prctl::PR_SET_MM_EXE_FILE;
        ev.target_tgid = 100;
        ev.target_dev = 8;
        ev.target_ino = 12;
        let v = record(&ev);
        assert_eq!(v["action"], "rewrite_identity");
        assert_eq!(
            v["what"],
            json!({"target": "identity", "pid": 100, "prctl": "PR_SET_MM_EXE_FILE",
                "exe_offered": "/etc/timeguard/default.yaml"})
        );
        ev.detail = 14;
        ev.target_ino = 0;
        assert_eq!(
            record(&ev)["what"],
            json!({"target": "identity", "pid": 100, "prctl": "PR_SET_MM_MAP", "exe_offered": null})
        );
        assert_eq!(signal_name(40), "signal 40");
    }
}
