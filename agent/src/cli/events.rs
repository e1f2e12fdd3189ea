//! `timeguard events`: the audit trail in a person's words.

use std::path::PathBuf;

use crate::audit;

#[derive(clap::Args)]
pub struct Args {
    /// The audit trail to read (`run --audit-log`). (`--file`: its old name, kept for a
    /// release.)
    #[arg(long, alias = "file", value_name = "PATH", default_value = audit::DEFAULT_PATH)]
    audit_log: PathBuf,
    /// Keep printing records as they are written.
    #[arg(long, short)]
    follow: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    audit::print_events(&args.audit_log, args.follow)
}
