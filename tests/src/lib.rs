//! Helpers shared by timeguard's test programs and integration tests.

pub mod agent;
pub mod bench;
pub mod clock;
pub mod devices;
pub mod guest;
pub mod harness;
pub mod lab;
pub mod ntp;
pub mod sockets;
pub mod tamper;
