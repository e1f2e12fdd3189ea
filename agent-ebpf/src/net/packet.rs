//! Where a packet's addresses, ports and payload are. Every read is a checked copy
//! (`bpf_skb_load_bytes`, `bpf_xdp_load_bytes`): a packet shorter than a field makes the
//! parse give up, never read past its end.

use core::mem::MaybeUninit;

use agent_common::net::{v4_mapped, IPPROTO_TCP, IPPROTO_UDP};
use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{sk_buff::SkBuff, XdpContext},
};

/// A packet the programs read: a socket buffer (cgroup_skb) or an XDP frame.
pub trait Frame {
    /// Copies `n` bytes at `offset` to `to`; false when the packet does not hold them.
    fn copy(&self, offset: usize, to: *mut u8, n: u32) -> bool;
    /// The packet's length in bytes.
    fn length(&self) -> usize;

    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Option<T> {
        let mut v = MaybeUninit::<T>::uninit();
        if self.copy(
            offset,
            v.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
        ) {
            // SAFETY: the helper filled every byte of it.
            Some(unsafe { v.assume_init() })
        } else {
            None
        }
    }
}

impl Frame for SkBuff {
    #[inline(always)]
    fn copy(&self, offset: usize, to: *mut u8, n: u32) -> bool {
        // SAFETY: the helper checks the bounds of the packet; `to` holds n bytes.
        unsafe { bpf_skb_load_bytes(self.skb as *const _, offset as u32, to.cast(), n) == 0 }
    }

    #[inline(always)]
    fn length(&self) -> usize {
        self.len() as usize
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn copy(&self, offset: usize, to: *mut u8, n: u32) -> bool {
        // SAFETY: the helper checks the bounds of the frame; `to` holds n bytes.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset as u32, to.cast(), n) == 0 }
    }

    #[inline(always)]
    fn length(&self) -> usize {
        self.data_end() - self.data()
    }
}

/// IPv6 extension headers followed before giving up on a packet.
const IPV6_EXTENSIONS: usize = 4;
/// The furthest from the IP header a transport header is looked for.
const MAX_L4_OFFSET: usize = 512;

/// Where a packet came from and went, as parsed.
pub struct Flow {
    /// 4 or 6.
    pub family: u8,
    /// IPPROTO_UDP or IPPROTO_TCP.
    pub proto: u8,
    /// TCP: the flags byte (SYN 0x02, ACK 0x10); UDP: 0.
    pub tcp_flags: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Offset of the transport payload in the packet.
    pub payload: usize,
}

pub mod tcp {
    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;
}

/// Parses the IP and UDP/TCP headers of a packet whose IP header starts at `ip`. None for
/// other protocols, later fragments, and anything cut short.
#[inline(always)]
pub fn parse_flow(skb: &impl Frame, ip: usize) -> Option<Flow> {
    let first: u8 = skb.load(ip)?;
    let (family, proto, l4, src, dst) = match first >> 4 {
        4 => {
            let proto: u8 = skb.load(ip + 9)?;
            // Only whole datagrams or first fragments carry the transport header.
            let frag = u16::from_be(skb.load::<u16>(ip + 6)?);
            if frag & 0x1fff != 0 {
                return None;
            }
            let ihl = ((first & 0x0f) as usize) * 4;
            let s: [u8; 4] = skb.load(ip + 12)?;
            let d: [u8; 4] = skb.load(ip + 16)?;
            (4, proto, ihl, v4_mapped(s), v4_mapped(d))
        }
        6 => {
            let (proto, l4) = ipv6_transport(skb, ip)?;
            (6, proto, l4, skb.load(ip + 8)?, skb.load(ip + 24)?)
        }
        _ => return None,
    };
    if !(20..=MAX_L4_OFFSET).contains(&l4) || (proto != IPPROTO_UDP && proto != IPPROTO_TCP) {
        return None;
    }
    let at = ip + l4;
    let ports: [u8; 4] = skb.load(at)?;
    let (tcp_flags, payload) = if proto == IPPROTO_TCP {
        let header: [u8; 2] = skb.load(at + 12)?;
        (header[1], at + ((header[0] >> 4) as usize) * 4)
    } else {
        (0, at + 8)
    };
    Some(Flow {
        family,
        proto,
        tcp_flags,
        src,
        dst,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        payload,
    })
}

/// The transport protocol of an IPv6 packet and where its header starts, past any extension
/// headers (hop-by-hop, routing, destination options, and a first fragment's header): a
/// query hidden behind a destination option is decided like any other.
#[inline(always)]
fn ipv6_transport(skb: &impl Frame, ip: usize) -> Option<(u8, usize)> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DESTINATION: u8 = 60;
    let mut next: u8 = skb.load(ip + 6)?;
    let mut off = 40usize;
    for _ in 0..IPV6_EXTENSIONS {
        match next {
            HOP_BY_HOP | ROUTING | DESTINATION => {
                let header: [u8; 2] = skb.load(ip + off)?;
                next = header[0];
                off += (header[1] as usize + 1) * 8;
            }
            FRAGMENT => {
                let header: [u8; 4] = skb.load(ip + off)?;
                // A later fragment carries no transport header.
                if u16::from_be_bytes([header[2], header[3]]) & 0xfff8 != 0 {
                    return None;
                }
                next = header[0];
                off += 8;
            }
            _ => return Some((next, off)),
        }
        if off > MAX_L4_OFFSET {
            return None;
        }
    }
    match next {
        HOP_BY_HOP | ROUTING | DESTINATION | FRAGMENT => None,
        _ => Some((next, off)),
    }
}

/// The payload bytes a packet has from `payload` on.
#[inline(always)]
pub fn payload_len(skb: &impl Frame, payload: usize) -> usize {
    skb.length().saturating_sub(payload)
}
