//! Following the policy: the policy a start enforces (the configured one, or when it fails
//! the last known good, or the built-in default), what identifies the policy in force (its
//! fingerprint), the policies kept by generation, and reloading without a gap (a policy
//! that fails is rejected whole, and the one in force stays).

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::{
    policy::{self, CompiledPolicy, Host},
    records::AgentEvent,
};

use super::{
    agent::Agent,
    last_known_good::{self, Source, Store},
    release_freed_memory, Options,
};

/// Policies kept to name the rules of events decided under an older generation.
const GENERATIONS_KEPT: usize = 4;

/// Loads and checks the policy; errors refuse it, with every diagnostic.
fn load_policy(path: &Path) -> Result<CompiledPolicy, Vec<String>> {
    policy::load(&[path.to_path_buf()], &policy::Host::default())
        .map_err(|problems| problems.iter().map(|d| d.to_string()).collect())
}

/// Where the policy a start enforces came from, and why it is not the configured one.
#[derive(Debug)]
pub(super) struct Origin {
    pub(super) source: Source,
    /// Why the configured policy was refused (empty when it is in force).
    pub(super) problems: Vec<String>,
    /// When the last known good policy enforced was accepted.
    pub(super) accepted: Option<String>,
    /// Why the last known good policy is not enforced, when the built-in default is.
    pub(super) last_known_good_unusable: Option<String>,
}

/// The policy a start enforces: the configured one; when it fails validation (said loudly,
/// each problem), the next of the chain (`fallback_after`).
pub(super) fn startup_policy(options: &Options) -> anyhow::Result<(CompiledPolicy, Origin)> {
    match load_policy(options.policy.as_path()) {
        Ok(p) => {
            let origin = Origin {
                source: Source::Configured,
                problems: Vec::new(),
                accepted: None,
                last_known_good_unusable: None,
            };
            Ok((p, origin))
        }
        Err(problems) => fallback_after(options, Source::Configured, problems, None),
    }
}

/// The policy to enforce at start instead of the one from `refused` (`problems`: why the
/// configured policy is not enforced: it failed validation, or the kernel refused it): after the configured policy the
/// last known good one, checked again against this host; after that (missing, corrupt, not
/// passing, refused) the built-in default. Never nothing, unless even the built-in default
/// fails on this host. `unusable`: why the last known good one is out already.
pub(super) fn fallback_after(
    options: &Options,
    refused: Source,
    problems: Vec<String>,
    unusable: Option<String>,
) -> anyhow::Result<(CompiledPolicy, Origin)> {
    let configured = options.policy.as_path();
    if refused == Source::Configured {
        for p in &problems {
            log::error!("policy: {p}");
        }
        log::error!(
            "the policy at {} cannot be enforced ({} problems); enforcing a fallback instead",
            configured.display(),
            problems.len()
        );
    }
    let unusable = match (refused, unusable) {
        (Source::BuiltInDefault, _) => anyhow::bail!(
            "the built-in default policy cannot be enforced either: {}; nothing was loaded",
            problems.join("; ")
        ),
        // `problems` stay the configured policy's: the reason shown for the fallback.
        (Source::LastKnownGood, why) => why.unwrap_or_default(),
        (Source::Configured, Some(why)) => why,
        (Source::Configured, None) => match last_known_good(options) {
            Ok((p, accepted)) => {
                let origin = Origin {
                    source: Source::LastKnownGood,
                    problems,
                    accepted: Some(accepted),
                    last_known_good_unusable: None,
                };
                return Ok((p, origin));
            }
            Err(why) => why,
        },
    };
    log::error!("{unusable}");
    let p = last_known_good::built_in_default(&Host::default()).map_err(|why| {
        for w in &why {
            log::error!("built-in default policy: {w}");
        }
        anyhow::anyhow!(
            "the policy at {} is not valid, and neither the last known good policy nor the built-in default passes on this host; nothing was loaded",
            configured.display()
        )
    })?;
    log::error!(
        "enforcing the built-in default policy (only the installed time daemons may discipline the clock) until the configured one is valid"
    );
    let origin = Origin {
        source: Source::BuiltInDefault,
        problems,
        accepted: None,
        last_known_good_unusable: Some(unusable),
    };
    Ok((p, origin))
}

