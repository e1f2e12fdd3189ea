//! Clock events from the kernel, as one JSON line each (the audit trail's schema).

use std::time::{Duration, SystemTime};

use agent_common::{
    clock::op,
    event::{abi, hook, ClockEvent},
    kernel::{classify_syscall, nr, ClockSyscall},
    policy::verdict,
};
use serde_json::{json, Value};

use crate::policy::{CompiledPolicy, ExeId};

/// Reads a POSIX clock in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The UTC wall time of a kernel CLOCK_TAI timestamp. CLOCK_TAI moves with every step of
/// the wall clock, so the stamp is the wall time of the instant itself, whenever it is read;
/// only the TAI-UTC offset is taken now (it changes at most at a leap second).
pub fn wall_time(tai_ns: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(tai_ns.saturating_sub(tai_offset_ns()))
}

/// CLOCK_TAI minus CLOCK_REALTIME now, in nanoseconds, rounded to whole seconds: the
/// offset is an integer number of seconds by definition.
pub fn tai_offset_ns() -> u64 {
    let offset = clock_ns(libc::CLOCK_TAI).saturating_sub(clock_ns(libc::CLOCK_REALTIME));
    (offset + 500_000_000) / 1_000_000_000 * 1_000_000_000
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

pub fn operation_names(bits: u32) -> Vec<&'static str> {
    op::ALL
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

fn syscall_name(abi_: u8, nr_: i32) -> String {
    let nr_ = nr_ as i64;
    let compat = abi_ == abi::COMPAT;
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

/// A task's name as the kernel keeps it (NUL-padded).
pub fn comm_text(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn comm(ev: &ClockEvent) -> String {
    comm_text(&ev.comm)
}

/// The size of the step an event asked for, in nanoseconds (signed), where it carries one:
/// a time to set is measured against the wall clock at the decision, an ADJ_SETOFFSET is the
/// offset itself.
pub fn step_size_ns(ev: &ClockEvent) -> Option<i128> {
    if ev.operations & op::STEP == 0 || ev.has_time == 0 {
        return None;
    }
    let requested = ev.time_sec as i128 * 1_000_000_000 + ev.time_nsec as i128;
    if ev.timex_modes & agent_common::clock::adj::SETOFFSET != 0 {
        return Some(requested);
    }
    let wall_then = ev.tai_ns as i128 - tai_offset_ns() as i128;
    Some(requested - wall_then)
}

/// One clock event as a JSON record.
pub fn clock_event_json(ev: &ClockEvent, policy: &CompiledPolicy, host: &str) -> Value {
    let exe = std::fs::read_link(format!("/proc/{}/exe", ev.tgid))
        .map(|p| p.display().to_string())
        .ok();
    let exe_id = ExeId {
        dev: ev.exe_dev,
        ino: ev.exe_ino,
    };
    let mut what = json!({
        "operations": operation_names(ev.operations),
        "syscall": syscall_name(ev.abi, ev.syscall),
        "abi": match ev.abi { abi::COMPAT => "compat32", abi::KERNEL => "kernel", _ => "native" },
    });
    if ev.clock_id >= 0 {
        what["clock_id"] = json!(ev.clock_id);
    }
    if ev.timex_modes != 0 {
        what["timex_modes"] = json!(format!("{:#06x}", ev.timex_modes));
    }
    if ev.has_time != 0 {
        what["time"] = json!({ "sec": ev.time_sec, "nsec": ev.time_nsec });
    }
    if ev.device != 0 {
        // The kernel's dev_t: 12-bit major above a 20-bit minor.
        what["device"] = json!(format!("{}:{}", ev.device >> 20, ev.device & 0xfffff));
    }
    if ev.ioctl_cmd != 0 {
        what["ioctl"] = json!(format!("{:#010x}", ev.ioctl_cmd));
    }
    if ev.timex_modes & (agent_common::clock::adj::FREQUENCY | agent_common::clock::adj::TICK) != 0
    {
        what["frequency_ppm"] = json!(ev.frequency as f64 / 65536.0);
    }
    json!({
        "time": rfc3339(wall_time(ev.tai_ns)),
        "boot_ns": ev.boot_ns,
        "host": host,
        "kind": "clock",
        "verdict": verdict::name(ev.verdict),
        "rule": policy.rule_name(ev.rule_id),
        "reason": agent_common::policy::reason::name(ev.reason),
        "policy": policy.name,
        "generation": ev.generation,
        "hook": hook::name(ev.hook),
        "who": {
            "pid": ev.pid,
            "tgid": ev.tgid,
            "uid": ev.uid,
            "gid": ev.gid,
            "comm": comm(ev),
            "exe": exe,
            "exe_id": exe_id.to_string(),
        },
        "what": what,
    })
}

/// Copies a ring buffer record into its record type (clock, network, tamper), refusing
/// records of the wrong size.
pub fn parse<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked, T is plain data (Pod), and read_unaligned copies.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(operation_names(op::STEP | op::LEAP), vec!["step", "leap"]);
        assert_eq!(syscall_name(abi::NATIVE, 227), "clock_settime");
        assert_eq!(syscall_name(abi::COMPAT, 25), "stime");
        assert_eq!(syscall_name(abi::COMPAT, 124), "adjtimex");
        assert_eq!(syscall_name(abi::NATIVE, 1), "syscall 1");
    }

    #[test]
    fn short_records_are_refused() {
        assert!(parse::<ClockEvent>(&[0u8; 8]).is_none());
        let bytes = vec![0u8; std::mem::size_of::<ClockEvent>()];
        assert!(parse::<ClockEvent>(&bytes).is_some());
    }
}
