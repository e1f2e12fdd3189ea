//! `timeguard run`: attach, enforce (or observe), record, reload without a gap, answer
//! `timeguard status`, stop cleanly.
//!
//! - `agent`: the running agent's state, and installing what the kernel enforces;
//! - `event_loop`: waits for signals, the watch tick, clients and records, and dispatches;
//! - `dispatch`: what each kernel record does (written to the trail, counted);
//! - `reload`: fingerprints, following changes, reload or reject, generations;
//! - `control`: the control socket and its protocol;
//! - `status`: the status served, the metrics of a scrape, the summary at stop;
//! - `rule_names`: the rule names behind the kernel's counters, kept for a restart;
//! - `kernel`: loading on this kernel and saying what is enforced;
//! - `notify`: telling systemd the agent is ready, what it enforces, that it is alive.

mod agent;
pub mod control;
mod dispatch;
mod event_loop;
mod kernel;
pub mod last_known_good;
mod notify;
mod reload;
pub mod rule_names;
mod status;

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    audit::{self, AuditTrail},
    events::ExePaths,
    records::AgentEvent,
    report::metrics::Metrics,
};

use agent::{Agent, Health, NetworkState, Protection, Trail};
pub use kernel::kernel_report;
use reload::{Generations, Reloading};
use rule_names::RuleNames;

/// Where `timeguard status` finds the running agent.
pub const STATUS_SOCKET: &str = "/run/timeguard/status.sock";

/// How `timeguard run` is set up.
pub struct Options {
    pub policy: PathBuf,
    pub status_socket: PathBuf,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where the audit trail goes: its file, stdout when asked.
    pub audit_log: audit::Sinks,
    pub audit_rotation: audit::Rotation,
    /// The cgroup v2 directory the network guard watches (default: the hierarchy's root,
    /// every socket of the host).
    pub network_cgroup: Option<PathBuf>,
    /// Where the programs' maps and links are pinned (bpffs).
    pub pin_root: PathBuf,
    /// Where the last known good policy is kept.
    pub state_dir: PathBuf,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Gives the heap that loading freed back to the kernel. Loading parses the kernel's BTF
/// (tens of MiB, freed once the programs are in), and glibc keeps freed heap unless asked:
/// without this the idle agent holds about 38 MiB instead of about 10.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stopped; the last policy stays enforced from the pins (exit 0).
    Stopped,
    /// Stopped by `timeguard stop --unpin`: the programs are gone. Its own exit code
    /// (`UNPINNED_EXIT`), which the unit names in `RestartPreventExitStatus=`: a service
    /// manager must not start an agent that was asked to remove enforcement.
    Unpinned,
}

/// The exit code of an agent stopped by `timeguard stop --unpin`.
pub const UNPINNED_EXIT: u8 = 3;

/// Puts the start's policy in force: prepared, then switched to. One the kernel refuses (a
/// map full, say) is not the end: the next of the chain is tried, as for a policy that
/// fails validation (`reload::fallback_after`), so that a start never leaves nothing live.
fn first_policy_in_force(
    agent: &mut Agent,
    options: &Options,
    mut policy: crate::policy::CompiledPolicy,
) -> anyhow::Result<u32> {
    loop {
        let refused = agent.reloading.source;
        let problem = match agent.prepare(policy).and_then(|p| agent.switch(p)) {
            Ok(generation) => return Ok(generation),
            Err(e) => format!("the kernel refused the {} policy: {e:#}", refused.token()),
        };
        log::error!("{problem}");
        // The configured policy's problems stay the reason shown; a refused last known good
        // one is why it is out.
        let (problems, unusable) = match refused {
            last_known_good::Source::LastKnownGood => {
                (agent.reloading.configured_problems.clone(), Some(problem))
            }
            _ => (vec![problem], None),
        };
        let (next, origin) = reload::fallback_after(options, refused, problems, unusable)?;
        agent.reloading = Reloading::new(options, &next, origin);
        policy = next;
    }
}

