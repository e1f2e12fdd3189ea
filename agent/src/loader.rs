//! Loads the kernel programs, installs policies into their maps, and attaches them:
//! BPF LSM where the kernel allows it (enforce), syscall tracepoints where it does not
//! (observe-only, said plainly).

use agent_common::{
    kernel::{ClockState, KernelOffsets},
    maps::{self, Dropped},
    policy::{ClockRule, CounterKey, ExeKey, PolicyHeader, ANY_UID, SLOTS},
};
use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{links::FdLink, KProbe, Lsm, TracePoint},
    Btf, Ebpf, EbpfLoader,
};

use crate::{
    pins::{link_key, Pins},
    policy::CompiledPolicy,
};

/// The kernel programs, built by build.rs and embedded in the binary.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// The build of the embedded kernel programs (names its pin directory).
pub fn programs_build() -> String {
    crate::pins::build_id(PROGRAMS)
}

/// LSM programs and the hooks they decide on. A hook the kernel does not have is skipped
/// only where it is marked optional: another hook covers its path on that kernel.
const LSM_PROGRAMS: [(&str, &str, Presence); 7] = [
    ("clock_settime_guard", "settime", Presence::Required),
    ("clock_capable_guard", "capable", Presence::Required),
    ("phc_open_guard", "file_open", Presence::Required),
    ("phc_ioctl_guard", "file_ioctl", Presence::Required),
    // Before 6.8, 32-bit ioctls pass file_ioctl.
    (
        "phc_ioctl_compat_guard",
        "file_ioctl_compat",
        Presence::Optional,
    ),
    // Packet sockets that see PTP frames (they decide only under a network policy).
    ("packet_socket_create", "socket_create", Presence::Required),
    ("packet_socket_bind", "socket_bind", Presence::Required),
];

/// Self-protection's LSM programs (they decide only while it is on). Each is attached on its
/// own: a kernel that refuses one loses that protection only, said in status, never the
/// clock's enforcement.
const SELF_PROTECTION_PROGRAMS: [(&str, &str); 6] = [
    ("tamper_signal", "task_kill"),
    ("tamper_ptrace", "ptrace_access_check"),
    ("tamper_traceme", "ptrace_traceme"),
    ("tamper_unlink", "inode_unlink"),
    ("tamper_rename", "inode_rename"),
    ("tamper_bpf", "bpf"),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Presence {
    Required,
    Optional,
}

/// Tracepoints that observe the same requests where LSM programs are refused.
const OBSERVERS: [(&str, &str); 4] = [
    ("observe_clock_settime", "sys_enter_clock_settime"),
    ("observe_settimeofday", "sys_enter_settimeofday"),
    ("observe_adjtimex", "sys_enter_adjtimex"),
    ("observe_clock_adjtime", "sys_enter_clock_adjtime"),
];

/// kprobes on the kernel's own setters: observed, never decided, wherever the kernel allows.
const KERNEL_OBSERVERS: [(&str, &str); 3] = [
    ("kernel_sets_clock", "do_settimeofday64"),
    // x86: the 11-minute mode writes the CMOS clock here; other RTCs through the class.
    ("kernel_sets_rtc", "update_persistent_clock64"),
    ("kernel_sets_rtc", "rtc_set_time"),
];

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
    pub(crate) bpf: Ebpf,
    pub enforcement: Enforcement,
    /// Programs attached, as "name (hook)".
    pub attached: Vec<String>,
    active_slot: u32,
    generation: u32,
    /// Optional LSM hooks this kernel does not have.
    absent_hooks: Vec<&'static str>,
    /// The kernel's own setters this kernel does not let the agent observe, and why.
    pub unobserved: Vec<String>,
    /// The network guard: its slot in force, the cgroup it is attached to (None: not
    /// yet), and the interfaces the PTP guard is on.
    pub(crate) net_active_slot: u32,
    pub network_attached: Option<String>,
    pub(crate) ptp_links: crate::network::PtpLinks,
    /// The pinned maps and links: enforcement that outlives this process.
    pub(crate) pins: Pins,
    /// Arguments of this kernel's `bpf` LSM hook (where its previous verdict is).
    pub(crate) bpf_hook_args: u32,
    /// Self-protection hooks this kernel refused, and why.
    pub self_protection_unavailable: Vec<String>,
}

