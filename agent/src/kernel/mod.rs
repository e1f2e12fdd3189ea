//! What the running kernel offers timeguard, found out at start-up and reported plainly.

pub mod btf;

use std::{fmt, path::Path};

use agent_common::kernel::KernelOffsets;
use anyhow::Context as _;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// Reads the field offsets of the running kernel from its BTF.
pub fn offsets(btf: &btf::Btf) -> anyhow::Result<KernelOffsets> {
    let at = |field: &str| {
        btf.field_offset(field)
            .with_context(|| format!("finding {field} in the kernel's BTF"))
    };
    Ok(KernelOffsets {
        task_mm: at("task_struct.mm")?,
        task_real_parent: at("task_struct.real_parent")?,
        task_tgid: at("task_struct.tgid")?,
        task_flags: at("task_struct.flags")?,
        task_ti_status: at("task_struct.thread_info.status")?,
        mm_exe_file: at("mm_struct.exe_file")?,
        file_inode: at("file.f_inode")?,
        file_mode: at("file.f_mode")?,
        inode_ino: at("inode.i_ino")?,
        inode_sb: at("inode.i_sb")?,
        inode_rdev: at("inode.i_rdev")?,
        sb_dev: at("super_block.s_dev")?,
        userns_level: at("user_namespace.level")?,
        task_files: at("task_struct.files")?,
        files_fdt: at("files_struct.fdt")?,
        fdt_max_fds: at("fdtable.max_fds")?,
        fdt_fd: at("fdtable.fd")?,
        file_private_data: at("file.private_data")?,
        bpf_map_id: at("bpf_map.id")?,
        bpf_link_id: at("bpf_link.id")?,
        dentry_inode: at("dentry.d_inode")?,
        task_pid: at("task_struct.pid")?,
        task_signal: at("task_struct.signal")?,
        signal_live: at("signal_struct.live")?,
        file_dentry: at("file.f_path.dentry")?,
        dentry_parent: at("dentry.d_parent")?,
        inode_ctime_sec: first_of(
            btf,
            &[
                // 6.11 on: seconds of their own
                "inode.i_ctime_sec",
                // 6.6 to 6.10
                "inode.__i_ctime.tv_sec",
                "inode.i_ctime.tv_sec",
            ],
        )?,
        vma_file: at("vm_area_struct.vm_file")?,
        vma_anon_vma: at("vm_area_struct.anon_vma")?,
        inode_writecount: at("inode.i_writecount")?,
        inode_mapping: at("inode.i_mapping")?,
        mapping_i_mmap: at("address_space.i_mmap")?,
        task_cgroups: at("task_struct.cgroups")?,
        css_set_dfl_cgrp: at("css_set.dfl_cgrp")?,
        cgroup_kn: at("cgroup.kn")?,
        // 6.15 on: __parent
        kn_parent: first_of(btf, &["kernfs_node.parent", "kernfs_node.__parent"])?,
        kn_name: at("kernfs_node.name")?,
        kn_id: at("kernfs_node.id")?,
        bprm_file: at("linux_binprm.file")?,
    })
}

/// The offset of the first of `fields` this kernel has (a field renamed across versions).
fn first_of(btf: &btf::Btf, fields: &[&str]) -> anyhow::Result<u32> {
    fields
        .iter()
        .find_map(|f| btf.field_offset(f).ok())
        .with_context(|| format!("finding any of {} in the kernel's BTF", fields.join(", ")))
}

/// The character-device major the kernel gave `name` (`/proc/devices`), if it has one now.
pub fn char_major(name: &str) -> Option<u32> {
    let devices = std::fs::read_to_string("/proc/devices").ok()?;
    devices
        .lines()
        .skip_while(|l| !l.starts_with("Character devices:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let (major, dev) = l.trim().split_once(' ')?;
            (dev.trim() == name).then(|| major.parse().ok()).flatten()
        })
}

/// Whether "bpf" is among the active LSMs, as the kernel lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LsmList {
    Active(Vec<String>),
    /// securityfs is not mounted, or the file cannot be read.
    Unknown(String),
}

impl LsmList {
    pub fn read() -> Self {
        match std::fs::read_to_string(LSM_LIST) {
            Ok(s) => LsmList::Active(s.trim().split(',').map(str::to_string).collect()),
            Err(e) => LsmList::Unknown(format!("{LSM_LIST}: {e}")),
        }
    }

