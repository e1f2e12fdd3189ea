//! Network records of the audit trail: one per decision on an NTP packet, an NTS-KE
//! exchange, a PTP message or a time socket.

use agent_common::{
    alert::Alert,
    net::{is_kiss_of_death, Kind, NetEvent, NtpMode, Reason, Service},
    policy::Verdict,
    ptp::{flags, Message},
};
use serde::Serialize;
use serde_json::Value;

use crate::{events, policy::model::ClockIdentity, records::Who};

/// One network decision as a record.
#[derive(Serialize)]
pub struct NetRecord<'a> {
    time: String,
    boot_ns: u64,
    host: &'a str,
    kind: &'static str,
    alert: &'static str,
    verdict: &'static str,
    reason: &'static str,
    policy: &'a str,
    generation: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    packet: Option<Packet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ntp: Option<Ntp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ptp: Option<Ptp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    who: Option<SocketWho<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket: Option<Socket>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Packet {
    Ip {
        src: String,
        sport: u16,
        dst: String,
        dport: u16,
        len: u32,
    },
    /// PTP over Ethernet (layer 2): no addresses.
    Ethernet { transport: &'static str, len: u32 },
}

#[derive(Serialize)]
#[serde(untagged)]
enum Ntp {
    KeyExchange {
        nts_ke: &'static str,
    },
    Packet {
        version: u8,
        mode: &'static str,
        leap: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        stratum: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        poll: Option<i8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        refid: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        kiss_of_death: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        previous: Option<NtpBefore>,
    },
}

/// What an NTP source said before it changed.
#[derive(Serialize)]
struct NtpBefore {
    stratum: u8,
    leap: u8,
}

#[derive(Serialize)]
struct Ptp {
    message: &'static str,
    version: u8,
    domain: u8,
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    grandmaster: Option<Grandmaster>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<GrandmasterBefore>,
}

#[derive(Serialize)]
struct Grandmaster {
    identity: String,
    priority1: u8,
    clock_class: u8,
    priority2: u8,
    utc_offset: i16,
    leap61: bool,
    leap59: bool,
    steps_removed: u16,
}

/// What the grandmaster announced before it changed.
#[derive(Serialize)]
struct GrandmasterBefore {
    priority1: u8,
    clock_class: u8,
    utc_offset: i16,
    leap61: bool,
    leap59: bool,
}

/// Who opened, bound or connected the socket, and the time daemon's rule they run as.
#[derive(Serialize)]
struct SocketWho<'a> {
    #[serde(flatten)]
    who: Who<'a>,
    daemon: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Socket {
    /// A packet socket: its ethertype.
    Packet {
        family: &'static str,
        protocol: String,
    },
    Ip {
        protocol: &'static str,
        service: &'static str,
        address: String,
        port: u16,
    },
}

/// An address of the maps in its usual notation (IPv4 for a v4-mapped one of family 4).
pub(super) fn address(family: u8, bytes: &[u8; 16]) -> String {
    let v6 = std::net::Ipv6Addr::from(*bytes);
    match (family, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => v4.to_string(),
        _ => v6.to_string(),
    }
}

fn clock_identity(id: &[u8; 8]) -> String {
    ClockIdentity(*id).to_string()
}

fn ip_packet(ev: &NetEvent) -> Packet {
    Packet::Ip {
        src: address(ev.family, &ev.src),
        sport: ev.sport,
        dst: address(ev.family, &ev.dst),
        dport: ev.dport,
        len: ev.len,
    }
}

fn ntp(ev: &NetEvent) -> Ntp {
    let n = &ev.ntp;
    if ev.kind == Kind::NtsKe.code() {
        let nts_ke = if n.mode == NtpMode::Client.code() {
            "client opening"
        } else {
            "server answering"
        };
        return Ntp::KeyExchange { nts_ke };
    }
    let has_source = n.mode <= NtpMode::Broadcast.code();
    let refid = has_source.then(|| {
        if n.stratum == 0 || n.stratum == 1 {
            String::from_utf8_lossy(&n.refid)
                .trim_end_matches('\0')
                .to_string()
        } else {
            std::net::Ipv4Addr::from(n.refid).to_string()
        }
    });
    Ntp::Packet {
        version: n.version,
        mode: NtpMode::name_of(n.mode),
        leap: n.leap,
        stratum: has_source.then_some(n.stratum),
        poll: has_source.then_some(n.poll),
        kiss_of_death: refid.clone().filter(|_| is_kiss_of_death(n)),
        refid,
        previous: (ev.alert == Alert::UpstreamChanged.code()).then_some(NtpBefore {
            stratum: ev.previous_stratum,
            leap: ev.previous_leap,
        }),
    }
}

fn ptp(ev: &NetEvent) -> Ptp {
    let p = &ev.ptp;
    let b = &ev.previous_grandmaster;
    Ptp {
        message: Message::name_of(p.message_type),
        version: p.version,
        domain: p.domain,
        source: format!("{}-{}", clock_identity(&p.source), p.source_port),
        grandmaster: (p.announce != 0).then(|| Grandmaster {
            identity: clock_identity(&p.grandmaster),
            priority1: p.priority1,
            clock_class: p.clock_class,
            priority2: p.priority2,
            utc_offset: p.utc_offset,
            leap61: p.flags & flags::LEAP61 != 0,
            leap59: p.flags & flags::LEAP59 != 0,
            steps_removed: p.steps_removed,
        }),
        previous: (ev.alert == Alert::UpstreamChanged.code()).then_some(GrandmasterBefore {
            priority1: b.priority1,
            clock_class: b.clock_class,
            utc_offset: b.utc_offset,
            leap61: b.leap & flags::LEAP61 != 0,
            leap59: b.leap & flags::LEAP59 != 0,
        }),
    }
}

fn socket(ev: &NetEvent) -> Socket {
    if ev.kind == Kind::RawSocket.code() {
        return Socket::Packet {
            family: "packet",
            protocol: format!("{:#06x}", ev.protocol),
        };
    }
    Socket::Ip {
        protocol: match ev.protocol {
            6 => "tcp",
            17 => "udp",
            _ => "other",
        },
        service: Service::name_of(ev.service),
        address: address(ev.family, &ev.dst),
        port: ev.dport,
    }
}

/// One network decision as a record. Socket decisions name their process: `exe` is its
/// executable's path while known, `daemon` the name of the time daemon's rule it runs as.
pub fn net_record<'a>(
    ev: &NetEvent,
    policy: &'a str,
    host: &'a str,
    exe: Option<&'a str>,
    daemon: Option<String>,
) -> NetRecord<'a> {
    let mut record = NetRecord {
        time: events::rfc3339(events::wall_time(ev.tai_ns)),
        boot_ns: ev.boot_ns,
        host,
        kind: Kind::name_of(ev.kind),
        alert: super::alert_label(ev.kind, ev.alert),
        verdict: Verdict::name_of(ev.verdict),
        reason: Reason::name_of(ev.reason),
        policy,
        generation: ev.generation,
        packet: None,
        ntp: None,
        ptp: None,
        who: None,
        socket: None,
    };
    match Kind::from_code(ev.kind) {
        Some(Kind::Ntp | Kind::NtsKe) => {
            record.packet = Some(ip_packet(ev));
            record.ntp = Some(ntp(ev));
        }
        Some(Kind::Ptp) => {
            record.packet = Some(if ev.family != 0 {
                ip_packet(ev)
            } else {
                Packet::Ethernet {
                    transport: "ethernet",
                    len: ev.len,
                }
            });
            record.ptp = Some(ptp(ev));
        }
        _ => {
            let who = Who::of(&ev.caller, exe);
            record.who = Some(SocketWho { who, daemon });
            record.socket = Some(socket(ev));
        }
    }
    record
}

