//! A small program that changes (or reads) the clock the way time daemons do, and prints
//! the outcome as JSON: the VM tests run it from an allowed and from a denied path.
//!
//!   tg-clock step SECONDS   clock_settime(CLOCK_REALTIME, now + SECONDS)
//!   tg-clock freq PPM       adjtimex(ADJ_FREQUENCY)
//!   tg-clock read           adjtimex(modes = 0), read-only
//!   tg-clock same-maxerror  adjtimex(ADJ_MAXERROR) with the value the kernel holds: a change
//!                           request that changes nothing (safe on the host)
//!   tg-clock hammer MS      clock_settime(CLOCK_REALTIME, now) for MS milliseconds: steps of
//!                           zero, counted
//!   tg-clock probe-steps STOPFILE   ±1 µs steps through clock_settime and ADJ_SETOFFSET in
//!                           turn until STOPFILE exists; every change of outcome, numbered
//!
//!   tg-clock compat-step S | compat-stime S | compat-freq PPM   the same through int 0x80
//!   tg-clock bench WORKLOAD N   time N iterations of a benchmark workload (see bench.rs)
//!   tg-clock hammer-steps S MS  steps of +S and -S seconds in turn for MS ms, counted (and
//!                           what went through undone)
//!   tg-clock flood N        N × clock_settime(CLOCK_REALTIME, now), counted
//!   tg-clock flood-procs P N  the same in P forked processes at once (each its own budget)
//!   tg-clock leap insert|none   adjtimex(ADJ_STATUS) with or without STA_INS
//!   tg-clock settimeofday S [tz]   settimeofday(now + S), with a UTC timezone or without
//!   tg-clock timezone       settimeofday(NULL, UTC): the kernel timezone only
//!   tg-clock synced yes|no  clear (or set) STA_UNSYNC: the kernel's 11-minute RTC updates
//!   tg-clock tick TICK      adjtimex(ADJ_TICK): 10000 is nominal, each µs is 100 ppm
//!
//! Devices and namespaces:
//!   tg-clock phc-open DEV       open a PTP hardware clock read-write, then close it
//!   tg-clock phc-step DEV S     step a PTP hardware clock by S seconds
//!   tg-clock phc-pps DEV on|off PTP_ENABLE_PPS through a read-only descriptor
//!   tg-clock pps-bind DEV on|off  PPS_KC_BIND: (un)bind a PPS source to the kernel clock
//!   tg-clock timens S       a new time namespace with CLOCK_MONOTONIC S seconds ahead
//!
//! Network (for the network guard's tests, inside namespaces the test made):
//!   tg-clock udp-send FROM TO KIND N   N NTP packets of KIND (client, control, private)
//!   tg-clock udp-recv ADDR SECS        count datagrams arriving at ADDR, by source
//!   tg-clock udp-bind ADDR             bind a UDP socket (a time port, for the bind guard)
//!   tg-clock connect tcp|udp ADDR      connect (udp: and send one datagram)
//!   tg-clock sendto ADDR [FROM_PORT]   one unconnected datagram
//!   tg-clock tcp-listen ADDR SECS      accept connections for SECS, counted
//!   tg-clock packet-open all|ptp|ip    an AF_PACKET socket for that protocol
//!   tg-clock packet-bind all|ptp|ip    an AF_PACKET socket for none, then bound to one
//!   tg-clock malformed IFACE           send the catalogue of malformed time frames
//!   tg-clock truncated-ntp FROM TO     NTP payloads cut at every length, 0 to 48 bytes
//!   tg-clock ntp-load FROM TO SECS [flood|RATE]   client requests at saturation (or a
//!                           flood, or RATE a second)
//!
//! Against the guard itself (self-protection):
//!   tg-clock kill PID SIG              kill(PID, SIG)
//!   tg-clock sigio PID SIG             SIG (0: SIGIO) to PID through F_SETOWN on a pipe
//!   tg-clock ptrace PID                PTRACE_ATTACH (detached again at once)
//!   tg-clock open-write PATH           open for writing (appending nothing)
//!   tg-clock set-exe-file PATH         prctl(PR_SET_MM_EXE_FILE) naming PATH as its executable
//!   tg-clock swap-exe PATH READY GO PPM   a child unmaps its image, names PATH as its
//!                           executable, and once GO exists sets the frequency to PPM
//!   tg-clock unlink PATH | rename FROM TO
//!   tg-clock bpf-map-update ID [INDEX] zeros into entry INDEX (0) of map ID
//!   tg-clock bpf-link-detach ID        BPF_LINK_DETACH of link ID
//!
//! Ways of running a program that must not change who it is, taking the rest of the line:
//!   tg-clock as-comm NAME …     rename the process (PR_SET_NAME) first
//!   tg-clock via-fd PATH …      execute PATH through /proc/self/fd/N
//!   tg-clock via-memfd PATH …   copy PATH into a memfd and execute that
//!
//! Ways of running the rest of the line that taint a rule's process:
//!   tg-clock await PATH …       wait (up to 60 s) until PATH exists, then run it here
//!   tg-clock in-child …         run it in a forked child; its exit status
//!   tg-clock as-user UID …      become UID keeping CAP_SYS_TIME (as chronyd does), then run it
//!   tg-clock traced-exec PATH … fork; the child asks to be traced (PTRACE_TRACEME) and
//!                               executes PATH with the rest; detached at its exec
//!   tg-clock map-code FILE|anon exec|rwx|mprotect|written …   map one page of FILE as code
//!                               first (see `map_code`)
//!
//! Exit status 0 when the call succeeded, 1 when it failed (errno in the output), 2 on usage.

