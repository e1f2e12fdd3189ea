//! Time traffic as the kernel programs see it: NTP headers, the network policy's maps, and
//! the record of one packet or socket decision.

use crate::{alert::Alert, event::Caller, ptp::PtpHeader};

/// The NTP port.
pub const NTP_PORT: u16 = 123;
/// chronyd's command port (chronyc's requests), guarded as control like modes 6 and 7.
pub const CHRONY_COMMAND_PORT: u16 = 323;
/// NTS key establishment (RFC 8915), TCP.
pub const NTS_KE_PORT: u16 = 4460;
/// DNS, which a time daemon's resolver also speaks, from sockets of the daemon's own.
pub const DNS_PORT: u16 = 53;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

crate::codes! {
    /// What a network decision was about: the `kind` of counters and records.
    pub enum Kind: u8, unknown = "unknown" {
        /// An NTP packet arriving at a socket of this host (or a chronyc command).
        Ntp = 1 => "ntp",
        /// An NTS-KE connection opening (TCP 4460): a client's SYN, a server's SYN-ACK.
        NtsKe = 2 => "nts_ke",
        /// A PTP message arriving on an interface.
        Ptp = 3 => "ptp",
        /// A socket bound to a time port (UDP 123, 319, 320).
        Bind = 4 => "bind",
        /// A time daemon connecting or sending to a destination.
        Connect = 5 => "connect",
        /// A packet socket that sees PTP over Ethernet (AF_PACKET with ETH_P_ALL or ETH_P_1588).
        RawSocket = 6 => "raw_socket",
    }
}

crate::codes! {
    /// What a port is, to a time server operator: the `detail` of bind and connect counters.
    pub enum Service: u8, unknown = "other" {
        Other = 0 => "other",
        Ntp = 1 => "ntp",
        NtsKe = 2 => "nts-ke",
        Ptp = 3 => "ptp",
        Dns = 4 => "dns",
        ChronyCommand = 5 => "chronyc",
    }
}

impl Service {
    pub const fn of_port(port: u16) -> Self {
        match port {
            NTP_PORT => Service::Ntp,
            NTS_KE_PORT => Service::NtsKe,
            crate::ptp::EVENT_PORT | crate::ptp::GENERAL_PORT => Service::Ptp,
            DNS_PORT => Service::Dns,
            CHRONY_COMMAND_PORT => Service::ChronyCommand,
            _ => Service::Other,
        }
    }
}

/// `AF_PACKET`: sockets that see whole frames, PTP over Ethernet among them.
pub const AF_PACKET: u16 = 17;
/// Packet socket protocols that see PTP frames: every frame, or PTP's own ethertype.
pub const ETH_P_ALL: u16 = 0x0003;

/// Whether a packet socket of this protocol (host order) sees PTP over Ethernet.
pub const fn packet_protocol_sees_ptp(protocol: u16) -> bool {
    protocol == ETH_P_ALL || protocol == crate::ptp::ETH_P_1588
}

/// A destination a daemon used, for the `Alert::NewDestination` alert.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Destination {
    pub rule_id: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub addr: [u8; 16],
}

/// The ports only time daemons may bind (UDP): NTP and PTP's event and general ports.
pub const fn is_time_port(port: u16) -> bool {
    matches!(
        port,
        NTP_PORT | crate::ptp::EVENT_PORT | crate::ptp::GENERAL_PORT
    )
}

/// Whether an address (v4-mapped or IPv6) is this host's loopback: a daemon talking to
/// itself (its resolver, its own command socket) is not egress.
pub const fn is_loopback(a: &[u8; 16]) -> bool {
    let v4_mapped = a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff;
    if v4_mapped {
        return a[12] == 127;
    }
    let mut i = 0;
    while i < 15 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    a[15] == 1
}

