//! Every path that can change the system clock, decided before it happens.
//!
//! The kernel funnels all of them through two LSM hooks:
//! - `settime`: clock_settime(CLOCK_REALTIME), settimeofday, stime (with the exact new time);
//! - `capable(CAP_SYS_TIME)`: adjtimex, clock_adjtime, the RTC and PPS ioctls. The operation
//!   is read from the syscall the task is in. The settime path passes this check too; there
//!   `capable` defers to `settime`, so every attempt is decided and recorded exactly once.
//!
//! PTP hardware clocks pass neither; `devices` decides them when they are opened.
//!
//! Where LSM programs are refused, tracepoints on the same syscalls observe without deciding.

use agent_common::{
    clock::{adj, ioctl, op, privileged_ioctl_operations, settime_operations, timex_operations},
    event::{thinning, Abi, ClockEvent, EventBudget, Hook},
    kernel::{classify_syscall, ClockSyscall, TimexLayout, CAP_SYS_TIME, TIMEX64},
    maps::{Dropped, ONLY},
    policy::{CounterKey, Reason, Request as Limits, Verdict},
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, lsm, map, tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{LsmContext, ProbeContext, TracePointContext},
};

use crate::{
    caller::{
        current_syscall, fill_caller, in_kernel_thread, kread, nullable_arg, offsets, uread,
        Syscall,
    },
    emit::{boot_ns, count, tai_ns, Budget, Ring},
    policy::{clock_state, decide_for},
};

#[map]
static CLOCK_EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

/// Per (rule, set of operations, verdict): exact, whatever happens to the events.
#[map]
static CLOCK_COUNTERS: PerCpuHashMap<CounterKey, u64> = PerCpuHashMap::pinned(8192, 0);

/// Events that did not fit in the ring buffer, and events not sent because their process
/// had used its budget for the window (`maps::Dropped`).
#[map]
static CLOCK_EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::pinned(Dropped::COUNT, 0);

/// One request per CPU, the one being decided (`decide_and_record`).
#[map]
static CLOCK_REQUEST_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::pinned(1, 0);

/// Event budgets by process (tgid).
#[map]
static EVENT_BUDGETS: LruHashMap<u32, EventBudget> = LruHashMap::pinned(thinning::PROCESSES, 0);

const EPERM: i32 = 1;
const CLOCK_REALTIME: u64 = 0;

/// A requested time or offset. Not an `Option`: LLVM reads an `Option`'s payload on the
/// `None` path too, and the 6.1 verifier refuses that read of an unwritten stack slot.
#[derive(Clone, Copy)]
struct Time {
    set: bool,
    sec: i64,
    nsec: i64,
}

const NO_TIME: Time = Time {
    set: false,
    sec: 0,
    nsec: 0,
};

#[inline(always)]
const fn time(sec: i64, nsec: i64) -> Time {
    Time {
        set: true,
        sec,
        nsec,
    }
}

/// What a request asks for, before it is decided.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Request {
    hook: Hook,
    operations: u32,
    syscall: i64,
    abi: Abi,
    clock_id: i32,
    timex_modes: u32,
    time: Time,
    /// Size of the step either way (ns); `u64::MAX` when it could not be measured.
    step_ns: u64,
    /// The frequency asked for (ppm << 16), and its size (`u64::MAX` when unreadable).
    frequency: i64,
    frequency_abs: u64,
    /// The device file (kernel `dev_t`) and ioctl request of a device request.
    device: u32,
    ioctl_cmd: u32,
}

/// A CPU's request slot. LSM programs run preemptible (a kernel with `preempt=full`, which
/// root can also switch to at run time through debugfs, or PREEMPT_RT): another task's
/// decision on this CPU can overwrite the slot mid-decision, and the request decided would
/// be the other task's (a step of zero in place of a step of hours), or a mix of both.
/// Each claim writes `owner` first, then the request, then `seq`, and holds only if `seq`
/// did not move while it wrote: a claim another one ran into is tried again
/// (`CLAIM_TRIES`), then refused (`Reason::Preempted`).
#[repr(C)]
pub(crate) struct Scratch {
    owner: u64,
    seq: u64,
    req: Request,
}

