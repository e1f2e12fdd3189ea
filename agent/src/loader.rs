//! The loaded whole: the kernel programs (`bpf::object`), their pins, the kernel's BTF, and
//! the sensors that own the programs and maps (`sensors`). Attaches the programs at start:
//! BPF LSM where the kernel allows it (enforce), syscall tracepoints where it does not
//! (observe-only, said plainly).

use agent_common::{kernel::KernelOffsets, tamper};
use aya::maps::{MapData, RingBuf};

use crate::{
    bpf::{
        attach::{AttachPoint, Attached, Target},
        object::Object,
        pins::Pins,
        program::{self, Hook, Need, When},
    },
    sensors::{
        clock::Clock,
        identity::Identity,
        network::Network,
        self_protection::{self, ProtectedFile, SelfProtection},
    },
};

/// What the agent can do on this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// Denied changes fail with EPERM before they happen.
    Enforce,
    /// The kernel refused LSM programs; clock changes are recorded, not prevented.
    ObserveOnly { reasons: Vec<String> },
}

impl Enforcement {
    pub fn label(&self) -> &'static str {
        match self {
            Enforcement::Enforce => "enforce",
            Enforcement::ObserveOnly { .. } => "observe-only",
        }
    }
}

pub struct Guard {
    object: Object,
    pub enforcement: Enforcement,
    /// Programs attached, in the order they were.
    pub attached: Vec<Attached>,
    /// Optional LSM hooks this kernel does not have.
    absent_hooks: Vec<&'static str>,
    /// The kernel's own setters this kernel does not let the agent observe, and why.
    pub unobserved: Vec<String>,
    /// The sensors, each with its maps; what needs the object too goes through `Guard`.
    pub clock: Clock,
    pub identity: Identity,
    pub network: Network,
    pub self_protection: SelfProtection,
}

impl Guard {
    /// Loads the programs with this kernel's struct offsets, their maps pinned under `pins`
    /// (the maps an earlier agent of this build pinned are taken over as they are), and
    /// hands each sensor its maps. Nothing is attached yet. `btf` is the agent's own reading
    /// of the kernel's BTF (for offsets, hooks and their arguments); aya's parse of it is
    /// made once here and kept for every attachment.
    pub fn load(
        offsets: &KernelOffsets,
        btf: &crate::kernel::btf::Btf,
        pins: Pins,
    ) -> anyhow::Result<Self> {
        let absent_hooks = program::attached_at(When::Enforcing)
            .filter_map(|s| match s.hook {
                Hook::Lsm(hook) if !btf.has_function(&format!("bpf_lsm_{hook}")) => Some(hook),
                _ => None,
            })
            .collect();
        let mut object = Object::load(offsets, pins)?;
        let bpf_hook_args = btf.function_params("bpf_lsm_bpf").unwrap_or(3);
        Ok(Guard {
            clock: Clock::new(&mut object)?,
            identity: Identity::new(&mut object)?,
            network: Network::new(&mut object)?,
            self_protection: SelfProtection::new(&mut object, bpf_hook_args)?,
            object,
            enforcement: Enforcement::ObserveOnly {
                reasons: vec!["not attached yet".into()],
            },
            attached: Vec::new(),
            absent_hooks,
            unobserved: Vec::new(),
        })
    }

    /// The generation an earlier agent left in force (0: none): its policy is enforced
    /// until this agent installs one.
    pub fn inherited_generation(&self) -> u32 {
        self.clock.generation()
    }

    /// Where this agent's pins are.
    pub fn pin_dir(&self) -> &std::path::Path {
        self.object.pins().dir()
    }

    /// Where this build's maps are pinned.
    pub fn maps_dir(&self) -> std::path::PathBuf {
        self.object.pins().maps_dir()
    }

    /// The links taken over from an earlier agent.
    pub fn adopted(&self) -> &[String] {
        self.object.pins().adopted()
    }

    /// Removes the pins of other builds of the programs, once this build is attached.
    pub fn remove_other_builds(&self) -> Vec<std::path::PathBuf> {
        self.object.pins().remove_other_builds()
    }

