//! A clock event from the kernel as one record of the audit trail.

use agent_common::{
    event::{Abi, ClockEvent, Hook},
    integrity::reason_names,
    kernel::{classify_syscall, nr, ClockSyscall},
    policy::{Reason, Verdict},
};

use super::Who;
use crate::{
    events::{rfc3339, wall_time, Seen},
    policy::{model::operation_names, CompiledPolicy, ExeId},
};

/// One clock event as a record of the audit trail. Serialized straight from this struct: a
/// JSON value built field by field cost several times more, and the trail has to keep up
/// with a burst of events from many processes.
#[derive(serde::Serialize)]
pub struct ClockRecord<'a> {
    time: String,
    boot_ns: u64,
    host: &'a str,
    kind: &'static str,
    verdict: &'static str,
    rule: &'a str,
    reason: &'static str,
    policy: &'a str,
    generation: u32,
    hook: &'static str,
    who: Who<'a>,
    what: What,
    /// The rule the caller's executable matched and its process lost, when it lost one.
    #[serde(skip_serializing_if = "Option::is_none")]
    integrity: Option<Integrity<'a>>,
}

/// Why the default decided for a process a rule matched.
#[derive(serde::Serialize)]
struct Integrity<'a> {
    lost_rule: &'a str,
    reasons: Vec<&'static str>,
    /// The process that acted as the caller (or as the ancestor it inherited the taint from);
    /// none when it tainted itself, by the code it mapped.
    #[serde(skip_serializing_if = "Option::is_none")]
    source_pid: Option<u32>,
    /// The first foreign or modified file it mapped as code, as `major:minor:inode` (the
    /// form of `who.exe_id`): find it with `find / -xdev -inum INODE` on that file system.
    #[serde(skip_serializing_if = "Option::is_none")]
    file_id: Option<String>,
}

#[derive(serde::Serialize)]
struct What {
    operations: Vec<&'static str>,
    syscall: String,
    abi: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_id: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timex_modes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<Timespec>,
    /// The kernel's dev_t as major:minor.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ioctl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_ppm: Option<f64>,
}

#[derive(serde::Serialize)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

/// One clock event as a record; `seen` is the caller's executable path and cgroup, when
/// still known.
pub fn clock_record<'a>(
    ev: &ClockEvent,
    policy: &'a CompiledPolicy,
    host: &'a str,
    seen: Option<&'a Seen>,
) -> ClockRecord<'a> {
    let sets_frequency = agent_common::clock::adj::FREQUENCY | agent_common::clock::adj::TICK;
    let what = What {
        operations: operation_names(ev.operations),
        syscall: syscall_name(ev.abi, ev.syscall),
        abi: Abi::name_of(ev.abi),
        clock_id: (ev.clock_id >= 0).then_some(ev.clock_id),
        timex_modes: (ev.timex_modes != 0).then(|| format!("{:#06x}", ev.timex_modes)),
        time: (ev.has_time != 0).then_some(Timespec {
            sec: ev.time_sec,
            nsec: ev.time_nsec,
        }),
        // The kernel's dev_t: 12-bit major above a 20-bit minor.
        device: (ev.device != 0).then(|| format!("{}:{}", ev.device >> 20, ev.device & 0xfffff)),
        ioctl: (ev.ioctl_cmd != 0).then(|| format!("{:#010x}", ev.ioctl_cmd)),
        frequency_ppm: (ev.timex_modes & sets_frequency != 0)
            .then_some(ev.frequency as f64 / 65536.0),
    };
    ClockRecord {
        time: rfc3339(wall_time(ev.tai_ns)),
        boot_ns: ev.boot_ns,
        host,
        kind: "clock",
        verdict: Verdict::name_of(ev.verdict),
        rule: policy.rule_name(ev.rule_id),
        reason: Reason::name_of(ev.reason),
        policy: &policy.name,
        generation: ev.generation,
        hook: Hook::name_of(ev.hook),
        who: Who::of(&ev.caller, seen.map(|s| s.exe.as_str()))
            .in_cgroup(seen.and_then(|s| s.cgroup.as_deref())),
        what,
        integrity: (ev.lost_rule_id != 0).then(|| Integrity {
            lost_rule: policy.rule_name(ev.lost_rule_id),
            reasons: reason_names(ev.taint_reasons).collect(),
            source_pid: (ev.taint_source_tgid != 0).then_some(ev.taint_source_tgid),
            file_id: (ev.taint_file_ino != 0).then(|| {
                ExeId {
                    dev: ev.taint_file_dev,
                    ino: ev.taint_file_ino,
                }
                .to_string()
            }),
        }),
    }
}

