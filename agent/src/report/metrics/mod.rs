//! Prometheus metrics on `/metrics` (`timeguard run --metrics-addr ADDR`): the kernel's exact
//! counters, the agent's own state, and the clock's health as the kernel reports it (the
//! node_exporter timex collector's figures, under timeguard's names).
//!
//! Every label value comes from a bounded set: operations and verdicts are fixed, rules are
//! the policy's rule names (numbered once per run, at most `identity::MAX_NAMES`), programs
//! and hooks are timeguard's own. Renaming binaries creates no series.

use std::collections::HashMap;

use anyhow::Context as _;
use prometheus::{
    Encoder as _, Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

mod health;
mod snapshot;

pub use health::ClockHealth;
pub use snapshot::{Dropped, Flag, LastStep, Snapshot};

use crate::report::counters::{NetAlert, NetSeries};

/// The counter families, each one series of the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Series {
    Attempts,
    NtpPackets,
    NtpAlerts,
    NtsKe,
    PtpMessages,
    PtpAlerts,
    Sockets,
    NewDestinations,
    Tamper,
    RulesLost,
    InternalErrors,
    Dropped,
    Reloads,
}

pub struct Metrics {
    registry: Registry,
    attempts: IntCounterVec,
    ntp_packets: IntCounterVec,
    ntp_alerts: IntCounterVec,
    nts_ke: IntCounterVec,
    ptp_messages: IntCounterVec,
    ptp_alerts: IntCounterVec,
    sockets: IntCounterVec,
    new_destinations: IntCounterVec,
    tamper: IntCounterVec,
    rules_lost: IntCounterVec,
    internal_errors: IntCounterVec,
    dropped: IntCounterVec,
    generation: IntGauge,
    policy_source: IntGaugeVec,
    started: Gauge,
    reloads: IntCounterVec,
    enforcement: IntGaugeVec,
    attached: IntGaugeVec,
    offset: Gauge,
    frequency: Gauge,
    maxerror: Gauge,
    esterror: Gauge,
    status: IntGauge,
    sync: IntGauge,
    tai: IntGauge,
    since_step: Gauge,
    step_size: Gauge,
    /// What each counter series showed at the last scrape: counters only go up by deltas.
    shown: HashMap<(Series, Vec<String>), u64>,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> anyhow::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> anyhow::Result<Gauge> {
    let g = Gauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> anyhow::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn int_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> anyhow::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let r = Registry::new();
        let m = Metrics {
            attempts: counter(&r, "timeguard_clock_change_attempts_total",
                "Attempts to change the clock, counted exactly in the kernel, by operation, verdict (allow, deny, audit: would have been denied, observed) and deciding rule.",
                &["operation", "verdict", "rule"])?,
            ntp_packets: counter(&r, "timeguard_ntp_packets_total",
                "NTP packets arriving at this host's sockets, decided by the network guard, by mode, verdict and reason, counted exactly in the kernel.",
                &["mode", "verdict", "reason"])?,
            ntp_alerts: counter(&r, "timeguard_ntp_alerts_total",
                "What a time server operator watches, from packet records: new_source, upstream_changed (stratum or leap), kiss_of_death.",
                &["alert"])?,
            nts_ke: counter(&r, "timeguard_nts_ke_connections_total",
                "NTS-KE connections opening (TCP 4460): mode client (a client's SYN to this server) or server (a server's SYN-ACK to this client), by verdict and reason, counted exactly in the kernel.",
                &["mode", "verdict", "reason"])?,
            ptp_messages: counter(&r, "timeguard_ptp_messages_total",
                "PTP messages arriving on guarded interfaces (UDP 319/320 and Ethernet 0x88F7), by message type, verdict and reason, counted exactly in the kernel.",
                &["message", "verdict", "reason"])?,
            ptp_alerts: counter(&r, "timeguard_ptp_alerts_total",
                "From accepted PTP Announce messages: new_grandmaster, grandmaster_changed (quality, leap flags or UTC offset).",
                &["alert"])?,
            sockets: counter(&r, "timeguard_time_sockets_total",
                "Sockets that matter to time, decided by the network guard: action bind (UDP 123, 319, 320), connect (a time daemon's connections and datagrams), raw_socket (packet sockets that see PTP frames), by service, verdict and reason.",
                &["action", "service", "verdict", "reason"])?,
            new_destinations: counter(&r, "timeguard_daemon_new_destinations_total",
                "Destinations a time daemon used for the first time (from records; a daemon's usual servers show once).",
                &["kind"])?,
            tamper: counter(&r, "timeguard_tamper_attempts_total",
                "Attempts on the guard itself, counted exactly in the kernel: action (signal, ptrace, write, unlink, rename, bpf), target (agent, policy, time daemon, pin, map, link), verdict (deny, audit: would have been denied).",
                &["action", "target", "verdict"])?,
            rules_lost: counter(&r, "timeguard_clock_rule_lost_total",
                "Clock requests of a process whose executable matched the rule but that lost it, decided by the default instead, counted exactly in the kernel: reason traced (another process attached by ptrace, opened or wrote its memory), asked_to_be_traced (PTRACE_TRACEME), foreign_code (it mapped as code a file outside the system's library directories, or memory of no file), modified_code (a library changed since the policy loaded), joined by + when several; 0 from the start for every rule and single reason.",
                &["rule", "reason"])?,
            internal_errors: counter(&r, "timeguard_internal_errors_total",
                "Requests the kernel refused because the guard itself failed, counted exactly: error policy_unreadable (once a policy was in force, none could be read: the policy maps were rewritten by another writer; clock requests are refused, not allowed); 0 from the start.",
                &["error"])?,
            dropped: counter(&r, "timeguard_events_dropped_total",
                "Detailed records not delivered: thinned (over the per-process budget), lost (ring buffer full), audit_write (the audit trail file could not be written), packet_thinned and packet_lost (the same for packet records). Counters stay exact.",
                &["reason"])?,
            generation: int_gauge(&r, "timeguard_policy_generation", "Generation of the policy in force.")?,
            policy_source: int_gauge_vec(&r, "timeguard_policy_source",
                "1 for where the policy in force comes from: configured (the policy files), last_known_good (the configured policy failed validation at start; the last one accepted is enforced), built_in_default (neither was usable; only the installed time daemons may discipline the clock).",
                &["source"])?,
            started: gauge(&r, "timeguard_start_time_seconds", "When the agent started, in seconds since the Unix epoch.")?,
            reloads: counter(&r, "timeguard_policy_reloads_total", "Policy reloads, by result (ok, rejected).", &["result"])?,
            enforcement: int_gauge_vec(&r, "timeguard_enforcement_available",
                "1 when the hook decides clock changes on this kernel, 0 when the agent can only observe.", &["hook"])?,
            attached: int_gauge_vec(&r, "timeguard_program_attached", "1 when the kernel program is attached.", &["program"])?,
            offset: gauge(&r, "timeguard_clock_offset_seconds", "The kernel clock discipline's remaining offset (adjtimex offset).")?,
            frequency: gauge(&r, "timeguard_clock_frequency_adjustment_ratio", "The kernel clock's rate relative to nominal (1 + freq).")?,
            maxerror: gauge(&r, "timeguard_clock_maxerror_seconds", "The maximum error the kernel reports.")?,
            esterror: gauge(&r, "timeguard_clock_estimated_error_seconds", "The estimated error the kernel reports.")?,
            status: int_gauge(&r, "timeguard_clock_status", "The kernel's clock status word (STA_* bits).")?,
            sync: int_gauge(&r, "timeguard_clock_sync_status", "1 when the kernel clock is synchronized (STA_UNSYNC clear).")?,
            tai: int_gauge(&r, "timeguard_clock_tai_offset_seconds", "TAI minus UTC as the kernel holds it.")?,
            since_step: gauge(&r, "timeguard_clock_seconds_since_last_step", "Seconds since the last step of the clock timeguard saw (not present before one).")?,
            step_size: gauge(&r, "timeguard_clock_last_step_seconds", "Size of the last step of the clock timeguard saw, signed (not present before one).")?,
            registry: r,
            shown: HashMap::new(),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.started.set(now);
        // Alerts are a fixed set: each series exists from the start, at 0, so that an
        // increase from the first one on is seen.
        use agent_common::{alert::Alert, net::Kind};
        for a in [
            Alert::NewSource.code(),
            Alert::UpstreamChanged.code(),
            Alert::KissOfDeath.code(),
        ] {
            m.ntp_alerts
                .with_label_values(&[crate::sensors::network::alert_label(Kind::Ntp.code(), a)]);
        }
        for a in [Alert::NewSource.code(), Alert::UpstreamChanged.code()] {
            m.ptp_alerts
                .with_label_values(&[crate::sensors::network::alert_label(Kind::Ptp.code(), a)]);
        }
        Ok(m)
    }

    fn family(&self, series: Series) -> &IntCounterVec {
        match series {
            Series::Attempts => &self.attempts,
            Series::NtpPackets => &self.ntp_packets,
            Series::NtpAlerts => &self.ntp_alerts,
            Series::NtsKe => &self.nts_ke,
            Series::PtpMessages => &self.ptp_messages,
            Series::PtpAlerts => &self.ptp_alerts,
            Series::Sockets => &self.sockets,
            Series::NewDestinations => &self.new_destinations,
            Series::Tamper => &self.tamper,
            Series::RulesLost => &self.rules_lost,
            Series::InternalErrors => &self.internal_errors,
            Series::Dropped => &self.dropped,
            Series::Reloads => &self.reloads,
        }
    }

    fn add_counter(&mut self, series: Series, labels: &[&str], total: u64) {
        let key = (series, labels.iter().map(|l| l.to_string()).collect());
        let before = self.shown.insert(key, total).unwrap_or(0);
        self.family(series)
            .with_label_values(labels)
            .inc_by(total.saturating_sub(before));
    }

    /// The text exposition of everything, as of `snap` and the kernel's clock now.
    pub fn render(&mut self, snap: &Snapshot) -> anyhow::Result<String> {
        for a in &snap.attempts {
            self.add_counter(
                Series::Attempts,
                &[a.operation, a.verdict, &a.rule],
                a.count,
            );
        }
        for c in &snap.network {
            let (verdict, n) = (c.verdict, c.count);
            let reason = if c.reason.is_empty() {
                "none"
            } else {
                c.reason.as_str()
            };
            match &c.series {
                NetSeries::Ntp { mode } => {
                    self.add_counter(Series::NtpPackets, &[mode, verdict, reason], n)
                }
                NetSeries::NtsKe { mode } => {
                    self.add_counter(Series::NtsKe, &[mode, verdict, reason], n)
                }
                NetSeries::Ptp { message } => {
                    self.add_counter(Series::PtpMessages, &[message, verdict, reason], n)
                }
                NetSeries::Socket { action, service } => {
                    self.add_counter(Series::Sockets, &[action, service, verdict, reason], n)
                }
            }
        }
        for (alert, n) in &snap.net_alerts {
            match *alert {
                NetAlert::Ntp(a) => self.add_counter(Series::NtpAlerts, &[a], *n),
                NetAlert::Ptp(a) => self.add_counter(Series::PtpAlerts, &[a], *n),
                NetAlert::NewDestination { kind, .. } => {
                    self.add_counter(Series::NewDestinations, &[kind], *n)
                }
            }
        }
        for t in &snap.tamper {
            self.add_counter(Series::Tamper, &[t.action, &t.target, t.verdict], t.count);
        }
        for l in &snap.rules_lost {
            self.add_counter(Series::RulesLost, &[&l.rule, &l.reason], l.count);
        }
        self.add_counter(
            Series::InternalErrors,
            &["policy_unreadable"],
            snap.policy_unreadable,
        );
        let d = &snap.dropped;
        for (reason, n) in [
            ("tamper_lost", d.tamper_lost),
            ("tamper_thinned", d.tamper_thinned),
            ("packet_lost", d.packet_lost),
            ("packet_thinned", d.packet_thinned),
            ("thinned", d.thinned),
            ("lost", d.lost),
            ("audit_write", d.audit_write),
        ] {
            self.add_counter(Series::Dropped, &[reason], n);
        }
        self.add_counter(Series::Reloads, &["ok"], snap.reloads_ok);
        self.add_counter(Series::Reloads, &["rejected"], snap.reloads_rejected);
        self.generation.set(snap.generation.into());
        for s in &snap.policy_source {
            self.policy_source
                .with_label_values(&[s.name])
                .set(s.on as i64);
        }
        for h in &snap.hooks {
            self.enforcement
                .with_label_values(&[h.name])
                .set(h.on as i64);
        }
        for p in &snap.programs {
            self.attached.with_label_values(&[p.name]).set(p.on as i64);
        }
        let health = ClockHealth::read();
        self.offset.set(health.offset_s);
        self.frequency.set(health.frequency_ratio);
        self.maxerror.set(health.maxerror_s);
        self.esterror.set(health.esterror_s);
        self.status.set(health.status.into());
        self.sync.set(health.synced as i64);
        self.tai.set(health.tai_s.into());
        if let Some(step) = snap.last_step {
            let now = crate::events::clock_ns(libc::CLOCK_BOOTTIME);
            self.since_step
                .set(now.saturating_sub(step.boot_ns) as f64 / 1e9);
            if let Some(ns) = step.size_ns {
                self.step_size.set(ns as f64 / 1e9);
            }
        }
        let mut families = self.registry.gather();
        // Before any step there is nothing to say: no series rather than a made-up value.
        let (seen, sized) = match snap.last_step {
            Some(step) => (true, step.size_ns.is_some()),
            None => (false, false),
        };
        families.retain(|f| {
            (seen || f.name() != "timeguard_clock_seconds_since_last_step")
                && (sized || f.name() != "timeguard_clock_last_step_seconds")
        });
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .context("encoding the metrics")?;
        String::from_utf8(out).context("metrics text")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::counters::{ClockAttempts, NetCount, RuleLost, TamperAttempts};

    fn net(series: NetSeries, verdict: &'static str, reason: &'static str, count: u64) -> NetCount {
        NetCount {
            series,
            verdict,
            reason: reason.to_string(),
            count,
        }
    }

    fn snapshot(n: u64) -> Snapshot {
        Snapshot {
            attempts: vec![ClockAttempts {
                rule: "default".into(),
                operation: "step",
                verdict: "deny",
                count: n,
            }],
            network: vec![
                net(
                    NetSeries::Ntp {
                        mode: "private".into(),
                    },
                    "deny",
                    "source_not_listed",
                    2,
                ),
                net(
                    NetSeries::Socket {
                        action: "bind",
                        service: "ntp".into(),
                    },
                    "deny",
                    "not_a_time_daemon",
                    1,
                ),
                net(
                    NetSeries::Ptp {
                        message: "announce".into(),
                    },
                    "deny",
                    "grandmaster_not_listed",
                    4,
                ),
                net(
                    NetSeries::NtsKe {
                        mode: "client".into(),
                    },
                    "allow",
                    "",
                    2,
                ),
            ],
            net_alerts: vec![(NetAlert::Ntp("kiss_of_death"), 1)],
            tamper: vec![TamperAttempts {
                action: "signal",
                target: "agent".into(),
                verdict: "deny",
                count: 3,
            }],
            policy_unreadable: 4,
            rules_lost: vec![RuleLost {
                rule: "chronyd".into(),
                reason: "traced".into(),
                count: 2,
            }],
            dropped: Dropped {
                lost: 6,
                ..Dropped::default()
            },
            generation: 2,
            policy_source: vec![
                Flag {
                    name: "configured",
                    on: false,
                },
                Flag {
                    name: "last_known_good",
                    on: true,
                },
            ],
            reloads_ok: 1,
            reloads_rejected: 0,
            hooks: vec![Flag {
                name: "lsm/settime",
                on: true,
            }],
            programs: vec![Flag {
                name: "clock_settime_guard",
                on: true,
            }],
            last_step: None,
        }
    }

    #[test]
    fn counters_follow_the_kernels_totals() {
        let mut m = Metrics::new().expect("metrics");
        m.render(&snapshot(3)).expect("render");
        let text = m.render(&snapshot(5)).expect("render");
        assert!(
            text.contains(r#"timeguard_clock_change_attempts_total{operation="step",rule="default",verdict="deny"} 5"#),
            "{text}"
        );
        assert!(text.contains("timeguard_policy_generation 2"), "{text}");
        assert!(
            text.contains(r#"timeguard_policy_source{source="last_known_good"} 1"#)
                && text.contains(r#"timeguard_policy_source{source="configured"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_events_dropped_total{reason="lost"} 6"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_internal_errors_total{error="policy_unreadable"} 4"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_ntp_alerts_total{alert="kiss_of_death"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_policy_reloads_total{result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_tamper_attempts_total{action="signal",target="agent",verdict="deny"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_clock_rule_lost_total{reason="traced",rule="chronyd"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_time_sockets_total{action="bind",reason="not_a_time_daemon",service="ntp",verdict="deny"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_ptp_alerts_total{alert="new_grandmaster"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_ptp_messages_total{message="announce",reason="grandmaster_not_listed",verdict="deny"} 4"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_nts_ke_connections_total{mode="client",reason="none",verdict="allow"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_enforcement_available{hook="lsm/settime"} 1"#),
            "{text}"
        );
        assert!(text.contains("timeguard_clock_sync_status"), "{text}");
        assert!(
            !text.contains("timeguard_clock_seconds_since_last_step"),
            "{text}"
        );
    }
}
