//! Enforcement that outlives the agent: the kernel programs' maps and links pinned in bpffs.
//!
//! Under the pin root (default `/sys/fs/bpf/timeguard`) each build of the kernel programs has
//! a directory of its own, named by a hash of the programs: `maps/` (every map, so a
//! restarted agent finds the policy, the counters and the unread records where they were)
//! and `links/` (every attachment, so the programs stay attached while no agent runs).
//!
//! A restarted agent of the same build adopts what it finds: the links stay as they are (no
//! gap, no second attachment) and it installs its policy into the same maps. An agent of
//! another build attaches its own programs first, then removes the older build's pins (make
//! before break). Only `timeguard stop --unpin` removes enforcement.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::programs::links::{FdLink, PinnedLink};

/// Where the agent pins by default.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/timeguard";

/// bpffs's magic number (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pins of one build.
pub struct Pins {
    root: PathBuf,
    dir: PathBuf,
    /// Links held by this agent, by key (the file name under `links/`).
    links: BTreeMap<String, PinnedLink>,
    /// Keys found pinned at start and taken over.
    adopted: Vec<String>,
}

/// A short, stable name for the build of the embedded kernel programs.
pub fn build_id(programs: &[u8]) -> String {
    let digest = crate::policy::sha256_hex(programs);
    digest[..16].to_string()
}

/// A link's key: its program and where it is attached, as one file name. bpffs refuses
/// names with a dot (reserved for its own files: BPF_OBJ_PIN fails with EPERM), so only
/// letters, digits, `-` and `_` are kept.
pub fn link_key(program: &str, target: &str) -> String {
    let target: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{program}@{target}")
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; zero is a valid start.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs to fill.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts bpffs at `at` (as systemd does at boot on most distributions).
fn mount_bpffs(at: &Path) -> anyhow::Result<()> {
    let fail = || {
        anyhow::anyhow!(
            "{} is not a BPF file system and could not be mounted (mount -t bpf bpf {})",
            at.display(),
            at.display()
        )
    };
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).map_err(|_| fail())?;
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 || !is_bpffs(at) {
        return Err(fail().context(std::io::Error::last_os_error()));
    }
    log::info!("mounted bpf on {}", at.display());
    Ok(())
}

/// Where bpffs belongs when it is not mounted yet: where systemd mounts it at boot.
const SYSTEM_BPFFS: &str = "/sys/fs/bpf";

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
}

/// The directories under `root`: each build's pins. A fresh bpffs holds files of the
/// kernel's own (`maps.debug`, `progs.debug`), which are no pins.
fn subdirectories(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Makes `root` a place on bpffs, without ever hiding a file: a root already on bpffs (the
/// nearest directory of it that exists is) is used as it is; a root under `/sys/fs/bpf`
/// gets bpffs mounted there (as systemd does at boot), when it is an empty directory; any
/// other root gets bpffs mounted on exactly itself, when it is empty or new. Otherwise it
/// refuses and says what to do.
fn ensure_bpffs(root: &Path) -> anyhow::Result<()> {
    let existing = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    let system = Path::new(SYSTEM_BPFFS);
    let at = if root.starts_with(system) {
        system
    } else {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating the pin directory {}", root.display()))?;
        root
    };
    if !is_empty_dir(at) {
        anyhow::bail!(
            "the pin directory {} is not on a BPF file system, and mounting one at {} would hide what that directory holds; \
             choose a pin directory under {SYSTEM_BPFFS} or an empty directory, or mount bpffs yourself (mount -t bpf bpf DIR)",
            root.display(),
            at.display()
        );
    }
    mount_bpffs(at)
}

/// Unmounts bpffs from `root` when this agent (or another) mounted it on exactly that
/// directory and nothing is left pinned there: `--unpin` leaves no mount behind.
fn unmount_if_own(root: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(here), Some(Ok(above))) = (
        std::fs::metadata(root),
        root.parent().map(std::fs::metadata),
    ) else {
        return;
    };
    if root == Path::new(SYSTEM_BPFFS) || here.dev() == above.dev() || !is_bpffs(root) {
        return;
    }
    // Only a bpffs holding nothing but the kernel's own files: another tool's pins stay.
    let only_kernel_files = std::fs::read_dir(root).is_ok_and(|entries| {
        entries.filter_map(Result::ok).all(|e| {
            e.file_type().is_ok_and(|t| !t.is_dir())
                && e.file_name().to_string_lossy().ends_with(".debug")
        })
    });
    if !only_kernel_files {
        return;
    }
    let Ok(target) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::UMOUNT_NOFOLLOW) } == 0 {
        log::info!("unmounted bpf from {}", root.display());
    } else {
        log::warn!(
            "bpf stays mounted on {}: {}",
            root.display(),
            std::io::Error::last_os_error()
        );
    }
}

