//! The agent's root-only control socket: `timeguard status` asks what it enforces,
//! `timeguard stop [--unpin]` asks it to stop. And what a restarted agent needs to carry on
//! where the last one stopped: the rule names behind the kernel's counters.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{json, Value};

/// A request on the control socket: one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Status,
    /// Stop the agent; with `unpin`, remove enforcement from the kernel as well.
    Stop {
        unpin: bool,
    },
}

impl Request {
    /// Parses a request line; an empty one (a client that only reads) asks for status.
    pub fn parse(line: &str) -> Result<Self, String> {
        match line.trim() {
            "" | "status" => Ok(Request::Status),
            "stop" => Ok(Request::Stop { unpin: false }),
            "stop unpin" => Ok(Request::Stop { unpin: true }),
            other => Err(format!(
                "unknown request `{}`: status, stop or stop unpin",
                other.chars().take(64).collect::<String>()
            )),
        }
    }

    pub fn line(self) -> &'static str {
        match self {
            Request::Status => "status\n",
            Request::Stop { unpin: false } => "stop\n",
            Request::Stop { unpin: true } => "stop unpin\n",
        }
    }
}

/// Sends one request to the agent at `socket` and returns its answer.
pub fn ask(socket: &Path, request: Request) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "no running agent answers at {} (is timeguard running? this needs root)",
            socket.display()
        )
    })?;
    stream
        .write_all(request.line().as_bytes())
        .context("asking the agent")?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .context("reading the agent's answer")?;
    Ok(text)
}

/// `timeguard stop [--unpin]`. A running agent is asked to stop (and unpin); when none
/// answers, `--unpin` removes the pins itself. Either way the act is recorded.
pub fn stop(socket: &Path, unpin: bool, pin_root: &Path, audit_log: &Path) -> anyhow::Result<()> {
    match ask(socket, Request::Stop { unpin }) {
        Ok(answer) => {
            let v: Value = serde_json::from_str(answer.trim()).unwrap_or_default();
            if let Some(e) = v["error"].as_str() {
                anyhow::bail!("the agent refused: {e}");
            }
            println!(
                "the agent is stopping{}",
                if unpin {
                    "; it removes its programs from the kernel: the clock is no longer guarded"
                } else {
                    "; its last policy stays enforced in the kernel (`timeguard stop --unpin` removes it)"
                }
            );
            Ok(())
        }
        Err(e) if unpin => {
            log::warn!("{e:#}; removing the pins directly");
            let removed = crate::bpf::pins::unpin_all(pin_root)?;
            let record = json!({
                "time": crate::events::rfc3339(std::time::SystemTime::now()),
                "boot_ns": crate::events::clock_ns(libc::CLOCK_BOOTTIME),
                "kind": "agent", "event": "unpinned",
                "by": caller(), "pins": removed,
                "reason": "timeguard stop --unpin with no agent running",
            });
            crate::audit::append_once(audit_log, &record);
            println!(
                "no agent was running; removed {} pinned build(s) under {}: the clock is no longer guarded",
                removed.len(),
                pin_root.display()
            );
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "nothing stopped; the last policy stays enforced from the pins under {}",
            pin_root.display()
        ))),
    }
}

/// Who runs this command, for the record.
fn caller() -> Value {
    // SAFETY: getters without preconditions.
    let (pid, uid) = unsafe { (libc::getpid(), libc::getuid()) };
    json!({"pid": pid, "uid": uid, "exe": std::env::current_exe().ok()})
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

/// `timeguard apply SRC [--policy DEST]`: the agent's own way of changing the policy, which
/// self-protection leaves open (the policy files are written by this executable only). SRC
/// is checked first; a policy with errors changes nothing. It is then written over DEST (or,
/// when DEST is a directory, over the file of SRC's name in it) as a new file renamed into
/// place, and the running agent reloads it (within a second, or at once on SIGHUP).
pub fn apply(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let checked = crate::policy::load(&[src.to_path_buf()], &crate::policy::Host::default());
    let policy = match checked {
        Ok(p) => p,
        Err(problems) => {
            for d in &problems {
                println!("{d}");
            }
            anyhow::bail!(
                "{} is not a valid policy; nothing was changed",
                src.display()
            );
        }
    };
    let target = if dest.is_dir() {
        let name = src
            .file_name()
            .with_context(|| format!("{} names no file", src.display()))?;
        dest.join(name)
    } else {
        dest.to_path_buf()
    };
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".into());
    // Not *.yaml: a directory policy never reads the file half-written.
    let tmp = target.with_file_name(format!(".{name}.timeguard-apply"));
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, &target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("replacing {}", target.display())));
    }
    println!(
        "applied policy \"{}\" to {}; the running agent reloads it",
        policy.name,
        target.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(Request::parse(""), Ok(Request::Status));
        assert_eq!(Request::parse("status\n"), Ok(Request::Status));
        assert_eq!(Request::parse("stop"), Ok(Request::Stop { unpin: false }));
        assert_eq!(
            Request::parse("stop unpin\n"),
            Ok(Request::Stop { unpin: true })
        );
        assert!(Request::parse("reboot").is_err());
        for r in [
            Request::Status,
            Request::Stop { unpin: false },
            Request::Stop { unpin: true },
        ] {
            assert_eq!(Request::parse(r.line()), Ok(r));
        }
    }

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
