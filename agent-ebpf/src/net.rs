//! NTP traffic arriving at this host's sockets, decided before the daemon reads it.
//!
//! A cgroup_skb ingress program on the cgroup v2 root (or the cgroup the agent is told):
//! it sees every packet delivered to a local socket, IPv4 and IPv6, after the stack has
//! reassembled it, with no per-interface attachment to keep up to date. Replies from
//! upstream servers are checked against `ntp.servers`, requests against `ntp.clients`, mode
//! 6/7 queries against `ntp.control`; requests are also held to a per-source token bucket.
//! A refused packet is dropped (enforce) or delivered and recorded (audit).
//!
//! Packet decisions have their own counters, ring buffer and event budget: a packet flood
//! cannot cost a single clock-change event.

use agent_common::{
    event::EventBudget,
    net::{
        alert, list, list_for_mode, mode as ntp_mode, parse_ntp, reason, take_token,
        upstream_alert, v4_mapped, AddrKey, Bucket, NetCounterKey, NetEvent, NetPolicy, NtpHeader,
        Upstream, ADDR_KEY_FIXED_BITS, CHRONY_COMMAND_PORT, MAX_LIST_ENTRIES, NTP_PORT,
    },
    policy::{mode, verdict, SLOTS},
};
use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::{cgroup_skb, map},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::SkBuffContext,
};

/// Index 0: the slot in force (the network policy is double-buffered like the clock's).
#[map]
static NET_ACTIVE_SLOT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static NET_POLICY: Array<NetPolicy> = Array::with_max_entries(SLOTS, 0);

/// Address lists, by (slot, list, prefix).
#[map]
static NET_ADDRS: LpmTrie<AddrKey, u8> = LpmTrie::with_max_entries(
    SLOTS * list::COUNT * MAX_LIST_ENTRIES as u32,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);

/// What each upstream last said of itself, for the alerts (least recently heard forgotten).
#[map]
static NET_UPSTREAMS: LruHashMap<[u8; 16], Upstream> = LruHashMap::with_max_entries(4096, 0);

/// Per-source token buckets (the least recently seen sources are forgotten first).
#[map]
static NET_BUCKETS: LruHashMap<[u8; 16], Bucket> = LruHashMap::with_max_entries(65536, 0);

#[map]
static NET_COUNTERS: PerCpuHashMap<NetCounterKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);

#[map]
static NET_EVENTS: RingBuf = RingBuf::with_byte_size(128 * 1024, 0);

/// Index 0: events that did not fit; index 1: events over the budget.
#[map]
static NET_EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Index 0: where this CPU builds a packet record.
#[map]
static NET_EVENT_SCRATCH: PerCpuArray<NetEvent> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: this CPU's event budget for the current second.
#[map]
static NET_EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Refused packets recorded in detail per CPU per second; the rest are counted.
const NET_EVENTS_PER_SECOND: u32 = 100;

const PASS: i32 = 1;
const DROP: i32 = 0;
const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers followed before giving up on a packet (then not decided).
const IPV6_EXTENSIONS: usize = 4;
/// The furthest a UDP header is looked for.
const MAX_L4_OFFSET: usize = 512;

/// Where a packet came from and went, as parsed.
struct Flow {
    family: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    /// Offset of the UDP payload.
    payload: usize,
}

#[inline(always)]
fn parse_flow(ctx: &SkBuffContext) -> Option<Flow> {
    let first: u8 = ctx.load(0).ok()?;
    let (family, l4, src, dst) = match first >> 4 {
        4 => {
            if ctx.load::<u8>(9).ok()? != IPPROTO_UDP {
                return None;
            }
            // Only whole datagrams or first fragments carry the UDP header.
            let frag = u16::from_be(ctx.load::<u16>(6).ok()?);
            if frag & 0x1fff != 0 {
                return None;
            }
            let ihl = ((first & 0x0f) as usize) * 4;
            let s: [u8; 4] = ctx.load(12).ok()?;
            let d: [u8; 4] = ctx.load(16).ok()?;
            (4, ihl, v4_mapped(s), v4_mapped(d))
        }
        6 => (
            6,
            ipv6_udp_offset(ctx)?,
            ctx.load(8).ok()?,
            ctx.load(24).ok()?,
        ),
        _ => return None,
    };
    if !(20..=MAX_L4_OFFSET).contains(&l4) {
        return None;
    }
    let sport = u16::from_be(ctx.load::<u16>(l4).ok()?);
    let dport = u16::from_be(ctx.load::<u16>(l4 + 2).ok()?);
    Some(Flow {
        family,
        src,
        dst,
        sport,
        dport,
        payload: l4 + 8,
    })
}

