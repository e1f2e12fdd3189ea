//! The identity and integrity of rule processes, the agent's half: the system's library
//! directories, by which the kernel tells a rule process's own code from foreign code
//! (`agent_common::integrity`; the taints themselves are kept by the kernel alone).
//!
//! A library directory is one the dynamic loader searches by default (`/lib`, `/lib64`,
//! `/usr/lib`, `/usr/lib64`) or one `/etc/ld.so.conf` names (with its `include`s), and
//! every directory up to `LIBRARY_DIR_DEPTH` below one. A directory that someone other
//! than root owns or may write is left out, and said.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agent_common::{
    integrity::{unit_hash, Taint, TaintReason, UnitMark, LIBRARY_DIRS_MAX, LIBRARY_DIR_DEPTH},
    maps as map_names,
    tamper::FileKey,
};
use anyhow::Context as _;
use aya::maps::{HashMap, MapData};

use crate::{bpf::object::Object, policy::ExeId};

/// Where the dynamic loader looks without being told.
const DEFAULT_DIRS: [&str; 4] = ["/lib", "/lib64", "/usr/lib", "/usr/lib64"];
/// The loader's configuration, relative to the root.
const LD_SO_CONF: &str = "etc/ld.so.conf";
/// `include` lines followed at most this deep (a loop in the files ends here).
const INCLUDE_DEPTH: usize = 4;

pub struct Identity {
    library_dirs: HashMap<MapData, FileKey, u32>,
    /// The library directories that count now (`refresh_library_dirs`).
    counted_dirs: Vec<FileKey>,
    /// Files rule processes run as code: noted by the kernel as they are mapped, and here
    /// for processes that mapped them before a rule named their executable (`seed_code`).
    rule_code: HashMap<MapData, FileKey, u32>,
    /// Written by the kernel only, but for the seeds at a first load (`seed_traced`,
    /// `seed_units`).
    process_taint: HashMap<MapData, u32, Taint>,
    unit_of: HashMap<MapData, u32, UnitMark>,
}

/// A directory found and whether it counts.
#[derive(Debug, PartialEq, Eq)]
pub enum LibraryDir {
    Counted(PathBuf, ExeId),
    /// Named, but someone other than root may change what is in it.
    Untrusted(PathBuf, String),
}

impl Identity {
    pub fn new(object: &mut Object) -> anyhow::Result<Self> {
        Ok(Identity {
            library_dirs: object.take_map(map_names::LIBRARY_DIRS)?,
            counted_dirs: Vec::new(),
            rule_code: object.take_map(map_names::RULE_CODE)?,
            process_taint: object.take_map(map_names::PROCESS_TAINT)?,
            unit_of: object.take_map(map_names::UNIT_OF)?,
        })
    }

    /// At a first load, with the programs attached: the processes already running in a
    /// unit's cgroup that the service manager started there (forked by PID 1, or by such a
    /// process in the same cgroup) are of that unit. One moved there by hand before the
    /// guard started cannot be told from them if its parent is PID 1 (an orphan).
    pub fn seed_units(&mut self) -> anyhow::Result<usize> {
        let units = units_of(&processes(Path::new("/proc")));
        for (pid, cgroup) in &units {
            let Some(id) = cgroup_id(cgroup) else {
                continue;
            };
            let parent = cgroup.rsplit_once('/').map_or("", |(p, _)| p);
            let mark = UnitMark {
                cgroup_id: id,
                unit_hash: unit_hash(cgroup),
                slice_hash: unit_hash(parent),
            };
            self.unit_of
                .insert(pid, mark, 0)
                .with_context(|| format!("marking process {pid} as of {cgroup}"))?;
        }
        Ok(units.len())
    }

    /// At a first load, with the programs attached (from now on an attach taints) and before
    /// the taints are frozen against userspace: the processes already traced taint as if
    /// the attach had been seen. Those traced and let go before cannot be known.
    pub fn seed_traced(&mut self) -> anyhow::Result<Vec<(u32, u32)>> {
        let traced = traced_processes(Path::new("/proc"));
        for &(pid, tracer) in &traced {
            let taint = Taint {
                reasons: TaintReason::Traced.code(),
                source_tgid: tracer,
                file_dev: 0,
                file_ino: 0,
            };
            self.process_taint
                .insert(pid, taint, 0)
                .with_context(|| format!("tainting process {pid}, traced by {tracer}"))?;
        }
        Ok(traced)
    }

