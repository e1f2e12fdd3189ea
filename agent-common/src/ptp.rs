//! PTP (IEEE 1588) messages as the kernel programs see them, over UDP (ports 319 and 320)
//! and over Ethernet (ethertype 0x88F7).

use crate::alert::Alert;

/// Ethertype of PTP over Ethernet.
pub const ETH_P_1588: u16 = 0x88f7;
/// Event messages (Sync, Delay_Req…), timestamped.
pub const EVENT_PORT: u16 = 319;
/// General messages (Announce, Follow_Up, Management…).
pub const GENERAL_PORT: u16 = 320;

/// Bytes of the common header every PTP message starts with.
pub const HEADER_LEN: usize = 34;
/// Bytes of an Announce message (header and body).
pub const ANNOUNCE_LEN: usize = 64;

crate::codes! {
    /// PTP message types (the low nibble of the first byte).
    pub enum Message: u8, unknown = "reserved" {
        Sync = 0x0 => "sync",
        DelayReq = 0x1 => "delay_req",
        PdelayReq = 0x2 => "pdelay_req",
        PdelayResp = 0x3 => "pdelay_resp",
        FollowUp = 0x8 => "follow_up",
        DelayResp = 0x9 => "delay_resp",
        PdelayRespFollowUp = 0xa => "pdelay_resp_follow_up",
        Announce = 0xb => "announce",
        Signaling = 0xc => "signaling",
        Management = 0xd => "management",
        /// Not a PTP type: a message too short for its header.
        Truncated = 0xff => "truncated",
    }
}

/// Bits of the second flag byte (flagField octet 1): what a grandmaster says of UTC.
pub mod flags {
    pub const LEAP61: u8 = 0x01;
    pub const LEAP59: u8 = 0x02;
    pub const UTC_OFFSET_VALID: u8 = 0x04;
    pub const PTP_TIMESCALE: u8 = 0x08;
    pub const TIME_TRACEABLE: u8 = 0x10;
    pub const FREQUENCY_TRACEABLE: u8 = 0x20;
}

/// What the first bytes of a PTP message say; the Announce fields only for an Announce
/// long enough to carry them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PtpHeader {
    pub message_type: u8,
    /// versionPTP (2 for IEEE 1588-2008 and 2019).
    pub version: u8,
    pub domain: u8,
    /// flagField's second byte (`flags::*`).
    pub flags: u8,
    /// sourcePortIdentity: the sender's clockIdentity and port.
    pub source: [u8; 8],
    pub source_port: u16,
    /// Announce: currentUtcOffset.
    pub utc_offset: i16,
    /// Announce: grandmasterIdentity.
    pub grandmaster: [u8; 8],
    /// Announce: grandmasterPriority1, clockClass, priority2.
    pub priority1: u8,
    pub clock_class: u8,
    pub priority2: u8,
    /// Announce: timeSource.
    pub time_source: u8,
    /// Announce: stepsRemoved.
    pub steps_removed: u16,
    /// 1 when the Announce fields are filled.
    pub announce: u8,
    pub _pad: u8,
}

/// Parses a PTP message from its first 64 bytes, of which `len` are real. Shorter than the
/// common header: a header whose type is `Message::Truncated.code()`.
pub const fn parse_ptp(m: &[u8; ANNOUNCE_LEN], len: usize) -> PtpHeader {
    let mut h = PtpHeader {
        message_type: Message::Truncated.code(),
        version: 0,
        domain: 0,
        flags: 0,
        source: [0; 8],
        source_port: 0,
        utc_offset: 0,
        grandmaster: [0; 8],
        priority1: 0,
        clock_class: 0,
        priority2: 0,
        time_source: 0,
        steps_removed: 0,
        announce: 0,
        _pad: 0,
    };
    if len < HEADER_LEN {
        return h;
    }
    h.message_type = m[0] & 0x0f;
    h.version = m[1] & 0x0f;
    h.domain = m[4];
    h.flags = m[7];
    h.source = [m[20], m[21], m[22], m[23], m[24], m[25], m[26], m[27]];
    h.source_port = u16::from_be_bytes([m[28], m[29]]);
    if h.message_type == Message::Announce.code() && len >= ANNOUNCE_LEN {
        h.announce = 1;
        h.utc_offset = i16::from_be_bytes([m[44], m[45]]);
        h.priority1 = m[47];
        h.clock_class = m[48];
        h.priority2 = m[52];
        h.grandmaster = [m[53], m[54], m[55], m[56], m[57], m[58], m[59], m[60]];
        h.steps_removed = u16::from_be_bytes([m[61], m[62]]);
        h.time_source = m[63];
    }
    h
}

