//! Sockets that matter to time: who may own the time ports and see PTP frames, and where
//! each time daemon may connect.
//!
//! - cgroup sock_addr `bind4/6`: a UDP socket bound to port 123, 319 or 320 by a program not
//!   in `daemons` fails with EPERM (enforce). A port rule alone would be bypassed by a
//!   packet socket, so
//! - BPF LSM `socket_create`/`socket_bind`: an AF_PACKET socket for every frame (ETH_P_ALL)
//!   or for PTP's ethertype is decided the same way, at creation and when bound to that
//!   protocol later.
//! - cgroup sock_addr `connect4/6` and `sendmsg4/6`: a time daemon's connections and
//!   unconnected datagrams go only to its `egress` destinations (its own host's loopback
//!   always; a server's reply from a time port to a client by `ntp.clients`). Each
//!   destination a daemon uses for the first time is recorded as `new_destination`. The
//!   same calls note the UDP sockets of every process a clock rule names (its time
//!   daemons), whatever port they use: what arrives on them is NTP (`ntp`).
//!
//! Who asks is the executable file (device and inode), as for the clock.

use agent_common::{
    alert::Alert,
    maps::NetBudget,
    net::{
        daemon, is_loopback, is_time_port, packet_protocol_sees_ptp, restrict, v4_mapped, Daemon,
        DaemonKey, Destination, Kind, List, NetCounterKey, NetPolicy, Reason, Service, AF_PACKET,
        IPPROTO_UDP, NTP_PORT,
    },
    policy::Verdict,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, lsm, map},
    maps::{HashMap, LruHashMap},
    programs::{LsmContext, SockAddrContext},
};

use super::{count, emit, listed, policy_in_force, verdict_for};
use crate::{
    caller::{current_exe, fill_ids, kread, offsets},
    clock::lsm_verdict,
    emit::boot_ns,
    identity::{taint_of, taints_lost},
    policy::exe_has_rule,
};

/// Time daemons by (slot, executable).
#[map]
static NET_DAEMONS: HashMap<DaemonKey, Daemon> = HashMap::pinned(
    agent_common::policy::SLOTS * agent_common::policy::MAX_RULES,
    0,
);

/// Destinations each daemon has used (least recently used forgotten first).
#[map]
static NET_DESTINATIONS: LruHashMap<Destination, u8> = LruHashMap::pinned(4096, 0);

/// The UDP sockets of time daemons, by socket cookie (never reused: a closed socket's entry
/// only waits to be forgotten, least recently used first).
#[map]
static NET_TIME_SOCKETS: LruHashMap<u64, u8> = LruHashMap::pinned(4096, 0);

/// Whether the socket of `cookie` is a time daemon's (`note_time_socket`).
#[inline(always)]
pub fn is_time_socket(cookie: u64) -> bool {
    // SAFETY: only whether the key is there is read.
    unsafe { NET_TIME_SOCKETS.get(cookie) }.is_some()
}

/// sock_addr programs: 1 lets the call go on, 0 fails it with EPERM.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// What a sock_addr call names: the address (v4-mapped for IPv4) and port, host order.
#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, family: u8) -> ([u8; 16], u16) {
    // SAFETY: the context the kernel passed; the verifier checks each field read.
    let sa = unsafe { &*ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    let addr = if family == 4 {
        v4_mapped(sa.user_ip4.to_ne_bytes())
    } else {
        let w = sa.user_ip6;
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = w[i].to_ne_bytes();
            a[i * 4] = b[0];
            a[i * 4 + 1] = b[1];
            a[i * 4 + 2] = b[2];
            a[i * 4 + 3] = b[3];
            i += 1;
        }
        a
    };
    (addr, port)
}

/// The calling time daemon under the policy of `slot`; rule id 0 when the caller is none,
/// or when its process is tainted (`identity`): code another process put in a daemon does
/// not get the daemon's sockets.
/// (A plain value, not an Option: 6.1's verifier rejects the undefined payload of a None
/// that the compiler reads before looking at the tag.)
#[inline(always)]
fn calling_daemon(slot: u32) -> (u64, u64, Daemon) {
    let (dev, ino) = current_exe(&offsets());
    let key = DaemonKey {
        slot,
        _pad: 0,
        dev,
        ino,
    };
    // SAFETY: copied out at once.
    let mut d = unsafe { NET_DAEMONS.get(key) }.copied().unwrap_or_default();
    if d.rule_id != 0
        && (taint_of((bpf_get_current_pid_tgid() >> 32) as u32).is_some() || taints_lost())
    {
        d = Daemon::default();
    }
    (dev, ino, d)
}

