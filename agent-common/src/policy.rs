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

crate::codes! {
    /// Whether a denial is carried out or only recorded (`ClockRule::mode` and the other
    /// `mode` fields).
    pub enum Mode: u32, unknown = "unknown" {
        Enforce = 0 => "enforce",
        Audit = 1 => "audit",
    }
}

crate::codes! {
    /// What happened to a request.
    pub enum Verdict: u8, unknown = "unknown" {
        /// Allowed by a rule or by the default.
        Allow = 0 => "allow",
        /// Denied: the call failed with EPERM.
        Deny = 1 => "deny",
        /// Would have been denied, allowed because the deciding rule is in audit mode.
        Audit = 2 => "audit",
        /// Seen without the power to decide (the kernel refused LSM programs).
        Observed = 3 => "observed",
    }
}

impl Verdict {
    /// The verdict on a refusal under `mode`: denied, or only recorded.
    pub const fn refused(mode: u32) -> Self {
        if mode == Mode::Audit.code() {
            Verdict::Audit
        } else {
            Verdict::Deny
        }
    }
}

/// `ExeKey::uid` of a rule that matches every user.
pub const ANY_UID: u32 = u32::MAX;

/// `ExeKey::slot` bit of an entry that only says the executable has a rule in the slot for
/// some of its users (with `ANY_UID`), never looked up by a decision: code a process maps
/// while it runs as another user (chronyd starts as root) is still a rule process's code.
pub const RULED_EXE: u32 = 0x8000_0000;

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
    /// `Mode`.
    pub mode: u32,
    pub _pad: u32,
    /// Largest step allowed, in nanoseconds, either way; 0: no limit.
    pub max_step_ns: u64,
    /// Largest frequency offset allowed, in the kernel's unit (ppm << 16); 0: no limit.
    pub max_frequency: u64,
    /// `match.unit`: the `integrity::unit_hash` the process's `UnitMark` must carry, of its
    /// unit's cgroup (`unit_hash`) or of a template's slice (`slice_hash`, when `of_slice`);
    /// 0: any process.
    pub unit_hash: u64,
    pub of_slice: u32,
    pub _pad2: u32,
}

