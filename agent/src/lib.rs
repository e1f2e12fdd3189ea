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
//! - `bpf`: the embedded object, the one table of programs and the one attach-and-pin
//!   path, the pins in bpffs; `kernel`: the kernel's BTF and capabilities; `loader`: the
//!   loaded whole (`Guard`), which hands each concern to its sensor.
//! - `sensors`: one module per concern (clock, devices, network, self-protection), each
//!   owning its programs, maps, policy installation, counters and records.
//! - `records`: the audit trail's record types (agent, clock, `Who`); `events`: what
//!   every kernel record needs (clocks, executable paths, the copy out of the ring).
//! - `report`: the status type `timeguard status` reads back, the Prometheus metrics of a
//!   typed snapshot, and the kernel's counters as typed rows for both.
//! - `audit`: the audit trail file (rotation, batching) and `timeguard events`;
//!   `logging`: the log (text, JSON, or journald's native protocol with priorities);
//!   `files`: files replaced whole, never seen half-written.

pub mod audit;
pub mod bpf;
pub mod cli;
pub mod daemon;
pub mod events;
pub mod files;
pub mod kernel;
pub mod loader;
pub mod logging;
pub mod policy;
pub mod records;
pub mod report;
pub mod sensors;
