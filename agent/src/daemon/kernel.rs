//! Setting up on this kernel: what it offers, loading the programs with its offsets, and
//! saying what is enforced (also for `timeguard kernel`, as a trial).

use std::path::Path;

use anyhow::Context as _;

use crate::{
    bpf::pins,
    kernel::{self, btf::Btf},
    loader::{Enforcement, Guard},
};

pub(super) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown release)".into())
}

/// Loads the programs with this kernel's offsets, after reporting what the kernel offers.
pub(super) fn prepare(caps: &[kernel::Capability], pin_root: &Path) -> anyhow::Result<Guard> {
    for said in kernel::mount_pseudo_filesystems() {
        log::info!("{said}");
    }
    // One line per thing the kernel does not give; the rest in one line.
    let have: Vec<&str> = caps
        .iter()
        .filter(|c| c.available)
        .map(|c| c.name)
        .collect();
    log::info!("kernel {}: has {}", kernel_release(), have.join(", "));
    for cap in caps.iter().filter(|c| !c.available) {
        log::warn!("kernel: missing {}: {}", cap.name, cap.detail);
    }
    let btf = Btf::from_file(Path::new(kernel::VMLINUX_BTF)).with_context(|| {
        format!("timeguard identifies executables through the kernel's BTF ({}); this kernel needs CONFIG_DEBUG_INFO_BTF=y", kernel::VMLINUX_BTF)
    })?;
    let offsets = kernel::offsets(&btf)?;
    let pins = pins::Pins::open(pin_root, &crate::bpf::object::programs_build())?;
    Guard::load(&offsets, &btf, pins)
        .context("loading the kernel programs (timeguard must run as root)")
}

pub(super) fn report_enforcement(guard: &Guard) {
    for a in &guard.attached {
        log::info!("attached {a}");
    }
    for u in &guard.unobserved {
        log::warn!("the kernel's own clock setters are not observed here: {u}");
    }
    match &guard.enforcement {
        Enforcement::Enforce => {
            log::info!(
                "enforcement: ENFORCING: clock changes not allowed by the policy fail with EPERM"
            )
        }
        Enforcement::ObserveOnly { reasons } => {
            for r in reasons {
                log::warn!("enforcement unavailable: {r}");
            }
            log::warn!(
                "enforcement: OBSERVE-ONLY: this kernel does not let timeguard block clock changes; they are recorded, not prevented (see README: kernel requirements)"
            );
        }
    }
}

/// `timeguard kernel`: what this kernel lets timeguard do, tried out under pins of its own
/// (removed after: the running agent's are not touched).
pub fn kernel_report() -> anyhow::Result<()> {
    println!("kernel {}", kernel_release());
    let caps = kernel::capabilities();
    for cap in &caps {
        println!("{cap}");
    }
    let probe = Path::new(pins::DEFAULT_ROOT)
        .with_file_name(format!("timeguard-probe-{}", std::process::id()));
    let result = prepare(&caps, &probe).and_then(|mut guard| {
        guard.attach()?;
        report_enforcement(&guard);
        println!("enforcement: {}", guard.enforcement.label());
        Ok(())
    });
    pins::unpin_all(&probe)?;
    result
}
