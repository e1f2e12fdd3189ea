//! The timeguard agent as a library: the binary (`main.rs`) parses the command line and
//! hands it to `cli`; the fuzz target and tests reach the policy parser through it.
//!
//! A map of the crate:
//! - `cli`: one file per subcommand (run, status, stop, apply, check, explain, events,
//!   kernel, generate): its flags and what it does.
//! - `daemon`: `timeguard run`: the agent's state, the event loop, reloads, the control
//!   socket, status and metrics of the running agent.
//! - `policy`: the policy files: parsing, checking against the host, compiling for the
//!   kernel, explaining.
//! - `loader`, `network`, `tamper`, `pins`, `kernel`: the kernel side seen from here
//!   (`Guard`): loading, attaching and pinning the programs, their maps and counters, the
//!   kernel's BTF and capabilities.
//! - `records`: the audit trail's record types (agent, clock, `Who`); `events`: what
//!   every kernel record needs (clocks, executable paths, the copy out of the ring).
//! - `report`: the status type `timeguard status` reads back, the Prometheus metrics of a
//!   typed snapshot, and the kernel's counters as typed rows for both.
//! - `audit`: the audit trail file (rotation, batching) and `timeguard events`.

pub mod audit;
pub mod cli;
pub mod daemon;
pub mod events;
pub mod kernel;
pub mod loader;
pub mod network;
pub mod pins;
pub mod policy;
pub mod records;
pub mod report;
pub mod tamper;
