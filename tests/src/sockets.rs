//! Sockets as time daemons and intruders open them, and malformed frames, for the network
//! guard's tests (inside namespaces the tests made). Each call reports `{"errno": N, …}`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

fn errno_of(e: &std::io::Error) -> i32 {
    match e.raw_os_error() {
        Some(n) => n,
        // connect_timeout's own timeout carries no errno.
        None if e.kind() == std::io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        None => -1,
    }
}

fn outcome(r: std::io::Result<()>) -> Value {
    match r {
        Ok(()) => json!({"errno": 0}),
        Err(e) => json!({"errno": errno_of(&e), "error": e.to_string()}),
    }
}

fn addr(a: &str) -> Result<SocketAddr, String> {
    a.parse().map_err(|e| format!("address {a}: {e}"))
}

/// Binds a UDP socket to `at` (and holds it for a moment, so a test can see it bound).
pub fn udp_bind(at: &str) -> Result<Value, String> {
    let at = addr(at)?;
    Ok(outcome(UdpSocket::bind(at).map(|_| ())))
}

/// Connects to `to` over `proto` (tcp: with a 2 s timeout; udp: a connected socket, then
/// one datagram).
pub fn connect(proto: &str, to: &str) -> Result<Value, String> {
    let to = addr(to)?;
    let r = match proto {
        "tcp" => TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(|_| ()),
        "udp" => {
            let local = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            UdpSocket::bind(local).and_then(|s| {
                s.connect(to)?;
                s.send(&[0u8; 48]).map(|_| ())
            })
        }
        _ => return Err(format!("protocol {proto}: tcp or udp")),
    };
    Ok(outcome(r))
}

/// Sends one unconnected datagram to `to`, from port `from_port` (0: any).
pub fn send_to(to: &str, from_port: u16) -> Result<Value, String> {
    let to = addr(to)?;
    let local = if to.is_ipv4() {
        format!("0.0.0.0:{from_port}")
    } else {
        format!("[::]:{from_port}")
    };
    let r = UdpSocket::bind(&local).and_then(|s| s.send_to(&[0u8; 48], to).map(|_| ()));
    Ok(outcome(r))
}

/// Accepts TCP connections at `at` for `secs` seconds; how many came.
pub fn tcp_listen(at: &str, secs: u64) -> Result<Value, String> {
    let l = TcpListener::bind(addr(at)?).map_err(|e| format!("bind {at}: {e}"))?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut accepted = 0u64;
    while Instant::now() < deadline {
        match l.accept() {
            Ok((mut s, _)) => {
                accepted += 1;
                let _ = s.write_all(b"ok");
                let mut buf = [0u8; 16];
                let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
                let _ = s.read(&mut buf);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    Ok(json!({"errno": 0, "accepted": accepted}))
}

/// An ethertype by the name tests use.
fn ethertype(name: &str) -> Result<u16, String> {
    match name {
        "all" => Ok(0x0003),
        "ptp" => Ok(0x88f7),
        "ip" => Ok(0x0800),
        "none" => Ok(0),
        _ => Err(format!("protocol {name}: all, ptp, ip or none")),
    }
}

fn packet_socket(protocol: u16) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol.to_be())) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor this call just opened.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a packet socket for `proto` (all, ptp, ip), as ptp4l's Ethernet transport or a
/// sniffer does.
pub fn packet_open(proto: &str) -> Result<Value, String> {
    Ok(outcome(packet_socket(ethertype(proto)?).map(|_| ())))
}

/// Opens a packet socket for no protocol, then binds it to `proto`: the way around a check
/// made only at creation.
pub fn packet_bind(proto: &str) -> Result<Value, String> {
    let protocol = ethertype(proto)?;
    let r = packet_socket(0).and_then(|fd| {
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        // SAFETY: a valid socket and a sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    });
    Ok(outcome(r))
}

/// Sends raw frames on `interface`.
fn send_frames(interface: &str, frames: &[Vec<u8>]) -> Result<usize, String> {
    let fd = packet_socket(0).map_err(|e| format!("packet socket: {e}"))?;
    let name = std::ffi::CString::new(interface).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(format!("no interface {interface}"));
    }
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = index as i32;
    sll.sll_halen = 6;
    let mut sent = 0;
    for f in frames {
        // SAFETY: a valid socket, buffer and address.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                std::ptr::from_ref(&sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n >= 0 {
            sent += 1;
        }
    }
    Ok(sent)
}

const BROADCAST: [u8; 6] = [0xff; 6];
const SOURCE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbe, 0xef];

fn ethernet(ethertypes: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&SOURCE_MAC);
    for (i, t) in ethertypes.iter().enumerate() {
        f.extend_from_slice(&t.to_be_bytes());
        // A VLAN tag's TCI follows its TPID; the last type is the payload's.
        if i + 1 < ethertypes.len() {
            f.extend_from_slice(&[0x00, 0x05]);
        }
    }
    f.extend_from_slice(payload);
    f
}

/// A PTP Announce from `grandmaster` in `domain`.
pub fn announce(domain: u8, grandmaster: [u8; 8]) -> Vec<u8> {
    let mut m = vec![0u8; 64];
    m[0] = 0x0b;
    m[1] = 0x02;
    m[2..4].copy_from_slice(&64u16.to_be_bytes());
    m[4] = domain;
    m[20..28].copy_from_slice(&grandmaster);
    m[29] = 1;
    m[47] = 10;
    m[48] = 6;
    m[52] = 128;
    m[53..61].copy_from_slice(&grandmaster);
    m
}

