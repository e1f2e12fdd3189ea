//! The network guard in the guest's kernel: it attaches (the verifier accepts it), and only
//! the listed time daemon owns the time sockets.

use crate::prelude::*;

/// A policy with `spec.network` attaches the network guard (the kernel's verifier accepts
/// it), and with `daemons` only the listed executable may open packet sockets that see PTP
/// frames (at creation, and by binding a protocol-less socket later) or bind the NTP port:
/// the copy of it gets EPERM, each refusal counted. A packet socket for IP alone is not a
/// PTP socket and is not decided.
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
        if refused != 4 {
            return Err(format!(
                "{refused} refusals counted, expected 4: {}",
                st["network"]
            ));
        }
        Ok(format!(
            "attached: {at}; PTP packet sockets and UDP 123 for the listed daemon only, 4 refusals counted"
        ))
    })
}
