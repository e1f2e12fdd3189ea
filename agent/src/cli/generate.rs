//! `timeguard generate`: the man page or a shell's completions, from the command line
//! definition itself (for packaging).

#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    what: Generated,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Generated {
    Man,
    Bash,
    Zsh,
    Fish,
}

/// Writes what was asked for about `cmd` (the whole command line) to standard output.
pub fn run(args: Args, mut cmd: clap::Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let shell = match args.what {
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
