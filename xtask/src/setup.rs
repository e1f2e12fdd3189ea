//! Installs what a fresh machine lacks, says what it installs, and skips it next time.
//! Where it cannot install (not Debian, not root) it stops with the exact command to run.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    sync::Once,
};

use anyhow::{bail, Context as _};

use crate::run;

/// bpf-linker release built here (its LLVM must match nightly rustc's).
const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What a command printed, when it succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str, arg: &str) -> bool {
    output(Command::new(program).arg(arg)).is_some()
}

fn deb_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

static APT_UPDATE: Once = Once::new();

/// `apt-get update` once per run, before the first install or download.
pub fn apt_update() -> anyhow::Result<()> {
    let mut result = Ok(());
    APT_UPDATE.call_once(|| {
        println!("setup: apt-get update");
        result = run(Command::new("apt-get").args(["update", "-qq"]));
    });
    result
}

/// Whether Debian's archive (as apt knows it) offers this package.
pub fn apt_has_package(pkg: &str) -> bool {
    output(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]))
        .is_some_and(|s| !s.trim().is_empty())
}

/// Installs the Debian packages that are missing.
pub fn ensure_debs(pkgs: &[String], why: &str) -> anyhow::Result<()> {
    let missing: Vec<&String> = pkgs.iter().filter(|p| !deb_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    if !Path::new("/etc/debian_version").exists() || !have("apt-get", "--version") {
        bail!("{why} needs these Debian packages, and this is not a Debian system: {list}\ninstall their equivalents with your package manager, then run the command again");
    }
    if !is_root() {
        bail!("{why} needs: {list}\nrun: sudo apt-get update && sudo apt-get install -y {list}\nthen run the command again");
    }
    apt_update()?;
    println!("setup: installing {list} ({why})");
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The LLVM major version of the nightly compiler that builds the kernel programs.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"])).context(
        "the nightly Rust toolchain is missing: it builds the kernel programs (-Z build-std).\nrun: rustup toolchain install nightly --component rust-src",
    )?;
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .context("cannot read the LLVM version from `rustc +nightly -vV`")
}

/// Nightly rust-src and bpf-linker built against nightly's LLVM.
pub fn ensure_bpf_toolchain() -> anyhow::Result<()> {
    let llvm = nightly_llvm_major()?;
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    // rust-src: the kernel programs build `core` from source; clippy: they are linted too.
    for component in ["rust-src", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            println!("setup: rustup component add {component} --toolchain nightly");
            run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    if have("bpf-linker", "--version") {
        return Ok(());
    }
    ensure_debs(
        &[
            format!("llvm-{llvm}-dev"),
            format!("libpolly-{llvm}-dev"),
            "libzstd-dev".into(),
        ],
        "building bpf-linker",
    )?;
    println!(
        "setup: cargo install bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (about a minute)"
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{llvm}"))
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}")))
}

/// A cargo subcommand at its pinned version, installed when missing.
fn ensure_cargo_tool(tool: &str, version: &str, why: &str) -> anyhow::Result<()> {
    if have(tool, "--version") {
        return Ok(());
    }
    println!("setup: cargo install {tool} {version} ({why})");
    run(Command::new("cargo").args(["install", tool, "--locked", "--version", version]))
}

/// cargo-fuzz, which runs the policy parser's fuzz target.
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    ensure_cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION, "fuzzes the policy parser")
}

const CARGO_DEB_VERSION: &str = "3.8.0";

/// cargo-deb, for the Debian package.
pub fn ensure_cargo_deb() -> anyhow::Result<()> {
    ensure_cargo_tool("cargo-deb", CARGO_DEB_VERSION, "builds the Debian package")
}

/// systemd-analyze, which verifies the unit and the drop-ins (Debian's systemd package;
/// installing it starts nothing where systemd is not the init).
pub fn ensure_systemd_analyze() -> anyhow::Result<()> {
    if have("systemd-analyze", "--version") {
        return Ok(());
    }
    ensure_debs(&["systemd".into()], "verifying the systemd unit")
}

/// Where downloads and unpacked tools are kept between runs.
pub fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    base.join("timeguard")
}

/// Downloads a Debian package's .deb into `dir` (without installing it); returns its path.
pub fn download_deb(package: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    apt_update()?;
    run(Command::new("apt-get")
        .arg("download")
        .arg(package)
        .current_dir(dir))?;
    std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| anyhow::anyhow!("apt-get download left no .deb in {}", dir.display()))
}

