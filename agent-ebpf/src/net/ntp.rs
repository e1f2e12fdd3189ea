//! NTP and NTS-KE arriving at this host's sockets, decided before the daemon reads them.
//!
//! A cgroup_skb ingress program on the cgroup v2 root (or the cgroup the agent is told): it
//! sees every packet delivered to a local socket, IPv4 and IPv6, after the stack has
//! reassembled it, with no per-interface attachment to keep up to date. Replies from
//! upstream servers are checked against `ntp.servers`, requests against `ntp.clients`, mode
//! 6/7 queries and chronyc commands against `ntp.control`; requests are also held to a
//! per-source token bucket. An NTS-KE connection (TCP 4460) is decided at its opening: a
//! client's SYN by `ntp.clients`, a server's SYN-ACK by `ntp.servers`.
//! NTP is known by its port (123) or by the socket it reaches: a time daemon's UDP socket
//! (`sockets::is_time_socket`) gets NTP from any port, loopback included, but for the
//! replies of the host's name servers from port 53 (its name lookups).
//! A refused packet is dropped (enforce) or delivered and recorded (audit).

use agent_common::{
    alert::Alert,
    maps::NetBudget,
    net::{
        is_time_port, list_for_mode, parse_ntp, take_token, upstream_alert, Bucket, Kind, List,
        NetCounterKey, NetPolicy, NtpHeader, NtpMode, Reason, Upstream, CHRONY_COMMAND_PORT,
        DNS_PORT, IPPROTO_TCP, IPPROTO_UDP, NTP_PORT, NTS_KE_PORT,
    },
    policy::Verdict,
};
use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_skb, map},
    maps::LruHashMap,
    programs::SkBuffContext,
};

use super::{
    count, emit, listed,
    packet::{parse_flow, payload_len, tcp, Flow},
    policy_in_force,
    sockets::{is_time_socket, NTP_LISTS},
    verdict_for,
};
use crate::emit::boot_ns;

/// What each upstream last said of itself, for the alerts (least recently heard forgotten).
#[map]
static NET_UPSTREAMS: LruHashMap<[u8; 16], Upstream> = LruHashMap::pinned(4096, 0);

/// Per-source token buckets (the least recently seen sources are forgotten first).
#[map]
static NET_BUCKETS: LruHashMap<[u8; 16], Bucket> = LruHashMap::pinned(65536, 0);

const PASS: i32 = 1;
const DROP: i32 = 0;

/// The first 16 bytes of the NTP payload, and how many there are.
#[inline(always)]
fn ntp_header(ctx: &SkBuffContext, payload: usize) -> Option<NtpHeader> {
    let len = payload_len(&ctx.skb, payload);
    let mut head = [0u8; 16];
    if len >= 16 {
        head = ctx.load(payload).ok()?;
    } else if len >= 1 {
        head[0] = ctx.load(payload).ok()?;
    }
    parse_ntp(&head, len)
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "explicit references, as in emit::count"
)]
fn within_rate(src: [u8; 16], now: u64, policy: &NetPolicy) -> bool {
    match NET_BUCKETS.get_ptr_mut(&src) {
        // SAFETY: the value stays valid for this program run.
        Some(b) => unsafe { take_token(&mut *b, now, policy.rate_per_sec, policy.burst) },
        None => {
            let mut fresh = Bucket::full(now, policy.burst);
            let ok = take_token(&mut fresh, now, policy.rate_per_sec, policy.burst);
            let _ = NET_BUCKETS.insert(&src, &fresh, 0);
            ok
        }
    }
}

#[cgroup_skb(ingress)]
pub fn ntp_ingress(ctx: SkBuffContext) -> i32 {
    decide(&ctx).unwrap_or(PASS)
}

#[inline(always)]
fn decide(ctx: &SkBuffContext) -> Option<i32> {
    let Some(flow) = parse_flow(&ctx.skb, 0) else {
        return refuse_unparsed(ctx);
    };
    if flow.proto == IPPROTO_TCP {
        return nts_ke(ctx, &flow);
    }
    // A chronyc request's header is chrony's own: only its port says what it is.
    let ntp = if flow.dport == CHRONY_COMMAND_PORT {
        NtpHeader {
            mode: NtpMode::ChronyCommand.code(),
            ..NtpHeader::default()
        }
    } else if flow.sport == NTP_PORT || flow.dport == NTP_PORT || ntp_by_socket(ctx, &flow) {
        match ntp_header(ctx, flow.payload) {
            Some(h) => h,
            // An empty datagram, or one the packet does not really hold.
            None => return refuse_unparsed(ctx),
        }
    } else {
        return None;
    };
    let (slot, policy) = policy_in_force()?;
    let now = boot_ns();
    let mut why = Reason::None;
    if let Some(which) = list_for_mode(ntp.mode) {
        if policy.restricted & which.restricts() != 0 && !listed(slot, which, 0, 0, flow.src) {
            why = Reason::NotListed;
        } else if which != List::Servers
            && policy.rate_per_sec != 0
            && !within_rate(flow.src, now, &policy)
        {
            why = Reason::Rate;
        }
    }
    let v = verdict_for(why, &policy);
    count(NetCounterKey::new(Kind::Ntp, ntp.mode, v, why));
    let (raised, previous) = note_upstream(&flow, &ntp, v);
    if v != Verdict::Allow || raised != Alert::None {
        let len = ctx.len();
        emit(NetBudget::Packets, now, policy.generation, |ev| {
            fill_packet(ev, &flow, len, Kind::Ntp, v, why);
            ev.ntp = ntp;
            ev.alert = raised as u8;
            ev.previous_stratum = previous.stratum;
            ev.previous_leap = previous.leap;
        });
    }
    Some(if v == Verdict::Deny { DROP } else { PASS })
}