impl Guard {
    /// Loads the programs with this kernel's struct offsets, their maps pinned under `pins`
    /// (the maps an earlier agent of this build pinned are taken over as they are). Nothing
    /// is attached yet.
    pub fn load(
        offsets: &KernelOffsets,
        btf: &crate::kernel::btf::Btf,
        pins: Pins,
    ) -> anyhow::Result<Self> {
        let absent_hooks = LSM_PROGRAMS
            .iter()
            .filter(|(_, hook, _)| !btf.has_function(&format!("bpf_lsm_{hook}")))
            .map(|(_, hook, _)| *hook)
            .collect();
        let bpf = EbpfLoader::new()
            .override_global(maps::KERNEL_OFFSETS, offsets, true)
            .default_map_pin_directory(pins.maps_dir())
            .load(PROGRAMS)
            .context("loading the embedded kernel programs")?;
        let mut guard = Guard {
            bpf,
            enforcement: Enforcement::ObserveOnly {
                reasons: vec!["not attached yet".into()],
            },
            attached: Vec::new(),
            active_slot: 0,
            generation: 0,
            absent_hooks,
            unobserved: Vec::new(),
            net_active_slot: 0,
            network_attached: None,
            ptp_links: Default::default(),
            pins,
            bpf_hook_args: btf.function_params("bpf_lsm_bpf").unwrap_or(3),
            self_protection_unavailable: Vec::new(),
        };
        guard.restore_state()?;
        Ok(guard)
    }

    /// Reads back what an earlier agent left in the pinned maps: the policy slot in force
    /// and its generation, so the next policy goes to the other slot and the flip from the
    /// old policy to the new one has no gap.
    fn restore_state(&mut self) -> anyhow::Result<()> {
        let active: Array<_, u32> = Array::try_from(self.map(maps::ACTIVE_SLOT)?)?;
        let slot = active.get(&maps::ONLY, 0).unwrap_or(0) % SLOTS;
        let headers: Array<_, PolicyHeader> = Array::try_from(self.map(maps::POLICY)?)?;
        let generation = headers.get(&slot, 0).map_or(0, |h| h.generation);
        let net: Array<_, u32> = Array::try_from(self.map(maps::NET_ACTIVE_SLOT)?)?;
        self.net_active_slot = net.get(&maps::ONLY, 0).unwrap_or(0) % SLOTS;
        if generation != 0 {
            self.active_slot = slot;
            self.generation = generation;
        }
        Ok(())
    }

    /// The generation an earlier agent left in force (0: none): its policy is enforced
    /// until this agent installs one.
    pub fn inherited_generation(&self) -> u32 {
        self.generation
    }

    /// Where this agent's pins are.
    pub fn pin_dir(&self) -> &std::path::Path {
        self.pins.dir()
    }

    /// Where this build's maps are pinned.
    pub fn maps_dir(&self) -> std::path::PathBuf {
        self.pins.maps_dir()
    }

    /// The links taken over from an earlier agent.
    pub fn adopted(&self) -> &[String] {
        self.pins.adopted()
    }

