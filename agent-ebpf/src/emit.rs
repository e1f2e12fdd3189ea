//! The one way out of every program: exact counters for every attempt, and detailed
//! records that may be thinned (over their budget) or lost (ring buffer full), both counted
//! in the ring's `maps::Dropped` counters, never silent.

use agent_common::{
    event::EventBudget,
    maps::{Dropped, ONLY},
    net::NetEvent,
    tamper::TamperEvent,
};
use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};

/// CLOCK_BOOTTIME now.
#[inline(always)]
pub fn boot_ns() -> u64 {
    // SAFETY: a clock helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Adds one to an exact per-CPU counter.
#[inline(always)]
// Keep the explicit references: passing the value by value (clippy's suggestion) made the
// BPF build's insert fail silently, and the counters stayed empty (seen on 6.18).
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by-value arguments broke the per-CPU insert in the BPF build"
)]
pub fn count<K>(counters: &PerCpuHashMap<K, u64>, key: &K) {
    match counters.get_ptr_mut(key) {
        // SAFETY: a per-CPU value: no other CPU writes it.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = counters.insert(key, &1, 0);
        }
    }
}

/// Adds one to a ring's dropped-record counter.
#[inline(always)]
fn dropped(counter: &PerCpuArray<u64>, why: Dropped) {
    if let Some(n) = counter.get_ptr_mut(why.index()) {
        // SAFETY: a per-CPU value: no other CPU writes it.
        unsafe { *n += 1 }
    }
}

/// Whose budget a record is taken from: `per_window` records per `thinning::WINDOW_NS`.
pub enum Budget<'a> {
    /// Per process (the clock's): one flooding process cannot crowd out anyone else's.
    /// Shared between CPUs without a lock: two CPUs may both send the last one, which only
    /// loosens the bound.
    Process {
        budgets: &'a LruHashMap<u32, EventBudget>,
        tgid: u32,
        per_window: u32,
    },
    /// Per CPU, one entry of an array (packets and sockets, tamper attempts).
    Cpu {
        budgets: &'a PerCpuArray<EventBudget>,
        index: u32,
        per_window: u32,
    },
}

impl Budget<'_> {
    /// Takes one record from the budget at `now_ns`.
    #[inline(always)]
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "explicit references, as in `count`"
    )]
    fn take(self, now_ns: u64) -> bool {
        match self {
            Budget::Process {
                budgets,
                tgid,
                per_window,
            } => match budgets.get_ptr_mut(&tgid) {
                // SAFETY: the value stays valid for this program run (RCU).
                Some(b) => unsafe { (*b).take(now_ns, per_window) },
                None => {
                    let fresh = EventBudget {
                        window_start_ns: now_ns,
                        sent: 1,
                        _pad: 0,
                    };
                    let _ = budgets.insert(&tgid, &fresh, 0);
                    true
                }
            },
            Budget::Cpu {
                budgets,
                index,
                per_window,
            } => match budgets.get_ptr_mut(index) {
                // SAFETY: a per-CPU value.
                Some(b) => unsafe { (*b).take(now_ns, per_window) },
                None => false,
            },
        }
    }
}

/// A record built in a scratch entry: stamped with the times of the decision when sent.
pub trait Record {
    fn stamp(&mut self, boot_ns: u64, tai_ns: u64);
}

macro_rules! stamped {
    ($($t:ty),*) => {
        $(impl Record for $t {
            #[inline(always)]
            fn stamp(&mut self, boot_ns: u64, tai_ns: u64) {
                self.boot_ns = boot_ns;
                self.tai_ns = tai_ns;
            }
        })*
    };
}
stamped!(NetEvent, TamperEvent);

/// Where one kind of record goes: its ring buffer and its dropped-record counters.
pub struct Ring<'a> {
    pub ring: &'a RingBuf,
    pub dropped: &'a PerCpuArray<u64>,
}

impl Ring<'_> {
    /// Takes one record from `budget` at `now`; one over it is counted as thinned.
    #[inline(always)]
    fn within(&self, budget: Budget, now: u64) -> bool {
        let ok = budget.take(now);
        if !ok {
            dropped(self.dropped, Dropped::Thinned);
        }
        ok
    }

    /// Puts a record on the ring; one that does not fit is counted as lost.
    #[inline(always)]
    fn submit<T>(&self, ev: &T) {
        if self.ring.output::<T>(ev, 0).is_err() {
            dropped(self.dropped, Dropped::Lost);
        }
    }

    /// Sends a record already built (and stamped), within `budget`. The clock builds its
    /// records on the stack: its `capable` program inlines this in four places, and a
    /// scratch lookup in each took it past the 6.1 verifier's budget.
    #[inline(always)]
    pub fn send<T>(&self, budget: Budget, now: u64, ev: &T) {
        if self.within(budget, now) {
            self.submit(ev);
        }
    }

    /// Sends one record, decided at `now` (CLOCK_BOOTTIME), within `budget`, built in this
    /// CPU's `scratch` entry (BPF gives a program 512 bytes of stack): `fill` writes the
    /// fields of its kind (fields it does not write keep stale values of earlier records;
    /// the agent reads a record's fields by its kind), then it goes to the ring.
    #[inline(always)]
    pub fn emit<T: Record>(
        &self,
        scratch: &PerCpuArray<T>,
        budget: Budget,
        now: u64,
        fill: impl FnOnce(&mut T),
    ) {
        if !self.within(budget, now) {
            return;
        }
        let Some(ev) = scratch.get_ptr_mut(ONLY) else {
            return;
        };
        // SAFETY: a per-CPU value, written then read by this program run only.
        let ev = unsafe { &mut *ev };
        ev.stamp(now, tai_ns());
        fill(ev);
        self.submit(ev);
    }
}

/// CLOCK_TAI now: the wall clock of the decision, whatever steps come after.
#[inline(always)]
pub fn tai_ns() -> u64 {
    // SAFETY: a clock helper without arguments.
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_tai_ns() }
}