/// An IPv4 header for `payload_len` bytes of `proto`, with a given IHL and fragment field.
fn ipv4(proto: u8, payload_len: usize, ihl: u8, frag: u16) -> Vec<u8> {
    let header_len = usize::from(ihl.max(5)) * 4;
    let mut h = vec![0u8; header_len];
    h[0] = 0x40 | (ihl & 0x0f);
    h[2..4].copy_from_slice(&((header_len + payload_len) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&[10, 231, 0, 66]);
    h[16..20].copy_from_slice(&[10, 231, 0, 1]);
    // A right checksum, so that what is well formed enough reaches the sockets.
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A deterministic stream of bytes (xorshift), so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Every malformed shape of time traffic the parsers must survive, as Ethernet frames: PTP
/// cut at every length, behind 1–3 VLAN tags; IPv4 with bad header lengths, options and
/// fragments; UDP to the time ports cut at every length; IPv6 with chains of extension
/// headers that overrun the packet; TCP to NTS-KE with a bad data offset; and random bytes
/// under each ethertype.
pub fn malformed_frames() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let gm = [0xee, 0xee, 0xee, 0xff, 0xfe, 0, 0, 9];
    let full = announce(0, gm);
    for cut in 0..=full.len() {
        frames.push(ethernet(&[0x88f7], &full[..cut]));
        frames.push(ethernet(&[0x8100, 0x88f7], &full[..cut]));
    }
    frames.push(ethernet(&[0x88a8, 0x8100, 0x88f7], &full));
    frames.push(ethernet(&[0x8100, 0x8100, 0x8100, 0x88f7], &full));
    for port in [123u16, 319, 320] {
        for cut in 0..=full.len() {
            let u = udp(40000, port, &full[..cut]);
            let mut p = ipv4(17, u.len(), 5, 0);
            p.extend_from_slice(&u);
            frames.push(ethernet(&[0x0800], &p));
        }
    }
    for (ihl, frag) in [
        (0u8, 0u16),
        (4, 0),
        (15, 0),
        (5, 0x2000),
        (5, 0x0001),
        (5, 0x1fff),
    ] {
        let u = udp(40000, 319, &full);
        let mut p = ipv4(17, u.len(), ihl, frag);
        p.extend_from_slice(&u);
        frames.push(ethernet(&[0x0800], &p));
        // The same cut inside the IP header.
        frames.push(ethernet(&[0x0800], &p[..p.len().min(13)]));
    }
    // IPv6 with n destination-options headers, the last claiming more than is there.
    for n in 0..7u8 {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, 60, 64];
        p.extend_from_slice(&[0xfd, 0, 0x02, 0x31, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42]);
        p.extend_from_slice(&[0xfd, 0, 0x02, 0x31, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02]);
        for i in 0..n {
            let next = if i + 1 == n { 17 } else { 60 };
            let len = if i + 1 == n { 200 } else { 0 };
            p.extend_from_slice(&[next, len, 1, 4, 0, 0, 0, 0]);
        }
        p.extend_from_slice(&udp(40000, 123, &[0x17, 0, 3, 0x2a]));
        frames.push(ethernet(&[0x86dd], &p));
    }
    for offset in [0u8, 1, 4, 15] {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&4460u16.to_be_bytes());
        t[12] = offset << 4;
        t[13] = 0x02;
        let mut p = ipv4(6, t.len(), 5, 0);
        p.extend_from_slice(&t);
        frames.push(ethernet(&[0x0800], &p));
    }
    let mut noise = Noise(0x7469_6d65_6775_6172);
    for i in 0..400 {
        let t = [0x0800u16, 0x86dd, 0x88f7, 0x8100][i % 4];
        let len = (noise.next() % 200) as usize;
        frames.push(ethernet(&[t], &noise.bytes(len)));
    }
    frames
}

/// Sends the malformed catalogue on `interface`; how many frames went out.
pub fn send_malformed(interface: &str) -> Result<Value, String> {
    let frames = malformed_frames();
    let sent = send_frames(interface, &frames)?;
    Ok(json!({"errno": 0, "frames": frames.len(), "sent": sent}))
}

/// Sends NTP payloads cut at every length from 0 to 48 bytes to `to`, from `from`.
pub fn send_truncated_ntp(from: &str, to: &str) -> Result<Value, String> {
    let s = UdpSocket::bind(format!("{from}:0")).map_err(|e| format!("bind {from}: {e}"))?;
    let mut full = [0u8; 48];
    full[0] = 0x17;
    full[2] = 3;
    full[3] = 0x2a;
    let mut sent = 0;
    for cut in 0..=full.len() {
        if s.send_to(&full[..cut], to).is_ok() {
            sent += 1;
        }
    }
    Ok(json!({"errno": 0, "sent": sent}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_is_stable_and_varied() {
        let a = malformed_frames();
        let b = malformed_frames();
        assert_eq!(a, b, "the same frames every run");
        assert!(a.iter().any(|f| f.len() == 14), "an empty PTP frame");
        assert!(a.iter().any(|f| f.len() > 100), "long frames too");
        let announce = &a[2 * 64];
        assert_eq!(&announce[12..14], &[0x88, 0xf7]);
        assert_eq!(announce[14], 0x0b);
    }
}
