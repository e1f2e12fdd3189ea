//! `timeguard explain`: the effective policy in plain words.

use std::{path::PathBuf, process::ExitCode};

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

pub fn run(args: Args) -> ExitCode {
    match super::load_policy(&args.files, &args.root) {
        Ok(p) => {
            print!("{}", crate::policy::explain::explain(&p));
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
