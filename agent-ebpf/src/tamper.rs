//! The guard guarding itself (`spec.selfProtection`), by BPF LSM: an attacker who owns root
//! goes for the guard before the clock.
//!
//! - `task_kill`: a signal that would stop the agent, from anyone but the agent, its service
//!   manager or the kernel.
//! - `ptrace_access_check` (attach mode: ptrace, /proc/PID/mem, pidfd_getfd,
//!   process_vm_writev) and `ptrace_traceme`: the agent and the time daemons, whose rights
//!   a tracer would inherit. An access that goes through taints the process (`identity`).
//! - `file_open` (for writing, with the PHC check in `devices`), `inode_unlink`,
//!   `inode_rename`: the agent's executable, the policy files, the daemons' executables and
//!   timeguard's pins.
//! - `bpf`: commands that change one of timeguard's maps or links (update, delete, freeze,
//!   detach, replace), whatever way the descriptor was obtained.
//!
//! The agent (a process running the agent's executable) may do all of it. Each decision
//! honours the mode (audit: allowed and recorded), is counted exactly and recorded on a
//! ring of its own.

use agent_common::{
    event::EventBudget,
    integrity::TaintReason,
    maps::{Dropped, ONLY},
    policy::Verdict,
    tamper::{
        changing_bpf_command, stops_the_agent, Action, FileKey, ObjectKey, SelfState,
        TamperCounterKey, TamperEvent, Target,
    },
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{lsm, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::LsmContext,
};

use crate::{
    caller::{current_exe, fill_caller, inode_id, kread, offsets, opened_for_writing, task_exe},
    clock::lsm_verdict,
    emit::{boot_ns, count, Budget, Ring},
    identity::taint,
};

#[map]
static SELF_STATE: Array<SelfState> = Array::pinned(1, 0);

/// Protected files by (dev, ino): `Target`.
#[map]
static PROTECTED_FILES: HashMap<FileKey, u32> = HashMap::pinned(4096, 0);

/// Timeguard's own maps and links, by (kind, id).
#[map]
static OWN_OBJECTS: HashMap<ObjectKey, u8> = HashMap::pinned(1024, 0);

#[map]
static TAMPER_COUNTERS: PerCpuHashMap<TamperCounterKey, u64> = PerCpuHashMap::pinned(256, 0);

#[map]
static TAMPER_EVENTS: RingBuf = RingBuf::pinned(64 * 1024, 0);

/// Records that did not fit, and records over the budget (`maps::Dropped`).
#[map]
static TAMPER_EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::pinned(Dropped::COUNT, 0);

/// Index `maps::ONLY`: this CPU's record budget for the current second.
#[map]
static TAMPER_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(1, 0);

/// Index `maps::ONLY`: where this CPU builds a record.
#[map]
static TAMPER_SCRATCH: PerCpuArray<TamperEvent> = PerCpuArray::pinned(1, 0);

const RECORDS_PER_SECOND: u32 = 100;
/// `PTRACE_MODE_ATTACH`: the access that lets one process act as another.
const PTRACE_MODE_ATTACH: u32 = 0x02;

/// Self-protection in force, or None (off: nothing is decided).
#[inline(always)]
fn state() -> Option<SelfState> {
    let s = *SELF_STATE.get(ONLY)?;
    (s.generation != 0).then_some(s)
}

/// Whether the calling process runs the agent's executable.
#[inline(always)]
fn caller_is_agent(s: &SelfState) -> bool {
    let (dev, ino) = current_exe(&offsets());
    dev == s.agent_dev && ino == s.agent_ino
}

/// What a file is to the guard (`Target`; 0: nothing).
#[inline(always)]
fn protected(dev: u64, ino: u64) -> u32 {
    if ino == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    unsafe { PROTECTED_FILES.get(FileKey { dev, ino }) }
        .copied()
        .unwrap_or(0)
}

/// What was tried, and on what.
pub(crate) struct Attempt {
    pub action: Action,
    /// `Target`.
    pub target: u32,
    pub detail: u32,
    pub target_tgid: u32,
    pub target_dev: u64,
    pub target_ino: u64,
}

/// Decides an attempt by self-protection's mode, counts it and records it; the LSM return
/// value.
#[inline(always)]
fn refuse(s: &SelfState, a: &Attempt) -> i32 {
    refuse_as(s.mode, s.generation, a)
}

/// Decides an attempt by `mode` (`policy::Mode`), counts it and records it on the tamper
/// ring under the policy `generation`; the LSM return value.
#[inline(always)]
pub(crate) fn refuse_as(mode: u32, generation: u32, a: &Attempt) -> i32 {
    let v = Verdict::refused(mode);
    let key = TamperCounterKey {
        action: a.action as u8,
        verdict: v as u8,
        _pad: [0; 2],
        target: a.target,
    };
    count(&TAMPER_COUNTERS, &key);
    let ring = Ring {
        ring: &TAMPER_EVENTS,
        dropped: &TAMPER_EVENTS_DROPPED,
    };
    let budget = Budget::Cpu {
        budgets: &TAMPER_BUDGET,
        index: ONLY,
        per_window: RECORDS_PER_SECOND,
    };
    ring.emit(&TAMPER_SCRATCH, budget, boot_ns(), |ev| {
        ev.action = a.action as u8;
        ev.verdict = v as u8;
        ev.target = a.target;
        fill_caller(&mut ev.caller, &offsets());
        ev.detail = a.detail;
        ev.target_tgid = a.target_tgid;
        ev.target_dev = a.target_dev;
        ev.target_ino = a.target_ino;
        ev.generation = generation;
    });
    lsm_verdict(v)
}

/// LSM_HOOK(int, 0, task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig,
/// const struct cred *cred)
#[lsm(hook = "task_kill")]
pub fn tamper_signal(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let sig: i32 = ctx.arg(2);
    let Some(s) = state() else { return 0 };
    if s.agent_tgid == 0 || !stops_the_agent(sig as u32) {
        return 0;
    }
    let off = offsets();
    let target: *const u8 = ctx.arg(0);
    let target_tgid = kread::<u32>(target, off.task_tgid).unwrap_or(0);
    if target_tgid != s.agent_tgid {
        return 0;
    }
    // The kernel's own signals (SEND_SIG_PRIV), the agent itself, its service manager.
    let info: u64 = crate::caller::nullable_arg(&ctx, 1);
    let sender = (bpf_get_current_pid_tgid() >> 32) as u32;
    if info <= 1 || sender == s.agent_tgid || sender == s.manager_tgid || sender == 1 {
        return 0;
    }
    refuse_signal(&s, target_tgid, sig as u32)
}

/// A signal that would stop the agent: refused and recorded.
#[inline(always)]
fn refuse_signal(s: &SelfState, target_tgid: u32, sig: u32) -> i32 {
    refuse(
        s,
        &Attempt {
            action: Action::Signal,
            target: Target::Agent as u32,
            detail: sig,
            target_tgid,
            target_dev: s.agent_dev,
            target_ino: s.agent_ino,
        },
    )
}

/// SIGIO, or the signal `F_SETSIG` chose, sent to a file's owner (`F_SETOWN`) when the file
/// is ready: the kernel sends it without `task_kill`, so root naming the agent the owner of
/// a pipe it writes to would otherwise stop it.
///
/// LSM_HOOK(int, 0, file_send_sigiotask, struct task_struct *tsk, struct fown_struct *fown,
/// int sig)
#[lsm(hook = "file_send_sigiotask")]
pub fn tamper_sigio(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    const SIGIO: u32 = 29;
    let sig: i32 = ctx.arg(2);
    // 0: no F_SETSIG, plain SIGIO (whose default action ends the process).
    let sig = if sig == 0 { SIGIO } else { sig as u32 };
    let Some(s) = state() else { return 0 };
    if s.agent_tgid == 0 || !stops_the_agent(sig) {
        return 0;
    }
    let target: *const u8 = ctx.arg(0);
    let target_tgid = kread::<u32>(target, offsets().task_tgid).unwrap_or(0);
    if target_tgid != s.agent_tgid || (bpf_get_current_pid_tgid() >> 32) as u32 == s.agent_tgid {
        return 0;
    }
    refuse_signal(&s, target_tgid, sig)
}

/// A process the guard protects from tracing: the agent, or a time daemon.
#[inline(always)]
fn traced(s: &SelfState, task: *const u8, mode_bits: u32) -> i32 {
    let off = offsets();
    let (dev, ino) = task_exe(task, &off);
    let what = protected(dev, ino);
    if what != Target::Agent as u32 && what != Target::Daemon as u32 {
        return 0;
    }
    if caller_is_agent(s) {
        return 0;
    }
    refuse(
        s,
        &Attempt {
            action: Action::Ptrace,
            target: what,
            detail: mode_bits,
            target_tgid: kread::<u32>(task, off.task_tgid).unwrap_or(0),
            target_dev: dev,
            target_ino: ino,
        },
    )
}

/// LSM_HOOK(int, 0, ptrace_access_check, struct task_struct *child, unsigned int mode)
///
/// Attached with the clock's programs: besides self-protection, an attach that goes
/// through taints the process attached (`identity`), decided in this one program so that
/// an attach refused here never taints.
#[lsm(hook = "ptrace_access_check")]
pub fn tamper_ptrace(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let mode_bits: u32 = ctx.arg(1);
    // Reading (ps, /proc/PID/exe) is left alone; acting as the process is not.
    if mode_bits & PTRACE_MODE_ATTACH == 0 {
        return 0;
    }
    let child: *const u8 = ctx.arg(0);
    let verdict = match state() {
        Some(s) => traced(&s, child, mode_bits),
        None => 0,
    };
    if verdict == 0 {
        if let Some(tgid) = kread::<u32>(child, offsets().task_tgid) {
            let tracer = (bpf_get_current_pid_tgid() >> 32) as u32;
            // An attach the taint of which cannot be kept would keep the rule: refused.
            if !taint(tgid, TaintReason::Traced, tracer) {
                return lsm_verdict(Verdict::Deny);
            }
        }
    }
    verdict
}

/// LSM_HOOK(int, 0, ptrace_traceme, struct task_struct *parent)
///
/// Taints the process that asks to be traced (`identity`), as `tamper_ptrace` does.
#[lsm(hook = "ptrace_traceme")]
pub fn tamper_traceme(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    // SAFETY: the helper returns the current task, only read through probe reads.
    let me = unsafe { bpf_get_current_task() } as *const u8;
    let verdict = match state() {
        Some(s) => traced(&s, me, PTRACE_MODE_ATTACH),
        None => 0,
    };
    if verdict == 0 {
        let parent: *const u8 = ctx.arg(0);
        let tracer = kread::<u32>(parent, offsets().task_tgid).unwrap_or(0);
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if !taint(tgid, TaintReason::AskedToBeTraced, tracer) {
            return lsm_verdict(Verdict::Deny);
        }
    }
    verdict
}

/// Decides a change to a file; 0 when it is not protected.
#[inline(always)]
fn file_change(act: Action, inode: *const u8) -> i32 {
    if inode.is_null() {
        return 0;
    }
    let Some(s) = state() else { return 0 };
    let off = offsets();
    let (dev, ino) = inode_id(inode, &off);
    let what = protected(dev, ino);
    if what == 0 || caller_is_agent(&s) {
        return 0;
    }
    refuse(
        &s,
        &Attempt {
            action: act,
            target: what,
            detail: 0,
            target_tgid: 0,
            target_dev: dev,
            target_ino: ino,
        },
    )
}

/// LSM_HOOK(int, 0, file_open, struct file *file)
///
/// A file opened for writing: refused when the guard trusts it (its own executable, the
/// policy, a daemon's executable, as self-protection's mode says) or a rule process runs it
/// as code (`identity`, as the clock policy's mode says). A program of its own: with the
/// PHC guard's decision, 6.1's stack limit of 512 bytes is passed.
#[lsm(hook = "file_open")]
pub fn file_write_guard(ctx: LsmContext) -> i32 {
    let (file, off) = match opened_for_writing(&ctx) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    let Some(inode) = kread::<*const u8>(file, off.file_inode) else {
        return 0;
    };
    let tampered = file_change(Action::Write, inode);
    if tampered != 0 {
        return tampered;
    }
    crate::identity::write_to_code(inode, &off)
}

#[inline(always)]
fn dentry_inode(dentry: *const u8) -> *const u8 {
    kread::<*const u8>(dentry, offsets().dentry_inode).unwrap_or(core::ptr::null())
}

/// LSM_HOOK(int, 0, inode_unlink, struct inode *dir, struct dentry *dentry)
#[lsm(hook = "inode_unlink")]
pub fn tamper_unlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    file_change(Action::Unlink, dentry_inode(ctx.arg(1)))
}

