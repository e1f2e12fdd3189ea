//! Following the policy: what identifies the policy in force (its fingerprint), the policies
//! kept by generation, and reloading without a gap (a policy that fails is rejected whole,
//! and the one in force stays).

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::{
    policy::{self, CompiledPolicy},
    records::AgentEvent,
};

use super::{agent::Agent, release_freed_memory};

/// Policies kept to name the rules of events decided under an older generation.
const GENERATIONS_KEPT: usize = 4;

/// Loads and checks the policy; errors refuse it, with every diagnostic.
pub(super) fn load_policy(path: &Path) -> Result<CompiledPolicy, Vec<String>> {
    policy::load(&[path.to_path_buf()], &policy::Host::default())
        .map_err(|problems| problems.iter().map(|d| d.to_string()).collect())
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
    pub(super) path: PathBuf,
    pub(super) fingerprint: Fingerprint,
    pub(super) ok: u64,
    pub(super) failed: u64,
    /// The problems of the last rejected reload, until one succeeds.
    pub(super) last_error: Option<Vec<String>>,
}

impl Reloading {
    pub(super) fn new(path: &Path, policy: &CompiledPolicy) -> Self {
        Reloading {
            path: path.to_path_buf(),
            fingerprint: Fingerprint::of(path, &policy.watched),
            ok: 0,
            failed: 0,
            last_error: None,
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

    /// Loads the policy again; a policy that fails validation is rejected and the one in
    /// force stays, whole.
    pub(super) fn reload(&mut self, why: &str) {
        self.reloading.fingerprint = self.fingerprint_now();
        match load_policy(&self.reloading.path) {
            Ok(p)
                if self
                    .generations
                    .current()
                    .is_some_and(|(_, c)| c.same_as(&p)) =>
            {
                log::info!(
                    "policy reload ({why}): unchanged (sha256 {})",
                    &p.hash[..16]
                );
            }
            Ok(p) => {
                let name = p.name.clone();
                let hash = p.hash.clone();
                match self.install(p) {
                    Ok(generation) => {
                        // The new policy may name other executables.
                        self.reloading.fingerprint = self.fingerprint_now();
                        self.reloading.ok += 1;
                        self.reloading.last_error = None;
                        self.trail.agent(AgentEvent::PolicyLoaded {
                            reason: why.to_string(),
                            policy: name,
                            policy_sha256: hash,
                            generation,
                        });
                        super::notify::status(self);
                        release_freed_memory();
                    }
                    Err(e) => self.reject(
                        why,
                        vec![format!("installing the policy in the kernel: {e:#}")],
                    ),
                }
            }
            Err(problems) => self.reject(why, problems),
        }
    }

    fn reject(&mut self, why: &str, problems: Vec<String>) {
        self.reloading.failed += 1;
        for p in &problems {
            log::error!("policy reload ({why}) rejected: {p}");
        }
        let generation = self.generations.current_generation();
        log::error!("policy reload rejected; generation {generation} stays in force");
        self.trail.agent(AgentEvent::PolicyRejected {
            reason: why.to_string(),
            problems: problems.clone(),
            generation_in_force: generation,
        });
        self.reloading.last_error = Some(problems);
        super::notify::status(self);
    }
}
