//! `cargo xtask`: the one entry point to build, run and test timeguard.

mod package;
mod setup;
mod vm;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run and test timeguard")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel programs and the agent (installs the BPF toolchain if missing).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run the agent as root with the bundled default policy; Ctrl-C stops it.
    Run {
        /// Policy to run with instead of policies/default.yaml.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Every test: formatting and lints, unit tests, host integration tests, VM tests.
    Test {
        /// Skip the VM tests (they need qemu and the guest kernels; CI runs them).
        #[arg(long)]
        no_vm: bool,
        /// Only the VM tests (while working on a scenario).
        #[arg(long, conflicts_with = "no_vm")]
        vm_only: bool,
        /// Run the VM tests on these kernels only (default: all).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Run only the tests whose name contains this: the host tests (passed to cargo
        /// test), or with --vm-only the guest's (`clock::` is one area); a full run runs
        /// every guest test.
        filter: Option<String>,
    },
    /// Fuzz the policy parser (libFuzzer, nightly) for a while.
    Fuzz {
        #[arg(long, default_value_t = 300)]
        seconds: u32,
    },
    /// Measure what the agent costs beside no guard and beside auditd and bpftrace, in one
    /// run: one table here, and target/bench/bench.{json,md}.
    Bench {
        /// Guest kernel series: 6.1 or 6.12.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// Only these figures: `clock` (in a guest) or `network` (on this host's kernel).
        #[arg(long)]
        only: Option<String>,
    },
    /// Build the Debian package (cargo-deb): the agent, its systemd unit and the time
    /// daemons' drop-ins, the policies (the default under /etc/timeguard), the man page and
    /// shell completions; then check it (contents, `systemd-analyze verify`, the maintainer
    /// scripts in a scratch root).
    Deb,
    /// Boot a guest kernel with the agent running and a shell on the console.
    Vm {
        /// Guest kernel series: 6.1 or 6.12.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// Run the scripted demo instead of a shell, then power off.
        #[arg(long)]
        demo: bool,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command (in the workspace root unless it names a directory), failing with the
/// command line when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(workspace_root());
    }
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds the agent (and so the kernel programs) and the test programs.
fn build(release: bool) -> anyhow::Result<PathBuf> {
    setup::ensure_bpf_toolchain()?;
    let mut c = cargo();
    c.args([
        "build",
        "--package",
        "agent",
        "--package",
        "timeguard-tests",
        "--bins",
    ]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(target_dir(release))
}

fn target_dir(release: bool) -> PathBuf {
    workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
}

fn lint() -> anyhow::Result<()> {
    println!("== formatting and lints");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // Without --workspace: the default members, which leave out the BPF-only crate.
    run(cargo().args([
        "clippy",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The guest's tests are `test = false`, which --all-targets leaves out.
    run(cargo().args([
        "clippy",
        "--package",
        "timeguard-tests",
        "--test",
        "guest",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel programs only build for the BPF target, with nightly.
    run(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "--package",
            "agent-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC"))?;
    Ok(())
}

/// Runs the policy parser's fuzz target for `seconds`, seeded with every golden case and
/// bundled policy; the corpus it grows is kept in target/fuzz-corpus.
fn fuzz(seconds: u32) -> anyhow::Result<()> {
    setup::ensure_bpf_toolchain()?;
    setup::ensure_cargo_fuzz()?;
    let root = workspace_root();
    check_fuzz_lock(&root)?;
    println!("== fuzzing the policy parser for {seconds}s");
    let corpus = root.join("target/fuzz-corpus");
    std::fs::create_dir_all(&corpus)?;
    run(Command::new("cargo")
        .args(["+nightly", "fuzz", "run", "policy"])
        .arg(&corpus)
        .arg(root.join("tests/golden/cases"))
        .arg(root.join("policies"))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .current_dir(root.join("fuzz"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC"))
}

/// The fuzz crate is a workspace of its own (cargo-fuzz builds it with sanitizer flags), so
/// it has its own lock file, committed: every package it shares with the agent must resolve
/// to a version the workspace locks, or the fuzzer tests another parser.
fn check_fuzz_lock(root: &Path) -> anyhow::Result<()> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let shipped = locked_versions(&read(root.join("Cargo.lock"))?);
    let fuzzed = locked_versions(&read(root.join("fuzz/Cargo.lock"))?);
    let differ: Vec<String> = fuzzed
        .iter()
        .filter_map(|(name, versions)| {
            let ships = shipped.get(name)?;
            // The workspace may hold two majors of one package (for xtask, say); the fuzzer
            // may lock only versions the workspace does.
            (!versions.is_subset(ships))
                .then(|| format!("{name}: fuzzed {versions:?}, shipped {ships:?}"))
        })
        .collect();
    if !differ.is_empty() {
        bail!(
            "fuzz/Cargo.lock does not fuzz the versions that ship ({}); refresh it from the agent's: \
             cp Cargo.lock fuzz/Cargo.lock && cargo metadata --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null",
            differ.join("; ")
        );
    }
    Ok(())
}

/// Each package of a Cargo.lock with the versions it is locked at.
fn locked_versions(lock: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut name = None;
    for line in lock.lines() {
        let value = |key: &str| {
            line.strip_prefix(key)
                .and_then(|v| v.trim().strip_prefix('"'))
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_string)
        };
        if line == "[[package]]" {
            name = None;
        } else if let Some(n) = value("name =") {
            name = Some(n);
        } else if let (Some(v), Some(n)) = (value("version ="), name.take()) {
            out.entry(n).or_default().insert(v);
        }
    }
    out
}

fn test(
    no_vm: bool,
    vm_only: bool,
    kernels: &[String],
    filter: Option<&str>,
) -> anyhow::Result<()> {
    if !no_vm {
        setup::ensure_vm_tools()?;
    }
    let bin = build(true)?;
    if vm_only {
        return vm::test_all(&bin, kernels, filter);
    }
    lint()?;
    println!("== unit and host integration tests");
    // A real Prometheus scrapes the agent in a host test, and promtool checks the shipped
    // alerting rules: both from Debian's package, unpacked, never installed.
    let prometheus = setup::unpacked_tool("prometheus", "/usr/bin/prometheus")?;
    let promtool = setup::unpacked_tool("prometheus", "/usr/bin/promtool")?;
    // Real chronyd and chronyc for the network guard's tests, run only with -x (never
    // touching this host's clock) inside namespaces the tests make.
    let chronyd = setup::unpacked_tool("chrony", "/usr/sbin/chronyd")?;
    let chronyc = setup::unpacked_tool("chrony", "/usr/bin/chronyc")?;
    // Real ptp4l for the PTP guard's tests, run free-running without CAP_SYS_TIME.
    let ptp4l = setup::unpacked_tool("linuxptp", "/usr/sbin/ptp4l")?;
    let mut c = cargo();
    // The host integration tests that need what xtask provides (the agent binary, root,
    // chronyd, ptp4l, Prometheus) are ignored by a plain `cargo test`, with the reason;
    // here they run, and fail if something is missing.
    c.args(["test", "--release"])
        .env("TIMEGUARD_BIN", bin.join("timeguard"))
        .env("TIMEGUARD_PROMETHEUS", prometheus)
        .env("TIMEGUARD_PROMTOOL", promtool)
        .env("TIMEGUARD_CHRONYD", chronyd)
        .env("TIMEGUARD_CHRONYC", chronyc)
        .env("TIMEGUARD_PTP4L", ptp4l);
    if let Some(f) = filter {
        c.arg(f);
    }
    c.args(["--", "--include-ignored"]);
    run(&mut c)?;
    // Bounded, so CI stays well inside its time; `cargo xtask fuzz` runs longer.
    fuzz(30)?;
    println!("== the Debian package");
    package::check_deb(&deb(&bin)?)?;
    if no_vm {
        println!("vm tests: skipped (--no-vm)");
        return Ok(());
    }
    println!("== VM tests (BPF LSM enforcement in guest kernels)");
    vm::test_all(&bin, kernels, None)
}

/// Builds the Debian package from the release build in `bin`; its path.
fn deb(bin: &Path) -> anyhow::Result<PathBuf> {
    setup::ensure_cargo_deb()?;
    let assets = workspace_root().join("target/deb-assets");
    std::fs::create_dir_all(&assets)?;
    let timeguard = bin.join("timeguard");
    for (what, file) in [
        ("man", "timeguard.8"),
        ("bash", "timeguard.bash"),
        ("zsh", "_timeguard"),
        ("fish", "timeguard.fish"),
    ] {
        let out = Command::new(&timeguard)
            .args(["generate", what])
            .output()
            .with_context(|| format!("{} generate {what}", timeguard.display()))?;
        if !out.status.success() {
            bail!("timeguard generate {what} failed");
        }
        std::fs::write(assets.join(file), out.stdout)?;
    }
    // Reproducible: no name or time stamp in the gzip header.
    run(Command::new("gzip")
        .args(["-9nf"])
        .arg(assets.join("timeguard.8")))?;
    let out = cargo()
        .args(["deb", "--package", "agent", "--no-build", "--no-strip"])
        .current_dir(workspace_root())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!(
            "cargo deb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(PathBuf::from(path))
}

/// The guest's figures: clock calls and unrelated calls with no guard, timeguard and the
/// peers; the event pipeline; each guard's start-up, memory and CPU.
fn bench_guest(bin: &Path, kernel: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    println!(
        "== benchmark: guest kernel {kernel}: no guard, timeguard, auditd and bpftrace in one boot"
    );
    let accel = std::env::var("TIMEGUARD_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
    let place = format!("guest {kernel}, QEMU {accel}");
    let mut rows = vm::bench_kernel(bin, kernel)?;
    for r in &mut rows {
        r["where"] = serde_json::json!(place);
    }
    Ok(rows)
}

/// The network guard's figures, on this host's kernel (its network programs load here):
/// real chronyd's throughput with and without the guard, and a flood over the rate limit.
fn bench_network(bin: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    println!("== benchmark: the network guard on this host's kernel, in namespaces it makes");
    let chronyd = setup::unpacked_tool("chrony", "/usr/sbin/chronyd")?;
    let out = setup::output_as_root(
        &bin.join("tg-ntp-bench"),
        &[chronyd.as_os_str(), "5".as_ref()],
        &[("TIMEGUARD_BIN", bin.join("timeguard").as_os_str())],
    )?;
    if let Some(failed) = out.lines().find_map(|l| l.strip_prefix("TG-BENCH-FAILED ")) {
        bail!("the network benchmark failed: {failed}");
    }
    let place = format!("host {}", kernel_release());
    out.lines()
        .filter_map(|l| l.strip_prefix("TG-BENCH "))
        .map(|j| {
            let mut row: serde_json::Value = serde_json::from_str(j)
                .with_context(|| format!("the network benchmark printed {j}"))?;
            row["where"] = serde_json::json!(place);
            Ok(row)
        })
        .collect()
}

/// The guards in the table's order, with their column titles.
const GUARDS: [(&str, &str); 4] = [
    ("none", "no guard"),
    ("timeguard", "timeguard"),
    ("auditd", "auditd (CIS rules)"),
    ("bpftrace", "bpftrace one-liner"),
];

/// timeguard's figure over another's, when both were measured.
fn ratio(row: &serde_json::Value, other: &str) -> Option<f64> {
    Some(row["timeguard"].as_f64()? / row[other].as_f64()?).filter(|r| r.is_finite())
}

/// The unit, and which way is better.
fn unit(row: &serde_json::Value) -> String {
    let unit = row["unit"].as_str().unwrap_or("?");
    match row["better"].as_str() {
        Some("lower") => format!("{unit} ↓"),
        Some("higher") => format!("{unit} ↑"),
        _ => unit.to_string(),
    }
}

fn cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
        None => "–".into(),
    }
}

/// Prints one table of every figure and writes it as target/bench/bench.{json,md}.
fn bench_report(rows: &[serde_json::Value]) -> anyhow::Result<()> {
    let machine = format!(
        "{} ({} CPUs), host kernel {}",
        host_cpu(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel_release()
    );
    let measured = now_utc();
    let ratio_titles = [
        "timeguard ÷ no guard",
        "timeguard ÷ auditd",
        "timeguard ÷ bpftrace",
    ];
    let mut md = format!(
        "Measured {measured} on {machine}, by `cargo xtask bench`. ↓: lower is better; ↑: higher is better.\n\n| where | figure | unit | {} | {} |\n|---|---|---|{}\n",
        GUARDS.map(|(_, t)| t).join(" | "),
        ratio_titles.join(" | "),
        "---:|".repeat(GUARDS.len() + ratio_titles.len())
    );
    println!("\n== one table: {machine}");
    println!(
        "{:<62} {:<14} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "figure",
        "unit",
        "no guard",
        "timeguard",
        "auditd",
        "bpftrace",
        "÷none",
        "÷auditd",
        "÷bpftr"
    );
    let mut section = String::new();
    let mut notes = String::new();
    for row in rows {
        let here = format!(
            "{} ({})",
            row["section"].as_str().unwrap_or("?"),
            row["where"].as_str().unwrap_or("?")
        );
        if here != section {
            println!("-- {here}");
            section = here;
        }
        let figure = row["figure"].as_str().unwrap_or("?");
        let values = GUARDS.map(|(key, _)| cell(row[key].as_f64()));
        let ratios = ["none", "auditd", "bpftrace"].map(|o| cell(ratio(row, o)));
        println!(
            "{figure:<62} {:<14} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}",
            unit(row),
            values[0],
            values[1],
            values[2],
            values[3],
            ratios[0],
            ratios[1],
            ratios[2]
        );
        md.push_str(&format!(
            "| {} | {} ({}) | {} | {} | {} |\n",
            row["where"].as_str().unwrap_or("?"),
            figure,
            row["section"].as_str().unwrap_or("?"),
            unit(row),
            values.join(" | "),
            ratios.join(" | ")
        ));
        if let Some(note) = row["note"].as_str() {
            notes.push_str(&format!("- {figure}: {note}\n"));
        }
    }
    if !notes.is_empty() {
        println!("\n{notes}");
        md.push_str(&format!("\n{notes}"));
    }
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::json!({"machine": machine, "measured": measured, "figures": rows});
    std::fs::write(dir.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(dir.join("bench.md"), md)?;
    println!("written: {}/bench.json, bench.md", dir.display());
    Ok(())
}

fn now_utc() -> String {
    setup::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|d| d.trim().to_string())
        .unwrap_or_default()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".into())
}

/// After `cargo xtask run`: what the agent left on this machine (its default state directory
/// and pin directory: stopping never unpins), and how to remove it.
fn left_pinned(bin: &Path) {
    let state = Path::new("/var/lib/timeguard");
    if state.exists() {
        println!(
            "xtask: the agent kept its last known good policy in {} (`sudo rm -r {}` removes it)",
            state.display(),
            state.display()
        );
    }
    let pins = Path::new("/sys/fs/bpf/timeguard");
    if pins.exists() {
        println!(
            "xtask: the agent's programs stay pinned at {}: this machine's clock stays guarded by the last policy.\n\
             xtask: `sudo {} stop --unpin` removes them: the programs detach, and nothing guards the clock any more.",
            pins.display(),
            bin.display()
        );
    }
}

/// The host's CPU model, for the record of where a benchmark ran.
fn host_cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Build { release } => build(release).map(|_| ()),
        Cmd::Run { policy } => {
            let bin = build(true)?.join("timeguard");
            let policy = policy.unwrap_or_else(|| workspace_root().join("policies/default.yaml"));
            let ran = setup::run_as_root(
                &bin,
                &["run".as_ref(), "--policy".as_ref(), policy.as_os_str()],
            );
            left_pinned(&bin);
            ran
        }
        Cmd::Fuzz { seconds } => fuzz(seconds),
        Cmd::Deb => {
            let built = deb(&build(true)?)?;
            package::check_deb(&built)?;
            println!("built {}", built.display());
            Ok(())
        }
        Cmd::Test {
            no_vm,
            vm_only,
            kernels,
            filter,
        } => test(no_vm, vm_only, &kernels, filter.as_deref()),
        Cmd::Bench { kernel, only } => {
            let bin = build(true)?;
            let (guest, host) = match only.as_deref() {
                None => (true, true),
                Some("clock") => (true, false),
                Some("network") => (false, true),
                Some(other) => bail!("--only {other}: write clock or network"),
            };
            let mut rows = Vec::new();
            if guest {
                setup::ensure_vm_tools()?;
                rows.extend(bench_guest(&bin, &kernel)?);
            }
            if host {
                rows.extend(bench_network(&bin)?);
            }
            bench_report(&rows)
        }
        Cmd::Vm { kernel, demo } => {
            setup::ensure_vm_tools()?;
            let bin = build(true)?;
            vm::interactive(&bin, &kernel, demo)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_files_are_read_by_package_and_version() {
        let lock = "version = 4\n\n[[package]]\nname = \"serde-saphyr\"\nversion = \"2.1.1\"\nsource = \"x\"\n\n[[package]]\nname = \"syn\"\nversion = \"1.0.0\"\n\n[[package]]\nname = \"syn\"\nversion = \"2.0.1\"\n";
        let v = locked_versions(lock);
        assert_eq!(v["serde-saphyr"], BTreeSet::from(["2.1.1".to_string()]));
        assert_eq!(v["syn"].len(), 2);
        assert_eq!(v.len(), 2, "the lock file's own version line is no package");
    }

    #[test]
    fn the_committed_fuzz_lock_fuzzes_what_ships() {
        check_fuzz_lock(&workspace_root()).expect("fuzz/Cargo.lock");
    }
}