/// LSM_HOOK(int, 0, inode_rename, struct inode *old_dir, struct dentry *old_dentry,
/// struct inode *new_dir, struct dentry *new_dentry)
#[lsm(hook = "inode_rename")]
pub fn tamper_rename(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    // Moving a protected file away, or another file over it (its dentry may be negative).
    let moved = file_change(Action::Rename, dentry_inode(ctx.arg(1)));
    if moved != 0 {
        return moved;
    }
    file_change(Action::Rename, dentry_inode(ctx.arg(3)))
}

/// The file behind descriptor `fd` of the calling process (None: no such descriptor).
#[inline(always)]
pub(crate) fn fd_file(fd: i32) -> Option<*const u8> {
    if fd < 0 {
        return None;
    }
    let off = offsets();
    // SAFETY: the helper returns the current task; it is only read through probe reads.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files = kread::<*const u8>(task, off.task_files)?;
    let fdt = kread::<*const u8>(files, off.files_fdt)?;
    if fd as u32 >= kread::<u32>(fdt, off.fdt_max_fds).unwrap_or(0) {
        return None;
    }
    let table = kread::<*const u8>(fdt, off.fdt_fd)?;
    kread::<*const u8>(table, fd as u32 * 8)
}

/// The id of the map or link behind descriptor `fd` of the calling process.
#[inline(always)]
fn object_id(fd: i32, id_offset: u32) -> u32 {
    let Some(file) = fd_file(fd) else { return 0 };
    let Some(object) = kread::<*const u8>(file, offsets().file_private_data) else {
        return 0;
    };
    kread::<u32>(object, id_offset).unwrap_or(0)
}

