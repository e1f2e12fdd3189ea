//! `spec.network`, compiled for the kernel's network guard.

use super::{
    diagnostic::Sink,
    mode_value,
    model::{AddressList, Mode, NetworkSpec},
};
use agent_common::net::{list, MAX_LIST_ENTRIES, MAX_RATE_PER_SEC};

/// The network policy as the kernel takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledNetwork {
    /// `policy::mode` value.
    pub mode: u32,
    /// Bit `1 << list::X` for each list the policy gives.
    pub restricted: u32,
    /// (list, v4-mapped IPv6 address, prefix length in 128 bits).
    pub entries: Vec<(u32, [u8; 16], u32)>,
    pub rate_per_sec: u32,
    pub burst: u32,
}

/// Checks and compiles one policy's `spec.network`.
pub fn compile(net: &NetworkSpec, policy_mode: Mode, sink: &mut Sink) -> CompiledNetwork {
    let mut out = CompiledNetwork {
        mode: mode_value(net.mode.unwrap_or(policy_mode)),
        restricted: 0,
        entries: Vec::new(),
        rate_per_sec: 0,
        burst: 0,
    };
    let Some(ntp) = &net.ntp else {
        return out;
    };
    let lists: [(u32, &Option<AddressList>); 3] = [
        (list::SERVERS, &ntp.servers),
        (list::CLIENTS, &ntp.clients),
        (list::CONTROL, &ntp.control),
    ];
    for (which, given) in lists {
        let Some(given) = given else { continue };
        out.restricted |= 1 << which;
        if given.value.len() > MAX_LIST_ENTRIES {
            sink.error(
                given.referenced,
                format!("{} entries; a list may hold at most {MAX_LIST_ENTRIES} (use networks, e.g. 192.0.2.0/24)", given.value.len()),
            );
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
    out
}
