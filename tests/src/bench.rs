//! Workloads `cargo xtask bench` times in the guest, each a tight loop of one call, so the
//! cost the agent adds shows as a ratio against the same loop without it.

use std::time::Instant;

/// A workload's name and what one iteration does.
pub const WORKLOADS: [(&str, &str); 6] = [
    (
        "settime",
        "clock_settime(CLOCK_REALTIME, now): a step of zero",
    ),
    (
        "adjtimex",
        "adjtimex(ADJ_FREQUENCY) to the frequency in force",
    ),
    ("getppid", "getppid(): a syscall no hook sees"),
    (
        "open-close",
        "open(/dev/null, O_RDWR) and close: the file_open hook's path",
    ),
    (
        "fchown",
        "fchown to another uid: a capability check (CAP_CHOWN)",
    ),
    (
        "fork-exec",
        "fork, exec /bin/true, wait: a process's whole life (fork and exit hooks)",
    ),
];

/// Runs `n` iterations of a workload; returns nanoseconds per iteration, and how many
/// iterations failed (a denied clock call fails by design).
pub fn run(workload: &str, n: u64) -> Result<(f64, u64), String> {
    let mut failed = 0u64;
    let mut count = |rc: libc::c_long| {
        if rc < 0 {
            failed += 1;
        }
    };
    let started;
    match workload {
        "settime" => {
            started = Instant::now();
            for _ in 0..n {
                count(if crate::clock::step_of_zero() == 0 {
                    0
                } else {
                    -1
                });
            }
        }
        "adjtimex" => {
            // SAFETY: timex is plain data; zero is valid; adjtimex(modes=0) only reads.
            let mut tx: libc::timex = unsafe { std::mem::zeroed() };
            unsafe { libc::adjtimex(&mut tx) };
            let freq = tx.freq;
            started = Instant::now();
            for _ in 0..n {
                // SAFETY: as above.
                let mut tx: libc::timex = unsafe { std::mem::zeroed() };
                tx.modes = 0x0002;
                tx.freq = freq;
                count(unsafe { libc::adjtimex(&mut tx) } as libc::c_long);
            }
        }
        "getppid" => {
            started = Instant::now();
            for _ in 0..n {
                // SAFETY: no arguments.
                count(unsafe { libc::getppid() } as libc::c_long);
            }
        }
        "open-close" => {
            let path = c"/dev/null";
            started = Instant::now();
            for _ in 0..n {
                // SAFETY: a NUL-terminated path; the fd is closed at once.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
                count(fd as libc::c_long);
                if fd >= 0 {
                    unsafe { libc::close(fd) };
                }
            }
        }
        "fchown" => {
            let path = format!("/tmp/tg-bench-{}", std::process::id());
            let file = std::fs::File::create(&path).map_err(|e| format!("{path}: {e}"))?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            started = Instant::now();
            for i in 0..n {
                let id = 1000 + (i % 2) as u32;
                // SAFETY: fd is open; changing owner needs CAP_CHOWN, checked every time.
                count(unsafe { libc::fchown(fd, id, id) } as libc::c_long);
            }
            let _ = std::fs::remove_file(&path);
        }
        "fork-exec" => {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            started = Instant::now();
            for _ in 0..n {
                // SAFETY: the child only executes /bin/true (argv ends with null) or exits.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    unsafe {
                        libc::execv(path.as_ptr(), argv.as_ptr());
                        libc::_exit(127);
                    }
                }
                let mut status = 0;
                // SAFETY: waiting for the child just forked.
                let waited = pid > 0 && unsafe { libc::waitpid(pid, &mut status, 0) } == pid;
                let ok = waited && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
                count(if ok { 0 } else { -1 });
            }
        }
        other => {
            let names: Vec<&str> = WORKLOADS.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "unknown workload {other}; one of: {}",
                names.join(", ")
            ));
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / n.max(1) as f64;
    Ok((ns, failed))
}
