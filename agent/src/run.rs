//! `timeguard run`: attach, enforce (or observe), record, reload without a gap, answer
//! `timeguard status`, stop cleanly.

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use serde_json::{json, Value};
use tokio::{io::unix::AsyncFd, io::AsyncWriteExt as _, net::UnixListener};

use agent_common::maps;
use aya::maps::{MapData, RingBuf};

use crate::{
    audit::{self, AuditTrail},
    events,
    kernel::{self, btf::Btf},
    loader::{Enforcement, Guard},
    metrics::{self, Metrics},
    network,
    policy::{self, identity::RuleIds, CompiledPolicy},
};

/// Where `timeguard status` finds the running agent.
pub const STATUS_SOCKET: &str = "/run/timeguard/status.sock";
/// How often the policy files are looked at for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Events handled before the loop looks at signals, reloads and status again.
const EVENT_BATCH: usize = 1024;
/// Policies kept to name the rules of events decided under an older generation.
const GENERATIONS_KEPT: usize = 4;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn now() -> String {
    events::rfc3339(SystemTime::now())
}

/// How `timeguard run` is set up.
pub struct Options {
    pub policy: PathBuf,
    pub status_socket: PathBuf,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The audit trail file (also always on stdout); None: stdout only.
    pub audit_log: Option<PathBuf>,
    pub audit_rotation: audit::Rotation,
    /// The cgroup v2 directory the network guard watches (default: the hierarchy's root,
    /// every socket of the host).
    pub network_cgroup: Option<PathBuf>,
    /// Where the programs' maps and links are pinned (bpffs).
    pub pin_root: PathBuf,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown release)".into())
}

/// Loads the programs with this kernel's offsets, after reporting what the kernel offers.
fn prepare(caps: &[kernel::Capability], pin_root: &Path) -> anyhow::Result<Guard> {
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
    let pins = crate::pins::Pins::open(pin_root, &crate::loader::programs_build())?;
    Guard::load(&offsets, &btf, pins)
        .context("loading the kernel programs (timeguard must run as root)")
}

fn report_enforcement(guard: &Guard) {
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

pub fn kernel_report() -> anyhow::Result<()> {
    println!("kernel {}", kernel_release());
    let caps = kernel::capabilities();
    for cap in &caps {
        println!("{cap}");
    }
    // A trial under pins of its own, removed after: the running agent's are not touched.
    let probe = Path::new(crate::pins::DEFAULT_ROOT)
        .with_file_name(format!("timeguard-probe-{}", std::process::id()));
    let result = prepare(&caps, &probe).and_then(|mut guard| {
        guard.attach()?;
        report_enforcement(&guard);
        println!("enforcement: {}", guard.enforcement.label());
        Ok(())
    });
    crate::pins::unpin_all(&probe)?;
    result
}

/// Loads and checks the policy; errors refuse it, with every diagnostic.
fn load_policy(path: &Path) -> Result<CompiledPolicy, Vec<String>> {
    policy::load(&[path.to_path_buf()], &policy::Host::default())
        .map_err(|problems| problems.iter().map(|d| d.to_string()).collect())
}

/// What identifies the policy in force without reading it: each policy file's inode, size
/// and modification time (and the set of files), and the identity of every executable its
/// rules name. An edited policy, and an executable replaced (a package upgrade renames a
/// new file over the old) or newly installed, are both noticed and followed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fingerprint {
    files: Vec<(PathBuf, u64, u64, i64, i64)>,
    exes: Vec<Option<(u64, u64)>>,
}

fn fingerprint(path: &Path, watched: &[PathBuf]) -> Fingerprint {
    let files = policy::policy_files(&[path.to_path_buf()]).unwrap_or_default();
    Fingerprint {
        files: files
            .into_iter()
            .filter_map(|f| {
                let md = std::fs::metadata(&f).ok()?;
                Some((f, md.ino(), md.len(), md.mtime(), md.mtime_nsec()))
            })
            .collect(),
        exes: watched
            .iter()
            .map(|e| std::fs::metadata(e).ok().map(|md| (md.dev(), md.ino())))
            .collect(),
    }
}

