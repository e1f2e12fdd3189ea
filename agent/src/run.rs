//! `timeguard run`: attach, enforce (or observe), record, stop cleanly.

use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use serde_json::json;
use tokio::io::unix::AsyncFd;

use crate::{
    events,
    kernel::{self, btf::Btf},
    loader::{Enforcement, Guard},
    policy::{self, CompiledPolicy},
};

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Writes one JSON record to stdout (the audit trail for journald).
fn record(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop enforcement.
    let _ = writeln!(out, "{value}").and_then(|_| out.flush());
}

/// Loads the programs with this kernel's offsets, after reporting what the kernel offers.
fn prepare(caps: &[kernel::Capability]) -> anyhow::Result<Guard> {
    for said in kernel::mount_pseudo_filesystems() {
        log::info!("{said}");
    }
    // One line per thing the kernel does not give; the rest in one line.
    let have: Vec<&str> = caps
        .iter()
        .filter(|c| c.available)
        .map(|c| c.name)
        .collect();
    log::info!("kernel {}: has {}", kernel_release(), have.join(", "));
    for cap in caps.iter().filter(|c| !c.available) {
        log::warn!("kernel: missing {}: {}", cap.name, cap.detail);
    }
    let btf = Btf::from_file(Path::new(kernel::VMLINUX_BTF)).with_context(|| {
        format!("timeguard identifies executables through the kernel's BTF ({}); this kernel needs CONFIG_DEBUG_INFO_BTF=y", kernel::VMLINUX_BTF)
    })?;
    let offsets = kernel::offsets(&btf)?;
    Guard::load(&offsets).context("loading the kernel programs (timeguard must run as root)")
}

fn report_enforcement(guard: &Guard) {
    for a in &guard.attached {
        log::info!("attached {a}");
    }
    match &guard.enforcement {
        Enforcement::Enforce => {
            log::info!(
                "enforcement: ENFORCING: clock changes not allowed by the policy fail with EPERM"
            )
        }
        Enforcement::ObserveOnly { reasons } => {
            for r in reasons {
                log::warn!("enforcement unavailable: {r}");
            }
            log::warn!(
                "enforcement: OBSERVE-ONLY: this kernel does not let timeguard block clock changes; they are recorded, not prevented (see README: kernel requirements)"
            );
        }
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown release)".into())
}

pub fn kernel_report() -> anyhow::Result<()> {
    println!("kernel {}", kernel_release());
    let caps = kernel::capabilities();
    for cap in &caps {
        println!("{cap}");
    }
    let mut guard = prepare(&caps)?;
    guard.attach()?;
    report_enforcement(&guard);
    println!("enforcement: {}", guard.enforcement.label());
    Ok(())
}

/// Loads and checks the policy, logging its warnings; errors refuse it.
fn load_policy(path: &Path) -> anyhow::Result<CompiledPolicy> {
    match policy::load(&[path.to_path_buf()], &policy::Host::default()) {
        Ok(p) => {
            for w in &p.warnings {
                log::warn!("policy: {w}");
            }
            Ok(p)
        }
        Err(problems) => {
            for d in &problems {
                log::error!("policy: {d}");
            }
            let errors = problems.iter().filter(|d| d.is_error()).count();
            anyhow::bail!(
                "the policy at {} has {errors} error(s); nothing was loaded",
                path.display()
            )
        }
    }
}

pub fn run(policy_path: &Path) -> anyhow::Result<()> {
    let policy = load_policy(policy_path)?;
    let mut guard = prepare(&kernel::capabilities())?;
    // The policy is in the maps before any program is attached: there is no unguarded instant.
    let generation = guard.install_policy(&policy)?;
    guard.attach()?;
    report_enforcement(&guard);
    for r in &policy.rules {
        log::info!(
            "rule \"{}\": {} ({}) may: {}",
            r.name,
            r.exe.display(),
            r.exe_id,
            events::operation_names(r.allow).join(", ")
        );
    }
    log::info!(
        "policy \"{}\" generation {generation} (sha256 {}) from {}: {} rules in effect",
        policy.name,
        &policy.hash[..16],
        policy_path.display(),
        policy.rules.len()
    );
    let host = hostname();
    record(json!({
        "time": events::rfc3339(std::time::SystemTime::now()),
        "host": host,
        "kind": "agent",
        "event": "started",
        "enforcement": guard.enforcement.label(),
        "policy": policy.name,
        "policy_sha256": policy.hash,
        "generation": generation,
        "attached": guard.attached,
    }));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    runtime.block_on(event_loop(&mut guard, &policy, &host))?;

    summarize(&guard, &policy)?;
    record(json!({
        "time": events::rfc3339(std::time::SystemTime::now()),
        "host": host,
        "kind": "agent",
        "event": "stopped",
        "enforcement": guard.enforcement.label(),
        "generation": guard.generation(),
    }));
    log::info!("stopped; programs detached");
    Ok(())
}

async fn event_loop(guard: &mut Guard, policy: &CompiledPolicy, host: &str) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the
    // AsyncFd owns it.
    let mut events = unsafe { AsyncFd::register(guard.take_events()?) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            ready = events.readable_mut() => {
                let mut ready = ready.context("waiting for events")?;
                let ring = ready.get_inner_mut();
                while let Some(item) = ring.next() {
                    match events::parse(&item) {
                        Some(ev) => record(events::clock_event_json(&ev, policy, host)),
                        None => log::warn!("dropped a malformed event record of {} bytes", item.len()),
                    }
                }
                ready.clear_ready();
            }
        }
    }
    Ok(())
}

fn summarize(guard: &Guard, policy: &CompiledPolicy) -> anyhow::Result<()> {
    let counters = guard.counters()?;
    if counters.is_empty() {
        log::info!(
            "no clock change attempts since start ({})",
            guard.enforcement.label()
        );
    }
    for (key, n) in counters {
        log::info!(
            "attempts: rule={} operation={} verdict={}: {n}",
            policy.rule_name(key.rule_id),
            agent_common::clock::op::name(key.operation),
            agent_common::policy::verdict::name(key.verdict as u8)
        );
    }
    let lost = guard.events_lost()?;
    if lost > 0 {
        log::warn!(
            "{lost} detailed events were lost (ring buffer full); the counters above are exact"
        );
    }
    Ok(())
}