crate::codes! {
    /// Why a request was refused. The names are what records say (prose, kept as they are).
    pub enum Reason: u8, unknown = "" {
        None = 0 => "",
        /// It asked for an operation its rule (or the default) does not allow.
        Operation = 1 => "operation not allowed",
        /// A step larger than the rule's maxStep.
        MaxStep = 2 => "step larger than maxStep",
        /// A frequency beyond the rule's maxFrequency.
        MaxFrequency = 3 => "frequency beyond maxFrequency",
        /// Another task's request took this CPU's slot while this one was decided (a
        /// preemptible kernel): refused rather than decided on a request not its own.
        Preempted = 4 => "preempted while deciding",
        /// Once a policy was in force, none could be read (a slot's generation is 0 or its
        /// header unreadable: rewritten by another writer of the maps): refused, since
        /// nothing decides it. An internal error, counted (`policy_unreadable`).
        PolicyUnreadable = 5 => "policy unreadable",
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

/// Key of the exact per-CPU counters: one per (rule, set of operations, verdict, rule lost).
/// The kernel counts each request once, under its whole set (one map update, which keeps
/// the programs within the 6.1 verifier's budget); the agent splits sets into
/// per-operation counts, and sums the decisions a tainted process lost its rule in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CounterKey {
    pub rule_id: u32,
    /// `clock::op` bits of the requests counted here.
    pub operation: u32,
    pub verdict: u32,
    /// The rule a tainted process's executable matched and lost (0: none), and why
    /// (`integrity::TaintReason` bits).
    pub lost_rule_id: u32,
    pub lost_reasons: u32,
    /// Why it was refused (`Reason`), so that internal errors are counted exactly.
    pub reason: u32,
}

crate::pod!(ExeKey, ClockRule, PolicyHeader, CounterKey);

/// A decision, who made it, and why it refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub rule_id: u32,
    pub reason: Reason,
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
        Reason::Operation
    } else if req.operations & op::STEP != 0 && max_step != 0 && req.step_ns > max_step {
        Reason::MaxStep
    } else if req.operations & op::FREQUENCY != 0 && max_freq != 0 && req.frequency > max_freq {
        Reason::MaxFrequency
    } else {
        Reason::None
    };
    let verdict = if matches!(reason, Reason::None) {
        Verdict::Allow
    } else {
        Verdict::refused(mode_)
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
        default_mode: Mode::Enforce.code(),
        _pad: 0,
    };

    #[test]
    fn unknown_executable_gets_the_default() {
        let d = decide(&HEADER, None, &Request::operations(op::STEP));
        assert_eq!(
            d,
            Decision {
                verdict: Verdict::Deny,
                rule_id: DEFAULT_RULE,
                reason: Reason::Operation,
            }
        );
        let audit = PolicyHeader {
            default_mode: Mode::Audit.code(),
            ..HEADER
        };
        assert_eq!(
            decide(&audit, None, &Request::operations(op::STEP)).verdict,
            Verdict::Audit
        );
    }

    #[test]
    fn read_only_is_always_allowed() {
        assert_eq!(
            decide(&HEADER, None, &Request::operations(0)).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn a_rule_allows_only_its_operations() {
        let rule = ClockRule {
            rule_id: 7,
            allow: op::SLEW | op::FREQUENCY,
            mode: Mode::Enforce.code(),
            _pad: 0,
            max_step_ns: 0,
            max_frequency: 0,
            ..ClockRule::default()
        };
        assert_eq!(
            decide(
                &HEADER,
                Some(&rule),
                &Request::operations(op::SLEW | op::FREQUENCY)
            ),
            Decision {
                verdict: Verdict::Allow,
                rule_id: 7,
                reason: Reason::None,
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
            Verdict::Deny
        );
        let audit = ClockRule {
            mode: Mode::Audit.code(),
            ..rule
        };
        assert_eq!(
            decide(&HEADER, Some(&audit), &Request::operations(op::STEP)).verdict,
            Verdict::Audit
        );
    }

    #[test]
    fn limits_hold_even_for_allowed_operations() {
        let rule = ClockRule {
            rule_id: 3,
            allow: op::STEP | op::FREQUENCY,
            mode: Mode::Enforce.code(),
            _pad: 0,
            max_step_ns: 1_000_000_000,
            max_frequency: 500 << 16,
            ..ClockRule::default()
        };
        let step = |ns| Request {
            operations: op::STEP,
            step_ns: ns,
            frequency: 0,
        };
        assert_eq!(
            decide(&HEADER, Some(&rule), &step(999_999_999)).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide(&HEADER, Some(&rule), &step(1_000_000_000)).verdict,
            Verdict::Allow
        );
        let over = decide(&HEADER, Some(&rule), &step(3_600_000_000_000));
        assert_eq!(
            (over.verdict, over.reason),
            (Verdict::Deny, Reason::MaxStep)
        );
        // A size that could not be read is over any limit.
        assert_eq!(
            decide(&HEADER, Some(&rule), &step(u64::MAX)).reason,
            Reason::MaxStep
        );
        let freq = |f| Request {
            operations: op::FREQUENCY,
            step_ns: 0,
            frequency: f,
        };
        assert_eq!(
            decide(&HEADER, Some(&rule), &freq(100 << 16)).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide(&HEADER, Some(&rule), &freq(501 << 16)).reason,
            Reason::MaxFrequency
        );
        // No limit: any size.
        let free = ClockRule {
            max_step_ns: 0,
            ..rule
        };
        assert_eq!(
            decide(&HEADER, Some(&free), &step(u64::MAX)).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn allow_all_covers_every_operation() {
        for (bit, _) in op::ALL {
            assert_ne!(ALLOW_ALL & bit, 0);
        }
    }
}
