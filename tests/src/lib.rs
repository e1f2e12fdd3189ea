//! Helpers shared by timeguard's test programs and integration tests.

pub mod bench;
pub mod clock;
pub mod devices;
pub mod harness;
pub mod ntp;
