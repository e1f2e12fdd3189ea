//! Self-protection from the agent's side: telling the kernel programs who the agent is,
//! which files and BPF objects are protected, and turning tamper records into audit records.

use std::path::{Path, PathBuf};

use agent_common::{
    maps::{self, Dropped},
    policy::Verdict,
    tamper::{Action, FileKey, ObjectKey, SelfState, TamperCounterKey, TamperEvent, Target},
};
use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuHashMap};
use serde_json::{json, Value};

use crate::{events, loader::Guard, policy::ExeId};

/// A protected file: where it is and what it is (`Target`).
pub type ProtectedFile = (PathBuf, u32);

/// Every file and directory under `root` (itself included), for the pins.
fn walk(root: &Path, out: &mut Vec<ProtectedFile>) {
    out.push((root.to_path_buf(), Target::Pin.code()));
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            } else {
                out.push((path, Target::Pin.code()));
            }
        }
    }
}

/// The files the guard trusts: its own executable, the policy (its directory and files),
/// the time daemons' executables, and its pins.
pub fn protected_files(
    policy_path: &Path,
    policy: &crate::policy::CompiledPolicy,
    pin_root: &Path,
) -> Vec<ProtectedFile> {
    let mut files = Vec::new();
    if let Ok(me) = std::fs::read_link("/proc/self/exe") {
        files.push((me, Target::Agent.code()));
    }
    files.push((policy_path.to_path_buf(), Target::Policy.code()));
    for s in &policy.sources {
        files.push((s.clone(), Target::Policy.code()));
    }
    for r in &policy.rules {
        files.push((r.exe.clone(), Target::Daemon.code()));
    }
    walk(pin_root, &mut files);
    files
}

impl Guard {
    /// Tells the kernel programs about self-protection: its mode (None: off), who the agent
    /// and its service manager are, the protected files and timeguard's own maps and links.
    /// `generation` names the policy that asked for it.
    pub fn install_self_protection(
        &mut self,
        mode: Option<u32>,
        generation: u32,
        files: &[ProtectedFile],
    ) -> anyhow::Result<()> {
        let me = ExeId::of(Path::new("/proc/self/exe")).context("the agent's own executable")?;
        let mut by_id: Vec<(FileKey, u32)> = Vec::new();
        for (path, what) in files {
            // A file missing here (a rule's executable not installed) has nothing to guard.
            if let Ok(id) = ExeId::of(path) {
                by_id.push((
                    FileKey {
                        dev: id.dev,
                        ino: id.ino,
                    },
                    *what,
                ));
            }
        }
        let objects: Vec<ObjectKey> = self.own_objects()?.into_iter().map(|(_, k)| k).collect();
        {
            let mut map: HashMap<_, FileKey, u32> =
                HashMap::try_from(self.map_mut(maps::PROTECTED_FILES)?)?;
            let stale: Vec<FileKey> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !by_id.iter().any(|(f, _)| f == k))
                .collect();
            for (key, what) in &by_id {
                map.insert(key, what, 0)
                    .context("installing the protected files")?;
            }
            for k in stale {
                map.remove(&k).context("forgetting a protected file")?;
            }
        }
        {
            let mut map: HashMap<_, ObjectKey, u8> =
                HashMap::try_from(self.map_mut(maps::OWN_OBJECTS)?)?;
            for key in &objects {
                map.insert(key, 1, 0)
                    .context("installing timeguard's own BPF objects")?;
            }
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
        let mut map: Array<_, SelfState> = Array::try_from(self.map_mut(maps::SELF_STATE)?)?;
        map.set(maps::ONLY, state, 0)
            .context("writing the self-protection state")
    }

    /// Forgets this process as the agent when it stops (its pid may be reused); files and
    /// BPF objects stay protected while the pins hold.
    pub fn forget_agent_process(&mut self) -> anyhow::Result<()> {
        let mut map: Array<_, SelfState> = Array::try_from(self.map_mut(maps::SELF_STATE)?)?;
        let mut state = map.get(&maps::ONLY, 0)?;
        state.agent_tgid = 0;
        map.set(maps::ONLY, state, 0)
            .context("writing the self-protection state")
    }

