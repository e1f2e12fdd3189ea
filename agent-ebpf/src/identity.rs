//! The identity every decision rests on: the executable file the kernel says a process runs
//! (`mm->exe_file`), set when the program was executed. Root can rewrite it without an exec:
//! `prctl(PR_SET_MM, PR_SET_MM_EXE_FILE | PR_SET_MM_MAP, ...)` names any file as the
//! executable, once the process has unmapped its own image. Under a policy that enforces,
//! nobody may: only checkpoint/restore tools (CRIU) need it, and the agent never does.
//! Refusals and, in audit mode, the attempts are counted and recorded on the tamper ring.
//!
//! And the integrity of a rule's process (`agent_common::integrity`): a process another one
//! acted as (ptrace and the like, decided in `tamper`) is tainted, its forks with it, and
//! its requests are decided by the default (`policy::decide_for`).

use agent_common::{
    integrity::{Taint, TaintReason, TAINTED_PROCESSES},
    kernel::KernelOffsets,
    tamper::{prctl, Action, Target},
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, lsm, map},
    maps::HashMap,
    programs::{BtfTracePointContext, LsmContext},
};

use crate::{
    caller::{inode_id, kread, offsets},
    policy::header_in_force,
    tamper::{fd_file, refuse_as, Attempt},
};

/// The (device, inode) of the file behind descriptor `fd`; (0, 0) when there is none.
#[inline(always)]
fn file_of_fd(fd: i32, off: &KernelOffsets) -> (u64, u64) {
    match fd_file(fd).and_then(|file| kread::<*const u8>(file, off.file_inode)) {
        Some(inode) => inode_id(inode, off),
        None => (0, 0),
    }
}

/// LSM_HOOK(int, -ENOSYS, task_prctl, int option, unsigned long arg2, unsigned long arg3,
///          unsigned long arg4, unsigned long arg5)
///
/// Returning 0 passes the call on to the kernel's own handling (the trampoline then runs
/// the hook's default, -ENOSYS, which `prctl` takes as "not an LSM's option").
#[lsm(hook = "task_prctl")]
pub fn identity_prctl_guard(ctx: LsmContext) -> i32 {
    // Every prctl passes here (thread names, seccomp, capabilities): leave fast.
    let option: i32 = ctx.arg(0);
    let previous: i32 = ctx.arg(5);
    if option as u32 != prctl::PR_SET_MM || previous != 0 {
        return previous;
    }
    // Before any policy is loaded nothing is decided, as for the clock.
    let Some(policy) = header_in_force() else {
        return 0;
    };
    let request: u64 = ctx.arg(1);
    let off = offsets();
    let (dev, ino) = if request as u32 == prctl::PR_SET_MM_EXE_FILE {
        let fd: u64 = ctx.arg(2);
        file_of_fd(fd as i32, &off)
    } else {
        (0, 0)
    };
    refuse_as(
        policy.default_mode,
        policy.generation,
        &Attempt {
            action: Action::RewriteIdentity,
            target: Target::Identity as u32,
            detail: request as u32,
            target_tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            target_dev: dev,
            target_ino: ino,
        },
    )
}

/// Tainted processes by tgid (`integrity`): written by the kernel only.
#[map]
static PROCESS_TAINT: HashMap<u32, Taint> = HashMap::pinned(TAINTED_PROCESSES, 0);

/// The taint of process `tgid`, if it has one.
#[inline(always)]
pub fn taint_of(tgid: u32) -> Option<Taint> {
    // SAFETY: copied out at once.
    unsafe { PROCESS_TAINT.get(tgid) }.copied()
}

/// Taints process `tgid` for `reason`, by `source`; reasons add up, the first source stays.
#[inline(always)]
pub fn taint(tgid: u32, reason: TaintReason, source: u32) {
    let t = match taint_of(tgid) {
        Some(t) => Taint {
            reasons: t.reasons | reason.code(),
            source_tgid: t.source_tgid,
        },
        None => Taint {
            reasons: reason.code(),
            source_tgid: source,
        },
    };
    let _ = PROCESS_TAINT.insert(tgid, t, 0);
}

/// sched_process_fork(struct task_struct *parent, struct task_struct *child): a new process
/// carries its parent's taint (code injected into the parent runs in the child too); a new
/// process never carries the taint of an earlier one that had its pid.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn identity_fork(ctx: BtfTracePointContext) -> i32 {
    let off = offsets();
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    let (Some(pid), Some(tgid)) = (
        kread::<u32>(child, off.task_pid),
        kread::<u32>(child, off.task_tgid),
    ) else {
        return 0;
    };
    // A thread shares its process's entry.
    if pid != tgid {
        return 0;
    }
    let inherited = kread::<u32>(parent, off.task_tgid).and_then(taint_of);
    match inherited {
        Some(t) => {
            let _ = PROCESS_TAINT.insert(tgid, t, 0);
        }
        None => {
            let _ = PROCESS_TAINT.remove(tgid);
        }
    }
    0
}

/// sched_process_exit(struct task_struct *p): the entry goes with the process's last thread
/// (a group leader may exit before its threads, which keep running its code).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn identity_exit(ctx: BtfTracePointContext) -> i32 {
    let off = offsets();
    let task: *const u8 = ctx.arg(0);
    let live = kread::<*const u8>(task, off.task_signal)
        .and_then(|signal| kread::<i32>(signal, off.signal_live))
        .unwrap_or(1);
    if live != 0 {
        return 0;
    }
    if let Some(tgid) = kread::<u32>(task, off.task_tgid) {
        let _ = PROCESS_TAINT.remove(tgid);
    }
    0
}
