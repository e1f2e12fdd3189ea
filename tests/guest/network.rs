//! The network guard in the guest's kernel: it attaches (the verifier accepts it), and only
//! the listed time daemon owns the time sockets.

use crate::prelude::*;

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
