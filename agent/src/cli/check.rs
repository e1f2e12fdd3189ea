//! `timeguard check`: prints each problem as `file:line:col: severity: message`; exit 0
//! when valid, 1 if not.

use std::{path::PathBuf, process::ExitCode};

#[derive(clap::Args)]
pub struct Args {
    /// Policy files or directories, taken together as one policy.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Check executables and enabled time daemons under this root (an image) instead of /.
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

pub fn run(args: Args) -> ExitCode {
    super::with_policy(
        &args.files,
        &args.root,
        |p| {
            for w in &p.warnings {
                println!("{w}");
            }
            println!(
                "ok: policy \"{}\" ({} rules in effect, {} matching nothing here)",
                p.name,
                p.rules.len(),
                p.inactive.len()
            );
        },
        |problems| {
            let errors = problems.iter().filter(|d| d.is_error()).count();
            println!("{errors} error(s): the policy is not valid");
        },
    )
}
