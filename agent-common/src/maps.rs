//! The maps the kernel programs and the agent share: every name, and every index into an
//! array map, defined once.
//!
//! The kernel side names a map by its static (aya-ebpf's `#[map]` takes the identifier or a
//! string literal, not a constant), so each static there is spelled as its constant here;
//! the agent's `maps_match_the_programs` test reads the built object and fails when a name
//! here and a map there part ways.

// The policy slot in force, of the clock and the network guard alike: one write switches both.
pub const ACTIVE_SLOT: &str = "ACTIVE_SLOT";
// The clock: its policy (double-buffered), rules, what the agent knows of the clock.
pub const POLICY: &str = "POLICY";
pub const CLOCK_STATE: &str = "CLOCK_STATE";
pub const CLOCK_RULES: &str = "CLOCK_RULES";
// Set at the first policy in force, then frozen: from then on no policy is no allow.
pub const POLICY_ARMED: &str = "POLICY_ARMED";
// The clock's counters and records.
pub const CLOCK_COUNTERS: &str = "CLOCK_COUNTERS";
pub const CLOCK_EVENTS: &str = "CLOCK_EVENTS";
pub const CLOCK_EVENTS_DROPPED: &str = "CLOCK_EVENTS_DROPPED";
pub const EVENT_BUDGETS: &str = "EVENT_BUDGETS";
// Integrity of rule processes: the tainted ones, and the decisions they lost a rule in.
pub const PROCESS_TAINT: &str = "PROCESS_TAINT";

// The network guard: its policy (double-buffered, in the slot `ACTIVE_SLOT` names), lists,
// daemons and grandmasters.
pub const NET_POLICY: &str = "NET_POLICY";
pub const NET_ADDRS: &str = "NET_ADDRS";
pub const NET_DAEMONS: &str = "NET_DAEMONS";
pub const PTP_GRANDMASTERS: &str = "PTP_GRANDMASTERS";
// What the network guard remembers, per source, destination and grandmaster, and the time
// daemons' UDP sockets (by socket cookie), whose replies are NTP whatever their port.
pub const NET_TIME_SOCKETS: &str = "NET_TIME_SOCKETS";
pub const NET_UPSTREAMS: &str = "NET_UPSTREAMS";
pub const NET_BUCKETS: &str = "NET_BUCKETS";
pub const NET_DESTINATIONS: &str = "NET_DESTINATIONS";
pub const PTP_ANNOUNCED: &str = "PTP_ANNOUNCED";
pub const PTP_MESSAGE: &str = "PTP_MESSAGE";
// The network guard's counters and records.
pub const NET_COUNTERS: &str = "NET_COUNTERS";
pub const NET_EVENTS: &str = "NET_EVENTS";
pub const NET_EVENTS_DROPPED: &str = "NET_EVENTS_DROPPED";
pub const NET_EVENT_SCRATCH: &str = "NET_EVENT_SCRATCH";
pub const NET_EVENT_BUDGET: &str = "NET_EVENT_BUDGET";

// Self-protection: its state, what it protects, its counters and records.
pub const SELF_STATE: &str = "SELF_STATE";
pub const PROTECTED_FILES: &str = "PROTECTED_FILES";
pub const OWN_OBJECTS: &str = "OWN_OBJECTS";
pub const TAMPER_COUNTERS: &str = "TAMPER_COUNTERS";
pub const TAMPER_EVENTS: &str = "TAMPER_EVENTS";
pub const TAMPER_EVENTS_DROPPED: &str = "TAMPER_EVENTS_DROPPED";
pub const TAMPER_SCRATCH: &str = "TAMPER_SCRATCH";
pub const CLOCK_REQUEST_SCRATCH: &str = "CLOCK_REQUEST_SCRATCH";
pub const LIBRARY_DIRS: &str = "LIBRARY_DIRS";
pub const RULE_CODE: &str = "RULE_CODE";
pub const TAINTS_LOST: &str = "TAINTS_LOST";
pub const UNIT_OF: &str = "UNIT_OF";
pub const EXE_AT_EXEC: &str = "EXE_AT_EXEC";
pub const TAMPER_BUDGET: &str = "TAMPER_BUDGET";

