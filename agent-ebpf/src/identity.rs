//! The identity every decision rests on: the executable file a process was executed from,
//! kept here at its exec (`EXE_AT_EXEC`) and carried to its forks. The kernel's own field
//! (`mm->exe_file`) is only read for a process executed before the guard was loaded: root
//! can rewrite that field without an exec (`prctl(PR_SET_MM, PR_SET_MM_EXE_FILE |
//! PR_SET_MM_MAP, ...)` names any file as the executable once the process has unmapped its
//! own image). Under a policy that enforces, nobody may: only checkpoint/restore tools
//! (CRIU) need it, and the agent never does. Refusals and, in audit mode, the attempts are
//! counted and recorded on the tamper ring.
//!
//! And the integrity of a rule's process (`agent_common::integrity`): a process another one
//! acted as (ptrace and the like, decided in `tamper`), or a rule process that maps code
//! that is not the system's (decided here), is tainted, its forks with it, and its requests
//! are decided by the default (`policy::decide_for`).

use agent_common::{
    integrity::{
        unit_hash_step, Taint, TaintReason, UnitMark, EXECUTED_PROCESSES, LIBRARY_DIRS_MAX,
        LIBRARY_DIR_DEPTH, PROT_EXEC, PROT_WRITE, RULE_CODE_FILES, TAINTED_PROCESSES,
        UNIT_HASH_START, UNIT_NAME_MAX, UNIT_PATH_DEPTH, UNIT_PROCESSES,
    },
    kernel::KernelOffsets,
    maps::ONLY,
    policy::Verdict,
    tamper::{prctl, Action, FileKey, Target},
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{btf_tracepoint, lsm, map},
    maps::{Array, HashMap},
    programs::{BtfTracePointContext, LsmContext},
};

use crate::{
    caller::{inode_id, kread, offsets, task_exe},
    clock::lsm_verdict,
    policy::{clock_state, exe_has_rule, header_in_force},
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

/// The executable each process was executed from, by tgid, and carried to its forks:
/// written by the kernel only. A process without an entry was executed before the guard
/// was loaded (or when the map was full): its identity is then `mm->exe_file`, which only
/// the refused `PR_SET_MM` can change.
#[map]
static EXE_AT_EXEC: HashMap<u32, FileKey> = HashMap::pinned(EXECUTED_PROCESSES, 0);

/// The executable process `tgid` was executed from, when kept. The key by reference: a
/// record's own `tgid` field serves, with no copy in the frame (the clock's `capable`
/// program is at the stack limit).
#[inline(always)]
pub fn exe_at_exec(tgid: &u32) -> Option<&'static FileKey> {
    // SAFETY: an entry of a map that only the kernel programs write; read at once.
    unsafe { EXE_AT_EXEC.get(tgid) }
}

/// LSM_HOOK(void, LSM_RET_VOID, bprm_committed_creds, const struct linux_binprm *bprm):
/// at the end of `begin_new_exec`, past the point of no return and before the new image and
/// its interpreter are mapped (`mmap_file` then judges them as the new program's). The file
/// the kernel executed (for a script, its interpreter, as `mm->exe_file`) is the process's
/// identity until its next exec, whatever is later written into its `mm`.
#[lsm(hook = "bprm_committed_creds")]
pub fn identity_exec(ctx: LsmContext) -> i32 {
    let off = offsets();
    let bprm: *const u8 = ctx.arg(0);
    let Some(inode) = kread::<*const u8>(bprm, off.bprm_file)
        .and_then(|file| kread::<*const u8>(file, off.file_inode))
    else {
        return 0;
    };
    let (dev, ino) = inode_id(inode, &off);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // A full map leaves the process to `mm->exe_file`, set by this same exec.
    let _ = EXE_AT_EXEC.insert(tgid, FileKey { dev, ino }, 0);
    0
}

/// Tainted processes by tgid (`integrity`): written by the kernel only.
#[map]
static PROCESS_TAINT: HashMap<u32, Taint> = HashMap::pinned(TAINTED_PROCESSES, 0);

