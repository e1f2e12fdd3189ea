//! Policies: read from YAML, compiled into what the kernel programs look up.

pub mod model;

use std::{
    fmt::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agent_common::policy::{mode, ALLOW_ALL, MAX_RULES};
use anyhow::{bail, Context as _};

use model::{Default_, Mode, PolicyDoc};

/// Largest policy file read; anything bigger is refused before parsing.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// The identity of an executable as the kernel sees it: its file system's `dev_t`
/// (`MKDEV(major, minor)`, 20-bit minor) and inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExeId {
    pub dev: u64,
    pub ino: u64,
}

impl ExeId {
    /// Resolves a path (following symlinks) to the file it names.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let md = std::fs::metadata(path)?;
        Ok(Self::from_stat(md.dev(), md.ino()))
    }

    /// Converts userspace's encoding of `st_dev` to the kernel's internal `dev_t`.
    pub fn from_stat(st_dev: u64, ino: u64) -> Self {
        let major = libc::major(st_dev) as u64;
        let minor = libc::minor(st_dev) as u64;
        ExeId {
            dev: (major << 20) | minor,
            ino,
        }
    }
}

impl std::fmt::Display for ExeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.dev >> 20, self.dev & 0xf_ffff, self.ino)
    }
}

/// A rule ready for the kernel.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// 1-based; 0 is the policy's default.
    pub id: u32,
    pub name: String,
    pub exe: PathBuf,
    pub exe_id: ExeId,
    pub allow: u32,
    pub mode: u32,
}

#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub name: String,
    /// SHA-256 of the file's bytes, as hex.
    pub hash: String,
    pub default_allow: u32,
    pub default_mode: u32,
    pub rules: Vec<CompiledRule>,
    /// Rules that cannot take effect on this host (missing executable), said at load.
    pub warnings: Vec<String>,
}

impl CompiledPolicy {
    /// The name of the rule with this id, as events and metrics show it.
    pub fn rule_name(&self, id: u32) -> &str {
        self.rules
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.name.as_str())
            .unwrap_or("default")
    }
}

fn mode_value(m: Mode) -> u32 {
    match m {
        Mode::Enforce => mode::ENFORCE,
        Mode::Audit => mode::AUDIT,
    }
}

/// Reads and compiles one policy file.
pub fn load(path: &Path) -> anyhow::Result<CompiledPolicy> {
    let md =
        std::fs::metadata(path).with_context(|| format!("reading policy {}", path.display()))?;
    if md.len() > MAX_POLICY_BYTES {
        bail!(
            "policy {} is {} bytes; the limit is {MAX_POLICY_BYTES}",
            path.display(),
            md.len()
        );
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("reading policy {}", path.display()))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "policy {} is not UTF-8 text (byte {})",
            path.display(),
            e.valid_up_to()
        )
    })?;
    let doc: PolicyDoc =
        serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    compile(doc, path, &bytes)
}

fn compile(doc: PolicyDoc, source: &Path, bytes: &[u8]) -> anyhow::Result<CompiledPolicy> {
    if doc.api_version != model::API_VERSION {
        bail!(
            "{}: apiVersion is \"{}\"; write apiVersion: {}",
            source.display(),
            doc.api_version,
            model::API_VERSION
        );
    }
    if doc.kind != model::KIND {
        bail!(
            "{}: kind is \"{}\"; write kind: {}",
            source.display(),
            doc.kind,
            model::KIND
        );
    }
    if doc.spec.clock.rules.len() > MAX_RULES as usize {
        bail!(
            "{}: {} rules; the limit is {MAX_RULES}",
            source.display(),
            doc.spec.clock.rules.len()
        );
    }
    let policy_mode = doc.spec.mode;
    let mut warnings = Vec::new();
    let mut rules: Vec<CompiledRule> = Vec::new();
    for (i, rule) in doc.spec.clock.rules.iter().enumerate() {
        refuse_unenforced(rule, source)?;
        let exe_id = match ExeId::of(&rule.matches.exe) {
            Ok(id) => id,
            Err(e) => {
                warnings.push(format!(
                    "rule \"{}\": {}: {e}; the rule matches nothing on this host",
                    rule.name,
                    rule.matches.exe.display()
                ));
                continue;
            }
        };
        if let Some(other) = rules.iter().find(|r| r.exe_id == exe_id) {
            bail!(
                "{}: rules \"{}\" and \"{}\" name the same executable ({}); merge them into one rule",
                source.display(),
                other.name,
                rule.name,
                rule.matches.exe.display()
            );
        }
        let allow = rule.allow.iter().fold(0, |acc, op| acc | op.0);
        rules.push(CompiledRule {
            id: i as u32 + 1,
            name: rule.name.clone(),
            exe: rule.matches.exe.clone(),
            exe_id,
            allow,
            mode: mode_value(rule.mode.unwrap_or(policy_mode)),
        });
    }
    Ok(CompiledPolicy {
        name: doc.metadata.name,
        hash: sha256_hex(bytes),
        default_allow: match doc.spec.clock.default {
            Default_::Deny => 0,
            Default_::Allow => ALLOW_ALL,
        },
        default_mode: mode_value(policy_mode),
        rules,
        warnings,
    })
}