/// Claims of a slot tried before a decision is refused as preempted.
const CLAIM_TRIES: u32 = 3;

/// Who claimed a slot, the sequence number the claim ended with, and whether nobody
/// claimed it meanwhile.
#[derive(Clone, Copy)]
struct Claim {
    owner: u64,
    seq: u64,
    whole: bool,
}

impl Scratch {
    /// Writes `req` into the slot for the current task.
    ///
    /// # Safety
    /// `slot` is this CPU's entry of `CLOCK_REQUEST_SCRATCH`.
    #[inline(always)]
    unsafe fn claim(slot: *mut Scratch, req: &Request) -> Claim {
        use core::{
            ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
            sync::atomic::{compiler_fence, Ordering::SeqCst},
        };
        let owner = bpf_get_current_pid_tgid();
        // SAFETY: the caller's slot, written and read in place.
        unsafe {
            write_volatile(addr_of_mut!((*slot).owner), owner);
            compiler_fence(SeqCst);
            let before = read_volatile(addr_of!((*slot).seq));
            compiler_fence(SeqCst);
            req.store(&mut (*slot).req);
            compiler_fence(SeqCst);
            // A claim that ended while this one wrote has written fields of its own.
            let whole = read_volatile(addr_of!((*slot).seq)) == before;
            let seq = before.wrapping_add(1);
            write_volatile(addr_of_mut!((*slot).seq), seq);
            compiler_fence(SeqCst);
            Claim { owner, seq, whole }
        }
    }

    /// Whether nobody else claimed `slot` since `claim` began: what was read from it is the
    /// claimer's own request.
    ///
    /// # Safety
    /// As for `claim`.
    #[inline(always)]
    unsafe fn still_held(slot: *const Scratch, claim: Claim) -> bool {
        use core::{
            ptr::{addr_of, read_volatile},
            sync::atomic::{compiler_fence, Ordering::SeqCst},
        };
        compiler_fence(SeqCst);
        // SAFETY: the caller's slot.
        claim.whole
            && unsafe {
                read_volatile(addr_of!((*slot).owner)) == claim.owner
                    && read_volatile(addr_of!((*slot).seq)) == claim.seq
            }
    }
}

/// The wall clock now, in nanoseconds: CLOCK_TAI less the TAI offset the agent reported.
#[inline(always)]
fn realtime_now() -> i64 {
    // SAFETY: a clock helper without arguments.
    let tai = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_tai_ns() } as i64;
    tai.wrapping_sub(clock_state().tai_offset_ns as i64)
}

#[inline(always)]
fn nanos(sec: i64, nsec: i64) -> i64 {
    mul_saturating(sec, 1_000_000_000).saturating_add(nsec)
}

/// `a * k` clamped to i64. Not `saturating_mul`: that lowers to a 128-bit multiply, which
/// BPF has no call for; the bounds here are constants.
#[inline(always)]
fn mul_saturating(a: i64, k: i64) -> i64 {
    if a > i64::MAX / k {
        i64::MAX
    } else if a < i64::MIN / k {
        i64::MIN
    } else {
        a * k
    }
}