/// The running agent's state.
struct Agent {
    guard: Guard,
    policy_path: PathBuf,
    /// Policies by generation: the one in force is the last.
    policies: BTreeMap<u32, CompiledPolicy>,
    fingerprint: Fingerprint,
    reloads_ok: u64,
    reloads_failed: u64,
    last_reload_error: Option<Vec<String>>,
    host: String,
    started: String,
    audit: AuditTrail,
    exe_paths: events::ExePaths,
    /// Stable rule ids for the kernel's counters, by rule name.
    rule_ids: RuleIds,
    metrics: Option<Metrics>,
    /// The last step seen, for the metrics: when (CLOCK_BOOTTIME) and how big.
    last_step: Option<(u64, Option<i128>)>,
    network_cgroup: Option<PathBuf>,
    /// Alerts raised by network records, by (kind, alert), since start.
    net_alerts: BTreeMap<(&'static str, &'static str), u64>,
    /// Why the network guard is not attached, when a policy asked for it.
    network_unavailable: Option<String>,
    /// Where the rule names behind the kernel's counters are kept for a restarted agent.
    rule_names_path: PathBuf,
    /// A stop asked for on the control socket: whether to unpin as well.
    stop: Option<bool>,
    /// Where the pins are (protected, and removed by an unpinning stop).
    pin_root: PathBuf,
    /// The files self-protection guards now.
    protected: Vec<crate::tamper::ProtectedFile>,
}

impl Agent {
    fn current(&self) -> Option<(&u32, &CompiledPolicy)> {
        self.policies.last_key_value()
    }

    fn fingerprint_now(&self) -> Fingerprint {
        let watched = self.current().map_or(&[][..], |(_, p)| &p.watched[..]);
        fingerprint(&self.policy_path, watched)
    }

    /// Reloads when a policy file or a rule's executable changed since the last look.
    fn follow_changes(&mut self) {
        let now = self.fingerprint_now();
        if now.files != self.fingerprint.files {
            self.reload("policy files changed");
        } else if now.exes != self.fingerprint.exes {
            self.reload("a rule's executable was replaced, installed or removed");
        }
    }

    /// Writes one record to the audit trail. The agent's own records get CLOCK_BOOTTIME
    /// beside their wall time too, like the kernel's, so they order right across a step.
    fn record(&mut self, mut value: Value) {
        if value.get("boot_ns").is_none() {
            value["boot_ns"] = json!(events::clock_ns(libc::CLOCK_BOOTTIME));
        }
        self.audit.write(&value);
    }

