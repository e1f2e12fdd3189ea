//! What the agent reports: its status (served on the control socket), the metrics of a
//! scrape, and the summary it logs when it stops. The kernel's counters are read through
//! `report::counters`, the same rows for all three.

use crate::{
    loader::Enforcement,
    report::metrics::{Dropped, Flag, Snapshot},
    report::{
        counters::{self, NetSeries},
        status::{
            Counter, LastKnownGood, MessageCount, ModeCount, NetworkStatus, OwnObject,
            PolicyStatus, Reloads, RuleLostCount, SelfProtectionStatus, SocketCount, Status,
            TamperCount,
        },
    },
};

use super::{agent::Agent, last_known_good::Source};

impl Agent {
    pub(super) fn status(&self) -> Status {
        let current = self.generations.current();
        let policy = current.map(|(_, p)| p);
        let counters = match counters::clock_attempts(&self.guard, &self.rule_names.ids) {
            Ok(c) => c
                .into_iter()
                .map(|a| Counter::Count {
                    rule: a.rule,
                    operation: a.operation.into(),
                    verdict: a.verdict.into(),
                    count: a.count,
                })
                .collect(),
            Err(e) => vec![Counter::Unreadable {
                error: format!("{e:#}"),
            }],
        };
        let enforcement_unavailable = match &self.guard.enforcement {
            Enforcement::Enforce => vec![],
            Enforcement::ObserveOnly { reasons } => reasons.clone(),
        };
        Status {
            host: self.trail.host.clone(),
            pid: std::process::id(),
            started: self.trail.started.clone(),
            enforcement: self.guard.enforcement.label().into(),
            enforcement_unavailable,
            attached: self
                .guard
                .attached
                .iter()
                .map(ToString::to_string)
                .collect(),
            unobserved: self.guard.unobserved.clone(),
            policy: PolicyStatus {
                name: policy.map(|p| p.name.clone()),
                generation: current.map_or(0, |(g, _)| g),
                sha256: policy.map(|p| p.hash.clone()),
                sources: policy.map(|p| p.sources.clone()).unwrap_or_default(),
                path: self.reloading.path.clone(),
                source: self.reloading.source.token().into(),
                configured_problems: self.reloading.configured_problems.clone(),
                last_known_good: LastKnownGood {
                    file: self.reloading.store.file(),
                    sha256: self.reloading.kept.as_ref().map(|(h, _)| h.clone()),
                    accepted: self.reloading.kept.as_ref().map(|(_, a)| a.clone()),
                    error: self.reloading.kept_error.clone(),
                },
            },
            reloads: Reloads {
                ok: self.reloading.ok,
                failed: self.reloading.failed,
                last_error: self.reloading.last_error.clone(),
            },
            counters,
            events_lost: self.guard.clock.events_lost().unwrap_or(0),
            events_thinned: self.guard.clock.events_thinned().unwrap_or(0),
            audit_log: self.trail.audit.path().map(|p| p.to_path_buf()),
            audit_write_failures: self.trail.audit.failures,
            network: self.network_status(),
            self_protection: self.self_protection_status(),
            rules_lost: counters::rules_lost(&self.guard, &self.rule_names.ids)
                .map(|rows| {
                    rows.into_iter()
                        .map(|l| RuleLostCount {
                            rule: l.rule,
                            reason: l.reason,
                            count: l.count,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            policy_unreadable: self.guard.clock.policy_unreadable().unwrap_or(0),
        }
    }

    /// The network guard's part of status: where it is attached, and its exact counters by
    /// kind.
    fn network_status(&self) -> NetworkStatus {
        let links = self.guard.network.ptp_links();
        let mut out = NetworkStatus {
            attached: self.guard.network.attached_cgroup().map(str::to_string),
            unavailable: self.network.unavailable.clone(),
            ptp_interfaces: links.attached(),
            ptp_refused: links.refused.clone(),
            ntp_packets: vec![],
            nts_ke: vec![],
            ptp_messages: vec![],
            sockets: vec![],
            error: None,
        };
        let counts = match counters::net_counts(&self.guard) {
            Ok(c) => c,
            Err(e) => {
                out.error = Some(format!("{e:#}"));
                return out;
            }
        };
        for c in counts {
            let (verdict, reason, count) = (c.verdict.to_string(), c.reason.to_string(), c.count);
            match c.series {
                NetSeries::Ntp { mode } => out.ntp_packets.push(ModeCount {
                    mode,
                    verdict,
                    reason,
                    count,
                }),
                NetSeries::NtsKe { mode } => out.nts_ke.push(ModeCount {
                    mode,
                    verdict,
                    reason,
                    count,
                }),
                NetSeries::Ptp { message } => out.ptp_messages.push(MessageCount {
                    message,
                    verdict,
                    reason,
                    count,
                }),
                NetSeries::Socket { action, service } => out.sockets.push(SocketCount {
                    action: action.into(),
                    service,
                    verdict,
                    reason,
                    count,
                }),
            }
        }
        out
    }

    fn self_protection_status(&self) -> SelfProtectionStatus {
        let policy = self.generations.current().map(|(_, p)| p);
        let mode = match policy.and_then(|p| p.self_protection) {
            Some(m) if m == agent_common::policy::Mode::Enforce.code() => "enforce",
            Some(_) => "audit",
            None => "off",
        };
        let objects = self
            .guard
            .own_objects()
            .map(|o| {
                o.into_iter()
                    .map(|(name, k)| OwnObject {
                        name,
                        kind: agent_common::tamper::Target::name_of(k.kind).into(),
                        id: k.id,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let attempts = counters::tamper_attempts(&self.guard)
            .map(|c| {
                c.into_iter()
                    .map(|t| TamperCount {
                        action: t.action.into(),
                        target: t.target,
                        verdict: t.verdict.into(),
                        count: t.count,
                    })
                    .collect()
            })
            .unwrap_or_default();
        SelfProtectionStatus {
            mode: mode.into(),
            unavailable: self.guard.self_protection.unavailable.clone(),
            protected_files: self.protection.files.len(),
            pins: self.guard.pin_dir().to_path_buf(),
            objects,
            attempts,
        }
    }

    /// The agent's state for a scrape.
    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let (packet_lost, packet_thinned) = self.guard.network.events_dropped()?;
        let (tamper_lost, tamper_thinned) = self.guard.self_protection.events_dropped()?;
        Ok(Snapshot {
            attempts: counters::clock_attempts(&self.guard, &self.rule_names.ids)?,
            network: counters::net_counts(&self.guard)?,
            net_alerts: self.network.alerts.iter().map(|(a, n)| (*a, *n)).collect(),
            tamper: counters::tamper_attempts(&self.guard)?,
            rules_lost: counters::rules_lost_from_zero(
                counters::rules_lost(&self.guard, &self.rule_names.ids)?,
                self.generations
                    .current()
                    .into_iter()
                    .flat_map(|(_, p)| p.rules.iter().map(|r| r.name.as_str())),
            ),
            policy_unreadable: self.guard.clock.policy_unreadable()?,
            dropped: Dropped {
                thinned: self.guard.clock.events_thinned()?,
                lost: self.guard.clock.events_lost()?,
                audit_write: self.trail.audit.failures,
                packet_thinned,
                packet_lost,
                tamper_thinned,
                tamper_lost,
            },
            generation: self.guard.clock.generation(),
            policy_source: Flag::from_pairs(
                Source::ALL
                    .iter()
                    .map(|s| (s.token(), *s == self.reloading.source))
                    .collect(),
            ),
            reloads_ok: self.reloading.ok,
            reloads_rejected: self.reloading.failed,
            hooks: Flag::from_pairs(self.guard.hooks()),
            programs: Flag::from_pairs(self.guard.programs()),
            last_step: self.health.last_step,
        })
    }

    /// The metrics text for a scrape.
    pub(super) fn metrics_text(&mut self) -> anyhow::Result<String> {
        let snapshot = self.snapshot()?;
        match self.health.metrics.as_mut() {
            Some(m) => m.render(&snapshot),
            None => Ok(String::new()),
        }
    }

    /// Logs the counters since start, when the agent stops.
    pub(super) fn summarize(&self) {
        let status = self.status();
        if status.counters.is_empty() {
            log::info!(
                "no clock change attempts since start ({})",
                self.guard.enforcement.label()
            );
        }
        for c in &status.counters {
            let (rule, operation, verdict, count) = c.shown();
            log::info!("attempts: rule={rule} operation={operation} verdict={verdict}: {count}");
        }
        let (lost, thinned) = (status.events_lost, status.events_thinned);
        if lost + thinned > 0 {
            log::warn!(
                "{thinned} detailed events were thinned (over {} per process per second) and {lost} lost (ring buffer full); the counters above are exact",
                agent_common::event::thinning::EVENTS_PER_WINDOW
            );
        }
    }
}
