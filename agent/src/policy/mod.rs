//! Policies: read from YAML, checked with errors that point at the line and say what to
//! write instead, and compiled into what the kernel programs look up.

mod compile;
pub mod diagnostic;
pub mod explain;
pub mod host;
pub mod identity;
pub mod model;
pub mod network;
pub(crate) mod parse;

use std::{
    fmt::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agent_common::policy::Mode as KernelMode;
use diagnostic::Sink;
pub use diagnostic::{Diagnostic, Severity};
pub use host::Host;
use model::{Mode, PolicyDoc};

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

    /// The same identity as the kernel programs key their file maps by.
    pub fn key(self) -> agent_common::tamper::FileKey {
        agent_common::tamper::FileKey {
            dev: self.dev,
            ino: self.ino,
        }
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

/// `match.unit`, as the kernel decides it: the unit's cgroup path (or, for a template's
/// instances, their slice's) and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitMatch {
    /// As written: `chrony.service`, `phc2sys@.service`, or a cgroup path.
    pub name: String,
    /// The cgroup path matched: `/system.slice/chrony.service`, or for `phc2sys@.service`
    /// the slice its instances run in, `/system.slice/system-phc2sys.slice`.
    pub cgroup: String,
    pub of_slice: bool,
    pub hash: u64,
}

impl UnitMatch {
    /// A system unit's cgroup, where systemd puts it: `NAME.service` in `system.slice`, a
    /// template's instances `T@I.service` in `system.slice/system-T.slice`; a path starting
    /// with `/` is taken as the cgroup itself (a unit with a `Slice=` of its own).
    pub fn of(unit: &str) -> Result<Self, String> {
        const KINDS: [&str; 2] = [".service", ".scope"];
        let named = |cgroup: String, of_slice: bool| UnitMatch {
            name: unit.to_string(),
            hash: agent_common::integrity::unit_hash(&cgroup),
            cgroup,
            of_slice,
        };
        if unit.starts_with('/') {
            if unit.split('/').any(|p| p == "." || p == "..") || unit.len() < 2 {
                return Err(format!("match.unit `{unit}` is not a cgroup path; write one like /system.slice/chrony.service"));
            }
            return Ok(named(unit.trim_end_matches('/').to_string(), false));
        }
        let Some(kind) = KINDS.iter().find(|k| unit.ends_with(*k)) else {
            return Err(format!("match.unit `{unit}` is not a service or scope unit; write the unit's full name, e.g. chrony.service"));
        };
        let stem = &unit[..unit.len() - kind.len()];
        if stem.is_empty() || stem.contains('/') {
            return Err(format!(
                "match.unit `{unit}` is not a unit name; write one like chrony.service"
            ));
        }
        // systemd's slice of a template's instances: `system-T.slice`, with `-` in T escaped.
        let slice = |template: &str| {
            format!(
                "/system.slice/system-{}.slice",
                template.replace('-', "\\x2d")
            )
        };
        Ok(match stem.split_once('@') {
            // Every instance of a template: the slice systemd makes for them.
            Some((template, "")) if !template.is_empty() => named(slice(template), true),
            Some((template, _instance)) if !template.is_empty() => {
                named(format!("{}/{unit}", slice(template)), false)
            }
            Some(_) => {
                return Err(format!(
                    "match.unit `{unit}` names no template; write one like phc2sys@.service"
                ))
            }
            None => named(format!("/system.slice/{unit}"), false),
        })
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
    /// The systemd unit the rule is narrowed to (`match.unit`).
    pub unit: Option<UnitMatch>,
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
    /// `spec.selfProtection` (`mode::*`), None when off.
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
    let compiled = compile::check_and_compile(&parsed, host, &mut diagnostics);
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    match compiled {
        Some(mut policy) if !diagnostics.iter().any(Diagnostic::is_error) => {
            policy.warnings = diagnostics;
            Ok(policy)
        }
        _ => Err(diagnostics),
    }
}

/// The hash that names a policy: SHA-256 over its files' names and bytes, in order. The
/// agent's status shows it; the last known good policy is checked against it.
pub fn sources_hash<'a>(files: impl IntoIterator<Item = (&'a Path, &'a [u8])>) -> String {
    let mut input = Vec::new();
    for (file, bytes) in files {
        input.extend(file.to_string_lossy().as_bytes());
        input.push(0);
        input.extend(bytes);
    }
    sha256_hex(&input)
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
    use agent_common::{clock::op, policy::Mode as KernelMode};

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
    fn a_unit_is_its_cgroup_where_systemd_puts_it() {
        let cgroup = |u: &str| UnitMatch::of(u).map(|m| (m.cgroup, m.of_slice));
        assert_eq!(
            cgroup("chrony.service"),
            Ok(("/system.slice/chrony.service".into(), false))
        );
        assert_eq!(
            cgroup("phc2sys@.service"),
            Ok(("/system.slice/system-phc2sys.slice".into(), true))
        );
        assert_eq!(
            cgroup("phc2sys@eth0.service"),
            Ok((
                "/system.slice/system-phc2sys.slice/phc2sys@eth0.service".into(),
                false
            ))
        );
        assert_eq!(
            cgroup("ntp-a@.service"),
            Ok(("/system.slice/system-ntp\\x2da.slice".into(), true))
        );
        assert_eq!(
            cgroup("/custom.slice/chrony.service/"),
            Ok(("/custom.slice/chrony.service".into(), false))
        );
        for bad in [
            "chrony",
            "@.service",
            ".service",
            "/",
            "/a/../b",
            "a/b.service",
        ] {
            assert!(UnitMatch::of(bad).is_err(), "{bad}");
        }
        let m = UnitMatch::of("chrony.service").unwrap();
        assert_eq!(
            m.hash,
            agent_common::integrity::unit_hash("/system.slice/chrony.service")
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