/// Index 0: the forks whose taint could not be kept (`TaintReason::TaintsLost`), written
/// by the kernel only.
#[map]
static TAINTS_LOST: Array<u64> = Array::pinned(1, 0);

/// Whether a fork's taint was ever lost: then no rule process can be told clean.
#[inline(always)]
pub fn taints_lost() -> bool {
    TAINTS_LOST.get(ONLY).is_some_and(|n| *n != 0)
}

/// The taint of process `tgid`, if it has one.
#[inline(always)]
pub fn taint_of(tgid: u32) -> Option<Taint> {
    // SAFETY: copied out at once.
    unsafe { PROCESS_TAINT.get(tgid) }.copied()
}

/// Taints process `tgid` for `reason`, by `source`; reasons add up, the first source stays.
/// False when the taint could not be kept (the map is full): the caller then refuses what
/// would have tainted, since a taint forgotten is a rule kept.
#[inline(always)]
#[must_use]
pub fn taint(tgid: u32, reason: TaintReason, source: u32) -> bool {
    taint_as(
        tgid,
        Taint {
            reasons: reason.code(),
            source_tgid: source,
            file_dev: 0,
            file_ino: 0,
        },
    )
}

/// Adds `new` to the taint of `tgid`: reasons add up, the first source and file stay.
/// Whether it is kept.
#[inline(always)]
#[must_use]
fn taint_as(tgid: u32, new: Taint) -> bool {
    let t = match taint_of(tgid) {
        Some(t) => Taint {
            reasons: t.reasons | new.reasons,
            source_tgid: if t.source_tgid != 0 {
                t.source_tgid
            } else {
                new.source_tgid
            },
            file_dev: if t.file_ino != 0 {
                t.file_dev
            } else {
                new.file_dev
            },
            file_ino: if t.file_ino != 0 {
                t.file_ino
            } else {
                new.file_ino
            },
        },
        None => new,
    };
    PROCESS_TAINT.insert(tgid, t, 0).is_ok()
}

/// The system's library directories by (dev, ino), filled by the agent.
#[map]
static LIBRARY_DIRS: HashMap<FileKey, u32> = HashMap::pinned(LIBRARY_DIRS_MAX, 0);

/// Whether one of the first `LIBRARY_DIR_DEPTH` directories above `file` is a library
/// directory: then the latest change time (seconds) of the directories between them, 0 for
/// none. The walk follows the file's own dentries: a bind mount, a symlink or a path the
/// loader was given does not change where the file is. A directory moved in whole keeps
/// its files' change times; its own says when it came.
#[inline(always)]
fn in_library_dir(file: *const u8, off: &KernelOffsets) -> Option<i64> {
    let mut dentry = kread::<*const u8>(file, off.file_dentry)?;
    let mut latest = 0i64;
    for _ in 0..LIBRARY_DIR_DEPTH {
        let parent = kread::<*const u8>(dentry, off.dentry_parent)?;
        // The root of the file's file system is its own parent.
        if parent == dentry {
            return None;
        }
        let inode = kread::<*const u8>(parent, off.dentry_inode)?;
        let (dev, ino) = inode_id(inode, off);
        // SAFETY: only whether the key is there is read.
        if unsafe { LIBRARY_DIRS.get(FileKey { dev, ino }) }.is_some() {
            return Some(latest);
        }
        let changed = kread::<i64>(inode, off.inode_ctime_sec).unwrap_or(i64::MAX);
        latest = latest.max(changed);
        dentry = parent;
    }
    None
}

/// Files rule processes run as code, by (dev, ino) (`integrity::RULE_CODE_FILES`).
#[map]
static RULE_CODE: HashMap<FileKey, u32> = HashMap::pinned(RULE_CODE_FILES, 0);

/// Notes `(dev, ino)` as code a rule process runs; the verdict on the mapping: refused when
/// the note cannot be kept (the file could then be written under the process).
#[inline(always)]
fn vouched(dev: u64, ino: u64) -> i32 {
    let key = FileKey { dev, ino };
    // SAFETY: only whether the key is there is read.
    if unsafe { RULE_CODE.get(key) }.is_some() || RULE_CODE.insert(key, 1, 0).is_ok() {
        0
    } else {
        lsm_verdict(Verdict::Deny)
    }
}

