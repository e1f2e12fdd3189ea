//! `timeguard check`: prints each problem as `file:line:col: severity: message`; exit 0
//! when valid, 1 if not.

use std::process::ExitCode;

pub type Args = super::PolicyArgs;

pub fn run(args: Args) -> ExitCode {
    super::with_policy(
        &args,
        |p| {
            for w in &p.warnings {
                println!("{w}");
            }
            println!(
                "ok: policy \"{}\" ({} rules in effect, {} matching nothing here)",
                p.name,
                p.rules.len(),
                p.inactive.len()
            );
        },
        |problems| {
            let errors = problems.iter().filter(|d| d.is_error()).count();
            println!("{errors} error(s): the policy is not valid");
        },
    )
}
