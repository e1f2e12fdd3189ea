//! The records the kernel sends over its ring buffers: the caller block every record
//! carries, the per-process budget that thins them under a flood, and the record of one
//! clock-change attempt.

crate::codes! {
    /// Which kernel hook saw the attempt.
    pub enum Hook: u8, unknown = "unknown" {
        /// BPF LSM `settime` (clock_settime, settimeofday, stime: the requested time is exact).
        Settime = 1 => "lsm/settime",
        /// BPF LSM `capable(CAP_SYS_TIME)` (adjtimex, clock_adjtime and other privileged paths).
        Capable = 2 => "lsm/capable",
        /// A syscall tracepoint: seen, not decided (observe-only mode).
        Tracepoint = 3 => "tracepoint",
        /// BPF LSM `file_open`: a PTP hardware clock opened for writing.
        FileOpen = 4 => "lsm/file_open",
        /// BPF LSM `file_ioctl`/`file_ioctl_compat`: a changing request on a PTP hardware clock.
        FileIoctl = 5 => "lsm/file_ioctl",
        /// A kprobe on the kernel's own setters (a kernel thread setting the clock or the
        /// RTC): seen, never decided.
        Kernel = 6 => "kprobe/kernel",
    }
}

crate::codes! {
    /// The syscall ABI the request came through.
    pub enum Abi: u8, unknown = "unknown" {
        Native = 0 => "native",
        /// 32-bit compat (`int 0x80` on x86_64).
        Compat = 1 => "compat32",
        /// No syscall context (a kernel thread).
        Kernel = 2 => "kernel",
    }
}

pub const COMM_LEN: usize = 16;

/// Thinning of detailed events under a flood: each process may send this many per window;
/// the rest are counted (every attempt is still counted exactly per rule, operation and
/// verdict). Per process, so one flooding process cannot crowd out anyone else's events.
pub mod thinning {
    pub const WINDOW_NS: u64 = 1_000_000_000;
    pub const EVENTS_PER_WINDOW: u32 = 200;
    /// Processes tracked at once (least recently seen forgotten first).
    pub const PROCESSES: u32 = 4096;
}

/// A process's event budget in the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub sent: u32,
    pub _pad: u32,
}

impl EventBudget {
    /// Takes one record from the budget at `now_ns`: a new window of
    /// `thinning::WINDOW_NS` starts afresh, and at most `per_window` are taken in each.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, per_window: u32) -> bool {
        if now_ns.wrapping_sub(self.window_start_ns) >= thinning::WINDOW_NS {
            self.window_start_ns = now_ns;
            self.sent = 0;
        }
        if self.sent < per_window {
            self.sent += 1;
            true
        } else {
            false
        }
    }
}

/// Who asked, in every record (clock, network socket, tamper): the executable actually
/// running (device and inode, never the process name), the ids and the task's name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub exe_dev: u64,
    pub exe_ino: u64,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; COMM_LEN],
}

impl Caller {
    pub const EMPTY: Caller = Caller {
        exe_dev: 0,
        exe_ino: 0,
        pid: 0,
        tgid: 0,
        uid: 0,
        gid: 0,
        comm: [0; COMM_LEN],
    };
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ClockEvent {
    /// CLOCK_BOOTTIME when the kernel decided: it does not move when the wall clock is stepped.
    pub boot_ns: u64,
    /// CLOCK_TAI when the kernel decided: the wall clock of that instant (UTC + the TAI
    /// offset), so an event read after a step still carries the time it happened.
    pub tai_ns: u64,
    /// The requested time (step) or offset (ADJ_SETOFFSET), seconds and nanoseconds.
    pub time_sec: i64,
    pub time_nsec: i64,
    /// The frequency asked for (ppm << 16), when the request sets one.
    pub frequency: i64,
    pub caller: Caller,
    /// `clock::op` bits of the request.
    pub operations: u32,
    pub rule_id: u32,
    pub generation: u32,
    /// `struct timex` modes, when the request was an adjtimex.
    pub timex_modes: u32,
    /// The syscall number in `abi`'s table, -1 when unknown.
    pub syscall: i32,
    /// The clock id argument, -1 when the syscall has none.
    pub clock_id: i32,
    /// The device file's number (kernel `dev_t`) for a device request, 0 otherwise.
    pub device: u32,
    /// The ioctl request number, 0 when the request was not an ioctl.
    pub ioctl_cmd: u32,
    /// `Hook`.
    pub hook: u8,
    /// `policy::Verdict`.
    pub verdict: u8,
    /// `Abi`.
    pub abi: u8,
    /// 1 when `time_sec`/`time_nsec` hold a value.
    pub has_time: u8,
    /// `policy::Reason` of a refusal (deny or audit).
    pub reason: u8,
    pub _pad: [u8; 3],
    /// The rule the caller's executable matched and its process lost (`integrity`): the
    /// default decided instead. 0 when no rule was lost.
    pub lost_rule_id: u32,
    /// Why (`integrity::TaintReason` bits), and the process that acted as the caller.
    pub taint_reasons: u32,
    pub taint_source_tgid: u32,
    pub _pad2: u32,
    /// The foreign or modified file it mapped as code (`integrity::Taint::file`).
    pub taint_file_dev: u64,
    pub taint_file_ino: u64,
}

impl ClockEvent {
    pub const EMPTY: ClockEvent = ClockEvent {
        boot_ns: 0,
        tai_ns: 0,
        time_sec: 0,
        time_nsec: 0,
        frequency: 0,
        caller: Caller::EMPTY,
        operations: 0,
        rule_id: 0,
        generation: 0,
        timex_modes: 0,
        syscall: -1,
        clock_id: -1,
        device: 0,
        ioctl_cmd: 0,
        hook: 0,
        verdict: 0,
        abi: 0,
        has_time: 0,
        reason: 0,
        _pad: [0; 3],
        lost_rule_id: 0,
        taint_reasons: 0,
        taint_source_tgid: 0,
        _pad2: 0,
        taint_file_dev: 0,
        taint_file_ino: 0,
    };
}

crate::pod!(Caller, ClockEvent, EventBudget);

#[cfg(test)]
mod budget_tests {
    #[test]
    fn records_have_no_hidden_padding() {
        // Explicit padding only: the same bytes mean the same on both sides.
        assert_eq!(core::mem::size_of::<super::Caller>(), 48);
        assert_eq!(core::mem::size_of::<super::ClockEvent>(), 160);
        assert_eq!(core::mem::size_of::<crate::net::NetEvent>(), 176);
        assert_eq!(core::mem::size_of::<crate::tamper::TamperEvent>(), 104);
    }

    use super::*;

    #[test]
    fn a_budget_refills_each_window() {
        let mut b = EventBudget {
            window_start_ns: 0,
            sent: 0,
            _pad: 0,
        };
        assert!(b.take(10, 2) && b.take(20, 2));
        assert!(!b.take(30, 2));
        // A window later: two more.
        let next = 10 + thinning::WINDOW_NS;
        assert!(b.take(next, 2) && b.take(next, 2) && !b.take(next, 2));
    }
}