/// A file (`inode`) is opened for writing: refused (as the clock policy's mode says) when a
/// rule process runs it as code and it is mapped now. By the inode: another name for the
/// file (a hard link, a rename) is the same code.
#[inline(always)]
pub fn write_to_code(inode: *const u8, off: &KernelOffsets) -> i32 {
    let (dev, ino) = inode_id(inode, off);
    // SAFETY: only whether the key is there is read.
    if unsafe { RULE_CODE.get(FileKey { dev, ino }) }.is_none() {
        return 0;
    }
    // An entry outlives its file: a number reused for a file nobody maps is not code.
    let mapped = kread::<*const u8>(inode, off.inode_mapping)
        .and_then(|m| kread::<u64>(m, off.mapping_i_mmap))
        .unwrap_or(1);
    if mapped == 0 {
        return 0;
    }
    let Some(policy) = header_in_force() else {
        return 0;
    };
    refuse_as(
        policy.default_mode,
        policy.generation,
        &Attempt {
            action: Action::Write,
            target: Target::Code as u32,
            detail: 0,
            target_tgid: 0,
            target_dev: dev,
            target_ino: ino,
        },
    )
}

/// Whether a library's `inode`, and the directories between it and its library directory
/// (changed last at `dirs_changed`), are unchanged since the operator vouched for the
/// libraries.
#[inline(always)]
fn unchanged_since_vouched(inode: *const u8, dirs_changed: i64, off: &KernelOffsets) -> bool {
    let since = clock_state().code_vouched_sec;
    let changed = kread::<i64>(inode, off.inode_ctime_sec)
        .unwrap_or(i64::MAX)
        .max(dirs_changed);
    since != 0 && changed < since
}

/// A rule process maps `file` (null: memory backed by no file) as code. It loses its rule
/// unless the file is its own executable, or a library directory's file not changed since
/// the operator vouched for the libraries and open for writing by nobody, and the memory is
/// the file's own (not `writable` now, never written). The mapping itself goes on (refusing
/// it would break the daemon), but for one the taint of which cannot be kept: the verdict,
/// 0 or -EPERM.
#[inline(always)]
fn mapped_as_code(file: *const u8, writable: bool) -> i32 {
    let off = offsets();
    // SAFETY: the helper returns the current task; it is only read through probe reads.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let (exe_dev, exe_ino) = task_exe(task, &off);
    // Only a process a rule names has a rule to lose, whatever user it runs as now (it may
    // become the rule's user later, with the code it mapped).
    if !exe_has_rule(exe_dev, exe_ino) {
        return 0;
    }
    let (reason, dev, ino) = match kread::<*const u8>(file, off.file_inode) {
        None => (TaintReason::ForeignCode, 0, 0),
        Some(inode) => {
            let (dev, ino) = inode_id(inode, &off);
            let own = (dev, ino) == (exe_dev, exe_ino);
            // Code that can be (or was) written is not the file's, whatever the file; other
            // code is its own executable's or a library directory's (with the latest change
            // of the directories between).
            let dirs_changed = if writable {
                None
            } else if own {
                Some(0)
            } else {
                in_library_dir(file, &off)
            };
            if let Some(dirs_changed) = dirs_changed {
                // Noted first, looked at after: a write-open from now on is refused, and
                // one that came before shows in the count of writers read below.
                let noted = vouched(dev, ino);
                if noted != 0 {
                    return noted;
                }
                // Open for writing (a running executable too, on kernels that let it be):
                // changed under the mapping whenever its writer likes.
                let writers = kread::<i32>(inode, off.inode_writecount).unwrap_or(1);
                // Its own executable is the one exec vouched for; a library, the one the
                // operator did (the file and the directories between it and its library
                // directory unchanged since).
                if writers <= 0 && (own || unchanged_since_vouched(inode, dirs_changed, &off)) {
                    return 0;
                }
                (TaintReason::ModifiedCode, dev, ino)
            } else {
                (TaintReason::ForeignCode, dev, ino)
            }
        }
    };
    let kept = taint_as(
        (bpf_get_current_pid_tgid() >> 32) as u32,
        Taint {
            reasons: reason.code(),
            source_tgid: 0,
            file_dev: dev,
            file_ino: ino,
        },
    );
    if kept {
        0
    } else {
        lsm_verdict(Verdict::Deny)
    }
}

