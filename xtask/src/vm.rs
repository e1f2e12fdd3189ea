//! Real-kernel tests: boots Debian's own kernels under QEMU with an initramfs holding the
//! agent, the test programs and busybox, runs the guest's libtest binary
//! (`tests/guest/`) there, and reads each test's verdict off the console.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};

use crate::{cargo, run, setup, workspace_root};

/// A guest kernel: Debian's package, pinned to a version verified here, and the pattern of
/// its successors should the archive have moved on.
struct GuestKernel {
    series: &'static str,
    package: &'static str,
    successor: &'static str,
}

const KERNELS: [GuestKernel; 2] = [
    GuestKernel {
        series: "6.1",
        package: "linux-image-6.1.0-50-amd64-unsigned",
        successor: r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
    },
    GuestKernel {
        series: "6.12",
        package: "linux-image-6.12.107+deb12-amd64-unsigned",
        successor: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
    },
];

/// Kernel modules the guest loads, from the kernel's own package: the NIC whose PTP hardware
/// clock gives the guest a /dev/ptp0 (QEMU's e1000e), and the PPS line discipline that
/// gives it a /dev/pps0 on a serial port.
const GUEST_MODULES: [&str; 2] = [
    "drivers/net/ethernet/intel/e1000e/e1000e.ko",
    "drivers/pps/clients/pps-ldisc.ko",
];

/// How long one guest may run the suite before it is declared hung: every test starts and
/// unpins an agent of its own, under emulation.
const SUITE_TIMEOUT: Duration = Duration::from_secs(1200);
/// The benchmark measures four configurations (no guard, timeguard, auditd, bpftrace) in one boot.
const BENCH_TIMEOUT: Duration = Duration::from_secs(1200);

fn cache_dir() -> PathBuf {
    setup::cache_root().join("kernels")
}

/// A guest kernel's files: the image and the modules the guest loads.
struct KernelFiles {
    image: PathBuf,
    modules: Vec<PathBuf>,
}

/// The file name a module is kept under in the cache.
fn module_file(dir: &Path, module: &str) -> PathBuf {
    dir.join("modules")
        .join(Path::new(module).file_name().unwrap_or_default())
}