/// One program from a Debian package, unpacked once into the cache and never installed:
/// chronyd would start disciplining this host's clock, prometheus would start a server.
pub fn unpacked_tool(package: &str, path_in_package: &str) -> anyhow::Result<PathBuf> {
    let dir = cache_root().join("tools");
    let name = Path::new(path_in_package)
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{path_in_package} names no file"))?;
    let tool = dir.join(name);
    if tool.exists() {
        return Ok(tool);
    }
    let work = dir.join(format!("{package}.download"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    println!(
        "setup: unpacking {path_in_package} from Debian's {package} package into {} (not installed on this host)",
        dir.display()
    );
    let deb = download_deb(package, &work)?;
    let part = tool.with_extension("part");
    let unpack = format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -xO '.{path_in_package}' > '{}' && chmod 755 '{}'",
        deb.display(),
        part.display(),
        part.display()
    );
    run(Command::new("sh").args(["-c", &unpack]))?;
    std::fs::rename(&part, &tool)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(tool)
}

/// A program this host has installed (its libraries then match it), else the same program
/// unpacked from its Debian package, as `unpacked_tool`: for a daemon that must not be
/// installed here only to be copied into the guest.
pub fn installed_or_unpacked(package: &str, path_in_package: &str) -> anyhow::Result<PathBuf> {
    let installed = Path::new(path_in_package);
    if installed.exists() {
        return Ok(installed.to_path_buf());
    }
    unpacked_tool(package, path_in_package)
}

/// QEMU, a static busybox for the guest, cpio for its initramfs, xz for compressed kernel
/// modules, util-linux's hwclock and the libraries the guest's time daemons link (chronyd,
/// ntpd, systemd-timesyncd and systemd's NSS module): the daemons themselves are only
/// unpacked for the guest, never installed, as they would start disciplining this host's clock.
pub fn ensure_vm_tools() -> anyhow::Result<()> {
    ensure_debs(
        &[
            "qemu-system-x86".into(),
            "busybox-static".into(),
            "cpio".into(),
            "xz-utils".into(),
            "util-linux-extra".into(),
            "libgnutls30".into(),
            "libnettle8".into(),
            "libcap2".into(),
            "libseccomp2".into(),
            "libssl3".into(),
            "libbsd0".into(),
            "libsystemd-shared".into(),
            "libnss-systemd".into(),
        ],
        "the VM tests",
    )
}

/// The peers the benchmark measures timeguard against, as (file on this host, path in the
/// guest): Debian's bpftrace (installed here: the guest takes its libraries from this host)
/// and Debian's auditd and auditctl (only unpacked: installing auditd would start it here).
pub fn bench_peers() -> anyhow::Result<Vec<(PathBuf, &'static str)>> {
    ensure_debs(
        &[
            "bpftrace".into(),
            "libauparse0".into(),
            "libcap-ng0".into(),
            "libwrap0".into(),
            "libkrb5-3".into(),
            "libgssapi-krb5-2".into(),
        ],
        "the benchmark's peers",
    )?;
    Ok(vec![
        (PathBuf::from("/usr/bin/bpftrace"), "/usr/bin/bpftrace"),
        (unpacked_tool("auditd", "/sbin/auditd")?, "/usr/sbin/auditd"),
        (
            unpacked_tool("auditd", "/sbin/auditctl")?,
            "/usr/sbin/auditctl",
        ),
    ])
}

/// Runs a program as root (through sudo when needed) and waits; Ctrl-C goes to the program,
/// which stops cleanly, and this process waits for it instead of dying first.
pub fn run_as_root(bin: &Path, args: &[&OsStr]) -> anyhow::Result<()> {
    let mut cmd = if is_root() {
        Command::new(bin)
    } else {
        println!("xtask: the agent needs root; running it through sudo");
        let mut c = Command::new("sudo");
        c.arg(bin);
        c
    };
    let mut child = cmd
        .args(args)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // SAFETY: ignoring SIGINT in this process only; the child was spawned with the default.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = child.wait()?;
    if !status.success() {
        bail!("{} exited with {status}", bin.display());
    }
    Ok(())
}

/// Runs a program as root (through sudo when not root) with `env` set, and returns what it
/// printed; its stderr goes to ours.
pub fn output_as_root(
    bin: &Path,
    args: &[&OsStr],
    env: &[(&str, &OsStr)],
) -> anyhow::Result<String> {
    let mut cmd = if is_root() {
        let mut c = Command::new(bin);
        c.envs(env.iter().copied());
        c
    } else {
        println!(
            "xtask: {} needs root; running it through sudo",
            bin.display()
        );
        let mut c = Command::new("sudo");
        c.arg("env");
        for (k, v) in env {
            let mut kv = std::ffi::OsString::from(format!("{k}="));
            kv.push(v);
            c.arg(kv);
        }
        c.arg(bin);
        c
    };
    let out = cmd
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