use timeguard_tests::{bench, clock, devices, ntp, sockets, tamper};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args));
}

/// Runs a command line, wrappers included; returns the exit status.
fn run(args: &[String]) -> i32 {
    if let Some(status) = process_wrappers(args) {
        return status;
    }
    if let Some(e) = exec_wrappers(args) {
        eprintln!("tg-clock: {e}");
        return 2;
    }
    main_inner(args)
}

/// Maps one page of `what` (a file, or `anon`) as code, `via` mmap at once (`exec`), mmap
/// writable and executable at once (`rwx`), mprotect after a read-only map (`mprotect`) or
/// after a private writable map whose first byte was written (`written`); the page stays
/// mapped.
fn map_code(what: &str, via: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let file = match what {
        "anon" => None,
        path => Some(std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?),
    };
    let (fd, flags) = match &file {
        Some(f) => (f.as_raw_fd(), libc::MAP_PRIVATE),
        None => (-1, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
    };
    let first = match via {
        "exec" => libc::PROT_READ | libc::PROT_EXEC,
        "rwx" => libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        "mprotect" => libc::PROT_READ,
        "written" => libc::PROT_READ | libc::PROT_WRITE,
        other => return Err(format!("{other}: not exec, rwx, mprotect or written")),
    };
    // SAFETY: a fresh mapping of one page, never unmapped, never touched here.
    let page = unsafe { libc::mmap(std::ptr::null_mut(), 4096, first, flags, fd, 0) };
    if page == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    if via == "written" {
        // SAFETY: the first byte of the private, writable page just mapped.
        unsafe { *(page as *mut u8) ^= 0xff };
    }
    // SAFETY: the page just mapped.
    if matches!(via, "mprotect" | "written")
        && unsafe { libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC) } != 0
    {
        return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Becomes user `uid` (and its group) keeping CAP_SYS_TIME, as chronyd does after it
/// started as root.
fn become_user(uid: &str) -> Result<(), String> {
    let uid: libc::uid_t = uid.parse().map_err(|e| format!("{uid}: {e}"))?;
    const CAP_SYS_TIME: u32 = 25;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain system calls on this process, with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return Err(os("PR_SET_KEEPCAPS"));
        }
        if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
            return Err(os("setuid"));
        }
        let mut header = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let time = Data {
            effective: 1 << CAP_SYS_TIME,
            permitted: 1 << CAP_SYS_TIME,
            inheritable: 0,
        };
        let data = [
            time,
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(os("capset"));
        }
    }
    Ok(())
}

/// The exit status of child `pid` once it has ended (2 when it cannot be waited for).
fn wait_exit(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
            return 2;
        }
        if libc::WIFEXITED(status) {
            return libc::WEXITSTATUS(status);
        }
        if libc::WIFSIGNALED(status) {
            return 128 + libc::WTERMSIG(status);
        }
    }
}

