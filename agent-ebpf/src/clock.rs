//! Every path that can change the system clock, decided before it happens.
//!
//! The kernel funnels all of them through two LSM hooks:
//! - `settime`: clock_settime(CLOCK_REALTIME), settimeofday, stime (with the exact new time);
//! - `capable(CAP_SYS_TIME)`: adjtimex, clock_adjtime, the RTC and PPS ioctls. The operation
//!   is read from the syscall the task is in. The settime path passes this check too; there
//!   `capable` defers to `settime`, so every attempt is decided and recorded exactly once.
//!
//! Where LSM programs are refused, tracepoints on the same syscalls observe without deciding.

use agent_common::{
    clock::{op, settime_operations, timex_operations},
    event::{hook, ClockEvent},
    kernel::{classify_syscall, ClockSyscall, TimexLayout, CAP_SYS_TIME},
    policy::verdict,
};
use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};

use crate::{
    caller::{current_syscall, fill_who, kread, offsets, uread},
    policy::decide_for,
    record::{count, emit},
};

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
struct Request {
    hook: u8,
    operations: u32,
    syscall: i64,
    abi: u8,
    clock_id: i32,
    timex_modes: u32,
    time: Time,
}

/// Decides, counts and records one request; returns the verdict.
#[inline(always)]
fn decide_and_record(req: &Request, observe_only: bool) -> u8 {
    let off = offsets();
    let mut ev = ClockEvent::EMPTY;
    fill_who(&mut ev, &off);
    let Some(decided) = decide_for(ev.exe_dev, ev.exe_ino, req.operations) else {
        return verdict::ALLOW;
    };
    let v = if observe_only {
        verdict::OBSERVED
    } else {
        decided.decision.verdict
    };
    count(decided.decision.rule_id, req.operations, v);
    // SAFETY: clock helpers without arguments.
    ev.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.tai_ns = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_tai_ns() };
    ev.hook = req.hook;
    ev.verdict = v;
    ev.operations = req.operations;
    ev.rule_id = decided.decision.rule_id;
    ev.generation = decided.generation;
    ev.syscall = req.syscall as i32;
    ev.abi = req.abi;
    ev.clock_id = req.clock_id;
    ev.timex_modes = req.timex_modes;
    ev.has_time = req.time.set as u8;
    ev.time_sec = req.time.sec;
    ev.time_nsec = req.time.nsec;
    emit(&ev);
    v
}

#[inline(always)]
fn lsm_verdict(v: u8) -> i32 {
    if v == verdict::DENY {
        -EPERM
    } else {
        0
    }
}

/// Reads the modes (and what they need) of a `struct timex` in user memory.
/// Returns (modes, operations, ADJ_SETOFFSET time).
#[inline(always)]
fn read_timex(ptr: u64, layout: TimexLayout) -> (u32, u32, Time) {
    let modes = uread::<u32>(ptr, 0).unwrap_or(0);
    let status = uread::<i32>(ptr, layout.status).unwrap_or(0) as u32;
    let ops = timex_operations(modes, status);
    let requested = if ops & op::STEP != 0 {
        let (sec, sub) = if layout.wide {
            (
                uread::<i64>(ptr, layout.time_sec).unwrap_or(0),
                uread::<i64>(ptr, layout.time_usec).unwrap_or(0),
            )
        } else {
            (
                uread::<i32>(ptr, layout.time_sec).unwrap_or(0) as i64,
                uread::<i32>(ptr, layout.time_usec).unwrap_or(0) as i64,
            )
        };
        let nsec = if modes & agent_common::clock::adj::NANO != 0 {
            sub
        } else {
            sub * 1000
        };
        time(sec, nsec)
    } else {
        NO_TIME
    };
    (modes, ops, requested)
}

/// LSM_HOOK(int, 0, settime, const struct timespec64 *ts, const struct timezone *tz)
#[lsm(hook = "settime")]
pub fn clock_settime_guard(ctx: LsmContext) -> i32 {
    let ts: *const u8 = ctx.arg(0);
    let tz: *const u8 = ctx.arg(1);
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let requested = if ts.is_null() {
        NO_TIME
    } else {
        time(
            kread::<i64>(ts, 0).unwrap_or(0),
            kread::<i64>(ts, 8).unwrap_or(0),
        )
    };
    let operations = settime_operations(requested.set, !tz.is_null());
    let sc = current_syscall(&offsets());
    let req = Request {
        hook: hook::SETTIME,
        operations,
        syscall: sc.nr,
        abi: sc.abi,
        clock_id: -1,
        timex_modes: 0,
        time: requested,
    };
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
    let compat = sc.abi == agent_common::event::abi::COMPAT;
    let (operations, clock_id, modes, requested) = match classify_syscall(compat, sc.nr) {
        // The settime hook right after this check decides, with the exact time.
        ClockSyscall::SetTime => return 0,
        ClockSyscall::Adjtimex { timex_arg, layout } => {
            let (m, o, t) = read_timex(sc.args[timex_arg], layout);
            (o, CLOCK_REALTIME as i32, m, t)
        }
        ClockSyscall::ClockAdjtime { layout } => {
            let (m, o, t) = read_timex(sc.args[1], layout);
            (o, sc.args[0] as i32, m, t)
        }
        ClockSyscall::Ioctl => (op::RTC, -1, 0, NO_TIME),
        ClockSyscall::Other => (op::OTHER, -1, 0, NO_TIME),
    };
    // The kernel asks for CAP_SYS_TIME only for a change. If user memory now reads as
    // read-only, it changed under us: decide it as an unclassified change, never as nothing.
    let operations = if operations == 0 {
        op::OTHER
    } else {
        operations
    };
    let req = Request {
        hook: hook::CAPABLE,
        operations,
        syscall: sc.nr,
        abi: sc.abi,
        clock_id,
        timex_modes: modes,
        time: requested,
    };
    lsm_verdict(decide_and_record(&req, false))
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
fn observe(
    ctx: &TracePointContext,
    operations: u32,
    clock_id: i32,
    modes: u32,
    requested: Time,
) -> u32 {
    if operations != 0 {
        let req = Request {
            hook: hook::TRACEPOINT,
            operations,
            syscall: tp_nr(ctx),
            abi: agent_common::event::abi::NATIVE,
            clock_id,
            timex_modes: modes,
            time: requested,
        };
        decide_and_record(&req, true);
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
    observe(&ctx, op::STEP, clock as i32, 0, requested)
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
    observe(&ctx, settime_operations(tv != 0, tz != 0), -1, 0, requested)
}

#[tracepoint(category = "syscalls", name = "sys_enter_adjtimex")]
pub fn observe_adjtimex(ctx: TracePointContext) -> u32 {
    let (modes, ops, requested) = read_timex(tp_arg(&ctx, 0), agent_common::kernel::TIMEX64);
    observe(&ctx, ops, CLOCK_REALTIME as i32, modes, requested)
}

#[tracepoint(category = "syscalls", name = "sys_enter_clock_adjtime")]
pub fn observe_clock_adjtime(ctx: TracePointContext) -> u32 {
    let clock = tp_arg(&ctx, 0);
    let (modes, ops, requested) = read_timex(tp_arg(&ctx, 1), agent_common::kernel::TIMEX64);
    observe(&ctx, ops, clock as i32, modes, requested)
}
