//! `timeguard explain`: the effective policy in plain words.

use std::{path::PathBuf, process::ExitCode};

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

pub fn run(args: Args) -> ExitCode {
    super::with_policy(
        &args.files,
        &args.root,
        |p| print!("{}", crate::policy::explain::explain(p)),
        |_| {},
    )
}
