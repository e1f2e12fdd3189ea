//! timeguard: guards the clock of a Linux time server.

mod events;
mod kernel;
mod loader;
mod policy;
mod run;

use std::{path::PathBuf, process::ExitCode};

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
        /// The policy file to enforce.
        #[arg(long, default_value = "/etc/timeguard/policy.yaml")]
        policy: PathBuf,
    },
    /// Say what this kernel lets timeguard do (loads and detaches the programs; needs root).
    Kernel,
    /// Validate policy files: exit 0 when all are valid, 1 otherwise.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { policy } => run::run(&policy),
        Command::Kernel => run::kernel_report(),
        Command::Check { files } => return check(&files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        match policy::load(f) {
            Ok(p) => {
                for w in &p.warnings {
                    println!("{}: warning: {w}", f.display());
                }
                println!(
                    "{}: ok (policy \"{}\", {} rules in effect)",
                    f.display(),
                    p.name,
                    p.rules.len()
                );
            }
            Err(e) => {
                ok = false;
                println!("{e:#}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
