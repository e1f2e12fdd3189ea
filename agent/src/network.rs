//! The network guard from the agent's side: installing `spec.network` into the kernel's maps,
//! attaching the cgroup_skb program, and turning packet records into audit records.

use std::path::{Path, PathBuf};

use agent_common::{
    net::{
        mode as ntp_mode, reason, AddrKey, NetCounterKey, NetEvent, NetPolicy, ADDR_KEY_FIXED_BITS,
    },
    policy::{verdict, SLOTS},
};
use anyhow::{anyhow, Context as _};
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, PerCpuHashMap, RingBuf},
    programs::{cgroup_skb::CgroupSkbAttachType, CgroupAttachMode, CgroupSkb},
};
use serde_json::{json, Value};

use crate::{events, loader::Guard, policy::network::CompiledNetwork};

/// The cgroup v2 hierarchy's root, where the guard sees every socket of the host.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(at))
    })
}

impl Guard {
    /// Installs a network policy (or none) under `generation`: fills the slot not in force,
    /// then flips, as for the clock policy.
    pub fn install_network(
        &mut self,
        net: Option<&CompiledNetwork>,
        generation: u32,
    ) -> anyhow::Result<()> {
        let slot = (self.net_active_slot + 1) % SLOTS;
        {
            let mut addrs: LpmTrie<_, AddrKey, u8> = LpmTrie::try_from(self.map_mut("NET_ADDRS")?)?;
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
            for (which, addr, prefix) in net.map(|n| &n.entries[..]).unwrap_or_default() {
                let key = Key::new(
                    ADDR_KEY_FIXED_BITS + prefix,
                    AddrKey {
                        slot,
                        list: *which,
                        addr: *addr,
                    },
                );
                addrs
                    .insert(&key, 1, 0)
                    .context("installing an address list")?;
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
            },
            None => NetPolicy::default(),
        };
        let mut policies: Array<_, NetPolicy> = Array::try_from(self.map_mut("NET_POLICY")?)?;
        policies
            .set(slot, policy, 0)
            .context("writing the network policy")?;
        let mut active: Array<_, u32> = Array::try_from(self.map_mut("NET_ACTIVE_SLOT")?)?;
        active
            .set(0, slot, 0)
            .context("switching the network policy in force")?;
        self.net_active_slot = slot;
        Ok(())
    }

    /// Attaches the NTP ingress guard to a cgroup v2 directory, once; whether it was
    /// attached now (false: it already was).
    pub fn attach_network(&mut self, cgroup: &Path) -> anyhow::Result<bool> {
        if self.network_attached.is_some() {
            return Ok(false);
        }
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("opening the cgroup {}", cgroup.display()))?;
        let prog: &mut CgroupSkb = self
            .bpf
            .program_mut("ntp_ingress")
            .ok_or_else(|| anyhow!("program ntp_ingress missing from the embedded object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().context("loading ntp_ingress")?;
        }
        prog.attach(dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .with_context(|| format!("attaching ntp_ingress to {}", cgroup.display()))?;
        let at = format!("ntp_ingress (cgroup_skb/ingress on {})", cgroup.display());
        self.attached.push(at.clone());
        self.network_attached = Some(at);
        Ok(true)
    }

    /// The ring buffer of packet records (can be taken once).
    pub fn take_net_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .bpf
            .take_map("NET_EVENTS")
            .ok_or_else(|| anyhow!("the packet event ring buffer was already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Exact packet counters per (NTP mode, verdict, reason), summed over CPUs.
    pub fn net_counters(&self) -> anyhow::Result<Vec<(NetCounterKey, u64)>> {
        let map = self
            .bpf
            .map("NET_COUNTERS")
            .ok_or_else(|| anyhow!("map NET_COUNTERS missing"))?;
        let counters: PerCpuHashMap<_, NetCounterKey, u64> = PerCpuHashMap::try_from(map)?;
        let mut out = Vec::new();
        for entry in counters.iter() {
            let (key, values) = entry.context("reading the packet counters")?;
            out.push((key, values.iter().sum()));
        }
        out.sort_by_key(|(k, _)| (k.mode, k.verdict, k.reason));
        Ok(out)
    }

    /// Packet records lost (ring buffer full) and thinned (over the budget).
    pub fn net_events_dropped(&self) -> anyhow::Result<(u64, u64)> {
        Ok((
            self.per_cpu_at("NET_EVENTS_DROPPED", 0)?,
            self.per_cpu_at("NET_EVENTS_DROPPED", 1)?,
        ))
    }
}

/// Copies a ring buffer record into a packet event, refusing records of the wrong size.
pub fn parse(bytes: &[u8]) -> Option<NetEvent> {
    if bytes.len() < std::mem::size_of::<NetEvent>() {
        return None;
    }
    // SAFETY: the length is checked, NetEvent is plain data, and read_unaligned copies.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const NetEvent) })
}

fn address(family: u8, bytes: &[u8; 16]) -> String {
    let v6 = std::net::Ipv6Addr::from(*bytes);
    match (family, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => v4.to_string(),
        _ => v6.to_string(),
    }
}

/// One packet decision as a JSON record.
pub fn packet_json(ev: &NetEvent, policy: &str, host: &str) -> Value {
    let n = &ev.ntp;
    let mut ntp = json!({
        "version": n.version,
        "mode": ntp_mode::name(n.mode),
        "leap": n.leap,
    });
    if n.mode <= ntp_mode::BROADCAST {
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
    if ev.alert == agent_common::net::alert::UPSTREAM_CHANGED {
        ntp["previous"] = json!({"stratum": ev.previous_stratum, "leap": ev.previous_leap});
    }
    json!({
        "time": events::rfc3339(events::wall_time(ev.tai_ns)),
        "boot_ns": ev.boot_ns,
        "host": host,
        "kind": "ntp",
        "alert": agent_common::net::alert::name(ev.alert),
        "verdict": verdict::name(ev.verdict),
        "reason": reason::name(ev.reason),
        "policy": policy,
        "generation": ev.generation,
        "packet": {
            "src": address(ev.family, &ev.src),
            "sport": ev.sport,
            "dst": address(ev.family, &ev.dst),
            "dport": ev.dport,
            "len": ev.len,
        },
        "ntp": ntp,
    })
}