/// LSM_HOOK(int, 0, bpf, int cmd, union bpf_attr *attr, unsigned int size[, bool kernel])
#[lsm(hook = "bpf")]
pub fn tamper_bpf(ctx: LsmContext) -> i32 {
    let Some(s) = state() else { return 0 };
    // Where the previous verdict is depends on the kernel; read through a probe, as a
    // variable offset into the context is refused by the verifier (6.1).
    let at = if s.bpf_hook_args == 4 { 4 } else { 3 };
    let previous = crate::caller::nullable_arg(&ctx, at) as i32;
    if previous != 0 {
        // Read through a probe, that verdict has no range the verifier knows, and 6.12 wants
        // an LSM program to return an errno it can prove: the refusal stands, as EPERM.
        return lsm_verdict(Verdict::Deny);
    }
    let cmd: i32 = ctx.arg(0);
    let Some((kind, fd_at)) = changing_bpf_command(cmd as u32) else {
        return 0;
    };
    let attr: *const u8 = ctx.arg(1);
    let Some(fd) = kread::<i32>(attr, fd_at as u32) else {
        return 0;
    };
    let off = offsets();
    let id_offset = if kind == Target::Map {
        off.bpf_map_id
    } else {
        off.bpf_link_id
    };
    let id = object_id(fd, id_offset);
    let key = ObjectKey {
        kind: kind as u32,
        id,
    };
    // SAFETY: only whether it is there is used.
    if id == 0 || unsafe { OWN_OBJECTS.get(key) }.is_none() {
        return 0;
    }
    if caller_is_agent(&s) {
        return 0;
    }
    refuse(
        &s,
        &Attempt {
            action: Action::Bpf,
            target: kind as u32,
            detail: cmd as u32,
            target_tgid: 0,
            target_dev: 0,
            target_ino: id as u64,
        },
    )
}
