//! The guards the benchmark sets side by side in one boot: timeguard, and what operators run
//! today to watch their clocks (auditd with the CIS benchmark's time-change rules, a
//! bpftrace one-liner). Each is started, proven to be recording, measured, and stopped.

use std::{
    fs,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use timeguard_tests::{
    guest::{agent_status, GuestAgent, COPY, EVENTS},
    harness::sh,
};

/// The guest's policy, as the tests start their agents with it.
const POLICY: &str = include_str!("../../../guest/policies/guest.yaml");

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Guard {
    Timeguard,
    Auditd,
    Bpftrace,
}

impl Guard {
    pub fn key(self) -> &'static str {
        match self {
            Guard::Timeguard => "timeguard",
            Guard::Auditd => "auditd",
            Guard::Bpftrace => "bpftrace",
        }
    }
}

const AUDIT_DIR: &str = "/var/log/audit";
const AUDIT_LOG: &str = "/var/log/audit/audit.log";
/// Debian's auditd.conf, as the package ships it (xtask puts it here).
const AUDITD_CONF_DEBIAN: &str = "/etc/audit/auditd.conf.debian";
const AUDITD_CONF: &str = "/etc/audit/auditd.conf";
const AUDIT_RULES: &str = "/etc/audit/timeguard-bench.rules";
/// Debian's default rules file (buffers, failure mode, backlog wait), then the CIS
/// benchmark's time-change rules as Debian hardening guides give them.
const AUDIT_RULES_TEXT: &str = "-D\n-b 8192\n-f 1\n--backlog_wait_time 60000\n\
-a always,exit -F arch=b64 -S adjtimex,settimeofday,clock_settime -k time-change\n\
-a always,exit -F arch=b32 -S adjtimex,settimeofday,clock_settime -k time-change\n";
const BPFTRACE_OUT: &str = "/tmp/bpftrace.out";
/// The one-liner: every way a program asks to change the clock, printed as it happens.
const BPFTRACE_ONE_LINER: &str = "tracepoint:syscalls:sys_enter_adjtimex,tracepoint:syscalls:sys_enter_settimeofday,tracepoint:syscalls:sys_enter_clock_settime,tracepoint:syscalls:sys_enter_clock_adjtime { printf(\"%s uid=%d pid=%d comm=%s\\n\", probe, uid, pid, comm); }";

/// A guard that is running and recording.
pub struct Running {
    pub guard: Guard,
    process: Process,
    /// Seconds from starting the program to the first attempt it decided (timeguard) or
    /// recorded (the peers).
    pub ready_s: f64,
}

/// timeguard, as the tests run it (stopped and unpinned however the benchmark ends), or a
/// peer's program.
enum Process {
    Agent(GuestAgent),
    Peer(Child),
}

impl Running {
    /// The process that does the guard's userspace work (its memory and CPU are measured).
    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Agent(agent) => agent.pid(),
            Process::Peer(child) => child.id(),
        }
    }
}

pub fn start(guard: Guard) -> Result<Running, String> {
    match guard {
        Guard::Timeguard => start_timeguard(),
        Guard::Auditd => start_auditd(),
        Guard::Bpftrace => start_bpftrace(),
    }
}

const CGROUPS: &str = "/sys/fs/cgroup";

/// Moves a process into the cgroup `name` (made on demand), with the CPU controller on, as
/// systemd runs each service and each session in a cgroup of its own: under contention the
/// CPU is shared between cgroups, not between processes, so 300 flooding processes do not
/// each count as much as the guard.
pub fn into_cgroup(name: &str, pid: u32) -> Result<(), String> {
    let control = format!("{CGROUPS}/cgroup.subtree_control");
    if !fs::read_to_string(&control)
        .unwrap_or_default()
        .contains("cpu")
    {
        fs::write(&control, "+cpu").map_err(|e| format!("{control}: +cpu: {e}"))?;
    }
    let dir = format!("{CGROUPS}/{name}");
    fs::create_dir_all(&dir).map_err(|e| format!("{dir}: {e}"))?;
    fs::write(format!("{dir}/cgroup.procs"), pid.to_string())
        .map_err(|e| format!("moving {pid} into {dir}: {e}"))
}

/// A guard's program, started in its own cgroup (as its service would be).
fn spawn_service(guard: Guard, cmd: &mut Command) -> Result<Child, String> {
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", guard.key()))?;
    into_cgroup(&format!("{}.service", guard.key()), child.id())?;
    Ok(child)
}

pub fn stop(running: Running) -> Result<(), String> {
    match running.process {
        // Stopping leaves enforcement pinned: the next measurement without it needs it gone.
        Process::Agent(mut agent) => agent.finish(),
        Process::Peer(mut child) if running.guard == Guard::Auditd => {
            sh_ok("auditctl", &["-D"])?;
            sh_ok("auditctl", &["-e", "0"])?;
            interrupt(&mut child, libc::SIGTERM)
        }
        Process::Peer(mut child) => interrupt(&mut child, libc::SIGINT),
    }
}