    /// Removes the pins of other builds of the programs, once this build is attached.
    pub fn remove_other_builds(&self) -> Vec<std::path::PathBuf> {
        self.pins.remove_other_builds()
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Installs a policy: fills the slot not in force, then makes it the one in force with a
    /// single map write. Returns the new generation.
    pub fn install_policy(&mut self, policy: &CompiledPolicy) -> anyhow::Result<u32> {
        self.refresh_clock_state()?;
        let slot = if self.generation == 0 {
            0
        } else {
            (self.active_slot + 1) % SLOTS
        };
        let generation = self.generation + 1;
        let header = PolicyHeader {
            generation,
            default_allow: policy.default_allow,
            default_mode: policy.default_mode,
            _pad: 0,
        };
        // Sequence lock, writer side: generation 0 first (with the new defaults already, so
        // a torn read of the header cannot mix defaults), then the rules, then the generation.
        // A decision still reading this slot from before the last flip sees the change and
        // starts over on the slot in force.
        self.write_header(
            slot,
            PolicyHeader {
                generation: 0,
                ..header
            },
        )?;
        {
            let mut rules: HashMap<_, ExeKey, ClockRule> =
                HashMap::try_from(self.map_mut(maps::CLOCK_RULES)?)?;
            let stale: Vec<ExeKey> = rules
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.slot == slot)
                .collect();
            for key in stale {
                rules
                    .remove(&key)
                    .context("clearing the inactive policy slot")?;
            }
            for rule in &policy.rules {
                let value = ClockRule {
                    rule_id: rule.id,
                    allow: rule.allow,
                    mode: rule.mode,
                    _pad: 0,
                    max_step_ns: rule.max_step_ns,
                    max_frequency: rule.max_frequency,
                };
                // One entry per user the rule is narrowed to, or one for every user.
                let uids = if rule.uids.is_empty() {
                    &[ANY_UID][..]
                } else {
                    &rule.uids[..]
                };
                for &uid in uids {
                    let key = ExeKey {
                        slot,
                        uid,
                        dev: rule.exe_id.dev,
                        ino: rule.exe_id.ino,
                    };
                    rules
                        .insert(key, value, 0)
                        .with_context(|| format!("installing rule \"{}\"", rule.name))?;
                }
            }
        }
        self.write_header(slot, header)?;
        let mut active: Array<_, u32> = Array::try_from(self.map_mut(maps::ACTIVE_SLOT)?)?;
        active
            .set(maps::ONLY, slot, 0)
            .context("switching the policy in force")?;
        self.active_slot = slot;
        self.generation = generation;
        Ok(generation)
    }

    /// Tells the programs the kernel's TAI offset, so they can measure a step against the
    /// wall clock, and the device major of PTP clocks. Called at start and on every policy
    /// watch tick: the offset changes only when a daemon sets it (ADJ_TAI) or at a leap
    /// second, the major when the PTP core is loaded as a module.
    pub fn refresh_clock_state(&mut self) -> anyhow::Result<()> {
        let state = ClockState {
            tai_offset_ns: crate::events::tai_offset_ns(),
            phc_major: crate::kernel::char_major("ptp").unwrap_or(0),
            _pad: 0,
        };
        let mut map: Array<_, ClockState> = Array::try_from(self.map_mut(maps::CLOCK_STATE)?)?;
        map.set(maps::ONLY, state, 0)
            .context("writing the clock state")
    }

    fn write_header(&mut self, slot: u32, header: PolicyHeader) -> anyhow::Result<()> {
        let mut headers: Array<_, PolicyHeader> = Array::try_from(self.map_mut(maps::POLICY)?)?;
        headers
            .set(slot, header, 0)
            .context("writing the policy header")
    }