/// LSM_HOOK(int, 0, mmap_file, struct file *file, unsigned long reqprot, unsigned long prot,
///          unsigned long flags)
#[lsm(hook = "mmap_file")]
pub fn identity_mmap_guard(ctx: LsmContext) -> i32 {
    // Every mmap passes here: only code is looked at.
    let prot: u64 = ctx.arg(2);
    let previous: i32 = ctx.arg(4);
    if prot & PROT_EXEC == 0 || previous != 0 {
        return previous;
    }
    mapped_as_code(ctx.arg(0), prot & PROT_WRITE != 0)
}

/// LSM_HOOK(int, 0, file_mprotect, struct vm_area_struct *vma, unsigned long reqprot,
///          unsigned long prot): a mapping made executable afterwards is code too.
#[lsm(hook = "file_mprotect")]
pub fn identity_mprotect_guard(ctx: LsmContext) -> i32 {
    let prot: u64 = ctx.arg(2);
    let previous: i32 = ctx.arg(3);
    if prot & PROT_EXEC == 0 || previous != 0 {
        return previous;
    }
    let vma: *const u8 = ctx.arg(0);
    let off = offsets();
    let file = kread::<*const u8>(vma, off.vma_file).unwrap_or(core::ptr::null());
    // A private mapping written before (its copied pages hang off `anon_vma`) holds what
    // was written, not the file.
    let written = kread::<u64>(vma, off.vma_anon_vma).unwrap_or(1) != 0;
    mapped_as_code(file, prot & PROT_WRITE != 0 || written)
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
    let parent_tgid = kread::<u32>(parent, off.task_tgid).unwrap_or(0);
    // A fork runs its parent's executable: the identity its parent was executed with.
    match exe_at_exec(&parent_tgid).copied() {
        Some(exe) => {
            let _ = EXE_AT_EXEC.insert(tgid, exe, 0);
        }
        None => {
            let _ = EXE_AT_EXEC.remove(tgid);
        }
    }
    match taint_of(parent_tgid) {
        Some(t) => {
            // A fork cannot be refused from here: a taint it cannot carry takes every rule
            // process's rule instead (`policy::decide_for`).
            if PROCESS_TAINT.insert(tgid, t, 0).is_err() {
                if let Some(n) = TAINTS_LOST.get_ptr_mut(ONLY) {
                    // SAFETY: the one entry of an array map; a lost increment still leaves it
                    // above zero.
                    unsafe { *n += 1 };
                }
            }
        }
        None => {
            let _ = PROCESS_TAINT.remove(tgid);
        }
    }
    // Forked by the service manager (PID 1), the process is of the unit it was made in
    // (clone3 into the unit's cgroup); forked by a process of a unit, of the same unit while
    // in the same cgroup.
    let mark = if parent_tgid == 1 {
        unit_mark(task_cgroup(child, &off), &off)
    } else {
        // SAFETY: copied out at once.
        match unsafe { UNIT_OF.get(parent_tgid) }.copied() {
            Some(m) if cgroup_id(task_cgroup(child, &off), &off) == Some(m.cgroup_id) => Some(m),
            _ => None,
        }
    };
    match mark {
        Some(m) => {
            let _ = UNIT_OF.insert(tgid, m, 0);
        }
        None => {
            let _ = UNIT_OF.remove(tgid);
        }
    }
    0
}

/// Processes by tgid and the unit the service manager started them in (`match.unit`):
/// written by the kernel only.
#[map]
static UNIT_OF: HashMap<u32, UnitMark> = HashMap::pinned(UNIT_PROCESSES, 0);

