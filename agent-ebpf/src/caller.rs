//! Who is asking: the executable actually running (device + inode, never the process name),
//! the ids, and the syscall the request came through.

use agent_common::{
    event::{Abi, Caller},
    kernel::{pt_regs, KernelOffsets, FMODE_WRITE, PF_KTHREAD, TS_COMPAT},
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_task_btf, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    programs::LsmContext,
};

use crate::identity::exe_at_exec;

/// Field offsets of the running kernel, set by the agent at load time from its BTF.
/// Named `maps::KERNEL_OFFSETS` on the agent's side.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    task_mm: 0,
    task_real_parent: 0,
    task_tgid: 0,
    task_flags: 0,
    task_ti_status: 0,
    mm_exe_file: 0,
    file_inode: 0,
    file_mode: 0,
    inode_ino: 0,
    inode_sb: 0,
    inode_rdev: 0,
    sb_dev: 0,
    userns_level: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    bpf_map_id: 0,
    bpf_link_id: 0,
    dentry_inode: 0,
    task_pid: 0,
    task_signal: 0,
    signal_live: 0,
    file_dentry: 0,
    dentry_parent: 0,
    inode_ctime_sec: 0,
    vma_file: 0,
    vma_anon_vma: 0,
    inode_writecount: 0,
    inode_mapping: 0,
    mapping_i_mmap: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kn_parent: 0,
    kn_name: 0,
    kn_id: 0,
    bprm_file: 0,
};

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a read-only global the loader rewrites; volatile so the compiler keeps the load.
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub fn kread<T>(base: *const u8, off: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T).ok() }
}

/// An LSM hook's pointer argument that may be NULL, as a plain number. Read directly, the
/// verifier types it as a trusted kernel pointer and decides `== NULL` is never true, so a
/// null check on it is dropped (seen on 6.12: a timezone-only settimeofday looked like a
/// step); read through a probe, it is a scalar that can be tested.
#[inline(always)]
pub fn nullable_arg(ctx: &impl aya_ebpf::EbpfContext, n: usize) -> u64 {
    let at = (ctx.as_ptr() as *const u64).wrapping_add(n);
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(at) }.unwrap_or(0)
}

/// Reads a `T` at `base + off` in the calling process's memory.
#[inline(always)]
pub fn uread<T>(base: u64, off: usize) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_user((base as usize + off) as *const T).ok() }
}

/// The (device, inode) of the current task's executable; (0, 0) for a kernel thread.
#[inline(always)]
pub fn current_exe(off: &KernelOffsets) -> (u64, u64) {
    if let Some(exe) = exe_at_exec(&((bpf_get_current_pid_tgid() >> 32) as u32)) {
        return (exe.dev, exe.ino);
    }
    // SAFETY: the helper returns the current task; it is only read through probe reads.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    exe_file(task, off)
}

/// The (device, inode) of a task's executable, as it was executed (`identity::EXE_AT_EXEC`);
/// (0, 0) for a kernel thread.
#[inline(always)]
pub fn task_exe(task: *const u8, off: &KernelOffsets) -> (u64, u64) {
    if let Some(exe) = kread::<u32>(task, off.task_tgid).and_then(|tgid| exe_at_exec(&tgid)) {
        return (exe.dev, exe.ino);
    }
    exe_file(task, off)
}

/// The (device, inode) of `mm->exe_file`: the identity of a process executed before the
/// guard was loaded.
#[inline(always)]
fn exe_file(task: *const u8, off: &KernelOffsets) -> (u64, u64) {
    let Some(mm) = kread::<*const u8>(task, off.task_mm) else {
        return (0, 0);
    };
    let Some(file) = kread::<*const u8>(mm, off.mm_exe_file) else {
        return (0, 0);
    };
    match kread::<*const u8>(file, off.file_inode) {
        Some(inode) => inode_id(inode, off),
        None => (0, 0),
    }
}

