//! What a clock-changing request is, in the operator's words.

/// Operations a request can perform; a request may perform several at once
/// (one `adjtimex` can set the frequency and the leap flags together).
pub mod op {
    /// Jump the clock: `clock_settime`, `settimeofday`, `stime`, `ADJ_SETOFFSET`.
    pub const STEP: u32 = 1 << 0;
    /// Gradual correction: `ADJ_OFFSET`, `adjtime()` (`ADJ_OFFSET_SINGLESHOT`).
    pub const SLEW: u32 = 1 << 1;
    /// Clock rate: `ADJ_FREQUENCY`, `ADJ_TICK`.
    pub const FREQUENCY: u32 = 1 << 2;
    /// Discipline bookkeeping: `ADJ_STATUS`, `ADJ_MAXERROR`, `ADJ_ESTERROR`, `ADJ_TIMECONST`.
    pub const STATUS: u32 = 1 << 3;
    /// Scheduling a leap second: `ADJ_STATUS` carrying `STA_INS`/`STA_DEL`.
    pub const LEAP: u32 = 1 << 4;
    /// The TAI-UTC offset: `ADJ_TAI`.
    pub const TAI: u32 = 1 << 5;
    /// The kernel timezone (`settimeofday` with only a timezone).
    pub const TIMEZONE: u32 = 1 << 6;
    /// The battery-backed real-time clock (`/dev/rtcN`).
    pub const RTC: u32 = 1 << 7;
    /// A PTP hardware clock (`/dev/ptpN`).
    pub const PHC: u32 = 1 << 8;
    /// A privileged time change the agent could not classify further; only a rule that
    /// allows every operation allows it.
    pub const OTHER: u32 = 1 << 9;
    /// A pulse-per-second source: binding it to the kernel clock discipline (`PPS_KC_BIND`)
    /// or setting its capture parameters (`PPS_SETPARAMS`) on `/dev/ppsN`.
    pub const PPS: u32 = 1 << 10;

    /// Every operation, in the order the operator's words are listed.
    pub const ALL: [(u32, &str); 11] = [
        (STEP, "step"),
        (SLEW, "slew"),
        (FREQUENCY, "frequency"),
        (STATUS, "status"),
        (LEAP, "leap"),
        (TAI, "tai"),
        (TIMEZONE, "timezone"),
        (RTC, "rtc"),
        (PHC, "phc"),
        (PPS, "pps"),
        (OTHER, "other"),
    ];

    /// The operator's word for a single operation bit.
    pub fn name(bit: u32) -> &'static str {
        let mut i = 0;
        while i < ALL.len() {
            if ALL[i].0 == bit {
                return ALL[i].1;
            }
            i += 1;
        }
        "unknown"
    }
}

/// `struct timex` mode bits (include/uapi/linux/timex.h).
pub mod adj {
    pub const OFFSET: u32 = 0x0001;
    pub const FREQUENCY: u32 = 0x0002;
    pub const MAXERROR: u32 = 0x0004;
    pub const ESTERROR: u32 = 0x0008;
    pub const STATUS: u32 = 0x0010;
    pub const TIMECONST: u32 = 0x0020;
    pub const TAI: u32 = 0x0080;
    pub const SETOFFSET: u32 = 0x0100;
    pub const MICRO: u32 = 0x1000;
    pub const NANO: u32 = 0x2000;
    pub const TICK: u32 = 0x4000;
    pub const OFFSET_SINGLESHOT: u32 = 0x8001;
    /// Only valid together with `OFFSET_SINGLESHOT`: read the remaining adjtime() offset.
    pub const OFFSET_READONLY: u32 = 0x2000;
    pub const OFFSET_SS_READ: u32 = 0xa001;

    /// The nominal `timex.tick` (µs per 1/USER_HZ s, USER_HZ = 100); each µs away from it
    /// changes the clock's rate by 100 ppm, so ADJ_TICK is a frequency change too.
    pub const TICK_NOMINAL: i64 = 10_000;
    /// One µs of tick, in the kernel's frequency unit (ppm << 16).
    pub const TICK_US_AS_FREQUENCY: i64 = 100 << 16;

    /// `timex.status` bits that schedule a leap second.
    pub const STA_INS: u32 = 0x0010;
    pub const STA_DEL: u32 = 0x0020;
}

