//! The running agent's state, in the parts each concern of the daemon owns, and what
//! changes what the kernel enforces: installing a policy (prepared in the slot not in
//! force, then switched to with one write), attaching the network guard, telling
//! self-protection what to guard.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;

use crate::{
    audit::AuditTrail,
    events::ExePaths,
    loader::Guard,
    policy::{model::operation_names, network::CompiledNetwork, CompiledPolicy},
    records::{AgentEvent, AgentRecord},
    report::counters::NetAlert,
    report::metrics::{LastStep, Metrics},
    sensors::{self_protection::ProtectedFile, Prepared},
};

use super::{
    reload::{Generations, Reloading},
    rule_names::RuleNames,
};

/// The running agent.
pub(super) struct Agent {
    pub(super) guard: Guard,
    /// The policies in force and kept, by generation.
    pub(super) generations: Generations,
    /// Where the policy comes from and how its reloads went.
    pub(super) reloading: Reloading,
    /// Stable rule ids for the kernel's counters, by rule name.
    pub(super) rule_names: RuleNames,
    pub(super) trail: Trail,
    pub(super) network: NetworkState,
    pub(super) protection: Protection,
    pub(super) health: Health,
    /// A stop asked for on the control socket: whether to unpin as well.
    pub(super) stop: Option<bool>,
}

/// A policy prepared in the slot not in force, waiting for `Agent::switch`.
#[must_use = "a prepared policy decides nothing until it is switched to"]
pub(super) struct Pending {
    policy: CompiledPolicy,
    prepared: Prepared,
}

/// The audit trail and what every record of this agent carries.
pub(super) struct Trail {
    pub(super) audit: AuditTrail,
    pub(super) host: String,
    /// When the agent started (RFC 3339).
    pub(super) started: String,
    pub(super) exe_paths: ExePaths,
}

impl Trail {
    /// Writes one record of the agent itself.
    pub(super) fn agent(&mut self, event: AgentEvent) {
        match AgentRecord::now(Some(&self.host), event).to_json() {
            Ok(record) => self.audit.write(&record),
            Err(e) => log::warn!("an agent record could not be written: {e}"),
        }
    }
}

/// The network guard's state beside the kernel's.
#[derive(Default)]
pub(super) struct NetworkState {
    /// The cgroup v2 directory it watches (None: the hierarchy's root).
    pub(super) cgroup: Option<PathBuf>,
    /// Why it is not attached, when a policy asked for it.
    pub(super) unavailable: Option<String>,
    /// Alerts raised by network records since start.
    pub(super) alerts: BTreeMap<NetAlert, u64>,
}

/// What self-protection guards.
pub(super) struct Protection {
    /// Where the pins are (protected, and removed by an unpinning stop).
    pub(super) pin_root: PathBuf,
    /// The files it guards now.
    pub(super) files: Vec<ProtectedFile>,
}

/// What the metrics show beside the kernel's counters.
pub(super) struct Health {
    /// None when metrics are not served.
    pub(super) metrics: Option<Metrics>,
    /// The last step seen.
    pub(super) last_step: Option<LastStep>,
}