fn syscall_name(abi_: u8, nr_: i32) -> String {
    let nr_ = nr_ as i64;
    let compat = abi_ == Abi::Compat.code();
    let name = match (compat, nr_) {
        (false, nr::native::CLOCK_SETTIME) | (true, nr::compat::CLOCK_SETTIME) => "clock_settime",
        (true, nr::compat::CLOCK_SETTIME64) => "clock_settime64",
        (false, nr::native::SETTIMEOFDAY) | (true, nr::compat::SETTIMEOFDAY) => "settimeofday",
        (true, nr::compat::STIME) => "stime",
        (true, nr::compat::CLOCK_ADJTIME64) => "clock_adjtime64",
        (false, 2) | (true, 5) => "open",
        (false, 257) | (true, 295) => "openat",
        (_, 437) => "openat2",
        _ => match classify_syscall(compat, nr_) {
            ClockSyscall::Adjtimex { .. } => "adjtimex",
            ClockSyscall::ClockAdjtime { .. } => "clock_adjtime",
            ClockSyscall::Ioctl => "ioctl",
            _ => return format!("syscall {nr_}"),
        },
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_names() {
        assert_eq!(syscall_name(Abi::Native.code(), 227), "clock_settime");
        assert_eq!(syscall_name(Abi::Compat.code(), 25), "stime");
        assert_eq!(syscall_name(Abi::Compat.code(), 124), "adjtimex");
        assert_eq!(syscall_name(Abi::Native.code(), 1), "syscall 1");
    }

    #[test]
    fn clock_records_keep_the_trail_schema() {
        let dir = std::env::temp_dir().join(format!("tg-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("p.yaml");
        std::fs::write(&file, "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: p}\nspec:\n  clock:\n    default: deny\n    rules: []\n").expect("policy file");
        // The directory is the host's root: no daemons installed there.
        let host = crate::policy::Host { root: dir.clone() };
        let policy = crate::policy::load(std::slice::from_ref(&file), &host)
            .map_err(|d| format!("{d:?}"))
            .expect("valid policy");
        let _ = std::fs::remove_dir_all(&dir);
        // SAFETY: ClockEvent is plain data; all zeroes is a valid value.
        let mut ev: ClockEvent = unsafe { std::mem::zeroed() };
        ev.caller.tgid = 4242;
        ev.operations = agent_common::clock::op::FREQUENCY;
        ev.timex_modes = agent_common::clock::adj::FREQUENCY;
        ev.frequency = 5 << 16;
        ev.clock_id = -1;
        ev.syscall = 159;
        ev.verdict = Verdict::Deny.code();
        ev.caller.comm[..4].copy_from_slice(b"date");
        let text = serde_json::to_string(&clock_record(&ev, &policy, "h", None)).expect("json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["kind"], "clock");
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["policy"], "p");
        assert_eq!(v["who"]["comm"], "date");
        assert_eq!(v["who"]["exe"], serde_json::Value::Null);
        assert_eq!(v["what"]["operations"], serde_json::json!(["frequency"]));
        assert_eq!(v["what"]["syscall"], "adjtimex");
        assert_eq!(v["what"]["frequency_ppm"], 5.0);
        assert_eq!(v["what"]["timex_modes"], "0x0002");
        // What the event does not carry is left out, not written as null.
        for absent in ["clock_id", "time", "device", "ioctl"] {
            assert!(v["what"].get(absent).is_none(), "{absent} in {text}");
        }
        assert!(v.get("integrity").is_none(), "{text}");
        // A process that lost its rule: which, why and by whom.
        ev.lost_rule_id = 7;
        ev.taint_reasons = agent_common::integrity::TaintReason::Traced.code();
        ev.taint_source_tgid = 99;
        let v = serde_json::to_value(clock_record(&ev, &policy, "h", None)).expect("json");
        assert_eq!(v["integrity"]["reasons"], serde_json::json!(["traced"]));
        assert_eq!(v["integrity"]["source_pid"], 99);
        assert!(v["integrity"]["lost_rule"].is_string(), "{v}");
        assert!(v["integrity"].get("file_id").is_none(), "{v}");
        // Code it mapped itself: no tracer, the file named.
        ev.taint_reasons = agent_common::integrity::TaintReason::ForeignCode.code();
        ev.taint_source_tgid = 0;
        ev.taint_file_dev = (8 << 20) | 1;
        ev.taint_file_ino = 4242;
        let v = serde_json::to_value(clock_record(&ev, &policy, "h", None)).expect("json");
        assert_eq!(
            v["integrity"]["reasons"],
            serde_json::json!(["foreign_code"])
        );
        assert!(v["integrity"].get("source_pid").is_none(), "{v}");
        assert_eq!(v["integrity"]["file_id"], "8:1:4242");
    }
}
