//! `timeguard status`: asks the running agent and prints what it says.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    daemon::{
        self,
        control::{ask, Request},
    },
    report::status::Status,
};

#[derive(clap::Args)]
pub struct Args {
    /// The agent's control socket (`run --socket`).
    #[arg(long, value_name = "PATH", default_value = daemon::STATUS_SOCKET)]
    socket: PathBuf,
    /// Print the agent's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = ask(&args.socket, Request::Status)?;
    let status: Status =
        serde_json::from_str(&text).context("the agent's status is not a status")?;
    if args.json {
        // As a JSON value: keys sorted, as it always printed.
        println!("{}", serde_json::to_value(&status)?);
        return Ok(());
    }
    status
        .print(&mut std::io::stdout().lock())
        .context("printing the status")
}
