//! What each record of the kernel does in the agent: it is written to the audit trail,
//! named by the policy generation that decided it, and counted where the metrics need more
//! than the kernel's counters.

use std::path::PathBuf;

use agent_common::{event::ClockEvent, net::NetEvent, tamper::TamperEvent};

use crate::{
    events,
    policy::ExeId,
    records,
    report::{counters::NetAlert, metrics::LastStep},
};

use super::agent::Agent;

impl Agent {
    /// Writes one clock event to the trail, named by the policy generation that decided it.
    pub(super) fn clock_event(&mut self, ev: &ClockEvent) {
        use agent_common::{clock::op, policy::Verdict};
        if ev.operations & op::STEP != 0 && ev.verdict != Verdict::Deny.code() {
            self.health.last_step = Some(LastStep {
                boot_ns: ev.boot_ns,
                size_ns: events::step_size_ns(ev),
            });
        }
        if ev.reason == agent_common::policy::Reason::PolicyUnreadable.code() {
            log::error!(
                "internal error: no policy readable in the kernel (its maps were rewritten by another writer); a clock request by pid {} refused, as every one is until the agent writes its policy again (its check each second)",
                ev.caller.tgid
            );
        }
        if let Some(p) = self.generations.get_or_current(ev.generation) {
            let trail = &mut self.trail;
            let c = &ev.caller;
            let seen = trail.exe_paths.seen(c.tgid, c.exe_dev, c.exe_ino);
            let record = records::clock_record(ev, p, &trail.host, seen);
            trail.audit.write(&record);
        }
    }

    /// Writes one network decision to the trail.
    pub(super) fn net_event(&mut self, ev: &NetEvent) {
        if let Some(alert) = NetAlert::of(ev.kind, ev.alert) {
            *self.network.alerts.entry(alert).or_default() += 1;
        }
        let name = self
            .generations
            .get(ev.generation)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let rule_ids = &self.rule_names.ids;
        let rule_name = |id: u32| rule_ids.name(id).to_string();
        let record = crate::sensors::network::net_json(ev, &name, &self.trail.host, &rule_name);
        self.trail.audit.write(&record);
    }

    /// Writes one tamper attempt to the trail.
    pub(super) fn tamper_event(&mut self, ev: &TamperEvent) {
        let name = self
            .generations
            .get_or_current(ev.generation)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let path_of = |dev: u64, ino: u64| self.protected_path(dev, ino);
        let record =
            crate::sensors::self_protection::tamper_json(ev, &name, &self.trail.host, &path_of);
        log::warn!(
            "tamper attempt: {} {} by {} ({})",
            record["action"].as_str().unwrap_or("?"),
            record["verdict"].as_str().unwrap_or("?"),
            record["who"]["comm"].as_str().unwrap_or("?"),
            record["who"]["exe"].as_str().unwrap_or("?")
        );
        self.trail.audit.write(&record);
    }

    /// The protected file with this identity, for tamper records.
    fn protected_path(&self, dev: u64, ino: u64) -> Option<PathBuf> {
        self.protection
            .files
            .iter()
            .find(|(p, _)| ExeId::of(p).is_ok_and(|id| id.dev == dev && id.ino == ino))
            .map(|(p, _)| p.clone())
    }
}