/// Decides, counts and records one request; returns the verdict.
#[inline(always)]
pub(crate) fn decide_and_record(req: &Request, observe_only: bool) -> Verdict {
    // Read back from a per-CPU slot, the request's fields are unknown to the verifier, so
    // what follows is verified once for every shape of request the callers build (the
    // capable hook's dozens of timex shapes, each verified through all of this, went past
    // 6.1's budget of a million instructions). A per-CPU array always has its one entry.
    let Some(slot) = CLOCK_REQUEST_SCRATCH.get_ptr_mut(ONLY) else {
        return Verdict::Deny;
    };
    // The slot is written whole, then read in place (no copy on the stack, which 6.1 caps
    // at 512 bytes for all frames); `black_box` hides what was written, so every field is
    // loaded back from the map. The fields the verdict depends on are read while the claim
    // held, tried again when another task's claim ran into it.
    let mut limits = Limits {
        operations: 0,
        step_ns: 0,
        frequency: 0,
    };
    let mut held = false;
    for _ in 0..CLAIM_TRIES {
        // SAFETY: this CPU's own entry of the map, claimed and read in place.
        let (claim, r) = unsafe {
            let claim = Scratch::claim(slot, req);
            (claim, &(*core::hint::black_box(slot)).req)
        };
        limits = Limits {
            operations: r.operations,
            step_ns: r.step_ns,
            frequency: r.frequency_abs,
        };
        // SAFETY: the slot just claimed.
        if unsafe { Scratch::still_held(slot, claim) } {
            held = true;
            break;
        }
    }
    // For the record only: what a later claim wrote may show here, never in the verdict.
    // SAFETY: this CPU's own entry.
    let req = unsafe { &(*core::hint::black_box(slot)).req };
    let off = offsets();
    let mut ev = ClockEvent::EMPTY;
    fill_caller(&mut ev.caller, &off);
    let who = &ev.caller;
    let Some(mut decided) = decide_for(who.exe_dev, who.exe_ino, who.uid, who.tgid, &limits) else {
        return Verdict::Allow;
    };
    if !held {
        decided.decision.verdict = Verdict::Deny;
        decided.decision.reason = Reason::Preempted;
    }
    let v = if observe_only {
        Verdict::Observed
    } else {
        decided.decision.verdict
    };
    let key = CounterKey {
        rule_id: decided.decision.rule_id,
        operation: req.operations,
        verdict: v as u32,
        lost_rule_id: decided.lost_rule_id,
        lost_reasons: decided.taint.reasons,
        reason: decided.decision.reason.code() as u32,
    };
    count(&CLOCK_COUNTERS, &key);
    ev.boot_ns = boot_ns();
    ev.tai_ns = tai_ns();
    ev.hook = req.hook as u8;
    ev.verdict = v as u8;
    ev.operations = req.operations;
    ev.rule_id = decided.decision.rule_id;
    ev.generation = decided.generation;
    ev.syscall = req.syscall as i32;
    ev.abi = req.abi as u8;
    ev.clock_id = req.clock_id;
    ev.timex_modes = req.timex_modes;
    ev.has_time = req.time.set as u8;
    ev.time_sec = req.time.sec;
    ev.time_nsec = req.time.nsec;
    ev.reason = decided.decision.reason as u8;
    ev.frequency = req.frequency;
    ev.device = req.device;
    ev.ioctl_cmd = req.ioctl_cmd;
    ev.lost_rule_id = decided.lost_rule_id;
    ev.taint_reasons = decided.taint.reasons;
    ev.taint_source_tgid = decided.taint.source_tgid;
    ev.taint_file_dev = decided.taint.file_dev;
    ev.taint_file_ino = decided.taint.file_ino;
    let ring = Ring {
        ring: &CLOCK_EVENTS,
        dropped: &CLOCK_EVENTS_DROPPED,
    };
    let budget = Budget::Process {
        budgets: &EVENT_BUDGETS,
        tgid: ev.caller.tgid,
        per_window: thinning::EVENTS_PER_WINDOW,
    };
    ring.send(budget, ev.boot_ns, &ev);
    v
}

#[inline(always)]
pub(crate) fn lsm_verdict(v: Verdict) -> i32 {
    if v == Verdict::Deny {
        -EPERM
    } else {
        0
    }
}

/// What a `struct timex` in user memory asks for.
struct Timex {
    modes: u32,
    operations: u32,
    /// The ADJ_SETOFFSET offset.
    time: Time,
    step_ns: u64,
    frequency: i64,
    frequency_abs: u64,
}

