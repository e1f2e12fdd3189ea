//! The self-protection sensor: telling its kernel programs who the agent is, which files and
//! BPF objects are protected, freezing the maps only the kernel writes, its counters, and
//! its records (`record`).

mod record;

use std::path::{Path, PathBuf};

use agent_common::{
    maps as map_names,
    tamper::{FileKey, ObjectKey, SelfState, TamperCounterKey, Target as Protected},
};
use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap};

pub use record::{tamper_json, tamper_record, TamperRecord};

use crate::{
    bpf::{
        attach::{Attached, Target},
        maps,
        object::Object,
        pins::Pins,
        program::{self, Hook, Sensor},
    },
    policy::ExeId,
};

/// A protected file: where it is and what it is (`target::*`).
pub type ProtectedFile = (PathBuf, u32);

/// Every file and directory under `root` (itself included), for the pins.
fn walk(root: &Path, out: &mut Vec<ProtectedFile>) {
    out.push((root.to_path_buf(), Protected::Pin.code()));
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            } else {
                out.push((path, Protected::Pin.code()));
            }
        }
    }
}

/// The files the guard trusts: its own executable, the policy (its directory and files, and
/// the last known good policy kept in `kept`), the time daemons' executables, and its pins.
pub fn protected_files(
    policy_path: &Path,
    policy: &crate::policy::CompiledPolicy,
    pin_root: &Path,
    kept: &[PathBuf],
) -> Vec<ProtectedFile> {
    let mut files = Vec::new();
    if let Ok(me) = std::fs::read_link("/proc/self/exe") {
        files.push((me, Protected::Agent.code()));
    }
    files.push((policy_path.to_path_buf(), Protected::Policy.code()));
    for k in kept {
        files.push((k.clone(), Protected::Policy.code()));
    }
    for s in &policy.sources {
        files.push((s.clone(), Protected::Policy.code()));
    }
    for r in &policy.rules {
        files.push((r.exe.clone(), Protected::Daemon.code()));
    }
    walk(pin_root, &mut files);
    files
}

pub struct SelfProtection {
    files: HashMap<MapData, FileKey, u32>,
    objects: HashMap<MapData, ObjectKey, u8>,
    state: Array<MapData, SelfState>,
    counters: PerCpuHashMap<MapData, TamperCounterKey, u64>,
    dropped: PerCpuArray<MapData, u64>,
    /// Arguments of this kernel's `bpf` LSM hook (where its previous verdict is).
    bpf_hook_args: u32,
    /// Hooks this kernel refused, and why.
    pub unavailable: Vec<String>,
}

impl SelfProtection {
    /// Takes self-protection's maps. `bpf_hook_args`: how many arguments this kernel's
    /// `bpf` LSM hook has.
    pub fn new(object: &mut Object, bpf_hook_args: u32) -> anyhow::Result<Self> {
        Ok(SelfProtection {
            files: object.take_map(map_names::PROTECTED_FILES)?,
            objects: object.take_map(map_names::OWN_OBJECTS)?,
            state: object.take_map(map_names::SELF_STATE)?,
            counters: object.take_map(map_names::TAMPER_COUNTERS)?,
            dropped: object.take_map(map_names::TAMPER_EVENTS_DROPPED)?,
            bpf_hook_args,
            unavailable: Vec::new(),
        })
    }

