//! The network guard in the guest's kernel: it attaches (the verifier accepts it), only the
//! listed time daemon owns the time sockets, and what reaches a time daemon's socket is
//! held to the NTP lists whatever its port.

use timeguard_tests::ntp;

use crate::{daemons, prelude::*};

/// A policy with `spec.network` attaches the network guard (the kernel's verifier accepts
/// it), and with `daemons` only the listed executable may open packet sockets that see PTP
/// frames (at creation, and by binding a protocol-less socket later) or bind the NTP port:
/// the copy of it gets EPERM, and so does the listed executable running foreign code
/// (preloaded: a tainted process), each refusal counted. A packet socket for IP alone is
/// not a PTP socket and is not decided.
#[test]
fn only_time_daemons_own_time_sockets() {
    scenario(|agent| {
        agent.reload_to(policies::NETWORK, "vm-test-net")?;
        let errno = |program: &str, args: &[&str]| -> Result<i64, String> {
            let r = sh(program, args)?;
            serde_json::from_str::<Value>(&r.stdout)
                .ok()
                .and_then(|v| v["errno"].as_i64())
                .ok_or_else(|| format!("{program} {args:?}: {} {}", r.stdout, r.stderr))
        };
        let eperm = i64::from(libc::EPERM);
        let cases: [(&str, &[&str], i64); 8] = [
            (COPY, &["packet-open", "ptp"], eperm),
            (COPY, &["packet-open", "all"], eperm),
            (COPY, &["packet-bind", "ptp"], eperm),
            (COPY, &["packet-open", "ip"], 0),
            (COPY, &["udp-bind", "0.0.0.0:123"], eperm),
            (ALLOWED, &["packet-open", "ptp"], 0),
            (ALLOWED, &["packet-bind", "all"], 0),
            (ALLOWED, &["udp-bind", "0.0.0.0:123"], 0),
        ];
        let mut wrong = Vec::new();
        for (program, args, want) in cases {
            let got = errno(program, args)?;
            if got != want {
                wrong.push(format!("{program} {args:?}: errno {got}, expected {want}"));
            }
        }
        // The listed daemon running code of the intruder's (preloaded) is not the daemon.
        let foreign = "/tmp/tg-net-foreign.so";
        fs::copy("/lib/x86_64-linux-gnu/libgcc_s.so.1", foreign)
            .map_err(|e| format!("{foreign}: {e}"))?;
        let out = Command::new(ALLOWED)
            .env("LD_PRELOAD", foreign)
            .args(["udp-bind", "0.0.0.0:123"])
            .output()
            .map_err(|e| format!("cannot start {ALLOWED}: {e}"))?;
        let _ = fs::remove_file(foreign);
        let tainted = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["errno"].as_i64());
        if tainted != Some(eperm) {
            wrong.push(format!(
                "the listed daemon with foreign code preloaded, udp-bind 123: errno {tainted:?}, expected EPERM"
            ));
        }
        let st = agent_status()?;
        agent.reload_to(policies::GUEST, "vm-test")?;
        let Some(at) = st["network"]["attached"].as_str() else {
            return Err(format!(
                "the network guard did not attach: {}",
                st["network"]["unavailable"]
            ));
        };
        if !wrong.is_empty() {
            return Err(wrong.join("; "));
        }
        let refused = counted(
            &st["network"]["sockets"],
            &[("verdict", "deny"), ("reason", "not_a_time_daemon")],
        );
        if refused != 5 {
            return Err(format!(
                "{refused} refusals counted, expected 5: {}",
                st["network"]
            ));
        }
        Ok(format!(
            "attached: {at}; PTP packet sockets and UDP 123 for the listed daemon only (not with foreign code), 5 refusals counted"
        ))
    })
}

/// chronyd told to follow a server on loopback port 10123 (an intruder's, as root would set
/// one up: `server 127.0.0.1 port 10123`): its replies reach chronyd's socket from a port
/// that is not NTP's, and are still held to `ntp.servers`: dropped before chronyd reads
/// them, each counted and recorded, and chronyd never selects the source. The control: with
/// the server listed, the same chronyd selects it.
#[test]
fn replies_to_a_time_daemons_socket_are_held_to_the_servers_from_any_port() {
    let listed = policies::NTP_SERVERS
        .replace("servers: [192.0.2.123]", "servers: [127.0.0.1]")
        .replace("name: vm-test-ntp-servers", "name: vm-test-ntp-listed");
    scenario(|agent| {
        agent.reload_to(policies::NTP_SERVERS, "vm-test-ntp-servers")?;
        let server =
            ntp::Server::start(daemons::NTP_ADDR, 300_000_000).map_err(|e| e.to_string())?;
        let conf = daemons::chrony_conf("maxslewrate 500\nmaxdrift 500\n");
        let since = records().len();
        let unlisted = daemons::chronyd(&conf, &[], 8)?;
        let dropped = wait_record_since("a dropped reply from port 10123", since, |v| {
            v["kind"] == "ntp"
                && v["verdict"] == "deny"
                && v["reason"] == "source not listed"
                && v["packet"]["src"] == "127.0.0.1"
                && v["packet"]["sport"] == 10123
        });
        let counted_then = counted(
            &agent_status()?["network"]["ntp_packets"],
            &[("mode", "server"), ("verdict", "deny")],
        );
        agent.reload_to(&listed, "vm-test-ntp-listed")?;
        let with_listed = daemons::chronyd(&conf, &[], 12)?;
        drop(server);
        let _ = sh(ALLOWED, &["freq", "0"]);
        dropped.map_err(|e| format!("{e}\nchronyd log:\n{unlisted}"))?;
        if unlisted.contains("Selected source") {
            return Err(format!(
                "chronyd selected the unlisted server on port 10123:\n{unlisted}"
            ));
        }
        if counted_then == 0 {
            return Err("no refused server reply counted".into());
        }
        if !with_listed.contains("Selected source 127.0.0.1") {
            return Err(format!(
                "with the server listed, chronyd did not select it:\n{with_listed}"
            ));
        }
        Ok(format!(
            "replies from 127.0.0.1:10123 to chronyd dropped ({counted_then} counted), never selected; listed, selected"
        ))
    })
}