/// Reads what a `struct timex` in user memory asks for. A field that cannot be read
/// measures as `u64::MAX`, beyond any limit.
#[inline(always)]
fn read_timex(ptr: u64, layout: TimexLayout) -> Timex {
    let modes = uread::<u32>(ptr, 0).unwrap_or(0);
    let status = uread::<i32>(ptr, layout.status).unwrap_or(0) as u32;
    let operations = timex_operations(modes, status);
    let mut t = Timex {
        modes,
        operations,
        time: NO_TIME,
        step_ns: 0,
        frequency: 0,
        frequency_abs: 0,
    };
    if operations & op::STEP != 0 {
        match (
            read_long(ptr, layout.time_sec, layout.wide),
            read_long(ptr, layout.time_usec, layout.wide),
        ) {
            (Some(sec), Some(sub)) => {
                let nsec = if modes & adj::NANO != 0 {
                    sub
                } else {
                    mul_saturating(sub, 1000)
                };
                t.time = time(sec, nsec);
                t.step_ns = nanos(sec, nsec).unsigned_abs();
            }
            _ => t.step_ns = u64::MAX,
        }
    }
    // The rate asked for: the frequency offset, plus what a tick change adds (ADJ_TICK moves
    // the rate by up to 10 %, far beyond any frequency limit, so it counts toward it).
    // Unreadable fields read as beyond any limit.
    let freq = if modes & adj::FREQUENCY != 0 {
        read_long(ptr, layout.freq, layout.wide).unwrap_or(i64::MAX)
    } else {
        0
    };
    let tick_offset = if modes & adj::TICK != 0 {
        let tick = read_long(ptr, layout.tick, layout.wide).unwrap_or(i64::MAX);
        mul_saturating(
            tick.saturating_sub(adj::TICK_NOMINAL),
            adj::TICK_US_AS_FREQUENCY,
        )
    } else {
        0
    };
    t.frequency = freq.saturating_add(tick_offset);
    t.frequency_abs = t.frequency.unsigned_abs();
    t
}

/// Reads a C `long` of the caller's ABI: 64-bit native, 32-bit compat. One 8-byte read
/// either way (every 32-bit field read here has 4 more bytes of the struct after it),
/// sign-extended for compat: one path, which keeps the verifier's work small.
#[inline(always)]
fn read_long(ptr: u64, off: usize, wide: bool) -> Option<i64> {
    let raw = uread::<i64>(ptr, off)?;
    Some(if wide { raw } else { raw as i32 as i64 })
}

impl Request {
    /// Writes every field into `to`, one by one: a copy of the whole struct would read its
    /// padding, which 6.1 refuses as a read of an unwritten stack slot.
    #[inline(always)]
    fn store(&self, to: &mut Request) {
        to.hook = self.hook;
        to.operations = self.operations;
        to.syscall = self.syscall;
        to.abi = self.abi;
        to.clock_id = self.clock_id;
        to.timex_modes = self.timex_modes;
        to.time.set = self.time.set;
        to.time.sec = self.time.sec;
        to.time.nsec = self.time.nsec;
        to.step_ns = self.step_ns;
        to.frequency = self.frequency;
        to.frequency_abs = self.frequency_abs;
        to.device = self.device;
        to.ioctl_cmd = self.ioctl_cmd;
    }

    /// A request carried by a `struct timex` (adjtimex, clock_adjtime).
    #[inline(always)]
    fn timex(hook: Hook, syscall: i64, abi: Abi, clock_id: i32, t: &Timex) -> Self {
        Request {
            hook,
            operations: t.operations,
            syscall,
            abi,
            clock_id,
            timex_modes: t.modes,
            time: t.time,
            step_ns: t.step_ns,
            frequency: t.frequency,
            frequency_abs: t.frequency_abs,
            device: 0,
            ioctl_cmd: 0,
        }
    }

    /// A request to set the wall clock to `requested` (or only the timezone).
    #[inline(always)]
    fn settime(
        hook: Hook,
        syscall: i64,
        abi: Abi,
        clock_id: i32,
        requested: Time,
        has_tz: bool,
    ) -> Self {
        let step_ns = if requested.set {
            nanos(requested.sec, requested.nsec).abs_diff(realtime_now())
        } else {
            0
        };
        Request {
            hook,
            operations: settime_operations(requested.set, has_tz),
            syscall,
            abi,
            clock_id,
            timex_modes: 0,
            time: requested,
            step_ns,
            frequency: 0,
            frequency_abs: 0,
            device: 0,
            ioctl_cmd: 0,
        }
    }

    /// A request without a time or frequency: an ioctl, a device opened for writing, or
    /// anything else that reached the CAP_SYS_TIME check.
    #[inline(always)]
    pub(crate) fn device(hook: Hook, operations: u32, sc: &Syscall, device: u32, cmd: u32) -> Self {
        Request {
            hook,
            operations,
            syscall: sc.nr,
            abi: sc.abi,
            clock_id: -1,
            timex_modes: 0,
            time: NO_TIME,
            step_ns: 0,
            frequency: 0,
            frequency_abs: 0,
            device,
            ioctl_cmd: cmd,
        }
    }
}

