//! The command line, one file per subcommand: its flags (with their defaults and help) and
//! what it does. `main.rs` only parses and dispatches.

pub mod apply;
pub mod check;
pub mod events;
pub mod explain;
pub mod generate;
pub mod kernel;
pub mod run;
pub mod status;
pub mod stop;

use std::path::{Path, PathBuf};

/// Loads policy files against the host under `root`, as `check` and `explain` take them.
fn load_policy(
    files: &[PathBuf],
    root: &Path,
) -> Result<crate::policy::CompiledPolicy, Vec<crate::policy::Diagnostic>> {
    crate::policy::load(
        files,
        &crate::policy::Host {
            root: root.to_path_buf(),
        },
    )
}
