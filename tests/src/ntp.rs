//! A minimal NTP server for tests: it answers client requests (mode 3) with server replies
//! (mode 4) whose clock is this host's plus a chosen offset, so a real client (chronyd) can
//! be shown a source that is a little or very far ahead.

use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: i128 = 2_208_988_800;

/// An NTP timestamp (seconds since 1900, 32-bit fraction) of Unix nanoseconds.
pub fn ntp_timestamp(unix_ns: i128) -> [u8; 8] {
    let secs = unix_ns.div_euclid(1_000_000_000) + NTP_UNIX_OFFSET;
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    let frac = (nanos << 32) / 1_000_000_000;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&(secs as u32).to_be_bytes());
    out[4..].copy_from_slice(&(frac as u32).to_be_bytes());
    out
}

/// The reply to one request, or `None` for anything that is not a client request.
pub fn reply(request: &[u8], now_ns: i128) -> Option<[u8; 48]> {
    if request.len() < 48 || request[0] & 0x7 != 3 {
        return None;
    }
    let version = (request[0] >> 3) & 0x7;
    let mut r = [0u8; 48];
    r[0] = (version << 3) | 4; // leap 0, the client's version, mode 4 (server)
    r[1] = 1; // stratum 1
    r[2] = request[2]; // poll
    r[3] = (-20i8) as u8; // precision ~1 µs
    r[12..16].copy_from_slice(b"GPS\0");
    let now = ntp_timestamp(now_ns);
    r[16..24].copy_from_slice(&now); // reference
    r[24..32].copy_from_slice(&request[40..48]); // origin: the client's transmit
    r[32..40].copy_from_slice(&now); // receive
    r[40..48].copy_from_slice(&now); // transmit
    Some(r)
}

/// A running server; stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves on `addr` (e.g. 127.0.0.1:10123) a clock `offset_ns` ahead of this host's.
    pub fn start(addr: &str, offset_ns: i128) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let now = crate::clock::realtime_ns() + offset_ns;
                if let Some(r) = reply(&buf[..n], now) {
                    let _ = socket.send_to(&r, from);
                }
            }
        });
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A packet of the given kind, as a client, ntpq (mode 6) or ntpdc (mode 7, monlist) sends it.
pub fn packet(kind: &str) -> Option<Vec<u8>> {
    Some(match kind {
        // VN 4, mode 3, 48 bytes.
        "client" => {
            let mut p = vec![0u8; 48];
            p[0] = (4 << 3) | 3;
            p
        }
        // Server replies as an upstream sends them: stratum 2, no leap; then stratum 3 with a
        // leap second announced; then a Kiss-o'-Death (stratum 0, RATE).
        "server" | "server-changed" | "kod" => {
            let (leap, stratum, refid) = match kind {
                "server" => (0u8, 2u8, [192, 0, 2, 1]),
                "server-changed" => (1, 3, [192, 0, 2, 1]),
                _ => (0, 0, *b"RATE"),
            };
            let mut p = vec![0u8; 48];
            p[0] = (leap << 6) | (4 << 3) | 4;
            p[1] = stratum;
            p[2] = 6;
            p[12..16].copy_from_slice(&refid);
            p
        }
        // ntpq readvar: VN 2, mode 6, opcode 2, 12-byte header.
        "control" => vec![0x16, 0x02, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        // ntpdc monlist (MON_GETLIST_1): VN 2, mode 7, implementation 3, request 42.
        "private" => {
            let mut p = vec![0u8; 48];
            p[0] = 0x17;
            p[2] = 0x03;
            p[3] = 0x2a;
            p
        }
        _ => return None,
    })
}

/// Sends `count` packets of `kind` from `from` (an address of this host) to `to`; over
/// IPv6 with `dstopts`, each carries a destination options header (a PadN option), the
/// simplest way to put an extension header between IPv6 and UDP.
pub fn send_with(
    from: &str,
    to: &str,
    kind: &str,
    count: u32,
    dstopts: bool,
) -> Result<(), String> {
    let p = packet(kind).ok_or_else(|| {
        format!("unknown packet kind {kind}: client, control, private, server, server-changed, kod")
    })?;
    let bind = if from.contains(':') {
        format!("[{from}]:0")
    } else {
        format!("{from}:0")
    };
    let s = UdpSocket::bind(&bind).map_err(|e| format!("bind {bind}: {e}"))?;
    if dstopts {
        use std::os::fd::AsRawFd as _;
        const IPV6_DSTOPTS: libc::c_int = 59;
        // Next header (filled in by the kernel), length 0 (8 bytes), PadN of 4.
        let opts: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
        // SAFETY: a valid socket and an 8-byte option buffer.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IPV6,
                IPV6_DSTOPTS,
                opts.as_ptr().cast(),
                opts.len() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(format!("IPV6_DSTOPTS: {}", std::io::Error::last_os_error()));
        }
    }
    for _ in 0..count {
        s.send_to(&p, to)
            .map_err(|e| format!("send to {to}: {e}"))?;
    }
    Ok(())
}