pub fn run(options: &Options) -> anyhow::Result<Ended> {
    let status_socket = options.status_socket.as_path();
    // The configured policy, or when it is not valid a fallback: never nothing.
    let (policy, origin) = reload::startup_policy(options)?;
    let guard = kernel::prepare(&crate::kernel::capabilities(), &options.pin_root)?;
    let rule_names_path =
        rule_names::rule_names_path(status_socket, &crate::bpf::object::programs_build());
    let inherited = guard.inherited_generation();
    let rule_names = RuleNames::take_over(&guard, rule_names_path)?;
    let mut agent = Agent {
        guard,
        generations: Generations::default(),
        reloading: Reloading::new(options, &policy, origin),
        rule_names,
        trail: Trail {
            audit: AuditTrail::new(options.audit_log.clone(), options.audit_rotation.clone()),
            host: hostname(),
            started: crate::events::rfc3339(std::time::SystemTime::now()),
            exe_paths: ExePaths::default(),
        },
        network: NetworkState {
            cgroup: options.network_cgroup.clone(),
            ..NetworkState::default()
        },
        protection: Protection {
            pin_root: options.pin_root.clone(),
            files: Vec::new(),
        },
        health: Health {
            metrics: match options.metrics_addr {
                Some(_) => Some(Metrics::new()?),
                None => None,
            },
            last_step: None,
        },
        stop: None,
    };
    // Every program is attached before the policy goes live, all of it at once: until the
    // switch nothing is decided (or the policy an earlier agent left stays in force, whole).
    agent.guard.attach()?;
    // Taints are tracked since the first agent of this boot attached; a first one seeds
    // them with what is traced already.
    if inherited == 0 {
        match agent.guard.identity.seed_traced() {
            Ok(traced) if !traced.is_empty() => log::warn!(
                "processes traced before the guard started lose any rule they match (pid by tracer): {}",
                traced
                    .iter()
                    .map(|(pid, tracer)| format!("{pid} by {tracer}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ok(_) => {}
            Err(e) => log::warn!("processes traced before the guard started keep their rules: {e:#}"),
        }
        match agent.guard.identity.seed_units() {
            Ok(n) => log::info!("{n} processes already running in systemd units, as the service manager started them"),
            Err(e) => log::warn!("processes already running in their units are not known as theirs (match.unit denies them): {e:#}"),
        }
    }
    let generation = first_policy_in_force(&mut agent, options, policy)?;
    // enforced whole from here
    let frozen = crate::sensors::self_protection::freeze_kernel_only_maps(&agent.guard.maps_dir());
    if !frozen.is_empty() {
        log::info!(
            "frozen against writes from userspace: {}",
            frozen.join(", ")
        );
    }
    kernel::report_enforcement(&agent.guard);
    // This build's programs are attached and its policy in force: an older build's, which
    // enforced until the switch, may go (make before break).
    for old in agent.guard.remove_other_builds() {
        log::info!(
            "removed the pins of an older build of the programs: {}",
            old.display()
        );
    }
    let (name, hash) = agent
        .generations
        .current()
        .map(|(_, p)| (p.name.clone(), p.hash.clone()))
        .unwrap_or_default();
    agent.trail.agent(AgentEvent::Started {
        enforcement: agent.guard.enforcement.label(),
        policy: name,
        policy_sha256: hash,
        generation,
        attached: agent
            .guard
            .attached
            .iter()
            .map(ToString::to_string)
            .collect(),
        adopted: agent.guard.adopted().to_vec(),
        inherited_generation: inherited,
        pins: agent.guard.pin_dir().to_path_buf(),
        audit_log: agent.trail.audit.path().map(|p| p.to_path_buf()),
        metrics_addr: options.metrics_addr.map(|a| a.to_string()),
    });
    release_freed_memory();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    runtime.block_on(event_loop::event_loop(
        &mut agent,
        status_socket,
        options.metrics_addr,
    ))?;

    agent.summarize();
    if let Err(e) = agent.guard.self_protection.forget_agent_process() {
        log::warn!("{e:#}");
    }
    let unpin = agent.stop == Some(true);
    let mut unpinned = Vec::new();
    if unpin {
        // The pins go first; the programs detach when this process lets go of its links.
        unpinned = crate::bpf::pins::unpin_all(&options.pin_root)?;
        let _ = std::fs::remove_file(&agent.rule_names.path);
    }
    agent.trail.agent(AgentEvent::Stopped {
        enforcement: agent.guard.enforcement.label(),
        generation: agent.guard.clock.generation(),
        enforcement_stays: !unpin,
        unpinned,
    });
    let _ = std::fs::remove_file(status_socket);
    if unpin {
        log::warn!(
            "stopped and unpinned: the programs are detached, the clock is no longer guarded"
        );
    } else {
        log::info!(
            "stopped; the last policy stays enforced in the kernel (pinned at {}); `timeguard stop --unpin` removes it",
            agent.guard.pin_dir().display()
        );
    }
    Ok(if unpin {
        Ended::Unpinned
    } else {
        Ended::Stopped
    })
}
