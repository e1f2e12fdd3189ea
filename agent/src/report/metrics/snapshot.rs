//! What the metrics show, as the daemon gathers it at a scrape: named rows and fields, one
//! per series.

use crate::report::counters::{ClockAttempts, NetAlert, NetCount, RuleLost, TamperAttempts};

/// The agent's state at a scrape, gathered by the daemon.
pub struct Snapshot {
    /// The clock's exact counters since the agent started.
    pub attempts: Vec<ClockAttempts>,
    /// The network guard's exact counters.
    pub network: Vec<NetCount>,
    /// Alerts raised by network records since start.
    pub net_alerts: Vec<(NetAlert, u64)>,
    /// Attempts on the guard itself, exact.
    pub tamper: Vec<TamperAttempts>,
    /// Decisions tainted processes lost their rules in, exact.
    pub rules_lost: Vec<RuleLost>,
    /// Clock requests refused because no policy could be read once one was in force.
    pub policy_unreadable: u64,
    pub dropped: Dropped,
    pub generation: u32,
    /// Where the policy in force comes from (configured, last_known_good,
    /// built_in_default): the one that is on.
    pub policy_source: Vec<Flag>,
    pub reloads_ok: u64,
    pub reloads_rejected: u64,
    /// Whether each hook decides (enforces) on this kernel.
    pub hooks: Vec<Flag>,
    /// Whether each program is attached.
    pub programs: Vec<Flag>,
    /// The last step seen (allowed, audited or the kernel's own).
    pub last_step: Option<LastStep>,
}

/// Detailed records not delivered, by reason (the counters stay exact).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dropped {
    /// Clock records over the per-process budget, and lost with the ring buffer full.
    pub thinned: u64,
    pub lost: u64,
    /// Records the audit trail file could not take.
    pub audit_write: u64,
    pub packet_thinned: u64,
    pub packet_lost: u64,
    pub tamper_thinned: u64,
    pub tamper_lost: u64,
}

/// A hook or program, and whether it is on.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub name: &'static str,
    pub on: bool,
}

impl Flag {
    pub fn from_pairs(pairs: Vec<(&'static str, bool)>) -> Vec<Flag> {
        pairs
            .into_iter()
            .map(|(name, on)| Flag { name, on })
            .collect()
    }
}

/// A step of the clock: CLOCK_BOOTTIME when it was decided, and its size (ns, signed) when
/// the event carried one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastStep {
    pub boot_ns: u64,
    pub size_ns: Option<i128>,
}
