//! `timeguard apply`: the agent's own way of changing the policy, which self-protection
//! leaves open (the policy files are written by this executable only).
//!
//! 1. The policy is checked as it will be after the change, by the agent's own loader: the
//!    destination directory's `*.yaml`/`*.yml` with FILE in place of (or added under) its
//!    name; when the destination is a file, FILE alone. Invalid: exit 1, nothing changed.
//! 2. FILE is written into place (a new file, synced, renamed over the old).
//! 3. The running agent is asked to reload (on its socket) and its status read until it enforces
//!    exactly this policy (exit 0) or reports a rejected reload (exit 2: the previous file
//!    is put back, so that a file the agent refused never waits on disk for the next start).
//!    No agent, or no verdict within `--timeout`: exit 3, the file stays.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    daemon::{
        self,
        control::{ask, Request},
    },
    policy::{self, CompiledPolicy, Host},
    report::status::Status,
};

/// What `apply` ends with (its exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The agent enforces the applied policy (or, with --no-wait, it is written).
    Applied = 0,
    /// The policy would be invalid, or it cannot be applied there: nothing was changed.
    Invalid = 1,
    /// The agent rejected it; the previous file is back in place.
    Rejected = 2,
    /// No agent answered, or no verdict came in time; the file stays written.
    Unconfirmed = 3,
}

#[derive(clap::Args)]
#[command(
    after_help = "Exit status: 0 the agent enforces the policy; 1 invalid (diagnostics printed) or \
not applicable, nothing changed; 2 rejected by the running agent, the previous file restored; \
3 no verdict: no agent answers at --socket, or none within --timeout (the file stays written)."
)]
pub struct Args {
    /// The policy file to apply.
    file: PathBuf,
    /// The policy the agent runs with: a file, or a directory of *.yaml files.
    #[arg(long, default_value = "/etc/timeguard")]
    policy: PathBuf,
    /// The agent's control socket (`run --socket`).
    #[arg(long, value_name = "PATH", default_value = daemon::STATUS_SOCKET)]
    socket: PathBuf,
    /// How long to wait for the agent's verdict (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Write the checked policy and return without asking the agent (exit 0).
    #[arg(long)]
    no_wait: bool,
}

pub fn run(args: Args) -> ExitCode {
    match apply(&args) {
        Ok(v) => ExitCode::from(v as u8),
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::from(Verdict::Invalid as u8)
        }
    }
}

