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

/// What `timeguard kernel` found, as the exit code monitoring and configuration management
/// read (documented in the README's command reference and `timeguard kernel --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelVerdict {
    /// Exit 0: every clock path is decided in the kernel, self-protection included.
    Enforce,
    /// Exit 1: the programs could not be loaded at all (not root, no BTF, …): nothing
    /// would be enforced or observed.
    Unusable,
    /// Exit 4: the kernel refuses BPF LSM programs: clock changes would be recorded, not
    /// prevented.
    ObserveOnly,
    /// Exit 3: the clock is enforced, but part of the guard is missing here (an LSM hook
    /// this kernel lacks, or self-protection).
    EnforcePartly,
}

impl KernelVerdict {
    pub fn exit_code(self) -> u8 {
        match self {
            KernelVerdict::Enforce => 0,
            KernelVerdict::Unusable => 1,
            // Not 2: that is a usage error's (a misspelt option), which monitoring must not
            // read as observe-only.
            KernelVerdict::ObserveOnly => 4,
            KernelVerdict::EnforcePartly => 3,
        }
    }

    /// The state's stable token.
    pub fn token(self) -> &'static str {
        match self {
            KernelVerdict::Enforce => "enforce",
            KernelVerdict::Unusable => "unusable",
            KernelVerdict::ObserveOnly => "observe_only",
            KernelVerdict::EnforcePartly => "enforce_partly",
        }
    }

    fn of(guard: &Guard) -> (Self, Vec<String>) {
        match &guard.enforcement {
            Enforcement::ObserveOnly { .. } => (KernelVerdict::ObserveOnly, Vec::new()),
            Enforcement::Enforce => {
                let missing = guard.missing();
                let verdict = if missing.is_empty() {
                    KernelVerdict::Enforce
                } else {
                    KernelVerdict::EnforcePartly
                };
                (verdict, missing)
            }
        }
    }
}

/// `timeguard kernel`: what this kernel lets timeguard do, tried out under pins of its own
/// (removed after: the running agent's are not touched).
pub fn kernel_report() -> KernelVerdict {
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
        Ok(KernelVerdict::of(&guard))
    });
    if let Err(e) = pins::unpin_all(&probe) {
        log::warn!("the trial's pins under {} stay: {e:#}", probe.display());
    }
    let verdict = match result {
        Ok((verdict, missing)) => {
            for m in missing {
                println!("missing: {m}");
            }
            verdict
        }
        Err(e) => {
            log::error!("{e:#}");
            KernelVerdict::Unusable
        }
    };
    println!("state: {} (exit {})", verdict.token(), verdict.exit_code());
    verdict
}