/// One socket decision, as recorded.
struct SocketDecision {
    kind: Kind,
    service: Service,
    /// 4 or 6; 0 for a packet socket.
    family: u8,
    verdict: Verdict,
    reason: Reason,
    alert: Alert,
    addr: [u8; 16],
    port: u16,
    /// IPPROTO_UDP/TCP, or the packet socket's ethertype.
    protocol: u32,
}

/// Records a socket decision (within the sockets' budget) with the calling process.
#[inline(always)]
fn record(d: &SocketDecision, generation: u32, dev: u64, ino: u64, daemon: Daemon) {
    emit(NetBudget::Sockets, boot_ns(), generation, |ev| {
        ev.kind = d.kind as u8;
        ev.service = d.service as u8;
        ev.family = d.family;
        ev.verdict = d.verdict as u8;
        ev.reason = d.reason as u8;
        ev.alert = d.alert as u8;
        ev.dst = d.addr;
        ev.dport = d.port;
        fill_ids(&mut ev.caller);
        ev.caller.exe_dev = dev;
        ev.caller.exe_ino = ino;
        ev.rule_id = daemon.rule_id;
        ev.protocol = d.protocol;
    });
}

/// What a sock_addr program returns for a verdict.
#[inline(always)]
fn sock_addr_verdict(v: Verdict) -> i32 {
    if v == Verdict::Deny {
        REFUSE
    } else {
        ALLOW
    }
}

/// Whether the policy lets this caller own a time socket.
#[inline(always)]
fn may_own_time_socket(policy: &NetPolicy, d: Daemon) -> bool {
    policy.restricted & restrict::TIME_SOCKETS == 0 || d.flags & daemon::TIME_SOCKETS != 0
}

#[cgroup_sock_addr(bind4)]
pub fn time_bind4(ctx: SockAddrContext) -> i32 {
    bind(&ctx, 4)
}

#[cgroup_sock_addr(bind6)]
pub fn time_bind6(ctx: SockAddrContext) -> i32 {
    bind(&ctx, 6)
}

#[inline(always)]
fn bind(ctx: &SockAddrContext, family: u8) -> i32 {
    // SAFETY: the context the kernel passed.
    let proto = unsafe { (*ctx.sock_addr).protocol };
    let (addr, port) = sock_addr(ctx, family);
    if proto != IPPROTO_UDP as u32 || !is_time_port(port) {
        return ALLOW;
    }
    let Some((slot, policy)) = policy_in_force() else {
        return ALLOW;
    };
    let (dev, ino, d) = calling_daemon(slot);
    let why = if may_own_time_socket(&policy, d) {
        Reason::None
    } else {
        Reason::NotATimeDaemon
    };
    let v = verdict_for(why, &policy);
    let svc = Service::of_port(port);
    count(NetCounterKey::new(Kind::Bind, svc as u8, v, why));
    // Binding a time port is rare and worth a record, allowed or not.
    let decision = SocketDecision {
        kind: Kind::Bind,
        service: svc,
        family,
        verdict: v,
        reason: why,
        alert: Alert::None,
        addr,
        port,
        protocol: proto,
    };
    record(&decision, policy.generation, dev, ino, d);
    sock_addr_verdict(v)
}

#[cgroup_sock_addr(connect4)]
pub fn time_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, 4, false)
}

#[cgroup_sock_addr(connect6)]
pub fn time_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, 6, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn time_sendmsg4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, 4, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn time_sendmsg6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, 6, true)
}

/// The local port of the socket a sock_addr call is made on (host order).
#[inline(always)]
fn local_port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: the context the kernel passed; `sk` is always set for these hooks.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return 0;
    }
    // SAFETY: a socket pointer the verifier tracks; src_port is in host order.
    unsafe { (*sk).src_port as u16 }
}

