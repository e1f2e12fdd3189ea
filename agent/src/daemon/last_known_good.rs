//! The last known good policy: the files of the last policy the agent accepted from its
//! configured path, kept under the state directory. A start whose configured policy fails
//! validation enforces it instead of nothing; with none usable, the built-in default.

use std::{
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::policy::{self, CompiledPolicy, Host};

/// Where the agent keeps its state (`timeguard run --state-dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/timeguard";

/// The file under the state directory.
const FILE: &str = "last-known-good.json";

/// The layout of that file; another is not read.
const FORMAT: u32 = 1;

/// A kept policy is a few policy files; anything far bigger is not one.
const MAX_BYTES: u64 = 64 * policy::MAX_POLICY_BYTES;

/// The policy bundled into the binary: only the installed time daemons may discipline the
/// clock, nobody else may change it.
const BUILT_IN_DEFAULT: &str = include_str!("../../../policies/default.yaml");

/// The name the built-in default's one source carries (no such file: it is in the binary).
pub const BUILT_IN_SOURCE: &str = "(built into timeguard) policies/default.yaml";

/// Where the policy in force comes from; `source` in status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The policy files at the configured path.
    Configured,
    /// The configured policy was refused at start; the last one accepted is enforced.
    LastKnownGood,
    /// Neither was usable; the policy built into the binary is enforced.
    BuiltInDefault,
}

impl Source {
    pub const ALL: [Source; 3] = [
        Source::Configured,
        Source::LastKnownGood,
        Source::BuiltInDefault,
    ];

    /// The stable token status, records and metrics carry.
    pub fn token(self) -> &'static str {
        match self {
            Source::Configured => "configured",
            Source::LastKnownGood => "last_known_good",
            Source::BuiltInDefault => "built_in_default",
        }
    }
}

/// The built-in default, checked and compiled against this host.
pub fn built_in_default(host: &Host) -> Result<CompiledPolicy, Vec<String>> {
    policy::load_sources(
        vec![(
            PathBuf::from(BUILT_IN_SOURCE),
            BUILT_IN_DEFAULT.as_bytes().to_vec(),
        )],
        host,
    )
    .map_err(|problems| problems.iter().map(ToString::to_string).collect())
}

/// One policy file as it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptFile {
    pub path: PathBuf,
    pub text: String,
}

/// The last policy accepted: its files' bytes as they were merged, and what named it then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    format: u32,
    pub name: String,
    pub sha256: String,
    pub generation: u32,
    /// When it was accepted (RFC 3339).
    pub accepted: String,
    /// The configured path it came from.
    pub configured: PathBuf,
    pub files: Vec<KeptFile>,
}

impl Kept {
    /// Checks and compiles the kept files again, against this host now: an executable a rule
    /// names may be another file than when the policy was accepted. Bytes that no longer
    /// give the kept hash are corrupt.
    pub fn compile(&self, host: &Host) -> Result<CompiledPolicy, Vec<String>> {
        let sources = self
            .files
            .iter()
            .map(|f| (f.path.clone(), f.text.as_bytes().to_vec()))
            .collect();
        let p = policy::load_sources(sources, host)
            .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        if p.hash != self.sha256 {
            return Err(vec![format!(
                "its files give sha256 {}, not the {} kept with them: the file is corrupt",
                p.hash, self.sha256
            )]);
        }
        Ok(p)
    }
}