/// The kept policy, compiled against this host, and when it was accepted; or why it cannot
/// be enforced. One kept from another configured path is not this agent's.
fn last_known_good(options: &Options) -> Result<(CompiledPolicy, String), String> {
    let store = Store::new(&options.state_dir);
    let kept = match store.read() {
        Ok(Some(kept)) => kept,
        Ok(None) => {
            return Err(format!(
                "no last known good policy is kept in {}",
                store.file().display()
            ))
        }
        Err(e) => return Err(format!("{e:#}")),
    };
    if kept.configured != options.policy {
        return Err(format!(
            "the policy kept in {} was accepted from {}, not from {}",
            store.file().display(),
            kept.configured.display(),
            options.policy.display()
        ));
    }
    match kept.compile(&Host::default()) {
        Ok(p) => {
            log::error!(
                "enforcing the last known good policy \"{}\" (sha256 {}, accepted {} as generation {} from {}) until the configured one is valid",
                kept.name,
                &kept.sha256[..kept.sha256.len().min(16)],
                kept.accepted,
                kept.generation,
                kept.configured.display()
            );
            Ok((p, kept.accepted))
        }
        Err(why) => Err(format!(
            "the last known good policy in {} does not pass on this host now: {}",
            store.file().display(),
            why.join("; ")
        )),
    }
}

/// What identifies the policy in force without reading it: each policy file's inode, size
/// and modification time (and the set of files), and the identity of every executable its
/// rules name. An edited policy, and an executable replaced (a package upgrade renames a
/// new file over the old) or newly installed, are both noticed and followed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Fingerprint {
    files: Vec<(PathBuf, u64, u64, i64, i64)>,
    exes: Vec<Option<(u64, u64)>>,
}

impl Fingerprint {
    pub(super) fn of(path: &Path, watched: &[PathBuf]) -> Self {
        let files = policy::policy_files(&[path.to_path_buf()]).unwrap_or_default();
        Fingerprint {
            files: files
                .into_iter()
                .filter_map(|f| {
                    let md = std::fs::metadata(&f).ok()?;
                    Some((f, md.ino(), md.len(), md.mtime(), md.mtime_nsec()))
                })
                .collect(),
            exes: watched
                .iter()
                .map(|e| std::fs::metadata(e).ok().map(|md| (md.dev(), md.ino())))
                .collect(),
        }
    }
}

/// Policies by generation: the one in force is the last.
#[derive(Default)]
pub(super) struct Generations {
    policies: BTreeMap<u32, CompiledPolicy>,
}

impl Generations {
    pub(super) fn current(&self) -> Option<(u32, &CompiledPolicy)> {
        self.policies.last_key_value().map(|(g, p)| (*g, p))
    }

    /// The generation in force; 0 before any.
    pub(super) fn current_generation(&self) -> u32 {
        self.current().map_or(0, |(g, _)| g)
    }

    /// The policy of a generation, while kept.
    pub(super) fn get(&self, generation: u32) -> Option<&CompiledPolicy> {
        self.policies.get(&generation)
    }

    /// The policy of a generation, or the one in force when that one is no longer kept.
    pub(super) fn get_or_current(&self, generation: u32) -> Option<&CompiledPolicy> {
        self.get(generation)
            .or_else(|| self.policies.values().last())
    }

    pub(super) fn insert(&mut self, generation: u32, policy: CompiledPolicy) {
        self.policies.insert(generation, policy);
        while self.policies.len() > GENERATIONS_KEPT {
            self.policies.pop_first();
        }
    }
}

/// Where the policy comes from, what it looked like at the last look, and how reloads went.
pub(super) struct Reloading {
    /// The configured path: followed whatever policy is in force.
    pub(super) path: PathBuf,
    pub(super) fingerprint: Fingerprint,
    pub(super) ok: u64,
    pub(super) failed: u64,
    /// The problems of the last rejected reload, until one succeeds.
    pub(super) last_error: Option<Vec<String>>,
    /// Where the policy in force comes from.
    pub(super) source: Source,
    /// Why the configured policy is not in force, while a fallback is.
    pub(super) configured_problems: Vec<String>,
    /// The last known good policy.
    pub(super) store: Store,
    /// What the store holds (hash, when accepted), once known.
    pub(super) kept: Option<(String, String)>,
    /// Why the last known good policy could not be kept or used.
    pub(super) kept_error: Option<String>,
    /// The start's fallback, until its policy is in force and recorded.
    unannounced: Option<Origin>,
}

