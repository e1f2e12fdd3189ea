//! Clock events from the kernel, as one JSON line each (the audit trail's schema).

use std::time::{Duration, SystemTime};

use agent_common::{
    clock::op,
    event::{Abi, ClockEvent, Hook, COMM_LEN},
    kernel::{classify_syscall, nr, ClockSyscall},
    policy::Verdict,
};

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

/// A task's name as the kernel keeps it (NUL-padded).
fn comm_text(comm: &[u8; COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
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

/// Executable paths by process and file identity, read from /proc once per process within
/// a batch of records: a burst of events from one process costs one readlink, not one each.
/// Emptied after each batch, so a path renamed or deleted since shows as the kernel says.
/// The identity (device and inode, from the kernel) is what decides; the path is for the
/// reader.
#[derive(Default)]
pub struct ExePaths {
    paths: std::collections::HashMap<(u32, u64, u64), String>,
}

impl ExePaths {
    pub fn path(&mut self, tgid: u32, exe_dev: u64, exe_ino: u64) -> Option<&str> {
        use std::collections::hash_map::Entry;
        match self.paths.entry((tgid, exe_dev, exe_ino)) {
            Entry::Occupied(known) => Some(known.into_mut().as_str()),
            Entry::Vacant(new) => {
                // A process already gone has no path: not remembered, it is asked again.
                Some(new.insert(exe_path(tgid)?).as_str())
            }
        }
    }

    pub fn clear(&mut self) {
        self.paths.clear();
    }
}

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
}

/// Who made a request, as every record names them (clock, network and tamper records): the
/// kernel's ids and task name, the executable's path while known, and its identity.
#[derive(serde::Serialize)]
pub struct Who<'a> {
    pid: u32,
    tgid: u32,
    uid: u32,
    gid: u32,
    comm: String,
    exe: Option<&'a str>,
    exe_id: String,
}

impl<'a> Who<'a> {
    pub fn new(
        (pid, tgid): (u32, u32),
        (uid, gid): (u32, u32),
        comm: &[u8; COMM_LEN],
        exe: Option<&'a str>,
        exe_id: ExeId,
    ) -> Self {
        Who {
            pid,
            tgid,
            uid,
            gid,
            comm: comm_text(comm),
            exe,
            exe_id: exe_id.to_string(),
        }
    }
}

/// The path of a process's executable while the process lives. For the reader: what
/// decides is the identity (device and inode) the kernel gave.
pub fn exe_path(tgid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{tgid}/exe"))
        .map(|p| p.display().to_string())
        .ok()
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

/// One clock event as a record; `exe` is the caller's executable path, when still known.
pub fn clock_record<'a>(
    ev: &ClockEvent,
    policy: &'a CompiledPolicy,
    host: &'a str,
    exe: Option<&'a str>,
) -> ClockRecord<'a> {
    let exe_id = ExeId {
        dev: ev.caller.exe_dev,
        ino: ev.caller.exe_ino,
    };
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
        reason: agent_common::policy::Reason::name_of(ev.reason),
        policy: &policy.name,
        generation: ev.generation,
        hook: Hook::name_of(ev.hook),
        who: Who::new(
            (ev.caller.pid, ev.caller.tgid),
            (ev.caller.uid, ev.caller.gid),
            &ev.caller.comm,
            exe,
            exe_id,
        ),
        what,
    }
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
        ev.operations = op::FREQUENCY;
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
    }

    #[test]
    fn a_process_exe_path_is_read_once() {
        let mut paths = ExePaths::default();
        let me = std::process::id();
        let first = paths.path(me, 1, 2).map(str::to_string);
        assert!(first.is_some());
        assert_eq!(paths.path(me, 1, 2).map(str::to_string), first);
        // A process that does not exist has no path, and says so.
        assert_eq!(paths.path(u32::MAX, 1, 2), None);
    }

    #[test]
    fn short_records_are_refused() {
        assert!(parse::<ClockEvent>(&[0u8; 8]).is_none());
        let bytes = vec![0u8; std::mem::size_of::<ClockEvent>()];
        assert!(parse::<ClockEvent>(&bytes).is_some());
    }
}