/// Handles the wrappers that run the rest of the line later, in a child or traced; None
/// when `args` is not one.
fn process_wrappers(args: &[String]) -> Option<i32> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
    match args {
        [how, path, rest @ ..] if how == "await" => {
            let start = std::time::Instant::now();
            while !std::path::Path::new(path).exists() {
                if start.elapsed() > std::time::Duration::from_secs(60) {
                    eprintln!("tg-clock: {path} did not appear within 60 s");
                    return Some(2);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Some(run(rest))
        }
        [how, uid, rest @ ..] if how == "as-user" => match become_user(uid) {
            Ok(()) => Some(run(rest)),
            Err(e) => {
                eprintln!("tg-clock: as-user {uid}: {e}");
                Some(2)
            }
        },
        [how, rest @ ..] if how == "in-child" => {
            // SAFETY: this program is single-threaded; the child only runs the command.
            match unsafe { libc::fork() } {
                0 => std::process::exit(run(rest)),
                pid if pid > 0 => Some(wait_exit(pid)),
                _ => {
                    eprintln!("tg-clock: fork: {}", std::io::Error::last_os_error());
                    Some(2)
                }
            }
        }
        // Maps FILE (or `anon`: memory backed by no file) as code (see `map_code`), then runs
        // the rest.
        [how, what, via, rest @ ..] if how == "map-code" => match map_code(what, via) {
            Ok(()) => Some(run(rest)),
            Err(e) => {
                eprintln!("tg-clock: map-code {what} {via}: {e}");
                Some(2)
            }
        },
        [how, path, rest @ ..] if how == "traced-exec" => {
            let argv: Result<Vec<CString>, _> = std::iter::once(path.as_str())
                .chain(rest.iter().map(String::as_str))
                .map(|a| CString::new(std::ffi::OsStr::new(a).as_bytes()))
                .collect();
            let Ok(argv) = argv else {
                eprintln!("tg-clock: an argument holds a NUL byte");
                return Some(2);
            };
            let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            // SAFETY: this program is single-threaded; the child only asks to be traced and
            // executes the program.
            match unsafe { libc::fork() } {
                0 => {
                    // SAFETY: plain syscalls; argv is NUL-terminated and ends with null.
                    unsafe {
                        libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                        libc::execv(argv[0].as_ptr(), ptrs.as_ptr());
                    }
                    eprintln!("tg-clock: exec {path}: {}", std::io::Error::last_os_error());
                    std::process::exit(2)
                }
                pid if pid > 0 => {
                    // The tracee stops at its exec; let it go on untraced.
                    let mut status = 0;
                    // SAFETY: our own child, stopped for us as its tracer.
                    unsafe {
                        libc::waitpid(pid, &mut status, 0);
                        if libc::WIFSTOPPED(status) {
                            libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                        }
                    }
                    Some(wait_exit(pid))
                }
                _ => {
                    eprintln!("tg-clock: fork: {}", std::io::Error::last_os_error());
                    Some(2)
                }
            }
        }
        _ => None,
    }
}

/// Runs one command; returns the exit status.
fn main_inner(args: &[String]) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let counted = |v: serde_json::Value| {
        println!("{v}");
        Ok(None)
    };
    // Socket calls: the JSON, and exit status 1 when the call failed.
    let judged = |r: Result<serde_json::Value, String>| -> Result<Option<clock::Outcome>, String> {
        let v = r?;
        println!("{v}");
        if v["errno"] != 0 {
            std::process::exit(1);
        }
        Ok(None)
    };
    let result = match args.as_slice() {
        ["step", secs] => secs.parse::<i64>().map(|s| Some(clock::step_by(s))).map_err(|e| e.to_string()),
        ["freq", ppm] => ppm.parse::<i64>().map(|p| Some(clock::set_frequency_ppm(p))).map_err(|e| e.to_string()),
        ["read"] => Ok(Some(clock::read())),
        ["same-maxerror"] => Ok(Some(clock::rewrite_maxerror())),
        ["compat-step", secs] => secs
            .parse::<i64>()
            .map_err(|e| e.to_string())
            .and_then(|s| clock::compat::step_by(s).map(Some)),
        ["compat-stime", secs] => secs
            .parse::<i64>()
            .map_err(|e| e.to_string())
            .and_then(|s| clock::compat::stime_by(s).map(Some)),
        ["compat-freq", ppm] => ppm
            .parse::<i64>()
            .map_err(|e| e.to_string())
            .and_then(|p| clock::compat::set_frequency_ppm(p).map(Some)),
        ["leap", "insert"] => Ok(Some(clock::set_status(clock::STA_INS))),
        ["leap", "none"] => Ok(Some(clock::set_status(0))),
        ["settimeofday", secs] => secs.parse::<i64>().map(|s| Some(clock::settimeofday_by(Some(s), false))).map_err(|e| e.to_string()),
        ["settimeofday", secs, "tz"] => secs.parse::<i64>().map(|s| Some(clock::settimeofday_by(Some(s), true))).map_err(|e| e.to_string()),
        ["timezone"] => Ok(Some(clock::settimeofday_by(None, true))),
        ["synced", yes] => Ok(Some(clock::declare_synced(*yes == "yes"))),
        ["tick", tick] => tick.parse::<i64>().map(|t| Some(clock::set_tick(t))).map_err(|e| e.to_string()),
        ["phc-open", dev] => Ok(Some(devices::phc_open_rw(dev))),
        ["phc-step", dev, secs] => secs.parse::<i64>().map(|s| Some(devices::phc_step(dev, s))).map_err(|e| e.to_string()),
        ["phc-pps", dev, on] => Ok(Some(devices::phc_enable_pps(dev, *on == "on"))),
        ["pps-bind", dev, on] => Ok(Some(devices::pps_bind(dev, *on == "on"))),
        ["timens", secs] => secs.parse::<i64>().map(|s| Some(devices::time_namespace_offset(s))).map_err(|e| e.to_string()),
        ["bench", workload, n] => n
            .parse::<u64>()
            .map_err(|e| e.to_string())
            .and_then(|n| bench::run(workload, n))
            .and_then(|(ns, failed)| counted(serde_json::json!({"workload": workload, "ns_per_op": ns, "failed": failed}))),
        ["udp-send", from, to, kind, n] => n
            .parse::<u32>()
            .map_err(|e| e.to_string())
            .and_then(|n| ntp::send(from, to, kind, n))
            .map(|()| None),
        ["udp-send", from, to, kind, n, "dstopts"] => n
            .parse::<u32>()
            .map_err(|e| e.to_string())
            .and_then(|n| ntp::send_with(from, to, kind, n, true))
            .map(|()| None),
        ["udp-recv", addr, secs] => secs
            .parse::<u64>()
            .map_err(|e| e.to_string())
            .and_then(|s| ntp::receive(addr, s))
            .and_then(counted),
        ["udp-bind", at] => judged(sockets::udp_bind(at)),
        ["connect", proto, to] => judged(sockets::connect(proto, to)),
        ["sendto", to] => judged(sockets::send_to(to, 0)),
        ["sendto", to, port] => port.parse::<u16>().map_err(|e| e.to_string()).and_then(|p| judged(sockets::send_to(to, p))),
        ["tcp-listen", at, secs] => secs.parse::<u64>().map_err(|e| e.to_string()).and_then(|s| judged(sockets::tcp_listen(at, s))),
        ["packet-open", proto] => judged(sockets::packet_open(proto)),
        ["packet-bind", proto] => judged(sockets::packet_bind(proto)),
        ["malformed", iface] => judged(sockets::send_malformed(iface)),
        ["truncated-ntp", from, to] => judged(sockets::send_truncated_ntp(from, to)),
        ["ntp-load", from, to, secs, pace @ ..] => secs
            .parse::<f64>()
            .map_err(|e| e.to_string())
            .and_then(|s| {
                let pace = match pace {
                    [] => Ok(ntp::Pace::Saturate),
                    ["flood"] => Ok(ntp::Pace::Flood),
                    [rate] => rate.parse().map(ntp::Pace::PerSecond).map_err(|e| format!("{rate}: {e}")),
                    _ => Err("ntp-load FROM TO SECS [flood|RATE]".to_string()),
                };
                pace.and_then(|p| ntp::load(from, to, s, p))
            })
            .and_then(|l| counted(serde_json::json!({"sent": l.sent, "answered": l.answered, "seconds": l.seconds}))),
        ["kill", pid, sig] => match (pid.parse::<i32>(), sig.parse::<i32>()) {
            (Ok(p), Ok(s)) => judged(Ok(tamper::signal(p, s))),
            _ => Err("kill PID SIG".to_string()),
        },
        ["sigio", pid, sig] => match (pid.parse::<i32>(), sig.parse::<i32>()) {
            (Ok(p), Ok(s)) => judged(Ok(tamper::sigio(p, s))),
            _ => Err("sigio PID SIG".to_string()),
        },
        ["ptrace-hold", pid, go] => pid.parse::<i32>().map_err(|e| e.to_string()).and_then(|p| judged(Ok(tamper::ptrace_hold(p, go)))),
        ["ptrace", pid] => pid.parse::<i32>().map_err(|e| e.to_string()).and_then(|p| judged(Ok(tamper::ptrace_attach(p)))),
        ["open-write", path] => judged(tamper::open_write(path)),
        ["set-exe-file", path] => judged(tamper::set_exe_file(path)),
        ["swap-exe", path, ready, go, ppm] => ppm.parse::<i64>().map_err(|e| e.to_string()).and_then(|n| judged(tamper::exe_swapped(path, ready, go, n))),
        ["unlink", path] => judged(tamper::unlink(path)),
        ["rename", from, to] => judged(tamper::rename(from, to)),
        ["bpf-map-update", id, index @ ..] if index.len() <= 1 => id
            .parse::<u32>()
            .and_then(|i| Ok((i, index.first().map_or(Ok(0), |k| k.parse::<u32>())?)))
            .map_err(|e| e.to_string())
            .and_then(|(i, k)| judged(Ok(tamper::bpf_map_update(i, k)))),
        ["bpf-link-detach", id] => id.parse::<u32>().map_err(|e| e.to_string()).and_then(|i| judged(Ok(tamper::bpf_link_detach(i)))),
        ["flood", n] => n.parse::<u64>().map_err(|e| e.to_string()).and_then(|n| counted(clock::flood(n))),
        ["flood-procs", procs, n] => procs
            .parse::<u32>()
            .map_err(|e| e.to_string())
            .and_then(|p| n.parse::<u64>().map(|n| (p, n)).map_err(|e| e.to_string()))
            .and_then(|(p, n)| clock::flood_forked(p, n))
            .and_then(counted),
        ["hammer", ms] => ms
            .parse::<u64>()
            .map_err(|e| e.to_string())
            .and_then(|ms| counted(clock::hammer(std::time::Duration::from_millis(ms)))),
        ["hammer-steps", secs, ms] => match (secs.parse::<i64>(), ms.parse::<u64>()) {
            (Ok(secs), Ok(ms)) => counted(clock::hammer_steps(
                secs,
                std::time::Duration::from_millis(ms),
            )),
            _ => Err(format!("hammer-steps: seconds and milliseconds, not {secs} {ms}")),
        },
        ["probe-steps", stop] => counted(clock::probe_step_paths(std::path::Path::new(stop))),
        _ => Err("usage: tg-clock step SECONDS | freq PPM | read | same-maxerror | compat-step S | compat-stime S | compat-freq PPM | hammer MS | hammer-steps S MS | probe-steps STOPFILE | bench WORKLOAD N | udp-send FROM TO KIND N | udp-recv ADDR SECS | udp-bind ADDR | connect tcp|udp ADDR | sendto ADDR [PORT] | tcp-listen ADDR SECS | packet-open P | packet-bind P | malformed IFACE | truncated-ntp FROM TO | flood N | leap insert|none | settimeofday S [tz] | timezone | synced yes|no | tick TICK | phc-open DEV | phc-step DEV S | phc-pps DEV on|off | pps-bind DEV on|off | timens S | as-comm NAME … | via-fd PATH … | via-memfd PATH … | await PATH … | in-child … | traced-exec PATH …".to_string()),
    };
    match result {
        Ok(Some(outcome)) => {
            println!("{}", outcome.to_json());
            if outcome.errno == 0 {
                0
            } else {
                1
            }
        }
        Ok(None) => 0,
        Err(e) => {
            eprintln!("tg-clock: {e}");
            2
        }
    }
}

