//! Runs inside the benchmark guest as a child of /init (`cargo xtask bench`): measures
//! timeguard beside no guard, auditd and bpftrace, and prints one `TG-BENCH {json}` line
//! per figure for the host to read off the console (`TG-BENCH-FAILED why` if it cannot).

mod bench;
mod guards;

use timeguard_tests::guest::{dump, AGENT_LOG};

fn main() {
    if let Err(e) = bench::main() {
        println!("TG-BENCH-FAILED {e}");
        dump(AGENT_LOG, usize::MAX);
    }
}