    /// Runs `f` with the trail's records held back, then writes them at once.
    fn batched<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        self.audit.hold();
        let r = f(self);
        self.audit.release();
        self.exe_paths.clear();
        r
    }

    fn install(&mut self, mut policy: CompiledPolicy) -> anyhow::Result<u32> {
        // Counters are kept per rule id for the agent's whole run: ids follow rule names.
        for r in &mut policy.rules {
            r.id = self.rule_ids.id_for(&r.name).map_err(anyhow::Error::msg)?;
        }
        // A restarted agent must name the kernel's counters as this one did.
        if let Err(e) =
            crate::control::save_rule_names(&self.rule_names_path, self.rule_ids.names())
        {
            log::warn!("keeping the rule names for a restarted agent: {e:#}");
        }
        let generation = self.guard.install_policy(&policy)?;
        self.guard
            .install_network(policy.network.as_ref(), &policy.rules, generation)
            .context("installing the network policy")?;
        if policy.network.is_some() {
            self.attach_network();
        }
        self.follow_ptp_interfaces(policy.network.as_ref());
        for w in &policy.warnings {
            log::warn!("policy: {w}");
        }
        for r in &policy.rules {
            log::info!(
                "rule \"{}\": {} ({}) may: {}",
                r.name,
                r.exe.display(),
                r.exe_id,
                events::operation_names(r.allow).join(", ")
            );
        }
        log::info!(
            "policy \"{}\" generation {generation} (sha256 {}) from {}: {} rules in effect",
            policy.name,
            &policy.hash[..16],
            self.policy_path.display(),
            policy.rules.len()
        );
        self.policies.insert(generation, policy);
        while self.policies.len() > GENERATIONS_KEPT {
            self.policies.pop_first();
        }
        self.protect();
        Ok(generation)
    }

    /// Tells the kernel programs what self-protection guards now: the policy's files and
    /// daemons, the pins and the BPF objects this agent holds. Called after each install
    /// and each new attachment. A failure leaves the previous state (and says so).
    fn protect(&mut self) {
        let Some((generation, policy)) = self.current() else {
            return;
        };
        let generation = *generation;
        let mode = policy.self_protection;
        let files = crate::tamper::protected_files(&self.policy_path, policy, &self.pin_root);
        match self.guard.install_self_protection(mode, generation, &files) {
            Ok(()) => self.protected = files,
            Err(e) => log::warn!("self-protection not updated: {e:#}"),
        }
    }

    /// The protected file with this identity, for tamper records.
    fn protected_path(&self, dev: u64, ino: u64) -> Option<PathBuf> {
        self.protected
            .iter()
            .find(|(p, _)| {
                crate::policy::ExeId::of(p).is_ok_and(|id| id.dev == dev && id.ino == ino)
            })
            .map(|(p, _)| p.clone())
    }

    /// Writes one tamper attempt to the trail.
    fn tamper_event(&mut self, ev: &agent_common::tamper::TamperEvent) {
        let name = self
            .policies
            .get(&ev.generation)
            .or_else(|| self.policies.values().last())
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let path_of = |dev: u64, ino: u64| self.protected_path(dev, ino);
        let record = crate::tamper::tamper_json(ev, &name, &self.host, &path_of);
        log::warn!(
            "tamper attempt: {} {} by {} ({})",
            record["action"].as_str().unwrap_or("?"),
            record["verdict"].as_str().unwrap_or("?"),
            record["who"]["comm"].as_str().unwrap_or("?"),
            record["who"]["exe"].as_str().unwrap_or("?")
        );
        self.record(record);
    }

    /// Loads the policy again; a policy that fails validation is rejected and the one in
    /// force stays, whole.
    fn reload(&mut self, why: &str) {
        self.fingerprint = self.fingerprint_now();
        match load_policy(&self.policy_path) {
            Ok(p) if self.current().is_some_and(|(_, c)| c.same_as(&p)) => {
                log::info!(
                    "policy reload ({why}): unchanged (sha256 {})",
                    &p.hash[..16]
                );
            }
            Ok(p) => {
                let name = p.name.clone();
                let hash = p.hash.clone();
                match self.install(p) {
                    Ok(generation) => {
                        // The new policy may name other executables.
                        self.fingerprint = self.fingerprint_now();
                        self.reloads_ok += 1;
                        self.last_reload_error = None;
                        self.record(
                            json!({"time": now(), "host": self.host, "kind": "agent", "event": "policy_loaded",
                            "reason": why, "policy": name, "policy_sha256": hash, "generation": generation}),
                        );
                        release_freed_memory();
                    }
                    Err(e) => self.reject(
                        why,
                        vec![format!("installing the policy in the kernel: {e:#}")],
                    ),
                }
            }
            Err(problems) => self.reject(why, problems),
        }
    }

    fn reject(&mut self, why: &str, problems: Vec<String>) {
        self.reloads_failed += 1;
        for p in &problems {
            log::error!("policy reload ({why}) rejected: {p}");
        }
        let generation = self.current().map(|(g, _)| *g).unwrap_or(0);
        log::error!("policy reload rejected; generation {generation} stays in force");
        self.record(
            json!({"time": now(), "host": self.host, "kind": "agent", "event": "policy_rejected",
            "reason": why, "problems": problems, "generation_in_force": generation}),
        );
        self.last_reload_error = Some(problems);
    }

    fn status(&self) -> Value {
        let (generation, policy) = match self.current() {
            Some((g, p)) => (*g, Some(p)),
            None => (0, None),
        };
        let counters: Vec<Value> = match self.guard.counters() {
            Ok(c) => c
                .into_iter()
                .map(|(k, n)| {
                    json!({"rule": self.rule_ids.name(k.rule_id),
                        "operation": agent_common::clock::op::name(k.operation),
                        "verdict": agent_common::policy::Verdict::name_of(k.verdict as u8), "count": n})
                })
                .collect(),
            Err(e) => vec![json!({"error": format!("{e:#}")})],
        };
        let reasons = match &self.guard.enforcement {
            Enforcement::Enforce => vec![],
            Enforcement::ObserveOnly { reasons } => reasons.clone(),
        };
        json!({
            "host": self.host,
            "started": self.started,
            "enforcement": self.guard.enforcement.label(),
            "enforcement_unavailable": reasons,
            "attached": self.guard.attached,
            "unobserved": self.guard.unobserved,
            "policy": {
                "name": policy.map(|p| p.name.clone()),
                "generation": generation,
                "sha256": policy.map(|p| p.hash.clone()),
                "sources": policy.map(|p| p.sources.clone()).unwrap_or_default(),
                "path": self.policy_path,
            },
            "reloads": {"ok": self.reloads_ok, "failed": self.reloads_failed, "last_error": self.last_reload_error},
            "counters": counters,
            "events_lost": self.guard.events_lost().unwrap_or(0),
            "events_thinned": self.guard.events_thinned().unwrap_or(0),
            "audit_log": self.audit.path(),
            "audit_write_failures": self.audit.failures,
            "network": self.network_status(),
            "self_protection": {
                "mode": match policy.and_then(|p| p.self_protection) {
                    Some(m) if m == agent_common::policy::Mode::Enforce.code() => "enforce",
                    Some(_) => "audit",
                    None => "off",
                },
                "unavailable": self.guard.self_protection_unavailable,
                "protected_files": self.protected.len(),
                "pins": self.guard.pin_dir(),
                "objects": self.guard.own_objects().map(|o| o.into_iter().map(|(name, k)| json!({
                    "name": name,
                    "kind": agent_common::tamper::Target::name_of(k.kind),
                    "id": k.id,
                })).collect::<Vec<_>>()).unwrap_or_default(),
                "attempts": self.guard.tamper_counters().map(|c| c.into_iter().map(|(k, n)| json!({
                    "action": agent_common::tamper::Action::name_of(k.action),
                    "target": agent_common::tamper::Target::name_of(k.target),
                    "verdict": agent_common::policy::Verdict::name_of(k.verdict),
                    "count": n,
                })).collect::<Vec<_>>()).unwrap_or_default(),
            },
        })
    }

    /// The network guard's part of status: where it is attached, and its exact counters by
    /// kind (`ntp_packets`, `nts_ke`, `ptp_messages`, `sockets`).
    fn network_status(&self) -> Value {
        let links = self.guard.ptp_links();
        let mut out = json!({
            "attached": self.guard.network_attached,
            "unavailable": self.network_unavailable,
            "ptp_interfaces": links.attached(),
            "ptp_refused": links.refused,
            "ntp_packets": [], "nts_ke": [], "ptp_messages": [], "sockets": [],
        });
        let counters = match self.guard.net_counters() {
            Ok(c) => c,
            Err(e) => {
                out["error"] = json!(format!("{e:#}"));
                return out;
            }
        };
        for (k, n) in counters {
            let (series, what, verdict, reason) = network::counter_labels(&k);
            let (section, label) = match series {
                "ntp" => ("ntp_packets", "mode"),
                "nts_ke" => ("nts_ke", "mode"),
                "ptp" => ("ptp_messages", "message"),
                _ => ("sockets", "service"),
            };
            let mut entry = json!({label: what, "verdict": verdict, "reason": reason, "count": n});
            if section == "sockets" {
                entry["action"] = json!(series);
            }
            if let Some(list) = out[section].as_array_mut() {
                list.push(entry);
            }
        }
        out
    }

    /// The metrics text for a scrape.
    fn metrics_text(&mut self) -> anyhow::Result<String> {
        let attempts = self
            .guard
            .counters()?
            .into_iter()
            .map(|(k, n)| {
                (
                    self.rule_ids.name(k.rule_id).to_string(),
                    agent_common::clock::op::name(k.operation),
                    agent_common::policy::Verdict::name_of(k.verdict as u8),
                    n,
                )
            })
            .collect();
        let network = self
            .guard
            .net_counters()?
            .iter()
            .map(|(k, n)| {
                let (series, what, verdict, reason) = network::counter_labels(k);
                (series, what, verdict, reason, *n)
            })
            .collect();
        let (packet_events_lost, packet_events_thinned) = self.guard.net_events_dropped()?;
        let (tamper_events_lost, tamper_events_thinned) = self.guard.tamper_events_dropped()?;
        let tamper = self
            .guard
            .tamper_counters()?
            .into_iter()
            .map(|(k, n)| {
                (
                    agent_common::tamper::Action::name_of(k.action),
                    agent_common::tamper::Target::name_of(k.target),
                    agent_common::policy::Verdict::name_of(k.verdict),
                    n,
                )
            })
            .collect();
        let snapshot = metrics::Snapshot {
            attempts,
            network,
            net_alerts: self.net_alerts.iter().map(|(a, n)| (*a, *n)).collect(),
            tamper,
            tamper_events_lost,
            tamper_events_thinned,
            packet_events_lost,
            packet_events_thinned,
            events_thinned: self.guard.events_thinned()?,
            events_lost: self.guard.events_lost()?,
            audit_write_failures: self.audit.failures,
            generation: self.guard.generation(),
            reloads_ok: self.reloads_ok,
            reloads_rejected: self.reloads_failed,
            hooks: self.guard.hooks(),
            programs: self.guard.programs(),
            last_step: self.last_step,
        };
        match self.metrics.as_mut() {
            Some(m) => m.render(&snapshot),
            None => Ok(String::new()),
        }
    }

    /// Attaches the network guard the first time a policy has `spec.network`. A kernel or
    /// host that refuses it loses the network guard only, said plainly.
    fn attach_network(&mut self) {
        let Some(cgroup) = self.network_cgroup.clone().or_else(network::cgroup2_root) else {
            self.network_unavailable = Some(
                "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)".into(),
            );
            log::warn!("network guard unavailable: no cgroup v2 hierarchy is mounted");
            return;
        };
        match self.guard.attach_network(&cgroup) {
            Ok(now) => {
                self.network_unavailable = None;
                if now {
                    log::info!("network guard attached to {}", cgroup.display());
                }
            }
            Err(e) => {
                log::warn!("network guard unavailable: {e:#}");
                self.network_unavailable = Some(format!("{e:#}"));
            }
        }
    }

    /// Answers one client of the control socket; whether the agent is to stop.
    async fn control(&mut self, mut stream: tokio::net::UnixStream) -> bool {
        use tokio::io::AsyncReadExt as _;
        // A client that does not talk or read must not hold up the agent.
        let limit = Duration::from_secs(1);
        let mut buf = [0u8; 64];
        let mut len = 0;
        let _ = tokio::time::timeout(limit, async {
            while len < buf.len() {
                match stream.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        len += n;
                        if buf[..len].contains(&b'\n') {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        let line = String::from_utf8_lossy(&buf[..len]).into_owned();
        let (answer, stop) = match crate::control::Request::parse(&line) {
            Ok(crate::control::Request::Status) => (self.status(), false),
            Ok(crate::control::Request::Stop { unpin }) => {
                let by = stream
                    .peer_cred()
                    .ok()
                    .map(|c| json!({"uid": c.uid(), "pid": c.pid()}));
                log::warn!("stop asked for on the control socket by {by:?} (unpin: {unpin})");
                self.record(json!({"time": now(), "host": self.host, "kind": "agent",
                    "event": "stop_requested", "unpin": unpin, "by": by}));
                self.stop = Some(unpin);
                (json!({"stopping": true, "unpin": unpin}), true)
            }
            Err(e) => (json!({ "error": e }), false),
        };
        let body = format!("{answer}\n");
        let _ = tokio::time::timeout(limit, stream.write_all(body.as_bytes())).await;
        stop
    }

    /// Attaches the PTP guard to interfaces that appeared, when the policy has `ptp`.
    fn follow_ptp_interfaces(&mut self, net: Option<&crate::policy::network::CompiledNetwork>) {
        let Some(net) = net.filter(|n| n.ptp) else {
            return;
        };
        let refused_before = self.guard.ptp_links().refused.clone();
        let attached = self
            .guard
            .follow_ptp_interfaces(net.ptp_interfaces.as_deref());
        for name in &attached {
            log::info!("PTP guard attached to {name}");
        }
        if !attached.is_empty() {
            self.protect();
        }
        // Said once per interface and reason, not at every tick.
        for (name, why) in &self.guard.ptp_links().refused {
            if refused_before.get(name) != Some(why) {
                log::warn!("PTP guard not attached to {name}: {why}");
            }
        }
    }

    /// Writes one network decision to the trail.
    fn net_event(&mut self, ev: &agent_common::net::NetEvent) {
        let alert = network::alert_label(ev.kind, ev.alert);
        if !alert.is_empty() {
            let series = agent_common::net::Kind::name_of(ev.kind);
            *self.net_alerts.entry((series, alert)).or_default() += 1;
        }
        let name = self
            .policies
            .get(&ev.generation)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let rule_ids = &self.rule_ids;
        let rule_name = |id: u32| rule_ids.name(id).to_string();
        let record = network::net_json(ev, &name, &self.host, &rule_name);
        self.record(record);
    }

    /// Writes one clock event to the trail, named by the policy generation that decided it.
    fn clock_event(&mut self, ev: &agent_common::event::ClockEvent) {
        use agent_common::{clock::op, policy::Verdict};
        if ev.operations & op::STEP != 0 && ev.verdict != Verdict::Deny.code() {
            self.last_step = Some((ev.boot_ns, events::step_size_ns(ev)));
        }
        let policy = self
            .policies
            .get(&ev.generation)
            .or_else(|| self.policies.values().last());
        if let Some(p) = policy {
            let exe = self
                .exe_paths
                .path(ev.caller.tgid, ev.caller.exe_dev, ev.caller.exe_ino);
            let record = events::clock_record(ev, p, &self.host, exe);
            self.audit.write(&record);
        }
    }
}

/// Gives the heap that loading freed back to the kernel. Loading parses the kernel's BTF
/// (tens of MiB, freed once the programs are in), and glibc keeps freed heap unless asked:
/// without this the idle agent holds about 38 MiB instead of about 10.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Binds the status socket: its directory and the socket are root's alone.
fn bind_status(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir()) {
        anyhow::bail!("{} is a directory", path.display());
    }
    // A live agent answers there: do not take its socket away.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another timeguard agent already answers at {}",
            path.display()
        );
    }
    // What is left is a socket of an agent that died.
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let policy_path = options.policy.as_path();
    let status_socket = options.status_socket.as_path();
    let policy = load_policy(policy_path).map_err(|problems| {
        for p in &problems {
            log::error!("policy: {p}");
        }
        anyhow::anyhow!(
            "the policy at {} is not valid; nothing was loaded",
            policy_path.display()
        )
    })?;
    let guard = prepare(&kernel::capabilities(), &options.pin_root)?;
    let rule_names_path =
        crate::control::rule_names_path(status_socket, &crate::loader::programs_build());
    let inherited = guard.inherited_generation();
    let rule_ids = if inherited == 0 {
        RuleIds::default()
    } else {
        log::info!(
            "taking over from an earlier agent: its policy (generation {inherited}) is enforced until this one is installed; links adopted: {}",
            guard.adopted().join(", ")
        );
        match crate::control::load_rule_names(&rule_names_path) {
            Some(names) => RuleIds::from_names(names),
            None => {
                // The counters are frozen (only the kernel writes them): they stay, under
                // rule ids whose names are lost; new rules are numbered after them.
                let highest = guard
                    .counters()?
                    .iter()
                    .map(|(k, _)| k.rule_id)
                    .max()
                    .unwrap_or(0);
                log::warn!(
                    "the rule names of the kernel's counters are lost ({} missing); counts from before show as rules unknown-1 to unknown-{highest}",
                    rule_names_path.display()
                );
                RuleIds::from_names((1..=highest).map(|i| format!("unknown-{i}")).collect())
            }
        }
    };
    let mut agent = Agent {
        guard,
        policy_path: policy_path.to_path_buf(),
        policies: BTreeMap::new(),
        fingerprint: fingerprint(policy_path, &policy.watched),
        reloads_ok: 0,
        reloads_failed: 0,
        last_reload_error: None,
        host: hostname(),
        started: now(),
        audit: AuditTrail::new(options.audit_log.clone(), options.audit_rotation.clone()),
        rule_ids,
        metrics: match options.metrics_addr {
            Some(_) => Some(Metrics::new()?),
            None => None,
        },
        last_step: None,
        network_cgroup: options.network_cgroup.clone(),
        net_alerts: BTreeMap::new(),
        network_unavailable: None,
        rule_names_path,
        stop: None,
        pin_root: options.pin_root.clone(),
        protected: Vec::new(),
        exe_paths: events::ExePaths::default(),
    };
    // The policy is in the maps before any program is attached: there is no unguarded instant.
    let generation = agent.install(policy)?;
    agent.guard.attach()?;
    // The links are known now: self-protection covers them too.
    agent.protect();
    let frozen = crate::tamper::freeze_kernel_only_maps(&agent.guard.maps_dir());
    if !frozen.is_empty() {
        log::info!(
            "frozen against writes from userspace: {}",
            frozen.join(", ")
        );
    }
    report_enforcement(&agent.guard);
    // This build's programs are attached: an older build's may go (make before break).
    for old in agent.guard.remove_other_builds() {
        log::info!(
            "removed the pins of an older build of the programs: {}",
            old.display()
        );
    }
    let (name, hash) = agent
        .current()
        .map(|(_, p)| (p.name.clone(), p.hash.clone()))
        .unwrap_or_default();
    let started = json!({
        "time": now(),
        "host": agent.host,
        "kind": "agent",
        "event": "started",
        "enforcement": agent.guard.enforcement.label(),
        "policy": name,
        "policy_sha256": hash,
        "generation": generation,
        "attached": agent.guard.attached,
        "adopted": agent.guard.adopted(),
        "inherited_generation": inherited,
        "pins": agent.guard.pin_dir(),
        "audit_log": agent.audit.path(),
        "metrics_addr": options.metrics_addr.map(|a| a.to_string()),
    });
    agent.record(started);
    release_freed_memory();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    runtime.block_on(event_loop(&mut agent, status_socket, options.metrics_addr))?;

    summarize(&agent);
    if let Err(e) = agent.guard.forget_agent_process() {
        log::warn!("{e:#}");
    }
    let unpin = agent.stop == Some(true);
    let mut unpinned = Vec::new();
    if unpin {
        // The pins go first; the programs detach when this process lets go of its links.
        unpinned = crate::pins::unpin_all(&options.pin_root)?;
        let _ = std::fs::remove_file(&agent.rule_names_path);
    }
    agent.record(json!({
        "time": now(),
        "host": agent.host,
        "kind": "agent",
        "event": "stopped",
        "enforcement": agent.guard.enforcement.label(),
        "generation": agent.guard.generation(),
        "enforcement_stays": !unpin,
        "unpinned": unpinned,
    }));
    let _ = std::fs::remove_file(status_socket);
    if unpin {
        log::warn!(
            "stopped and unpinned: the programs are detached, the clock is no longer guarded"
        );
    } else {
        log::info!(
            "stopped; the last policy stays enforced in the kernel (pinned at {}); `timeguard stop --unpin` removes it",
            agent.guard.pin_dir().display()
        );
    }
    Ok(())
}

