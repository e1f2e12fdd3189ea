//! The network guard from the agent's side: installing `spec.network` into the kernel's maps,
//! attaching its programs (cgroup_skb and sock_addr on a cgroup, XDP on interfaces, LSM for
//! packet sockets), and turning network records into audit records.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use agent_common::{
    alert::Alert,
    maps::{self, Dropped},
    net::{
        AddrKey, Daemon, DaemonKey, Kind, List, NetCounterKey, NetEvent, NetPolicy, NtpMode,
        Reason, Service, ADDR_KEY_FIXED_BITS,
    },
    policy::{Verdict, SLOTS},
    ptp::{GrandmasterKey, Message},
};
use anyhow::{anyhow, Context as _};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuHashMap},
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::FdLink, xdp::XdpLinkId, CgroupAttachMode,
        CgroupSkb, CgroupSockAddr, Xdp, XdpMode,
    },
};
use serde_json::{json, Value};

use crate::{
    events,
    loader::Guard,
    pins::link_key,
    policy::{network::CompiledNetwork, CompiledRule, ExeId},
};

/// The sock_addr programs: time ports, and where time daemons connect.
const SOCK_ADDR_PROGRAMS: [&str; 6] = [
    "time_bind4",
    "time_bind6",
    "time_connect4",
    "time_connect6",
    "time_sendmsg4",
    "time_sendmsg6",
];

/// Every program of the network guard but the LSM ones, for status and metrics.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    std::iter::once("ntp_ingress")
        .chain(SOCK_ADDR_PROGRAMS)
        .chain(std::iter::once("ptp_ingress"))
}

/// The cgroup v2 hierarchy's root, where the guard sees every socket of the host.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(at))
    })
}

/// The interfaces of the agent's network namespace, loopback left out.
pub fn interfaces() -> Vec<String> {
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .filter(|n| n != "lo")
        .collect()
}

/// How the PTP guard holds an interface's XDP link.
enum PtpLink {
    /// Pinned under this key: it outlives the agent.
    Pinned(String),
    /// Held by this agent only: the kernel refused to pin it.
    Held(XdpLinkId),
}

/// Where the PTP guard is attached: interface → its index and link.
#[derive(Default)]
pub struct PtpLinks {
    links: BTreeMap<String, (u32, PtpLink)>,
    /// Interfaces the guard could not attach to, and why.
    pub refused: BTreeMap<String, String>,
}

impl PtpLinks {
    pub fn attached(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }
}

