//! The effective policy in plain words: the view an auditor signs off.

use std::fmt::Write as _;

use agent_common::{clock::op, policy::Mode as KernelMode};

use super::CompiledPolicy;

fn ops(bits: u32) -> String {
    let names = super::model::operation_names(bits);
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

fn consequence(m: u32) -> &'static str {
    if m == KernelMode::Audit.code() {
        "audit mode: it is allowed, and recorded as what enforce mode would deny"
    } else {
        "it fails with EPERM, changes nothing, and is recorded"
    }
}

pub fn explain(p: &CompiledPolicy) -> String {
    let mut s = String::new();
    let files: Vec<String> = p.sources.iter().map(|f| f.display().to_string()).collect();
    let _ = writeln!(s, "Policy \"{}\" from {}", p.name, files.join(", "));
    let _ = writeln!(s, "Content sha256 {}", p.hash);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Who may change the clock (identified by the executable file itself, its device and inode:"
    );
    let _ = writeln!(
        s,
        "a copy, a link elsewhere or a process that renames itself does not count):"
    );
    if p.rules.is_empty() {
        let _ = writeln!(s, "  nobody, by rule.");
    }
    let everything = op::ALL.iter().fold(0, |a, (b, _)| a | b);
    for r in &p.rules {
        let _ = writeln!(s, "  {} ({})", r.name, r.exe.display());
        if !r.uids.is_empty() {
            let uids: Vec<String> = r.uids.iter().map(u32::to_string).collect();
            let _ = writeln!(
                s,
                "    only when run as uid {} (anyone else running it: the default)",
                uids.join(", ")
            );
        }
        let _ = writeln!(s, "    may:     {}", ops(r.allow));
        let _ = writeln!(s, "    may not: {}", ops(everything & !r.allow));
        if r.max_step_ns != 0 {
            let d = super::model::Duration {
                nanos: r.max_step_ns,
            };
            let _ = writeln!(s, "    steps no larger than {d} either way, however it asks (this bound survives a restart of the daemon)");
        }
        if r.max_frequency != 0 {
            let _ = writeln!(
                s,
                "    frequency within ±{}ppm",
                r.max_frequency as f64 / 65536.0
            );
        }
        let _ = writeln!(s, "    anything it may not do: {}", consequence(r.mode));
    }
    if !p.inactive.is_empty() {
        let _ = writeln!(
            s,
            "Rules that match nothing on this host (their executable is not installed): {}",
            p.inactive.join(", ")
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Everyone else:");
    if p.default_allow == 0 {
        let _ = writeln!(
            s,
            "  may not change the clock at all; any attempt: {}.",
            consequence(p.default_mode)
        );
    } else {
        let _ = writeln!(
            s,
            "  may: {}; anything else: {}.",
            ops(p.default_allow),
            consequence(p.default_mode)
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Always allowed, to everyone: reading the clock and the kernel's discipline state (adjtimex with no changes).");
    s
}
