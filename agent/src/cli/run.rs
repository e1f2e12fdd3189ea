//! `timeguard run`.

use std::{path::PathBuf, process::ExitCode};

use crate::{audit, bpf::pins, daemon, logging};

#[derive(clap::Args)]
pub struct Args {
    /// The policy to enforce: a file, or a directory of *.yaml files taken together.
    #[arg(long, default_value = "/etc/timeguard")]
    policy: PathBuf,
    /// The agent's control socket, where `timeguard status`, `stop` and `apply` reach it
    /// (root only). (`--status-socket`: its old name, kept for a release.)
    #[arg(long, alias = "status-socket", value_name = "PATH", default_value = daemon::STATUS_SOCKET)]
    socket: PathBuf,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9817).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// The audit trail: one JSON line per record, in this file only (the log is on
    /// stderr). `-`: on stdout instead.
    #[arg(long, value_name = "PATH", default_value = audit::DEFAULT_PATH)]
    audit_log: PathBuf,
    /// Every record on stdout as well as in the file (under systemd: in the journal too,
    /// beside the log).
    #[arg(long)]
    audit_stdout: bool,
    /// The log on stderr: text, or one JSON object per line (level, target, message,
    /// timestamp). Under systemd, text goes to the journal with priorities and fields.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t)]
    pub log_format: logging::Format,
    /// Rotate the audit trail when it reaches this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    audit_log_max_mib: u64,
    /// Rotated files kept (audit.jsonl.1 … .N).
    #[arg(long, value_name = "N", default_value_t = 5)]
    audit_log_keep: u32,
    /// The cgroup v2 directory whose sockets the network guard watches (default: the
    /// hierarchy's root, every socket of the host).
    #[arg(long, value_name = "DIR")]
    network_cgroup: Option<PathBuf>,
    /// Where the kernel programs' maps and links are pinned (bpffs): enforcement stays
    /// when the agent stops, and a restarted agent takes it over.
    #[arg(long, value_name = "DIR", default_value = pins::DEFAULT_ROOT)]
    pin_dir: PathBuf,
    /// Where the agent keeps the last policy it accepted: enforced at a start whose policy
    /// fails validation (with none, the built-in default is).
    #[arg(long, value_name = "DIR", default_value = daemon::last_known_good::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// Exit 0 when stopped (enforcement stays pinned), `daemon::UNPINNED_EXIT` (3) when stopped
/// by `timeguard stop --unpin`, 1 when it cannot start.
pub fn run(args: Args) -> ExitCode {
    let ended = daemon::run(&daemon::Options {
        policy: args.policy,
        status_socket: args.socket,
        metrics_addr: args.metrics_addr,
        audit_log: audit::Sinks {
            stdout: args.audit_stdout,
            file: (args.audit_log.as_os_str() != "-").then_some(args.audit_log),
        },
        audit_rotation: audit::Rotation {
            max_bytes: args.audit_log_max_mib * 1024 * 1024,
            keep: args.audit_log_keep,
        },
        network_cgroup: args.network_cgroup,
        pin_root: args.pin_dir,
        state_dir: args.state_dir,
    });
    match ended {
        Ok(daemon::Ended::Stopped) => ExitCode::SUCCESS,
        Ok(daemon::Ended::Unpinned) => ExitCode::from(daemon::UNPINNED_EXIT),
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
