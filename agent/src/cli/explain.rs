//! `timeguard explain`: the effective policy in plain words.

use std::process::ExitCode;

pub type Args = super::PolicyArgs;

pub fn run(args: Args) -> ExitCode {
    super::with_policy(
        &args,
        |p| print!("{}", crate::policy::explain::explain(p)),
        |_| {},
    )
}
