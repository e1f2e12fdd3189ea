//! Facts about the running kernel that the programs need and cannot learn themselves.

/// Byte offsets of kernel struct fields, read from the running kernel's BTF by the agent and
/// handed to the programs as a global: Rust eBPF has no CO-RE relocations, and these offsets
/// differ between kernel builds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KernelOffsets {
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.flags` (`PF_KTHREAD`)
    pub task_flags: u32,
    /// `task_struct.thread_info.status` (x86: holds `TS_COMPAT` during a 32-bit syscall)
    pub task_ti_status: u32,
    /// `mm_struct.exe_file`
    pub mm_exe_file: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.f_mode` (`FMODE_WRITE`: opened for writing)
    pub file_mode: u32,
    /// `inode.i_rdev` (the device number of a device file)
    pub inode_rdev: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `user_namespace` address of `init_user_ns` is not known to Rust eBPF; instead the
    /// agent gives `user_namespace.level` so a non-initial namespace can be told apart.
    pub userns_level: u32,
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.max_fds`, `fdtable.fd`: from a
    /// descriptor number to its file (the object a `bpf()` command names).
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    /// `file.private_data` (a BPF map's or link's file points at it)
    pub file_private_data: u32,
    /// `bpf_map.id`, `bpf_link.id`
    pub bpf_map_id: u32,
    pub bpf_link_id: u32,
    /// `dentry.d_inode`
    pub dentry_inode: u32,
    /// `task_struct.pid`, `task_struct.signal`, `signal_struct.live`: whether a new task is
    /// a process or a thread, and whether an exiting one was its process's last thread.
    pub task_pid: u32,
    pub task_signal: u32,
    pub signal_live: u32,
    /// `file.f_path.dentry`, `dentry.d_parent`, the inode's change time in seconds
    /// (`i_ctime_sec`, `__i_ctime.tv_sec` or `i_ctime.tv_sec` by kernel version) and
    /// `vm_area_struct.vm_file`: where a file mapped as code lives, and when it changed.
    pub file_dentry: u32,
    pub dentry_parent: u32,
    pub inode_ctime_sec: u32,
    pub vma_file: u32,
    /// `vm_area_struct.anon_vma` (set once a private mapping's page was written: the memory
    /// is no longer the file's) and `inode.i_writecount` (above 0 while the file is open for
    /// writing).
    pub vma_anon_vma: u32,
    pub inode_writecount: u32,
    /// `inode.i_mapping` and `address_space.i_mmap` (its tree's root node, the first word,
    /// is null while no process maps the file).
    pub inode_mapping: u32,
    pub mapping_i_mmap: u32,
    /// `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn`, `kernfs_node.parent` (or
    /// `__parent`), `kernfs_node.name`, `kernfs_node.id`: a process's cgroup and its path.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kn_parent: u32,
    pub kn_name: u32,
    pub kn_id: u32,
    /// `linux_binprm.file`: the file an exec runs (the identity kept from then on).
    pub bprm_file: u32,
}

crate::pod!(KernelOffsets, ClockState);

/// What the agent tells the programs about the clock, refreshed as it changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClockState {
    /// CLOCK_TAI minus CLOCK_REALTIME, in nanoseconds (whole seconds): with it the programs
    /// know the wall time (`bpf_ktime_get_tai_ns() - tai_offset_ns`) to measure a step.
    pub tai_offset_ns: u64,
    /// The character-device major of PTP hardware clocks (`/dev/ptpN`), from
    /// `/proc/devices`; 0 while the kernel has none.
    pub phc_major: u32,
    pub _pad: u32,
    /// CLOCK_REALTIME seconds when the operator last vouched for the libraries in place: the
    /// first policy put in force, and every reload they asked for (SIGHUP, `timeguard
    /// apply`), not the reloads the agent makes by itself (0: not yet). A library changed
    /// later is not one they vouched for (`integrity::TaintReason::ModifiedCode`).
    pub code_vouched_sec: i64,
    /// The service manager's executable (PID 1's, by device and inode): a process it puts in
    /// a unit's cgroup is of that unit (`match.unit`).
    pub service_manager_dev: u64,
    pub service_manager_ino: u64,
}

/// `task_struct.flags` bit of a kernel thread.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// `file.f_mode` bit: the file is open for writing (a PHC can then be set and adjusted).
pub const FMODE_WRITE: u32 = 0x2;

/// The major number of a kernel-internal `dev_t` (`MAJOR()`: 12 bits above a 20-bit minor).
pub const fn dev_major(dev: u32) -> u32 {
    dev >> 20
}

/// The capability whose check guards every privileged change of the system clock.
pub const CAP_SYS_TIME: i32 = 25;

/// `thread_info.status` bit set while a task runs a 32-bit compat syscall (x86).
pub const TS_COMPAT: u32 = 0x0002;

/// x86_64 `struct pt_regs` field offsets (ABI-stable: ptrace exposes this layout).
pub mod pt_regs {
    pub const R10: usize = 56;
    pub const DX: usize = 96;
    pub const SI: usize = 104;
    pub const DI: usize = 112;
    pub const CX: usize = 88;
    pub const BX: usize = 40;
    pub const ORIG_AX: usize = 120;
}

