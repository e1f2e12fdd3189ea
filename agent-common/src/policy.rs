//! The compiled policy as the kernel sees it: maps the agent fills, and the decision itself.
//!
//! Policies are double-buffered: every key carries a slot (0 or 1), and one array entry names
//! the active slot. The agent fills the inactive slot, then flips the active index with a single
//! map write, so each decision reads one whole policy, never a mix and never none.

use crate::clock::op;

/// Number of policy slots (the one in force and the one being prepared).
pub const SLOTS: u32 = 2;
/// Rule id the kernel reports when the policy's default decided.
pub const DEFAULT_RULE: u32 = 0;
/// Most rules per policy (bounds maps and metric label sets).
pub const MAX_RULES: u32 = 1024;

/// Whether a denial is carried out or only recorded.
pub mod mode {
    pub const ENFORCE: u32 = 0;
    pub const AUDIT: u32 = 1;
}

/// What happened to a request.
pub mod verdict {
    /// Allowed by a rule or by the default.
    pub const ALLOW: u8 = 0;
    /// Denied: the call failed with EPERM.
    pub const DENY: u8 = 1;
    /// Would have been denied, allowed because the deciding rule is in audit mode.
    pub const AUDIT: u8 = 2;
    /// Seen without the power to decide (the kernel refused LSM programs).
    pub const OBSERVED: u8 = 3;

    pub const NAMES: [&str; 4] = ["allow", "deny", "audit", "observed"];

    pub fn name(v: u8) -> &'static str {
        match NAMES.get(v as usize) {
            Some(n) => n,
            None => "unknown",
        }
    }
}

/// Key of the rule map: the executable's identity within one policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ExeKey {
    pub slot: u32,
    pub _pad: u32,
    /// The kernel's `dev_t` of the file system (`MKDEV(major, minor)`, 20-bit minor).
    pub dev: u64,
    pub ino: u64,
}

/// One clock rule, as compiled for the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClockRule {
    pub rule_id: u32,
    /// Operations this rule allows (`clock::op` bits).
    pub allow: u32,
    /// `mode::ENFORCE` or `mode::AUDIT`.
    pub mode: u32,
    pub _pad: u32,
}

/// The policy-wide part of one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyHeader {
    /// Increases with every policy the agent loads; 0 means the slot is empty.
    pub generation: u32,
    /// Operations everyone not matched by a rule may perform (usually none).
    pub default_allow: u32,
    /// Mode of the default decision.
    pub default_mode: u32,
    pub _pad: u32,
}

/// Key of the exact per-CPU counters: one per (rule, operation, verdict).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CounterKey {
    pub rule_id: u32,
    /// A single `clock::op` bit.
    pub operation: u32,
    pub verdict: u32,
    pub _pad: u32,
}

crate::pod!(ExeKey, ClockRule, PolicyHeader, CounterKey);

/// A decision and who made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: u8,
    pub rule_id: u32,
}

/// Decides a request for `operations` made by an executable whose rule is `rule` (if any).
/// A request that changes nothing (`operations == 0`) is always allowed.
pub fn decide(header: &PolicyHeader, rule: Option<&ClockRule>, operations: u32) -> Decision {
    let (allowed, mode_, rule_id) = match rule {
        Some(r) => (r.allow, r.mode, r.rule_id),
        None => (header.default_allow, header.default_mode, DEFAULT_RULE),
    };
    let verdict = if operations & !allowed == 0 {
        verdict::ALLOW
    } else if mode_ == mode::AUDIT {
        verdict::AUDIT
    } else {
        verdict::DENY
    };
    Decision { verdict, rule_id }
}

/// The operations of a rule that allows everything, `OTHER` included.
pub const ALLOW_ALL: u32 = {
    let mut all = 0;
    let mut i = 0;
    while i < op::ALL.len() {
        all |= op::ALL[i].0;
        i += 1;
    }
    all
};

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: PolicyHeader = PolicyHeader {
        generation: 1,
        default_allow: 0,
        default_mode: mode::ENFORCE,
        _pad: 0,
    };

    #[test]
    fn unknown_executable_gets_the_default() {
        let d = decide(&HEADER, None, op::STEP);
        assert_eq!(
            d,
            Decision {
                verdict: verdict::DENY,
                rule_id: DEFAULT_RULE
            }
        );
        let audit = PolicyHeader {
            default_mode: mode::AUDIT,
            ..HEADER
        };
        assert_eq!(decide(&audit, None, op::STEP).verdict, verdict::AUDIT);
    }

    #[test]
    fn read_only_is_always_allowed() {
        assert_eq!(decide(&HEADER, None, 0).verdict, verdict::ALLOW);
    }

    #[test]
    fn a_rule_allows_only_its_operations() {
        let rule = ClockRule {
            rule_id: 7,
            allow: op::SLEW | op::FREQUENCY,
            mode: mode::ENFORCE,
            _pad: 0,
        };
        assert_eq!(
            decide(&HEADER, Some(&rule), op::SLEW | op::FREQUENCY),
            Decision {
                verdict: verdict::ALLOW,
                rule_id: 7
            }
        );
        // One operation outside the rule denies the whole request.
        assert_eq!(
            decide(&HEADER, Some(&rule), op::SLEW | op::LEAP).verdict,
            verdict::DENY
        );
        let audit = ClockRule {
            mode: mode::AUDIT,
            ..rule
        };
        assert_eq!(
            decide(&HEADER, Some(&audit), op::STEP).verdict,
            verdict::AUDIT
        );
    }

    #[test]
    fn allow_all_covers_every_operation() {
        for (bit, _) in op::ALL {
            assert_ne!(ALLOW_ALL & bit, 0);
        }
    }
}
