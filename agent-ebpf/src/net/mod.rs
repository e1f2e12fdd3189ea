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

use crate::record::bump;
use agent_common::{
    event::EventBudget,
    net::{AddrKey, NetCounterKey, NetEvent, NetPolicy, ADDR_KEY_FIXED_BITS, MAX_LIST_ENTRIES},
    policy::{mode, verdict, SLOTS},
};
use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray, PerCpuHashMap, RingBuf},
};

/// Index 0: the slot in force (the network policy is double-buffered like the clock's).
#[map]
static NET_ACTIVE_SLOT: Array<u32> = Array::pinned(1, 0);

#[map]
static NET_POLICY: Array<NetPolicy> = Array::pinned(SLOTS, 0);

/// Address lists, by (slot, list, scope, port, prefix).
#[map]
static NET_ADDRS: LpmTrie<AddrKey, u8> = LpmTrie::pinned(
    SLOTS * agent_common::net::list::COUNT * MAX_LIST_ENTRIES as u32,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);

#[map]
static NET_COUNTERS: PerCpuHashMap<NetCounterKey, u64> = PerCpuHashMap::pinned(4096, 0);

#[map]
static NET_EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

/// Index 0: events that did not fit; index 1: events over the budget.
#[map]
static NET_EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::pinned(2, 0);

/// Index 0: where this CPU builds a record (BPF gives a program 512 bytes of stack).
#[map]
static NET_EVENT_SCRATCH: PerCpuArray<NetEvent> = PerCpuArray::pinned(1, 0);

/// This CPU's event budget for the current second: index `budget::PACKETS` for packets,
/// `budget::SOCKETS` for socket decisions, so that neither crowds out the other.
#[map]
static NET_EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(2, 0);

pub mod budget {
    pub const PACKETS: u32 = 0;
    pub const SOCKETS: u32 = 1;
}

/// Records sent in detail per CPU per second and budget; the rest are counted.
const NET_EVENTS_PER_SECOND: u32 = 100;

/// The network policy in force and its slot; None when there is none (nothing decided).
#[inline(always)]
pub fn policy_in_force() -> Option<(u32, NetPolicy)> {
    let slot = *NET_ACTIVE_SLOT.get(0)?;
    let policy = *NET_POLICY.get(slot)?;
    (policy.generation != 0).then_some((slot, policy))
}

/// Whether `addr` (and `port`, for egress) is in a list of the slot.
#[inline(always)]
pub fn listed(slot: u32, list: u32, scope: u32, port: u16, addr: [u8; 16]) -> bool {
    let key = Key::new(
        ADDR_KEY_FIXED_BITS + 128,
        AddrKey {
            slot,
            list,
            scope,
            port: port as u32,
            addr,
        },
    );
    NET_ADDRS.get(&key).is_some()
}

/// The verdict for a refusal reason (`reason::NONE`: allowed) under the policy's mode.
#[inline(always)]
pub fn verdict_for(why: u8, policy: &NetPolicy) -> u8 {
    if why == agent_common::net::reason::NONE {
        verdict::ALLOW
    } else if policy.mode == mode::AUDIT {
        verdict::AUDIT
    } else {
        verdict::DENY
    }
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "explicit references, as in record::count"
)]
pub fn count(key: NetCounterKey) {
    match NET_COUNTERS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = NET_COUNTERS.insert(&key, &1, 0);
        }
    }
}

#[inline(always)]
fn within_event_budget(which: u32, now: u64) -> bool {
    match NET_EVENT_BUDGET.get_ptr_mut(which) {
        // SAFETY: a per-CPU value.
        Some(b) => unsafe { (*b).take(now, NET_EVENTS_PER_SECOND) },
        None => false,
    }
}

/// CLOCK_BOOTTIME now.
#[inline(always)]
pub fn boot_ns() -> u64 {
    // SAFETY: a clock helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Sends one record, within `which` budget: `fill` writes the fields of its kind into this
/// CPU's scratch record (fields of other kinds keep stale values; the agent reads a
/// record's fields by its kind), then it goes to the ring.
#[inline(always)]
pub fn emit(which: u32, now: u64, generation: u32, fill: impl FnOnce(&mut NetEvent)) {
    if !within_event_budget(which, now) {
        bump(&NET_EVENTS_DROPPED, 1);
        return;
    }
    let Some(ev) = NET_EVENT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU value, written then read by this program run only.
    let ev = unsafe { &mut *ev };
    ev.boot_ns = now;
    // SAFETY: a clock helper without arguments.
    ev.tai_ns = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_tai_ns() };
    ev.generation = generation;
    ev.alert = agent_common::net::alert::NONE;
    fill(ev);
    if NET_EVENTS.output::<NetEvent>(ev, 0).is_err() {
        bump(&NET_EVENTS_DROPPED, 0);
    }
}
