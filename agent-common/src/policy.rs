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

/// `ExeKey::uid` of a rule that matches every user.
pub const ANY_UID: u32 = u32::MAX;

/// Key of the rule map: the executable's identity within one policy slot, and the user it
/// runs as when the rule names users (`ANY_UID` otherwise). A decision looks up the caller's
/// own uid first, then `ANY_UID`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ExeKey {
    pub slot: u32,
    pub uid: u32,
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
    /// Largest step allowed, in nanoseconds, either way; 0: no limit.
    pub max_step_ns: u64,
    /// Largest frequency offset allowed, in the kernel's unit (ppm << 16); 0: no limit.
    pub max_frequency: u64,
}

/// Why a request was refused.
pub mod reason {
    pub const NONE: u8 = 0;
    /// It asked for an operation its rule (or the default) does not allow.
    pub const OPERATION: u8 = 1;
    /// A step larger than the rule's maxStep.
    pub const MAX_STEP: u8 = 2;
    /// A frequency beyond the rule's maxFrequency.
    pub const MAX_FREQUENCY: u8 = 3;

    pub fn name(r: u8) -> &'static str {
        match r {
            OPERATION => "operation not allowed",
            MAX_STEP => "step larger than maxStep",
            MAX_FREQUENCY => "frequency beyond maxFrequency",
            _ => "",
        }
    }
}

/// What a request asks for, as far as limits are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// `clock::op` bits.
    pub operations: u32,
    /// Size of the step either way, in nanoseconds; `u64::MAX` when it could not be read.
    pub step_ns: u64,
    /// Size of the frequency offset asked for (ppm << 16); `u64::MAX` when unreadable.
    pub frequency: u64,
}

impl Request {
    /// A request without a step or frequency to measure.
    pub const fn operations(operations: u32) -> Self {
        Request {
            operations,
            step_ns: 0,
            frequency: 0,
        }
    }
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

/// Key of the exact per-CPU counters: one per (rule, set of operations, verdict). The
/// kernel counts each request once, under its whole set (one map update, which keeps the
/// programs small for older verifiers); the agent splits sets into per-operation counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CounterKey {
    pub rule_id: u32,
    /// `clock::op` bits of the requests counted here.
    pub operation: u32,
    pub verdict: u32,
    pub _pad: u32,
}

crate::pod!(ExeKey, ClockRule, PolicyHeader, CounterKey);

/// A decision, who made it, and why it refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: u8,
    pub rule_id: u32,
    pub reason: u8,
}

/// Decides a request made by an executable whose rule is `rule` (if any). A request that
/// changes nothing is always allowed; an allowed operation must also stay within the
/// rule's limits, and a size that could not be read exceeds any limit.
pub fn decide(header: &PolicyHeader, rule: Option<&ClockRule>, req: &Request) -> Decision {
    let (allowed, mode_, rule_id, max_step, max_freq) = match rule {
        Some(r) => (r.allow, r.mode, r.rule_id, r.max_step_ns, r.max_frequency),
        None => (
            header.default_allow,
            header.default_mode,
            DEFAULT_RULE,
            0,
            0,
        ),
    };
    let reason = if req.operations & !allowed != 0 {
        reason::OPERATION
    } else if req.operations & op::STEP != 0 && max_step != 0 && req.step_ns > max_step {
        reason::MAX_STEP
    } else if req.operations & op::FREQUENCY != 0 && max_freq != 0 && req.frequency > max_freq {
        reason::MAX_FREQUENCY
    } else {
        reason::NONE
    };
    let verdict = if reason == reason::NONE {
        verdict::ALLOW
    } else if mode_ == mode::AUDIT {
        verdict::AUDIT
    } else {
        verdict::DENY
    };
    Decision {
        verdict,
        rule_id,
        reason,
    }
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
        let d = decide(&HEADER, None, &Request::operations(op::STEP));
        assert_eq!(
            d,
            Decision {
                verdict: verdict::DENY,
                rule_id: DEFAULT_RULE,
                reason: reason::OPERATION,
            }
        );
        let audit = PolicyHeader {
            default_mode: mode::AUDIT,
            ..HEADER
        };
        assert_eq!(
            decide(&audit, None, &Request::operations(op::STEP)).verdict,
            verdict::AUDIT
        );
    }

    #[test]
    fn read_only_is_always_allowed() {
        assert_eq!(
            decide(&HEADER, None, &Request::operations(0)).verdict,
            verdict::ALLOW
        );
    }

    #[test]
    fn a_rule_allows_only_its_operations() {
        let rule = ClockRule {
            rule_id: 7,
            allow: op::SLEW | op::FREQUENCY,
            mode: mode::ENFORCE,
            _pad: 0,
            max_step_ns: 0,
            max_frequency: 0,
        };
        assert_eq!(
            decide(
                &HEADER,
                Some(&rule),
                &Request::operations(op::SLEW | op::FREQUENCY)
            ),
            Decision {
                verdict: verdict::ALLOW,
                rule_id: 7,
                reason: reason::NONE,
            }
        );
        // One operation outside the rule denies the whole request.
        assert_eq!(
            decide(
                &HEADER,
                Some(&rule),
                &Request::operations(op::SLEW | op::LEAP)
            )
            .verdict,
            verdict::DENY
        );
        let audit = ClockRule {
            mode: mode::AUDIT,
            ..rule
        };
        assert_eq!(
            decide(&HEADER, Some(&audit), &Request::operations(op::STEP)).verdict,
            verdict::AUDIT
        );
    }

    #[test]
    fn limits_hold_even_for_allowed_operations() {
        let rule = ClockRule {
            rule_id: 3,
            allow: op::STEP | op::FREQUENCY,
            mode: mode::ENFORCE,
            _pad: 0,
            max_step_ns: 1_000_000_000,
            max_frequency: 500 << 16,
        };
        let step = |ns| Request {
            operations: op::STEP,
            step_ns: ns,
            frequency: 0,
        };
        assert_eq!(
            decide(&HEADER, Some(&rule), &step(999_999_999)).verdict,
            verdict::ALLOW
        );
        assert_eq!(
            decide(&HEADER, Some(&rule), &step(1_000_000_000)).verdict,
            verdict::ALLOW
        );
        let over = decide(&HEADER, Some(&rule), &step(3_600_000_000_000));
        assert_eq!(
            (over.verdict, over.reason),
            (verdict::DENY, reason::MAX_STEP)
        );
        // A size that could not be read is over any limit.
        assert_eq!(
            decide(&HEADER, Some(&rule), &step(u64::MAX)).reason,
            reason::MAX_STEP
        );
        let freq = |f| Request {
            operations: op::FREQUENCY,
            step_ns: 0,
            frequency: f,
        };
        assert_eq!(
            decide(&HEADER, Some(&rule), &freq(100 << 16)).verdict,
            verdict::ALLOW
        );
        assert_eq!(
            decide(&HEADER, Some(&rule), &freq(501 << 16)).reason,
            reason::MAX_FREQUENCY
        );
        // No limit: any size.
        let free = ClockRule {
            max_step_ns: 0,
            ..rule
        };
        assert_eq!(
            decide(&HEADER, Some(&free), &step(u64::MAX)).verdict,
            verdict::ALLOW
        );
    }

    #[test]
    fn allow_all_covers_every_operation() {
        for (bit, _) in op::ALL {
            assert_ne!(ALLOW_ALL & bit, 0);
        }
    }
}