/// The agent's status, or None when no agent answers.
fn agent_status(socket: &Path) -> Option<Status> {
    let text = ask(socket, Request::Status).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether two paths name the same file (as spelled, when one does not exist).
fn same_file(a: &Path, b: &Path) -> bool {
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    real(a) == real(b)
}

/// Where FILE goes: over `dest` when it is a file, under FILE's name when it is a directory
/// (spelled from `base`, the path as the agent names it, so that the hash checked here is
/// the one the agent computes).
fn target_in(src: &Path, dest: &Path, base: &Path) -> anyhow::Result<PathBuf> {
    if !dest.is_dir() {
        return Ok(base.to_path_buf());
    }
    let name = src
        .file_name()
        .with_context(|| format!("{} names no file", src.display()))?;
    let target = base.join(name);
    if !target
        .extension()
        .is_some_and(|e| e == "yaml" || e == "yml")
    {
        anyhow::bail!(
            "{} would not be read: a policy directory is its *.yaml and *.yml files; name it .yaml; nothing was changed",
            target.display()
        );
    }
    Ok(target)
}

/// The policy as it will be with `bytes` at `target`: the directory's other files as they
/// are, read through the agent's own loader.
fn merged(
    dest: &Path,
    base: &Path,
    target: &Path,
    bytes: &[u8],
    host: &Host,
) -> anyhow::Result<Result<CompiledPolicy, Vec<policy::Diagnostic>>> {
    let mut sources = vec![(target.to_path_buf(), bytes.to_vec())];
    if dest.is_dir() {
        let others = match policy::policy_files(&[base.to_path_buf()]) {
            Ok(files) => files,
            // A directory that holds no policy yet: FILE is its first.
            Err(_) if std::fs::read_dir(dest).is_ok() => Vec::new(),
            Err(problems) => return Ok(Err(problems)),
        };
        for f in others.into_iter().filter(|f| f != target) {
            let b = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            sources.push((f, b));
        }
        // In the order the agent reads them.
        sources.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(policy::load_sources(sources, host))
}

/// Writes the policy file into place (`files::replace`), readable as the bundled ones are.
fn write_into_place(target: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::files::replace(target, bytes, 0o644)
}

fn apply(args: &Args) -> anyhow::Result<Verdict> {
    let (src, dest) = (args.file.as_path(), args.policy.as_path());
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let before = if args.no_wait {
        None
    } else {
        agent_status(&args.socket)
    };
    // The agent must read what is written; the names are spelled as it spells them.
    let base = match &before {
        Some(st) if !same_file(&st.policy.path, dest) => {
            println!(
                "the running agent enforces the policy at {}, not {}; nothing was changed",
                st.policy.path.display(),
                dest.display()
            );
            return Ok(Verdict::Invalid);
        }
        Some(st) => st.policy.path.clone(),
        None => dest.to_path_buf(),
    };
    let target = target_in(src, dest, &base)?;
    let policy = match merged(dest, &base, &target, &bytes, &Host::default())? {
        Ok(p) => p,
        Err(problems) => {
            for d in &problems {
                println!("{d}");
            }
            println!(
                "with {} as {}, the policy at {} is not valid; nothing was changed",
                src.display(),
                target.display(),
                dest.display()
            );
            return Ok(Verdict::Invalid);
        }
    };
    for w in &policy.warnings {
        println!("{w}");
    }
    let previous = match std::fs::read(&target) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("reading {}", target.display())))
        }
    };
    write_into_place(&target, &bytes)?;
    println!(
        "wrote policy \"{}\" (sha256 {}) to {}",
        policy.name,
        policy.hash,
        target.display()
    );
    if args.no_wait {
        println!("not waiting for the agent (--no-wait): it reloads within a second");
        return Ok(Verdict::Applied);
    }
    let Some(before) = before else {
        println!(
            "no agent answers at {}: the file stays; an agent reads it when it starts",
            args.socket.display()
        );
        return Ok(Verdict::Unconfirmed);
    };
    // Asked over its socket, not by a signal to a pid read earlier (which another process
    // may have by now). Unanswered, the agent's own watch still reloads within a second.
    if let Err(e) = ask(&args.socket, Request::Reload) {
        log::warn!("asking the agent to reload now: {e:#}; waiting for its own watch");
    }
    let deadline = Instant::now() + args.timeout;
    loop {
        if let Some(st) = agent_status(&args.socket) {
            if st.policy.source == "configured"
                && st.policy.sha256.as_deref() == Some(policy.hash.as_str())
            {
                println!(
                    "the agent enforces policy \"{}\" generation {} (sha256 {})",
                    st.policy.name.as_deref().unwrap_or("?"),
                    st.policy.generation,
                    policy.hash
                );
                return Ok(Verdict::Applied);
            }
            if st.reloads.failed > before.reloads.failed {
                for e in st.reloads.last_error.iter().flatten() {
                    println!("{e}");
                }
                if let Err(e) = restore(&target, previous.as_deref()) {
                    // Not exit 1 ("nothing changed"): the refused file is on disk.
                    log::error!(
                        "the agent rejected the policy, and {} could not be put back ({e:#}): the refused file stays there; fix or remove it before the agent next starts",
                        target.display()
                    );
                    return Ok(Verdict::Rejected);
                }
                println!(
                    "the agent rejected the policy; generation {} stays in force, and {} is {}",
                    st.policy.generation,
                    target.display(),
                    if previous.is_some() {
                        "restored to its previous content"
                    } else {
                        "removed again"
                    }
                );
                return Ok(Verdict::Rejected);
            }
        }
        if Instant::now() > deadline {
            println!(
                "no verdict from the agent at {} within {}: {} stays written",
                args.socket.display(),
                humantime::format_duration(args.timeout),
                target.display()
            );
            return Ok(Verdict::Unconfirmed);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Puts back what `target` held before (None: it did not exist).
fn restore(target: &Path, previous: Option<&[u8]>) -> anyhow::Result<()> {
    match previous {
        Some(bytes) => write_into_place(target, bytes),
        None => std::fs::remove_file(target)
            .with_context(|| format!("removing {} again", target.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tg-apply-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    /// A host with nothing installed: no daemon the test policies would have to allow.
    fn host() -> Host {
        Host {
            root: PathBuf::from("/nonexistent"),
        }
    }

    fn policy(name: &str, rule: &str) -> String {
        format!("apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: {name}}}\nspec:\n  clock:\n    rules:\n      - name: {rule}\n        match: {{exe: /nonexistent/{name}}}\n        allow: [slew]\n")
    }

    #[test]
    fn the_directory_is_checked_as_it_will_be() {
        let d = dir("merged");
        std::fs::write(d.join("a.yaml"), policy("a", "shared")).expect("write");
        std::fs::write(d.join("b.yaml"), policy("b", "b")).expect("write");
        // Valid alone, but its rule name is a.yaml's.
        let clash = policy("c", "shared");
        let target = target_in(Path::new("c.yaml"), &d, &d).expect("target");
        let problems = merged(&d, &d, &target, clash.as_bytes(), &host())
            .expect("read")
            .expect_err("a rule name used twice");
        assert!(
            problems.iter().any(|p| p.to_string().contains("shared")),
            "{problems:?}"
        );
        // Over b.yaml, the same rule name as b's own is fine: b.yaml is replaced.
        let target = target_in(Path::new("b.yaml"), &d, &d).expect("target");
        let p = merged(&d, &d, &target, policy("b2", "b").as_bytes(), &host())
            .expect("read")
            .expect("valid");
        assert_eq!(p.name, "a+b2");
        // The hash is the one the agent computes from the files once in place.
        write_into_place(&target, policy("b2", "b").as_bytes()).expect("write");
        let loaded = policy::load(std::slice::from_ref(&d), &host()).expect("valid");
        assert_eq!(loaded.hash, p.hash);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_the_directory_would_not_read_is_refused() {
        let d = dir("ext");
        let e = target_in(Path::new("new-policy.txt"), &d, &d).expect_err("not *.yaml");
        assert!(e.to_string().contains("would not be read"), "{e}");
        // Into an empty directory, the file is the whole policy.
        let target = target_in(Path::new("only.yml"), &d, &d).expect("target");
        let p = merged(&d, &d, &target, policy("only", "x").as_bytes(), &host())
            .expect("read")
            .expect("valid");
        assert_eq!(p.sources, vec![d.join("only.yml")]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A status as an agent at `path` serves it, with `failed` rejected reloads.
    fn status(path: &Path, failed: u64) -> String {
        serde_json::json!({
            "host": "h", "pid": 0, "started": "t", "enforcement": "enforce",
            "enforcement_unavailable": [], "attached": [], "unobserved": [],
            "policy": {"name": "p", "generation": 1, "sha256": "ab", "sources": [], "path": path},
            "reloads": {"ok": 0, "failed": failed,
                "last_error": (failed > 0).then_some(["p.yaml:1:1: error: refused by the agent"])},
            "counters": [], "events_lost": 0, "events_thinned": 0, "audit_log": null,
            "audit_write_failures": 0,
            "network": {"attached": null, "unavailable": null, "ptp_interfaces": [],
                "ptp_refused": {}, "ntp_packets": [], "nts_ke": [], "ptp_messages": [], "sockets": []},
            "self_protection": {"mode": "off", "unavailable": [], "protected_files": 0,
                "pins": "/x", "objects": [], "attempts": []},
        })
        .to_string()
    }

    /// A stand-in agent on a socket in `d`: its first answer is `first`, every later one
    /// `then` (None: it stops answering).
    fn fake_agent(d: &Path, first: String, then: Option<String>) -> PathBuf {
        use std::io::{Read as _, Write as _};
        let socket = d.join("status.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        std::thread::spawn(move || {
            let mut answer = Some(first);
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = [0u8; 64];
                let _ = stream.read(&mut line);
                match answer.take().or_else(|| then.clone()) {
                    Some(text) => {
                        let _ = stream.write_all(text.as_bytes());
                    }
                    None => return,
                }
            }
        });
        socket
    }

    fn args(file: &Path, policy: &Path, socket: &Path) -> Args {
        Args {
            file: file.to_path_buf(),
            policy: policy.to_path_buf(),
            socket: socket.to_path_buf(),
            timeout: Duration::from_millis(700),
            no_wait: false,
        }
    }

    /// An audit-mode policy: valid on any host (nothing it denies is enforced).
    fn audit(name: &str) -> String {
        format!("apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: {name}}}\nspec:\n  mode: audit\n  clock:\n    default: deny\n")
    }

    #[test]
    fn a_rejection_by_the_agent_puts_the_previous_file_back() {
        let d = dir("rejected");
        let policies = d.join("policies");
        std::fs::create_dir_all(&policies).expect("dir");
        std::fs::write(policies.join("a.yaml"), audit("old")).expect("write");
        let new = d.join("a.yaml");
        std::fs::write(&new, audit("new")).expect("write");
        let socket = fake_agent(&d, status(&policies, 0), Some(status(&policies, 1)));
        let v = apply(&args(&new, &policies, &socket)).expect("apply");
        assert_eq!(v, Verdict::Rejected);
        assert_eq!(
            std::fs::read_to_string(policies.join("a.yaml")).expect("read"),
            audit("old")
        );
        // A new file the agent refused is removed again.
        let added = d.join("b.yaml");
        std::fs::write(&added, audit("added")).expect("write");
        let socket2 = d.join("second");
        std::fs::create_dir_all(&socket2).expect("dir");
        let socket2 = fake_agent(&socket2, status(&policies, 0), Some(status(&policies, 1)));
        let v = apply(&args(&added, &policies, &socket2)).expect("apply");
        assert_eq!(v, Verdict::Rejected);
        let names: Vec<_> = std::fs::read_dir(&policies)
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.yaml")]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn no_verdict_in_time_leaves_the_file_written() {
        let d = dir("silent");
        let policy = d.join("p.yaml");
        std::fs::write(&policy, audit("old")).expect("write");
        let new = d.join("new.yaml");
        std::fs::write(&new, audit("new")).expect("write");
        // The agent answers once, then reports neither the new hash nor a rejection.
        let socket = fake_agent(&d, status(&policy, 0), Some(status(&policy, 0)));
        let v = apply(&args(&new, &policy, &socket)).expect("apply");
        assert_eq!(v, Verdict::Unconfirmed);
        assert_eq!(
            std::fs::read_to_string(&policy).expect("read"),
            audit("new")
        );
        // An agent that reads another path: nothing is changed.
        let other = d.join("elsewhere");
        std::fs::create_dir_all(&other).expect("dir");
        let socket = fake_agent(&other, status(&other, 0), None);
        std::fs::write(&new, audit("newer")).expect("write");
        let v = apply(&args(&new, &policy, &socket)).expect("apply");
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(
            std::fs::read_to_string(&policy).expect("read"),
            audit("new")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn restore_puts_back_the_previous_file_or_removes_the_new_one() {
        let d = dir("restore");
        let f = d.join("p.yaml");
        std::fs::write(&f, "old").expect("write");
        write_into_place(&f, b"new").expect("write");
        restore(&f, Some(b"old")).expect("restore");
        assert_eq!(std::fs::read(&f).expect("read"), b"old");
        restore(&f, None).expect("remove");
        assert!(!f.exists());
        let left: Vec<_> = std::fs::read_dir(&d).expect("dir").collect();
        assert!(left.is_empty(), "{left:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