/// Sends `count` packets of `kind` from `from` (an address of this host) to `to`.
pub fn send(from: &str, to: &str, kind: &str, count: u32) -> Result<(), String> {
    send_with(from, to, kind, count, false)
}

/// Requests sent and replies received by `load`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub sent: u64,
    pub answered: u64,
    pub seconds: f64,
}

/// How `load` sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Each socket keeps a window of requests in flight (a new one for each reply, the
    /// window refilled after 20 ms without one): a server at saturation, not flooded.
    Saturate,
    /// As fast as they go, replies counted as they come.
    Flood,
    /// This many requests a second, evenly, as an ordinary client polls.
    PerSecond(f64),
}

/// Client requests to an NTP server `to` from `from` for `secs` seconds.
pub fn load(from: &str, to: &str, secs: f64, pace: Pace) -> Result<Load, String> {
    const WINDOW: u64 = 8;
    let count = if matches!(pace, Pace::PerSecond(_)) {
        1
    } else {
        16
    };
    let request = packet("client").unwrap_or_default();
    let mut sockets = Vec::new();
    for _ in 0..count {
        let s = UdpSocket::bind(format!("{from}:0")).map_err(|e| format!("bind {from}: {e}"))?;
        s.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        sockets.push((s, 0u64, std::time::Instant::now()));
    }
    let started = std::time::Instant::now();
    let mut out = Load::default();
    let mut buf = [0u8; 128];
    while started.elapsed().as_secs_f64() < secs {
        for (s, in_flight, last) in &mut sockets {
            while s.recv(&mut buf).is_ok() {
                out.answered += 1;
                *in_flight = in_flight.saturating_sub(1);
                *last = std::time::Instant::now();
            }
            match pace {
                Pace::Saturate => {
                    if last.elapsed() > Duration::from_millis(20) {
                        *in_flight = 0;
                        *last = std::time::Instant::now();
                    }
                    while *in_flight < WINDOW && s.send(&request).is_ok() {
                        out.sent += 1;
                        *in_flight += 1;
                    }
                }
                Pace::Flood => {
                    for _ in 0..64 {
                        if s.send(&request).is_err() {
                            break;
                        }
                        out.sent += 1;
                    }
                }
                Pace::PerSecond(rate) => {
                    let due = (started.elapsed().as_secs_f64() * rate) as u64;
                    if out.sent < due && s.send(&request).is_ok() {
                        out.sent += 1;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        }
    }
    // Replies still on their way.
    std::thread::sleep(Duration::from_millis(100));
    for (s, _, _) in &sockets {
        while s.recv(&mut buf).is_ok() {
            out.answered += 1;
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Counts the datagrams arriving at `addr` for `secs` seconds, by source address.
pub fn receive(addr: &str, secs: u64) -> Result<serde_json::Value, String> {
    let s = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        if let Ok((_, from)) = s.recv_from(&mut buf) {
            *counts.entry(from.ip().to_string()).or_default() += 1;
        }
    }
    Ok(serde_json::json!(counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        // The Unix epoch is 2208988800 s after the NTP epoch; half a second is 2^31.
        assert_eq!(
            ntp_timestamp(500_000_000),
            [0x83, 0xaa, 0x7e, 0x80, 0x80, 0, 0, 0]
        );
    }

    #[test]
    fn replies_only_to_client_requests() {
        let mut req = [0u8; 48];
        req[0] = (4 << 3) | 3;
        req[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let r = reply(&req, 0).expect("a reply");
        assert_eq!(r[0], (4 << 3) | 4);
        assert_eq!(&r[24..32], &[1, 2, 3, 4, 5, 6, 7, 8]);
        req[0] = (4 << 3) | 6; // control
        assert!(reply(&req, 0).is_none());
        assert!(reply(&req[..20], 0).is_none());
    }
}
