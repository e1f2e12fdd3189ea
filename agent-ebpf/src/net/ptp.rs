//! PTP messages arriving on this host's interfaces, over Ethernet (0x88F7) and over UDP
//! (ports 319 and 320), decided before ptp4l reads them.
//!
//! An XDP program on each interface. PTP over Ethernet goes to packet sockets, which
//! cgroup_skb never sees; and ptp4l's packet socket is for every frame (ETH_P_ALL), a tap
//! that the kernel feeds before tc ingress runs, so only XDP decides before any socket has
//! the frame. A PTP network is a link's business anyway. Every message is
//! counted by type; an Announce is refused when its domain is not in `ptp.domains` or its
//! grandmaster not in `ptp.grandmasters`: a rogue grandmaster is how PTP networks are taken
//! over, and without its Announce no client ever selects it. Accepted Announces raise an
//! alert when a grandmaster is first heard or changes what it says (quality, leap, UTC offset).

use agent_common::{
    alert::Alert,
    maps::{NetBudget, ONLY},
    net::{restrict, Kind, NetCounterKey, Reason, IPPROTO_UDP},
    policy::Verdict,
    ptp::{
        domain_listed, grandmaster_alert, parse_ptp, Grandmaster, GrandmasterKey, Message,
        PtpHeader, ANNOUNCE_LEN, ETH_P_1588, EVENT_PORT, GENERAL_PORT, MAX_GRANDMASTERS,
    },
};
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};

use super::{
    count, emit,
    packet::{parse_flow, payload_len, Flow, Frame},
    policy_in_force, verdict_for,
};
use crate::emit::boot_ns;

/// Grandmasters allowed, by (slot, identity).
#[map]
static PTP_GRANDMASTERS: HashMap<GrandmasterKey, u8> =
    HashMap::pinned(agent_common::policy::SLOTS * MAX_GRANDMASTERS as u32, 0);

/// Index `maps::ONLY`: where this CPU reads a PTP message (off the 512-byte BPF stack).
#[map]
static PTP_MESSAGE: PerCpuArray<[u8; ANNOUNCE_LEN]> = PerCpuArray::pinned(1, 0);

/// What each grandmaster last announced (least recently heard forgotten).
#[map]
static PTP_ANNOUNCED: LruHashMap<[u8; 8], Grandmaster> = LruHashMap::pinned(1024, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

#[xdp]
pub fn ptp_ingress(ctx: XdpContext) -> u32 {
    decide(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// Where a PTP message starts, and the UDP flow it came in (None over Ethernet).
#[inline(always)]
fn locate(skb: &XdpContext) -> Option<(usize, Option<Flow>)> {
    let mut ethertype = u16::from_be(skb.load::<u16>(12)?);
    let mut at = ETH_HLEN;
    // Up to two VLAN tags left in the frame (when the driver did not take them out).
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = u16::from_be(skb.load::<u16>(at + 2)?);
        at += 4;
    }
    match ethertype {
        ETH_P_1588 => Some((at, None)),
        ETH_P_IP | ETH_P_IPV6 => {
            let flow = parse_flow(skb, at)?;
            let ptp_port = |p: u16| p == EVENT_PORT || p == GENERAL_PORT;
            (flow.proto == IPPROTO_UDP && ptp_port(flow.dport))
                .then_some((flow.payload, Some(flow)))
        }
        _ => None,
    }
}

/// The PTP message at `at`, as far as the packet holds it, read into this CPU's buffer
/// (bytes past what the packet holds are not looked at).
#[inline(always)]
fn read_ptp(skb: &XdpContext, at: usize) -> PtpHeader {
    let len = payload_len(skb, at);
    let Some(buf) = PTP_MESSAGE.get_ptr_mut(ONLY) else {
        return parse_ptp(&[0; ANNOUNCE_LEN], 0);
    };
    if len == 0 {
        return parse_ptp(&[0; ANNOUNCE_LEN], 0);
    }
    // 1 to ANNOUNCE_LEN, in a form the verifier can see is never 0.
    let n = ((len.min(ANNOUNCE_LEN) - 1) & (ANNOUNCE_LEN - 1)) + 1;
    if !skb.copy(at, buf.cast(), n as u32) {
        return parse_ptp(&[0; ANNOUNCE_LEN], 0);
    }
    // SAFETY: as above.
    parse_ptp(unsafe { &*buf }, n)
}

#[inline(always)]
fn decide(skb: &XdpContext) -> Option<u32> {
    let (at, flow) = locate(skb)?;
    let (slot, policy) = policy_in_force()?;
    let ptp = read_ptp(skb, at);
    let mut why = Reason::None;
    if ptp.message_type == Message::Announce.code() {
        if policy.restricted & restrict::PTP_DOMAINS != 0
            && !domain_listed(&policy.ptp_domains, ptp.domain)
        {
            why = Reason::Domain;
        } else if policy.restricted & restrict::PTP_GRANDMASTERS != 0
            && (ptp.announce == 0 || !grandmaster_listed(slot, ptp.grandmaster))
        {
            why = Reason::Grandmaster;
        }
    }
    let v = verdict_for(why, &policy);
    count(NetCounterKey::new(Kind::Ptp, ptp.message_type, v, why));
    let (raised, previous) = if ptp.announce != 0 && v != Verdict::Deny {
        note_grandmaster(&ptp)
    } else {
        (Alert::None, Grandmaster::default())
    };
    if v != Verdict::Allow || raised != Alert::None {
        let len = skb.length() as u32;
        emit(NetBudget::Packets, boot_ns(), policy.generation, |ev| {
            match &flow {
                Some(f) => super::ntp::fill_packet(ev, f, len, Kind::Ptp, v, why),
                None => {
                    ev.kind = Kind::Ptp as u8;
                    ev.family = 0;
                    ev.len = len;
                    ev.verdict = v as u8;
                    ev.reason = why as u8;
                }
            }
            ev.ptp = ptp;
            ev.alert = raised as u8;
            ev.previous_grandmaster = previous;
        });
    }
    Some(if v == Verdict::Deny {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    })
}

#[inline(always)]
fn grandmaster_listed(slot: u32, identity: [u8; 8]) -> bool {
    let key = GrandmasterKey {
        slot,
        _pad: 0,
        identity,
    };
    // SAFETY: only whether it is there is used.
    unsafe { PTP_GRANDMASTERS.get(key) }.is_some()
}

/// An Announce that reaches ptp4l: what its grandmaster says, against last time.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "explicit references, as in emit::count"
)]
fn note_grandmaster(ptp: &PtpHeader) -> (Alert, Grandmaster) {
    let now = Grandmaster::of(ptp);
    let before = PTP_ANNOUNCED.get_ptr(&ptp.grandmaster).map(|p| {
        // SAFETY: copied out at once.
        unsafe { *p }
    });
    let raised = grandmaster_alert(before, &now);
    if raised != Alert::None {
        let _ = PTP_ANNOUNCED.insert(&ptp.grandmaster, &now, 0);
    }
    (raised, before.unwrap_or_default())
}
