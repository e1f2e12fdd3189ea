//! The compiled policy: double-buffered maps the agent fills, and the lookup of the rule in force.

use agent_common::policy::{decide, ClockRule, Decision, ExeKey, PolicyHeader, MAX_RULES, SLOTS};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};

/// Index 0 holds the slot in force. The agent flips it with one write after filling the other.
#[map]
static ACTIVE_SLOT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static POLICY: Array<PolicyHeader> = Array::with_max_entries(SLOTS, 0);

#[map]
static CLOCK_RULES: HashMap<ExeKey, ClockRule> = HashMap::with_max_entries(SLOTS * MAX_RULES, 0);

/// A decision and the generation of the policy that made it.
pub struct Decided {
    pub decision: Decision,
    pub generation: u32,
}

/// Decides `operations` by the executable `(dev, ino)` under the policy in force.
/// Before any policy is loaded (generation 0) nothing is decided: `None`.
#[inline(always)]
pub fn decide_for(dev: u64, ino: u64, operations: u32) -> Option<Decided> {
    let slot = *ACTIVE_SLOT.get(0)?;
    let header = POLICY.get(slot)?;
    if header.generation == 0 {
        return None;
    }
    let key = ExeKey {
        slot,
        _pad: 0,
        dev,
        ino,
    };
    // SAFETY: the value is copied out before anything else can touch the map entry.
    let rule = unsafe { CLOCK_RULES.get(key) }.copied();
    Some(Decided {
        decision: decide(header, rule.as_ref(), operations),
        generation: header.generation,
    })
}
