//! The compiled policy: double-buffered maps the agent fills, and the lookup of the rule in force.

use agent_common::{
    integrity::Taint,
    kernel::ClockState,
    maps::ONLY,
    policy::{
        decide, ClockRule, Decision, ExeKey, PolicyHeader, Reason, Request, Verdict, ANY_UID,
        DEFAULT_RULE, MAX_RULES, RULED_EXE, SLOTS,
    },
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};

use agent_common::integrity::TaintReason;

use crate::identity::{in_unit, taint_of, taints_lost};

/// Index `maps::ONLY`: the slot in force, of the clock's policy and the network's alike. The
/// agent fills the other slot of both, then flips this with one write: the whole policy
/// comes into force at once, at start as at every reload.
#[map]
static ACTIVE_SLOT: Array<u32> = Array::pinned(1, 0);

/// The policy slot in force (`ACTIVE_SLOT`).
#[inline(always)]
pub fn slot_in_force() -> Option<u32> {
    ACTIVE_SLOT.get(ONLY).copied()
}

#[map]
static POLICY: Array<PolicyHeader> = Array::pinned(SLOTS, 0);

/// The policy-wide part of the policy in force; None before any policy is loaded.
#[inline(always)]
pub fn header_in_force() -> Option<PolicyHeader> {
    let header = *POLICY.get(slot_in_force()?)?;
    (header.generation != 0).then_some(header)
}

/// Index 0: what the agent knows of the clock (the TAI offset).
#[map]
static CLOCK_STATE: Array<ClockState> = Array::pinned(1, 0);

#[inline(always)]
pub fn clock_state() -> ClockState {
    CLOCK_STATE.get(ONLY).copied().unwrap_or_default()
}

#[map]
static CLOCK_RULES: HashMap<ExeKey, ClockRule> = HashMap::pinned(SLOTS * MAX_RULES, 0);

/// Index `maps::ONLY`: 1 once a policy is in force, set by the agent at its first switch and
/// then frozen against userspace with the kernel-only maps: from then on, a slot found empty
/// is a policy someone else rewrote, and decides deny, never allow.
#[map]
static POLICY_ARMED: Array<u32> = Array::pinned(1, 0);

/// Whether a policy was ever in force (`POLICY_ARMED`).
#[inline(always)]
fn armed() -> bool {
    POLICY_ARMED.get(ONLY).is_some_and(|a| *a != 0)
}

/// A decision and the generation of the policy that made it.
pub struct Decided {
    pub decision: Decision,
    pub generation: u32,
    /// The rule the executable matched and the tainted process lost (0: none), and why.
    pub lost_rule_id: u32,
    pub taint: Taint,
}

/// Attempts to read one consistent policy before giving up.
const READ_TRIES: u32 = 3;

/// The generation a slot's header holds now, read afresh.
#[inline(always)]
fn generation_now(slot: u32) -> u32 {
    match POLICY.get_ptr(slot) {
        // SAFETY: a pointer into the array map's value; volatile so it is really re-read.
        Some(h) => unsafe { core::ptr::read_volatile(&(*h).generation) },
        None => 0,
    }
}

/// Decides `operations` by the executable `(dev, ino)` run as `uid`, under the policy in force.
///
/// The header of a slot works as a sequence lock: the agent sets its generation to 0 before
/// rewriting the slot's rules and to the new generation after. A decision reads the
/// generation, then the rule, then the generation again, and starts over if the slot was
/// being rewritten: a decision that began just before a flip and was delayed past the next
/// reload never mixes two policies.
/// Before any policy is loaded (no generation anywhere) nothing is decided: `None`. Once
/// one was, a policy that cannot be read (its generation 0 on every try) is refused:
/// `Reason::PolicyUnreadable`, by the default.
///
/// A rule holds only for a process whose code is its program's own: a tainted process
/// (`identity`) is decided by the default, and the rule it lost is said (and counted with
/// the decision).
#[inline(always)]
pub fn decide_for(dev: u64, ino: u64, uid: u32, tgid: u32, req: &Request) -> Option<Decided> {
    let Some((header, mut rule)) = consistent_read(dev, ino, uid) else {
        return armed().then_some(Decided {
            decision: Decision {
                verdict: Verdict::Deny,
                rule_id: DEFAULT_RULE,
                reason: Reason::PolicyUnreadable,
            },
            generation: 0,
            lost_rule_id: 0,
            taint: Taint::default(),
        });
    };
    let mut lost_rule_id = 0;
    let mut taint = Taint::default();
    // Only a process a rule matched is looked up: the default's callers pay nothing.
    if let Some(r) = rule {
        let lost = match taint_of(tgid) {
            Some(t) => Some(t),
            None if r.unit_hash != 0 && !in_unit(tgid, r.unit_hash, r.of_slice != 0) => {
                Some(Taint {
                    reasons: TaintReason::OutsideUnit.code(),
                    ..Taint::default()
                })
            }
            None if taints_lost() => Some(Taint {
                reasons: TaintReason::TaintsLost.code(),
                ..Taint::default()
            }),
            None => None,
        };
        if let Some(t) = lost {
            lost_rule_id = r.rule_id;
            taint = t;
            rule = None;
        }
    }
    Some(Decided {
        decision: decide(&header, rule.as_ref(), req),
        generation: header.generation,
        lost_rule_id,
        taint,
    })
}

/// Whether a rule of the policy in force names the executable `(dev, ino)`, for any user.
#[inline(always)]
pub fn exe_has_rule(dev: u64, ino: u64) -> bool {
    let Some(slot) = slot_in_force() else {
        return false;
    };
    let key = |slot| ExeKey {
        slot,
        uid: ANY_UID,
        dev,
        ino,
    };
    // SAFETY: only whether a key is there is read.
    unsafe {
        CLOCK_RULES.get(key(slot)).is_some() || CLOCK_RULES.get(key(slot | RULED_EXE)).is_some()
    }
}

/// The header and the rule of one policy, read under the sequence lock; the decision is
/// made once, after the loop, which keeps the loop small for the verifier.
#[inline(always)]
fn consistent_read(dev: u64, ino: u64, uid: u32) -> Option<(PolicyHeader, Option<ClockRule>)> {
    for _ in 0..READ_TRIES {
        let slot = slot_in_force()?;
        let header = *POLICY.get(slot)?;
        if header.generation == 0 {
            continue;
        }
        let mut key = ExeKey {
            slot,
            uid,
            dev,
            ino,
        };
        // SAFETY: the values are copied out at once.
        let mut rule = unsafe { CLOCK_RULES.get(key) }.copied();
        if rule.is_none() {
            key.uid = ANY_UID;
            rule = unsafe { CLOCK_RULES.get(key) }.copied();
        }
        if generation_now(slot) == header.generation {
            return Some((header, rule));
        }
    }
    None
}