/// What a grandmaster last announced, kept per grandmaster identity for the alerts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Grandmaster {
    pub priority1: u8,
    pub clock_class: u8,
    /// `flags::LEAP61 | flags::LEAP59` as announced.
    pub leap: u8,
    pub domain: u8,
    pub utc_offset: i16,
    pub _pad: [u8; 2],
}

impl Grandmaster {
    pub const fn of(h: &PtpHeader) -> Self {
        Grandmaster {
            priority1: h.priority1,
            clock_class: h.clock_class,
            leap: h.flags & (flags::LEAP61 | flags::LEAP59),
            domain: h.domain,
            utc_offset: h.utc_offset,
            _pad: [0; 2],
        }
    }
}

/// The alert an accepted Announce raises against what its grandmaster said before:
/// `Alert::NewSource` the first time, `UpstreamChanged` when its quality, leap flags or
/// UTC offset changed.
pub const fn grandmaster_alert(previous: Option<Grandmaster>, now: &Grandmaster) -> Alert {
    match previous {
        None => Alert::NewSource,
        Some(p)
            if p.priority1 != now.priority1
                || p.clock_class != now.clock_class
                || p.leap != now.leap
                || p.utc_offset != now.utc_offset =>
        {
            Alert::UpstreamChanged
        }
        Some(_) => Alert::None,
    }
}

/// Key of the allowed grandmasters: the identity within one policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct GrandmasterKey {
    pub slot: u32,
    pub _pad: u32,
    pub identity: [u8; 8],
}

/// Most grandmasters one policy may list.
pub const MAX_GRANDMASTERS: usize = 256;

/// Whether `domain` is in a 256-bit set.
pub const fn domain_listed(set: &[u32; 8], domain: u8) -> bool {
    set[(domain >> 5) as usize] & (1 << (domain & 31)) != 0
}

crate::pod!(PtpHeader, Grandmaster, GrandmasterKey);

#[cfg(test)]
mod tests {
    use super::*;

    /// An Announce as ptp4l sends it (domain 0, GM 02:00:00:ff:fe:00:00:01, priority1 128,
    /// class 248, UTC offset 37, leap61 set).
    fn announce() -> [u8; ANNOUNCE_LEN] {
        let mut m = [0u8; ANNOUNCE_LEN];
        m[0] = 0x0b;
        m[1] = 0x02;
        m[2..4].copy_from_slice(&64u16.to_be_bytes());
        m[4] = 0;
        m[7] = flags::LEAP61 | flags::UTC_OFFSET_VALID;
        m[20..28].copy_from_slice(&[2, 0, 0, 0xff, 0xfe, 0, 0, 1]);
        m[28..30].copy_from_slice(&1u16.to_be_bytes());
        m[44..46].copy_from_slice(&37i16.to_be_bytes());
        m[47] = 128;
        m[48] = 248;
        m[52] = 128;
        m[53..61].copy_from_slice(&[2, 0, 0, 0xff, 0xfe, 0, 0, 1]);
        m[63] = 0xa0;
        m
    }

    #[test]
    fn parses_an_announce() {
        let h = parse_ptp(&announce(), 64);
        assert_eq!(h.message_type, Message::Announce.code());
        assert_eq!((h.version, h.domain, h.announce), (2, 0, 1));
        assert_eq!(h.grandmaster, [2, 0, 0, 0xff, 0xfe, 0, 0, 1]);
        assert_eq!((h.priority1, h.clock_class, h.utc_offset), (128, 248, 37));
        assert_eq!(h.source_port, 1);
    }

    #[test]
    fn truncated_messages() {
        let m = announce();
        // The header only: the type is known, the grandmaster is not.
        let h = parse_ptp(&m, 40);
        assert_eq!((h.message_type, h.announce), (Message::Announce.code(), 0));
        assert_eq!(h.grandmaster, [0; 8]);
        assert_eq!(parse_ptp(&m, 33).message_type, Message::Truncated.code());
        assert_eq!(parse_ptp(&m, 0).message_type, Message::Truncated.code());
    }

    #[test]
    fn grandmaster_alerts() {
        let h = parse_ptp(&announce(), 64);
        let g = Grandmaster::of(&h);
        assert_eq!(grandmaster_alert(None, &g), Alert::NewSource);
        assert_eq!(grandmaster_alert(Some(g), &g), Alert::None);
        let mut worse = g;
        worse.clock_class = 7;
        assert_eq!(grandmaster_alert(Some(worse), &g), Alert::UpstreamChanged);
    }

    #[test]
    fn domain_sets() {
        let mut set = [0u32; 8];
        set[0] |= 1;
        set[24 >> 5] |= 1 << (24 & 31);
        set[7] |= 1 << 31;
        assert!(domain_listed(&set, 0) && domain_listed(&set, 24) && domain_listed(&set, 255));
        assert!(!domain_listed(&set, 1) && !domain_listed(&set, 127));
    }
}