fn find_kernel(series: &str) -> anyhow::Result<&'static GuestKernel> {
    KERNELS.iter().find(|k| k.series == series).ok_or_else(|| {
        anyhow!(
            "no guest kernel {series}; choose one of: {}",
            KERNELS
                .iter()
                .map(|k| k.series)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Returns the kernel image and modules, downloading and unpacking Debian's package once.
fn kernel_files(k: &GuestKernel) -> anyhow::Result<KernelFiles> {
    let dir = cache_dir().join(k.series);
    let ready = KernelFiles {
        image: dir.join("vmlinuz"),
        modules: GUEST_MODULES.iter().map(|m| module_file(&dir, m)).collect(),
    };
    if ready.image.exists() && ready.modules.iter().all(|m| m.exists()) {
        return Ok(ready);
    }
    fs::create_dir_all(dir.join("modules"))
        .with_context(|| format!("creating {}", dir.display()))?;
    setup::apt_update()?;
    let package = if setup::apt_has_package(k.package) {
        k.package.to_string()
    } else {
        newest_successor(k)?
    };
    println!(
        "setup: downloading guest kernel {package} into {}",
        dir.display()
    );
    let deb = setup::download_deb(&package, &dir)?;
    // Only the image and a few modules are needed; newer packages compress modules (.ko.xz).
    let wanted: Vec<String> = GUEST_MODULES
        .iter()
        .map(|m| format!("'./lib/modules/*/kernel/{m}*'"))
        .collect();
    let unpack = format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './boot/vmlinuz-*' {}",
        deb.display(),
        dir.display(),
        wanted.join(" ")
    );
    run(Command::new("sh").args(["-c", &unpack]))?;
    for (module, dest) in GUEST_MODULES.iter().zip(&ready.modules) {
        let found = format!(
            "f=$(ls '{dir}'/lib/modules/*/kernel/{module}* | head -n1) && case \"$f\" in *.xz) xz -dc \"$f\" ;; *) cat \"$f\" ;; esac > '{dest}'",
            dir = dir.display(),
            dest = dest.display()
        );
        run(Command::new("sh").args(["-c", &found]))
            .with_context(|| format!("{} holds no {module}", deb.display()))?;
    }
    let _ = fs::remove_dir_all(dir.join("lib"));
    let image = fs::read_dir(dir.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| anyhow!("{} holds no /boot/vmlinuz-*", deb.display()))?;
    fs::rename(&image, &ready.image)?;
    fs::write(dir.join("package"), format!("{package}\n"))?;
    let _ = fs::remove_file(&deb);
    Ok(ready)
}

fn newest_successor(k: &GuestKernel) -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", k.successor])
        .output()
        .context("running apt-cache search")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort_by_key(|n| version_key(n));
    let newest = names.pop().ok_or_else(|| {
        anyhow!(
            "Debian's archive offers neither {} nor a successor matching {}",
            k.package,
            k.successor
        )
    })?;
    println!("setup: {} is no longer offered; using {newest}", k.package);
    Ok(newest)
}

/// Orders package names by the numbers in them (6.1.0-9 < 6.1.0-50).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Shared libraries a dynamically linked binary needs, as `ldd` lists them.
fn shared_libraries(bin: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(missing) = text.lines().find(|l| l.contains("not found")) {
        bail!(
            "{} needs a library this machine lacks ({}); install the Debian package that has it",
            bin.display(),
            missing.trim()
        );
    }
    Ok(text
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

fn copy_into(root: &Path, from: &Path, to: &str) -> anyhow::Result<()> {
    let dest = root.join(to.trim_start_matches('/'));
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, &dest)
        .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    Ok(())
}

/// What the guest does after boot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    Test,
    Bench,
    Demo,
    Shell,
}

impl GuestMode {
    fn name(self) -> &'static str {
        match self {
            GuestMode::Test => "test",
            GuestMode::Demo => "demo",
            GuestMode::Bench => "bench",
            GuestMode::Shell => "shell",
        }
    }
}

