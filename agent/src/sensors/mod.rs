//! The concerns timeguard guards. Each sensor owns its kernel programs (its rows of
//! `bpf::program::TABLE`), its maps, the installation of its part of the policy, its
//! counters and its records:
//!
//! - `clock`: the clock policy (slots, header, rules), the switch between slots (the
//!   network's too), clock state, clock counters;
//! - `devices`: PHC, RTC and PPS character devices;
//! - `identity`: the library directories that tell a rule process's own code from foreign
//!   code (`agent_common::integrity`);
//! - `network`: NTP/NTS/PTP traffic and time sockets, PTP interfaces followed;
//! - `self_protection`: the agent, its files, pins and BPF objects.

pub mod clock;
pub mod devices;
pub mod identity;
pub mod network;
pub mod self_protection;

use agent_common::policy::SLOTS;

/// A policy written into the slot not in force, of the clock's maps and the network's:
/// nothing is decided by it until `Clock::switch` makes that slot the one in force, with
/// one map write that puts the clock's policy and the network's in force together.
#[must_use = "a prepared policy decides nothing until it is switched to"]
#[derive(Debug, PartialEq, Eq)]
pub struct Prepared {
    slot: u32,
    generation: u32,
}

impl Prepared {
    /// What follows the policy in force (`slot`, `generation`; generation 0: none): always
    /// the other slot, so that preparing never writes what the programs read. At a fresh
    /// start that matters too: slot 0 is then the one they read (empty, nothing decided),
    /// and a policy written there would come into force hook by hook as they attach.
    fn after(slot: u32, generation: u32) -> Self {
        Prepared {
            slot: (slot + 1) % SLOTS,
            generation: generation + 1,
        }
    }

    /// The generation it comes into force as.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_is_prepared_where_the_programs_do_not_read() {
        // A fresh start: the programs read slot 0, which holds nothing.
        assert_eq!(
            Prepared::after(0, 0),
            Prepared {
                slot: 1,
                generation: 1
            }
        );
        // An inherited or the running policy: the other slot, the next generation.
        for in_force in 0..SLOTS {
            let next = Prepared::after(in_force, 7);
            assert_ne!(next.slot, in_force);
            assert!(next.slot < SLOTS);
            assert_eq!(next.generation(), 8);
        }
        // Reload after reload, the slots take turns.
        let second = Prepared::after(1, 1);
        assert_eq!(Prepared::after(second.slot, second.generation).slot, 1);
    }
}
