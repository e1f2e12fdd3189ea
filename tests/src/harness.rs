//! What the host and guest tests share: where the agent binary is, whether we are root,
//! running a command, reading records, and waiting for something to happen.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The agent binary `cargo xtask test` built (TIMEGUARD_BIN), or the release build. A test
/// that needs it fails when neither exists: `cargo xtask test` always provides it.
pub fn timeguard() -> PathBuf {
    let bin = std::env::var_os("TIMEGUARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/timeguard"));
    assert!(
        bin.exists(),
        "no agent binary at {} (TIMEGUARD_BIN unset): run the tests through `cargo xtask test`, \
         which builds it, or `cargo xtask build --release` first",
        bin.display()
    );
    bin
}

/// A tool `cargo xtask test` unpacks and names in `var` (TIMEGUARD_CHRONYD, …). A test that
/// needs it fails without it: xtask always provides it.
pub fn provided_tool(var: &str, what: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: {what} comes from `cargo xtask test`, which unpacks Debian's \
             package and sets it (run the test through it)"
        )
    })
}

/// Root, which loading BPF programs and making namespaces need. A test that needs it and
/// runs without it fails with this reason (`cargo xtask test` runs as root).
pub fn require_root(why: &str) {
    assert!(
        is_root(),
        "{why} needs root: run the tests as root through `cargo xtask test`"
    );
}

/// What a command did: its exit status (-1 when a signal ended it) and its output, trimmed.
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args…` to its end.
pub fn sh<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Result<Run, String> {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
    Ok(Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// The records of a trail (one JSON object a line; unreadable lines are left out).
pub fn read_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Asks `probe` every `every` until it gives a value, for up to `within`.
pub fn wait_for<T>(
    within: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// The first record of the trail at `path`, after its first `since`, that satisfies `pred`,
/// waited for up to `within` (records are written asynchronously).
pub fn wait_record(
    path: &Path,
    since: usize,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<Value> {
    wait_for(within, Duration::from_millis(50), || {
        read_records(path).into_iter().skip(since).find(|v| pred(v))
    })
}

/// A fresh directory of this test process under the system's temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tg-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The sum of the `count`s of a counter list's entries (as the agent's status gives them)
/// whose keys have all the values given.
pub fn counted(entries: &Value, matching: &[(&str, &str)]) -> u64 {
    entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| matching.iter().all(|(k, v)| c[*k] == *v))
        .filter_map(|c| c["count"].as_u64())
        .sum()
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