/// Classifies `adjtimex`/`clock_adjtime` mode bits into operations.
/// Returns 0 for a read-only call, which is never blocked.
pub const fn timex_operations(modes: u32, status: u32) -> u32 {
    // adjtime(): singleshot is exclusive of every other bit (the kernel returns EINVAL otherwise).
    if modes & adj::OFFSET_SINGLESHOT == adj::OFFSET_SINGLESHOT {
        return if modes & adj::OFFSET_READONLY != 0 {
            0
        } else {
            op::SLEW
        };
    }
    let mut ops = 0;
    if modes & adj::SETOFFSET != 0 {
        ops |= op::STEP;
    }
    if modes & adj::OFFSET != 0 {
        ops |= op::SLEW;
    }
    if modes & (adj::FREQUENCY | adj::TICK) != 0 {
        ops |= op::FREQUENCY;
    }
    if modes & (adj::STATUS | adj::MAXERROR | adj::ESTERROR | adj::TIMECONST) != 0 {
        ops |= op::STATUS;
    }
    if modes & adj::STATUS != 0 && status & (adj::STA_INS | adj::STA_DEL) != 0 {
        ops |= op::LEAP;
    }
    if modes & adj::TAI != 0 {
        ops |= op::TAI;
    }
    // Bits the kernel knows but we do not classify must not make a call look read-only.
    let known = adj::OFFSET
        | adj::FREQUENCY
        | adj::MAXERROR
        | adj::ESTERROR
        | adj::STATUS
        | adj::TIMECONST
        | adj::TAI
        | adj::SETOFFSET
        | adj::MICRO
        | adj::NANO
        | adj::TICK;
    if modes & !known != 0 {
        ops |= op::OTHER;
    }
    ops
}

/// `timex_operations` for `settimeofday`/`clock_settime`: a time is a step; only a timezone
/// (no time) is a timezone change.
pub const fn settime_operations(has_time: bool, has_timezone: bool) -> u32 {
    if has_time {
        op::STEP
    } else if has_timezone {
        op::TIMEZONE
    } else {
        0
    }
}

/// `ioctl` request numbers: `_IOC(dir, type, nr, size)` (include/uapi/asm-generic/ioctl.h).
pub mod ioctl {
    /// The `type` byte of the RTC (`RTC_SET_TIME` …) and PPS (`PPS_KC_BIND` …) requests.
    pub const RTC_PPS_TYPE: u32 = b'p' as u32;
    /// The `type` byte of PTP hardware clock requests (`PTP_CLK_MAGIC`).
    pub const PTP_TYPE: u32 = b'=' as u32;
    /// PPS requests use numbers from 0xa1 up; RTC requests stay below.
    pub const PPS_FIRST_NR: u32 = 0xa1;
    /// PTP requests that change the device: external timestamps, periodic output, PPS
    /// output and pin functions (their `2` variants too). The others only read.
    pub const PTP_CHANGING_NRS: [u32; 8] = [0x02, 0x03, 0x04, 0x07, 0x0b, 0x0c, 0x0d, 0x10];

    pub const fn kind(cmd: u32) -> u32 {
        (cmd >> 8) & 0xff
    }

    pub const fn nr(cmd: u32) -> u32 {
        cmd & 0xff
    }
}

/// Classifies an `ioctl` that reached the kernel's CAP_SYS_TIME check (only changing RTC
/// and PPS requests do): the RTC (`RTC_SET_TIME`, `RTC_EPOCH_SET`, `RTC_PARAM_SET`), or a
/// PPS source (`PPS_SETPARAMS`, `PPS_KC_BIND`).
pub const fn privileged_ioctl_operations(cmd: u32) -> u32 {
    if ioctl::kind(cmd) != ioctl::RTC_PPS_TYPE {
        op::OTHER
    } else if ioctl::nr(cmd) >= ioctl::PPS_FIRST_NR {
        op::PPS
    } else {
        op::RTC
    }
}