impl Guard {
    /// Installs a network policy (or none) under `generation`: fills the slot not in force,
    /// then flips, as for the clock policy. `rules` give the daemons' rule ids.
    pub fn install_network(
        &mut self,
        net: Option<&CompiledNetwork>,
        rules: &[CompiledRule],
        generation: u32,
    ) -> anyhow::Result<()> {
        let slot = (self.net_active_slot + 1) % SLOTS;
        let rule_id = |name: &str| rules.iter().find(|r| r.name == name).map(|r| r.id);
        {
            let mut addrs: LpmTrie<_, AddrKey, u8> =
                LpmTrie::try_from(self.map_mut(maps::NET_ADDRS)?)?;
            let stale: Vec<Key<AddrKey>> = addrs
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.data().slot == slot)
                .collect();
            for k in stale {
                addrs
                    .remove(&k)
                    .context("clearing the inactive network slot")?;
            }
            let ntp = net.map(|n| &n.entries[..]).unwrap_or_default();
            let ntp = ntp.iter().map(|(l, a, p)| (*l, 0, 0, *a, *p));
            let egress = net.map(|n| &n.egress[..]).unwrap_or_default();
            let egress = egress.iter().filter_map(|e| {
                Some((
                    List::Egress.code(),
                    rule_id(&e.rule)?,
                    e.port,
                    e.addr,
                    e.prefix,
                ))
            });
            for (which, scope, port, addr, prefix) in ntp.chain(egress) {
                let key = Key::new(
                    ADDR_KEY_FIXED_BITS + prefix,
                    AddrKey {
                        slot,
                        list: which,
                        scope,
                        port: port.into(),
                        addr,
                    },
                );
                addrs
                    .insert(&key, 1, 0)
                    .context("installing an address list")?;
            }
        }
        {
            let mut daemons: HashMap<_, DaemonKey, Daemon> =
                HashMap::try_from(self.map_mut(maps::NET_DAEMONS)?)?;
            clear_slot(&mut daemons, slot, |k| k.slot)?;
            for d in net.map(|n| &n.daemons[..]).unwrap_or_default() {
                let Some(id) = rule_id(&d.rule) else { continue };
                let key = DaemonKey {
                    slot,
                    _pad: 0,
                    dev: d.exe_id.dev,
                    ino: d.exe_id.ino,
                };
                daemons
                    .insert(
                        key,
                        Daemon {
                            rule_id: id,
                            flags: d.flags,
                        },
                        0,
                    )
                    .with_context(|| format!("installing the network daemon `{}`", d.rule))?;
            }
        }
        {
            let mut gms: HashMap<_, GrandmasterKey, u8> =
                HashMap::try_from(self.map_mut(maps::PTP_GRANDMASTERS)?)?;
            clear_slot(&mut gms, slot, |k| k.slot)?;
            for identity in net.map(|n| &n.grandmasters[..]).unwrap_or_default() {
                let key = GrandmasterKey {
                    slot,
                    _pad: 0,
                    identity: *identity,
                };
                gms.insert(key, 1, 0)
                    .context("installing the PTP grandmasters")?;
            }
        }
        let policy = match net {
            Some(n) => NetPolicy {
                generation,
                restricted: n.restricted,
                mode: n.mode,
                rate_per_sec: n.rate_per_sec,
                burst: n.burst,
                _pad: 0,
                ptp_domains: n.ptp_domains,
            },
            None => NetPolicy::default(),
        };
        let mut policies: Array<_, NetPolicy> = Array::try_from(self.map_mut(maps::NET_POLICY)?)?;
        policies
            .set(slot, policy, 0)
            .context("writing the network policy")?;
        let mut active: Array<_, u32> = Array::try_from(self.map_mut(maps::NET_ACTIVE_SLOT)?)?;
        active
            .set(maps::ONLY, slot, 0)
            .context("switching the network policy in force")?;
        self.net_active_slot = slot;
        Ok(())
    }

    /// Attaches the NTP ingress guard and the socket guards to a cgroup v2 directory, once;
    /// whether they were attached now (false: they already were).
    pub fn attach_network(&mut self, cgroup: &Path) -> anyhow::Result<bool> {
        if self.network_attached.is_some() {
            return Ok(false);
        }
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("opening the cgroup {}", cgroup.display()))?;
        let target = format!("cgroup{}", cgroup.display());
        // Attached as links: other programs on the same cgroup (systemd's, another
        // agent's) keep running, and a packet passes only if every one of them lets it.
        let key = link_key("ntp_ingress", &target);
        if !self.pins.adopt(&key) {
            let prog: &mut CgroupSkb = self
                .bpf
                .program_mut("ntp_ingress")
                .ok_or_else(|| anyhow!("program ntp_ingress missing from the embedded object"))?
                .try_into()?;
            if prog.fd().is_err() {
                prog.load().context("loading ntp_ingress")?;
            }
            let id = prog
                .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                .with_context(|| format!("attaching ntp_ingress to {}", cgroup.display()))?;
            let link = FdLink::try_from(prog.take_link(id)?)
                .context("the kernel attached ntp_ingress without a link to pin")?;
            self.pins.keep(&key, link)?;
        }
        self.attached.push(format!(
            "ntp_ingress (cgroup_skb/ingress on {})",
            cgroup.display()
        ));
        for name in SOCK_ADDR_PROGRAMS {
            let key = link_key(name, &target);
            if !self.pins.adopt(&key) {
                let prog: &mut CgroupSockAddr = self
                    .bpf
                    .program_mut(name)
                    .ok_or_else(|| anyhow!("program {name} missing from the embedded object"))?
                    .try_into()?;
                if prog.fd().is_err() {
                    prog.load().with_context(|| format!("loading {name}"))?;
                }
                let id = prog
                    .attach(&dir, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
                let link = FdLink::try_from(prog.take_link(id)?)
                    .with_context(|| format!("the kernel attached {name} without a link to pin"))?;
                self.pins.keep(&key, link)?;
            }
            self.attached
                .push(format!("{name} (cgroup/sock_addr on {})", cgroup.display()));
        }
        self.network_attached = Some(cgroup.display().to_string());
        Ok(true)
    }

    /// Attaches the PTP guard to each interface in `wanted` (None: every interface but
    /// loopback) that is there and not yet guarded, and forgets interfaces that went away.
    /// Called at each policy install and watch tick, so new interfaces are followed.
    pub fn follow_ptp_interfaces(&mut self, wanted: Option<&[String]>) -> Vec<String> {
        let present = interfaces();
        let mut attached_now = Vec::new();
        let targets: Vec<String> = match wanted {
            Some(w) => w.iter().filter(|i| present.contains(i)).cloned().collect(),
            None => present.clone(),
        };
        let gone: Vec<String> = self
            .ptp_links
            .links
            .keys()
            .filter(|name| !targets.contains(name))
            .cloned()
            .collect();
        for name in gone {
            self.attached
                .retain(|a| a != &format!("ptp_ingress (xdp on {name})"));
            // The interface is gone or no longer wanted; its link may be too.
            match self.ptp_links.links.remove(&name) {
                Some((_, PtpLink::Pinned(key))) => self.pins.release(&key),
                Some((_, PtpLink::Held(id))) => {
                    if let Some(Ok(p)) = self
                        .bpf
                        .program_mut("ptp_ingress")
                        .map(<&mut Xdp>::try_from)
                    {
                        let _ = p.detach(id);
                    }
                }
                None => {}
            }
        }
        for name in targets {
            let index = interface_index(&name);
            match self.ptp_links.links.get(&name) {
                Some((i, _)) if Some(*i) == index => continue,
                _ => {}
            }
            let Some(index) = index else { continue };
            match self.attach_ptp(&name, index) {
                Ok(link) => {
                    self.attached.push(format!("ptp_ingress (xdp on {name})"));
                    self.ptp_links.links.insert(name.clone(), (index, link));
                    self.ptp_links.refused.remove(&name);
                    attached_now.push(name);
                }
                Err(e) => {
                    self.ptp_links.refused.insert(name, format!("{e:#}"));
                }
            }
        }
        attached_now
    }

    /// Attaches the PTP guard to one interface (or takes over its pinned link).
    fn attach_ptp(&mut self, interface: &str, index: u32) -> anyhow::Result<PtpLink> {
        let key = link_key("ptp_ingress", &format!("xdp.{interface}.{index}"));
        if self.pins.adopt(&key) {
            return Ok(PtpLink::Pinned(key));
        }
        let prog: &mut Xdp = self
            .bpf
            .program_mut("ptp_ingress")
            .ok_or_else(|| anyhow!("program ptp_ingress missing from the embedded object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().context("loading ptp_ingress")?;
        }
        // The driver's own XDP where it has one, the kernel's generic XDP otherwise; both
        // run before any packet socket sees the frame.
        let attach = |prog: &mut Xdp| {
            prog.attach_to_if_index(index, XdpMode::Default)
                .with_context(|| format!("attaching ptp_ingress (XDP) to {interface}"))
        };
        let id = attach(prog)?;
        let link = FdLink::try_from(prog.take_link(id)?)
            .with_context(|| format!("the kernel attached XDP to {interface} without a link"))?;
        match self.pins.keep(&key, link) {
            Ok(()) => Ok(PtpLink::Pinned(key)),
            Err(e) => {
                // A kernel that refuses the pin: the guard still holds while this agent runs.
                log::warn!("{e:#}; the PTP guard on {interface} holds only while this agent runs");
                let prog: &mut Xdp = self
                    .bpf
                    .program_mut("ptp_ingress")
                    .ok_or_else(|| anyhow!("program ptp_ingress missing"))?
                    .try_into()?;
                Ok(PtpLink::Held(attach(prog)?))
            }
        }
    }

    /// The interfaces the PTP guard is on, and those it could not attach to.
    pub fn ptp_links(&self) -> &PtpLinks {
        &self.ptp_links
    }

    /// Exact network counters per (kind, detail, verdict, reason), summed over CPUs.
    pub fn net_counters(&self) -> anyhow::Result<Vec<(NetCounterKey, u64)>> {
        let map = self.map(maps::NET_COUNTERS)?;
        let counters: PerCpuHashMap<_, NetCounterKey, u64> = PerCpuHashMap::try_from(map)?;
        let mut out = Vec::new();
        for entry in counters.iter() {
            let (key, values) = entry.context("reading the network counters")?;
            out.push((key, values.iter().sum()));
        }
        out.sort_by_key(|(k, _)| (k.kind, k.detail, k.verdict, k.reason));
        Ok(out)
    }

    /// Network records lost (ring buffer full) and thinned (over the budget).
    pub fn net_events_dropped(&self) -> anyhow::Result<(u64, u64)> {
        Ok((
            self.per_cpu_at(maps::NET_EVENTS_DROPPED, Dropped::Lost.index())?,
            self.per_cpu_at(maps::NET_EVENTS_DROPPED, Dropped::Thinned.index())?,
        ))
    }
}

