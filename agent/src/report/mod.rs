//! What the agent reports about itself: the status `timeguard status` reads back
//! (`status`), and the typed rows of the kernel's counters that status and the metrics
//! both show (`counters`).

pub mod counters;
pub mod status;