/// Builds the guest's tests (a libtest binary, `test = false`: the host never runs it) and
/// returns the executable cargo made.
fn guest_tests() -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args([
            "test",
            "--release",
            "--package",
            "timeguard-tests",
            "--test",
            "guest",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the guest's tests")?;
    if !out.status.success() {
        bail!("building the guest's tests failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "guest")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo built no executable for the guest's tests"))
}

/// Where the guest's tests live in the initramfs (/init runs them).
const GUEST_TESTS: &str = "/usr/local/bin/tg-guest-tests";

/// Builds the initramfs: busybox, the agent, the test programs with their libraries,
/// the guest's policy and /init.
fn build_initramfs(
    bin: &Path,
    kernel: &KernelFiles,
    work: &Path,
    mode: GuestMode,
) -> anyhow::Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in [
        "bin",
        "sbin",
        "etc/timeguard",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "usr/local/sbin",
        "lib/modules",
        "etc/audit",
        "var/log",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    let vm_dir = workspace_root().join("tests/vm");
    copy_into(&root, Path::new("/bin/busybox"), "/bin/busybox")?;
    copy_into(&root, &vm_dir.join("init.sh"), "/init")?;
    // The shell's agent runs on the guest policy (each test writes its own).
    copy_into(
        &root,
        &workspace_root().join("tests/guest/policies/guest.yaml"),
        "/etc/timeguard/policy.yaml",
    )?;
    // chronyd looks its user up; hwclock and chronyd need nothing else from /etc.
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n_chrony:x:100:100::/run:/bin/false\nntpsec:x:101:101::/nonexistent:/usr/sbin/nologin\nsystemd-timesync:x:102:102::/:/usr/sbin/nologin\n",
    )?;
    // Debian's name service switch: the daemons that drop to their users (ntpd -u,
    // systemd-timesyncd) load systemd's NSS module beside the files, as on a real host.
    fs::write(
        root.join("etc/nsswitch.conf"),
        "passwd: files systemd\ngroup: files systemd\nshadow: files systemd\nhosts: files dns\n",
    )?;
    // The loader's configuration as Debian ships it (ld.so.conf and its multiarch drop-in):
    // the library directories the agent counts are the host's.
    fs::create_dir_all(root.join("etc/ld.so.conf.d"))?;
    fs::write(
        root.join("etc/ld.so.conf"),
        "include /etc/ld.so.conf.d/*.conf\n",
    )?;
    fs::write(
        root.join("etc/ld.so.conf.d/x86_64-linux-gnu.conf"),
        "# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n",
    )?;
    // auditd's log belongs to group adm (Debian's auditd.conf).
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nadm:x:4:\n_chrony:x:100:\nntpsec:x:101:\nsystemd-timesync:x:102:\n",
    )?;
    for module in &kernel.modules {
        let name = module.file_name().unwrap_or_default().to_string_lossy();
        copy_into(&root, module, &format!("/lib/modules/{name}"))?;
    }
    let hwclock = Path::new("/usr/sbin/hwclock");
    let binaries = [
        (bin.join("timeguard"), "/usr/sbin/timeguard"),
        // The same program twice: the policy allows only the first file, by its inode.
        (bin.join("tg-clock"), "/usr/local/sbin/tg-clock-allowed"),
        (bin.join("tg-clock"), "/usr/local/bin/tg-clock"),
        // Real tools, where Debian puts them (the policy allows these files), and util-linux's
        // hwclock a second time where it is not allowed.
        (
            setup::unpacked_tool("chrony", "/usr/sbin/chronyd")?,
            "/usr/sbin/chronyd",
        ),
        // chronyc: a root shell's requests relayed through chronyd.
        (
            setup::unpacked_tool("chrony", "/usr/bin/chronyc")?,
            "/usr/bin/chronyc",
        ),
        (hwclock.to_path_buf(), "/usr/sbin/hwclock"),
        (hwclock.to_path_buf(), "/usr/local/bin/hwclock"),
        // Real phc2sys, disciplining the clock from the e1000e PHC, and ptp4l on that NIC.
        (
            setup::unpacked_tool("linuxptp", "/usr/sbin/phc2sys")?,
            "/usr/sbin/phc2sys",
        ),
        (
            setup::unpacked_tool("linuxptp", "/usr/sbin/ptp4l")?,
            "/usr/sbin/ptp4l",
        ),
        (
            setup::unpacked_tool("linuxptp", "/etc/linuxptp/ptp4l.conf")?,
            "/etc/linuxptp/ptp4l.conf",
        ),
        // NTPsec's ntpd and the wrapper its unit starts it with (which takes util-linux's
        // flock: busybox has none).
        (PathBuf::from("/usr/bin/flock"), "/usr/bin/flock"),
        (
            setup::unpacked_tool("ntpsec", "/usr/sbin/ntpd")?,
            "/usr/sbin/ntpd",
        ),
        (
            setup::unpacked_tool("ntpsec", "/usr/libexec/ntpsec/ntp-systemd-wrapper")?,
            "/usr/libexec/ntpsec/ntp-systemd-wrapper",
        ),
        // systemd-timesyncd where the bundled policy names it (/lib is usr/lib on Debian),
        // and systemd's NSS module (its libraries come with it).
        (
            setup::installed_or_unpacked("systemd-timesyncd", "/lib/systemd/systemd-timesyncd")?,
            "/usr/lib/systemd/systemd-timesyncd",
        ),
        (
            PathBuf::from("/lib/x86_64-linux-gnu/libnss_systemd.so.2"),
            "/lib/x86_64-linux-gnu/libnss_systemd.so.2",
        ),
    ];
    let mut binaries = binaries.to_vec();
    match mode {
        GuestMode::Test | GuestMode::Demo => binaries.push((guest_tests()?, GUEST_TESTS)),
        GuestMode::Bench => binaries.push((bin.join("tg-vm-bench"), "/usr/local/bin/tg-vm-bench")),
        GuestMode::Shell => {}
    }
    if mode == GuestMode::Bench {
        binaries.extend(setup::bench_peers()?);
        copy_into(
            &root,
            &setup::unpacked_tool("auditd", "/etc/audit/auditd.conf")?,
            "/etc/audit/auditd.conf.debian",
        )?;
    }
    let mut libs = BTreeSet::new();
    for (from, to) in &binaries {
        copy_into(&root, from, to)?;
        libs.extend(shared_libraries(from)?);
    }
    for lib in libs {
        let real = fs::canonicalize(&lib).unwrap_or_else(|_| lib.clone());
        copy_into(&root, &real, &lib.to_string_lossy())?;
    }
    for p in [
        "init",
        "bin/busybox",
        "usr/sbin/chronyd",
        "usr/bin/chronyc",
        "usr/sbin/phc2sys",
        "usr/sbin/ptp4l",
        "usr/sbin/ntpd",
        "usr/libexec/ntpsec/ntp-systemd-wrapper",
        "usr/lib/systemd/systemd-timesyncd",
        "usr/sbin/hwclock",
        "usr/local/bin/hwclock",
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(0o755))?;
    }
    let cpio = work.join("initramfs.cpio");
    // An uncompressed newc archive: the guest kernels refuse some hand-made gzip streams.
    let pack = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
        root.display(),
        cpio.display()
    );
    run(Command::new("sh").args(["-c", &pack]))?;
    Ok(cpio)
}