    /// Tells the kernel the library directories as they are now (at start and at every
    /// reload), and says which ones count.
    pub fn refresh_library_dirs(&mut self) -> anyhow::Result<()> {
        // In the order found: the first LIBRARY_DIRS_MAX count when there are more.
        let mut counted: Vec<FileKey> = Vec::new();
        let mut names = Vec::new();
        for dir in library_dirs(Path::new("/"), 0) {
            match dir {
                LibraryDir::Counted(path, id) => {
                    let key = id.key();
                    if !counted.contains(&key) {
                        counted.push(key);
                        names.push(path.display().to_string());
                    }
                }
                LibraryDir::Untrusted(path, why) => log::warn!(
                    "{} is not counted as a library directory: {why}; code a rule process maps from it takes its rule",
                    path.display()
                ),
            }
        }
        if counted.len() > LIBRARY_DIRS_MAX as usize {
            log::warn!(
                "{} library directories, of which the first {LIBRARY_DIRS_MAX} count",
                counted.len()
            );
            counted.truncate(LIBRARY_DIRS_MAX as usize);
            names.truncate(LIBRARY_DIRS_MAX as usize);
        }
        let stale: Vec<FileKey> = self
            .library_dirs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !counted.contains(k))
            .collect();
        for key in stale {
            self.library_dirs
                .remove(&key)
                .context("removing a library directory")?;
        }
        for key in &counted {
            self.library_dirs
                .insert(key, 1, 0)
                .context("writing the library directories")?;
        }
        log::info!(
            "library directories (code a rule process maps from elsewhere, or changed there since the policy loaded, takes its rule): {}",
            names.join(", ")
        );
        self.counted_dirs = counted;
        Ok(())
    }

    /// With a policy just in force: the processes its rules name that were running before,
    /// their code judged as the kernel judges a mapping (`/proc/PID/maps`). Their own
    /// executable and unchanged system libraries are noted as code no one may write while
    /// mapped; any other code taints the process. A taint that cannot be written (the map is
    /// frozen after the first load) is said, with the process to restart.
    pub fn seed_code(&mut self, rule_exes: &[ExeId], code_vouched_sec: i64) -> CodeSeed {
        let mut seed = CodeSeed::default();
        let (running, unreadable) = processes_running(Path::new("/proc"), rule_exes);
        seed.unreadable = unreadable;
        for (pid, exe) in running {
            let codes = mapped_code(Path::new("/proc"), pid);
            // What /proc calls its executable can have been renamed (PR_SET_MM_EXE_FILE,
            // before the guard refused it): then the code it runs is not that file.
            if !runs_its_executable(&codes, exe) {
                let said = format!("process {pid} does not run its executable {exe} as code (renamed by PR_SET_MM)");
                self.seed_taint(pid, TaintReason::ForeignCode, exe.key(), said, &mut seed);
            }
            for code in codes {
                let judged = judge_code(&code, exe, &|p| self.in_library_dir(p), code_vouched_sec);
                let key = code.id.key();
                match judged {
                    None => match self.rule_code.insert(key, 1, 0) {
                        Ok(()) => seed.vouched += 1,
                        Err(e) => log::warn!(
                            "{} (mapped by rule process {pid}) can be written under it: {e}",
                            code.path
                        ),
                    },
                    Some(reason) => {
                        let said = format!("process {pid} runs {} ({})", code.path, reason.name());
                        self.seed_taint(pid, reason, key, said, &mut seed);
                    }
                }
            }
        }
        seed
    }

    /// Taints process `pid` for `reason` and the file `key` unless it is tainted already
    /// (one taint per process is enough: the first code found is named).
    fn seed_taint(
        &mut self,
        pid: u32,
        reason: TaintReason,
        key: FileKey,
        said: String,
        seed: &mut CodeSeed,
    ) {
        if self.process_taint.get(&pid, 0).is_ok() {
            return;
        }
        let taint = Taint {
            reasons: reason.code(),
            source_tgid: 0,
            file_dev: key.dev,
            file_ino: key.ino,
        };
        match self.process_taint.insert(pid, taint, 0) {
            Ok(()) => seed.tainted.push(said),
            Err(e) => seed.untainted.push(format!("{said}: {e}")),
        }
    }

    /// Whether `path` lies at most `LIBRARY_DIR_DEPTH` levels below a counted library
    /// directory, by the directories' identities (as the kernel walks them): then the latest
    /// change time of the directories between them (0 for none).
    fn in_library_dir(&self, path: &Path) -> Option<i64> {
        let mut latest = 0;
        for dir in path.ancestors().skip(1).take(LIBRARY_DIR_DEPTH as usize) {
            let md = std::fs::metadata(dir).ok()?;
            if self
                .counted_dirs
                .contains(&ExeId::from_stat(md.dev(), md.ino()).key())
            {
                return Some(latest);
            }
            latest = latest.max(md.ctime());
        }
        None
    }
}