crate::codes! {
    /// NTP association modes (RFC 5905 §3; 6 and 7 are ntpd's control and private modes).
    /// `NtpHeader::mode` keeps the mode as sent (0 is reserved).
    pub enum NtpMode: u8, unknown = "reserved" {
        SymmetricActive = 1 => "symmetric-active",
        SymmetricPassive = 2 => "symmetric-passive",
        Client = 3 => "client",
        Server = 4 => "server",
        Broadcast = 5 => "broadcast",
        /// ntpq and friends (readvar, peers…).
        Control = 6 => "control",
        /// ntpdc: monlist, the classic amplification.
        Private = 7 => "private",
        /// Not an NTP mode: a chronyc command to chronyd's command port.
        ChronyCommand = 0xff => "chronyc",
    }
}

/// What the first bytes of an NTP packet say. Mode 6 and 7 packets share only the first
/// byte's layout with the others; the rest is read only for modes 1–5.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NtpHeader {
    pub leap: u8,
    pub version: u8,
    pub mode: u8,
    pub stratum: u8,
    pub poll: i8,
    pub _pad: [u8; 3],
    /// Reference id as sent (network order bytes); a Kiss-o'-Death code when stratum is 0.
    pub refid: [u8; 4],
}

/// Parses the first 16 bytes of an NTP packet (LI/VN/mode, stratum, poll, precision, root
/// delay, root dispersion, refid). Fewer bytes than the first one: None.
pub const fn parse_ntp(head: &[u8; 16], len: usize) -> Option<NtpHeader> {
    if len < 1 {
        return None;
    }
    let b0 = head[0];
    let mode = b0 & 0x7;
    let mut h = NtpHeader {
        leap: b0 >> 6,
        version: (b0 >> 3) & 0x7,
        mode,
        stratum: 0,
        poll: 0,
        _pad: [0; 3],
        refid: [0; 4],
    };
    if mode <= NtpMode::Broadcast.code() && len >= 16 {
        h.stratum = head[1];
        h.poll = head[2] as i8;
        h.refid = [head[12], head[13], head[14], head[15]];
    }
    Some(h)
}

/// Whether a server's reply is a Kiss-o'-Death (stratum 0, RFC 5905 §7.4): the refid then
/// holds an ASCII code such as `RATE` or `DENY`.
pub const fn is_kiss_of_death(h: &NtpHeader) -> bool {
    h.mode == NtpMode::Server.code() && h.stratum == 0
}

crate::codes! {
    /// Which list of the network policy an address is checked against (`AddrKey::list`).
    pub enum List: u32, unknown = "unknown" {
        /// Replies from upstream servers (`ntp.servers`).
        Servers = 0 => "servers",
        /// Requests from clients of this server (`ntp.clients`).
        Clients = 1 => "clients",
        /// Mode 6/7 queries (`ntp.control`).
        Control = 2 => "control",
        /// Where one time daemon may connect (`egress`), by its rule id and the port.
        Egress = 3 => "egress",
        /// The host's name servers (`/etc/resolv.conf`, not the policy): their replies from
        /// port 53 to a time daemon's socket are its name lookups, not NTP.
        NameServers = 4 => "name_servers",
    }
}

impl List {
    pub const COUNT: u32 = List::ALL.len() as u32;

    /// Its bit in `NetPolicy::restricted`.
    pub const fn restricts(self) -> u32 {
        1 << self as u32
    }
}

/// Bits of `NetPolicy::restricted` beyond the address lists' `List::restricts`.
pub mod restrict {
    /// `ptp.domains` is given: Announce messages of other domains are refused.
    pub const PTP_DOMAINS: u32 = 1 << 8;
    /// `ptp.grandmasters` is given: Announce messages of other grandmasters are refused.
    pub const PTP_GRANDMASTERS: u32 = 1 << 9;
    /// `daemons` is given: only they may bind the time ports and open PTP packet sockets.
    pub const TIME_SOCKETS: u32 = 1 << 10;
    /// `egress` is given: the daemons it names may connect only where it says.
    pub const EGRESS: u32 = 1 << 11;
}

