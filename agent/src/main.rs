//! timeguard: guards the clock of a Linux time server.

use timeguard_agent::{policy, run};

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            policy,
            status_socket,
        } => run::run(&policy, &status_socket),
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