/// `filter` selects the guest's tests by name (libtest's filter), through `tg.filter=` on
/// the kernel command line; None runs them all.
fn qemu(kernel: &Path, initrd: &Path, mode: GuestMode, filter: Option<&str>) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    // Emulation by default: /dev/kvm exists on these machines but fails under nested
    // virtualization. On a real host, TIMEGUARD_VM_ACCEL=kvm is much faster.
    if std::env::var("TIMEGUARD_VM_ACCEL").is_ok_and(|a| a == "kvm") {
        c.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        // One emulator thread for both vCPUs. Attaching a BPF program patches the kernel's
        // text (an int3, then the call) while the other vCPU runs it, and multi-threaded TCG
        // keeps running what it translated before: a vCPU spun at bpf_lsm_settime+0 for
        // good when the agent attached under the start-up tests' probers (a soft lockup,
        // 6.1, in CI and here), and bpftrace hit a stale breakpoint (an int3 oops in
        // syscall_trace_enter, 6.12).
        c.args(["-accel", "tcg,thread=single", "-cpu", "max"]);
    }
    // The benchmark's guest also holds bpftrace and its LLVM (about 200 MiB, unpacked in RAM).
    let memory = if mode == GuestMode::Bench {
        "2048"
    } else {
        "1024"
    };
    c.args([
        "-m",
        memory,
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        // A NIC with a PTP hardware clock (/dev/ptp0), unplugged: nothing leaves the guest.
        "-nic",
        "none",
        "-device",
        // No option ROM: iPXE would add seconds to every boot.
        "e1000e,romfile=",
        // A second serial port for the PPS line discipline (/dev/pps0).
        "-serial",
        "mon:stdio",
        "-serial",
        "null",
        "-kernel",
    ])
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .arg("-append")
    // A soft lockup panics the guest (which then ends at once), with its stack shown
    // (loglevel 5: `quiet` would hide the registers and the trace).
    .arg(format!(
        "console=ttyS0 quiet loglevel=5 softlockup_panic=1 panic=-1 tg.mode={}{}",
        mode.name(),
        filter
            .map(|f| format!(" tg.filter={f}"))
            .unwrap_or_default()
    ));
    c
}

/// What libtest printed in the guest: how many tests it was to run, each verdict (`test
/// NAME ... ok|FAILED|ignored`), and its exit status.
#[derive(Default)]
struct GuestRun {
    listed: Option<usize>,
    verdicts: Vec<(String, String)>,
    /// A `test NAME ... ` line whose verdict another line's output pushed onto a line of
    /// its own.
    pending: Option<String>,
    exit: Option<i32>,
}

