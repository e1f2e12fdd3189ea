//! Clock devices as the tests use them: PTP hardware clocks, PPS sources, the RTC through
//! util-linux, and time namespaces. Each call reports the errno the kernel gave.

use std::{ffi::CString, os::fd::RawFd};

use crate::clock::{read, Outcome};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The outcome of a call that returned `rc`, with the clock state after it.
fn outcome(rc: i64) -> Outcome {
    let err = if rc < 0 { errno() } else { 0 };
    Outcome {
        errno: err,
        ..read()
    }
}

fn open(path: &str, flags: i32) -> Result<RawFd, Outcome> {
    let c = CString::new(path).map_err(|_| outcome(-1))?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(outcome(-1))
    } else {
        Ok(fd)
    }
}

/// The dynamic clock id of an open PHC (`FD_TO_CLOCKID`).
fn fd_clock(fd: RawFd) -> libc::clockid_t {
    ((!fd) << 3) | 3
}

/// Opens a PHC for reading and writing (what setting it needs); closes it again.
pub fn phc_open_rw(path: &str) -> Outcome {
    match open(path, libc::O_RDWR) {
        Ok(fd) => {
            // SAFETY: closing the fd opened above.
            unsafe { libc::close(fd) };
            outcome(0)
        }
        Err(o) => o,
    }
}

/// Steps a PHC by `secs`: open read-write, read it, set it. Returns the outcome and the
/// PHC's step actually seen (seconds, from reading it back).
pub fn phc_step(path: &str, secs: i64) -> Outcome {
    let fd = match open(path, libc::O_RDWR) {
        Ok(fd) => fd,
        Err(o) => return o,
    };
    let clock = fd_clock(fd);
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is writable; the clock id comes from an open PHC.
    let mut rc = unsafe { libc::clock_gettime(clock, &mut ts) } as i64;
    if rc == 0 {
        ts.tv_sec += secs as libc::time_t;
        // SAFETY: ts is a valid timespec.
        rc = unsafe { libc::clock_settime(clock, &ts) } as i64;
    }
    let o = outcome(rc);
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    o
}

/// Reads a PHC's time in seconds through a read-only descriptor.
pub fn phc_seconds(path: &str) -> Result<i64, String> {
    let fd = open(path, libc::O_RDONLY).map_err(|o| format!("open {path}: errno {}", o.errno))?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is writable; the clock id comes from an open PHC.
    let rc = unsafe { libc::clock_gettime(fd_clock(fd), &mut ts) };
    let err = errno();
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(format!("clock_gettime on {path}: errno {err}"));
    }
    Ok(ts.tv_sec)
}

/// `PTP_ENABLE_PPS` (`_IOW('=', 4, int)`) through a read-only descriptor: a changing ioctl
/// that needs no write mode, only the kernel's CAP_SYS_TIME check.
pub fn phc_enable_pps(path: &str, enable: bool) -> Outcome {
    const PTP_ENABLE_PPS: libc::c_ulong = 0x4004_3d04;
    let fd = match open(path, libc::O_RDONLY) {
        Ok(fd) => fd,
        Err(o) => return o,
    };
    // SAFETY: the request takes an int by value.
    let rc = unsafe { libc::ioctl(fd, PTP_ENABLE_PPS, enable as libc::c_int) } as i64;
    let o = outcome(rc);
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    o
}

/// `struct pps_bind_args` (include/uapi/linux/pps.h).
#[repr(C)]
struct PpsBindArgs {
    tsformat: i32,
    edge: i32,
    consumer: i32,
}

/// `PPS_KC_BIND` on a PPS source: bind its assert edge to the kernel's clock discipline
/// (hardpps), or unbind it (`edge` 0).
pub fn pps_bind(path: &str, bind: bool) -> Outcome {
    const PPS_KC_BIND: libc::c_ulong = 0x4008_70a5;
    const PPS_TSFMT_TSPEC: i32 = 0x1;
    const PPS_CAPTUREASSERT: i32 = 0x01;
    const PPS_KC_HARDPPS: i32 = 0;
    let fd = match open(path, libc::O_RDWR) {
        Ok(fd) => fd,
        Err(o) => return o,
    };
    let args = PpsBindArgs {
        tsformat: PPS_TSFMT_TSPEC,
        edge: if bind { PPS_CAPTUREASSERT } else { 0 },
        consumer: PPS_KC_HARDPPS,
    };
    // SAFETY: the request reads a pointer to a pps_bind_args.
    let rc = unsafe { libc::ioctl(fd, PPS_KC_BIND, &args as *const PpsBindArgs) } as i64;
    let o = outcome(rc);
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    o
}

/// Attaches the PPS line discipline to a serial port, which makes a `/dev/ppsN` source.
/// The source lives as long as the returned descriptor stays open.
pub fn pps_attach(tty: &str) -> Result<RawFd, String> {
    const N_PPS: libc::c_int = 18;
    let fd = open(tty, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK)
        .map_err(|o| format!("open {tty}: errno {}", o.errno))?;
    // SAFETY: TIOCSETD reads an int.
    if unsafe { libc::ioctl(fd, libc::TIOCSETD, &N_PPS) } < 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(fd) };
        return Err(format!("TIOCSETD N_PPS on {tty}: {err}"));
    }
    Ok(fd)
}

/// A new time namespace for this process's children, with CLOCK_MONOTONIC `secs` ahead:
/// `unshare(CLONE_NEWTIME)`, then a write to `/proc/self/timens_offsets`, which the kernel
/// guards with CAP_SYS_TIME but which changes nothing of the host's clock.
pub fn time_namespace_offset(secs: i64) -> Outcome {
    const CLONE_NEWTIME: libc::c_int = 0x80;
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(CLONE_NEWTIME) } < 0 {
        return outcome(-1);
    }
    let rc = match std::fs::write("/proc/self/timens_offsets", format!("monotonic {secs} 0\n")) {
        Ok(()) => 0,
        Err(e) => {
            return Outcome {
                errno: e.raw_os_error().unwrap_or(-1),
                ..read()
            }
        }
    };
    outcome(rc)
}
