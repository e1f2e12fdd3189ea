//! The agent's root-only control socket: `timeguard status` asks what it enforces,
//! `timeguard stop [--unpin]` asks it to stop, `timeguard apply` asks it to reload now. One
//! request line, one JSON answer.

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt as _, net::UnixListener};

use crate::records::{agent::Peer, AgentEvent};

use super::agent::Agent;

/// A client that does not talk or read must not hold up the agent.
const CLIENT_TIME_LIMIT: Duration = Duration::from_secs(1);

/// How long a command waits for the agent's answer: a wedged agent must not hang it (a
/// reload of a large policy is answered well within this).
const ANSWER_TIME_LIMIT: Duration = Duration::from_secs(10);

/// A request on the control socket: one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Status,
    /// Stop the agent; with `unpin`, remove enforcement from the kernel as well.
    Stop {
        unpin: bool,
    },
    /// Reload the policy now (answered with the status after it).
    Reload,
}

impl Request {
    /// Parses a request line; an empty one (a client that only reads) asks for status.
    pub fn parse(line: &str) -> Result<Self, String> {
        match line.trim() {
            "" | "status" => Ok(Request::Status),
            "stop" => Ok(Request::Stop { unpin: false }),
            "stop unpin" => Ok(Request::Stop { unpin: true }),
            "reload" => Ok(Request::Reload),
            other => Err(format!(
                "unknown request `{}`: status, stop, stop unpin or reload",
                other.chars().take(64).collect::<String>()
            )),
        }
    }

    pub fn line(self) -> &'static str {
        match self {
            Request::Status => "status\n",
            Request::Stop { unpin: false } => "stop\n",
            Request::Stop { unpin: true } => "stop unpin\n",
            Request::Reload => "reload\n",
        }
    }
}

/// The agent's answer to a request other than status: it stops (and unpins), or it says
/// why it does not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Stopping { stopping: bool, unpin: bool },
    Refused { error: String },
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
        .set_read_timeout(Some(ANSWER_TIME_LIMIT))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_TIME_LIMIT)))
        .context("setting a time limit on the agent's answer")?;
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

/// Binds the control socket: its directory and the socket are root's alone.
pub(super) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir()) {
        anyhow::bail!("{} is a directory", path.display());
    }
    // A live agent answers there: do not take its socket away.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another timeguard agent already answers at {}",
            path.display()
        );
    }
    // What is left is a socket of an agent that died.
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Reads the request line of a client, within the time limit.
async fn read_request(stream: &mut tokio::net::UnixStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    let mut len = 0;
    let _ = tokio::time::timeout(CLIENT_TIME_LIMIT, async {
        while len < buf.len() {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    len += n;
                    if buf[..len].contains(&b'\n') {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

impl Agent {
    /// Answers one client of the control socket; whether the agent is to stop.
    pub(super) async fn control(&mut self, mut stream: tokio::net::UnixStream) -> bool {
        let line = read_request(&mut stream).await;
        let (answer, stop) = match Request::parse(&line) {
            Ok(Request::Status) => (serde_json::to_string(&self.status()), false),
            Ok(Request::Reload) => {
                self.reload_by_operator("asked on the control socket (timeguard apply)");
                (serde_json::to_string(&self.status()), false)
            }
            Ok(Request::Stop { unpin }) => {
                let by = stream.peer_cred().ok().map(|c| Peer {
                    uid: c.uid(),
                    pid: c.pid(),
                });
                log::warn!(
                    "stop asked for on the control socket by {:?} (unpin: {unpin})",
                    by.as_ref().map(|p| serde_json::json!(p))
                );
                self.trail.agent(AgentEvent::StopRequested { unpin, by });
                self.stop = Some(unpin);
                let answer = Reply::Stopping {
                    stopping: true,
                    unpin,
                };
                (serde_json::to_string(&answer), true)
            }
            Err(error) => (serde_json::to_string(&Reply::Refused { error }), false),
        };
        let body = match answer {
            Ok(text) => format!("{text}\n"),
            Err(e) => {
                log::warn!("answering on the control socket: {e}");
                return stop;
            }
        };
        let _ = tokio::time::timeout(CLIENT_TIME_LIMIT, stream.write_all(body.as_bytes())).await;
        stop
    }
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
            Request::Reload,
        ] {
            assert_eq!(Request::parse(r.line()), Ok(r));
        }
    }

    #[test]
    fn replies() {
        for (reply, text) in [
            (
                Reply::Stopping {
                    stopping: true,
                    unpin: false,
                },
                r#"{"stopping":true,"unpin":false}"#,
            ),
            (
                Reply::Refused {
                    error: "unknown request".into(),
                },
                r#"{"error":"unknown request"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&reply).expect("json"), text);
            assert_eq!(serde_json::from_str::<Reply>(text).ok(), Some(reply));
        }
    }
}