/// Removes a map's entries of one policy slot.
fn clear_slot<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<&mut aya::maps::MapData, K, V>,
    slot: u32,
    slot_of: impl Fn(&K) -> u32,
) -> anyhow::Result<()> {
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| slot_of(k) == slot)
        .collect();
    for k in stale {
        map.remove(&k)
            .context("clearing the inactive network slot")?;
    }
    Ok(())
}

fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The labels of one network counter: (series, what, verdict, reason), where series is
/// `ntp`, `nts_ke`, `ptp` or `socket` and what is the NTP mode, the PTP message type, or
/// the socket action and service.
pub fn counter_labels(k: &NetCounterKey) -> (&'static str, String, &'static str, &'static str) {
    let what = match Kind::from_code(k.kind) {
        Some(Kind::Ntp) => NtpMode::name_of(k.detail).to_string(),
        Some(Kind::NtsKe) => NtpMode::name_of(k.detail).to_string(),
        Some(Kind::Ptp) => Message::name_of(k.detail).to_string(),
        Some(Kind::RawSocket) => "ptp".to_string(),
        _ => Service::name_of(k.detail).to_string(),
    };
    (
        Kind::name_of(k.kind),
        what,
        Verdict::name_of(k.verdict),
        Reason::name_of(k.reason),
    )
}