/// The last known good policy under a state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    /// The file the policy is kept in.
    pub fn file(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The state directory and the kept file: self-protection guards them like the policy
    /// (a policy planted there would be enforced at the next start with a broken one).
    pub fn protected(&self) -> Vec<PathBuf> {
        vec![self.dir.clone(), self.file()]
    }

    /// Keeps `policy` (just accepted from `configured` as `generation`) as the last known
    /// good, written whole or not at all. Its files are read again and must still give the
    /// policy's hash: a file changed since it was loaded is not kept (the next reload sees
    /// the change).
    pub fn save(
        &self,
        policy: &CompiledPolicy,
        generation: u32,
        configured: &Path,
    ) -> anyhow::Result<Kept> {
        let mut files = Vec::new();
        for path in &policy.sources {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            files.push((path.clone(), bytes));
        }
        let hash = policy::sources_hash(files.iter().map(|(p, b)| (p.as_path(), b.as_slice())));
        if hash != policy.hash {
            anyhow::bail!(
                "the policy files changed since they were loaded; the last known good policy stays as it was"
            );
        }
        let kept = Kept {
            format: FORMAT,
            name: policy.name.clone(),
            sha256: policy.hash.clone(),
            generation,
            accepted: crate::events::rfc3339(std::time::SystemTime::now()),
            configured: configured.to_path_buf(),
            files: files
                .into_iter()
                .map(|(path, bytes)| {
                    String::from_utf8(bytes)
                        .map(|text| KeptFile {
                            path: path.clone(),
                            text,
                        })
                        .with_context(|| format!("{} is not UTF-8", path.display()))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let text =
            serde_json::to_vec_pretty(&kept).context("the last known good policy as JSON")?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        crate::files::replace(&self.file(), &text, 0o600)?;
        Ok(kept)
    }

    /// The policy kept here; None when there is none.
    pub fn read(&self) -> anyhow::Result<Option<Kept>> {
        use std::io::Read as _;
        let path = self.file();
        // Not through a symlink, and never waiting on a FIFO or a device planted there: a
        // start that blocked here would enforce nothing.
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("reading {}", path.display())))
            }
        };
        let is_file = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .is_file();
        if !is_file {
            anyhow::bail!(
                "{} is not a regular file: not a kept policy",
                path.display()
            );
        }
        let mut text = Vec::new();
        file.take(MAX_BYTES + 1)
            .read_to_end(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        if text.len() as u64 > MAX_BYTES {
            anyhow::bail!(
                "{} is larger than {MAX_BYTES} bytes: not a kept policy",
                path.display()
            );
        }
        let kept: Kept = serde_json::from_slice(&text)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        if kept.format != FORMAT {
            anyhow::bail!(
                "{} is of format {}, this agent reads {FORMAT}",
                path.display(),
                kept.format
            );
        }
        Ok(Some(kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory with a policy file whose rule names that file, and the directory
    /// as the host's root (no daemon installed there).
    fn fixture(tag: &str) -> (PathBuf, PathBuf, Host) {
        let dir = std::env::temp_dir().join(format!("tg-lkg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let policy = dir.join("p.yaml");
        std::fs::write(
            &policy,
            "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: kept}\nspec:\n  clock:\n    rules:\n      - name: mine\n        match: {exe: /p.yaml}\n        allow: [slew]\n",
        )
        .expect("write policy");
        (dir.clone(), policy, Host { root: dir })
    }

    #[test]
    fn a_saved_policy_reads_back_and_compiles_to_the_same_hash() {
        let (dir, file, host) = fixture("save");
        let p = policy::load(std::slice::from_ref(&file), &host).expect("valid policy");
        let store = Store::new(&dir.join("state/deeper"));
        assert_eq!(store.read().expect("read"), None, "nothing kept yet");
        let kept = store.save(&p, 7, &file).expect("save");
        // The file changes after it was kept: what is kept is what was accepted.
        std::fs::write(&file, "garbage").expect("overwrite");
        let back = store.read().expect("read").expect("kept");
        assert_eq!(back, kept);
        assert_eq!((back.name.as_str(), back.generation), ("kept", 7));
        let again = back.compile(&host).expect("compiles");
        assert_eq!(again.hash, p.hash);
        assert_eq!(again.sources, vec![file.clone()]);
        assert_eq!(again.rules.len(), 1);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.join("state/deeper"))
            .expect("state dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_changed_since_loading_is_not_kept() {
        let (dir, file, host) = fixture("changed");
        let p = policy::load(std::slice::from_ref(&file), &host).expect("valid policy");
        std::fs::write(&file, "changed").expect("overwrite");
        let store = Store::new(&dir.join("state"));
        let e = store.save(&p, 1, &file).expect_err("not kept");
        assert!(e.to_string().contains("changed since"), "{e}");
        assert_eq!(store.read().expect("read"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_files_are_refused_with_the_reason() {
        let (dir, file, host) = fixture("corrupt");
        let p = policy::load(std::slice::from_ref(&file), &host).expect("valid policy");
        let store = Store::new(&dir.join("state"));
        store.save(&p, 1, &file).expect("save");
        let text = std::fs::read_to_string(store.file()).expect("kept file");
        // Cut short: not JSON.
        std::fs::write(store.file(), &text[..text.len() / 2]).expect("cut");
        let e = store.read().expect_err("corrupt");
        assert!(format!("{e:#}").contains("is corrupt"), "{e:#}");
        // A policy file edited inside it: its hash no longer holds.
        let edited = text.replace("allow: [slew]", "allow: [step]");
        assert_ne!(edited, text);
        std::fs::write(store.file(), &edited).expect("edit");
        let problems = store
            .read()
            .expect("read")
            .expect("kept")
            .compile(&host)
            .expect_err("refused");
        assert!(problems[0].contains("corrupt"), "{problems:?}");
        // Another format.
        let other = text.replace("\"format\": 1", "\"format\": 2");
        assert_ne!(other, text);
        std::fs::write(store.file(), &other).expect("edit");
        let e = store.read().expect_err("another format");
        assert!(e.to_string().contains("format 2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_or_a_symlink_in_its_place_is_refused_without_waiting() {
        let (dir, file, host) = fixture("fifo");
        let p = policy::load(std::slice::from_ref(&file), &host).expect("valid policy");
        let store = Store::new(&dir.join("state"));
        store.save(&p, 1, &file).expect("save");
        let real = dir.join("elsewhere.json");
        std::fs::rename(store.file(), &real).expect("move");
        std::os::unix::fs::symlink(&real, store.file()).expect("symlink");
        assert!(store.read().is_err(), "a symlink is not followed");
        std::fs::remove_file(store.file()).expect("unlink");
        let c = std::ffi::CString::new(store.file().as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        // With no writer, opening a FIFO would block for ever without O_NONBLOCK.
        let e = store.read().expect_err("a FIFO is no kept policy");
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_built_in_default_passes_on_an_empty_host() {
        let (dir, _, host) = fixture("default");
        let p = built_in_default(&host).expect("the built-in default passes");
        assert_eq!(p.name, "default");
        assert_eq!(p.sources, vec![PathBuf::from(BUILT_IN_SOURCE)]);
        // Nothing is installed on this root: every rule is inactive, nobody may change the clock.
        assert!(p.rules.is_empty(), "{:?}", p.rules);
        assert_eq!(p.default_allow, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
