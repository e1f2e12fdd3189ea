//! The clock sensor: its policy in the kernel's maps (two slots and a header per slot, the
//! rules by executable and user), the index of the slot in force (which switches the
//! network's policy too), the clock state the programs measure against, and its counters.

use agent_common::{
    integrity::LostKey,
    kernel::ClockState,
    maps as map_names,
    policy::{ClockRule, CounterKey, ExeKey, PolicyHeader, Reason, ANY_UID, RULED_EXE, SLOTS},
};
use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap};

use super::Prepared;
use crate::{
    bpf::{maps, object::Object},
    policy::CompiledPolicy,
};

pub struct Clock {
    headers: Array<MapData, PolicyHeader>,
    /// The slot in force, of the clock's policy and the network's (`maps::ACTIVE_SLOT`).
    active: Array<MapData, u32>,
    rules: HashMap<MapData, ExeKey, ClockRule>,
    state: Array<MapData, ClockState>,
    counters: PerCpuHashMap<MapData, CounterKey, u64>,
    dropped: PerCpuArray<MapData, u64>,
    /// Set once a policy is in force, then frozen with the kernel-only maps
    /// (`maps::POLICY_ARMED`): a policy unreadable after that is refused, not allowed.
    armed: Array<MapData, u32>,
    active_slot: u32,
    /// Each slot's header as this agent last wrote it (or found it, adopted): the one in
    /// force says its generation (0: none), and what the kernel must still hold.
    written: [PolicyHeader; SLOTS as usize],
    /// When the operator last vouched for the libraries in place
    /// (`ClockState::code_vouched_sec`).
    code_vouched_sec: i64,
}

impl Clock {
    /// Takes the clock's maps, and reads back what an earlier agent left there: the policy
    /// slot in force and its generation (0: none). That policy stays in force, whole, until
    /// this agent switches to its own, prepared in the other slot.
    pub fn new(object: &mut Object) -> anyhow::Result<Self> {
        let mut clock = Clock {
            headers: object.take_map(map_names::POLICY)?,
            active: object.take_map(map_names::ACTIVE_SLOT)?,
            rules: object.take_map(map_names::CLOCK_RULES)?,
            state: object.take_map(map_names::CLOCK_STATE)?,
            counters: object.take_map(map_names::CLOCK_COUNTERS)?,
            dropped: object.take_map(map_names::CLOCK_EVENTS_DROPPED)?,
            armed: object.take_map(map_names::POLICY_ARMED)?,
            active_slot: 0,
            written: [PolicyHeader::default(); SLOTS as usize],
            code_vouched_sec: 0,
        };
        // An earlier agent's policy stays in force until the switch, and its baseline with it.
        clock.code_vouched_sec = clock
            .state
            .get(&map_names::ONLY, 0)
            .map_or(0, |s| s.code_vouched_sec);
        clock.active_slot = clock.active.get(&map_names::ONLY, 0).unwrap_or(0) % SLOTS;
        clock.written[clock.active_slot as usize] =
            clock.headers.get(&clock.active_slot, 0).unwrap_or_default();
        Ok(clock)
    }

    /// The generation in force (0: none yet).
    pub fn generation(&self) -> u32 {
        self.written[self.active_slot as usize].generation
    }