/// Where the UDP header starts in an IPv6 packet, past any extension headers (hop-by-hop,
/// routing, destination options, and a first fragment's header): a query hidden behind
/// a destination option is decided like any other. None when it is not UDP.
#[inline(always)]
fn ipv6_udp_offset(ctx: &SkBuffContext) -> Option<usize> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DESTINATION: u8 = 60;
    let mut next: u8 = ctx.load(6).ok()?;
    let mut off = 40usize;
    for _ in 0..IPV6_EXTENSIONS {
        match next {
            IPPROTO_UDP => return Some(off),
            HOP_BY_HOP | ROUTING | DESTINATION => {
                let header: [u8; 2] = ctx.load(off).ok()?;
                next = header[0];
                off += (header[1] as usize + 1) * 8;
            }
            FRAGMENT => {
                let header: [u8; 4] = ctx.load(off).ok()?;
                // A later fragment carries no UDP header.
                if u16::from_be_bytes([header[2], header[3]]) & 0xfff8 != 0 {
                    return None;
                }
                next = header[0];
                off += 8;
            }
            _ => return None,
        }
        if off > MAX_L4_OFFSET {
            return None;
        }
    }
    (next == IPPROTO_UDP).then_some(off)
}

/// The first 16 bytes of the NTP payload, and how many there are.
#[inline(always)]
fn ntp_header(ctx: &SkBuffContext, payload: usize) -> Option<NtpHeader> {
    let len = (ctx.len() as usize).saturating_sub(payload);
    let mut head = [0u8; 16];
    if len >= 16 {
        head = ctx.load(payload).ok()?;
    } else if len >= 1 {
        head[0] = ctx.load(payload).ok()?;
    }
    parse_ntp(&head, len)
}

#[inline(always)]
fn listed(slot: u32, which: u32, addr: [u8; 16]) -> bool {
    let key = Key::new(
        ADDR_KEY_FIXED_BITS + 128,
        AddrKey {
            slot,
            list: which,
            addr,
        },
    );
    NET_ADDRS.get(&key).is_some()
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "explicit references, as in record::count"
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

#[inline(always)]
fn bump(index: u32) {
    if let Some(n) = NET_EVENTS_DROPPED.get_ptr_mut(index) {
        // SAFETY: a per-CPU value.
        unsafe { *n += 1 }
    }
}

#[inline(always)]
fn within_event_budget(now: u64) -> bool {
    let Some(b) = NET_EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU value.
    unsafe {
        if now.wrapping_sub((*b).window_start_ns) >= 1_000_000_000 {
            (*b).window_start_ns = now;
            (*b).sent = 0;
        }
        if (*b).sent < NET_EVENTS_PER_SECOND {
            (*b).sent += 1;
            true
        } else {
            false
        }
    }
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "explicit references, as in record::count"
)]
fn count(key: NetCounterKey) {
    match NET_COUNTERS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = NET_COUNTERS.insert(&key, &1, 0);
        }
    }
}

#[cgroup_skb(ingress)]
pub fn ntp_ingress(ctx: SkBuffContext) -> i32 {
    decide(&ctx).unwrap_or(PASS)
}