/// Syscalls that can change the clock, by ABI.
pub mod nr {
    /// x86_64 native.
    pub mod native {
        pub const WRITE: i64 = 1;
        pub const IOCTL: i64 = 16;
        pub const PWRITE64: i64 = 18;
        pub const WRITEV: i64 = 20;
        pub const PWRITEV: i64 = 296;
        pub const PWRITEV2: i64 = 328;
        pub const ADJTIMEX: i64 = 159;
        pub const SETTIMEOFDAY: i64 = 164;
        pub const CLOCK_SETTIME: i64 = 227;
        pub const CLOCK_ADJTIME: i64 = 305;
    }
    /// i386 compat (`int 0x80`).
    pub mod compat {
        pub const WRITE: i64 = 4;
        pub const STIME: i64 = 25;
        pub const IOCTL: i64 = 54;
        pub const WRITEV: i64 = 146;
        pub const PWRITE64: i64 = 181;
        pub const PWRITEV: i64 = 334;
        pub const PWRITEV2: i64 = 379;
        pub const SETTIMEOFDAY: i64 = 79;
        pub const ADJTIMEX: i64 = 124;
        pub const CLOCK_SETTIME: i64 = 264;
        pub const CLOCK_ADJTIME: i64 = 343;
        pub const CLOCK_SETTIME64: i64 = 404;
        pub const CLOCK_ADJTIME64: i64 = 405;
    }
    /// Set on x32 syscall numbers; masked off before lookup.
    pub const X32_BIT: i64 = 0x4000_0000;
}

/// Layout of the `struct timex` a syscall passes, which differs between ABIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimexLayout {
    /// `freq`: the frequency offset, ppm << 16.
    pub freq: usize,
    pub status: usize,
    /// `time.tv_sec` / `time.tv_usec`: the offset of ADJ_SETOFFSET.
    pub time_sec: usize,
    pub time_usec: usize,
    /// `tick`: microseconds added to the clock per timer tick (ADJ_TICK).
    pub tick: usize,
    /// Whether the time fields are 64-bit.
    pub wide: bool,
}

/// `struct __kernel_timex` (x86_64 adjtimex/clock_adjtime, i386 clock_adjtime64).
pub const TIMEX64: TimexLayout = TimexLayout {
    freq: 16,
    status: 40,
    time_sec: 72,
    time_usec: 80,
    tick: 88,
    wide: true,
};
/// `struct old_timex32` (i386 adjtimex and clock_adjtime).
pub const TIMEX32: TimexLayout = TimexLayout {
    freq: 8,
    status: 20,
    time_sec: 36,
    time_usec: 40,
    tick: 44,
    wide: false,
};

/// What a syscall that reached a CAP_SYS_TIME check is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockSyscall {
    /// clock_settime/settimeofday/stime: the LSM `settime` hook decides with the exact time.
    SetTime,
    /// adjtimex (`arg` is the timex pointer's argument index).
    Adjtimex {
        timex_arg: usize,
        layout: TimexLayout,
    },
    /// clock_adjtime (clock id in argument 0, timex in argument 1).
    ClockAdjtime { layout: TimexLayout },
    /// ioctl on a device (RTC_SET_TIME, PPS_KC_BIND...).
    Ioctl,
    /// A write: the only one that meets CAP_SYS_TIME is to `/proc/PID/timens_offsets`, which
    /// sets a time namespace's offsets and changes nothing of the host's clock.
    Write,
    /// Anything else: not a clock syscall we know.
    Other,
}

/// Classifies a syscall by ABI and number.
pub const fn classify_syscall(compat: bool, nr: i64) -> ClockSyscall {
    use ClockSyscall::*;
    if compat {
        match nr {
            nr::compat::STIME
            | nr::compat::SETTIMEOFDAY
            | nr::compat::CLOCK_SETTIME
            | nr::compat::CLOCK_SETTIME64 => SetTime,
            nr::compat::ADJTIMEX => Adjtimex {
                timex_arg: 0,
                layout: TIMEX32,
            },
            nr::compat::CLOCK_ADJTIME => ClockAdjtime { layout: TIMEX32 },
            nr::compat::CLOCK_ADJTIME64 => ClockAdjtime { layout: TIMEX64 },
            nr::compat::IOCTL => Ioctl,
            nr::compat::WRITE
            | nr::compat::WRITEV
            | nr::compat::PWRITE64
            | nr::compat::PWRITEV
            | nr::compat::PWRITEV2 => Write,
            _ => Other,
        }
    } else {
        match nr & !nr::X32_BIT {
            nr::native::SETTIMEOFDAY | nr::native::CLOCK_SETTIME => SetTime,
            nr::native::ADJTIMEX => Adjtimex {
                timex_arg: 0,
                layout: TIMEX64,
            },
            nr::native::CLOCK_ADJTIME => ClockAdjtime { layout: TIMEX64 },
            nr::native::IOCTL => Ioctl,
            nr::native::WRITE
            | nr::native::WRITEV
            | nr::native::PWRITE64
            | nr::native::PWRITEV
            | nr::native::PWRITEV2 => Write,
            _ => Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_and_compat_tables_differ() {
        assert_eq!(classify_syscall(false, 227), ClockSyscall::SetTime);
        assert_eq!(classify_syscall(true, 227), ClockSyscall::Other);
        assert_eq!(classify_syscall(true, 25), ClockSyscall::SetTime);
        assert_eq!(
            classify_syscall(true, 124),
            ClockSyscall::Adjtimex {
                timex_arg: 0,
                layout: TIMEX32
            }
        );
        assert_eq!(
            classify_syscall(false, 305),
            ClockSyscall::ClockAdjtime { layout: TIMEX64 }
        );
        // x32 numbers carry a high bit.
        assert_eq!(
            classify_syscall(false, 159 | nr::X32_BIT),
            ClockSyscall::Adjtimex {
                timex_arg: 0,
                layout: TIMEX64
            }
        );
        assert_eq!(classify_syscall(false, 1), ClockSyscall::Write);
        assert_eq!(classify_syscall(true, 4), ClockSyscall::Write);
        assert_eq!(classify_syscall(false, 0), ClockSyscall::Other);
    }
}
