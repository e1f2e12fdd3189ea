//! Checking a parsed policy against the host and compiling it into the rules the kernel
//! programs look up: every rule's operations, limits and match, every file taken together.

use std::{collections::HashMap, path::PathBuf};

use agent_common::{
    clock::op,
    policy::{Mode as KernelMode, ALLOW_ALL, MAX_RULES},
};
use serde_saphyr::{Location, Spanned};

use super::{
    diagnostic::{Diagnostic, Sink},
    mode_value,
    model::{self, Action, Mode},
    network, sources_hash, CompiledPolicy, CompiledRule, ExeId, Host, Parsed, UnitMatch,
};

pub(super) fn check_and_compile(
    parsed: &[Parsed],
    host: &Host,
    out: &mut Vec<Diagnostic>,
) -> Option<CompiledPolicy> {
    if parsed.is_empty() {
        return None;
    }
    let mut rules: Vec<CompiledRule> = Vec::new();
    let mut inactive = Vec::new();
    let mut watched = Vec::new();
    // Rule names and executables across every file: (file, location, rule name).
    let mut names: HashMap<String, (PathBuf, Location)> = HashMap::new();
    let mut exes: HashMap<ExeId, (String, PathBuf, Location)> = HashMap::new();
    let mut default_allow = ALLOW_ALL;
    let mut default_mode = KernelMode::Audit.code();
    let mut daemons_may_be_denied = false;
    let mut enforce_at: Option<(PathBuf, Location)> = None;
    let mut net: Option<(&model::NetworkSpec, Mode, PathBuf)> = None;
    // Several policies together: the strictest wins; a policy that says nothing audits.
    let mut self_protection = model::SelfProtectionMode::Off;

    for p in parsed {
        let mut sink = Sink::new(p.file.clone());
        let doc = &p.doc;
        if doc.api_version.value != model::API_VERSION {
            sink.error(
                doc.api_version.referenced,
                format!(
                    "apiVersion is `{}`; write apiVersion: {}",
                    doc.api_version.value,
                    model::API_VERSION
                ),
            );
        }
        if doc.kind.value != model::KIND {
            sink.error(
                doc.kind.referenced,
                format!("kind is `{}`; write kind: {}", doc.kind.value, model::KIND),
            );
        }
        if doc.metadata.name.value.trim().is_empty() {
            sink.error(
                doc.metadata.name.referenced,
                "metadata.name is empty; give the policy a name",
            );
        }
        let policy_mode = doc.spec.mode.as_ref().map_or(Mode::Enforce, |m| m.value);
        if policy_mode == Mode::Enforce && enforce_at.is_none() {
            let at = doc
                .spec
                .mode
                .as_ref()
                .map_or(doc.kind.referenced, |m| m.referenced);
            enforce_at = Some((p.file.clone(), at));
        }
        daemons_may_be_denied |= doc.spec.clock.deny_installed_daemons;
        // Several policies together: a change no rule allows is allowed only if every
        // policy's default allows it, and enforced if any policy enforces.
        if doc.spec.clock.default == Action::Deny {
            default_allow = 0;
        }
        if policy_mode == Mode::Enforce {
            default_mode = KernelMode::Enforce.code();
        }
        if doc.spec.clock.rules.len() > MAX_RULES as usize {
            sink.error(
                doc.kind.referenced,
                format!(
                    "{} rules; a policy may have at most {MAX_RULES}",
                    doc.spec.clock.rules.len()
                ),
            );
        }
        for Spanned { value: rule, .. } in &doc.spec.clock.rules {
            let name = rule.name.value.clone();
            if name.trim().is_empty() {
                sink.error(
                    rule.name.referenced,
                    "the rule's name is empty; name it after what it allows (e.g. chronyd)",
                );
            } else if let Some((file, first)) = names.get(&name) {
                sink.error(rule.name.referenced, format!("rule name `{name}` is used twice (first at {}:{}); give each rule its own name", file.display(), first.line()));
            } else {
                names.insert(name.clone(), (p.file.clone(), rule.name.referenced));
            }
            let allow = check_operations(rule, &mut sink);
            check_limits(rule, allow, &mut sink);
            let uids = check_match(rule, host, &mut sink);
            let unit = rule
                .matches
                .unit
                .as_ref()
                .and_then(|u| match UnitMatch::of(&u.value) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        sink.error(u.referenced, e);
                        None
                    }
                });
            let exe = &rule.matches.exe;
            if !exe.value.is_absolute() {
                continue;
            }
            watched.push(exe.value.clone());
            let exe_id = match host.exe_id(&exe.value) {
                Ok(id) => id,
                Err(e) => {
                    let why = if e.kind() == std::io::ErrorKind::NotFound {
                        "does not exist on this host".to_string()
                    } else {
                        format!("cannot be read on this host ({e})")
                    };
                    sink.warning(
                        exe.referenced,
                        format!(
                            "{} {why}; rule `{name}` matches nothing here",
                            exe.value.display()
                        ),
                    );
                    inactive.push(name);
                    continue;
                }
            };
            if let Some((other, file, at)) = exes.get(&exe_id) {
                sink.error(exe.referenced, format!(
                    "rule `{name}` can never match: rule `{other}` ({}:{}) already matches this executable; merge the two rules",
                    file.display(), at.line()
                ));
                continue;
            }
            exes.insert(exe_id, (name.clone(), p.file.clone(), exe.referenced));
            rules.push(CompiledRule {
                id: rules.len() as u32 + 1,
                name,
                exe: exe.value.clone(),
                exe_id,
                uids,
                unit,
                allow,
                mode: mode_value(rule.mode.unwrap_or(policy_mode)),
                max_step_ns: rule.max_step.as_ref().map_or(0, |d| d.value.nanos),
                // ppm to the kernel's scaled ppm (16-bit fraction), rounded.
                max_frequency: rule
                    .max_frequency
                    .as_ref()
                    .map_or(0, |f| (f.value.0 * 65536.0).round() as u64),
            });
        }
        let sp = doc
            .spec
            .self_protection
            .as_ref()
            .map_or(model::SelfProtectionMode::Audit, |s| s.value.mode);
        self_protection = self_protection.max(sp);
        if let Some(spec) = &doc.spec.network {
            match &net {
                Some((_, _, first)) => sink.error(
                    doc.kind.referenced,
                    format!(
                        "spec.network is already given by {}; keep the network policy in one file",
                        first.display()
                    ),
                ),
                None => net = Some((spec, policy_mode, p.file.clone())),
            }
        }
        out.extend(sink.found);
    }
    // The kernel holds one entry per rule and user it is narrowed to (and one more saying a
    // narrowed rule's executable has a rule), for every file taken together; the map has
    // room for MAX_RULES per slot. Over that, the kernel would refuse the policy at install:
    // it is refused here, with the count.
    let entries: usize = rules
        .iter()
        .map(|r| {
            if r.uids.is_empty() {
                1
            } else {
                r.uids.len() + 1
            }
        })
        .sum();
    if entries > MAX_RULES as usize {
        let mut sink = Sink::new(parsed[parsed.len() - 1].file.clone());
        sink.whole_file(format!(
            "the policy's files together need {entries} kernel rule entries (one per rule, or per user a rule names and one more); at most {MAX_RULES} fit"
        ));
        out.extend(sink.found);
    }
    // The network policy names clock rules, which may come from any of the files.
    let net = net.map(|(spec, policy_mode, file)| {
        let mut sink = Sink::new(file);
        let rule_names: Vec<&str> = names.keys().map(String::as_str).collect();
        let compiled = network::compile(spec, policy_mode, &rules, &rule_names, &mut sink);
        out.extend(sink.found);
        compiled
    });

    if let (Some((file, at)), false) = (&enforce_at, daemons_may_be_denied) {
        let mut sink = Sink::new(file.clone());
        for d in host.installed_daemons() {
            let rule = rules.iter().find(|r| r.exe_id == d.exe_id);
            let (allowed, rule_mode) =
                rule.map_or((default_allow, default_mode), |r| (r.allow, r.mode));
            let missing = d.daemon.needs & !allowed;
            if missing != 0 && rule_mode == KernelMode::Enforce.code() {
                sink.error(*at, format!(
                    "this policy would deny {} ({}, enabled as {}) the operations it needs: {}; add a rule for {} allowing {}, or set spec.clock.denyInstalledDaemons: true if that is what you want",
                    d.daemon.name,
                    d.exe.display(),
                    d.unit,
                    model::operation_names(missing).join(", "),
                    d.exe.display(),
                    model::operation_names(d.daemon.needs).join(", "),
                ));
            }
        }
        out.extend(sink.found);
    }

    Some(CompiledPolicy {
        name: parsed
            .iter()
            .map(|p| p.doc.metadata.name.value.as_str())
            .collect::<Vec<_>>()
            .join("+"),
        sources: parsed.iter().map(|p| p.file.clone()).collect(),
        hash: sources_hash(
            parsed
                .iter()
                .map(|p| (p.file.as_path(), p.bytes.as_slice())),
        ),
        default_allow,
        default_mode,
        rules,
        inactive,
        watched,
        warnings: Vec::new(),
        network: net,
        self_protection: match self_protection {
            model::SelfProtectionMode::Off => None,
            model::SelfProtectionMode::Audit => Some(KernelMode::Audit.code()),
            model::SelfProtectionMode::Enforce => Some(KernelMode::Enforce.code()),
        },
    })
}