/// LSM_HOOK(int, 0, settime, const struct timespec64 *ts, const struct timezone *tz)
#[lsm(hook = "settime")]
pub fn clock_settime_guard(ctx: LsmContext) -> i32 {
    let ts = nullable_arg(&ctx, 0) as *const u8;
    let tz = nullable_arg(&ctx, 1);
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let sc = current_syscall(&offsets());
    if ts.is_null() {
        let req = Request::settime(Hook::Settime, sc.nr, sc.abi, -1, NO_TIME, tz != 0);
        return lsm_verdict(decide_and_record(&req, false));
    }
    // The kernel's own copy, already validated: exact, no race with user memory.
    let requested = match (kread::<i64>(ts, 0), kread::<i64>(ts, 8)) {
        (Some(sec), Some(nsec)) => time(sec, nsec),
        // Unreadable: a step of unknown size, beyond any limit.
        _ => time(i64::MAX, 0),
    };
    let req = Request::settime(Hook::Settime, sc.nr, sc.abi, -1, requested, tz != 0);
    lsm_verdict(decide_and_record(&req, false))
}

/// LSM_HOOK(int, 0, capable, const struct cred *cred, struct user_namespace *ns, int cap,
///          unsigned int opts)
#[lsm(hook = "capable")]
pub fn clock_capable_guard(ctx: LsmContext) -> i32 {
    // This hook runs on every capability check in the system: leave fast.
    let cap: i32 = ctx.arg(2);
    let previous: i32 = ctx.arg(4);
    if cap != CAP_SYS_TIME || previous != 0 {
        return previous;
    }
    let off = offsets();
    // A user namespace other than the initial one (time namespace offsets, containers)
    // guards nothing of the host's clock.
    let ns: *const u8 = ctx.arg(1);
    if kread::<u32>(ns, off.userns_level).unwrap_or(1) != 0 {
        return 0;
    }
    let sc = current_syscall(&off);
    let compat = sc.abi == Abi::Compat;
    // adjtimex and clock_adjtime differ only in where the timex is, and every request is
    // decided below: one read_timex and one decide_and_record, each inlined once, keep the
    // program within the 6.1 verifier's budget.
    let asked = match classify_syscall(compat, sc.nr) {
        // The settime hook right after this check decides, with the exact time.
        ClockSyscall::SetTime => return 0,
        ClockSyscall::Adjtimex { timex_arg, layout } => {
            Asked::Timex(sc.args[timex_arg], layout, CLOCK_REALTIME as i32)
        }
        ClockSyscall::ClockAdjtime { layout } => {
            Asked::Timex(sc.args[1], layout, sc.args[0] as i32)
        }
        ClockSyscall::Ioctl => {
            let cmd = sc.args[1] as u32;
            // A PHC request (PTP_ENABLE_PPS) was decided by file_ioctl before the driver
            // asked for the capability.
            if ioctl::kind(cmd) == ioctl::PTP_TYPE {
                return 0;
            }
            Asked::Device(privileged_ioctl_operations(cmd), cmd)
        }
        // Time namespace offsets: not the host's clock.
        ClockSyscall::Write => return 0,
        ClockSyscall::Other => Asked::Device(op::OTHER, 0),
    };
    let req = match asked {
        Asked::Timex(timex, layout, clock_id) => {
            let t = read_timex(timex, layout);
            let mut req = Request::timex(Hook::Capable, sc.nr, sc.abi, clock_id, &t);
            // The kernel asks for CAP_SYS_TIME only for a change. If user memory now reads
            // as read-only, it changed under us: decide it as an unclassified change, never
            // as nothing.
            if req.operations == 0 {
                req.operations = op::OTHER;
            }
            req
        }
        Asked::Device(operations, cmd) => Request::device(Hook::Capable, operations, &sc, 0, cmd),
    };
    lsm_verdict(decide_and_record(&req, false))
}

/// What a CAP_SYS_TIME check is for: a `struct timex` at an address (with its layout and
/// clock), or a request without one (a privileged ioctl, anything else).
enum Asked {
    Timex(u64, TimexLayout, i32),
    Device(u32, u32),
}