#[inline(always)]
fn decide(ctx: &SkBuffContext) -> Option<i32> {
    let Some(flow) = parse_flow(ctx) else {
        return refuse_unparsed(ctx);
    };
    // A chronyc request's header is chrony's own: only its port says what it is.
    let ntp = if flow.dport == CHRONY_COMMAND_PORT {
        NtpHeader {
            mode: ntp_mode::CHRONY_COMMAND,
            ..NtpHeader::default()
        }
    } else if flow.sport == NTP_PORT || flow.dport == NTP_PORT {
        ntp_header(ctx, flow.payload)?
    } else {
        return None;
    };
    let slot = *NET_ACTIVE_SLOT.get(0)?;
    let policy = *NET_POLICY.get(slot)?;
    if policy.generation == 0 {
        return None;
    }
    // SAFETY: a clock helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let mut why = reason::NONE;
    if let Some(which) = list_for_mode(ntp.mode) {
        if policy.restricted & (1 << which) != 0 && !listed(slot, which, flow.src) {
            why = reason::NOT_LISTED;
        } else if which != list::SERVERS
            && policy.rate_per_sec != 0
            && !within_rate(flow.src, now, &policy)
        {
            why = reason::RATE;
        }
    }
    let v = if why == reason::NONE {
        verdict::ALLOW
    } else if policy.mode == mode::AUDIT {
        verdict::AUDIT
    } else {
        verdict::DENY
    };
    count(NetCounterKey {
        mode: ntp.mode,
        verdict: v,
        reason: why,
        _pad: 0,
    });
    let (raised, previous) = note_upstream(&flow, &ntp, v);
    if v != verdict::ALLOW || raised != alert::NONE {
        if within_event_budget(now) {
            // Built in a per-CPU slot, not on the stack: BPF gives a program 512 bytes.
            let Some(slot) = NET_EVENT_SCRATCH.get_ptr_mut(0) else {
                return Some(if v == verdict::DENY { DROP } else { PASS });
            };
            let ev = NetEvent {
                boot_ns: now,
                // SAFETY: a clock helper without arguments.
                tai_ns: unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_tai_ns() },
                src: flow.src,
                dst: flow.dst,
                sport: flow.sport,
                dport: flow.dport,
                len: ctx.len(),
                generation: policy.generation,
                ntp,
                verdict: v,
                reason: why,
                family: flow.family,
                alert: raised,
                previous_stratum: previous.stratum,
                previous_leap: previous.leap,
                _pad: [0; 2],
            };
            // SAFETY: a per-CPU value, written then read by this program run only.
            let ev = unsafe {
                *slot = ev;
                &*slot
            };
            if NET_EVENTS.output::<NetEvent>(ev, 0).is_err() {
                bump(0);
            }
        } else {
            bump(1);
        }
    }
    Some(if v == verdict::DENY { DROP } else { PASS })
}

/// A packet the parser gave up on (too many IPv6 extension headers, a header cut short),
/// arriving at an NTP or chronyc command socket: refused when a network policy is in force,
/// so that no header trick carries a query past the lists. Elsewhere, not decided.
#[inline(always)]
fn refuse_unparsed(ctx: &SkBuffContext) -> Option<i32> {
    let port = ctx.skb.local_port();
    if port != NTP_PORT as u32 && port != CHRONY_COMMAND_PORT as u32 {
        return None;
    }
    let slot = *NET_ACTIVE_SLOT.get(0)?;
    let policy = *NET_POLICY.get(slot)?;
    if policy.generation == 0 {
        return None;
    }
    let v = if policy.mode == mode::AUDIT {
        verdict::AUDIT
    } else {
        verdict::DENY
    };
    count(NetCounterKey {
        mode: 0,
        verdict: v,
        reason: reason::UNPARSED,
        _pad: 0,
    });
    Some(if v == verdict::DENY { DROP } else { PASS })
}

/// A reply that reaches the daemon: what its source says of itself, against last time.
/// Returns the alert and what the source said before.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "explicit references, as in record::count"
)]
fn note_upstream(flow: &Flow, ntp: &NtpHeader, v: u8) -> (u8, Upstream) {
    let mut raised = alert::NONE;
    let mut previous = Upstream::default();
    if ntp.mode == ntp_mode::SERVER && v != verdict::DENY {
        let before = NET_UPSTREAMS.get_ptr(&flow.src).map(|p| {
            // SAFETY: copied out at once.
            unsafe { *p }
        });
        raised = upstream_alert(before, ntp);
        if let Some(b) = before {
            previous = b;
        }
        if raised != alert::NONE && raised != alert::KISS_OF_DEATH {
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