#[inline(always)]
fn connect(ctx: &SockAddrContext, family: u8, datagram: bool) -> i32 {
    let Some((slot, policy)) = policy_in_force() else {
        return ALLOW;
    };
    // SAFETY: the context the kernel passed.
    let proto = unsafe { (*ctx.sock_addr).protocol };
    if proto == IPPROTO_UDP as u32 && policy.restricted & NTP_LISTS != 0 {
        note_time_socket(ctx, datagram);
    }
    // Unconnected datagrams are decided only when egress is: they are the hot path of an
    // NTP server's replies.
    if datagram && policy.restricted & restrict::EGRESS == 0 {
        return ALLOW;
    }
    let (dev, ino, dm) = calling_daemon(slot);
    if dm.rule_id == 0 {
        return ALLOW;
    }
    let (addr, port) = sock_addr(ctx, family);
    let why = if dm.flags & daemon::EGRESS_LISTED == 0 || is_loopback(&addr) {
        Reason::None
    } else if datagram && port != NTP_PORT && is_time_port(local_port(ctx)) {
        // A server answering a client from its time port: `ntp.clients` decides.
        if policy.restricted & List::Clients.restricts() != 0
            && !listed(slot, List::Clients, 0, 0, addr)
        {
            Reason::Destination
        } else {
            Reason::None
        }
    } else if listed(slot, List::Egress, dm.rule_id, port, addr)
        || listed(slot, List::Egress, dm.rule_id, 0, addr)
    {
        Reason::None
    } else {
        Reason::Destination
    };
    let v = verdict_for(why, &policy);
    let svc = Service::of_port(port);
    count(NetCounterKey::new(Kind::Connect, svc as u8, v, why));
    let raised = if v == Verdict::Deny {
        Alert::None
    } else {
        first_use(dm.rule_id, port, proto, addr)
    };
    if v != Verdict::Allow || raised != Alert::None {
        let decision = SocketDecision {
            kind: Kind::Connect,
            service: svc,
            family,
            verdict: v,
            reason: why,
            alert: raised,
            addr,
            port,
            protocol: proto,
        };
        record(&decision, policy.generation, dev, ino, dm);
    }
    sock_addr_verdict(v)
}

/// The address lists that hold what arrives at NTP sockets.
pub const NTP_LISTS: u32 =
    List::Servers.restricts() | List::Clients.restricts() | List::Control.restricts();

/// A UDP socket connected, or sent from, by a process a clock rule names is a time daemon's:
/// a server's reply to it is NTP from whatever port it comes (`server x port 10123`), held
/// to `ntp.servers` (`ntp::decide`). Datagrams sent from a time port are left out: replies
/// to those arrive at a time port, and they are an NTP server's hot path.
#[inline(always)]
fn note_time_socket(ctx: &SockAddrContext, datagram: bool) {
    if datagram && is_time_port(local_port(ctx)) {
        return;
    }
    let (dev, ino) = current_exe(&offsets());
    if !exe_has_rule(dev, ino) {
        return;
    }
    // SAFETY: the helper reads the socket of the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    if !is_time_socket(cookie) {
        let _ = NET_TIME_SOCKETS.insert(cookie, 1, 0);
    }
}

/// `Alert::NewDestination` the first time a daemon uses a destination.
#[inline(always)]
fn first_use(rule_id: u32, port: u16, proto: u32, addr: [u8; 16]) -> Alert {
    let key = Destination {
        rule_id,
        port,
        proto: proto as u8,
        _pad: 0,
        addr,
    };
    // SAFETY: only whether it is there is used.
    if unsafe { NET_DESTINATIONS.get(key) }.is_some() {
        return Alert::None;
    }
    let _ = NET_DESTINATIONS.insert(key, 1, 0);
    Alert::NewDestination
}

/// LSM_HOOK(int, 0, socket_create, int family, int type, int protocol, int kern)
#[lsm(hook = "socket_create")]
pub fn packet_socket_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    if family != AF_PACKET as i32 || kern != 0 {
        return 0;
    }
    let protocol: i32 = ctx.arg(2);
    packet_socket(u16::from_be(protocol as u16))
}

/// LSM_HOOK(int, 0, socket_bind, struct socket *sock, struct sockaddr *address, int addrlen)
#[lsm(hook = "socket_bind")]
pub fn packet_socket_bind(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let address: *const u8 = ctx.arg(1);
    let addrlen: i32 = ctx.arg(2);
    // struct sockaddr_ll: sll_family, then sll_protocol (network order).
    if addrlen < 4 || kread::<u16>(address, 0) != Some(AF_PACKET) {
        return 0;
    }
    match kread::<u16>(address, 2) {
        Some(p) => packet_socket(u16::from_be(p)),
        None => 0,
    }
}

/// A packet socket of `protocol` (host order): decided when it sees PTP frames.
#[inline(always)]
fn packet_socket(protocol: u16) -> i32 {
    if !packet_protocol_sees_ptp(protocol) {
        return 0;
    }
    let Some((slot, policy)) = policy_in_force() else {
        return 0;
    };
    let (dev, ino, d) = calling_daemon(slot);
    let why = if may_own_time_socket(&policy, d) {
        Reason::None
    } else {
        Reason::NotATimeDaemon
    };
    let v = verdict_for(why, &policy);
    count(NetCounterKey::new(Kind::RawSocket, 0, v, why));
    // Rare, and each one can see every PTP frame: always recorded.
    let decision = SocketDecision {
        kind: Kind::RawSocket,
        service: Service::Ptp,
        family: 0,
        verdict: v,
        reason: why,
        alert: Alert::None,
        addr: [0; 16],
        port: 0,
        protocol: protocol as u32,
    };
    record(&decision, policy.generation, dev, ino, d);
    lsm_verdict(v)
}