const VERDICTS: [&str; 3] = ["ok", "FAILED", "ignored"];

impl GuestRun {
    /// Reads one console line; a verdict it completes, as `(name, verdict)`.
    fn read(&mut self, line: &str) -> Option<(String, String)> {
        if let Some(n) = line
            .strip_prefix("running ")
            .and_then(|r| r.strip_suffix(" tests").or_else(|| r.strip_suffix(" test")))
        {
            self.listed = n.trim().parse().ok();
        } else if let Some(code) = line.strip_prefix("TG-SUITE-EXIT ") {
            self.exit = code.trim().parse().ok();
        } else if let Some((name, after)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            self.pending = Some(name.to_string());
            return self.verdict(after);
        } else if self.pending.is_some() {
            return self.verdict(line);
        }
        None
    }

    fn verdict(&mut self, text: &str) -> Option<(String, String)> {
        // libtest gives an ignored test's reason after a comma.
        let text = text.trim();
        let v = VERDICTS
            .into_iter()
            .find(|v| text == *v || text.starts_with(&format!("{v}, ")))?;
        let done = (self.pending.take()?, v.to_string());
        self.verdicts.push(done.clone());
        Some(done)
    }

    fn failed(&self) -> impl Iterator<Item = &str> {
        self.verdicts
            .iter()
            .filter(|(_, v)| v == "FAILED")
            .map(|(n, _)| n.as_str())
    }

    /// What is wrong with the run as a whole, if anything: no test ran, fewer ran than
    /// were listed, or the binary failed without a failed test to show for it.
    fn problem(&self) -> Option<String> {
        let ran = self.verdicts.len();
        match self.listed {
            None => Some("the guest's tests never started (no `running N tests` line)".into()),
            Some(0) => Some("the filter selected no guest test".into()),
            Some(n) if ran < n => Some(format!(
                "the guest listed {n} tests but reported {ran} verdicts"
            )),
            _ if self.exit != Some(0) && self.failed().next().is_none() => Some(format!(
                "the guest's tests exited with {:?} without a failed test",
                self.exit
            )),
            _ => None,
        }
    }
}

