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

use std::{path::PathBuf, process::ExitCode};

use crate::policy::{CompiledPolicy, Diagnostic, Host};

/// The policy `check` and `explain` read, and the host it is checked against.
#[derive(clap::Args)]
pub struct PolicyArgs {
    /// Policy files or directories, taken together as one policy.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Check executables and enabled time daemons under this root (an image) instead of /.
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

/// Loads the policy against the host under its root. A valid policy goes to `valid`; a
/// policy with problems has each printed, then whatever `invalid` says about them. Exit 0
/// when valid, 1 if not.
fn with_policy(
    args: &PolicyArgs,
    valid: impl FnOnce(&CompiledPolicy),
    invalid: impl FnOnce(&[Diagnostic]),
) -> ExitCode {
    let host = Host {
        root: args.root.clone(),
    };
    match crate::policy::load(&args.files, &host) {
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
