//! Types shared by the kernel programs (`agent-ebpf`) and the agent, defined once.
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of pointers, so the same bytes mean the
//! same thing on both sides of a map or ring buffer. Decision logic that both sides need lives
//! here as plain functions, which is also what lets the host unit-test it.
#![no_std]

pub mod clock;
pub mod event;
pub mod kernel;
pub mod net;
pub mod policy;
pub mod ptp;
pub mod tamper;

/// Implements `aya::Pod` for the userspace side (the kernel side needs no marker).
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: plain `#[repr(C)]` data with explicit padding fields and no pointers.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use pod;
