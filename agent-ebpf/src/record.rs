//! Exact counters for every attempt, and detailed events that may be lost under load
//! (a loss is counted, never silent).

use agent_common::{event::ClockEvent, policy::CounterKey};
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
};

#[map]
static CLOCK_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per (rule, set of operations, verdict): exact, whatever happens to the events.
#[map]
static CLOCK_COUNTERS: PerCpuHashMap<CounterKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);

/// Index 0: events that did not fit in the ring buffer.
#[map]
static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
// Keep the explicit references: passing the value by value (clippy's suggestion) made the
// BPF build's insert fail silently, and the counters stayed empty (seen on 6.18).
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by-value arguments broke the per-CPU insert in the BPF build"
)]
pub fn count(rule_id: u32, operations: u32, verdict: u8) {
    let key = CounterKey {
        rule_id,
        operation: operations,
        verdict: verdict as u32,
        _pad: 0,
    };
    match CLOCK_COUNTERS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value: no other CPU writes it.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = CLOCK_COUNTERS.insert(&key, &1, 0);
        }
    }
}

#[inline(always)]
pub fn emit(ev: &ClockEvent) {
    if CLOCK_EVENTS.output::<ClockEvent>(ev, 0).is_err() {
        if let Some(n) = EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: a per-CPU value: no other CPU writes it.
            unsafe { *n += 1 }
        }
    }
}