/// Boots one kernel in `mode` and hands each console line to `on_line` until the guest
/// says `TG-SUITE-EXIT`. On failure (`failed` says so afterwards) the whole console and
/// QEMU's stderr are printed.
fn run_guest(
    bin: &Path,
    k: &GuestKernel,
    mode: GuestMode,
    filter: Option<&str>,
    mut on_line: impl FnMut(&str),
    failed: impl Fn() -> bool,
) -> anyhow::Result<Duration> {
    let files = kernel_files(k)?;
    let work = workspace_root().join("target/vm").join(k.series);
    fs::create_dir_all(&work)?;
    let initrd = build_initramfs(bin, &files, &work, mode)?;
    let console_log = work.join(format!("console-{}.log", mode.name()));
    let qemu_stderr = work.join("qemu.stderr");
    let started = Instant::now();
    let mut child = qemu(&files.image, &initrd, mode, filter)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            fs::File::create(&qemu_stderr).context("creating the qemu log")?,
        ))
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut console = Vec::new();
    let mut finished = false;
    let timeout = if mode == GuestMode::Bench {
        BENCH_TIMEOUT
    } else {
        SUITE_TIMEOUT
    };
    while started.elapsed() < timeout {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                finished |= line.starts_with("TG-SUITE-EXIT");
                on_line(&line);
                // A panicked guest says nothing more: no need to wait out the timeout.
                let panicked = line.contains("end Kernel panic");
                console.push(line);
                if panicked {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if child.try_wait()?.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if child.try_wait()?.is_none() {
        // Only the qemu this function started, by its id.
        let _ = child.kill();
    }
    let _ = child.wait();
    fs::write(&console_log, console.join("\n"))?;
    if !finished || failed() {
        println!(
            "---- guest console ({}; saved in {}) ----",
            k.series,
            console_log.display()
        );
        for l in &console {
            println!("  | {l}");
        }
        println!("---- end of guest console ----");
        let qemu_said = fs::read_to_string(&qemu_stderr).unwrap_or_default();
        if !qemu_said.trim().is_empty() {
            println!("---- qemu stderr ----\n{}", qemu_said.trim_end());
        }
    }
    if !finished {
        bail!(
            "guest {} did not finish within {}s (see {})",
            k.series,
            timeout.as_secs(),
            console_log.display()
        );
    }
    Ok(started.elapsed())
}

/// Boots one kernel in test mode and collects the tests' verdicts. A guest kernel that
/// panics while booting under emulation, before any test ran (seen once on 6.12 under
/// TCG with the host's cores busy, in the scheduler's own set-up), is booted once more,
/// and says so; a failure after the tests began is never retried.
fn test_kernel(bin: &Path, k: &GuestKernel, filter: Option<&str>) -> anyhow::Result<GuestRun> {
    match test_kernel_once(bin, k, filter) {
        Err(e) if e.to_string().contains(BOOT_PANIC) => {
            println!("  [{}] the guest kernel panicked while booting, before any test; booting it once more", k.series);
            test_kernel_once(bin, k, filter)
        }
        other => other,
    }
}

/// What `test_kernel_once` says when the guest kernel panicked before the tests began.
const BOOT_PANIC: &str = "kernel panic while booting";

fn test_kernel_once(bin: &Path, k: &GuestKernel, filter: Option<&str>) -> anyhow::Result<GuestRun> {
    let guest = std::cell::RefCell::new(GuestRun::default());
    let mut panicked_early = false;
    let took = run_guest(
        bin,
        k,
        GuestMode::Test,
        filter,
        |line| {
            let mut g = guest.borrow_mut();
            if line.contains("Kernel panic") && g.verdicts.is_empty() {
                panicked_early = true;
            }
            if let Some((name, verdict)) = g.read(line) {
                println!("  [{}] {name} ... {verdict}", k.series);
            }
        },
        || {
            let g = guest.borrow();
            g.problem().is_some() || g.failed().next().is_some()
        },
    )
    .map_err(|e| {
        if panicked_early {
            anyhow::anyhow!("{BOOT_PANIC}: {e:#}")
        } else {
            e
        }
    })?;
    let guest = guest.into_inner();
    println!(
        "  [{}] guest ran {} tests in {:.1}s",
        k.series,
        guest.verdicts.len(),
        took.as_secs_f64()
    );
    Ok(guest)
}

/// Boots one kernel in bench mode; returns the figures the guest measured (JSON objects).
pub fn bench_kernel(bin: &Path, series: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let k = find_kernel(series)?;
    let figures = std::cell::RefCell::new(Vec::new());
    let problem = std::cell::RefCell::new(None);
    run_guest(
        bin,
        k,
        GuestMode::Bench,
        None,
        |line| {
            if let Some(step) = line.strip_prefix("TG-BENCH-PROGRESS ") {
                println!("  [{}] {step}", k.series);
            } else if let Some(json) = line.strip_prefix("TG-BENCH ") {
                match serde_json::from_str(json) {
                    Ok(v) => figures.borrow_mut().push(v),
                    Err(e) => *problem.borrow_mut() = Some(format!("{e}: {json}")),
                }
            } else if let Some(why) = line.strip_prefix("TG-BENCH-FAILED ") {
                *problem.borrow_mut() = Some(why.to_string());
            }
        },
        || problem.borrow().is_some() || figures.borrow().is_empty(),
    )?;
    if let Some(p) = problem.into_inner() {
        bail!("the benchmark in the guest failed: {p}");
    }
    let figures = figures.into_inner();
    if figures.is_empty() {
        bail!("the benchmark in the guest reported no figure (its console is above)");
    }
    Ok(figures)
}

/// Runs the guest's tests on each kernel (all of them unless `only` names some), those
/// whose name contains `filter` if given (libtest's filter: `clock::` is one area).
pub fn test_all(bin: &Path, only: &[String], filter: Option<&str>) -> anyhow::Result<()> {
    if let Some(f) = filter.filter(|f| f.is_empty() || f.contains(char::is_whitespace)) {
        bail!(
            "the guest's test filter {f:?} must be one word (it goes on the kernel command line)"
        );
    }
    let kernels: Vec<&GuestKernel> = if only.is_empty() {
        KERNELS.iter().collect()
    } else {
        only.iter()
            .map(|s| find_kernel(s))
            .collect::<anyhow::Result<_>>()?
    };
    let (mut passed, mut failed) = (0, 0);
    let mut failures = Vec::new();
    for k in kernels {
        println!("vm: booting Debian kernel {} ({})", k.series, k.package);
        match test_kernel(bin, k, filter) {
            Ok(guest) => {
                passed += guest.verdicts.iter().filter(|(_, v)| v == "ok").count();
                for name in guest.failed() {
                    failed += 1;
                    failures.push(format!("{}: {name}", k.series));
                }
                if let Some(p) = guest.problem() {
                    failed += 1;
                    failures.push(format!("{}: {p}", k.series));
                }
            }
            Err(e) => {
                failed += 1;
                failures.push(format!("{}: {e:#}", k.series));
            }
        }
    }
    for f in &failures {
        println!("vm FAILED {f}");
    }
    println!("vm: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} VM test(s) or run(s) failed");
    }
    Ok(())
}

