//! The network sensor: installing `spec.network` into the kernel's maps, attaching its
//! programs (cgroup_skb and sock_addr on a cgroup, XDP on interfaces; its packet-socket LSM
//! programs attach with the clock's), following interfaces for PTP, its counters, and its
//! records (`record`).

mod record;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use agent_common::{
    alert::Alert,
    maps as map_names,
    net::{
        AddrKey, Daemon, DaemonKey, Kind, List, NetCounterKey, NetPolicy, NtpMode, Reason, Service,
        ADDR_KEY_FIXED_BITS,
    },
    policy::Verdict,
    ptp::{GrandmasterKey, Message},
};
use anyhow::Context as _;
use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap};

pub use record::{net_json, net_record, NetRecord};

use super::Prepared;
use crate::{
    bpf::{
        attach::{AttachPoint, Attached, Link, Target},
        maps,
        object::Object,
        program::{self, Hook, Sensor},
    },
    policy::{network::CompiledNetwork, CompiledRule},
};

/// The cgroup v2 hierarchy's root, where the guard sees every socket of the host.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(at))
    })
}

/// The resolver's configuration, read at each policy install.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// How many name servers the resolver uses (glibc's MAXNS); later ones are never asked.
const NAME_SERVERS_USED: usize = 3;

/// The name servers of a `resolv.conf`, as the resolver uses them: the first three
/// `nameserver` addresses (v4-mapped for IPv4; an IPv6 zone `%eth0` left off), in order.
pub fn name_servers(text: &str) -> Vec<[u8; 16]> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(words.next()?)
        })
        .filter_map(|a| {
            let a = a.split('%').next().unwrap_or(a);
            match a.parse::<std::net::IpAddr>().ok()? {
                std::net::IpAddr::V4(v4) => Some(agent_common::net::v4_mapped(v4.octets())),
                std::net::IpAddr::V6(v6) => Some(v6.octets()),
            }
        })
        .take(NAME_SERVERS_USED)
        .collect()
}

