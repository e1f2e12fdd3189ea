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

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::policy::{CompiledPolicy, Diagnostic, Host};

/// Loads policy files against the host under `root`, as `check` and `explain` take them.
/// A valid policy goes to `valid`; a policy with problems has each printed, then whatever
/// `invalid` says about them. Exit 0 when valid, 1 if not.
fn with_policy(
    files: &[PathBuf],
    root: &Path,
    valid: impl FnOnce(&CompiledPolicy),
    invalid: impl FnOnce(&[Diagnostic]),
) -> ExitCode {
    let host = Host {
        root: root.to_path_buf(),
    };
    match crate::policy::load(files, &host) {
        Ok(p) => {
            valid(&p);
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for d in &problems {
                println!("{d}");
            }
            invalid(&problems);
            ExitCode::from(1)
        }
    }
}
