//! `timeguard events`: the audit trail in a person's words.

use std::path::PathBuf;

use crate::audit;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = audit::DEFAULT_PATH)]
    file: PathBuf,
    /// Keep printing records as they are written.
    #[arg(long, short)]
    follow: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    audit::print_events(&args.file, args.follow)
}