    /// Tells the kernel programs about self-protection: its mode (None: off), who the agent
    /// and its service manager are, the protected files and timeguard's own maps and links
    /// (those under `pins`). `generation` names the policy that asked for it.
    pub fn install(
        &mut self,
        mode: Option<u32>,
        generation: u32,
        files: &[ProtectedFile],
        pins: &Pins,
    ) -> anyhow::Result<()> {
        let me = ExeId::of(Path::new("/proc/self/exe")).context("the agent's own executable")?;
        let mut by_id: Vec<(FileKey, u32)> = Vec::new();
        for (path, what) in files {
            // A file missing here (a rule's executable not installed) has nothing to guard.
            if let Ok(id) = ExeId::of(path) {
                by_id.push((id.key(), *what));
            }
        }
        let objects: Vec<ObjectKey> = own_objects(pins)?.into_iter().map(|(_, k)| k).collect();
        let stale: Vec<FileKey> = self
            .files
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !by_id.iter().any(|(f, _)| f == k))
            .collect();
        for (key, what) in &by_id {
            self.files
                .insert(key, what, 0)
                .context("installing the protected files")?;
        }
        for k in stale {
            self.files
                .remove(&k)
                .context("forgetting a protected file")?;
        }
        for key in &objects {
            self.objects
                .insert(key, 1, 0)
                .context("installing timeguard's own BPF objects")?;
        }
        let state = match mode {
            Some(mode) => SelfState {
                generation: generation.max(1),
                mode,
                // SAFETY: getters without preconditions.
                agent_tgid: unsafe { libc::getpid() } as u32,
                // SAFETY: as above.
                manager_tgid: unsafe { libc::getppid() } as u32,
                agent_dev: me.dev,
                agent_ino: me.ino,
                bpf_hook_args: self.bpf_hook_args,
                _pad: 0,
            },
            None => SelfState::default(),
        };
        self.state
            .set(map_names::ONLY, state, 0)
            .context("writing the self-protection state")
    }

    /// Attaches self-protection's programs (where the clock's LSM programs decide), each on
    /// its own: a kernel that refuses one loses that protection only, said in
    /// `unavailable`, never the clock's enforcement.
    pub fn attach(&mut self, object: &mut Object) -> Vec<Attached> {
        let mut attached = Vec::new();
        for spec in program::of(Sensor::SelfProtection) {
            match object.attach(spec, Target::Hook) {
                Ok(a) => attached.push(a.attached),
                Err(e) => {
                    let hook = match spec.hook {
                        Hook::Lsm(h) => h,
                        _ => spec.name,
                    };
                    let why = format!("{hook}: {e:#}");
                    log::warn!("self-protection hook unavailable on this kernel: {why}");
                    self.unavailable.push(why);
                }
            }
        }
        attached
    }

    /// Forgets this process as the agent when it stops (its pid may be reused); files and
    /// BPF objects stay protected while the pins hold.
    pub fn forget_agent_process(&mut self) -> anyhow::Result<()> {
        let mut state = self.state.get(&map_names::ONLY, 0)?;
        state.agent_tgid = 0;
        self.state
            .set(map_names::ONLY, state, 0)
            .context("writing the self-protection state")
    }

    /// Exact tamper counters per (action, target, verdict), summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Vec<(TamperCounterKey, u64)>> {
        let mut out = maps::summed(&self.counters, "tamper counters")?;
        out.sort_by_key(|(k, _)| (k.action, k.target, k.verdict));
        Ok(out)
    }

    /// Tamper records lost (ring buffer full) and thinned (over the budget).
    pub fn events_dropped(&self) -> anyhow::Result<(u64, u64)> {
        maps::dropped(&self.dropped)
    }
}

/// Timeguard's own maps (all pinned under the build's `maps/`) and links, by name, with
/// the kernel's ids.
pub fn own_objects(pins: &Pins) -> anyhow::Result<Vec<(String, ObjectKey)>> {
    let mut out = Vec::new();
    let maps_dir = pins.maps_dir();
    for e in std::fs::read_dir(&maps_dir)
        .with_context(|| format!("reading {}", maps_dir.display()))?
        .filter_map(Result::ok)
    {
        let map = MapData::from_pin(e.path())
            .with_context(|| format!("opening {}", e.path().display()))?;
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            ObjectKey {
                kind: Protected::Map.code(),
                id: map.info()?.id(),
            },
        ));
    }
    for (key, id) in pins.link_ids() {
        out.push((
            key,
            ObjectKey {
                kind: Protected::Link.code(),
                id,
            },
        ));
    }
    Ok(out)
}

/// Freezes the maps userspace never writes (counters, budgets, per-source state, scratch of
/// every sensor) against every `bpf()` write from userspace, the agent's own included; the
/// names frozen now (already frozen ones, by an earlier agent, are not said again). Ring
/// buffers are left out (their reader writes its position through a writable mapping).
pub fn freeze_kernel_only_maps(maps_dir: &Path) -> Vec<&'static str> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_MAP_FREEZE: libc::c_long = 22;
    let mut frozen = Vec::new();
    for name in &map_names::KERNEL_ONLY {
        let Ok(map) = MapData::from_pin(maps_dir.join(name)) else {
            continue;
        };
        let mut attr = [0u8; 16];
        attr[..4].copy_from_slice(&(map.fd().as_fd().as_raw_fd() as u32).to_ne_bytes());
        // SAFETY: BPF_MAP_FREEZE reads the map descriptor from the attribute block.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_FREEZE, attr.as_mut_ptr(), attr.len()) };
        if rc == 0 {
            frozen.push(*name);
        }
    }
    frozen
}