/// Classifies an `ioctl` on a PTP hardware clock: `PHC` for a request that changes the
/// device, 0 for one that only reads (capabilities, cross-timestamps, pin queries).
pub const fn phc_ioctl_operations(cmd: u32) -> u32 {
    if ioctl::kind(cmd) != ioctl::PTP_TYPE {
        return 0;
    }
    let nr = ioctl::nr(cmd);
    let mut i = 0;
    while i < ioctl::PTP_CHANGING_NRS.len() {
        if ioctl::PTP_CHANGING_NRS[i] == nr {
            return op::PHC;
        }
        i += 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_calls_are_empty() {
        assert_eq!(timex_operations(0, 0), 0);
        assert_eq!(timex_operations(adj::OFFSET_SS_READ, 0), 0);
        // Units alone change nothing.
        assert_eq!(timex_operations(adj::NANO, 0), 0);
    }

    #[test]
    fn classifies_each_mode() {
        assert_eq!(timex_operations(adj::OFFSET_SINGLESHOT, 0), op::SLEW);
        assert_eq!(timex_operations(adj::SETOFFSET | adj::NANO, 0), op::STEP);
        assert_eq!(timex_operations(adj::OFFSET, 0), op::SLEW);
        assert_eq!(timex_operations(adj::FREQUENCY, 0), op::FREQUENCY);
        assert_eq!(timex_operations(adj::TICK, 0), op::FREQUENCY);
        assert_eq!(timex_operations(adj::MAXERROR, 0), op::STATUS);
        assert_eq!(timex_operations(adj::STATUS, 0), op::STATUS);
        assert_eq!(
            timex_operations(adj::STATUS, adj::STA_INS),
            op::STATUS | op::LEAP
        );
        assert_eq!(
            timex_operations(adj::STATUS, adj::STA_DEL),
            op::STATUS | op::LEAP
        );
        // Leap bits without ADJ_STATUS are not written by the kernel.
        assert_eq!(
            timex_operations(adj::FREQUENCY, adj::STA_INS),
            op::FREQUENCY
        );
        assert_eq!(timex_operations(adj::TAI, 0), op::TAI);
        assert_eq!(timex_operations(0x0400, 0), op::OTHER);
    }

    #[test]
    fn settime_kinds() {
        assert_eq!(settime_operations(true, false), op::STEP);
        assert_eq!(settime_operations(true, true), op::STEP);
        assert_eq!(settime_operations(false, true), op::TIMEZONE);
        assert_eq!(settime_operations(false, false), 0);
    }

    #[test]
    fn privileged_ioctls() {
        // _IOW('p', 0x0a, struct rtc_time)
        assert_eq!(privileged_ioctl_operations(0x4024_700a), op::RTC);
        // _IOW('p', 0x0e, unsigned long): RTC_EPOCH_SET
        assert_eq!(privileged_ioctl_operations(0x4008_700e), op::RTC);
        // _IOW('p', 0xa5, struct pps_bind_args *), native and compat pointer sizes
        assert_eq!(privileged_ioctl_operations(0x4008_70a5), op::PPS);
        assert_eq!(privileged_ioctl_operations(0x4004_70a5), op::PPS);
        // _IOW('p', 0xa2, struct pps_kparams *): PPS_SETPARAMS
        assert_eq!(privileged_ioctl_operations(0x4008_70a2), op::PPS);
        assert_eq!(privileged_ioctl_operations(0x5401), op::OTHER);
    }

    #[test]
    fn phc_ioctls() {
        // PTP_PEROUT_REQUEST = _IOW('=', 3, struct ptp_perout_request)
        assert_eq!(phc_ioctl_operations(0x4038_3d03), op::PHC);
        // PTP_PIN_SETFUNC2 = _IOW('=', 16, struct ptp_pin_desc)
        assert_eq!(phc_ioctl_operations(0x4060_3d10), op::PHC);
        // PTP_CLOCK_GETCAPS = _IOR('=', 1, ...), PTP_SYS_OFFSET = _IOW('=', 5, ...): reads
        assert_eq!(phc_ioctl_operations(0x8050_3d01), 0);
        assert_eq!(phc_ioctl_operations(0x4340_3d05), 0);
        assert_eq!(phc_ioctl_operations(0x4024_700a), 0);
    }

    #[test]
    fn names_are_operator_words() {
        assert_eq!(op::name(op::STEP), "step");
        assert_eq!(op::name(op::PHC), "phc");
        assert_eq!(op::name(1 << 30), "unknown");
    }
}
