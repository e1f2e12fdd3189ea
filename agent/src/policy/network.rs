//! `spec.network`, compiled for the kernel's network guard.

use std::collections::HashSet;

use super::{
    diagnostic::Sink,
    mode_value,
    model::{AddressList, Mode, NetworkSpec},
    CompiledRule, ExeId,
};
use agent_common::{
    net::{daemon, restrict, List, MAX_LIST_ENTRIES, MAX_RATE_PER_SEC},
    ptp::MAX_GRANDMASTERS,
};
use serde_saphyr::{Location, Spanned};

/// A time daemon as the network guard knows it: by its clock rule's name (the rule's id is
/// given when the policy is installed) and executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDaemon {
    pub rule: String,
    pub exe_id: ExeId,
    /// `daemon::*` bits.
    pub flags: u32,
}

/// One `egress` destination: the daemon's rule name, the port (0: any), the v4-mapped
/// address and its prefix length in 128 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEntry {
    pub rule: String,
    pub port: u16,
    pub addr: [u8; 16],
    pub prefix: u32,
}

/// The network policy as the kernel takes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompiledNetwork {
    /// `policy::mode` value.
    pub mode: u32,
    /// Bit `List::restricts` for each address list the policy gives, and `restrict::*`.
    pub restricted: u32,
    /// (list, v4-mapped IPv6 address, prefix length in 128 bits) of the NTP lists.
    pub entries: Vec<(u32, [u8; 16], u32)>,
    pub rate_per_sec: u32,
    pub burst: u32,
    /// `ptp` is given: the PTP guard is attached to interfaces.
    pub ptp: bool,
    pub ptp_domains: [u32; 8],
    pub grandmasters: Vec<[u8; 8]>,
    /// The interfaces PTP is watched on; None: every interface but loopback.
    pub ptp_interfaces: Option<Vec<String>>,
    pub daemons: Vec<NetDaemon>,
    pub egress: Vec<EgressEntry>,
}