/// The list a packet of this mode, arriving here, belongs to.
pub const fn list_for_mode(m: u8) -> Option<List> {
    match NtpMode::from_code(m) {
        Some(NtpMode::Server) => Some(List::Servers),
        Some(NtpMode::Client) => Some(List::Clients),
        Some(NtpMode::Control | NtpMode::Private | NtpMode::ChronyCommand) => Some(List::Control),
        _ => None,
    }
}

/// Key of the address lists: an LPM trie keyed by (slot, list, scope, port, IPv6 address),
/// with IPv4 as v4-mapped IPv6 (`::ffff:a.b.c.d`). The prefix length counts the 128 bits
/// before the address, which are always matched whole. `scope` is the daemon's rule id for
/// `List::Egress` (0 otherwise), `port` the destination port (0: any port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddrKey {
    pub slot: u32,
    pub list: u32,
    pub scope: u32,
    pub port: u32,
    pub addr: [u8; 16],
}

/// Most entries one address list may hold (the kernel's trie holds every list of both
/// slots); all `egress` destinations together count as one list.
pub const MAX_LIST_ENTRIES: usize = 1024;

/// Bits of `AddrKey` before the address.
pub const ADDR_KEY_FIXED_BITS: u32 = 128;

/// Key of the time daemons known to the network guard: the executable within one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DaemonKey {
    pub slot: u32,
    pub _pad: u32,
    pub dev: u64,
    pub ino: u64,
}

/// What the network guard knows of one time daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Daemon {
    /// The clock rule naming its executable.
    pub rule_id: u32,
    /// `daemon::*`.
    pub flags: u32,
}

pub mod daemon {
    /// Listed in `daemons`: may bind the time ports and open PTP packet sockets.
    pub const TIME_SOCKETS: u32 = 1;
    /// Has an `egress` entry: it may connect only to the destinations listed there.
    pub const EGRESS_LISTED: u32 = 2;
}

/// An IPv4 address as v4-mapped IPv6 bytes.
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// The network policy of one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetPolicy {
    /// 0: no network policy in this slot (nothing is decided, only counted).
    pub generation: u32,
    /// Bit `List::restricts`: that list restricts (packets from addresses not in it are refused).
    pub restricted: u32,
    /// `policy::Mode`: enforce (drop) or audit (count and record, deliver).
    pub mode: u32,
    /// Per-source token bucket for requests (modes 3, 6, 7): tokens per second; 0: no limit.
    pub rate_per_sec: u32,
    pub burst: u32,
    pub _pad: u32,
    /// `ptp.domains` as a 256-bit set.
    pub ptp_domains: [u32; 8],
}

/// A source's token bucket (LRU map keyed by address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bucket {
    pub last_ns: u64,
    /// Tokens × 1e9 (a nanosecond-resolution refill without division in the kernel).
    pub nano_tokens: u64,
}

impl Bucket {
    /// A new source's bucket: full.
    pub const fn full(now_ns: u64, burst: u32) -> Self {
        let burst = if burst == 0 { 1 } else { burst };
        Bucket {
            last_ns: now_ns,
            nano_tokens: burst as u64 * 1_000_000_000,
        }
    }
}

/// The largest `ntp.rateLimit` rate: with it and a refill window of at most `MAX_REFILL_NS`,
/// the refill product stays within 64 bits (BPF has no 128-bit multiply).
pub const MAX_RATE_PER_SEC: u32 = 1_000_000;
const MAX_REFILL_NS: u64 = 1_000_000_000_000;

/// Takes one token from a bucket at `now_ns`; false when it is empty.
pub fn take_token(b: &mut Bucket, now_ns: u64, rate_per_sec: u32, burst: u32) -> bool {
    const NANO: u64 = 1_000_000_000;
    let cap = burst.max(1) as u64 * NANO;
    let elapsed = now_ns.saturating_sub(b.last_ns).min(MAX_REFILL_NS);
    let rate = rate_per_sec.min(MAX_RATE_PER_SEC) as u64;
    let refill = elapsed * rate;
    b.nano_tokens = b.nano_tokens.saturating_add(refill);
    if b.nano_tokens > cap {
        b.nano_tokens = cap;
    }
    b.last_ns = now_ns;
    if b.nano_tokens >= NANO {
        b.nano_tokens -= NANO;
        true
    } else {
        false
    }
}

