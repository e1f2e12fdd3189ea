//! The concerns timeguard guards. Each sensor owns its kernel programs (its rows of
//! `bpf::program::TABLE`), its maps, the installation of its part of the policy, its
//! counters and its records:
//!
//! - `clock`: the clock policy (slots, header, rules), clock state, clock counters;
//! - `devices`: PHC, RTC and PPS character devices;
//! - `network`: NTP/NTS/PTP traffic and time sockets, PTP interfaces followed;
//! - `self_protection`: the agent, its files, pins and BPF objects.

pub mod clock;
pub mod devices;
pub mod network;
pub mod self_protection;
