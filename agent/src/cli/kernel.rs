//! `timeguard kernel`: what this kernel lets timeguard do.

pub fn run() -> anyhow::Result<()> {
    crate::daemon::kernel_report()
}
