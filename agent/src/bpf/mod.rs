//! The kernel programs as the agent holds them: the embedded object and its maps
//! (`object`), the one table of programs (`program`), the one path that attaches and pins
//! each of them (`attach`), the maps' common reads (`maps`), and the pins that keep
//! enforcement when no agent runs (`pins`).
//!
//! Nothing here knows what a program is for: the sensors (`crate::sensors`) do.

pub mod attach;
pub mod maps;
pub mod object;
pub mod pins;
pub mod program;
