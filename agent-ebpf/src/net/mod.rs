//! The host's time traffic, decided in the kernel by the network policy.
//!
//! - `packet`: where a packet's addresses, ports and payload are (IPv4, IPv6, UDP, TCP).
//! - `ntp`: NTP and NTS-KE arriving at this host's sockets (cgroup_skb ingress).
//! - `ptp`: PTP messages arriving on interfaces, over UDP and Ethernet (tc ingress).
//! - `sockets`: who may bind the time ports and open PTP packet sockets, and where each
//!   time daemon may connect (cgroup sock_addr, BPF LSM).
//!
//! Network decisions have their own counters, ring buffer and event budget: a packet flood
//! cannot cost a single clock-change event.

mod ntp;
mod packet;
mod ptp;
mod sockets;

use crate::emit::{Budget, Ring};
use agent_common::{
    alert::Alert,
    event::EventBudget,
    maps::{Dropped, NetBudget},
    net::{
        AddrKey, List, NetCounterKey, NetEvent, NetPolicy, Reason, ADDR_KEY_FIXED_BITS,
        MAX_LIST_ENTRIES,
    },
    policy::{Verdict, SLOTS},
};
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray, PerCpuHashMap, RingBuf},
};

#[map]
static NET_POLICY: Array<NetPolicy> = Array::pinned(SLOTS, 0);

/// Address lists, by (slot, list, scope, port, prefix).
#[map]
static NET_ADDRS: LpmTrie<AddrKey, u8> = LpmTrie::pinned(
    SLOTS * List::COUNT * MAX_LIST_ENTRIES as u32,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);

#[map]
static NET_COUNTERS: PerCpuHashMap<NetCounterKey, u64> = PerCpuHashMap::pinned(4096, 0);

#[map]
static NET_EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

/// Records that did not fit, and records over the budget (`maps::Dropped`).
#[map]
static NET_EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::pinned(Dropped::COUNT, 0);

/// Index 0: where this CPU builds a record (BPF gives a program 512 bytes of stack).
#[map]
static NET_EVENT_SCRATCH: PerCpuArray<NetEvent> = PerCpuArray::pinned(1, 0);

/// This CPU's event budget for the current second, by `maps::NetBudget`: packets and
/// socket decisions, so that neither crowds out the other.
#[map]
static NET_EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(NetBudget::COUNT, 0);

/// Records sent in detail per CPU per second and budget; the rest are counted.
const NET_EVENTS_PER_SECOND: u32 = 100;

/// The network policy in force and its slot; None when there is none (nothing decided).
/// The network policy is double-buffered like the clock's and in the same slot: one index
/// (`policy::slot_in_force`) switches both.
#[inline(always)]
pub fn policy_in_force() -> Option<(u32, NetPolicy)> {
    let slot = crate::policy::slot_in_force()?;
    let policy = *NET_POLICY.get(slot)?;
    (policy.generation != 0).then_some((slot, policy))
}

/// Whether `addr` (and `port`, for egress) is in a list of the slot.
#[inline(always)]
pub fn listed(slot: u32, list: List, scope: u32, port: u16, addr: [u8; 16]) -> bool {
    let key = Key::new(
        ADDR_KEY_FIXED_BITS + 128,
        AddrKey {
            slot,
            list: list as u32,
            scope,
            port: port as u32,
            addr,
        },
    );
    NET_ADDRS.get(&key).is_some()
}

/// The verdict for a refusal reason (`Reason::None`: allowed) under the policy's mode.
#[inline(always)]
pub fn verdict_for(why: Reason, policy: &NetPolicy) -> Verdict {
    if why == Reason::None {
        Verdict::Allow
    } else {
        Verdict::refused(policy.mode)
    }
}

/// Counts one decision, exactly.
#[inline(always)]
pub fn count(key: NetCounterKey) {
    crate::emit::count(&NET_COUNTERS, &key);
}

/// Sends one record within the `which` budget: `fill` writes the fields of its kind (see
/// `emit::Ring::emit`).
#[inline(always)]
pub fn emit(which: NetBudget, now: u64, generation: u32, fill: impl FnOnce(&mut NetEvent)) {
    let ring = Ring {
        ring: &NET_EVENTS,
        dropped: &NET_EVENTS_DROPPED,
    };
    let budget = Budget::Cpu {
        budgets: &NET_EVENT_BUDGET,
        index: which.index(),
        per_window: NET_EVENTS_PER_SECOND,
    };
    ring.emit(&NET_EVENT_SCRATCH, budget, now, |ev| {
        ev.generation = generation;
        ev.alert = Alert::None as u8;
        fill(ev);
    });
}
