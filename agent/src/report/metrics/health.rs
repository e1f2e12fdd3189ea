//! The clock's health as the kernel reports it (the node_exporter timex collector's
//! figures).

/// The kernel's clock discipline, read without changing it (adjtimex with modes 0).
#[derive(Debug, Clone, Copy)]
pub struct ClockHealth {
    pub offset_s: f64,
    pub frequency_ratio: f64,
    pub maxerror_s: f64,
    pub esterror_s: f64,
    pub status: i32,
    pub synced: bool,
    pub tai_s: i32,
}

impl ClockHealth {
    pub fn read() -> Self {
        const STA_NANO: i32 = 0x2000;
        const STA_UNSYNC: i32 = 0x0040;
        // SAFETY: timex is plain data; zero is valid; modes 0 only reads.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        unsafe { libc::adjtimex(&mut tx) };
        let offset_unit = if tx.status & STA_NANO != 0 {
            1e-9
        } else {
            1e-6
        };
        ClockHealth {
            offset_s: tx.offset as f64 * offset_unit,
            frequency_ratio: 1.0 + tx.freq as f64 / 65536.0 / 1e6,
            maxerror_s: tx.maxerror as f64 * 1e-6,
            esterror_s: tx.esterror as f64 * 1e-6,
            status: tx.status,
            synced: tx.status & STA_UNSYNC == 0,
            tai_s: tx.tai,
        }
    }
}
