//! Arbitrary bytes as a policy file: parsing, checking and compiling must never panic, hang
//! or grow without bound, and whatever is refused is refused with a located diagnostic.
#![no_main]

use std::path::PathBuf;

use timeguard_agent::policy::{load_sources, Host};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // A root with nothing installed: executables are looked up, and not found.
    let host = Host { root: PathBuf::from("/nonexistent-timeguard-fuzz-root") };
    if let Err(problems) = load_sources(vec![(PathBuf::from("fuzz.yaml"), data.to_vec())], &host) {
        assert!(!problems.is_empty(), "a refused policy must say why");
        for p in problems {
            assert!(p.line >= 1 && p.column >= 1, "diagnostic without a position: {p}");
        }
    }
});