/// The (device, inode) of an inode: its file system's `dev_t` and its number.
#[inline(always)]
pub fn inode_id(inode: *const u8, off: &KernelOffsets) -> (u64, u64) {
    let ino = kread::<u64>(inode, off.inode_ino).unwrap_or(0);
    let dev = kread::<*const u8>(inode, off.inode_sb)
        .and_then(|sb| kread::<u32>(sb, off.sb_dev))
        .unwrap_or(0);
    (dev as u64, ino)
}

/// Whether the current task is a kernel thread (no process asked).
#[inline(always)]
pub fn in_kernel_thread(off: &KernelOffsets) -> bool {
    // SAFETY: the helper returns the current task; it is only read through probe reads.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    kread::<u32>(task, off.task_flags).unwrap_or(0) & PF_KTHREAD != 0
}

/// The syscall a task is in: ABI, number and its first arguments, from its saved registers.
pub struct Syscall {
    pub abi: Abi,
    pub nr: i64,
    pub args: [u64; 3],
}

#[inline(always)]
pub fn current_syscall(off: &KernelOffsets) -> Syscall {
    // SAFETY: the BTF task pointer is what bpf_task_pt_regs requires.
    let task = unsafe { bpf_get_current_task_btf() };
    let regs = unsafe { aya_ebpf::helpers::generated::bpf_task_pt_regs(task) } as *const u8;
    let status = kread::<u32>(task as *const u8, off.task_ti_status).unwrap_or(0);
    let nr = kread::<i64>(regs, pt_regs::ORIG_AX as u32).unwrap_or(-1);
    let reg = |o: usize| kread::<u64>(regs, o as u32).unwrap_or(0);
    if status & TS_COMPAT != 0 {
        // i386 syscall arguments: ebx, ecx, edx.
        Syscall {
            abi: Abi::Compat,
            nr,
            args: [reg(pt_regs::BX), reg(pt_regs::CX), reg(pt_regs::DX)],
        }
    } else {
        Syscall {
            abi: Abi::Native,
            nr,
            args: [reg(pt_regs::DI), reg(pt_regs::SI), reg(pt_regs::DX)],
        }
    }
}

/// Fills the caller block of a record (every record has one): the current task's ids and
/// name, then its executable (`current_exe`). The ids first: the executable read last
/// needs no registers kept across the helper calls, and its lookup is keyed by the block's
/// own `tgid`, which keeps the clock's `capable` program within the 6.1 verifier's budget.
#[inline(always)]
pub fn fill_caller(c: &mut Caller, off: &KernelOffsets) {
    fill_ids(c);
    if let Some(exe) = exe_at_exec(&c.tgid) {
        c.exe_dev = exe.dev;
        c.exe_ino = exe.ino;
    } else {
        // SAFETY: the helper returns the current task; it is only read through probe reads.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        (c.exe_dev, c.exe_ino) = exe_file(task, off);
    }
}

/// The ids and name of the current task, into a record's caller block.
#[inline(always)]
pub fn fill_ids(c: &mut Caller) {
    let pid_tgid = bpf_get_current_pid_tgid();
    c.pid = pid_tgid as u32;
    c.tgid = (pid_tgid >> 32) as u32;
    let uid_gid = bpf_get_current_uid_gid();
    c.uid = uid_gid as u32;
    c.gid = (uid_gid >> 32) as u32;
    c.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// A `file_open` hook's file and the offsets, when it is opened for writing and nothing
/// refused the open yet; otherwise the verdict to return at once. Runs on every open in the
/// system: the cheapest tests first.
#[inline(always)]
pub fn opened_for_writing(ctx: &LsmContext) -> Result<(*const u8, KernelOffsets), i32> {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return Err(previous);
    }
    let file: *const u8 = ctx.arg(0);
    let off = offsets();
    if kread::<u32>(file, off.file_mode).unwrap_or(0) & FMODE_WRITE == 0 {
        return Err(0);
    }
    Ok((file, off))
}