/// What `Identity::seed_code` did.
#[derive(Debug, Default)]
pub struct CodeSeed {
    /// Files noted as rule processes' code.
    pub vouched: usize,
    /// Processes tainted, each with the code that did it.
    pub tainted: Vec<String>,
    /// Processes that run foreign code and keep their rule until restarted (why).
    pub untainted: Vec<String>,
    /// Processes whose executable could not be read: not judged.
    pub unreadable: Vec<u32>,
}

/// One executable mapping of a process, as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedCode {
    /// The file's path (` (deleted)` taken off), or the kind of memory (`[anon]`, `[heap]`…).
    pub path: String,
    /// The mapped file's identity (0, 0 for memory backed by no file).
    pub id: ExeId,
    /// Writable as well as executable.
    pub writable: bool,
    /// The mapped inode's change time (seconds), when it could be read.
    pub ctime: Option<i64>,
}

/// The processes under `proc` running one of `exes`: (pid, its executable); and those whose
/// executable could not be read (kernel threads have none, and are not counted).
fn processes_running(proc: &Path, exes: &[ExeId]) -> (Vec<(u32, ExeId)>, Vec<u32>) {
    let mut running = Vec::new();
    let mut unreadable = Vec::new();
    for pid in pids(proc) {
        let dir = proc.join(pid.to_string());
        match ExeId::of(&dir.join("exe")) {
            Ok(exe) if exes.contains(&exe) => running.push((pid, exe)),
            Ok(_) => {}
            // A kernel thread has no executable, but a command line of none either; a
            // process that ended meanwhile has neither.
            Err(_) if std::fs::read(dir.join("cmdline")).is_ok_and(|c| !c.is_empty()) => {
                unreadable.push(pid)
            }
            Err(_) => {}
        }
    }
    (running, unreadable)
}

/// The executable mappings of process `pid`; the file behind each is read through
/// `map_files`, which names the mapped inode even when its path was replaced.
fn mapped_code(proc: &Path, pid: u32) -> Vec<MappedCode> {
    let dir = proc.join(pid.to_string());
    let Ok(maps) = std::fs::read_to_string(dir.join("maps")) else {
        return Vec::new();
    };
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, perms, _offset, dev, inode) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let path: String = f.collect::<Vec<_>>().join(" ");
            if !perms.contains('x') {
                return None;
            }
            let inode: u64 = inode.parse().ok()?;
            let (major, minor) = dev.split_once(':')?;
            let st_dev = libc::makedev(
                u32::from_str_radix(major, 16).ok()?,
                u32::from_str_radix(minor, 16).ok()?,
            );
            let md = std::fs::metadata(dir.join("map_files").join(range)).ok();
            Some(MappedCode {
                path: path.trim_end_matches(" (deleted)").to_string(),
                id: ExeId::from_stat(st_dev, inode),
                writable: perms.contains('w'),
                ctime: md.map(|m| m.ctime()),
            })
        })
        .collect()
}

