//! `timeguard stop [--unpin]`. A running agent is asked to stop (and unpin); when none
//! answers, `--unpin` removes the pins itself. Either way the act is recorded.

use std::path::{Path, PathBuf};

use crate::{
    audit,
    bpf::pins,
    daemon::{
        self,
        control::{ask, Reply, Request},
    },
    records::{agent::Caller, AgentEvent, AgentRecord},
};

#[derive(clap::Args)]
pub struct Args {
    /// Remove enforcement from the kernel too.
    #[arg(long)]
    unpin: bool,
    /// The agent's control socket (`run --socket`).
    #[arg(long, value_name = "PATH", default_value = daemon::STATUS_SOCKET)]
    socket: PathBuf,
    /// Where the pins are, to remove them when no agent answers (`run --pin-dir`).
    #[arg(long, value_name = "DIR", default_value = pins::DEFAULT_ROOT)]
    pin_dir: PathBuf,
    /// Where the act is recorded when no agent is running to record it.
    #[arg(long, value_name = "PATH", default_value = audit::DEFAULT_PATH)]
    audit_log: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    stop(&args.socket, args.unpin, &args.pin_dir, &args.audit_log)
}

fn stop(socket: &Path, unpin: bool, pin_root: &Path, audit_log: &Path) -> anyhow::Result<()> {
    match ask(socket, Request::Stop { unpin }) {
        Ok(answer) => {
            if let Ok(Reply::Refused { error }) = serde_json::from_str(answer.trim()) {
                anyhow::bail!("the agent refused: {error}");
            }
            println!(
                "the agent is stopping{}",
                if unpin {
                    "; it removes its programs from the kernel: the clock is no longer guarded"
                } else {
                    "; its last policy stays enforced in the kernel (`timeguard stop --unpin` removes it)"
                }
            );
            Ok(())
        }
        Err(e) if unpin => {
            log::warn!("{e:#}; removing the pins directly");
            let removed = pins::unpin_all(pin_root)?;
            let count = removed.len();
            let record = AgentRecord::now(
                None,
                AgentEvent::Unpinned {
                    by: Caller::this_process(),
                    pins: removed,
                    reason: "timeguard stop --unpin with no agent running",
                },
            );
            match record.to_json() {
                Ok(record) => audit::append_once(audit_log, &record),
                Err(e) => log::warn!("the record of the unpinning could not be written: {e}"),
            }
            println!(
                "no agent was running; removed {count} pinned build(s) under {}: the clock is no longer guarded",
                pin_root.display()
            );
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "nothing stopped; the last policy stays enforced from the pins under {}",
            pin_root.display()
        ))),
    }
}
