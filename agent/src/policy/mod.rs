//! Policies: read from YAML, checked with errors that point at the line and say what to
//! write instead, and compiled into what the kernel programs look up.

pub mod diagnostic;
pub mod explain;
pub mod host;
pub mod identity;
pub mod model;
pub mod network;
pub(crate) mod parse;

use std::{
    collections::HashMap,
    fmt::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agent_common::{
    clock::op,
    policy::{Mode as KernelMode, ALLOW_ALL, MAX_RULES},
};
use serde_saphyr::{Location, Spanned};

use diagnostic::Sink;
pub use diagnostic::{Diagnostic, Severity};
pub use host::Host;
use model::{Action, Mode, PolicyDoc};

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
    /// The uids the rule is narrowed to (`match.users`); empty: every user.
    pub uids: Vec<u32>,
    pub allow: u32,
    pub mode: u32,
    /// Largest step allowed (ns); 0: no limit.
    pub max_step_ns: u64,
    /// Largest frequency offset allowed (ppm << 16, the kernel's unit); 0: no limit.
    pub max_frequency: u64,
}

#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// The policy's name (names joined with "+" when a directory holds several).
    pub name: String,
    /// The files it came from.
    pub sources: Vec<PathBuf>,
    /// SHA-256 over the files' names and bytes, as hex.
    pub hash: String,
    pub default_allow: u32,
    pub default_mode: u32,
    pub rules: Vec<CompiledRule>,
    /// Rules that are in the policy but match nothing on this host.
    pub inactive: Vec<String>,
    /// Every rule's executable path, present or not: the agent watches them, so a replaced
    /// or newly installed executable is followed.
    pub watched: Vec<PathBuf>,
    /// Warnings from checking, for the log.
    pub warnings: Vec<Diagnostic>,
    /// `spec.network`, when a policy has one.
    pub network: Option<network::CompiledNetwork>,
    /// `spec.selfProtection` (`KernelMode`), None when off.
    pub self_protection: Option<u32>,
}

impl CompiledPolicy {
    /// Whether `other` is this policy again: the same files, resolving to the same
    /// executables (a replaced executable makes a new policy from the same text).
    pub fn same_as(&self, other: &CompiledPolicy) -> bool {
        let ids = |p: &CompiledPolicy| {
            p.rules
                .iter()
                .map(|r| (r.exe_id, r.uids.clone()))
                .collect::<Vec<_>>()
        };
        self.hash == other.hash && ids(self) == ids(other)
    }

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
        Mode::Enforce => KernelMode::Enforce.code(),
        Mode::Audit => KernelMode::Audit.code(),
    }
}

/// The policy files named by `paths`: files as given, directories by their `*.yaml`/`*.yml`.
pub fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        let mut sink = Sink::new(p.clone());
        match std::fs::metadata(p) {
            Ok(md) if md.is_dir() => match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|f| f.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                        .collect();
                    if found.is_empty() {
                        sink.whole_file("the directory holds no *.yaml policy");
                    }
                    found.sort();
                    files.extend(found);
                }
                Err(e) => sink.whole_file(format!("cannot read the directory: {e}")),
            },
            Ok(_) => files.push(p.clone()),
            Err(e) => sink.whole_file(format!("cannot read the policy: {e}")),
        }
        problems.extend(sink.found);
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(problems)
    }
}

/// One parsed file.
struct Parsed {
    file: PathBuf,
    bytes: Vec<u8>,
    doc: PolicyDoc,
}

/// Reads, checks and compiles the policy made of these files and directories.
/// Errors (and the warnings found with them) come back as diagnostics; a policy with
/// errors is never compiled.
pub fn load(paths: &[PathBuf], host: &Host) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    let files = policy_files(paths)?;
    let mut sources = Vec::new();
    let mut unreadable = Vec::new();
    for file in files {
        match std::fs::read(&file) {
            Ok(bytes) => sources.push((file, bytes)),
            Err(e) => {
                let mut sink = Sink::new(file);
                sink.whole_file(format!("cannot read the policy: {e}"));
                unreadable.extend(sink.found);
            }
        }
    }
    if !unreadable.is_empty() {
        return Err(unreadable);
    }
    load_sources(sources, host)
}