/// Whether a process's executable mappings include its executable file, unwritable: the
/// kernel maps it at exec, and a process whose executable was renamed afterwards
/// (`PR_SET_MM_EXE_FILE`, which wants the old image unmapped) does not have it.
pub fn runs_its_executable(codes: &[MappedCode], exe: ExeId) -> bool {
    codes.iter().any(|c| c.id == exe && !c.writable)
}

/// Judges one executable mapping of a rule process whose executable is `exe`, as the kernel
/// does (`mapped_as_code`): None when it is the process's own code, or why it is not.
pub fn judge_code(
    code: &MappedCode,
    exe: ExeId,
    in_library_dir: &dyn Fn(&Path) -> Option<i64>,
    code_vouched_sec: i64,
) -> Option<TaintReason> {
    // The kernel's own pages, in every process.
    if code.id.ino == 0 && matches!(code.path.as_str(), "[vdso]" | "[vsyscall]" | "[vvar]") {
        return None;
    }
    if code.id.ino == 0 || code.writable {
        return Some(TaintReason::ForeignCode);
    }
    if code.id == exe {
        return None;
    }
    let Some(dirs_changed) = in_library_dir(Path::new(&code.path)) else {
        return Some(TaintReason::ForeignCode);
    };
    match code.ctime {
        Some(t) if code_vouched_sec != 0 && t.max(dirs_changed) < code_vouched_sec => None,
        _ => Some(TaintReason::ModifiedCode),
    }
}

/// The process ids under `proc` (a procfs); none when it cannot be read.
fn pids(proc: &Path) -> impl Iterator<Item = u32> {
    std::fs::read_dir(proc)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// The processes under `proc` (a procfs) that a tracer holds now, in any of their threads
/// (one is attached by its thread id): (pid, tracer pid).
pub fn traced_processes(proc: &Path) -> Vec<(u32, u32)> {
    let tracer_of = |status: &Path| {
        let status = std::fs::read_to_string(status).ok()?;
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))?
            .trim()
            .parse::<u32>()
            .ok()?;
        (tracer != 0).then_some(tracer)
    };
    let mut traced: Vec<(u32, u32)> = pids(proc)
        .filter_map(|pid| {
            // A process that ended meanwhile is simply not there.
            let dir = proc.join(pid.to_string());
            let threads = std::fs::read_dir(dir.join("task")).into_iter().flatten();
            let tracer = threads
                .filter_map(Result::ok)
                .find_map(|t| tracer_of(&t.path().join("status")))
                .or_else(|| tracer_of(&dir.join("status")))?;
            Some((pid, tracer))
        })
        .collect();
    traced.sort_unstable();
    traced
}

/// A process as /proc shows it: its parent and its cgroup on the unified hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub cgroup: String,
}

/// Every process under `proc` with its parent and cgroup (those that end meanwhile left out).
pub fn processes(proc: &Path) -> Vec<Process> {
    pids(proc)
        .filter_map(|pid| {
            let dir = proc.join(pid.to_string());
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))?
                .trim()
                .parse()
                .ok()?;
            let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok()?;
            let cgroup = cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::"))?
                .to_string();
            Some(Process { pid, ppid, cgroup })
        })
        .collect()
}

/// The processes of a unit and their cgroups: forked by PID 1 into a cgroup other than the
/// root, or by a process of a unit in the same cgroup.
pub fn units_of(procs: &[Process]) -> Vec<(u32, String)> {
    let by_pid: std::collections::HashMap<u32, &Process> =
        procs.iter().map(|p| (p.pid, p)).collect();
    let of_unit = |p: &Process| {
        let mut at = p;
        // Up the tree while in the same cgroup, to a child of PID 1; bounded against loops.
        for _ in 0..procs.len() {
            if at.ppid == 1 {
                return at.cgroup != "/";
            }
            match by_pid.get(&at.ppid) {
                Some(parent) if parent.cgroup == p.cgroup => at = parent,
                _ => return false,
            }
        }
        false
    };
    let mut out: Vec<(u32, String)> = procs
        .iter()
        .filter(|p| of_unit(p))
        .map(|p| (p.pid, p.cgroup.clone()))
        .collect();
    out.sort();
    out
}

