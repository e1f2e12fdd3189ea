//! timeguard's kernel programs: look up, decide, count, emit.
//!
//! - `clock`: the BPF LSM hooks that decide every change of the system clock, and the
//!   tracepoints that only observe when the kernel refuses LSM programs.
//! - `devices`: PTP hardware clocks, decided when opened for writing and on their ioctls.
//! - `net`: NTP packets arriving at this host's sockets, by the network policy.
//! - `caller`: who is asking (executable identity, ids, syscall context), and the caller
//!   block of every record.
//! - `policy`: the compiled policy maps and the lookup of the rule in force.
//! - `emit`: the one way out: exact counters, and records within a budget on a ring.
//! - `tamper`: the guard guarding itself (signals, ptrace, its files, its BPF objects).
//! - `identity`: the executable identity decisions rest on, kept from being rewritten.
#![no_std]
#![no_main]

mod caller;
mod clock;
mod devices;
mod emit;
mod identity;
mod net;
mod policy;
mod tamper;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists for the compiler.
    loop {}
}