    /// Attaches the LSM programs; if the kernel refuses any, attaches the observers instead.
    /// The kernel's BTF is released after: every program that needs it is attached here.
    pub fn attach(&mut self) -> anyhow::Result<()> {
        let mut refused = Vec::new();
        match self.object.btf() {
            Ok(_) => {
                for spec in program::attached_at(When::Enforcing) {
                    let what = match spec.hook {
                        Hook::Lsm(hook) => {
                            if spec.need == Need::OptionalIfHookAbsent
                                && self.absent_hooks.contains(&hook)
                            {
                                continue;
                            }
                            format!("BPF LSM hook {hook}")
                        }
                        Hook::BtfTracepoint(tp) => format!("BTF tracepoint {tp}"),
                        _ => continue,
                    };
                    match self.object.attach(spec, Target::Hook) {
                        Ok(a) => self.attached.push(a.attached),
                        Err(e) => {
                            refused.push(format!("{what}: {e:#}"));
                            break;
                        }
                    }
                }
            }
            Err(e) => refused.push(format!("reading the kernel's BTF for LSM programs: {e}")),
        }
        if refused.is_empty() {
            self.enforcement = Enforcement::Enforce;
            let attached = self.self_protection.attach(&mut self.object);
            self.attached.extend(attached);
            self.attach_kernel_observers();
            self.object.release_btf();
            return Ok(());
        }
        self.self_protection.unavailable =
            vec!["the kernel refuses BPF LSM programs: self-protection needs them".into()];
        // All or nothing: a half-attached guard would decide some paths and not others.
        for spec in program::attached_at(When::Enforcing) {
            self.object.unload_enforcing(spec)?;
        }
        self.attached
            .retain(|a| !matches!(a.point, AttachPoint::Lsm(_) | AttachPoint::BtfTracepoint(_)));
        for spec in program::attached_at(When::InsteadOfEnforcement) {
            let a = self.object.attach(spec, Target::Hook)?;
            self.attached.push(a.attached);
        }
        self.enforcement = Enforcement::ObserveOnly { reasons: refused };
        self.attach_kernel_observers();
        self.object.release_btf();
        Ok(())
    }

    /// Best effort: a kernel that refuses kprobes loses only the record of its own setters.
    fn attach_kernel_observers(&mut self) {
        for spec in program::attached_at(When::Always) {
            match self.object.attach(spec, Target::Hook) {
                Ok(a) => self.attached.push(a.attached),
                Err(e) => {
                    let function = match spec.hook {
                        Hook::Kprobe(f) => f,
                        _ => spec.name,
                    };
                    self.unobserved.push(format!("{function}: {e:#}"));
                }
            }
        }
    }

    /// Each LSM hook this kernel has, and whether it decides (all of them or none do).
    pub fn hooks(&self) -> Vec<(&'static str, bool)> {
        let enforcing = self.enforcement == Enforcement::Enforce;
        program::attached_at(When::Enforcing)
            .filter_map(|s| match s.hook {
                Hook::Lsm(hook) if !self.absent_hooks.contains(&hook) => Some((hook, enforcing)),
                _ => None,
            })
            .collect()
    }

    /// What of the guard this kernel lacks while the clock is enforced: optional LSM hooks it
    /// does not have, and self-protection's hooks it refused.
    pub fn missing(&self) -> Vec<String> {
        self.absent_hooks
            .iter()
            .map(|h| format!("LSM hook {h} (not in this kernel)"))
            .chain(
                self.self_protection
                    .unavailable
                    .iter()
                    .map(|why| format!("self-protection: {why}")),
            )
            .collect()
    }

    /// Each kernel program, and whether it is attached.
    pub fn programs(&self) -> Vec<(&'static str, bool)> {
        program::names()
            .into_iter()
            .map(|name| (name, self.attached.iter().any(|a| a.program == name)))
            .collect()
    }

    /// A ring buffer of records from the kernel, by map name: CLOCK_EVENTS, NET_EVENTS,
    /// TAMPER_EVENTS (each can be taken once).
    pub fn take_ring(&mut self, name: &str) -> anyhow::Result<RingBuf<MapData>> {
        self.object.take_ring(name)
    }

    /// Attaches the network guard to a cgroup v2 directory, once; whether it was attached
    /// now (false: it already was).
    pub fn attach_network(&mut self, cgroup: &std::path::Path) -> anyhow::Result<bool> {
        self.network
            .attach(&mut self.object, cgroup, &mut self.attached)
    }

    /// Follows the interfaces the PTP guard is to be on; those attached now.
    pub fn follow_ptp_interfaces(&mut self, wanted: Option<&[String]>) -> Vec<String> {
        self.network
            .follow_ptp_interfaces(&mut self.object, wanted, &mut self.attached)
    }

    /// Tells the self-protection programs its mode, the agent and the protected files and
    /// objects (`sensors::self_protection`).
    pub fn install_self_protection(
        &mut self,
        mode: Option<u32>,
        generation: u32,
        files: &[ProtectedFile],
    ) -> anyhow::Result<()> {
        self.self_protection
            .install(mode, generation, files, self.object.pins())
    }

    /// Timeguard's own maps and links, by name, with the kernel's ids.
    pub fn own_objects(&self) -> anyhow::Result<Vec<(String, tamper::ObjectKey)>> {
        self_protection::own_objects(self.object.pins())
    }
}
