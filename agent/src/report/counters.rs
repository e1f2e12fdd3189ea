//! The kernel's exact counters as typed rows, one type per guard, each label a stable
//! token: what `timeguard status` lists and the metrics export, read once for both.

use agent_common::{net::NetCounterKey, policy::Verdict};

use crate::{loader::Guard, policy::identity::RuleIds};

/// Attempts to change the clock of one rule, operation and verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockAttempts {
    pub rule: String,
    pub operation: &'static str,
    pub verdict: &'static str,
    pub count: u64,
}

/// Decisions in which a tainted process lost one rule, for one set of reasons.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleLost {
    pub rule: String,
    /// `reasons_label`: `traced`, `asked_to_be_traced`, joined by `+`.
    pub reason: String,
    pub count: u64,
}

/// What a network counter counts: its series and the labels only that series has.
#[derive(Debug, Clone, PartialEq)]
pub enum NetSeries {
    /// NTP packets of a mode.
    Ntp { mode: String },
    /// NTS-KE connections of a mode (client, server).
    NtsKe { mode: String },
    /// PTP messages of a type.
    Ptp { message: String },
    /// Sockets: action bind, connect or raw_socket, for a service.
    Socket {
        action: &'static str,
        service: String,
    },
}

/// One exact network counter.
#[derive(Debug, Clone, PartialEq)]
pub struct NetCount {
    pub series: NetSeries,
    pub verdict: &'static str,
    /// Empty when the verdict needs no reason.
    pub reason: String,
    pub count: u64,
}

/// A name from the kernel's code tables as a label value: a stable snake_case token
/// (`grandmaster not listed` -> `grandmaster_not_listed`, `nts-ke` -> `nts_ke`). Records
/// and `timeguard events` keep the words.
pub fn token(name: &str) -> String {
    name.replace([' ', '-'], "_")
}

impl NetCount {
    pub fn of(key: &NetCounterKey, count: u64) -> Self {
        let (series, what, verdict, reason) = crate::sensors::network::counter_labels(key);
        let what = token(&what);
        let series = match series {
            "ntp" => NetSeries::Ntp { mode: what },
            "nts_ke" => NetSeries::NtsKe { mode: what },
            "ptp" => NetSeries::Ptp { message: what },
            action => NetSeries::Socket {
                action,
                service: what,
            },
        };
        NetCount {
            series,
            verdict,
            reason: token(reason),
            count,
        }
    }
}

/// Attempts on the guard itself of one action, target and verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct TamperAttempts {
    pub action: &'static str,
    pub target: String,
    pub verdict: &'static str,
    pub count: u64,
}

/// The clock's counters, named by the rules the agent numbered.
pub fn clock_attempts(guard: &Guard, rule_ids: &RuleIds) -> anyhow::Result<Vec<ClockAttempts>> {
    Ok(guard
        .clock
        .counters()?
        .into_iter()
        .map(|(k, count)| ClockAttempts {
            rule: rule_ids.name(k.rule_id).to_string(),
            operation: agent_common::clock::op::name(k.operation),
            verdict: Verdict::name_of(k.verdict as u8),
            count,
        })
        .collect())
}

/// Taint reasons as one stable label value: `traced`, `traced+asked_to_be_traced`.
pub fn reasons_label(bits: u32) -> String {
    let names: Vec<&str> = agent_common::integrity::reason_names(bits).collect();
    if names.is_empty() {
        "unknown".to_string()
    } else {
        names.join("+")
    }
}

/// The decisions tainted processes lost their rules in, named by the rules.
pub fn rules_lost(guard: &Guard, rule_ids: &RuleIds) -> anyhow::Result<Vec<RuleLost>> {
    Ok(guard
        .clock
        .rules_lost()?
        .into_iter()
        .map(|(k, count)| RuleLost {
            rule: rule_ids.name(k.rule_id).to_string(),
            reason: reasons_label(k.reasons),
            count,
        })
        .collect())
}