/// This host's name servers: their replies from port 53 to a time daemon's socket are its
/// name lookups; from anywhere else, the socket's datagrams are NTP, held to the lists.
fn host_name_servers() -> Vec<[u8; 16]> {
    let servers = match std::fs::read_to_string(RESOLV_CONF) {
        Ok(text) => name_servers(&text),
        Err(e) => {
            log::warn!("{RESOLV_CONF}: {e}: no name server is counted, and a time daemon's name lookups are held to the NTP lists");
            return Vec::new();
        }
    };
    let shown: Vec<String> = servers.iter().map(|a| record::address(4, a)).collect();
    log::info!(
        "name servers (their answers from port 53 to a time daemon's socket are not NTP; the rest is, from any port): {}",
        if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
    );
    servers
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

fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Where the PTP guard is attached: interface → its index and link.
#[derive(Default)]
pub struct PtpLinks {
    links: BTreeMap<String, (u32, Link)>,
    /// Interfaces the guard could not attach to, and why.
    pub refused: BTreeMap<String, String>,
}

impl PtpLinks {
    pub fn attached(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }
}

pub struct Network {
    addrs: LpmTrie<MapData, AddrKey, u8>,
    daemons: HashMap<MapData, DaemonKey, Daemon>,
    grandmasters: HashMap<MapData, GrandmasterKey, u8>,
    policies: Array<MapData, NetPolicy>,
    counters: PerCpuHashMap<MapData, NetCounterKey, u64>,
    dropped: PerCpuArray<MapData, u64>,
    /// The cgroup the guard is attached to (None: not yet).
    cgroup: Option<String>,
    ptp: PtpLinks,
}

impl Network {
    /// Takes the network's maps. Which slot is in force is the clock's index, shared
    /// (`Clock::switch`).
    pub fn new(object: &mut Object) -> anyhow::Result<Self> {
        Ok(Network {
            addrs: object.take_map(map_names::NET_ADDRS)?,
            daemons: object.take_map(map_names::NET_DAEMONS)?,
            grandmasters: object.take_map(map_names::PTP_GRANDMASTERS)?,
            policies: object.take_map(map_names::NET_POLICY)?,
            counters: object.take_map(map_names::NET_COUNTERS)?,
            dropped: object.take_map(map_names::NET_EVENTS_DROPPED)?,
            cgroup: None,
            ptp: PtpLinks::default(),
        })
    }

    /// Writes a network policy (or none) into the slot the clock's policy was prepared in
    /// (`Clock::prepare`); it comes into force with it (`Clock::switch`). `rules` give the
    /// daemons' rule ids.
    pub fn prepare(
        &mut self,
        net: Option<&CompiledNetwork>,
        rules: &[CompiledRule],
        prepared: &Prepared,
    ) -> anyhow::Result<()> {
        let (slot, generation) = (prepared.slot, prepared.generation);
        let rule_id = |name: &str| rules.iter().find(|r| r.name == name).map(|r| r.id);
        let stale: Vec<Key<AddrKey>> = self
            .addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().slot == slot)
            .collect();
        for k in stale {
            self.addrs
                .remove(&k)
                .context("clearing the inactive network slot")?;
        }
        let ntp = net.map(|n| &n.entries[..]).unwrap_or_default();
        let ntp = ntp.iter().map(|(l, a, p)| (*l, 0, 0, *a, *p));
        // Only a policy with NTP lists holds a time daemon's sockets to them.
        let resolvers = match net {
            Some(n) if !n.entries.is_empty() => host_name_servers(),
            _ => Vec::new(),
        };
        let resolvers = resolvers
            .into_iter()
            .map(|a| (List::NameServers.code(), 0, 0, a, 128));
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
        for (which, scope, port, addr, prefix) in ntp.chain(egress).chain(resolvers) {
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
            self.addrs
                .insert(&key, 1, 0)
                .context("installing an address list")?;
        }
        maps::clear_slot(&mut self.daemons, slot, |k| k.slot, "network")?;
        for d in net.map(|n| &n.daemons[..]).unwrap_or_default() {
            let Some(id) = rule_id(&d.rule) else { continue };
            let key = DaemonKey {
                slot,
                _pad: 0,
                dev: d.exe_id.dev,
                ino: d.exe_id.ino,
            };
            let daemon = Daemon {
                rule_id: id,
                flags: d.flags,
            };
            self.daemons
                .insert(key, daemon, 0)
                .with_context(|| format!("installing the network daemon `{}`", d.rule))?;
        }
        maps::clear_slot(&mut self.grandmasters, slot, |k| k.slot, "network")?;
        for identity in net.map(|n| &n.grandmasters[..]).unwrap_or_default() {
            let key = GrandmasterKey {
                slot,
                _pad: 0,
                identity: *identity,
            };
            self.grandmasters
                .insert(key, 1, 0)
                .context("installing the PTP grandmasters")?;
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
        self.policies
            .set(slot, policy, 0)
            .context("writing the network policy")
    }

    /// Attaches the NTP ingress guard and the socket guards to a cgroup v2 directory, once,
    /// adding them to `attached`; whether they were attached now (false: they already were).
    pub fn attach(
        &mut self,
        object: &mut Object,
        cgroup: &Path,
        attached: &mut Vec<Attached>,
    ) -> anyhow::Result<bool> {
        if self.cgroup.is_some() {
            return Ok(false);
        }
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("opening the cgroup {}", cgroup.display()))?;
        let on_cgroup = program::of(Sensor::Network)
            .filter(|s| matches!(s.hook, Hook::CgroupSkbIngress | Hook::CgroupSockAddr));
        for spec in on_cgroup {
            let target = Target::Cgroup {
                path: cgroup,
                dir: &dir,
            };
            attached.push(object.attach(spec, target)?.attached);
        }
        self.cgroup = Some(cgroup.display().to_string());
        Ok(true)
    }

    /// The cgroup the guard is attached to (None: not yet).
    pub fn attached_cgroup(&self) -> Option<&str> {
        self.cgroup.as_deref()
    }

    /// Attaches the PTP guard to each interface in `wanted` (None: every interface but
    /// loopback) that is there and not yet guarded, and forgets interfaces that went away,
    /// keeping `attached` in step. Called at each policy install and watch tick, so new
    /// interfaces are followed.
    pub fn follow_ptp_interfaces(
        &mut self,
        object: &mut Object,
        wanted: Option<&[String]>,
        attached: &mut Vec<Attached>,
    ) -> Vec<String> {
        let present = interfaces();
        let mut attached_now = Vec::new();
        let targets: Vec<String> = match wanted {
            Some(w) => w.iter().filter(|i| present.contains(i)).cloned().collect(),
            None => present.clone(),
        };
        let gone: Vec<String> = self
            .ptp
            .links
            .keys()
            .filter(|name| !targets.contains(name))
            .cloned()
            .collect();
        for name in gone {
            attached.retain(
                |a| !matches!(&a.point, AttachPoint::Xdp { interface, .. } if *interface == name),
            );
            // The interface is gone or no longer wanted; its link may be too.
            if let Some((_, link)) = self.ptp.links.remove(&name) {
                object.release(link);
            }
        }
        let Some(spec) = program::of(Sensor::Network).find(|s| s.hook == Hook::Xdp) else {
            return attached_now;
        };
        for name in targets {
            let index = interface_index(&name);
            match self.ptp.links.get(&name) {
                Some((i, _)) if Some(*i) == index => continue,
                _ => {}
            }
            let Some(index) = index else { continue };
            let target = Target::Interface { name: &name, index };
            match object.attach(spec, target) {
                Ok(a) => {
                    attached.push(a.attached);
                    self.ptp.links.insert(name.clone(), (index, a.link));
                    self.ptp.refused.remove(&name);
                    attached_now.push(name);
                }
                Err(e) => {
                    self.ptp.refused.insert(name, format!("{e:#}"));
                }
            }
        }
        attached_now
    }

    /// The interfaces the PTP guard is on, and those it could not attach to.
    pub fn ptp_links(&self) -> &PtpLinks {
        &self.ptp
    }

    /// Exact network counters per (kind, detail, verdict, reason), summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Vec<(NetCounterKey, u64)>> {
        let mut out = maps::summed(&self.counters, "network counters")?;
        out.sort_by_key(|(k, _)| (k.kind, k.detail, k.verdict, k.reason));
        Ok(out)
    }

    /// Network records lost (ring buffer full) and thinned (over the budget).
    pub fn events_dropped(&self) -> anyhow::Result<(u64, u64)> {
        maps::dropped(&self.dropped)
    }
}

/// The labels of one network counter: (series, what, verdict, reason), where series is
/// `ntp`, `nts_ke`, `ptp` or `socket` and what is the NTP mode, the PTP message type, or
/// the socket action and service.
pub fn counter_labels(k: &NetCounterKey) -> (&'static str, String, &'static str, &'static str) {
    let what = match Kind::from_code(k.kind) {
        Some(Kind::Ntp | Kind::NtsKe) => NtpMode::name_of(k.detail).to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_servers_are_the_resolvers_first_three() {
        let conf = "# generated\nsearch example.org\nnameserver 192.0.2.53\n nameserver\t2001:db8::53\nnameserver fe80::1%eth0\nnameserver 198.51.100.53\nnameserver not-an-address\noptions edns0\n";
        let got: Vec<String> = name_servers(conf)
            .iter()
            .map(|a| record::address(4, a))
            .collect();
        assert_eq!(got, ["192.0.2.53", "2001:db8::53", "fe80::1"]);
        assert!(name_servers("search example.org\n").is_empty());
        // A comment or another keyword is no name server.
        assert!(name_servers("#nameserver 192.0.2.1\nnameservers 192.0.2.2\n").is_empty());
    }
}