/// Whether process `tgid`, in the cgroup it runs in now, is of the unit a rule names by
/// `hash` (of the unit's cgroup, or of a template's slice).
#[inline(always)]
pub fn in_unit(tgid: u32, hash: u64, of_slice: bool) -> bool {
    // SAFETY: copied out at once.
    let Some(m) = (unsafe { UNIT_OF.get(tgid) }).copied() else {
        return false;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_get_current_cgroup_id() };
    let named = if of_slice { m.slice_hash } else { m.unit_hash };
    named == hash && m.cgroup_id == now
}

/// A task's cgroup on the unified hierarchy (`task->cgroups->dfl_cgrp`); null when unread.
#[inline(always)]
fn task_cgroup(task: *const u8, off: &KernelOffsets) -> *const u8 {
    kread::<*const u8>(task, off.task_cgroups)
        .and_then(|cset| kread::<*const u8>(cset, off.css_set_dfl_cgrp))
        .unwrap_or(core::ptr::null())
}

/// A cgroup's id (its kernfs node's, as `bpf_get_current_cgroup_id` gives it).
#[inline(always)]
fn cgroup_id(cgrp: *const u8, off: &KernelOffsets) -> Option<u64> {
    let kn = kread::<*const u8>(cgrp, off.cgroup_kn)?;
    kread::<u64>(kn, off.kn_id)
}

/// The unit a cgroup is: its id, and the hashes of its path and its parent's, from the leaf
/// up as `integrity::unit_hash` computes them.
#[inline(always)]
fn unit_mark(cgrp: *const u8, off: &KernelOffsets) -> Option<UnitMark> {
    let mut kn = kread::<*const u8>(cgrp, off.cgroup_kn)?;
    let cgroup_id = kread::<u64>(kn, off.kn_id)?;
    let mut hash = UNIT_HASH_START;
    let mut slice = UNIT_HASH_START;
    let mut name = [0u8; UNIT_NAME_MAX];
    for depth in 0..UNIT_PATH_DEPTH {
        // The root has no parent, and no name in the path.
        let parent = kread::<*const u8>(kn, off.kn_parent).unwrap_or(core::ptr::null());
        if parent.is_null() {
            break;
        }
        let text = kread::<*const u8>(kn, off.kn_name)?;
        // SAFETY: a kernel string, read into a buffer of this program's own.
        let bytes = unsafe { bpf_probe_read_kernel_str_bytes(text, &mut name) }.ok()?;
        for &b in bytes.iter().take(UNIT_NAME_MAX - 1) {
            hash = unit_hash_step(hash, b);
            if depth > 0 {
                slice = unit_hash_step(slice, b);
            }
        }
        hash = unit_hash_step(hash, b'/');
        if depth > 0 {
            slice = unit_hash_step(slice, b'/');
        }
        kn = parent;
    }
    Some(UnitMark {
        cgroup_id,
        unit_hash: hash,
        slice_hash: slice,
    })
}

/// cgroup_attach_task(struct cgroup *dst_cgrp, const char *path, struct task_struct *task,
///                    bool threadgroup): a process moved into a cgroup by the service manager
/// (PID 1, or its child before it executes the service) is of that unit; moved by anyone
/// else (a root shell writing `cgroup.procs`), of none.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn identity_unit_attach(ctx: BtfTracePointContext) -> i32 {
    let off = offsets();
    let dst: *const u8 = ctx.arg(0);
    let task: *const u8 = ctx.arg(2);
    let Some(tgid) = kread::<u32>(task, off.task_tgid) else {
        return 0;
    };
    let mover = (bpf_get_current_pid_tgid() >> 32) as u32;
    let by_manager = mover == 1 || {
        let state = clock_state();
        // SAFETY: the helper returns the current task; it is only read through probe reads.
        let me = unsafe { bpf_get_current_task() } as *const u8;
        let (dev, ino) = task_exe(me, &off);
        ino != 0 && (dev, ino) == (state.service_manager_dev, state.service_manager_ino)
    };
    match by_manager.then(|| unit_mark(dst, &off)).flatten() {
        Some(m) => {
            let _ = UNIT_OF.insert(tgid, m, 0);
        }
        None => {
            let _ = UNIT_OF.remove(tgid);
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
        let _ = UNIT_OF.remove(tgid);
        let _ = EXE_AT_EXEC.remove(tgid);
    }
    0
}