    /// Timeguard's own maps (all pinned under the build's `maps/`) and links, by name, with
    /// the kernel's ids.
    pub fn own_objects(&self) -> anyhow::Result<Vec<(String, ObjectKey)>> {
        let mut out = Vec::new();
        let maps_dir = self.pins.maps_dir();
        for e in std::fs::read_dir(&maps_dir)
            .with_context(|| format!("reading {}", maps_dir.display()))?
            .filter_map(Result::ok)
        {
            let map = MapData::from_pin(e.path())
                .with_context(|| format!("opening {}", e.path().display()))?;
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                ObjectKey {
                    kind: Target::Map.code(),
                    id: map.info()?.id(),
                },
            ));
        }
        for (key, id) in self.pins.link_ids() {
            out.push((
                key,
                ObjectKey {
                    kind: Target::Link.code(),
                    id,
                },
            ));
        }
        Ok(out)
    }

    /// Exact tamper counters per (action, target, verdict), summed over CPUs.
    pub fn tamper_counters(&self) -> anyhow::Result<Vec<(TamperCounterKey, u64)>> {
        let counters: PerCpuHashMap<_, TamperCounterKey, u64> =
            PerCpuHashMap::try_from(self.map(maps::TAMPER_COUNTERS)?)?;
        let mut out = Vec::new();
        for entry in counters.iter() {
            let (key, values) = entry.context("reading the tamper counters")?;
            out.push((key, values.iter().sum()));
        }
        out.sort_by_key(|(k, _)| (k.action, k.target, k.verdict));
        Ok(out)
    }

    /// Tamper records lost (ring buffer full) and thinned (over the budget).
    pub fn tamper_events_dropped(&self) -> anyhow::Result<(u64, u64)> {
        Ok((
            self.per_cpu_at(maps::TAMPER_EVENTS_DROPPED, Dropped::Lost.index())?,
            self.per_cpu_at(maps::TAMPER_EVENTS_DROPPED, Dropped::Thinned.index())?,
        ))
    }
}

/// Freezes the maps userspace never writes; the names frozen now (already frozen ones, by
/// an earlier agent, are not said again).
pub fn freeze_kernel_only_maps(maps_dir: &Path) -> Vec<&'static str> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_MAP_FREEZE: libc::c_long = 22;
    let mut frozen = Vec::new();
    for name in maps::KERNEL_ONLY {
        let Ok(map) = MapData::from_pin(maps_dir.join(name)) else {
            continue;
        };
        let mut attr = [0u8; 16];
        attr[..4].copy_from_slice(&(map.fd().as_fd().as_raw_fd() as u32).to_ne_bytes());
        // SAFETY: BPF_MAP_FREEZE reads the map descriptor from the attribute block.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_FREEZE, attr.as_mut_ptr(), attr.len()) };
        if rc == 0 {
            frozen.push(name);
        }
    }
    frozen
}

fn signal_name(sig: u32) -> String {
    const NAMES: [&str; 32] = [
        "0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES
        .get(sig as usize)
        .map_or_else(|| format!("signal {sig}"), |n| n.to_string())
}

/// One tamper attempt as a JSON record; `path_of` names a protected file by its identity.
pub fn tamper_json(
    ev: &TamperEvent,
    policy: &str,
    host: &str,
    path_of: &dyn Fn(u64, u64) -> Option<PathBuf>,
) -> Value {
    let exe = events::exe_path(ev.caller.tgid);
    let mut what = json!({"target": Target::name_of(ev.target)});
    match Action::from_code(ev.action) {
        Some(Action::Signal) => {
            what["signal"] = json!(signal_name(ev.detail));
            what["pid"] = json!(ev.target_tgid);
        }
        Some(Action::Ptrace) => {
            what["pid"] = json!(ev.target_tgid);
            what["ptrace_mode"] = json!(format!("{:#x}", ev.detail));
            what["exe"] = json!(path_of(ev.target_dev, ev.target_ino));
        }
        Some(Action::Bpf) => {
            what["bpf_command"] = json!(ev.detail);
            what["id"] = json!(ev.target_ino);
        }
        _ => {
            what["file"] = json!(path_of(ev.target_dev, ev.target_ino));
            what["file_id"] = json!(ExeId {
                dev: ev.target_dev,
                ino: ev.target_ino
            }
            .to_string());
        }
    }
    json!({
        "time": events::rfc3339(events::wall_time(ev.tai_ns)),
        "boot_ns": ev.boot_ns,
        "host": host,
        "kind": "tamper",
        "action": Action::name_of(ev.action),
        "verdict": Verdict::name_of(ev.verdict),
        "policy": policy,
        "generation": ev.generation,
        "who": events::Who::new(
            (ev.caller.pid, ev.caller.tgid),
            (ev.caller.uid, ev.caller.gid),
            &ev.caller.comm,
            exe.as_deref(),
            ExeId { dev: ev.caller.exe_dev, ino: ev.caller.exe_ino },
        ),
        "what": what,
    })
}