/// Fields of the policy language this build parses but cannot yet enforce in the kernel are
/// refused: silently ignoring `users` or `maxStep` would make a rule wider than written.
fn refuse_unenforced(rule: &model::Rule, source: &Path) -> anyhow::Result<()> {
    let unenforced = [
        ("match.users", rule.matches.users.is_some()),
        ("match.unit", rule.matches.unit.is_some()),
        ("maxStep", rule.max_step.is_some()),
        ("maxFrequency", rule.max_frequency.is_some()),
        ("leap", rule.leap.is_some()),
    ];
    if let Some((field, _)) = unenforced.iter().find(|(_, present)| *present) {
        bail!(
            "{}: rule \"{}\": {field} is not enforced by this version of timeguard; remove it (allow or leave out the operation instead)",
            source.display(),
            rule.name
        );
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_str(text: &str) -> anyhow::Result<CompiledPolicy> {
        let doc: PolicyDoc = serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        compile(doc, Path::new("test.yaml"), text.as_bytes())
    }

    const SH: &str = "/bin/sh";

    #[test]
    fn compiles_rules_to_executable_identities() -> anyhow::Result<()> {
        let p = compile_str(&format!(
            "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: t}}\nspec:\n  mode: audit\n  clock:\n    default: deny\n    rules:\n      - name: shell\n        match: {{exe: {SH}}}\n        allow: [slew, frequency]\n      - name: gone\n        match: {{exe: /nonexistent/timed}}\n        allow: [step]\n"
        ))?;
        assert_eq!(p.rules.len(), 1);
        let r = &p.rules[0];
        assert_eq!(r.exe_id, ExeId::of(Path::new(SH))?);
        assert_eq!(
            r.allow,
            agent_common::clock::op::SLEW | agent_common::clock::op::FREQUENCY
        );
        assert_eq!(r.mode, mode::AUDIT);
        assert_eq!(p.default_allow, 0);
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("/nonexistent/timed"));
        assert_eq!(p.hash.len(), 64);
        Ok(())
    }

    #[test]
    fn refuses_wrong_api_version_and_duplicates() {
        let e = compile_str(
            "apiVersion: v0\nkind: TimePolicy\nmetadata: {name: t}\nspec: {clock: {}}\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("write apiVersion: timeguard/v1"), "{e}");
        let dup = format!("apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: t}}\nspec:\n  clock:\n    rules:\n      - {{name: a, match: {{exe: {SH}}}, allow: [slew]}}\n      - {{name: b, match: {{exe: {SH}}}, allow: [step]}}\n");
        let e = compile_str(&dup)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("name the same executable"), "{e}");
    }

    #[test]
    fn refuses_what_it_cannot_enforce() {
        let text = format!("apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: t}}\nspec:\n  clock:\n    rules:\n      - {{name: a, match: {{exe: {SH}, users: [root]}}, allow: [slew]}}\n");
        let e = compile_str(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("match.users is not enforced"), "{e}");
    }

    #[test]
    fn kernel_dev_encoding() {
        // st_dev 0x0803 is major 8, minor 3 (sda3).
        let id = ExeId::from_stat(libc::makedev(8, 3), 42);
        assert_eq!(id.dev, (8 << 20) | 3);
        assert_eq!(id.to_string(), "8:3:42");
    }
}