/// Whether a record names its process (socket decisions do; packets do not).
fn names_a_process(ev: &NetEvent) -> bool {
    !matches!(
        Kind::from_code(ev.kind),
        Some(Kind::Ntp | Kind::NtsKe | Kind::Ptp)
    )
}

/// One network decision as a JSON record, the process's executable read now.
/// `rule_name` names a daemon's rule by its id.
pub fn net_json(
    ev: &NetEvent,
    policy: &str,
    host: &str,
    rule_name: &dyn Fn(u32) -> String,
) -> Value {
    let exe = names_a_process(ev)
        .then(|| events::exe_path(&ev.caller))
        .flatten();
    let daemon = (ev.rule_id != 0).then(|| rule_name(ev.rule_id));
    serde_json::json!(net_record(ev, policy, host, exe.as_deref(), daemon))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind_: u8) -> NetEvent {
        // SAFETY: NetEvent is plain data; all zeroes is a valid value.
        let mut ev: NetEvent = unsafe { std::mem::zeroed() };
        ev.kind = kind_;
        ev.generation = 3;
        ev.boot_ns = 7;
        ev.verdict = Verdict::Deny.code();
        ev
    }

    fn common(v: &Value, kind_: &str) {
        assert_eq!(v["boot_ns"], 7);
        assert_eq!(v["host"], "h");
        assert_eq!(v["kind"], kind_);
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["policy"], "p");
        assert_eq!(v["generation"], 3);
        assert!(v["time"].is_string());
        assert!(v.get("alert").is_some() && v.get("reason").is_some());
    }

    /// An object's keys (serde_json keeps them sorted).
    fn keys(v: &Value) -> Vec<&String> {
        v.as_object().expect("object").keys().collect()
    }

    const COMMON: [&str; 9] = [
        "alert",
        "boot_ns",
        "generation",
        "host",
        "kind",
        "policy",
        "reason",
        "time",
        "verdict",
    ];

    fn with(extra: &[&'static str]) -> Vec<&'static str> {
        let mut k: Vec<&str> = COMMON.iter().chain(extra).copied().collect();
        k.sort();
        k
    }

    #[test]
    fn ntp_records_keep_the_trail_schema() {
        let mut ev = event(Kind::Ntp.code());
        ev.family = 4;
        ev.src[10..16].copy_from_slice(&[0xff, 0xff, 192, 0, 2, 1]);
        ev.dst[10..16].copy_from_slice(&[0xff, 0xff, 192, 0, 2, 2]);
        ev.sport = 123;
        ev.dport = 40000;
        ev.len = 48;
        ev.ntp.version = 4;
        ev.ntp.mode = NtpMode::Server.code();
        ev.ntp.stratum = 2;
        ev.ntp.poll = 6;
        ev.ntp.refid = [10, 0, 0, 1];
        ev.alert = Alert::UpstreamChanged.code();
        ev.previous_stratum = 1;
        let v = net_json(&ev, "p", "h", &|_| unreachable!("no daemon"));
        common(&v, "ntp");
        assert_eq!(keys(&v), with(&["ntp", "packet"]));
        assert_eq!(
            v["packet"],
            json!({"src": "192.0.2.1", "sport": 123, "dst": "192.0.2.2", "dport": 40000, "len": 48})
        );
        assert_eq!(
            v["ntp"],
            json!({"version": 4, "mode": "server", "leap": 0, "stratum": 2, "poll": 6,
                "refid": "10.0.0.1", "previous": {"stratum": 1, "leap": 0}})
        );
        // A kiss-o'-death names its code twice, as refid and as what it is.
        ev.ntp.stratum = 0;
        ev.ntp.refid = *b"RATE";
        ev.alert = 0;
        let v = net_json(&ev, "p", "h", &|_| unreachable!("no daemon"));
        assert_eq!(v["ntp"]["refid"], "RATE");
        assert_eq!(v["ntp"]["kiss_of_death"], "RATE");
        assert!(v["ntp"].get("previous").is_none());
        // A control message has no source to describe.
        ev.ntp.mode = NtpMode::Control.code();
        let v = net_json(&ev, "p", "h", &|_| unreachable!("no daemon"));
        assert_eq!(
            v["ntp"],
            json!({"version": 4, "mode": NtpMode::name_of(NtpMode::Control.code()), "leap": 0})
        );
        let v = net_json(&event(Kind::NtsKe.code()), "p", "h", &|_| {
            unreachable!("no daemon")
        });
        assert_eq!(v["ntp"], json!({"nts_ke": "server answering"}));
    }

    #[test]
    fn ptp_records_keep_the_trail_schema() {
        let mut ev = event(Kind::Ptp.code());
        ev.len = 64;
        ev.ptp.message_type = Message::Announce.code();
        ev.ptp.version = 2;
        ev.ptp.domain = 24;
        ev.ptp.source = [0, 1, 2, 0xff, 0xfe, 3, 4, 5];
        ev.ptp.source_port = 1;
        ev.ptp.announce = 1;
        ev.ptp.grandmaster = [0, 1, 2, 0xff, 0xfe, 3, 4, 5];
        ev.ptp.priority1 = 128;
        ev.ptp.clock_class = 6;
        ev.ptp.utc_offset = 37;
        ev.ptp.flags = flags::LEAP61;
        ev.ptp.steps_removed = 1;
        let v = net_json(&ev, "p", "h", &|_| unreachable!("no daemon"));
        common(&v, "ptp");
        assert_eq!(keys(&v), with(&["packet", "ptp"]));
        assert_eq!(v["packet"], json!({"transport": "ethernet", "len": 64}));
        let id = ClockIdentity(ev.ptp.source).to_string();
        assert_eq!(
            v["ptp"],
            json!({"message": Message::name_of(Message::Announce.code()), "version": 2, "domain": 24,
                "source": format!("{id}-1"),
                "grandmaster": {"identity": id, "priority1": 128, "clock_class": 6, "priority2": 0,
                    "utc_offset": 37, "leap61": true, "leap59": false, "steps_removed": 1}})
        );
        ev.alert = Alert::UpstreamChanged.code();
        ev.previous_grandmaster.clock_class = 7;
        ev.previous_grandmaster.leap = flags::LEAP59;
        let v = net_json(&ev, "p", "h", &|_| unreachable!("no daemon"));
        assert_eq!(v["alert"], "grandmaster_changed");
        assert_eq!(
            v["ptp"]["previous"],
            json!({"priority1": 0, "clock_class": 7, "utc_offset": 0, "leap61": false, "leap59": true})
        );
    }

    #[test]
    fn socket_records_keep_the_trail_schema() {
        let mut ev = event(Kind::RawSocket.code());
        ev.caller.tgid = u32::MAX;
        ev.protocol = 0x88f7;
        ev.rule_id = 5;
        ev.caller.comm[..4].copy_from_slice(b"ptp4");
        let v = net_json(&ev, "p", "h", &|id| format!("rule {id}"));
        common(&v, "raw_socket");
        assert_eq!(keys(&v), with(&["socket", "who"]));
        assert_eq!(
            v["socket"],
            json!({"family": "packet", "protocol": "0x88f7"})
        );
        assert_eq!(v["who"]["daemon"], "rule 5");
        assert_eq!(v["who"]["comm"], "ptp4");
        assert_eq!(v["who"]["exe"], Value::Null);
        assert_eq!(
            v["who"]["exe_id"],
            crate::policy::ExeId { dev: 0, ino: 0 }.to_string()
        );
        let mut who_keys = keys(&v["who"]);
        who_keys.retain(|k| *k != "daemon");
        assert_eq!(
            who_keys,
            ["comm", "exe", "exe_id", "gid", "pid", "tgid", "uid"]
        );

        let mut ev = event(Kind::Bind.code());
        ev.caller.tgid = u32::MAX;
        ev.protocol = 17;
        ev.family = 6;
        ev.dst[15] = 1;
        ev.dport = 123;
        ev.service = Service::Ntp.code();
        let v = net_json(&ev, "p", "h", &|_| unreachable!("not a daemon"));
        assert_eq!(v["who"]["daemon"], Value::Null);
        assert_eq!(
            v["socket"],
            json!({"protocol": "udp", "service": Service::name_of(Service::Ntp.code()), "address": "::1", "port": 123})
        );
    }
}