impl Reloading {
    pub(super) fn new(options: &Options, policy: &CompiledPolicy, origin: Origin) -> Self {
        let path = options.policy.as_path();
        Reloading {
            path: path.to_path_buf(),
            fingerprint: Fingerprint::of(path, &policy.watched),
            ok: 0,
            failed: 0,
            last_error: None,
            source: origin.source,
            configured_problems: origin.problems.clone(),
            store: Store::new(&options.state_dir),
            kept: origin.accepted.clone().map(|a| (policy.hash.clone(), a)),
            kept_error: origin.last_known_good_unusable.clone(),
            unannounced: (origin.source != Source::Configured).then_some(origin),
        }
    }

    /// Where the policy in force comes from, in words for the log.
    pub(super) fn from(&self) -> String {
        match self.source {
            Source::Configured => self.path.display().to_string(),
            Source::LastKnownGood => format!(
                "the last known good policy in {} (the configured one is not valid)",
                self.store.file().display()
            ),
            Source::BuiltInDefault => {
                "the built-in default (the configured one is not valid)".to_string()
            }
        }
    }
}

impl Agent {
    fn fingerprint_now(&self) -> Fingerprint {
        let watched = self
            .generations
            .current()
            .map_or(&[][..], |(_, p)| &p.watched[..]);
        Fingerprint::of(&self.reloading.path, watched)
    }

    /// Reloads when a policy file or a rule's executable changed since the last look.
    pub(super) fn follow_changes(&mut self) {
        let now = self.fingerprint_now();
        if now.files != self.reloading.fingerprint.files {
            self.reload("policy files changed");
        } else if now.exes != self.reloading.fingerprint.exes {
            self.reload("a rule's executable was replaced, installed or removed");
        }
    }

    /// Writes the policy in force again when the kernel no longer holds it as written (its
    /// slot zeroed or switched by another writer of the maps): until then the programs refuse
    /// every clock change (`policy unreadable`), or decide by what was written there.
    pub(super) fn follow_kernel_policy(&mut self) {
        match self.guard.clock.in_force_as_written() {
            Ok(true) => {}
            Ok(false) => {
                let Some((generation, p)) = self.generations.current() else {
                    return;
                };
                log::error!(
                    "the policy in force (generation {generation}) was rewritten in the kernel's maps by another writer: writing it again"
                );
                let p = p.clone();
                self.put_in_force(
                    p,
                    self.reloading.source,
                    "the policy in the kernel was rewritten",
                );
            }
            Err(e) => log::warn!("checking the policy in force in the kernel: {e:#}"),
        }
    }

    /// A reload the operator asked for (SIGHUP, `timeguard apply`): the libraries in place
    /// now are the ones they vouch for, whether the policy changed or not.
    pub(super) fn reload_by_operator(&mut self, why: &str) {
        self.guard.clock.vouch_for_code_now();
        log::info!("the libraries in place now are vouched for ({why}): code changed before now keeps rules, code changed later takes them");
        self.reload(why);
    }

    /// Loads the policy again; a policy that fails validation is rejected and the one in
    /// force stays, whole. While a fallback is in force, a valid configured policy replaces
    /// it, and a rejected one leaves the fallback resolved again against this host (an
    /// executable it names may have been replaced).
    pub(super) fn reload(&mut self, why: &str) {
        self.reloading.fingerprint = self.fingerprint_now();
        match load_policy(&self.reloading.path) {
            Ok(p)
                if self.reloading.source == Source::Configured
                    && self
                        .generations
                        .current()
                        .is_some_and(|(_, c)| c.same_as(&p)) =>
            {
                log::info!(
                    "policy reload ({why}): unchanged (sha256 {})",
                    &p.hash[..16]
                );
            }
            Ok(p) => self.put_in_force(p, Source::Configured, why),
            Err(problems) => {
                let fallback = self.reloading.source;
                if fallback != Source::Configured {
                    self.reloading.configured_problems = problems.clone();
                }
                self.reject(why, problems);
                self.resolve_fallback_again(fallback, why);
            }
        }
    }

