//! The timeguard agent as a library: the binary (`main.rs`) is its command line, and the
//! fuzz target and tests reach the policy parser through it.

pub mod audit;
pub mod bpf;
pub mod control;
pub mod events;
pub mod kernel;
pub mod loader;
pub mod metrics;
pub mod policy;
pub mod run;
pub mod sensors;
