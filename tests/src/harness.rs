//! What the integration tests share: where the agent binary is, and whether we are root.

use std::path::PathBuf;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The agent binary `cargo xtask test` built (TIMEGUARD_BIN), or the release build; None,
/// said in one line, when neither exists.
pub fn timeguard() -> Option<PathBuf> {
    let bin = std::env::var_os("TIMEGUARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/timeguard"));
    if bin.exists() {
        Some(bin)
    } else {
        eprintln!(
            "skipped: no agent binary at {} (run through `cargo xtask test`)",
            bin.display()
        );
        None
    }
}

/// The `*.yaml` files of a directory, sorted.
pub fn yaml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `GET path` from an HTTP server on loopback: the status code and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    // Prometheus answers its API in chunks; the JSON is the one long line.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_default()
            .to_string()
    } else {
        body.to_string()
    };
    Some((code, body))
}

/// A loopback address with a port nobody listens on now.
pub fn free_loopback_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    l.local_addr().expect("local addr").to_string()
}
