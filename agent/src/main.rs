//! timeguard: guards the clock of a Linux time server.

use timeguard_agent::{audit, bpf::pins, control, policy, run};

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "timeguard",
    version,
    about = "Guards the clock of a Linux time server with BPF LSM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the policy, attach the kernel programs and record every attempt to change the clock.
    Run {
        /// The policy to enforce: a file, or a directory of *.yaml files taken together.
        #[arg(long, default_value = "/etc/timeguard")]
        policy: PathBuf,
        /// Where `timeguard status` reaches the agent (root only).
        #[arg(long, default_value = run::STATUS_SOCKET)]
        status_socket: PathBuf,
        /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9817).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// The audit trail: one JSON line per record, also on stdout. `-`: stdout only.
        #[arg(long, value_name = "PATH", default_value = audit::DEFAULT_PATH)]
        audit_log: PathBuf,
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
    },
    /// Stop the running agent. Its last policy stays enforced in the kernel unless
    /// `--unpin` is given: then the programs are removed and the clock is no longer guarded.
    /// With no agent running, `--unpin` removes what a dead agent left pinned. Recorded.
    Stop {
        /// Remove enforcement from the kernel too.
        #[arg(long)]
        unpin: bool,
        #[arg(long, default_value = run::STATUS_SOCKET)]
        socket: PathBuf,
        #[arg(long, value_name = "DIR", default_value = pins::DEFAULT_ROOT)]
        pin_dir: PathBuf,
        /// Where the act is recorded when no agent is running to record it.
        #[arg(long, value_name = "PATH", default_value = audit::DEFAULT_PATH)]
        audit_log: PathBuf,
    },
    /// Change the policy the way self-protection allows: check FILE, then write it into the
    /// policy (the running agent reloads it). Direct edits are refused while
    /// selfProtection enforces.
    Apply {
        file: PathBuf,
        /// The policy the agent runs with: a file, or a directory of *.yaml files.
        #[arg(long, default_value = "/etc/timeguard")]
        policy: PathBuf,
    },
    /// Write the man page (roff) or a shell's completions to standard output (packaging).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
    },
    /// Print the audit trail in a person's words.
    Events {
        #[arg(long, default_value = audit::DEFAULT_PATH)]
        file: PathBuf,
        /// Keep printing records as they are written.
        #[arg(long, short)]
        follow: bool,
    },
    /// Ask the running agent what it enforces: programs, policy generation and hash,
    /// reloads, and the exact counters since start.
    Status {
        #[arg(long, default_value = run::STATUS_SOCKET)]
        socket: PathBuf,
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Say what this kernel lets timeguard do (loads and detaches the programs; needs root).
    Kernel,
    /// Validate policy files: exit 0 when all are valid, 1 otherwise.
    Check {
        /// Policy files or directories, taken together as one policy.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Check executables and enabled time daemons under this root (an image) instead of /.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Print the effective policy in plain words: who may change the clock, how, and what
    /// everyone else gets.
    Explain {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Generated {
    Man,
    Bash,
    Zsh,
    Fish,
}

/// The man page or completions for `timeguard`, from the command line definition itself.
fn generate(what: Generated) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Generated::Man => {
            clap_mangen::Man::new(cmd).section("8").render(&mut out)?;
            return Ok(());
        }
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "timeguard", &mut out);
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            policy,
            status_socket,
            metrics_addr,
            audit_log,
            audit_log_max_mib,
            audit_log_keep,
            network_cgroup,
            pin_dir,
        } => run::run(&run::Options {
            policy,
            status_socket,
            metrics_addr,
            audit_log: (audit_log.as_os_str() != "-").then_some(audit_log),
            audit_rotation: audit::Rotation {
                max_bytes: audit_log_max_mib * 1024 * 1024,
                keep: audit_log_keep,
            },
            network_cgroup,
            pin_root: pin_dir,
        }),
        Command::Stop {
            unpin,
            socket,
            pin_dir,
            audit_log,
        } => control::stop(&socket, unpin, &pin_dir, &audit_log),
        Command::Apply { file, policy } => control::apply(&file, &policy),
        Command::Generate { what } => generate(what),
        Command::Events { file, follow } => audit::print_events(&file, follow),
        Command::Status { socket, json } => run::status(&socket, json),
        Command::Kernel => run::kernel_report(),
        Command::Check { files, root } => return check(&files, &root),
        Command::Explain { files, root } => return explain(&files, &root),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints each problem as `file:line:col: severity: message`; exit 0 when valid, 1 if not.
fn check(files: &[PathBuf], root: &Path) -> ExitCode {
    match policy::load(
        files,
        &policy::Host {
            root: root.to_path_buf(),
        },
    ) {
        Ok(p) => {
            for w in &p.warnings {
                println!("{w}");
            }
            println!(
                "ok: policy \"{}\" ({} rules in effect, {} matching nothing here)",
                p.name,
                p.rules.len(),
                p.inactive.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for d in &problems {
                println!("{d}");
            }
            let errors = problems.iter().filter(|d| d.is_error()).count();
            println!("{errors} error(s): the policy is not valid");
            ExitCode::from(1)
        }
    }
}

fn explain(files: &[PathBuf], root: &Path) -> ExitCode {
    match policy::load(
        files,
        &policy::Host {
            root: root.to_path_buf(),
        },
    ) {
        Ok(p) => {
            print!("{}", policy::explain::explain(&p));
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for d in &problems {
                println!("{d}");
            }
            ExitCode::from(1)
        }
    }
}
