//! timeguard: guards the clock of a Linux time server.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use timeguard_agent::cli;

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
    Run(cli::run::Args),
    /// Stop the running agent. Its last policy stays enforced in the kernel unless
    /// `--unpin` is given: then the programs are removed and the clock is no longer guarded.
    /// With no agent running, `--unpin` removes what a dead agent left pinned. Recorded.
    Stop(cli::stop::Args),
    /// Change the policy the way self-protection allows: check the policy as it will be with
    /// FILE in it, write FILE into place, and wait for the running agent's verdict (exit
    /// status 0 to 3, below). Direct edits are refused while selfProtection enforces.
    Apply(cli::apply::Args),
    /// Write the man page (roff) or a shell's completions to standard output (packaging).
    #[command(hide = true)]
    Generate(cli::generate::Args),
    /// Print the audit trail in a person's words.
    Events(cli::events::Args),
    /// Ask the running agent what it enforces: programs, policy generation and hash,
    /// reloads, and the exact counters since start.
    Status(cli::status::Args),
    /// Say what this kernel lets timeguard do (loads and detaches the programs; needs root).
    /// Exit 0: the clock is enforced whole; 1: the programs cannot be loaded here; 3: the
    /// clock is enforced, part of the guard is missing (a hook, self-protection); 4:
    /// observe-only (the kernel refuses BPF LSM: changes recorded, not prevented). 2 is a
    /// usage error.
    Kernel,
    /// Validate policy files: exit 0 when all are valid, 1 otherwise.
    Check(cli::check::Args),
    /// Print the effective policy in plain words: who may change the clock, how, and what
    /// everyone else gets.
    Explain(cli::explain::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    timeguard_agent::logging::init(match &cli.command {
        Command::Run(args) => args.log_format,
        _ => timeguard_agent::logging::Format::Text,
    });
    let result = match cli.command {
        Command::Run(args) => return cli::run::run(args),
        Command::Stop(args) => cli::stop::run(args),
        Command::Apply(args) => return cli::apply::run(args),
        Command::Generate(args) => cli::generate::run(args, Cli::command()),
        Command::Events(args) => cli::events::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Kernel => return cli::kernel::run(),
        Command::Check(args) => return cli::check::run(args),
        Command::Explain(args) => return cli::explain::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