/// Handles the exec wrappers; returns only on failure (or when `args` is not one).
fn exec_wrappers(args: &[String]) -> Option<String> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
    let (how, target, rest) = match args {
        [how, target, rest @ ..] if ["as-comm", "via-fd", "via-memfd"].contains(&how.as_str()) => {
            (how.as_str(), target, rest)
        }
        _ => return None,
    };
    let cstr = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let run = || -> Result<(), String> {
        let (path, argv0) = match how {
            "as-comm" => {
                let name = cstr(target)?;
                // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
                unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
                // Carry on in this very process, under its new name.
                let outcome = run(rest);
                std::process::exit(outcome);
            }
            "via-fd" => {
                let file = std::fs::File::open(target).map_err(|e| format!("{target}: {e}"))?;
                let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
                (format!("/proc/self/fd/{fd}"), target.clone())
            }
            _ => {
                let bytes = std::fs::read(target).map_err(|e| format!("{target}: {e}"))?;
                let name = cstr("tg-clock-copy")?;
                // SAFETY: memfd_create with a valid name; the fd is written and executed.
                let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
                if fd < 0 {
                    return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
                }
                // SAFETY: fd is a valid, writable memfd; bytes is a valid buffer.
                let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
                if n != bytes.len() as isize {
                    return Err("short write to the memfd".into());
                }
                (format!("/proc/self/fd/{fd}"), target.clone())
            }
        };
        let path_c = CString::new(std::path::Path::new(&path).as_os_str().as_bytes())
            .map_err(|e| e.to_string())?;
        let mut argv: Vec<CString> = vec![cstr(&argv0)?];
        for a in rest {
            argv.push(cstr(a)?);
        }
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // SAFETY: path and argv are NUL-terminated; argv ends with a null pointer.
        unsafe { libc::execv(path_c.as_ptr(), ptrs.as_ptr()) };
        Err(format!("exec {path}: {}", std::io::Error::last_os_error()))
    };
    run().err()
}
