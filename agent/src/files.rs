//! Files the agent and its commands replace whole: the policy `timeguard apply` writes and
//! the last known good policy the agent keeps.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::Context as _;

/// Writes `bytes` over `path` through a new file beside it (named `.NAME.timeguard-new`: not
/// `*.yaml`, so a directory policy never reads it half-written), synced, renamed into place,
/// and the directory synced: after a crash the old file or the new one is there, never a
/// part. The new file gets `mode`; on failure it is removed and `path` is as it was.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.timeguard-new"));
    let written = (|| {
        // A file (or a symlink) left there is removed, not written through: the new file is
        // made afresh, with `mode`.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("replacing {}", path.display())));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}