/// Every map of the kernel programs.
pub const ALL: [&str; 39] = [
    ACTIVE_SLOT,
    POLICY,
    POLICY_ARMED,
    CLOCK_STATE,
    CLOCK_RULES,
    CLOCK_COUNTERS,
    CLOCK_EVENTS,
    CLOCK_EVENTS_DROPPED,
    EVENT_BUDGETS,
    PROCESS_TAINT,
    UNIT_OF,
    EXE_AT_EXEC,
    LIBRARY_DIRS,
    RULE_CODE,
    TAINTS_LOST,
    NET_POLICY,
    NET_ADDRS,
    NET_DAEMONS,
    PTP_GRANDMASTERS,
    NET_UPSTREAMS,
    NET_BUCKETS,
    NET_DESTINATIONS,
    NET_TIME_SOCKETS,
    PTP_ANNOUNCED,
    PTP_MESSAGE,
    NET_COUNTERS,
    NET_EVENTS,
    NET_EVENTS_DROPPED,
    NET_EVENT_SCRATCH,
    NET_EVENT_BUDGET,
    SELF_STATE,
    PROTECTED_FILES,
    OWN_OBJECTS,
    TAMPER_COUNTERS,
    TAMPER_EVENTS,
    TAMPER_EVENTS_DROPPED,
    TAMPER_SCRATCH,
    CLOCK_REQUEST_SCRATCH,
    TAMPER_BUDGET,
];

/// Maps only the kernel programs write (counters, budgets, per-source state, scratch), and
/// the fail-closed latch the agent sets once before: the agent freezes them against every
/// `bpf()` write from userspace. Ring buffers are left
/// out (their reader writes its position through a writable mapping).
pub const KERNEL_ONLY: [&str; 23] = [
    POLICY_ARMED,
    CLOCK_COUNTERS,
    CLOCK_EVENTS_DROPPED,
    EVENT_BUDGETS,
    PROCESS_TAINT,
    TAINTS_LOST,
    UNIT_OF,
    EXE_AT_EXEC,
    NET_COUNTERS,
    NET_EVENTS_DROPPED,
    NET_EVENT_SCRATCH,
    NET_EVENT_BUDGET,
    NET_UPSTREAMS,
    NET_BUCKETS,
    NET_DESTINATIONS,
    NET_TIME_SOCKETS,
    PTP_ANNOUNCED,
    PTP_MESSAGE,
    TAMPER_COUNTERS,
    TAMPER_EVENTS_DROPPED,
    TAMPER_BUDGET,
    TAMPER_SCRATCH,
    CLOCK_REQUEST_SCRATCH,
];

/// The one global the agent sets at load time (`kernel::KernelOffsets`): not a map, kept
/// here because it is named on both sides the same way.
pub const KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";

/// Index of the only entry of a one-entry array map (`ACTIVE_SLOT`, `CLOCK_STATE`, `SELF_STATE`, the scratch records, `TAMPER_BUDGET`).
pub const ONLY: u32 = 0;

crate::codes! {
    /// Index into a ring's dropped-record counters (`CLOCK_EVENTS_DROPPED`,
    /// `NET_EVENTS_DROPPED`, `TAMPER_EVENTS_DROPPED`): per-CPU, one entry each.
    pub enum Dropped: u32, unknown = "unknown" {
        /// Records that did not fit in the ring buffer.
        Lost = 0 => "lost",
        /// Records not sent because their budget for the window was used up.
        Thinned = 1 => "thinned",
    }
}

crate::codes! {
    /// Index into `NET_EVENT_BUDGET`: packets and socket decisions have a budget each, so
    /// that neither crowds out the other.
    pub enum NetBudget: u32, unknown = "unknown" {
        Packets = 0 => "packets",
        Sockets = 1 => "sockets",
    }
}

/// Entries of an array map indexed by one of these enums.
macro_rules! indexes {
    ($($t:ty),*) => {
        $(impl $t {
            pub const COUNT: u32 = <$t>::ALL.len() as u32;

            pub const fn index(self) -> u32 {
                self as u32
            }
        })*
    };
}
indexes!(Dropped, NetBudget);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_kernel_only_ones_are_maps() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(!ALL[i + 1..].contains(a), "{a} listed twice");
        }
        for name in KERNEL_ONLY {
            assert!(ALL.contains(&name), "{name} is not a map");
        }
        assert!(!ALL.contains(&KERNEL_OFFSETS));
    }
}