    /// Writes a policy into the slot not in force; nothing decides by it until `switch`.
    /// The network's part goes into the same slot (`Network::prepare`).
    pub fn prepare(&mut self, policy: &CompiledPolicy) -> anyhow::Result<Prepared> {
        self.refresh_state()?;
        let next = Prepared::after(self.active_slot, self.generation());
        let slot = next.slot;
        let header = PolicyHeader {
            generation: next.generation,
            default_allow: policy.default_allow,
            default_mode: policy.default_mode,
            _pad: 0,
        };
        // Sequence lock, writer side: generation 0 first (with the new defaults already, so
        // a torn read of the header cannot mix defaults), then the rules, then the generation.
        // A decision still reading this slot from before the last switch sees the change and
        // starts over on the slot in force.
        self.write_header(
            slot,
            PolicyHeader {
                generation: 0,
                ..header
            },
        )?;
        maps::clear_slot(&mut self.rules, slot, |k| k.slot & !RULED_EXE, "policy")?;
        for rule in &policy.rules {
            let value = ClockRule {
                rule_id: rule.id,
                allow: rule.allow,
                mode: rule.mode,
                _pad: 0,
                max_step_ns: rule.max_step_ns,
                max_frequency: rule.max_frequency,
                unit_hash: rule.unit.as_ref().map_or(0, |u| u.hash),
                of_slice: rule.unit.as_ref().is_some_and(|u| u.of_slice).into(),
                _pad2: 0,
            };
            // One entry per user the rule is narrowed to (and one saying the executable has
            // a rule), or one for every user.
            let keys: Vec<(u32, u32)> = if rule.uids.is_empty() {
                vec![(slot, ANY_UID)]
            } else {
                let users = rule.uids.iter().map(|&uid| (slot, uid));
                users.chain([(slot | RULED_EXE, ANY_UID)]).collect()
            };
            for (slot, uid) in keys {
                let key = ExeKey {
                    slot,
                    uid,
                    dev: rule.exe_id.dev,
                    ino: rule.exe_id.ino,
                };
                self.rules
                    .insert(key, value, 0)
                    .with_context(|| format!("installing rule \"{}\"", rule.name))?;
            }
        }
        self.write_header(slot, header)?;
        Ok(next)
    }

    /// When the operator last vouched for the libraries in place (`ClockState`; CLOCK_REALTIME
    /// seconds, 0 before any policy).
    pub fn code_vouched_sec(&self) -> i64 {
        self.code_vouched_sec
    }

    /// The libraries in place now are the ones the operator vouches for (a reload they
    /// asked for).
    pub fn vouch_for_code_now(&mut self) {
        self.code_vouched_sec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if let Err(e) = self.refresh_state() {
            log::warn!("{e:#}");
        }
    }

    /// Puts a prepared policy in force, the clock's and the network's part at once: the one
    /// map write every program reads first. Returns its generation.
    pub fn switch(&mut self, prepared: Prepared) -> anyhow::Result<u32> {
        self.active
            .set(map_names::ONLY, prepared.slot, 0)
            .context("switching the policy in force")?;
        self.active_slot = prepared.slot;
        self.arm();
        // The first policy vouches for the libraries in place; later ones only when the
        // operator asks (`vouch_for_code_now`): a reload the agent makes by itself (a rule's
        // executable replaced, a policy file dropped in) must not bless a library an
        // intruder put there since.
        if self.code_vouched_sec == 0 {
            self.vouch_for_code_now();
        } else if let Err(e) = self.refresh_state() {
            log::warn!("{e:#}");
        }
        Ok(prepared.generation)
    }

    /// Whether the kernel still holds the policy this agent put in force: the slot in force
    /// and its header (generation and defaults), as written. Someone else's `bpf()` write
    /// (under `selfProtection: audit`) can zero, switch or rewrite them; the agent then writes
    /// its policy again.
    pub fn in_force_as_written(&self) -> anyhow::Result<bool> {
        let slot = self
            .active
            .get(&map_names::ONLY, 0)
            .context("reading the slot in force")?;
        let header = self
            .headers
            .get(&self.active_slot, 0)
            .context("reading the policy header in force")?;
        let written = self.written[self.active_slot as usize];
        Ok(written.generation == 0 || (slot == self.active_slot && header == written))
    }

    /// Arms the kernel's fail-closed latch at the first policy in force; the map is frozen
    /// right after (`freeze_kernel_only_maps`), so nobody can disarm it. An adopted latch is
    /// set already.
    fn arm(&mut self) {
        if self.armed.get(&map_names::ONLY, 0).is_ok_and(|a| a != 0) {
            return;
        }
        if let Err(e) = self.armed.set(map_names::ONLY, 1, 0) {
            log::error!(
                "NOT ENFORCED: a policy zeroed in the kernel's maps would be decided as no policy (allow): the fail-closed latch {} cannot be set ({e}; frozen unset by another process?)",
                map_names::POLICY_ARMED
            );
        }
    }