async fn event_loop(
    agent: &mut Agent,
    status_socket: &Path,
    metrics_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut events = polled_ring(&mut agent.guard, maps::CLOCK_EVENTS)?;
    let mut net_events = polled_ring(&mut agent.guard, maps::NET_EVENTS)?;
    let mut tamper_events = polled_ring(&mut agent.guard, maps::TAMPER_EVENTS)?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    // Status is a convenience: without the socket, enforcement goes on.
    let status = match bind_status(status_socket) {
        Ok(l) => Some(l),
        Err(e) => {
            log::warn!("timeguard status will not answer: {e:#}");
            None
        }
    };
    // Metrics are a convenience too; a port already taken is reported, not fatal.
    let metrics = match metrics_addr {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                log::info!("metrics: http://{addr}/metrics");
                Some(l)
            }
            Err(e) => {
                log::warn!("metrics will not be served on {addr}: {e}");
                None
            }
        },
        None => None,
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => agent.reload("SIGHUP"),
            _ = watch.tick() => {
                if let Err(e) = agent.guard.refresh_clock_state() {
                    log::warn!("refreshing the TAI offset for step limits: {e:#}");
                }
                agent.follow_changes();
                let net = agent.current().and_then(|(_, p)| p.network.clone());
                agent.follow_ptp_interfaces(net.as_ref());
            }
            conn = accept_status(status.as_ref()) => {
                if let Ok((stream, _)) = conn {
                    if agent.control(stream).await {
                        break;
                    }
                }
            }
            conn = accept_metrics(metrics.as_ref()) => {
                if let Ok((mut stream, _)) = conn {
                    let text = agent.metrics_text();
                    let served = metrics::serve_one(&mut stream, |path| match (path, &text) {
                        ("/metrics", Ok(t)) => Some(t.clone()),
                        _ => None,
                    });
                    // A client that does not talk or read must not hold up the agent.
                    let _ = tokio::time::timeout(Duration::from_secs(1), served).await;
                    if let Err(e) = text {
                        log::warn!("metrics: {e:#}");
                    }
                }
            }
            ready = events.readable_mut() => {
                let mut ready = ready.context("waiting for events")?;
                let drained = agent.batched(|agent| drain(ready.get_inner_mut(), |item| match events::parse::<agent_common::event::ClockEvent>(item) {
                    Some(ev) => agent.clock_event(&ev),
                    None => log::warn!("dropped a malformed event record of {} bytes", item.len()),
                }));
                settle(ready, drained).await;
            }
            // Packet records come on their own ring: a packet flood cannot crowd out a
            // clock event, and the loop turns between the two.
            ready = net_events.readable_mut() => {
                let mut ready = ready.context("waiting for packet events")?;
                let drained = agent.batched(|agent| drain(ready.get_inner_mut(), |item| match events::parse::<agent_common::net::NetEvent>(item) {
                    Some(ev) => agent.net_event(&ev),
                    None => log::warn!("dropped a malformed packet record of {} bytes", item.len()),
                }));
                settle(ready, drained).await;
            }
            // Tamper records too: attempts on the guard itself.
            ready = tamper_events.readable_mut() => {
                let mut ready = ready.context("waiting for tamper events")?;
                let drained = agent.batched(|agent| drain(ready.get_inner_mut(), |item| match events::parse::<agent_common::tamper::TamperEvent>(item) {
                    Some(ev) => agent.tamper_event(&ev),
                    None => log::warn!("dropped a malformed tamper record of {} bytes", item.len()),
                }));
                settle(ready, drained).await;
            }
        }
    }
    Ok(())
}