impl Pins {
    /// Opens (creating where missing) the pin directory of `build` under `root`, on bpffs
    /// (`ensure_bpffs`).
    pub fn open(root: &Path, build: &str) -> anyhow::Result<Self> {
        ensure_bpffs(root)?;
        let dir = root.join(build);
        for sub in ["maps", "links"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let mut pins = Pins {
            root: root.to_path_buf(),
            dir,
            links: BTreeMap::new(),
            adopted: Vec::new(),
        };
        // Every link an earlier agent of this build left is held from the start, also those
        // the policy no longer names (a network guard on a cgroup the new policy leaves out
        // decides nothing, but stays accounted for, and `--unpin` removes it).
        let found: Vec<String> = std::fs::read_dir(pins.dir.join("links"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        for key in found {
            pins.adopt(&key);
        }
        Ok(pins)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the maps are pinned.
    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    fn link_path(&self, key: &str) -> PathBuf {
        self.dir.join("links").join(key)
    }

    /// Takes over a link pinned by an earlier agent of this build; whether there was one.
    pub fn adopt(&mut self, key: &str) -> bool {
        if self.links.contains_key(key) {
            return true;
        }
        let path = self.link_path(key);
        if !path.exists() {
            return false;
        }
        match PinnedLink::from_pin(&path) {
            Ok(link) => {
                self.links.insert(key.to_string(), link);
                self.adopted.push(key.to_string());
                true
            }
            Err(e) => {
                // Not a link (or not ours): out of the way, attached afresh.
                log::warn!(
                    "pinned link {} unusable ({e}); attaching afresh",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                false
            }
        }
    }

    /// Pins a link this agent just made. When the kernel refuses the pin, the link is
    /// gone (detached) and the error says so: the caller may attach again and hold the
    /// link itself.
    pub fn keep(&mut self, key: &str, link: FdLink) -> anyhow::Result<()> {
        let path = self.link_path(key);
        let _ = std::fs::remove_file(&path);
        let pinned = link
            .pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        self.links.insert(key.to_string(), pinned);
        Ok(())
    }

    /// Unpins and detaches one link (an interface that went away, a hook given up).
    pub fn release(&mut self, key: &str) {
        if let Some(link) = self.links.remove(key) {
            if let Ok(fd) = link.unpin() {
                use aya::programs::links::Link as _;
                let _ = fd.detach();
            }
        }
    }

    /// Whether a link is held under this key.
    pub fn holds(&self, key: &str) -> bool {
        self.links.contains_key(key)
    }

    /// The kernel's ids of the links held (read through their pins), by key.
    pub fn link_ids(&self) -> Vec<(String, u32)> {
        self.links
            .keys()
            .filter_map(|k| {
                let link = PinnedLink::from_pin(self.link_path(k)).ok()?;
                let id = FdLink::from(link).info().ok()?.id();
                Some((k.clone(), id))
            })
            .collect()
    }

    /// The keys taken over from an earlier agent.
    pub fn adopted(&self) -> &[String] {
        &self.adopted
    }

    /// Removes the pins of other builds (after this build's programs are attached).
    pub fn remove_other_builds(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for path in subdirectories(&self.root) {
            if path != self.dir {
                if let Err(err) = remove_tree(&path) {
                    log::warn!("removing the older pins at {}: {err}", path.display());
                } else {
                    removed.push(path);
                }
            }
        }
        removed
    }
}

/// Removes a pin tree: links first (their programs detach), then maps and directories.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    for sub in ["links", "maps"] {
        let d = path.join(sub);
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.filter_map(Result::ok) {
                std::fs::remove_file(e.path())?;
            }
        }
        if d.exists() {
            std::fs::remove_dir(&d)?;
        }
    }
    // Anything else a future layout might leave.
    std::fs::remove_dir_all(path)
}

/// Removes every pin under `root` (every build): `timeguard stop --unpin`.
pub fn unpin_all(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for path in subdirectories(root) {
        remove_tree(&path).with_context(|| format!("removing {}", path.display()))?;
        removed.push(path);
    }
    unmount_if_own(root);
    let _ = std::fs::remove_dir(root);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_file_names() {
        assert_eq!(
            link_key("ntp_ingress", "/sys/fs/cgroup"),
            "ntp_ingress@_sys_fs_cgroup"
        );
        assert_eq!(link_key("ptp_ingress", "eth0.42"), "ptp_ingress@eth0_42");
        assert!(!link_key("x", "a/b c.d").contains(['/', ' ', '.']));
    }

    #[test]
    fn build_ids_follow_the_programs() {
        assert_eq!(build_id(b"one"), build_id(b"one"));
        assert_ne!(build_id(b"one"), build_id(b"two"));
        assert_eq!(build_id(b"one").len(), 16);
    }
}