/// Checks and compiles one policy's `spec.network`; `rules` are every clock rule of the
/// policy (its files together), which `daemons` and `egress` name.
pub fn compile(
    net: &NetworkSpec,
    policy_mode: Mode,
    rules: &[CompiledRule],
    rule_names: &[&str],
    sink: &mut Sink,
) -> CompiledNetwork {
    let mut out = CompiledNetwork {
        mode: mode_value(net.mode.unwrap_or(policy_mode)),
        ..CompiledNetwork::default()
    };
    if let Some(ntp) = &net.ntp {
        compile_ntp(ntp, &mut out, sink);
    }
    if let Some(ptp) = &net.ptp {
        out.ptp = true;
        if let Some(domains) = &ptp.domains {
            out.restricted |= restrict::PTP_DOMAINS;
            for d in &domains.value {
                let (word, bit) = ((d.value >> 5) as usize, 1u32 << (d.value & 31));
                if out.ptp_domains[word] & bit != 0 {
                    sink.warning(d.referenced, "this domain is listed twice");
                }
                out.ptp_domains[word] |= bit;
            }
        }
        if let Some(gms) = &ptp.grandmasters {
            out.restricted |= restrict::PTP_GRANDMASTERS;
            if gms.value.len() > MAX_GRANDMASTERS {
                sink.error(
                    gms.referenced,
                    format!(
                        "{} grandmasters; a policy may list at most {MAX_GRANDMASTERS}",
                        gms.value.len()
                    ),
                );
            }
            for g in &gms.value {
                if out.grandmasters.contains(&g.value.0) {
                    sink.warning(g.referenced, "this grandmaster is listed twice");
                    continue;
                }
                out.grandmasters.push(g.value.0);
            }
        }
        if let Some(ifs) = &ptp.interfaces {
            for i in &ifs.value {
                let name = &i.value;
                if name.is_empty()
                    || name.len() > 15
                    || name.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control())
                {
                    sink.error(
                        i.referenced,
                        format!("`{name}` is not an interface name (1 to 15 characters, no / or spaces; e.g. eth0)"),
                    );
                }
            }
            out.ptp_interfaces = Some(ifs.value.iter().map(|i| i.value.clone()).collect());
        }
    }
    let mut named = |name: &Spanned<String>, flag: u32, sink: &mut Sink| -> bool {
        if !rule_names.contains(&name.value.as_str()) {
            let hint = match super::diagnostic::did_you_mean(&name.value, rule_names) {
                Some(m) => format!("; did you mean `{m}`?"),
                None if rule_names.is_empty() => {
                    "; add a rule for the daemon's executable to spec.clock.rules first".into()
                }
                None => format!(" (rules: {})", rule_names.join(", ")),
            };
            sink.error(
                name.referenced,
                format!("no clock rule is named `{}`: network daemons are named by their rule in spec.clock.rules{hint}", name.value),
            );
            return false;
        }
        // A rule whose executable is missing here matches nothing (already warned).
        if let Some(r) = rules.iter().find(|r| r.name == name.value) {
            match out.daemons.iter_mut().find(|d| d.rule == r.name) {
                Some(d) => d.flags |= flag,
                None => out.daemons.push(NetDaemon {
                    rule: r.name.clone(),
                    exe_id: r.exe_id,
                    flags: flag,
                }),
            }
        }
        true
    };
    if let Some(daemons) = &net.daemons {
        out.restricted |= restrict::TIME_SOCKETS;
        for d in &daemons.value {
            named(d, daemon::TIME_SOCKETS, sink);
        }
    }
    if let Some(egress) = &net.egress {
        out.restricted |= restrict::EGRESS;
        let mut seen: HashSet<&str> = HashSet::new();
        for e in &egress.value {
            let e = &e.value;
            if !seen.insert(e.daemon.value.as_str()) {
                sink.error(
                    e.daemon.referenced,
                    format!(
                        "`{}` has two egress entries; list all its destinations in one",
                        e.daemon.value
                    ),
                );
                continue;
            }
            if !named(&e.daemon, daemon::EGRESS_LISTED, sink) {
                continue;
            }
            for to in &e.to.value {
                let (addr, prefix) = to.value.net.as_v6();
                let entry = EgressEntry {
                    rule: e.daemon.value.clone(),
                    port: to.value.port.unwrap_or(0),
                    addr,
                    prefix,
                };
                if out.egress.contains(&entry) {
                    sink.warning(to.referenced, "this destination is listed twice");
                    continue;
                }
                out.egress.push(entry);
            }
        }
        if out.egress.len() > MAX_LIST_ENTRIES {
            too_many(
                sink,
                egress.referenced,
                out.egress.len(),
                "egress destinations",
            );
        }
    }
    out
}

fn too_many(sink: &mut Sink, at: Location, n: usize, what: &str) {
    sink.error(
        at,
        format!("{n} {what}; at most {MAX_LIST_ENTRIES} (use networks, e.g. 192.0.2.0/24)"),
    );
}

fn compile_ntp(ntp: &super::model::NtpSpec, out: &mut CompiledNetwork, sink: &mut Sink) {
    let lists: [(u32, &Option<AddressList>); 3] = [
        (List::Servers.code(), &ntp.servers),
        (List::Clients.code(), &ntp.clients),
        (List::Control.code(), &ntp.control),
    ];
    for (which, given) in lists {
        let Some(given) = given else { continue };
        out.restricted |= 1 << which;
        if given.value.len() > MAX_LIST_ENTRIES {
            too_many(sink, given.referenced, given.value.len(), "entries");
            continue;
        }
        for cidr in &given.value {
            let (addr, prefix) = cidr.value.as_v6();
            if out.entries.contains(&(which, addr, prefix)) {
                sink.warning(cidr.referenced, "this address is listed twice");
                continue;
            }
            out.entries.push((which, addr, prefix));
        }
    }
    if let Some(rl) = &ntp.rate_limit {
        let r = rl.value;
        if r.requests_per_second == 0 || r.requests_per_second > MAX_RATE_PER_SEC {
            sink.error(
                rl.referenced,
                format!("rateLimit.requestsPerSecond must be 1 to {MAX_RATE_PER_SEC}; remove rateLimit for no limit"),
            );
        } else if r.burst < 1 || r.burst > MAX_RATE_PER_SEC {
            sink.error(
                rl.referenced,
                format!("rateLimit.burst must be 1 to {MAX_RATE_PER_SEC} (requests a source may send at once)"),
            );
        } else {
            out.rate_per_sec = r.requests_per_second;
            out.burst = r.burst;
        }
    }
}
