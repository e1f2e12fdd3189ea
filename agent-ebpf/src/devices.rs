//! Clock devices the kernel guards only by the file's mode: PTP hardware clocks.
//!
//! `clock_settime`/`clock_adjtime` on a PHC (a clock id made from a `/dev/ptpN` descriptor)
//! pass no capability check and no `settime` hook: the kernel only asks that the file was
//! opened for writing. So the decision is made when `/dev/ptpN` is opened for writing, and
//! again on the ioctls that change the device (periodic output, pins, PPS), which a
//! descriptor passed to another process could still make.

use agent_common::{
    clock::{op, phc_ioctl_operations},
    event::Hook,
    kernel::{dev_major, KernelOffsets},
};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    caller::{current_syscall, kread, offsets, opened_for_writing},
    clock::{decide_and_record, lsm_verdict, Request},
    policy::clock_state,
};

/// The device number of `file` if it is a PTP hardware clock.
#[inline(always)]
fn phc_device(file: *const u8, off: &KernelOffsets) -> Option<u32> {
    let major = clock_state().phc_major;
    if major == 0 {
        return None;
    }
    let inode = kread::<*const u8>(file, off.file_inode)?;
    let rdev = kread::<u32>(inode, off.inode_rdev)?;
    (dev_major(rdev) == major).then_some(rdev)
}

/// Decides a PHC request on `file`; other files pass untouched.
#[inline(always)]
fn decide_phc(hook: Hook, file: *const u8, off: &KernelOffsets, cmd: u32) -> i32 {
    let Some(rdev) = phc_device(file, off) else {
        return 0;
    };
    let sc = current_syscall(off);
    let req = Request::device(hook, op::PHC, &sc, rdev, cmd);
    lsm_verdict(decide_and_record(&req, false))
}

/// LSM_HOOK(int, 0, file_open, struct file *file)
#[lsm(hook = "file_open")]
pub fn phc_open_guard(ctx: LsmContext) -> i32 {
    let (file, off) = match opened_for_writing(&ctx) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    decide_phc(Hook::FileOpen, file, &off, 0)
}

/// Shared by `file_ioctl` and (6.8+) `file_ioctl_compat`, which have the same arguments.
#[inline(always)]
fn ioctl_guard(ctx: &LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let cmd: u32 = ctx.arg(1);
    if phc_ioctl_operations(cmd) == 0 {
        return 0;
    }
    decide_phc(Hook::FileIoctl, ctx.arg(0), &offsets(), cmd)
}

/// LSM_HOOK(int, 0, file_ioctl, struct file *file, unsigned int cmd, unsigned long arg)
#[lsm(hook = "file_ioctl")]
pub fn phc_ioctl_guard(ctx: LsmContext) -> i32 {
    ioctl_guard(&ctx)
}

/// LSM_HOOK(int, 0, file_ioctl_compat, ...): 32-bit ioctls since 6.8.
#[lsm(hook = "file_ioctl_compat")]
pub fn phc_ioctl_compat_guard(ctx: LsmContext) -> i32 {
    ioctl_guard(&ctx)
}