/// An alert in an operator's words for its kind of record: a PTP "new source" is a new
/// grandmaster.
pub fn alert_label(k: u8, a: u8) -> &'static str {
    match (Kind::from_code(k), Alert::from_code(a)) {
        (Some(Kind::Ptp), Some(Alert::NewSource)) => "new_grandmaster",
        (Some(Kind::Ptp), Some(Alert::UpstreamChanged)) => "grandmaster_changed",
        _ => Alert::name_of(a),
    }
}

fn address(family: u8, bytes: &[u8; 16]) -> String {
    let v6 = std::net::Ipv6Addr::from(*bytes);
    match (family, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => v4.to_string(),
        _ => v6.to_string(),
    }
}

fn clock_identity(id: &[u8; 8]) -> String {
    crate::policy::model::ClockIdentity(*id).to_string()
}

/// One network decision as a JSON record. `rule_name` names a daemon's rule by its id.
pub fn net_json(
    ev: &NetEvent,
    policy: &str,
    host: &str,
    rule_name: &dyn Fn(u32) -> String,
) -> Value {
    let mut record = json!({
        "time": events::rfc3339(events::wall_time(ev.tai_ns)),
        "boot_ns": ev.boot_ns,
        "host": host,
        "kind": Kind::name_of(ev.kind),
        "alert": alert_label(ev.kind, ev.alert),
        "verdict": Verdict::name_of(ev.verdict),
        "reason": Reason::name_of(ev.reason),
        "policy": policy,
        "generation": ev.generation,
    });
    match Kind::from_code(ev.kind) {
        Some(Kind::Ntp | Kind::NtsKe) => {
            record["packet"] = packet(ev);
            record["ntp"] = ntp_json(ev);
        }
        Some(Kind::Ptp) => {
            if ev.family != 0 {
                record["packet"] = packet(ev);
            } else {
                record["packet"] = json!({"transport": "ethernet", "len": ev.len});
            }
            record["ptp"] = ptp_json(ev);
        }
        _ => {
            let o = &ev.caller;
            let exe = events::exe_path(o.tgid);
            record["who"] = json!(events::Who::new(
                (o.pid, o.tgid),
                (o.uid, o.gid),
                &o.comm,
                exe.as_deref(),
                ExeId {
                    dev: o.exe_dev,
                    ino: o.exe_ino
                },
            ));
            record["who"]["daemon"] = json!((ev.rule_id != 0).then(|| rule_name(ev.rule_id)));
            record["socket"] = if ev.kind == Kind::RawSocket.code() {
                json!({"family": "packet", "protocol": format!("{:#06x}", ev.protocol)})
            } else {
                json!({
                    "protocol": match ev.protocol { 6 => "tcp", 17 => "udp", _ => "other" },
                    "service": Service::name_of(ev.service),
                    "address": address(ev.family, &ev.dst),
                    "port": ev.dport,
                })
            };
        }
    }
    record
}

