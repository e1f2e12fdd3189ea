//! `timeguard kernel`: what this kernel lets timeguard do, as text and as the exit code.

use std::process::ExitCode;

pub fn run() -> ExitCode {
    ExitCode::from(crate::daemon::kernel_report().exit_code())
}
