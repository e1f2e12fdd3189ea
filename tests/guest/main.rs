//! The guest's tests: every scenario against the real kernel of a guest that xtask boots
//! (`cargo xtask test --vm-only [--kernel 6.12] [FILTER]`), one file per area. Each test
//! starts its own agent on its own policy and tears it down (see `GuestAgent`), so that any
//! one runs alone (`tg.filter=clock::` on the kernel command line) or in any order. /init
//! runs this binary with `--test-threads=1`: the tests share one clock and one kernel.
//!
//! `test = false` in Cargo.toml: the host's `cargo test` never runs it (it steps the clock).

mod clock;
mod daemons;
mod devices;
mod fallback;
mod identity;
mod lifecycle;
mod limits;
mod network;
mod self_protection;
mod startup;

use timeguard_tests::guest::{GuestAgent, Outcome};

/// What the areas' tests use.
mod prelude {
    pub use std::{
        fs,
        process::{Command, Stdio},
        thread::sleep,
        time::{Duration, Instant},
    };

    pub use serde_json::Value;
    pub use timeguard_tests::{
        clock::{self, realtime_ns},
        guest::*,
        harness::{counted, sh, Run},
    };

    pub(crate) use crate::{policies, report, scenario, scenario_with};
}

/// The policies the tests start their agent with, or reload to.
mod policies {
    /// The guest's policy: the test program, util-linux's hwclock and chronyd may change the
    /// clock, within limits; nobody else may.
    pub const GUEST: &str = include_str!("policies/guest.yaml");
    pub const AUDIT: &str = include_str!("policies/audit.yaml");
    pub const USERS_CHRONY_ONLY: &str = include_str!("policies/users-chrony-only.yaml");
    pub const USERS_ROOT: &str = include_str!("policies/users-root.yaml");
    pub const NETWORK: &str = include_str!("policies/network.yaml");
    pub const SELF_PROTECTION: &str = include_str!("policies/self-protection.yaml");
    pub const MAY_STEP: &str = include_str!("policies/may-step.yaml");
    pub const NO_STEP: &str = include_str!("policies/no-step.yaml");
    pub const UNIT: &str = include_str!("policies/unit.yaml");
    pub const NTP_SERVERS: &str = include_str!("policies/ntp-servers.yaml");
    /// The bundled policies, as the package installs them: the real daemons' tests run on
    /// these.
    pub const CHRONY: &str = include_str!("../../policies/chrony.yaml");
    pub const NTPSEC: &str = include_str!("../../policies/ntpsec.yaml");
    pub const TIMESYNCD: &str = include_str!("../../policies/systemd-timesyncd.yaml");
    pub const LINUXPTP: &str = include_str!("../../policies/linuxptp.yaml");
    /// A policy with a mistake, as an edit gone wrong leaves it.
    pub const BROKEN: &str = include_str!("policies/broken.yaml");
}

/// Runs one scenario against an agent of its own on the guest policy: what it saw is
/// printed (shown by `--nocapture`, as the demo runs it), what went wrong fails the test.
fn scenario(play: impl FnOnce(&mut GuestAgent) -> Outcome) {
    scenario_with(&[], play)
}

/// The same, with more arguments for `timeguard run`.
fn scenario_with(args: &[&str], play: impl FnOnce(&mut GuestAgent) -> Outcome) {
    let mut agent = GuestAgent::start_with(policies::GUEST, args)
        .unwrap_or_else(|e| panic!("the agent did not start: {e}"));
    report(play(&mut agent));
}

/// What a scenario saw, printed; what went wrong fails the test.
fn report(outcome: Outcome) {
    match outcome {
        Ok(detail) => println!("{detail}"),
        Err(detail) => panic!("{detail}"),
    }
}
