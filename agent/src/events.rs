//! What every kind of kernel record needs on the user side: the clocks its stamps are read
//! against, the caller's executable path, and the copy out of the ring buffer. The records
//! themselves are under `records`.

use std::time::{Duration, SystemTime};

use agent_common::{
    clock::op,
    event::{Caller, ClockEvent},
};

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

/// Executable paths (and cgroups) by process and file identity, read from /proc once per
/// process within a batch of records: a burst of events from one process costs one
/// readlink, not one each. Emptied after each batch, so a path renamed or deleted since
/// shows as the kernel says. The identity (device and inode, from the kernel) is what
/// decides; the path is for the reader.
#[derive(Default)]
pub struct ExePaths {
    paths: std::collections::HashMap<(u32, u64, u64), Seen>,
}

/// A process as /proc shows it while it lives: its executable's path and its cgroup (the
/// systemd unit it runs in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub exe: String,
    pub cgroup: Option<String>,
}

impl ExePaths {
    pub fn seen(&mut self, tgid: u32, exe_dev: u64, exe_ino: u64) -> Option<&Seen> {
        use std::collections::hash_map::Entry;
        match self.paths.entry((tgid, exe_dev, exe_ino)) {
            Entry::Occupied(known) => Some(known.into_mut()),
            Entry::Vacant(new) => {
                // A process already gone has no path: not remembered, it is asked again.
                let exe = exe_path(&Caller {
                    tgid,
                    exe_dev,
                    exe_ino,
                    ..Caller::default()
                })?;
                Some(new.insert(Seen {
                    exe,
                    cgroup: cgroup_path(tgid),
                }))
            }
        }
    }

    pub fn clear(&mut self) {
        self.paths.clear();
    }
}

/// The path of a process's executable while the process lives, when it names the file the
/// kernel decided by (the one the process was executed from). For the reader: what decides
/// is the identity (device and inode). A process whose executable was renamed since its
/// exec (`PR_SET_MM`) has no path: /proc would name the file it claims to be.
pub fn exe_path(caller: &Caller) -> Option<String> {
    let link = format!("/proc/{}/exe", caller.tgid);
    let path = std::fs::read_link(&link).ok()?;
    let now = crate::policy::ExeId::of(std::path::Path::new(&link)).ok()?;
    (now.dev == caller.exe_dev && now.ino == caller.exe_ino).then(|| path.display().to_string())
}

/// The cgroup of a process on the unified hierarchy (`/system.slice/chrony.service`) while
/// the process lives.
pub fn cgroup_path(tgid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
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
    use std::path::Path;

    use super::*;

    #[test]
    fn a_process_exe_path_is_read_once() {
        let mut paths = ExePaths::default();
        let me = std::process::id();
        let exe = crate::policy::ExeId::of(Path::new("/proc/self/exe")).expect("own exe");
        let first = paths.seen(me, exe.dev, exe.ino).cloned();
        assert!(first.is_some());
        assert_eq!(paths.seen(me, exe.dev, exe.ino).cloned(), first);
        // Its cgroup, as /proc says it (none where cgroup2 is not mounted).
        assert_eq!(first.and_then(|s| s.cgroup), cgroup_path(me));
        // A process that does not exist has no path, and says so.
        assert_eq!(paths.seen(u32::MAX, exe.dev, exe.ino), None);
        // Nor does one whose /proc link names a file other than the one it was executed
        // from (PR_SET_MM_EXE_FILE).
        assert_eq!(paths.seen(me, exe.dev, exe.ino + 1), None);
    }

    #[test]
    fn short_records_are_refused() {
        assert!(parse::<ClockEvent>(&[0u8; 8]).is_none());
        let bytes = vec![0u8; std::mem::size_of::<ClockEvent>()];
        assert!(parse::<ClockEvent>(&bytes).is_some());
    }
}