/// The kernel's own setters, which nothing can block: a kernel thread setting the wall clock
/// (a hypervisor's time sync) or writing the RTC (the "11-minute mode" while NTP-synced).
/// Calls made for a process were decided by the LSM hooks above and are skipped here.
#[inline(always)]
fn observe_kernel(operations: u32, requested: Time) -> u32 {
    if !in_kernel_thread(&offsets()) {
        return 0;
    }
    let no_syscall = Syscall {
        abi: Abi::Kernel,
        nr: -1,
        args: [0; 3],
    };
    let mut req = Request::device(Hook::Kernel, operations, &no_syscall, 0, 0);
    req.time = requested;
    decide_and_record(&req, true);
    0
}

/// do_settimeofday64(const struct timespec64 *ts)
#[kprobe]
pub fn kernel_sets_clock(ctx: ProbeContext) -> u32 {
    let ts = ctx.arg::<u64>(0).unwrap_or(0) as *const u8;
    let requested = match (kread::<i64>(ts, 0), kread::<i64>(ts, 8)) {
        (Some(sec), Some(nsec)) => time(sec, nsec),
        _ => NO_TIME,
    };
    observe_kernel(op::STEP, requested)
}

/// update_persistent_clock64 (x86's CMOS clock), rtc_set_time (the RTC class).
#[kprobe]
pub fn kernel_sets_rtc(_ctx: ProbeContext) -> u32 {
    observe_kernel(op::RTC, NO_TIME)
}

/// Syscall tracepoint arguments start at byte 16 (after the common header and the number).
#[inline(always)]
fn tp_arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(16 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
fn tp_nr(ctx: &TracePointContext) -> i64 {
    unsafe { ctx.read_at::<i32>(8) }.unwrap_or(-1) as i64
}

#[inline(always)]
fn observe(req: &Request) -> u32 {
    if req.operations != 0 {
        decide_and_record(req, true);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_clock_settime")]
pub fn observe_clock_settime(ctx: TracePointContext) -> u32 {
    let clock = tp_arg(&ctx, 0);
    if clock != CLOCK_REALTIME {
        return 0;
    }
    let tp = tp_arg(&ctx, 1);
    let requested = time(
        uread::<i64>(tp, 0).unwrap_or(0),
        uread::<i64>(tp, 8).unwrap_or(0),
    );
    observe(&Request::settime(
        Hook::Tracepoint,
        tp_nr(&ctx),
        Abi::Native,
        clock as i32,
        requested,
        false,
    ))
}

#[tracepoint(category = "syscalls", name = "sys_enter_settimeofday")]
pub fn observe_settimeofday(ctx: TracePointContext) -> u32 {
    let tv = tp_arg(&ctx, 0);
    let tz = tp_arg(&ctx, 1);
    let requested = if tv == 0 {
        NO_TIME
    } else {
        time(
            uread::<i64>(tv, 0).unwrap_or(0),
            uread::<i64>(tv, 8).unwrap_or(0) * 1000,
        )
    };
    observe(&Request::settime(
        Hook::Tracepoint,
        tp_nr(&ctx),
        Abi::Native,
        -1,
        requested,
        tz != 0,
    ))
}

#[tracepoint(category = "syscalls", name = "sys_enter_adjtimex")]
pub fn observe_adjtimex(ctx: TracePointContext) -> u32 {
    let t = read_timex(tp_arg(&ctx, 0), TIMEX64);
    observe(&Request::timex(
        Hook::Tracepoint,
        tp_nr(&ctx),
        Abi::Native,
        CLOCK_REALTIME as i32,
        &t,
    ))
}

#[tracepoint(category = "syscalls", name = "sys_enter_clock_adjtime")]
pub fn observe_clock_adjtime(ctx: TracePointContext) -> u32 {
    let clock = tp_arg(&ctx, 0);
    let t = read_timex(tp_arg(&ctx, 1), TIMEX64);
    observe(&Request::timex(
        Hook::Tracepoint,
        tp_nr(&ctx),
        Abi::Native,
        clock as i32,
        &t,
    ))
}