    /// Attaches the LSM programs; if the kernel refuses any, attaches the observers instead.
    pub fn attach(&mut self) -> anyhow::Result<()> {
        let mut refused = Vec::new();
        match Btf::from_sys_fs() {
            Ok(btf) => {
                for (name, hook, presence) in LSM_PROGRAMS {
                    if presence == Presence::Optional && self.absent_hooks.contains(&hook) {
                        continue;
                    }
                    let key = link_key(name, &format!("lsm.{hook}"));
                    if self.pins.adopt(&key) {
                        self.attached.push(format!("{name} (lsm/{hook}, adopted)"));
                        continue;
                    }
                    if let Err(e) = self.attach_lsm(name, hook, &btf, &key) {
                        refused.push(format!("BPF LSM hook {hook}: {e:#}"));
                        break;
                    }
                    self.attached.push(format!("{name} (lsm/{hook})"));
                }
            }
            Err(e) => refused.push(format!("reading the kernel's BTF for LSM programs: {e}")),
        }
        if refused.is_empty() {
            self.enforcement = Enforcement::Enforce;
            if let Ok(btf) = Btf::from_sys_fs() {
                self.attach_self_protection(&btf);
            }
            self.attach_kernel_observers();
            return Ok(());
        }
        self.self_protection_unavailable =
            vec!["the kernel refuses BPF LSM programs: self-protection needs them".into()];
        // All or nothing: a half-attached guard would decide some paths and not others.
        for (name, hook, _) in LSM_PROGRAMS {
            self.pins.release(&link_key(name, &format!("lsm.{hook}")));
            if let Some(p) = self.bpf.program_mut(name) {
                let lsm: &mut Lsm = p.try_into()?;
                let _ = lsm.unload();
            }
        }
        self.attached.retain(|a| !a.contains("(lsm/"));
        for (name, tracepoint) in OBSERVERS {
            let tp: &mut TracePoint = self
                .bpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the embedded object"))?
                .try_into()?;
            tp.load().with_context(|| format!("loading {name}"))?;
            tp.attach("syscalls", tracepoint)
                .with_context(|| format!("attaching {name} to syscalls/{tracepoint}"))?;
            self.attached
                .push(format!("{name} (tracepoint/syscalls/{tracepoint})"));
        }
        self.enforcement = Enforcement::ObserveOnly { reasons: refused };
        self.attach_kernel_observers();
        Ok(())
    }

    /// Each LSM hook this kernel has, and whether it decides (all of them or none do).
    pub fn hooks(&self) -> Vec<(&'static str, bool)> {
        let enforcing = self.enforcement == Enforcement::Enforce;
        LSM_PROGRAMS
            .iter()
            .filter(|(_, hook, _)| !self.absent_hooks.contains(hook))
            .map(|(_, hook, _)| (*hook, enforcing))
            .collect()
    }

    /// Each kernel program, and whether it is attached.
    pub fn programs(&self) -> Vec<(&'static str, bool)> {
        let names = LSM_PROGRAMS
            .iter()
            .map(|(n, _, _)| *n)
            .chain(SELF_PROTECTION_PROGRAMS.iter().map(|(n, _)| *n))
            .chain(OBSERVERS.iter().map(|(n, _)| *n))
            .chain(KERNEL_OBSERVERS.iter().map(|(n, _)| *n))
            .chain(crate::network::program_names());
        let mut out: Vec<(&'static str, bool)> = Vec::new();
        for name in names {
            if out.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let prefix = format!("{name} (");
            let on = self.attached.iter().any(|a| a.starts_with(&prefix));
            out.push((name, on));
        }
        out
    }

    /// Best effort: a kernel that refuses kprobes loses only the record of its own setters.
    fn attach_kernel_observers(&mut self) {
        for (name, function) in KERNEL_OBSERVERS {
            let attached = (|| -> anyhow::Result<()> {
                let kp: &mut KProbe = self
                    .bpf
                    .program_mut(name)
                    .ok_or_else(|| anyhow!("program {name} missing from the embedded object"))?
                    .try_into()?;
                if kp.fd().is_err() {
                    kp.load().map_err(describe_load_error)?;
                }
                kp.attach(function, 0)?;
                Ok(())
            })();
            match attached {
                Ok(()) => self.attached.push(format!("{name} (kprobe/{function})")),
                Err(e) => self.unobserved.push(format!("{function}: {e:#}")),
            }
        }
    }

    /// Attaches self-protection's programs, each on its own (or takes over their pins).
    fn attach_self_protection(&mut self, btf: &Btf) {
        for (name, hook) in SELF_PROTECTION_PROGRAMS {
            let key = link_key(name, &format!("lsm.{hook}"));
            if self.pins.adopt(&key) {
                self.attached.push(format!("{name} (lsm/{hook}, adopted)"));
                continue;
            }
            match self.attach_lsm(name, hook, btf, &key) {
                Ok(()) => self.attached.push(format!("{name} (lsm/{hook})")),
                Err(e) => {
                    let why = format!("{hook}: {e:#}");
                    log::warn!("self-protection hook unavailable on this kernel: {why}");
                    self.self_protection_unavailable.push(why);
                }
            }
        }
    }

    /// Loads and attaches one LSM program, and pins its link under `key`.
    fn attach_lsm(&mut self, name: &str, hook: &str, btf: &Btf, key: &str) -> anyhow::Result<()> {
        let lsm: &mut Lsm = self
            .bpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the embedded object"))?
            .try_into()?;
        lsm.load(hook, btf).map_err(describe_load_error)?;
        let id = lsm.attach()?;
        let link = lsm.take_link(id)?;
        self.pins.keep(key, FdLink::from(link))
    }

    pub(crate) fn map(&self, name: &str) -> anyhow::Result<&aya::maps::Map> {
        self.bpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the embedded object"))
    }

    pub(crate) fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.bpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the embedded object"))
    }

