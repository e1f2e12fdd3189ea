//! Clock calls as the tests make them, with errno captured.

use serde_json::json;

/// The result of one clock call.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub errno: i32,
    /// The kernel's frequency offset after the call (ppm, 16-bit fraction).
    pub freq: i64,
    pub offset: i64,
    pub status: i32,
}

impl Outcome {
    /// Reads the JSON a `tg-clock` run printed.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("tg-clock printed {text:?}: {e}"))?;
        let int = |k: &str| {
            v[k].as_i64()
                .ok_or_else(|| format!("tg-clock output lacks {k}: {text}"))
        };
        Ok(Outcome {
            errno: int("errno")? as i32,
            freq: int("freq")?,
            offset: int("offset")?,
            status: int("status")? as i32,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({"ok": self.errno == 0, "errno": self.errno, "freq": self.freq, "offset": self.offset, "status": self.status})
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Parses the agent's `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` into nanoseconds since the epoch.
pub fn parse_rfc3339_ns(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let nanos: i64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(secs as i128 * 1_000_000_000 + nanos as i128)
}

pub fn realtime_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into ts.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn adjtimex(modes: u32, set: impl FnOnce(&mut libc::timex)) -> Outcome {
    // SAFETY: timex is plain data; zero is a valid value for every field.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = modes;
    set(&mut tx);
    // SAFETY: tx is a valid, writable timex.
    let rc = unsafe { libc::adjtimex(&mut tx) };
    Outcome {
        errno: if rc < 0 { errno() } else { 0 },
        freq: tx.freq,
        offset: tx.offset,
        status: tx.status,
    }
}

/// Reads the kernel's clock discipline state; changes nothing.
pub fn read() -> Outcome {
    adjtimex(0, |_| {})
}

/// Steps CLOCK_REALTIME by `secs`.
pub fn step_by(secs: i64) -> Outcome {
    let target = realtime_ns() + secs as i128 * 1_000_000_000;
    let ts = libc::timespec {
        tv_sec: (target / 1_000_000_000) as libc::time_t,
        tv_nsec: (target % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: ts is a valid timespec.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    let err = if rc < 0 { errno() } else { 0 };
    Outcome {
        errno: err,
        ..read()
    }
}

/// `settimeofday`: steps CLOCK_REALTIME by `secs` (with or without a UTC timezone
/// alongside), or, with `secs` None, sets only the timezone.
pub fn settimeofday_by(secs: Option<i64>, with_tz: bool) -> Outcome {
    let tv = secs.map(|s| {
        let target = realtime_ns() + s as i128 * 1_000_000_000;
        libc::timeval {
            tv_sec: (target / 1_000_000_000) as libc::time_t,
            tv_usec: ((target % 1_000_000_000) / 1000) as libc::suseconds_t,
        }
    });
    // `struct timezone`: minutes west of Greenwich, DST kind (libc's type is opaque).
    let tz: [libc::c_int; 2] = [0, 0];
    let tv_ptr = tv
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timeval);
    let tz_ptr: *const libc::c_int = if with_tz {
        tz.as_ptr()
    } else {
        std::ptr::null()
    };
    // SAFETY: both pointers are null or point to live values; glibc's prototype takes a
    // `void *` timezone, so the raw syscall is made.
    let rc = unsafe { libc::syscall(libc::SYS_settimeofday, tv_ptr, tz_ptr) };
    Outcome {
        errno: if rc < 0 { errno() } else { 0 },
        ..read()
    }
}

/// Writes the kernel's maxerror with the value it already holds: a change request (it needs
/// CAP_SYS_TIME) that changes nothing, safe on any host.
pub fn rewrite_maxerror() -> Outcome {
    // SAFETY: timex is plain data; zero is valid; modes 0 only reads.
    let mut now: libc::timex = unsafe { std::mem::zeroed() };
    unsafe { libc::adjtimex(&mut now) };
    adjtimex(0x0004, |tx| tx.maxerror = now.maxerror)
}

/// `timex.status` bit: the clock is not synchronized (set by the kernel at boot).
pub const STA_UNSYNC: i32 = 0x0040;

/// Declares the clock synchronized (clears STA_UNSYNC, small error bounds), as a time daemon
/// does once locked: the kernel then copies the time to the RTC itself every 11 minutes.
/// `false` sets STA_UNSYNC again, which stops that.
pub fn declare_synced(synced: bool) -> Outcome {
    // ADJ_STATUS | ADJ_MAXERROR | ADJ_ESTERROR
    adjtimex(0x0010 | 0x0004 | 0x0008, |tx| {
        tx.status = if synced { 0 } else { STA_UNSYNC };
        tx.maxerror = 1000;
        tx.esterror = 1000;
    })
}

/// `timex.status` bit that schedules a leap second insertion.
pub const STA_INS: i32 = 0x0010;

/// Writes the status word (ADJ_STATUS), keeping the kernel's other status bits.
pub fn set_status(leap_bits: i32) -> Outcome {
    let current = read().status & !(STA_INS | 0x0020);
    adjtimex(0x0010, |tx| tx.status = current | leap_bits)
}

/// Steps CLOCK_REALTIME to itself `n` times; counts {"ok", "eperm", "other"}.
pub fn flood(n: u64) -> serde_json::Value {
    let mut left = n;
    settime_loop(
        || {
            let more = left > 0;
            left = left.saturating_sub(1);
            more
        },
        step_of_zero,
    )
}

/// `procs` processes (forked, so each has its own tgid and its own event budget) each step
/// CLOCK_REALTIME to itself `n` times; counts the processes whose every attempt was
/// refused with EPERM, allowed, or neither: {"procs", "attempts", "all_eperm", "all_ok", "mixed"}.
pub fn flood_forked(procs: u32, n: u64) -> Result<serde_json::Value, String> {
    let mut children = Vec::new();
    let reap = |children: &[libc::pid_t]| {
        for &pid in children {
            // SAFETY: waiting for a child this process forked.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
    };
    for _ in 0..procs {
        // SAFETY: this program is single-threaded; the child only loops on clock calls
        // and leaves with _exit.
        match unsafe { libc::fork() } {
            -1 => {
                let e = std::io::Error::last_os_error();
                reap(&children);
                return Err(format!("fork after {} processes: {e}", children.len()));
            }
            0 => {
                let counts = flood(n);
                let code = if counts["eperm"] == n {
                    0
                } else if counts["ok"] == n {
                    1
                } else {
                    2
                };
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            pid => children.push(pid),
        }
    }
    let (mut all_eperm, mut all_ok, mut mixed) = (0u32, 0u32, 0u32);
    for pid in children {
        let mut status = 0;
        // SAFETY: waiting for a child this process forked.
        if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
            (true, 0) => all_eperm += 1,
            (true, 1) => all_ok += 1,
            _ => mixed += 1,
        }
    }
    Ok(json!({"procs": procs, "attempts": u64::from(procs) * n,
        "all_eperm": all_eperm, "all_ok": all_ok, "mixed": mixed}))
}

/// Sets CLOCK_REALTIME to itself (a step of zero, which still asks the kernel for a step)
/// as often as it can for `how_long`, and counts the outcomes: {"ok", "eperm", "other"}.
pub fn hammer(how_long: std::time::Duration) -> serde_json::Value {
    let start = std::time::Instant::now();
    settime_loop(|| start.elapsed() < how_long, step_of_zero)
}

/// Steps CLOCK_REALTIME by `secs` forward and back in turn for `how_long`, counting the
/// outcomes like `hammer`, and `net`: how far the steps that went through moved the clock
/// (undone at the end, as far as the policy lets this program).
pub fn hammer_steps(secs: i64, how_long: std::time::Duration) -> serde_json::Value {
    let start = std::time::Instant::now();
    let (mut n, mut net) = (0u64, 0i64);
    let mut counts = settime_loop(
        || start.elapsed() < how_long,
        || {
            let s = if n.is_multiple_of(2) { secs } else { -secs };
            n += 1;
            let e = step_by(s).errno;
            if e == 0 {
                net += s;
            }
            e
        },
    );
    if net != 0 {
        step_by(-net);
    }
    counts["net"] = json!(net);
    counts
}

/// Sets CLOCK_REALTIME to itself: a step of zero, which still asks the kernel for a step.
/// The errno, 0 when the step went through.
#[inline]
pub fn step_of_zero() -> i32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec, read and then written back.
    let rc = unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
        libc::clock_settime(libc::CLOCK_REALTIME, &ts)
    };
    if rc == 0 {
        0
    } else {
        errno()
    }
}

fn settime_loop(
    mut more: impl FnMut() -> bool,
    mut step: impl FnMut() -> i32,
) -> serde_json::Value {
    let (mut ok, mut eperm, mut other) = (0u64, 0u64, 0u64);
    while more() {
        match step() {
            0 => ok += 1,
            libc::EPERM => eperm += 1,
            _ => other += 1,
        }
    }
    json!({"ok": ok, "eperm": eperm, "other": other})
}

/// The two ways of stepping the clock that different LSM hooks decide: `clock_settime`
/// (the `settime` hook) and `adjtimex(ADJ_SETOFFSET)` (only the `capable` hook).
pub const STEP_PATHS: [&str; 2] = ["clock_settime", "adj_setoffset"];

fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Steps the clock by `us` microseconds through path `path` (an index of `STEP_PATHS`);
/// the errno, 0 when the step went through. `clock_settime` sets the wall clock to
/// CLOCK_MONOTONIC + `base` + `us`: from the wall clock itself each step would lose the
/// time between reading and setting, and thousands of them would drag the clock back.
fn step_us_through(path: usize, us: i64, base: i128) -> i32 {
    if path == 0 {
        let target = monotonic_ns() + base + i128::from(us) * 1000;
        let ts = libc::timespec {
            tv_sec: target.div_euclid(1_000_000_000) as libc::time_t,
            tv_nsec: target.rem_euclid(1_000_000_000) as libc::c_long,
        };
        // SAFETY: ts is a valid timespec.
        let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
        return if rc < 0 { errno() } else { 0 };
    }
    // ADJ_SETOFFSET in microseconds: the kernel wants 0 <= tv_usec < 1e6.
    adjtimex(0x0100, |tx| {
        tx.time.tv_sec = us.div_euclid(1_000_000) as libc::time_t;
        tx.time.tv_usec = us.rem_euclid(1_000_000) as libc::suseconds_t;
    })
    .errno
}

/// Steps the clock by 1 µs through each path in turn until `stop` exists (a refused attempt
/// without pause, one that went through after 100 µs);
/// each path goes +1 µs then -1 µs, so the clock stays where it was whatever is refused.
/// Attempt `n` is on path `n % 2`. Returns every change of outcome, so the whole sequence
/// can be told: {"attempts": N, "changes": [[seq, path, errno], …]}, an entry for the first
/// attempt of each path and for each attempt whose errno differs from that path's last.
/// It runs at the lowest CPU priority (nice 19): it still steps whenever a CPU is free,
/// without starving an agent it races on a small (emulated) machine.
pub fn probe_step_paths(stop: &std::path::Path) -> serde_json::Value {
    // SAFETY: changes only this process's scheduling priority.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    let mut last = [None::<i32>; 2];
    let mut changes = Vec::new();
    let mut seq: u64 = 0;
    let base = realtime_ns() - monotonic_ns();
    loop {
        // Looking for the stop file costs a syscall: once every 256 attempts.
        if seq.is_multiple_of(256) && stop.exists() {
            break;
        }
        let path = (seq % 2) as usize;
        let us = if (seq / 2).is_multiple_of(2) { 1 } else { -1 };
        let e = step_us_through(path, us, base);
        if last[path] != Some(e) {
            last[path] = Some(e);
            changes.push(json!([seq, STEP_PATHS[path], e]));
        }
        seq += 1;
        // A step that went through rewrote the timekeeper: two probers doing that flat out
        // on an emulated guest's two CPUs starve the kernel's own readers of the clock (a
        // soft lockup was seen on 6.1 under TCG). A refused attempt changes nothing and goes
        // on without pause; 100 µs after a step still gives thousands of attempts in any
        // window where enforcement would be partial (it was seconds long on 6.1).
        if e == 0 {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
    json!({"attempts": seq, "changes": changes})
}

/// The errno of every attempt of a `probe_step_paths` run, by sequence number (attempt `n`
/// was on path `STEP_PATHS[n % 2]`), rebuilt from its changes of outcome.
pub fn step_outcomes(probe: &serde_json::Value) -> Result<Vec<i32>, String> {
    let attempts = probe["attempts"]
        .as_u64()
        .ok_or_else(|| format!("a probe without attempts: {probe}"))?;
    let changes = probe["changes"]
        .as_array()
        .ok_or_else(|| format!("a probe without changes: {probe}"))?;
    let mut changes = changes.iter().peekable();
    let mut state = [None::<i32>; 2];
    let mut out = Vec::with_capacity(attempts as usize);
    for seq in 0..attempts {
        let path = (seq % 2) as usize;
        if let Some(c) = changes.next_if(|c| c[0].as_u64() == Some(seq)) {
            if c[1] != STEP_PATHS[path] {
                return Err(format!(
                    "attempt {seq} is on {}, not {}",
                    c[1], STEP_PATHS[path]
                ));
            }
            let errno = c[2]
                .as_i64()
                .ok_or_else(|| format!("a change without errno: {c}"))?;
            state[path] = Some(errno as i32);
        }
        out.push(state[path].ok_or_else(|| format!("no outcome for attempt {seq}"))?);
    }
    match changes.next() {
        Some(c) => Err(format!("a change after the last attempt: {c}")),
        None => Ok(out),
    }
}

/// Sets the frequency offset (ADJ_FREQUENCY) in whole ppm.
pub fn set_frequency_ppm(ppm: i64) -> Outcome {
    adjtimex(0x0002, |tx| tx.freq = ppm << 16)
}

/// Sets the tick (ADJ_TICK, µs per 1/100 s; 10000 is nominal): a rate change of 100 ppm
/// per µs.
pub fn set_tick(tick: i64) -> Outcome {
    adjtimex(0x4000, |tx| tx.tick = tick)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_agents_timestamps() {
        assert_eq!(
            super::parse_rfc3339_ns("1970-01-01T00:00:01.5Z"),
            Some(1_500_000_000)
        );
        assert_eq!(
            super::parse_rfc3339_ns("2026-11-22T04:25:52.770477517Z"),
            Some(1_795_321_552_770_477_517)
        );
        assert_eq!(super::parse_rfc3339_ns("yesterday"), None);
    }

    #[test]
    fn step_outcomes_follow_each_path() {
        let probe = serde_json::json!({"attempts": 7, "changes": [
            [0, "clock_settime", 0], [1, "adj_setoffset", 0],
            [2, "clock_settime", 1], [5, "adj_setoffset", 1]]});
        assert_eq!(super::step_outcomes(&probe), Ok(vec![0, 0, 1, 0, 1, 1, 1]));
        let wrong_path = serde_json::json!({"attempts": 2, "changes": [[0, "adj_setoffset", 0]]});
        assert!(super::step_outcomes(&wrong_path).is_err());
        let beyond = serde_json::json!({"attempts": 2, "changes": [
            [0, "clock_settime", 0], [1, "adj_setoffset", 0], [2, "clock_settime", 1]]});
        assert!(super::step_outcomes(&beyond).is_err());
    }
}

/// 32-bit compat syscalls (`int 0x80`), as a 32-bit program makes them. Their pointer
/// arguments must lie below 4 GiB, so the argument block is mapped there.
pub mod compat {
    use super::{realtime_ns, Outcome};

    pub const STIME: u32 = 25;
    pub const ADJTIMEX: u32 = 124;
    pub const CLOCK_SETTIME: u32 = 264;

    /// A page below 4 GiB for the syscall's arguments.
    fn low_page() -> Result<*mut u8, String> {
        // SAFETY: an anonymous private mapping; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap(MAP_32BIT): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(p.cast())
    }

    /// `int 0x80` with up to three arguments; returns the raw result (-errno on failure).
    fn int80(nr: u32, a1: u32, a2: u32, a3: u32) -> i32 {
        let ret: i32;
        // SAFETY: a compat syscall whose pointer arguments point into our own low page.
        // rbx is reserved by LLVM, so the first argument goes through a swap.
        unsafe {
            core::arch::asm!(
                "xchg {a1:r}, rbx",
                "int 0x80",
                "xchg {a1:r}, rbx",
                a1 = inout(reg) a1 as u64 => _,
                inlateout("eax") nr => ret,
                in("ecx") a2,
                in("edx") a3,
            );
        }
        ret
    }

    fn outcome(ret: i32) -> Outcome {
        let errno = if ret < 0 { -ret } else { 0 };
        Outcome {
            errno,
            ..super::read()
        }
    }

    /// clock_settime(CLOCK_REALTIME) through the i386 table (32-bit timespec).
    pub fn step_by(secs: i64) -> Result<Outcome, String> {
        let page = low_page()?;
        let target = realtime_ns() + secs as i128 * 1_000_000_000;
        let ts = [
            (target / 1_000_000_000) as i32,
            (target % 1_000_000_000) as i32,
        ];
        // SAFETY: page is a fresh writable page of 4096 bytes.
        unsafe { std::ptr::copy_nonoverlapping(ts.as_ptr(), page.cast(), 2) };
        Ok(outcome(int80(CLOCK_SETTIME, 0, page as u32, 0)))
    }

    /// stime(): the oldest way to set the clock, whole seconds.
    pub fn stime_by(secs: i64) -> Result<Outcome, String> {
        let page = low_page()?;
        let t = ((realtime_ns() / 1_000_000_000) as i64 + secs) as i32;
        // SAFETY: as above.
        unsafe { page.cast::<i32>().write(t) };
        Ok(outcome(int80(STIME, page as u32, 0, 0)))
    }

    /// adjtimex(ADJ_FREQUENCY) with the i386 `struct old_timex32` layout.
    pub fn set_frequency_ppm(ppm: i64) -> Result<Outcome, String> {
        let page = low_page()?;
        // modes at 0, freq (32-bit) at 8; the page is zeroed.
        // SAFETY: offsets within the page.
        unsafe {
            page.cast::<u32>().write(0x0002);
            page.add(8).cast::<i32>().write((ppm << 16) as i32);
        }
        Ok(outcome(int80(ADJTIMEX, page as u32, 0, 0)))
    }
}