/// `lost` with a 0 row for every rule of `rules` and every single reason it has none for:
/// a series that exists from the start makes the first lost rule an increase.
pub fn rules_lost_from_zero<'a>(
    mut lost: Vec<RuleLost>,
    rules: impl Iterator<Item = &'a str>,
) -> Vec<RuleLost> {
    for rule in rules {
        for reason in agent_common::integrity::TaintReason::ALL {
            if !lost
                .iter()
                .any(|l| l.rule == rule && l.reason == reason.name())
            {
                lost.push(RuleLost {
                    rule: rule.to_string(),
                    reason: reason.name().to_string(),
                    count: 0,
                });
            }
        }
    }
    lost
}

pub fn net_counts(guard: &Guard) -> anyhow::Result<Vec<NetCount>> {
    Ok(guard
        .network
        .counters()?
        .iter()
        .map(|(k, n)| NetCount::of(k, *n))
        .collect())
}

pub fn tamper_attempts(guard: &Guard) -> anyhow::Result<Vec<TamperAttempts>> {
    Ok(guard
        .self_protection
        .counters()?
        .into_iter()
        .map(|(k, count)| TamperAttempts {
            action: agent_common::tamper::Action::name_of(k.action),
            target: token(agent_common::tamper::Target::name_of(k.target)),
            verdict: Verdict::name_of(k.verdict),
            count,
        })
        .collect())
}

/// An alert raised by a network record, by the series it counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NetAlert {
    /// new_source, upstream_changed, kiss_of_death.
    Ntp(&'static str),
    /// new_grandmaster, grandmaster_changed.
    Ptp(&'static str),
    /// A time daemon's first use of a destination, by kind of record.
    NewDestination {
        kind: &'static str,
        alert: &'static str,
    },
}

impl NetAlert {
    /// The alert of a record of `kind`; None when it raised none.
    pub fn of(kind: u8, alert: u8) -> Option<Self> {
        use agent_common::net::Kind;
        let label = crate::sensors::network::alert_label(kind, alert);
        if label.is_empty() {
            return None;
        }
        Some(match Kind::from_code(kind) {
            Some(Kind::Ntp) => NetAlert::Ntp(label),
            Some(Kind::Ptp) => NetAlert::Ptp(label),
            _ => NetAlert::NewDestination {
                kind: Kind::name_of(kind),
                alert: label,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{
        net::{Kind, NetCounterKey, Reason, Service},
        policy::Verdict,
    };

    use super::*;

    #[test]
    fn taint_reasons_are_one_label() {
        use agent_common::integrity::TaintReason;
        let both = TaintReason::Traced.code() | TaintReason::AskedToBeTraced.code();
        assert_eq!(reasons_label(both), "traced+asked_to_be_traced");
        assert_eq!(reasons_label(TaintReason::Traced.code()), "traced");
        assert_eq!(reasons_label(0), "unknown");
    }

    #[test]
    fn every_rule_starts_at_zero_for_every_reason() {
        let counted = vec![RuleLost {
            rule: "chronyd".into(),
            reason: "traced".into(),
            count: 3,
        }];
        let rows = rules_lost_from_zero(counted, ["chronyd", "ptp4l"].into_iter());
        let n = agent_common::integrity::TaintReason::ALL.len();
        assert_eq!(rows.len(), 2 * n);
        let count = |rule: &str, reason: &str| {
            rows.iter()
                .find(|l| l.rule == rule && l.reason == reason)
                .map(|l| l.count)
        };
        assert_eq!(count("chronyd", "traced"), Some(3));
        assert_eq!(count("chronyd", "foreign_code"), Some(0));
        assert_eq!(count("ptp4l", "modified_code"), Some(0));
    }

    #[test]
    fn labels_are_tokens() {
        let key = NetCounterKey::new(
            Kind::Bind,
            Service::NtsKe.code(),
            Verdict::Deny,
            Reason::NotATimeDaemon,
        );
        let c = NetCount::of(&key, 1);
        assert_eq!(c.reason, "not_a_time_daemon");
        assert_eq!(
            c.series,
            NetSeries::Socket {
                action: "bind",
                service: "nts_ke".into()
            }
        );
        assert_eq!(token("grandmaster not listed"), "grandmaster_not_listed");
        assert_eq!(token("symmetric-active"), "symmetric_active");
    }
}