/// A cgroup's id: its directory's inode on the cgroup2 file system.
fn cgroup_id(cgroup: &str) -> Option<u64> {
    let dir = Path::new("/sys/fs/cgroup").join(cgroup.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// The library directories under `root` (`/` but in tests): the defaults, then those
/// `ld.so.conf` names, each once, those that do not exist left out; those not owned by
/// `owner` (root but in tests) or that others may write do not count.
pub fn library_dirs(root: &Path, owner: u32) -> Vec<LibraryDir> {
    let mut named: Vec<PathBuf> = DEFAULT_DIRS.iter().map(PathBuf::from).collect();
    conf_dirs(root, &root.join(LD_SO_CONF), 0, &mut named);
    let mut seen = BTreeSet::new();
    named
        .into_iter()
        .filter(|p| seen.insert(p.clone()))
        .filter_map(|path| {
            let on_disk = root.join(path.strip_prefix("/").unwrap_or(&path));
            // Following symlinks: /lib is usr/lib on a merged /usr, and counts as that.
            let md = std::fs::metadata(&on_disk).ok()?;
            if !md.is_dir() {
                return None;
            }
            Some(if md.uid() != owner {
                LibraryDir::Untrusted(path, format!("it is owned by uid {}", md.uid()))
            } else if md.mode() & 0o022 != 0 {
                LibraryDir::Untrusted(
                    path,
                    format!("its mode {:o} lets others write", md.mode() & 0o7777),
                )
            } else {
                LibraryDir::Counted(path, ExeId::from_stat(md.dev(), md.ino()))
            })
        })
        .collect()
}

/// The directories one `ld.so.conf` file names, its `include`s followed.
fn conf_dirs(root: &Path, file: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(pattern) = line.strip_prefix("include") {
            if depth < INCLUDE_DEPTH {
                for f in glob_files(root, pattern.trim()) {
                    conf_dirs(root, &f, depth + 1, out);
                }
            }
        } else if line.starts_with('/') {
            // `dir=TYPE` (libc5 days) names a type after the directory.
            let dir = line
                .split(['=', ' ', '\t', ':', ','])
                .next()
                .unwrap_or(line);
            out.push(PathBuf::from(dir));
        }
    }
}

/// The files a pattern of `include` names, sorted: a `*` only in the last component, as
/// Debian's `include /etc/ld.so.conf.d/*.conf`.
fn glob_files(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let pattern = Path::new(pattern);
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
        return Vec::new();
    };
    let dir = root.join(dir.strip_prefix("/").unwrap_or(dir));
    let name = name.to_string_lossy();
    let (prefix, suffix) = name.split_once('*').unwrap_or((&name, ""));
    let exact = !name.contains('*');
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| {
            if exact {
                f == prefix
            } else {
                f.len() >= prefix.len() + suffix.len()
                    && f.starts_with(prefix)
                    && f.ends_with(suffix)
            }
        })
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn names(dirs: &[LibraryDir]) -> Vec<String> {
        dirs.iter()
            .map(|d| match d {
                LibraryDir::Counted(p, _) => p.display().to_string(),
                LibraryDir::Untrusted(p, why) => format!("{} ({why})", p.display()),
            })
            .collect()
    }

    #[test]
    fn defaults_then_ld_so_conf_and_its_includes() {
        let root = scratch("conf");
        let r = root.as_path();
        for d in [
            "lib",
            "usr/lib",
            "usr/local/lib",
            "opt/vendor/lib",
            "etc/ld.so.conf.d",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(
            r.join("etc/ld.so.conf"),
            "# comment\ninclude /etc/ld.so.conf.d/*.conf\n/usr/lib\n",
        )
        .unwrap();
        std::fs::write(
            r.join("etc/ld.so.conf.d/b.conf"),
            "/opt/vendor/lib # vendor\n",
        )
        .unwrap();
        std::fs::write(
            r.join("etc/ld.so.conf.d/a.conf"),
            "/usr/local/lib\n/missing\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/ld.so.conf.d/a.conf.bak"), "/etc\n").unwrap();
        assert_eq!(
            names(&library_dirs(r, me())),
            ["/lib", "/usr/lib", "/usr/local/lib", "/opt/vendor/lib"]
        );
        // Owned by someone else, none counts.
        assert!(library_dirs(r, me() + 1)
            .iter()
            .all(|d| matches!(d, LibraryDir::Untrusted(..))));
    }

    #[test]
    fn a_directory_others_may_write_does_not_count() {
        let root = scratch("mode");
        let r = root.as_path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::set_permissions(r.join("usr/lib"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        assert_eq!(
            names(&library_dirs(r, me())),
            ["/usr/lib (its mode 1777 lets others write)"]
        );
    }

    #[test]
    fn traced_processes_are_read_from_tracer_pid() {
        let proc = scratch("proc");
        for (pid, tracer) in [("10", "0"), ("11", "10"), ("12", "4")] {
            std::fs::create_dir_all(proc.join(pid)).unwrap();
            std::fs::write(
                proc.join(pid).join("status"),
                format!("Name:\tx\nState:\tS\nTracerPid:\t{tracer}\nUid:\t0\n"),
            )
            .unwrap();
        }
        // A process one of whose threads (not the leader) is traced.
        for (tid, tracer) in [("14", "0"), ("15", "3")] {
            let task = proc.join("14/task").join(tid);
            std::fs::create_dir_all(&task).unwrap();
            std::fs::write(task.join("status"), format!("TracerPid:\t{tracer}\n")).unwrap();
        }
        std::fs::write(proc.join("14/status"), "TracerPid:\t0\n").unwrap();
        // Not a process, and a process without a status.
        std::fs::create_dir_all(proc.join("self-ish")).unwrap();
        std::fs::create_dir_all(proc.join("13")).unwrap();
        assert_eq!(traced_processes(&proc), [(11, 10), (12, 4), (14, 3)]);
    }

    #[test]
    fn a_unit_is_what_pid_1_started_in_its_cgroup() {
        let p = |pid, ppid, cgroup: &str| Process {
            pid,
            ppid,
            cgroup: cgroup.into(),
        };
        let procs = [
            p(1, 0, "/init.scope"),
            // chronyd and its helper child.
            p(500, 1, "/system.slice/chrony.service"),
            p(501, 500, "/system.slice/chrony.service"),
            // sshd, and a root shell of it that moved itself into chrony's cgroup, and its
            // child there.
            p(600, 1, "/system.slice/ssh.service"),
            p(601, 600, "/system.slice/chrony.service"),
            p(602, 601, "/system.slice/chrony.service"),
            // A kernel thread's parent is 2, in the root cgroup.
            p(2, 0, "/"),
            p(3, 2, "/"),
        ];
        assert_eq!(
            units_of(&procs),
            [
                (500, "/system.slice/chrony.service".to_string()),
                (501, "/system.slice/chrony.service".to_string()),
                (600, "/system.slice/ssh.service".to_string()),
            ]
        );
    }

    /// A fresh directory of this test's own.
    const EXE: ExeId = ExeId {
        dev: 0xfd << 20 | 1,
        ino: 42,
    };
    const LOADED: i64 = 1_000;

    fn code(path: &str, ino: u64, writable: bool, ctime: Option<i64>) -> MappedCode {
        MappedCode {
            path: path.into(),
            id: ExeId {
                dev: if ino == 0 { 0 } else { EXE.dev },
                ino,
            },
            writable,
            ctime,
        }
    }

    fn judged(c: &MappedCode) -> Option<&'static str> {
        // /usr/lib counts; its directory `moved` came after the policy loaded.
        let in_lib = |p: &Path| {
            p.starts_with("/usr/lib")
                .then_some(if p.starts_with("/usr/lib/moved") {
                    LOADED
                } else {
                    0
                })
        };
        judge_code(c, EXE, &in_lib, LOADED).map(TaintReason::name)
    }

    #[test]
    fn a_rule_process_keeps_its_own_code_and_unchanged_system_libraries() {
        assert_eq!(
            judged(&code("/usr/sbin/chronyd", 42, false, Some(5_000))),
            None
        );
        let libc = code("/usr/lib/x86_64-linux-gnu/libc.so.6", 7, false, Some(999));
        assert_eq!(judged(&libc), None);
        assert_eq!(judged(&code("[vdso]", 0, false, None)), None);
    }

    #[test]
    fn other_code_takes_the_rule_with_its_reason() {
        // Outside the library directories, whatever its age.
        assert_eq!(
            judged(&code("/tmp/x.so", 9, false, Some(1))),
            Some("foreign_code")
        );
        // Memory of no file, and a system library mapped writable.
        assert_eq!(judged(&code("", 0, false, None)), Some("foreign_code"));
        assert_eq!(
            judged(&code(
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                7,
                true,
                Some(1)
            )),
            Some("foreign_code")
        );
        // Its own executable mapped writable is not its code either.
        assert_eq!(
            judged(&code("/usr/sbin/chronyd", 42, true, Some(1))),
            Some("foreign_code")
        );
        // A library changed at or after the policy's load, or of unknown age.
        for ctime in [Some(LOADED), Some(LOADED + 1), None] {
            assert_eq!(
                judged(&code("/usr/lib/libx.so", 8, false, ctime)),
                Some("modified_code")
            );
        }
        // An old file in a directory moved in since.
        assert_eq!(
            judged(&code("/usr/lib/moved/libx.so", 8, false, Some(1))),
            Some("modified_code")
        );
        // Before any policy loaded, nothing counts as unchanged.
        let lib = code("/usr/lib/libx.so", 8, false, Some(1));
        assert_eq!(
            judge_code(&lib, EXE, &|_| Some(0), 0).map(TaintReason::name),
            Some("modified_code")
        );
    }

    #[test]
    fn a_process_not_running_its_executable_is_told() {
        let own = [
            code("/usr/sbin/chronyd", 42, false, None),
            code("/usr/lib/libc.so.6", 7, false, None),
        ];
        assert!(runs_its_executable(&own, EXE));
        // Renamed by PR_SET_MM_EXE_FILE: the code is a stub of no file, or another file.
        let renamed = [
            code("", 0, false, None),
            code("/usr/lib/libc.so.6", 7, false, None),
        ];
        assert!(!runs_its_executable(&renamed, EXE));
        assert!(!runs_its_executable(
            &[code("/usr/sbin/chronyd", 42, true, None)],
            EXE
        ));
    }

    #[test]
    fn executable_mappings_are_read_from_proc_maps() {
        let proc = scratch("maps");
        std::fs::create_dir_all(proc.join("77")).unwrap();
        std::fs::write(
            proc.join("77/maps"),
            "55d0a0000000-55d0a0010000 r--p 00000000 fd:01 42 /usr/sbin/chronyd\n\
             55d0a0010000-55d0a0050000 r-xp 00010000 fd:01 42 /usr/sbin/chronyd\n\
             7f0000000000-7f0000020000 r-xp 00000000 fd:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)\n\
             7f0000100000-7f0000101000 rwxp 00000000 00:00 0 \n\
             7f0000200000-7f0000201000 r-xp 00000000 00:1f 9 /tmp/my lib.so\n\
             7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]\n",
        )
        .unwrap();
        let found = mapped_code(&proc, 77);
        let seen: Vec<(&str, u64, u64, bool)> = found
            .iter()
            .map(|c| (c.path.as_str(), c.id.dev, c.id.ino, c.writable))
            .collect();
        assert_eq!(
            seen,
            [
                ("/usr/sbin/chronyd", 0xfd << 20 | 1, 42, false),
                (
                    "/usr/lib/x86_64-linux-gnu/libc.so.6",
                    0xfd << 20 | 1,
                    7,
                    false
                ),
                ("", 0, 0, true),
                ("/tmp/my lib.so", 0x1f, 9, false),
                ("[vdso]", 0, 0, false),
            ]
        );
        // No map_files here: the mapped inodes' ages are unknown (modified_code, fail closed).
        assert!(found.iter().all(|c| c.ctime.is_none()));
        assert!(mapped_code(&proc, 78).is_empty());
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tg-libdirs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn me() -> u32 {
        // SAFETY: a getter without arguments.
        unsafe { libc::geteuid() }
    }
}