/// A ring buffer of the kernel's records, taken from the programs and watched by the event
/// loop.
fn polled_ring(guard: &mut Guard, name: &str) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    let ring = guard.take_ring(name)?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the
    // AsyncFd owns it.
    unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer {name}: {e}"))
}

/// Hands up to `EVENT_BATCH` records of a ring to `each`; whether the ring is now empty. A
/// bounded batch per turn: under a flood a ring refills as fast as it is read, and signals,
/// reloads and status must still get their turn.
fn drain(ring: &mut RingBuf<MapData>, mut each: impl FnMut(&[u8])) -> bool {
    for _ in 0..EVENT_BATCH {
        let Some(item) = ring.next() else {
            return true;
        };
        each(&item);
    }
    false
}

/// Waits for the next wakeup when the ring is empty; otherwise yields and reads on.
async fn settle(
    mut ready: tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>,
    drained: bool,
) {
    if drained {
        ready.clear_ready();
    } else {
        drop(ready);
        tokio::task::yield_now().await;
    }
}

/// The next metrics client; never, when metrics are not served.
async fn accept_metrics(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The next status client; never, when there is no status socket.
async fn accept_status(
    listener: Option<&UnixListener>,
) -> std::io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn summarize(agent: &Agent) {
    let status = agent.status();
    let counters = status["counters"].as_array().cloned().unwrap_or_default();
    if counters.is_empty() {
        log::info!(
            "no clock change attempts since start ({})",
            agent.guard.enforcement.label()
        );
    }
    for c in counters {
        log::info!(
            "attempts: rule={} operation={} verdict={}: {}",
            c["rule"].as_str().unwrap_or("?"),
            c["operation"].as_str().unwrap_or("?"),
            c["verdict"].as_str().unwrap_or("?"),
            c["count"]
        );
    }
    let lost = status["events_lost"].as_u64().unwrap_or(0);
    let thinned = status["events_thinned"].as_u64().unwrap_or(0);
    if lost + thinned > 0 {
        log::warn!(
            "{thinned} detailed events were thinned (over {} per process per second) and {lost} lost (ring buffer full); the counters above are exact",
            agent_common::event::thinning::EVENTS_PER_WINDOW
        );
    }
}

/// `timeguard status`: asks the running agent and prints what it says.
pub fn status(socket: &Path, as_json: bool) -> anyhow::Result<()> {
    let text = crate::control::ask(socket, crate::control::Request::Status)?;
    let v: Value = serde_json::from_str(&text).context("the agent's status is not JSON")?;
    if as_json {
        println!("{v}");
        return Ok(());
    }
    println!(
        "host:        {} (agent started {})",
        v["host"].as_str().unwrap_or("?"),
        v["started"].as_str().unwrap_or("?")
    );
    println!("enforcement: {}", v["enforcement"].as_str().unwrap_or("?"));
    for r in v["enforcement_unavailable"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!("  unavailable: {}", r.as_str().unwrap_or("?"));
    }
    for a in v["attached"].as_array().into_iter().flatten() {
        println!("  attached: {}", a.as_str().unwrap_or("?"));
    }
    for u in v["unobserved"].as_array().into_iter().flatten() {
        println!("  not observed: {}", u.as_str().unwrap_or("?"));
    }
    let p = &v["policy"];
    println!(
        "policy:      \"{}\" generation {} sha256 {}",
        p["name"].as_str().unwrap_or("?"),
        p["generation"],
        p["sha256"].as_str().unwrap_or("?")
    );
    let r = &v["reloads"];
    println!("reloads:     {} ok, {} rejected", r["ok"], r["failed"]);
    for e in r["last_error"].as_array().into_iter().flatten() {
        println!("  last rejection: {}", e.as_str().unwrap_or("?"));
    }
    println!("attempts since start:");
    for c in v["counters"].as_array().into_iter().flatten() {
        println!(
            "  {:<20} {:<10} {:<9} {}",
            c["rule"].as_str().unwrap_or("?"),
            c["operation"].as_str().unwrap_or("?"),
            c["verdict"].as_str().unwrap_or("?"),
            c["count"]
        );
    }
    println!(
        "events thinned: {} (over {} per process per second), lost: {}",
        v["events_thinned"],
        agent_common::event::thinning::EVENTS_PER_WINDOW,
        v["events_lost"]
    );
    Ok(())
}