crate::codes! {
    /// Why a packet or socket was refused. The names are the `reason` label values the
    /// alert rules and dashboards select on (prose, kept as they are).
    pub enum Reason: u8, unknown = "" {
        None = 0 => "",
        /// Its source is not in the list for its mode.
        NotListed = 1 => "source not listed",
        /// Its source sent requests faster than `ntp.rateLimit`.
        Rate = 2 => "over the rate limit",
        /// It arrived at an NTP socket in a shape the guard does not parse.
        Unparsed = 3 => "not parseable",
        /// A PTP Announce of a domain not in `ptp.domains`.
        Domain = 4 => "domain not listed",
        /// A PTP Announce of a grandmaster not in `ptp.grandmasters` (or too short to say).
        Grandmaster = 5 => "grandmaster not listed",
        /// A time port or PTP packet socket taken by a program not in `daemons`.
        NotATimeDaemon = 6 => "not a time daemon",
        /// A time daemon connecting to a destination its `egress` entry does not list.
        Destination = 7 => "destination not listed",
    }
}

/// What an upstream server last said of itself (kept per source address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Upstream {
    pub stratum: u8,
    pub leap: u8,
    pub _pad: [u8; 2],
    pub refid: [u8; 4],
}

/// The alert a server reply raises against what its source said before (`None`: never
/// heard from).
pub const fn upstream_alert(previous: Option<Upstream>, now: &NtpHeader) -> Alert {
    if now.stratum == 0 {
        return Alert::KissOfDeath;
    }
    match previous {
        None => Alert::NewSource,
        Some(p) if p.stratum != now.stratum || p.leap != now.leap => Alert::UpstreamChanged,
        Some(_) => Alert::None,
    }
}

/// Key of the exact per-CPU network counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NetCounterKey {
    /// `Kind`.
    pub kind: u8,
    /// NTP: the mode; NTS-KE: 3 (client) or 4 (server); PTP: the message type; bind and
    /// connect: `Service`; raw socket: 0.
    pub detail: u8,
    /// `policy::Verdict`.
    pub verdict: u8,
    pub reason: u8,
}

impl NetCounterKey {
    pub const fn new(
        kind: Kind,
        detail: u8,
        verdict: crate::policy::Verdict,
        reason: Reason,
    ) -> Self {
        NetCounterKey {
            kind: kind as u8,
            detail,
            verdict: verdict as u8,
            reason: reason as u8,
        }
    }
}

/// The record of one network decision.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEvent {
    pub boot_ns: u64,
    pub tai_ns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub len: u32,
    pub generation: u32,
    pub ntp: NtpHeader,
    pub verdict: u8,
    pub reason: u8,
    /// 4 or 6.
    pub family: u8,
    /// `Alert`, and for `Alert::UpstreamChanged` what the source said before.
    pub alert: u8,
    pub previous_stratum: u8,
    pub previous_leap: u8,
    /// `Kind`.
    pub kind: u8,
    /// Bind and connect: `Service`.
    pub service: u8,
    /// PTP messages.
    pub ptp: PtpHeader,
    /// PTP: what the grandmaster announced before (for `Alert::UpstreamChanged`).
    pub previous_grandmaster: crate::ptp::Grandmaster,
    /// Socket decisions: who opened the socket (packets arrive with no process to ask).
    pub caller: Caller,
    /// Socket decisions: the clock rule of the daemon (0: not a time daemon).
    pub rule_id: u32,
    /// Socket decisions: IPPROTO_UDP/TCP, or the packet socket's ethertype.
    pub protocol: u32,
}

