//! Exact counters for every attempt, and detailed events that may be thinned or lost under
//! load (both counted, never silent).

use agent_common::{
    event::{thinning, ClockEvent, EventBudget},
    policy::CounterKey,
};
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};

#[map]
static CLOCK_EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

/// Per (rule, set of operations, verdict): exact, whatever happens to the events.
#[map]
static CLOCK_COUNTERS: PerCpuHashMap<CounterKey, u64> = PerCpuHashMap::pinned(8192, 0);

/// Index 0: events that did not fit in the ring buffer.
#[map]
static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// Index 0: events not sent because their process had used its budget for the window.
#[map]
static EVENTS_THINNED: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// Event budgets by process (tgid).
#[map]
static EVENT_BUDGETS: LruHashMap<u32, EventBudget> = LruHashMap::pinned(thinning::PROCESSES, 0);

/// Adds one to entry `index` of a per-CPU counter array (records lost or thinned).
#[inline(always)]
pub fn bump(counter: &PerCpuArray<u64>, index: u32) {
    if let Some(n) = counter.get_ptr_mut(index) {
        // SAFETY: a per-CPU value: no other CPU writes it.
        unsafe { *n += 1 }
    }
}

/// Whether the process may send one more event now. Budgets are shared between CPUs
/// without a lock: two CPUs may both send the last one, which only loosens the bound.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "explicit references, as in `count`"
)]
fn within_budget(tgid: u32, now_ns: u64) -> bool {
    match EVENT_BUDGETS.get_ptr_mut(&tgid) {
        // SAFETY: the value stays valid for this program run (RCU).
        Some(b) => unsafe { (*b).take(now_ns, thinning::EVENTS_PER_WINDOW) },
        None => {
            let fresh = EventBudget {
                window_start_ns: now_ns,
                sent: 1,
                _pad: 0,
            };
            let _ = EVENT_BUDGETS.insert(&tgid, &fresh, 0);
            true
        }
    }
}

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
    if !within_budget(ev.tgid, ev.boot_ns) {
        bump(&EVENTS_THINNED, 0);
    } else if CLOCK_EVENTS.output::<ClockEvent>(ev, 0).is_err() {
        bump(&EVENTS_LOST, 0);
    }
}