/// Checks and compiles policies already in memory, as (name, bytes): what `load` does after
/// reading the files, and what the fuzz target feeds arbitrary bytes.
pub fn load_sources(
    sources: Vec<(PathBuf, Vec<u8>)>,
    host: &Host,
) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let mut parsed = Vec::new();
    for (file, bytes) in sources {
        let mut sink = Sink::new(file.clone());
        if let Some(doc) = parse::parse(&bytes, &mut sink) {
            parsed.push(Parsed { file, bytes, doc });
        }
        diagnostics.extend(sink.found);
    }
    let compiled = check_and_compile(&parsed, host, &mut diagnostics);
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    match compiled {
        Some(mut policy) if !diagnostics.iter().any(Diagnostic::is_error) => {
            policy.warnings = diagnostics;
            Ok(policy)
        }
        _ => Err(diagnostics),
    }
}

fn check_and_compile(
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
                    crate::events::operation_names(missing).join(", "),
                    d.exe.display(),
                    crate::events::operation_names(d.daemon.needs).join(", "),
                ));
            }
        }
        out.extend(sink.found);
    }

    let mut hasher_input = Vec::new();
    for p in parsed {
        hasher_input.extend(p.file.to_string_lossy().as_bytes());
        hasher_input.push(0);
        hasher_input.extend(&p.bytes);
    }
    Some(CompiledPolicy {
        name: parsed
            .iter()
            .map(|p| p.doc.metadata.name.value.as_str())
            .collect::<Vec<_>>()
            .join("+"),
        sources: parsed.iter().map(|p| p.file.clone()).collect(),
        hash: sha256_hex(&hasher_input),
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
    if let Some(unit) = &rule.matches.unit {
        sink.error(unit.referenced, "match.unit is not enforced by this version of timeguard; remove it (the rule would match outside the unit too)");
    }
    uids
}

pub fn sha256_hex(bytes: &[u8]) -> String {
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

    fn write_policy(text: &str) -> (PathBuf, PathBuf) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tg-policy-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("p.yaml");
        std::fs::write(&file, text).expect("write policy");
        (dir, file)
    }

    fn load_str(text: &str) -> Result<CompiledPolicy, Vec<Diagnostic>> {
        let (dir, file) = write_policy(text);
        // An empty root: no daemons are installed there.
        let r = load(&[file], &Host { root: dir.clone() });
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    const HEAD: &str = "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: t}\nspec:\n";

    #[test]
    fn users_narrow_a_rule_to_their_uids() {
        let (dir, file) = write_policy(&format!("{HEAD}  clock:\n    rules:\n      - name: mine\n        match: {{exe: /p.yaml, users: [_chrony, \"0\"]}}\n        allow: [slew]\n"));
        std::fs::create_dir_all(dir.join("etc")).expect("etc");
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n_chrony:x:105:110::/var/lib/chrony:/usr/sbin/nologin\n",
        )
        .expect("passwd");
        let p = load(std::slice::from_ref(&file), &Host { root: dir.clone() });
        let _ = std::fs::remove_dir_all(&dir);
        let p = p.map_err(|d| format!("{d:?}")).expect("valid policy");
        assert_eq!(p.rules[0].uids, vec![105, 0]);
    }

    #[test]
    fn compiles_rules_to_executable_identities() {
        let (dir, file) = write_policy(&format!("{HEAD}  mode: audit\n  clock:\n    default: deny\n    rules:\n      - name: mine\n        match: {{exe: /p.yaml}}\n        allow: [slew, frequency]\n      - name: gone\n        match: {{exe: /nonexistent/timed}}\n        allow: [step]\n"));
        let p = load(std::slice::from_ref(&file), &Host { root: dir.clone() })
            .map_err(|d| format!("{d:?}"));
        let p = p.expect("valid policy");
        assert_eq!(p.rules.len(), 1);
        let r = &p.rules[0];
        assert_eq!(Some(r.exe_id), ExeId::of(&file).ok());
        assert_eq!(r.allow, op::SLEW | op::FREQUENCY);
        assert_eq!(r.mode, KernelMode::Audit.code());
        assert_eq!(p.default_allow, 0);
        assert_eq!(p.inactive, vec!["gone".to_string()]);
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0]
                .message
                .contains("/nonexistent/timed does not exist"),
            "{}",
            p.warnings[0]
        );
        assert_eq!(p.hash.len(), 64);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_point_at_the_line() {
        let e = load_str(&format!("{HEAD}  clock:\n    rules:\n      - name: a\n        match: {{exe: /bin/sh}}\n        alow: [slew]\n")).err().unwrap_or_default();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].column), (9, 9));
        assert!(
            e[0].message
                .starts_with("unknown key `alow`; did you mean `allow`?"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn kernel_dev_encoding() {
        // st_dev 0x0803 is major 8, minor 3 (sda3).
        let id = ExeId::from_stat(libc::makedev(8, 3), 42);
        assert_eq!(id.dev, (8 << 20) | 3);
        assert_eq!(id.to_string(), "8:3:42");
    }
}