/// The operations a rule allows, with `leap:` folded in.
fn check_operations(rule: &model::Rule, sink: &mut Sink) -> u32 {
    let mut allow = 0;
    for o in &rule.allow.value {
        if allow & o.value.0 != 0 {
            sink.warning(
                o.referenced,
                format!("`{}` is listed twice in allow", op::name(o.value.0)),
            );
        }
        allow |= o.value.0;
    }
    if let Some(leap) = &rule.leap {
        match leap.value {
            Action::Allow => allow |= op::LEAP,
            Action::Deny if allow & op::LEAP != 0 => {
                sink.error(
                    leap.referenced,
                    "leap: deny contradicts `leap` in allow; keep one of them",
                );
            }
            Action::Deny => {}
        }
    }
    allow
}

/// Limits must belong to an operation the rule allows, and must limit something.
fn check_limits(rule: &model::Rule, allow: u32, sink: &mut Sink) {
    if let Some(step) = &rule.max_step {
        if allow & op::STEP == 0 {
            sink.error(step.referenced, "maxStep applies only to a rule that may step; add `step` to allow, or remove maxStep");
        } else if step.value.nanos == 0 {
            sink.error(
                step.referenced,
                "maxStep: 0 allows no step at all; remove `step` from allow instead",
            );
        }
    }
    if let Some(freq) = &rule.max_frequency {
        if allow & op::FREQUENCY == 0 {
            sink.error(freq.referenced, "maxFrequency applies only to a rule that may tune the frequency; add `frequency` to allow, or remove maxFrequency");
        } else if freq.value.0 * 65536.0 < 1.0 {
            sink.error(freq.referenced, "maxFrequency this small allows no frequency change; remove `frequency` from allow instead");
        } else if freq.value.0 > 100_000.0 {
            sink.error(freq.referenced, "maxFrequency above 100000ppm is beyond anything the kernel accepts (its limit is 500ppm); write the limit you mean");
        }
    }
}

/// Checks `match`; returns the uids `match.users` narrows the rule to (empty: every user).
fn check_match(rule: &model::Rule, host: &Host, sink: &mut Sink) -> Vec<u32> {
    let exe = &rule.matches.exe;
    if !exe.value.is_absolute() {
        sink.error(exe.referenced, format!("match.exe `{}` is not an absolute path; write the full path, e.g. /usr/sbin/chronyd", exe.value.display()));
    }
    let mut uids = Vec::new();
    if let Some(users) = &rule.matches.users {
        if users.value.is_empty() {
            sink.error(users.referenced, "match.users is empty, so the rule can never match; list users, or remove match.users to match every user");
        }
        for user in &users.value {
            match host.uid(&user.value) {
                Ok(uid) if uids.contains(&uid) => sink.error(
                    user.referenced,
                    format!("user `{}` is listed twice in match.users", user.value),
                ),
                Ok(uid) => uids.push(uid),
                Err(e) => sink.error(user.referenced, e),
            }
        }
    }
    uids
}