    /// Installs `p`, from `source`, as the next generation, or rejects it when the kernel
    /// refuses it.
    fn put_in_force(&mut self, p: CompiledPolicy, source: Source, why: &str) {
        let name = p.name.clone();
        let hash = p.hash.clone();
        let before = std::mem::replace(&mut self.reloading.source, source);
        match self.install(p) {
            Ok(generation) => {
                if source == Source::Configured && before != Source::Configured {
                    log::warn!(
                        "the configured policy at {} is valid again and in force (it replaces the {})",
                        self.reloading.path.display(),
                        before.token()
                    );
                    self.reloading.configured_problems.clear();
                }
                // The new policy may name other executables.
                self.reloading.fingerprint = self.fingerprint_now();
                self.reloading.ok += 1;
                // A fallback resolved again leaves the configured policy's rejection shown.
                if source == Source::Configured {
                    self.reloading.last_error = None;
                }
                self.trail.agent(AgentEvent::PolicyLoaded {
                    reason: why.to_string(),
                    policy: name,
                    policy_sha256: hash,
                    generation,
                    source: source.token(),
                });
                super::notify::status(self);
                release_freed_memory();
            }
            Err(e) => {
                self.reloading.source = before;
                self.reject(
                    why,
                    vec![format!("installing the policy in the kernel: {e:#}")],
                )
            }
        }
    }

    /// The fallback in force (`source`), compiled again against this host: installed when
    /// its executables now resolve to other files.
    fn resolve_fallback_again(&mut self, source: Source, why: &str) {
        let again = match source {
            Source::Configured => return,
            Source::LastKnownGood => match self.reloading.store.read() {
                Ok(Some(kept)) => kept.compile(&Host::default()),
                Ok(None) => Err(vec!["it is no longer kept".to_string()]),
                Err(e) => Err(vec![format!("{e:#}")]),
            },
            Source::BuiltInDefault => last_known_good::built_in_default(&Host::default()),
        };
        match again {
            Ok(p)
                if self
                    .generations
                    .current()
                    .is_some_and(|(_, c)| c.same_as(&p)) => {}
            Ok(p) => self.put_in_force(
                p,
                source,
                &format!("{why}; the {} resolved again", source.token()),
            ),
            Err(problems) => log::warn!(
                "the {} in force could not be resolved again ({}); it stays as it is",
                source.token(),
                problems.join("; ")
            ),
        }
    }

    /// What follows a policy put in force as `generation` (called by `switch`): one from
    /// the configured files becomes the last known good; the start's fallback is recorded.
    pub(super) fn accepted(&mut self, generation: u32, policy: &CompiledPolicy) {
        if self.reloading.source == Source::Configured {
            match self
                .reloading
                .store
                .save(policy, generation, &self.reloading.path)
            {
                Ok(kept) => {
                    self.reloading.kept = Some((kept.sha256, kept.accepted));
                    self.reloading.kept_error = None;
                }
                Err(e) => {
                    log::warn!("the last known good policy was not kept: {e:#}");
                    self.reloading.kept_error = Some(format!("{e:#}"));
                }
            }
            return;
        }
        let Some(origin) = self.reloading.unannounced.take() else {
            return;
        };
        self.trail.agent(AgentEvent::PolicyFallback {
            configured: self.reloading.path.clone(),
            problems: origin.problems,
            enforced: origin.source.token(),
            policy: policy.name.clone(),
            policy_sha256: policy.hash.clone(),
            generation,
            accepted: origin.accepted,
            last_known_good_unusable: origin.last_known_good_unusable,
        });
    }

    fn reject(&mut self, why: &str, problems: Vec<String>) {
        self.reloading.failed += 1;
        for p in &problems {
            log::error!("policy reload ({why}) rejected: {p}");
        }
        let generation = self.generations.current_generation();
        log::error!(
            "policy reload rejected; generation {generation} ({}) stays in force",
            self.reloading.source.token()
        );
        self.trail.agent(AgentEvent::PolicyRejected {
            reason: why.to_string(),
            problems: problems.clone(),
            generation_in_force: generation,
        });
        self.reloading.last_error = Some(problems);
        super::notify::status(self);
    }
}