fn packet(ev: &NetEvent) -> Value {
    json!({
        "src": address(ev.family, &ev.src),
        "sport": ev.sport,
        "dst": address(ev.family, &ev.dst),
        "dport": ev.dport,
        "len": ev.len,
    })
}

fn ntp_json(ev: &NetEvent) -> Value {
    let n = &ev.ntp;
    let mut ntp = json!({
        "version": n.version,
        "mode": NtpMode::name_of(n.mode),
        "leap": n.leap,
    });
    if ev.kind == Kind::NtsKe.code() {
        return json!({"nts_ke": if n.mode == NtpMode::Client.code() { "client opening" } else { "server answering" }});
    }
    if n.mode <= NtpMode::Broadcast.code() {
        ntp["stratum"] = json!(n.stratum);
        ntp["poll"] = json!(n.poll);
        ntp["refid"] = if n.stratum == 0 || n.stratum == 1 {
            json!(String::from_utf8_lossy(&n.refid).trim_end_matches('\0'))
        } else {
            json!(std::net::Ipv4Addr::from(n.refid).to_string())
        };
        if agent_common::net::is_kiss_of_death(n) {
            ntp["kiss_of_death"] = ntp["refid"].clone();
        }
    }
    if ev.alert == Alert::UpstreamChanged.code() {
        ntp["previous"] = json!({"stratum": ev.previous_stratum, "leap": ev.previous_leap});
    }
    ntp
}

fn ptp_json(ev: &NetEvent) -> Value {
    let p = &ev.ptp;
    let mut out = json!({
        "message": Message::name_of(p.message_type),
        "version": p.version,
        "domain": p.domain,
        "source": format!("{}-{}", clock_identity(&p.source), p.source_port),
    });
    if p.announce != 0 {
        out["grandmaster"] = json!({
            "identity": clock_identity(&p.grandmaster),
            "priority1": p.priority1,
            "clock_class": p.clock_class,
            "priority2": p.priority2,
            "utc_offset": p.utc_offset,
            "leap61": p.flags & agent_common::ptp::flags::LEAP61 != 0,
            "leap59": p.flags & agent_common::ptp::flags::LEAP59 != 0,
            "steps_removed": p.steps_removed,
        });
    }
    if ev.alert == Alert::UpstreamChanged.code() {
        let b = &ev.previous_grandmaster;
        out["previous"] = json!({
            "priority1": b.priority1,
            "clock_class": b.clock_class,
            "utc_offset": b.utc_offset,
            "leap61": b.leap & agent_common::ptp::flags::LEAP61 != 0,
            "leap59": b.leap & agent_common::ptp::flags::LEAP59 != 0,
        });
    }
    out
}