fn interrupt(child: &mut Child, signal: i32) -> Result<(), String> {
    // SAFETY: signalling a child this program started, by its id.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait().map(|_| ()).map_err(|e| e.to_string())
}

/// A command that must succeed; its output.
fn sh_ok(program: &str, args: &[&str]) -> Result<String, String> {
    let r = sh(program, args)?;
    if r.status != 0 {
        return Err(format!(
            "{program} {}: {} {}",
            args.join(" "),
            r.stdout,
            r.stderr
        ));
    }
    Ok(r.stdout)
}

fn output_to(path: &str) -> Result<Stdio, String> {
    fs::File::create(path)
        .map(Stdio::from)
        .map_err(|e| format!("{path}: {e}"))
}

/// Polls `ready` until it holds, for up to 90 s (the peers compile or load under emulation).
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("{what} within 90 s"));
        }
        sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// A step of zero from this program (which no rule allows): EPERM once timeguard enforces.
fn step_refused() -> bool {
    timeguard_tests::clock::step_of_zero() == libc::EPERM
}

/// settimeofday(NULL, NULL): a call both peers' rules cover, which changes nothing. The raw
/// syscall: glibc's wrapper reads through a null time.
fn probe_settimeofday() {
    let null = std::ptr::null::<libc::c_void>();
    // SAFETY: the kernel accepts both arguments null, checks permission and returns.
    unsafe { libc::syscall(libc::SYS_settimeofday, null, null) };
}

/// Start-up is timed to the first refused step, not to the agent's own report: that is the
/// instant the clock is guarded.
fn start_timeguard() -> Result<Running, String> {
    let started = Instant::now();
    let mut agent = GuestAgent::spawn(POLICY, &[])?;
    into_cgroup(&format!("{}.service", Guard::Timeguard.key()), agent.pid())?;
    wait_until("timeguard refused no step", step_refused)?;
    let ready_s = started.elapsed().as_secs_f64();
    agent.wait_started(0)?;
    Ok(Running {
        guard: Guard::Timeguard,
        process: Process::Agent(agent),
        ready_s,
    })
}