crate::pod!(
    AddrKey,
    NetPolicy,
    Bucket,
    NetCounterKey,
    NetEvent,
    Upstream,
    DaemonKey,
    Daemon,
    Destination
);

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[..bytes.len().min(16)].copy_from_slice(&bytes[..bytes.len().min(16)]);
        h
    }

    #[test]
    fn parses_a_server_reply() {
        // LI 0, VN 4, mode 4; stratum 1; poll 6; refid "GPS\0".
        let p = head(&[
            0x24, 1, 6, 0xec, 0, 0, 0, 0, 0, 0, 0, 0, b'G', b'P', b'S', 0,
        ]);
        let h = parse_ntp(&p, 48).expect("header");
        assert_eq!(
            (h.leap, h.version, h.mode, h.stratum, h.poll),
            (0, 4, 4, 1, 6)
        );
        assert_eq!(&h.refid, b"GPS\0");
        assert!(!is_kiss_of_death(&h));
    }

    #[test]
    fn control_and_private_read_only_the_first_byte() {
        // ntpdc monlist: VN 2, mode 7, then implementation-specific bytes.
        let h = parse_ntp(&head(&[0x17, 0x00, 0x03, 0x2a]), 8).expect("header");
        assert_eq!(
            (h.version, h.mode, h.stratum),
            (2, NtpMode::Private.code(), 0)
        );
        assert_eq!(list_for_mode(h.mode), Some(List::Control));
        assert_eq!(parse_ntp(&head(&[]), 0), None);
        // Truncated mode 4: the mode is known, the rest is not read.
        let t = parse_ntp(&head(&[0x24, 1]), 2).expect("header");
        assert_eq!((t.mode, t.stratum), (4, 0));
    }

    #[test]
    fn kiss_of_death() {
        let p = head(&[
            0x24, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'R', b'A', b'T', b'E',
        ]);
        let h = parse_ntp(&p, 48).expect("header");
        assert!(is_kiss_of_death(&h));
    }

    #[test]
    fn upstream_alerts() {
        let h = |stratum, leap| NtpHeader {
            stratum,
            leap,
            mode: NtpMode::Server.code(),
            ..NtpHeader::default()
        };
        let was = Upstream {
            stratum: 2,
            leap: 0,
            ..Upstream::default()
        };
        assert_eq!(upstream_alert(None, &h(2, 0)), Alert::NewSource);
        assert_eq!(upstream_alert(Some(was), &h(2, 0)), Alert::None);
        assert_eq!(upstream_alert(Some(was), &h(3, 0)), Alert::UpstreamChanged);
        assert_eq!(upstream_alert(Some(was), &h(2, 1)), Alert::UpstreamChanged);
        assert_eq!(upstream_alert(Some(was), &h(0, 3)), Alert::KissOfDeath);
    }

    #[test]
    fn loopback_and_time_ports() {
        assert!(is_loopback(&v4_mapped([127, 0, 0, 53])));
        assert!(!is_loopback(&v4_mapped([10, 0, 0, 1])));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert!(is_loopback(&v6));
        v6[0] = 0xfe;
        assert!(!is_loopback(&v6));
        assert!(is_time_port(123) && is_time_port(319) && is_time_port(320));
        assert!(!is_time_port(323) && !is_time_port(4460));
        assert_eq!(Service::of_port(4460), Service::NtsKe);
    }

    #[test]
    fn token_bucket() {
        let mut b = Bucket::full(1_000_000_000, 2);
        // A full bucket of 2 at t=1s with 1 token/s: two requests, then none.
        assert!(take_token(&mut b, 1_000_000_000, 1, 2));
        assert!(take_token(&mut b, 1_000_000_000, 1, 2));
        assert!(!take_token(&mut b, 1_000_000_000, 1, 2));
        // Half a second later: still nothing; a second later: one.
        assert!(!take_token(&mut b, 1_500_000_000, 1, 2));
        assert!(take_token(&mut b, 2_000_000_000, 1, 2));
    }
}