impl Agent {
    /// Runs `f` with the trail's records held back, then writes them at once.
    pub(super) fn batched<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        self.trail.audit.hold();
        let r = f(self);
        self.trail.audit.release();
        self.trail.exe_paths.clear();
        r
    }

    /// Puts a policy in force as the next generation (a reload): prepared, then switched to.
    pub(super) fn install(&mut self, policy: CompiledPolicy) -> anyhow::Result<u32> {
        let pending = self.prepare(policy)?;
        self.switch(pending)
    }

    /// The processes the policy's rules name that ran before it: their code noted or their
    /// rule taken (`Identity::seed_code`), and said.
    fn seed_code(&mut self, policy: &CompiledPolicy) {
        let exes: Vec<_> = policy.rules.iter().map(|r| r.exe_id).collect();
        let loaded = self.guard.clock.code_vouched_sec();
        let seed = self.guard.identity.seed_code(&exes, loaded);
        if !seed.tainted.is_empty() {
            log::warn!(
                "rule processes running code not the system's lose their rules: {}",
                seed.tainted.join("; ")
            );
        }
        if !seed.untainted.is_empty() {
            log::error!(
                "rule processes running code not the system's keep their rules until restarted (the taints are the kernel's alone now): {}",
                seed.untainted.join("; ")
            );
        }
        if !seed.unreadable.is_empty() {
            log::warn!(
                "the code of processes whose executable cannot be read is not judged (the agent lacks CAP_SYS_PTRACE?): {:?}",
                seed.unreadable
            );
        }
        log::info!(
            "{} files noted as code of running rule processes (not opened for writing while mapped)",
            seed.vouched
        );
    }

    /// Writes a policy into the slot not in force, the clock's part and the network's:
    /// nothing is decided by it yet, and the policy in force (if any) stays, whole.
    pub(super) fn prepare(&mut self, mut policy: CompiledPolicy) -> anyhow::Result<Pending> {
        self.rule_names.number(&mut policy)?;
        // Not part of a slot: what the system's libraries are, looked at afresh.
        self.guard.identity.refresh_library_dirs()?;
        let prepared = self.guard.clock.prepare(&policy)?;
        self.guard
            .network
            .prepare(policy.network.as_ref(), &policy.rules, &prepared)
            .context("installing the network policy")?;
        Ok(Pending { policy, prepared })
    }

    /// Attaches what a prepared policy needs (the network guard, the PTP interfaces), then
    /// puts it in force with one map write, the clock's part and the network's together.
    /// Returns its generation.
    pub(super) fn switch(&mut self, pending: Pending) -> anyhow::Result<u32> {
        let Pending { policy, prepared } = pending;
        if policy.network.is_some() {
            self.attach_network();
        }
        self.follow_ptp_interfaces(policy.network.as_ref());
        let generation = self.guard.clock.switch(prepared)?;
        for w in &policy.warnings {
            log::warn!("policy: {w}");
        }
        self.seed_code(&policy);
        for r in &policy.rules {
            let unit = r
                .unit
                .as_ref()
                .map(|u| format!(" in unit {} (cgroup {})", u.name, u.cgroup))
                .unwrap_or_default();
            log::info!(
                "rule \"{}\": {} ({}){unit} may: {}",
                r.name,
                r.exe.display(),
                r.exe_id,
                operation_names(r.allow).join(", ")
            );
        }
        log::info!(
            "policy \"{}\" generation {generation} (sha256 {}) from {}: {} rules in effect",
            policy.name,
            &policy.hash[..16],
            self.reloading.from(),
            policy.rules.len()
        );
        self.accepted(generation, &policy);
        self.generations.insert(generation, policy);
        self.protect();
        Ok(generation)
    }

    /// Tells the kernel programs what self-protection guards now: the policy's files and
    /// daemons, the pins and the BPF objects this agent holds. Called after each install
    /// and each new attachment. A failure leaves the previous state (and says so).
    pub(super) fn protect(&mut self) {
        let Some((generation, policy)) = self.generations.current() else {
            return;
        };
        let mode = policy.self_protection;
        let files = crate::sensors::self_protection::protected_files(
            &self.reloading.path,
            policy,
            &self.protection.pin_root,
            &self.reloading.store.protected(),
        );
        match self.guard.install_self_protection(mode, generation, &files) {
            Ok(()) => self.protection.files = files,
            Err(e) => log::warn!("self-protection not updated: {e:#}"),
        }
    }

    /// Attaches the network guard the first time a policy has `spec.network`. A kernel or
    /// host that refuses it loses the network guard only, said plainly.
    fn attach_network(&mut self) {
        let Some(cgroup) = self
            .network
            .cgroup
            .clone()
            .or_else(crate::sensors::network::cgroup2_root)
        else {
            self.network.unavailable = Some(
                "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)".into(),
            );
            log::warn!("network guard unavailable: no cgroup v2 hierarchy is mounted");
            return;
        };
        match self.guard.attach_network(&cgroup) {
            Ok(now) => {
                self.network.unavailable = None;
                if now {
                    log::info!("network guard attached to {}", cgroup.display());
                }
            }
            Err(e) => {
                log::warn!("network guard unavailable: {e:#}");
                self.network.unavailable = Some(format!("{e:#}"));
            }
        }
    }

    /// Attaches the PTP guard to interfaces that appeared, when the policy has `ptp`.
    pub(super) fn follow_ptp_interfaces(&mut self, net: Option<&CompiledNetwork>) {
        let Some(net) = net.filter(|n| n.ptp) else {
            return;
        };
        let refused_before = self.guard.network.ptp_links().refused.clone();
        let attached = self
            .guard
            .follow_ptp_interfaces(net.ptp_interfaces.as_deref());
        for name in &attached {
            log::info!("PTP guard attached to {name}");
        }
        if !attached.is_empty() {
            self.protect();
        }
        // Said once per interface and reason, not at every tick.
        for (name, why) in &self.guard.network.ptp_links().refused {
            if refused_before.get(name) != Some(why) {
                log::warn!("PTP guard not attached to {name}: {why}");
            }
        }
    }

    /// Follows interfaces of the policy in force (at every tick of the watch).
    pub(super) fn follow_ptp_interfaces_now(&mut self) {
        let net = self
            .generations
            .current()
            .and_then(|(_, p)| p.network.clone());
        self.follow_ptp_interfaces(net.as_ref());
    }
}
