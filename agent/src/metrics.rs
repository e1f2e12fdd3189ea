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

/// The agent's state at a scrape, gathered by the run loop.
pub struct Snapshot {
    /// (rule, operation, verdict) → count since the agent started, exact.
    pub attempts: Vec<(String, &'static str, &'static str, u64)>,
    /// The network guard's exact counters: (series, what, verdict, reason) → count, where
    /// series is ntp, nts_ke, ptp, bind, connect or raw_socket (`network::counter_labels`).
    pub network: Vec<(&'static str, String, &'static str, &'static str, u64)>,
    /// Alerts raised by network records: (kind, alert) → count.
    pub net_alerts: Vec<((&'static str, &'static str), u64)>,
    /// Attempts on the guard itself: (action, target, verdict) → count, exact.
    pub tamper: Vec<(&'static str, &'static str, &'static str, u64)>,
    /// Tamper records lost and thinned.
    pub tamper_events_lost: u64,
    pub tamper_events_thinned: u64,
    /// Packet records lost (ring buffer full) and thinned (over the budget).
    pub packet_events_lost: u64,
    pub packet_events_thinned: u64,
    pub events_thinned: u64,
    pub events_lost: u64,
    pub audit_write_failures: u64,
    pub generation: u32,
    pub reloads_ok: u64,
    pub reloads_rejected: u64,
    /// Hook → whether it decides (enforces) on this kernel.
    pub hooks: Vec<(&'static str, bool)>,
    /// Program → attached.
    pub programs: Vec<(&'static str, bool)>,
    /// The last step seen (allowed, audited or the kernel's own): CLOCK_BOOTTIME when it
    /// was decided, and its size (ns, signed) when the event carried one.
    pub last_step: Option<(u64, Option<i128>)>,
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
    dropped: IntCounterVec,
    generation: IntGauge,
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
    shown: HashMap<Vec<String>, u64>,
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
            dropped: counter(&r, "timeguard_events_dropped_total",
                "Detailed records not delivered: thinned (over the per-process budget), lost (ring buffer full), audit_write (the audit trail file could not be written), packet_thinned and packet_lost (the same for packet records). Counters stay exact.",
                &["reason"])?,
            generation: int_gauge(&r, "timeguard_policy_generation", "Generation of the policy in force.")?,
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
        for a in [Alert::NewSource, Alert::UpstreamChanged, Alert::KissOfDeath] {
            m.ntp_alerts
                .with_label_values(&[crate::network::alert_label(Kind::Ntp.code(), a.code())]);
        }
        for a in [Alert::NewSource, Alert::UpstreamChanged] {
            m.ptp_alerts
                .with_label_values(&[crate::network::alert_label(Kind::Ptp.code(), a.code())]);
        }
        Ok(m)
    }

    fn add_counter(&mut self, vec_name: &str, labels: &[&str], total: u64) {
        let key: Vec<String> = std::iter::once(vec_name)
            .chain(labels.iter().copied())
            .map(str::to_string)
            .collect();
        let before = self.shown.insert(key, total).unwrap_or(0);
        let vec = match vec_name {
            "attempts" => &self.attempts,
            "ntp" => &self.ntp_packets,
            "alerts" => &self.ntp_alerts,
            "nts_ke" => &self.nts_ke,
            "ptp" => &self.ptp_messages,
            "ptp_alerts" => &self.ptp_alerts,
            "sockets" => &self.sockets,
            "destinations" => &self.new_destinations,
            "tamper" => &self.tamper,
            "dropped" => &self.dropped,
            _ => &self.reloads,
        };
        vec.with_label_values(labels)
            .inc_by(total.saturating_sub(before));
    }

    /// The text exposition of everything, as of `snap` and the kernel's clock now.
    pub fn render(&mut self, snap: &Snapshot) -> anyhow::Result<String> {
        for (rule, op, verdict, n) in &snap.attempts {
            self.add_counter("attempts", &[op, verdict, rule], *n);
        }
        for (series, what, verdict, reason, n) in &snap.network {
            let reason = if reason.is_empty() { "none" } else { reason };
            match *series {
                "ntp" | "nts_ke" | "ptp" => self.add_counter(series, &[what, verdict, reason], *n),
                action => self.add_counter("sockets", &[action, what, verdict, reason], *n),
            }
        }
        for ((kind, alert), n) in &snap.net_alerts {
            match *kind {
                "ntp" => self.add_counter("alerts", &[alert], *n),
                "ptp" => self.add_counter("ptp_alerts", &[alert], *n),
                other => self.add_counter("destinations", &[other], *n),
            }
        }
        for (act, target, verdict, n) in &snap.tamper {
            self.add_counter("tamper", &[act, target, verdict], *n);
        }
        self.add_counter("dropped", &["tamper_lost"], snap.tamper_events_lost);
        self.add_counter("dropped", &["tamper_thinned"], snap.tamper_events_thinned);
        self.add_counter("dropped", &["packet_lost"], snap.packet_events_lost);
        self.add_counter("dropped", &["packet_thinned"], snap.packet_events_thinned);
        self.add_counter("dropped", &["thinned"], snap.events_thinned);
        self.add_counter("dropped", &["lost"], snap.events_lost);
        self.add_counter("dropped", &["audit_write"], snap.audit_write_failures);
        self.add_counter("reloads", &["ok"], snap.reloads_ok);
        self.add_counter("reloads", &["rejected"], snap.reloads_rejected);
        self.generation.set(snap.generation.into());
        for (hook, on) in &snap.hooks {
            self.enforcement.with_label_values(&[hook]).set(*on as i64);
        }
        for (program, on) in &snap.programs {
            self.attached.with_label_values(&[program]).set(*on as i64);
        }
        let health = ClockHealth::read();
        self.offset.set(health.offset_s);
        self.frequency.set(health.frequency_ratio);
        self.maxerror.set(health.maxerror_s);
        self.esterror.set(health.esterror_s);
        self.status.set(health.status.into());
        self.sync.set(health.synced as i64);
        self.tai.set(health.tai_s.into());
        if let Some((at, size)) = snap.last_step {
            let now = crate::events::clock_ns(libc::CLOCK_BOOTTIME);
            self.since_step.set(now.saturating_sub(at) as f64 / 1e9);
            if let Some(ns) = size {
                self.step_size.set(ns as f64 / 1e9);
            }
        }
        let mut families = self.registry.gather();
        // Before any step there is nothing to say: no series rather than a made-up value.
        let (seen, sized) = match snap.last_step {
            Some((_, size)) => (true, size.is_some()),
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

/// The kernel's clock discipline, read without changing it (adjtimex with modes 0).
#[derive(Debug, Clone, Copy)]
pub struct ClockHealth {
    pub offset_s: f64,
    pub frequency_ratio: f64,
    pub maxerror_s: f64,
    pub esterror_s: f64,
    pub status: i32,
    pub synced: bool,
    pub tai_s: i32,
}

impl ClockHealth {
    pub fn read() -> Self {
        const STA_NANO: i32 = 0x2000;
        const STA_UNSYNC: i32 = 0x0040;
        // SAFETY: timex is plain data; zero is valid; modes 0 only reads.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        unsafe { libc::adjtimex(&mut tx) };
        let offset_unit = if tx.status & STA_NANO != 0 {
            1e-9
        } else {
            1e-6
        };
        ClockHealth {
            offset_s: tx.offset as f64 * offset_unit,
            frequency_ratio: 1.0 + tx.freq as f64 / 65536.0 / 1e6,
            maxerror_s: tx.maxerror as f64 * 1e-6,
            esterror_s: tx.esterror as f64 * 1e-6,
            status: tx.status,
            synced: tx.status & STA_UNSYNC == 0,
            tai_s: tx.tai,
        }
    }
}

/// Answers one HTTP request on a metrics connection: `GET /metrics` gets the text format,
/// anything else a 404. Requests are tiny; a client that sends nothing in time is dropped.
pub async fn serve_one(
    stream: &mut tokio::net::TcpStream,
    body: impl FnOnce(&str) -> Option<String>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        len += n;
        if n == 0 || buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let request = String::from_utf8_lossy(&buf[..len]);
    let path = request
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("");
    let response = match body(path) {
        Some(text) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        ),
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
    };
    stream.write_all(response.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(n: u64) -> Snapshot {
        Snapshot {
            attempts: vec![("default".into(), "step", "deny", n)],
            network: vec![
                ("ntp", "private".into(), "deny", "source not listed", 2),
                ("bind", "ntp".into(), "deny", "not a time daemon", 1),
                (
                    "ptp",
                    "announce".into(),
                    "deny",
                    "grandmaster not listed",
                    4,
                ),
                ("nts_ke", "client".into(), "allow", "", 2),
            ],
            net_alerts: vec![(("ntp", "kiss_of_death"), 1)],
            tamper: vec![("signal", "agent", "deny", 3)],
            tamper_events_lost: 0,
            tamper_events_thinned: 0,
            packet_events_lost: 0,
            packet_events_thinned: 0,
            events_thinned: 0,
            events_lost: 0,
            audit_write_failures: 0,
            generation: 2,
            reloads_ok: 1,
            reloads_rejected: 0,
            hooks: vec![("lsm/settime", true)],
            programs: vec![("clock_settime_guard", true)],
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
            text.contains(r#"timeguard_tamper_attempts_total{action="signal",target="agent",verdict="deny"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_time_sockets_total{action="bind",reason="not a time daemon",service="ntp",verdict="deny"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_ptp_alerts_total{alert="new_grandmaster"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"timeguard_ptp_messages_total{message="announce",reason="grandmaster not listed",verdict="deny"} 4"#),
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
