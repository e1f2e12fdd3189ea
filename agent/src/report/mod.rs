//! What the agent reports about itself: the status `timeguard status` reads back
//! (`status`), the Prometheus metrics of a typed snapshot (`metrics`, served by `http`),
//! and the typed rows of the kernel's counters that status and the metrics both show
//! (`counters`).

pub mod counters;
pub mod http;
pub mod metrics;
pub mod status;