    /// Tells the programs the kernel's TAI offset, so they can measure a step against the
    /// wall clock, and the device major of PTP clocks. Called at start and on every policy
    /// watch tick: the offset changes only when a daemon sets it (ADJ_TAI) or at a leap
    /// second, the major when the PTP core is loaded as a module.
    pub fn refresh_state(&mut self) -> anyhow::Result<()> {
        // PID 1's executable, as it runs now (it may re-execute itself after an upgrade).
        let manager = crate::policy::ExeId::of(std::path::Path::new("/proc/1/exe")).ok();
        let state = ClockState {
            tai_offset_ns: crate::events::tai_offset_ns(),
            phc_major: super::devices::phc_major(),
            _pad: 0,
            code_vouched_sec: self.code_vouched_sec,
            service_manager_dev: manager.map_or(0, |m| m.dev),
            service_manager_ino: manager.map_or(0, |m| m.ino),
        };
        self.state
            .set(map_names::ONLY, state, 0)
            .context("writing the clock state")
    }

    fn write_header(&mut self, slot: u32, header: PolicyHeader) -> anyhow::Result<()> {
        self.headers
            .set(slot, header, 0)
            .context("writing the policy header")?;
        self.written[slot as usize] = header;
        Ok(())
    }

    /// Exact counters per (rule, single operation, verdict), summed over CPUs: the kernel
    /// counts each request once under its set of operations, split here.
    pub fn counters(&self) -> anyhow::Result<Vec<(CounterKey, u64)>> {
        let mut per_op: std::collections::BTreeMap<(u32, u32, u32), u64> = Default::default();
        for (key, n) in maps::summed(&self.counters, "clock counters")? {
            for (bit, _) in agent_common::clock::op::ALL {
                if key.operation & bit != 0 {
                    *per_op.entry((key.rule_id, bit, key.verdict)).or_default() += n;
                }
            }
        }
        Ok(per_op
            .into_iter()
            .map(|((rule_id, operation, verdict), n)| {
                (
                    CounterKey {
                        rule_id,
                        operation,
                        verdict,
                        ..CounterKey::default()
                    },
                    n,
                )
            })
            .collect())
    }

    /// Exact counts of decisions a tainted process lost its rule in, per (rule, reasons):
    /// the kernel counts them with the decision (`CounterKey::lost_rule_id`).
    pub fn rules_lost(&self) -> anyhow::Result<Vec<(LostKey, u64)>> {
        let mut lost: std::collections::BTreeMap<(u32, u32), u64> = Default::default();
        for (key, n) in maps::summed(&self.counters, "clock counters")? {
            if key.lost_rule_id != 0 {
                *lost
                    .entry((key.lost_rule_id, key.lost_reasons))
                    .or_default() += n;
            }
        }
        Ok(lost
            .into_iter()
            .map(|((rule_id, reasons), n)| (LostKey { rule_id, reasons }, n))
            .collect())
    }

    /// Requests refused because no policy could be read once one had been in force
    /// (`Reason::PolicyUnreadable`): internal errors, exact.
    pub fn policy_unreadable(&self) -> anyhow::Result<u64> {
        let code = u32::from(Reason::PolicyUnreadable.code());
        Ok(maps::summed(&self.counters, "clock counters")?
            .into_iter()
            .filter(|(key, _)| key.reason == code)
            .map(|(_, n)| n)
            .sum())
    }

    /// Detailed events that did not fit in the ring buffer.
    pub fn events_lost(&self) -> anyhow::Result<u64> {
        Ok(maps::dropped(&self.dropped)?.0)
    }

    /// Detailed events not sent because their process had used its budget.
    pub fn events_thinned(&self) -> anyhow::Result<u64> {
        Ok(maps::dropped(&self.dropped)?.1)
    }
}