/// The packet part of a record.
#[inline(always)]
pub(super) fn fill_packet(
    ev: &mut agent_common::net::NetEvent,
    flow: &Flow,
    len: u32,
    k: Kind,
    v: Verdict,
    why: Reason,
) {
    ev.kind = k as u8;
    ev.src = flow.src;
    ev.dst = flow.dst;
    ev.sport = flow.sport;
    ev.dport = flow.dport;
    ev.len = len;
    ev.family = flow.family;
    ev.verdict = v as u8;
    ev.reason = why as u8;
}

/// An NTS-KE connection opening: a client's SYN to this server (`ntp.clients`), or a
/// server's SYN-ACK to this client (`ntp.servers`). The rest of the connection follows its
/// opening and is not looked at.
#[inline(always)]
fn nts_ke(ctx: &SkBuffContext, flow: &Flow) -> Option<i32> {
    let syn = flow.tcp_flags & (tcp::SYN | tcp::ACK);
    let (which, detail) = if flow.dport == NTS_KE_PORT && syn == tcp::SYN {
        (List::Clients, NtpMode::Client)
    } else if flow.sport == NTS_KE_PORT && syn == tcp::SYN | tcp::ACK {
        (List::Servers, NtpMode::Server)
    } else {
        return None;
    };
    let (slot, policy) = policy_in_force()?;
    let why = if policy.restricted & which.restricts() != 0 && !listed(slot, which, 0, 0, flow.src)
    {
        Reason::NotListed
    } else {
        Reason::None
    };
    let v = verdict_for(why, &policy);
    count(NetCounterKey::new(Kind::NtsKe, detail.code(), v, why));
    if v != Verdict::Allow {
        let len = ctx.len();
        emit(NetBudget::Packets, boot_ns(), policy.generation, |ev| {
            fill_packet(ev, flow, len, Kind::NtsKe, v, why);
            ev.ntp = NtpHeader {
                mode: detail.code(),
                ..NtpHeader::default()
            };
        });
    }
    Some(if v == Verdict::Deny { DROP } else { PASS })
}

/// Whether the socket a datagram reaches is a time daemon's (its NTP from any port), and
/// the datagram is not a name server's answer. PTP's ports are PTP's (`ptp`). Only a policy
/// with NTP lists notes time sockets, and only then is the socket looked up: the rest of
/// the host's UDP pays nothing more.
#[inline(always)]
fn ntp_by_socket(ctx: &SkBuffContext, flow: &Flow) -> bool {
    if flow.proto != IPPROTO_UDP || is_time_port(flow.sport) || is_time_port(flow.dport) {
        return false;
    }
    let Some((slot, policy)) = policy_in_force() else {
        return false;
    };
    if policy.restricted & NTP_LISTS == 0 || !on_time_socket(ctx) {
        return false;
    }
    flow.sport != DNS_PORT || !listed(slot, List::NameServers, 0, 0, flow.src)
}

/// Whether the packet reaches a time daemon's socket.
#[inline(always)]
fn on_time_socket(ctx: &SkBuffContext) -> bool {
    // SAFETY: the helper reads the socket of the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    is_time_socket(cookie)
}

/// A packet the parser gave up on (too many IPv6 extension headers, a header cut short),
/// arriving at an NTP or chronyc command socket or a time daemon's: refused when a network
/// policy is in force, so that no header trick carries a query or a reply past the lists.
/// Elsewhere, not decided.
#[inline(always)]
fn refuse_unparsed(ctx: &SkBuffContext) -> Option<i32> {
    let port = ctx.skb.local_port();
    if port != NTP_PORT as u32 && port != CHRONY_COMMAND_PORT as u32 && !on_time_socket(ctx) {
        return None;
    }
    let (_, policy) = policy_in_force()?;
    let v = verdict_for(Reason::Unparsed, &policy);
    count(NetCounterKey::new(Kind::Ntp, 0, v, Reason::Unparsed));
    Some(if v == Verdict::Deny { DROP } else { PASS })
}

/// A reply that reaches the daemon: what its source says of itself, against last time.
/// Returns the alert and what the source said before.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "explicit references, as in emit::count"
)]
fn note_upstream(flow: &Flow, ntp: &NtpHeader, v: Verdict) -> (Alert, Upstream) {
    let mut raised = Alert::None;
    let mut previous = Upstream::default();
    if ntp.mode == NtpMode::Server.code() && v != Verdict::Deny {
        let before = NET_UPSTREAMS.get_ptr(&flow.src).map(|p| {
            // SAFETY: copied out at once.
            unsafe { *p }
        });
        raised = upstream_alert(before, ntp);
        if let Some(b) = before {
            previous = b;
        }
        if raised != Alert::None && raised != Alert::KissOfDeath {
            let now_says = Upstream {
                stratum: ntp.stratum,
                leap: ntp.leap,
                _pad: [0; 2],
                refid: ntp.refid,
            };
            let _ = NET_UPSTREAMS.insert(&flow.src, &now_says, 0);
        }
    }
    (raised, previous)
}