pub fn interactive(bin: &Path, series: &str, demo: bool) -> anyhow::Result<()> {
    let k = find_kernel(series)?;
    let files = kernel_files(k)?;
    let work = workspace_root()
        .join("target/vm")
        .join(format!("{}-interactive", k.series));
    fs::create_dir_all(&work)?;
    let mode = if demo {
        GuestMode::Demo
    } else {
        GuestMode::Shell
    };
    let initrd = build_initramfs(bin, &files, &work, mode)?;
    if !demo {
        println!("vm: booting {}; the agent runs with /etc/timeguard/policy.yaml (events in /tmp/events.jsonl).", k.package);
        println!("vm: try `date -s 2030-01-01`, `adjtimex -f 100`, `tg-clock-allowed step 60`; `poweroff -f` leaves (Ctrl-A X kills qemu).");
    }
    run(&mut qemu(&files.image, &initrd, mode, None))
}

#[cfg(test)]
mod tests {
    use super::GuestRun;

    fn read_all(lines: &[&str]) -> GuestRun {
        let mut g = GuestRun::default();
        for l in lines {
            g.read(l);
        }
        g
    }

    #[test]
    fn verdicts_on_their_line_or_pushed_onto_the_next() {
        let g = read_all(&[
            "running 3 tests",
            "test clock::a ... ok",
            "test clock::b ... some child's output",
            "FAILED",
            "test clock::c ... ignored, needs a PHC",
            "TG-SUITE-EXIT 101",
        ]);
        assert_eq!(g.listed, Some(3));
        let names: Vec<&str> = g.verdicts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["clock::a", "clock::b", "clock::c"]);
        assert_eq!(g.failed().collect::<Vec<_>>(), ["clock::b"]);
        assert_eq!(g.problem(), None);
    }

    #[test]
    fn a_run_that_lists_more_than_it_reports_or_none_fails() {
        let short = read_all(&["running 2 tests", "test a ... ok", "TG-SUITE-EXIT 0"]);
        assert!(short.problem().is_some_and(|p| p.contains("listed 2")));
        let none = read_all(&["running 0 tests", "TG-SUITE-EXIT 0"]);
        assert!(none.problem().is_some_and(|p| p.contains("no guest test")));
        let silent = read_all(&["TG-SUITE-EXIT 1"]);
        assert!(silent.problem().is_some());
        let crashed = read_all(&["running 1 test", "test a ... ok", "TG-SUITE-EXIT 101"]);
        assert!(crashed
            .problem()
            .is_some_and(|p| p.contains("without a failed test")));
    }
}