    /// A ring buffer of records from the kernel, by map name: CLOCK_EVENTS, NET_EVENTS,
    /// TAMPER_EVENTS (each can be taken once).
    pub fn take_ring(&mut self, name: &str) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .bpf
            .take_map(name)
            .ok_or_else(|| anyhow!("the ring buffer {name} was already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Exact counters per (rule, single operation, verdict), summed over CPUs: the kernel
    /// counts each request once under its set of operations, split here.
    pub fn counters(&self) -> anyhow::Result<Vec<(CounterKey, u64)>> {
        let map = self.map(maps::CLOCK_COUNTERS)?;
        let counters: PerCpuHashMap<_, CounterKey, u64> = PerCpuHashMap::try_from(map)?;
        let mut per_op: std::collections::BTreeMap<(u32, u32, u32), u64> = Default::default();
        for entry in counters.iter() {
            let (key, values) = entry.context("reading the clock counters")?;
            let n: u64 = values.iter().sum();
            for (bit, _) in agent_common::clock::op::ALL {
                if key.operation & bit != 0 {
                    *per_op.entry((key.rule_id, bit, key.verdict)).or_default() += n;
                }
            }
        }
        Ok(per_op
            .into_iter()
            .map(|((rule_id, operation, verdict), n)| {
                (
                    CounterKey {
                        rule_id,
                        operation,
                        verdict,
                        _pad: 0,
                    },
                    n,
                )
            })
            .collect())
    }

    /// Detailed events that did not fit in the ring buffer.
    pub fn events_lost(&self) -> anyhow::Result<u64> {
        self.per_cpu_at(maps::CLOCK_EVENTS_DROPPED, Dropped::Lost.index())
    }

    /// Detailed events not sent because their process had used its budget.
    pub fn events_thinned(&self) -> anyhow::Result<u64> {
        self.per_cpu_at(maps::CLOCK_EVENTS_DROPPED, Dropped::Thinned.index())
    }

    pub(crate) fn per_cpu_at(&self, name: &str, index: u32) -> anyhow::Result<u64> {
        let map = self.map(name)?;
        let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(counts.get(&index, 0)?.iter().sum())
    }
}

/// Makes the kernel's refusal readable: an empty verifier log with EPERM is the sandbox or
/// lockdown refusing the program type, not a bug in the program.
fn describe_load_error(e: aya::programs::ProgramError) -> anyhow::Error {
    if let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &e
    {
        let log = verifier_log.to_string();
        if log.trim().is_empty() {
            return anyhow!("the kernel refused the program: {io_error}");
        }
        return anyhow!("the kernel refused the program: {io_error}\nverifier log:\n{log}");
    }
    anyhow::Error::new(e)
}

#[cfg(test)]
mod map_name_tests {
    /// A map renamed on one side only breaks here, on the host, not at load time in a VM:
    /// every name in `maps::ALL` is a map of the embedded programs, and every map there is
    /// listed (`.rodata`, `.bss` and the like are the programs' globals, not maps).
    #[test]
    fn maps_match_the_programs() {
        let object = aya_obj::Object::parse(super::PROGRAMS).expect("the embedded object parses");
        let mut in_object: Vec<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|name| !name.starts_with('.'))
            .collect();
        in_object.sort_unstable();
        let mut listed = agent_common::maps::ALL.to_vec();
        listed.sort_unstable();
        assert_eq!(in_object, listed);
    }
}