/// auditd as Debian configures it, with its log on a tmpfs of its own (auditd suspends
/// logging when its disk looks full, and the guest's root has no free-space figure), and
/// rotation off so that every record of a run stays countable.
fn start_auditd() -> Result<Running, String> {
    if !fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .contains(&format!(" {AUDIT_DIR} "))
    {
        fs::create_dir_all(AUDIT_DIR).map_err(|e| format!("{AUDIT_DIR}: {e}"))?;
        sh_ok(
            "mount",
            &["-t", "tmpfs", "-o", "size=700m", "tmpfs", AUDIT_DIR],
        )?;
        let conf = fs::read_to_string(AUDITD_CONF_DEBIAN)
            .map_err(|e| format!("{AUDITD_CONF_DEBIAN}: {e}"))?;
        let conf: String = conf
            .lines()
            .map(|l| {
                if l.starts_with("max_log_file_action") {
                    "max_log_file_action = IGNORE"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(AUDITD_CONF, conf + "\n").map_err(|e| format!("{AUDITD_CONF}: {e}"))?;
        fs::write(AUDIT_RULES, AUDIT_RULES_TEXT).map_err(|e| format!("{AUDIT_RULES}: {e}"))?;
        // auditd writes its pid file there.
        if !std::path::Path::new("/var/run").exists() {
            std::os::unix::fs::symlink("/run", "/var/run").map_err(|e| format!("/var/run: {e}"))?;
        }
    }
    let _ = fs::remove_file(AUDIT_LOG);
    let started = Instant::now();
    let child = spawn_service(
        Guard::Auditd,
        Command::new("auditd")
            .arg("-n")
            .stdout(output_to("/tmp/auditd.log")?)
            .stderr(output_to("/tmp/auditd.err")?),
    )?;
    let pid_line = format!("pid {}", child.id());
    wait_until("auditd did not register with the kernel", || {
        sh_ok("auditctl", &["-s"]).is_ok_and(|s| s.contains(&pid_line) && s.contains("enabled 1"))
    })?;
    sh_ok("auditctl", &["-R", AUDIT_RULES])?;
    // A new process probes: audit only follows processes started after it was enabled.
    wait_until("auditd recorded no step", || {
        let probe = Command::new(COPY)
            .args(["step", "0"])
            .stdout(Stdio::null())
            .spawn()
            .and_then(|mut c| c.wait().map(|_| c.id()))
            .unwrap_or(0);
        let theirs = format!(" pid={probe} ");
        fs::read_to_string(AUDIT_LOG).is_ok_and(|log| log.contains(&theirs))
    })
    .map_err(|e| {
        let err = fs::read_to_string("/tmp/auditd.err").unwrap_or_default();
        let status = sh_ok("auditctl", &["-s"]).unwrap_or_else(|e| e);
        let rules = sh_ok("auditctl", &["-l"]).unwrap_or_else(|e| e);
        let files = sh_ok("ls", &["-la", AUDIT_DIR]).unwrap_or_else(|e| e);
        format!("{e}: auditd said {err:?}; auditctl -s: {status}; rules: {rules}; {files}")
            .replace('\n', " / ")
    })?;
    Ok(Running {
        guard: Guard::Auditd,
        process: Process::Peer(child),
        ready_s: started.elapsed().as_secs_f64(),
    })
}

fn start_bpftrace() -> Result<Running, String> {
    let started = Instant::now();
    let child = spawn_service(
        Guard::Bpftrace,
        Command::new("bpftrace")
            .args(["-e", BPFTRACE_ONE_LINER])
            .env("BPFTRACE_NO_USER_SYMBOLS", "1")
            .stdout(output_to(BPFTRACE_OUT)?)
            .stderr(output_to("/tmp/bpftrace.err")?),
    )?;
    let mine = format!(" pid={} ", std::process::id());
    wait_until("bpftrace printed no settimeofday", || {
        probe_settimeofday();
        fs::read_to_string(BPFTRACE_OUT).is_ok_and(|out| out.contains(&mine))
    })
    .map_err(|e| {
        let err = fs::read_to_string("/tmp/bpftrace.err").unwrap_or_default();
        format!("{e}: {err}")
    })?;
    Ok(Running {
        guard: Guard::Bpftrace,
        process: Process::Peer(child),
        ready_s: started.elapsed().as_secs_f64(),
    })
}

/// The guard's trail: where its records go.
pub fn trail(guard: Guard) -> &'static str {
    match guard {
        Guard::Timeguard => EVENTS,
        Guard::Auditd => AUDIT_LOG,
        Guard::Bpftrace => BPFTRACE_OUT,
    }
}

/// What a record is of: a step (clock_settime) or a frequency change (glibc's adjtimex and
/// ntp_adjtime, which reach the kernel as clock_adjtime).
#[derive(Clone, Copy)]
pub enum Change {
    Step,
    Frequency,
}

/// How many records of `change` by `comm` the guard's trail holds.
pub fn records_of(guard: Guard, comm: &str, change: Change) -> usize {
    let text = fs::read_to_string(trail(guard)).unwrap_or_default();
    let (operation, syscalls, probes): (&str, &[&str], &[&str]) = match change {
        Change::Step => ("step", &["syscall=227 "], &["sys_enter_clock_settime "]),
        Change::Frequency => (
            "frequency",
            &["syscall=159 ", "syscall=305 "],
            &["sys_enter_adjtimex ", "sys_enter_clock_adjtime "],
        ),
    };
    match guard {
        // Matched as text: parsing tens of thousands of records under emulation takes long.
        Guard::Timeguard => {
            let (comm, operation) = (format!("\"comm\":\"{comm}\""), format!("\"{operation}\""));
            text.lines()
                .filter(|l| l.contains("\"kind\":\"clock\""))
                .filter(|l| l.contains(&comm) && l.contains(&operation))
                .count()
        }
        // One SYSCALL record per audited call (PROCTITLE and others follow it).
        Guard::Auditd => {
            let comm = format!("comm=\"{comm}\"");
            text.lines()
                .filter(|l| l.starts_with("type=SYSCALL") && l.contains("key=\"time-change\""))
                .filter(|l| l.contains(&comm) && syscalls.iter().any(|s| l.contains(s)))
                .count()
        }
        Guard::Bpftrace => {
            let comm = format!(" comm={comm}");
            text.lines()
                .filter_map(|l| l.strip_prefix("tracepoint:syscalls:"))
                .filter(|l| probes.iter().any(|p| l.starts_with(p)) && l.ends_with(&comm))
                .count()
        }
    }
}

/// Records the guard itself says it lost (timeguard: thinned and lost events are counted
/// apart; the peers: auditd's kernel `lost` count, bpftrace's "Lost N events" lines).
pub fn lost(guard: Guard) -> Result<u64, String> {
    match guard {
        Guard::Timeguard => agent_status()?["events_lost"]
            .as_u64()
            .ok_or_else(|| "timeguard status has no events_lost".into()),
        Guard::Auditd => {
            let status = sh_ok("auditctl", &["-s"])?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("lost "))
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| format!("no lost count in auditctl -s: {status}"))
        }
        Guard::Bpftrace => Ok(fs::read_to_string(BPFTRACE_OUT)
            .map_err(|e| format!("{BPFTRACE_OUT}: {e}"))?
            .lines()
            .filter_map(|l| l.strip_prefix("Lost "))
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()),
    }
}
