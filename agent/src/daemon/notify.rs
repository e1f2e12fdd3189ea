//! systemd's readiness protocol (sd_notify(3)), written once here rather than taken from a
//! crate: a few `KEY=value` lines in one datagram to the unix socket in `$NOTIFY_SOCKET`
//! (a path, or an abstract address written with a leading `@`). Without the variable
//! (not started by systemd with `Type=notify`) every call does nothing; a failed send is
//! logged and never stops the agent: readiness is a courtesy to the service manager,
//! enforcement does not depend on it.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    sync::OnceLock,
    time::Duration,
};

use agent_common::policy::Mode;

use crate::loader::Enforcement;

use super::{agent::Agent, last_known_good::Source};

/// Where the service manager listens, read once (the environment does not change).
fn socket() -> Option<&'static SocketAddr> {
    static SOCKET: OnceLock<Option<SocketAddr>> = OnceLock::new();
    SOCKET
        .get_or_init(|| {
            let raw = std::env::var_os("NOTIFY_SOCKET")?;
            match address(raw.as_encoded_bytes()) {
                Ok(a) => Some(a),
                Err(e) => {
                    log::warn!(
                        "NOTIFY_SOCKET={}: {e}; systemd will not hear that the agent is ready",
                        raw.to_string_lossy()
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// The socket address of `$NOTIFY_SOCKET`: `@name` is Linux's abstract namespace.
fn address(raw: &[u8]) -> std::io::Result<SocketAddr> {
    match raw.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name)
        }
        None if raw.starts_with(b"/") => {
            use std::os::unix::ffi::OsStrExt as _;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(raw))
        }
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract (@) address",
        )),
    }
}

/// Sends one notification to `to`.
fn send_to(to: &SocketAddr, message: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(message.as_bytes(), to)?;
    Ok(())
}

/// Sends `message` to the service manager, if there is one.
fn send(message: &str) {
    let Some(to) = socket() else { return };
    if let Err(e) = send_to(to, message) {
        log::warn!(
            "telling systemd {:?}: {e}",
            message.lines().next().unwrap_or_default()
        );
    }
}

/// What is enforced, in one line for `systemctl status` (STATUS=).
fn summary(agent: &Agent) -> String {
    let Some((generation, policy)) = agent.generations.current() else {
        return "no policy in force".into();
    };
    let audit_only = policy.default_mode == Mode::Audit.code();
    let what = match (&agent.guard.enforcement, audit_only) {
        (Enforcement::ObserveOnly { reasons }, _) => format!(
            "observe-only, clock changes recorded, not prevented (the kernel refuses BPF LSM programs: {}{})",
            reasons.first().map_or("no reason given", String::as_str),
            match reasons.len() {
                0 | 1 => String::new(),
                n => format!(", and {} more", n - 1),
            }
        ),
        (Enforcement::Enforce, true) => {
            "auditing (mode audit: what the policy denies is allowed and recorded)".into()
        }
        (Enforcement::Enforce, false) => "enforcing: clock changes decided in the kernel".into(),
    };
    let network = match (
        agent.guard.network.attached_cgroup(),
        &agent.network.unavailable,
    ) {
        (Some(cgroup), _) => format!("network guard on ({cgroup})"),
        (None, Some(why)) => format!("network guard unavailable ({why})"),
        (None, None) => "network guard off".into(),
    };
    let protection = match policy.self_protection {
        Some(_) if !agent.guard.self_protection.unavailable.is_empty() => {
            "self-protection unavailable"
        }
        Some(m) if m == Mode::Enforce.code() => "self-protection on",
        Some(_) => "self-protection auditing",
        None => "self-protection off",
    };
    let reload = match &agent.reloading.last_error {
        Some(_) => "; the last reload was rejected",
        None => "",
    };
    // Said first: the operator's own policy is not what is enforced.
    let source = match agent.reloading.source {
        Source::Configured => String::new(),
        other => format!(
            "the configured policy is invalid, the {} is enforced instead: ",
            other.token().replace('_', " ")
        ),
    };
    format!(
        "{source}policy {} generation {generation}: {what}; {network}; {protection}{reload}",
        policy.name
    )
}

/// The policy is live: READY=1, with what is enforced. Sent once, after the switch.
pub(super) fn ready(agent: &Agent) {
    crate::logging::set_generation(agent.generations.current_generation());
    send(&format!("READY=1\nSTATUS={}", summary(agent)));
}

/// What is enforced now (after a reload, accepted or rejected).
pub(super) fn status(agent: &Agent) {
    crate::logging::set_generation(agent.generations.current_generation());
    send(&format!("STATUS={}", summary(agent)));
}

/// The agent is stopping (its last policy stays pinned unless unpinned).
pub(super) fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

/// The event loop is alive.
pub(super) fn watchdog() {
    send("WATCHDOG=1");
}

/// How often to feed the watchdog, when systemd runs one for this process: half its
/// timeout, as sd_watchdog_enabled(3) advises.
pub(super) fn watchdog_interval() -> Option<Duration> {
    socket()?;
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // A watchdog meant for another process (the variables were inherited) is not ours.
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_address() {
        let dir = std::env::temp_dir().join(format!("tg-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let to = address(path.as_os_str().as_encoded_bytes()).expect("a path address");
        send_to(&to, "READY=1\nSTATUS=x").expect("sent");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");

        let name = format!("@tg-notify-test-{}", std::process::id());
        let to = address(name.as_bytes()).expect("an abstract address");
        let abstract_listener = UnixDatagram::bind_addr(&to).expect("bind abstract");
        send_to(&to, "WATCHDOG=1").expect("sent");
        let n = abstract_listener.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_relative_address_is_refused() {
        assert!(address(b"notify.sock").is_err());
    }
}
