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