    pub fn has_bpf(&self) -> Option<bool> {
        match self {
            LsmList::Active(l) => Some(l.iter().any(|m| m == "bpf")),
            LsmList::Unknown(_) => None,
        }
    }
}

/// One thing the agent needs from the kernel, and whether it got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub available: bool,
    /// Why not, and what to do about it; or what it is, when available.
    pub detail: String,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.available { "yes" } else { "NO " };
        write!(f, "{state}  {:<22} {}", self.name, self.detail)
    }
}

/// Pseudo file systems the agent reads: securityfs (the LSM list) and tracefs (tracepoints).
/// systemd mounts both at boot; a minimal system may not, so the agent mounts what is missing.
const PSEUDO_FS: [(&str, &str, &str); 2] = [
    ("securityfs", "/sys/kernel/security", "lsm"),
    ("tracefs", "/sys/kernel/tracing", "events"),
];

/// Mounts securityfs and tracefs where they are missing; returns what it did, for the log.
pub fn mount_pseudo_filesystems() -> Vec<String> {
    let mut said = Vec::new();
    for (fstype, target, probe) in PSEUDO_FS {
        if Path::new(target).join(probe).exists() {
            continue;
        }
        let (Ok(src), Ok(tgt), Ok(ty)) = (
            std::ffi::CString::new(fstype),
            std::ffi::CString::new(target),
            std::ffi::CString::new(fstype),
        ) else {
            continue;
        };
        // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
        let rc =
            unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
        if rc == 0 {
            said.push(format!("mounted {fstype} on {target}"));
        } else {
            said.push(format!(
                "could not mount {fstype} on {target}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    said
}

/// Program types the product uses, what each is for, and how the kernel answers a trial load.
fn program_types() -> Vec<Capability> {
    use aya::programs::{LsmAttachType, ProgramType};
    let types = [
        (
            "lsm programs",
            ProgramType::Lsm(LsmAttachType::Mac),
            "enforcing clock decisions",
        ),
        (
            "tracepoint programs",
            ProgramType::TracePoint,
            "observing clock calls without LSM",
        ),
        (
            "raw tracepoints",
            ProgramType::RawTracePoint,
            "observing the kernel's own setters",
        ),
        (
            "fentry/fexit",
            ProgramType::Tracing,
            "tracing kernel functions",
        ),
        (
            "cgroup_skb",
            ProgramType::CgroupSkb,
            "guarding time traffic per cgroup",
        ),
        (
            "cgroup_sock_addr",
            ProgramType::CgroupSockAddr,
            "guarding binds and connects",
        ),
        (
            "xdp",
            ProgramType::Xdp,
            "deciding PTP before any socket sees it",
        ),
    ];
    types
        .into_iter()
        .map(|(name, ty, purpose)| {
            let (available, detail) = match aya::sys::is_program_supported(ty) {
                Ok(true) => (true, format!("for {purpose}")),
                Ok(false) => (false, format!("not supported by this kernel: no {purpose}")),
                Err(e) => (
                    false,
                    format!(
                        "refused by this kernel ({:#}): no {purpose}",
                        anyhow::Error::from(e)
                    ),
                ),
            };
            Capability {
                name,
                available,
                detail,
            }
        })
        .collect()
}

/// Everything the agent needs from the kernel, and whether it has it.
pub fn capabilities() -> Vec<Capability> {
    let mut all = static_capabilities();
    all.extend(program_types());
    all
}

/// What can be told before loading anything.
fn static_capabilities() -> Vec<Capability> {
    let btf = Path::new(VMLINUX_BTF).exists();
    let lsm = LsmList::read();
    vec![
        Capability {
            name: "btf",
            available: btf,
            detail: if btf {
                VMLINUX_BTF.to_string()
            } else {
                format!("{VMLINUX_BTF} missing: the kernel needs CONFIG_DEBUG_INFO_BTF=y")
            },
        },
        Capability {
            name: "bpf-lsm-active",
            available: lsm.has_bpf() == Some(true),
            detail: match &lsm {
                LsmList::Active(l) if lsm.has_bpf() == Some(true) => format!("active LSMs: {}", l.join(",")),
                LsmList::Active(l) => format!(
                    "\"bpf\" is not among the active LSMs ({}): add lsm={},bpf to the kernel command line and reboot",
                    l.join(","),
                    l.join(",")
                ),
                LsmList::Unknown(why) => format!(
                    "cannot tell ({why}); mount securityfs on /sys/kernel/security or check CONFIG_LSM for \"bpf\""
                ),
            },
        },
    ]
}
