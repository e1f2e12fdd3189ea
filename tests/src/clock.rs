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

/// Sets the frequency offset (ADJ_FREQUENCY) in whole ppm.
pub fn set_frequency_ppm(ppm: i64) -> Outcome {
    adjtimex(0x0002, |tx| tx.freq = ppm << 16)
}
