//! The rule names behind the kernel's counters: numbered once per run, and kept where a
//! restarted agent finds them, so that it names the counters it takes over as this one did.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{loader::Guard, policy::identity::RuleIds, policy::CompiledPolicy};

/// The rule ids of this run, and where their names are kept.
pub(super) struct RuleNames {
    pub(super) ids: RuleIds,
    pub(super) path: PathBuf,
}

impl RuleNames {
    /// The names of a fresh start, or those of the agent whose pinned programs `guard` took
    /// over.
    pub(super) fn take_over(guard: &Guard, path: PathBuf) -> anyhow::Result<Self> {
        let inherited = guard.inherited_generation();
        if inherited == 0 {
            return Ok(RuleNames {
                ids: RuleIds::default(),
                path,
            });
        }
        log::info!(
            "taking over from an earlier agent: its policy (generation {inherited}) is enforced until this one is installed; links adopted: {}",
            guard.adopted().join(", ")
        );
        let ids = match load_rule_names(&path) {
            Some(names) => RuleIds::from_names(names),
            None => {
                // The counters are frozen (only the kernel writes them): they stay, under
                // rule ids whose names are lost; new rules are numbered after them.
                let highest = guard
                    .clock
                    .counters()?
                    .iter()
                    .map(|(k, _)| k.rule_id)
                    .max()
                    .unwrap_or(0);
                log::warn!(
                    "the rule names of the kernel's counters are lost ({} missing); counts from before show as rules unknown-1 to unknown-{highest}",
                    path.display()
                );
                RuleIds::from_names((1..=highest).map(|i| format!("unknown-{i}")).collect())
            }
        };
        Ok(RuleNames { ids, path })
    }

    /// Numbers the policy's rules (ids follow rule names for the agent's whole run) and
    /// keeps the names for a restarted agent.
    pub(super) fn number(&mut self, policy: &mut CompiledPolicy) -> anyhow::Result<()> {
        for r in &mut policy.rules {
            r.id = self.ids.id_for(&r.name).map_err(anyhow::Error::msg)?;
        }
        if let Err(e) = save_rule_names(&self.path, self.ids.names()) {
            log::warn!("keeping the rule names for a restarted agent: {e:#}");
        }
        Ok(())
    }
}

/// Where the rule names of a build's counters are kept: beside the control socket (a
/// tmpfs, like the pins: both go at reboot).
pub fn rule_names_path(socket: &Path, build: &str) -> PathBuf {
    socket
        .parent()
        .unwrap_or(Path::new("/run/timeguard"))
        .join(format!("rule-names-{build}.json"))
}

/// The rule names an earlier agent numbered, if it left them.
pub fn load_rule_names(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the rule names (atomically: a new file renamed over the old).
pub fn save_rule_names(path: &Path, names: &[String]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.new");
    std::fs::write(&tmp, serde_json::to_vec(names)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_names_round_trip() {
        let dir = std::env::temp_dir().join(format!("tg-rule-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = rule_names_path(&dir.join("status.sock"), "abc");
        let names = vec!["chronyd".to_string(), "ptp4l".to_string()];
        save_rule_names(&path, &names).expect("save");
        assert_eq!(load_rule_names(&path), Some(names));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
