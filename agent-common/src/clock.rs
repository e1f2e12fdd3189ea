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

    /// Every operation, in the order the operator's words are listed.
    pub const ALL: [(u32, &str); 10] = [
        (STEP, "step"),
        (SLEW, "slew"),
        (FREQUENCY, "frequency"),
        (STATUS, "status"),
        (LEAP, "leap"),
        (TAI, "tai"),
        (TIMEZONE, "timezone"),
        (RTC, "rtc"),
        (PHC, "phc"),
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
    match (has_time, has_timezone) {
        (true, _) => op::STEP,
        (false, true) => op::TIMEZONE,
        (false, false) => 0,
    }
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
    fn names_are_operator_words() {
        assert_eq!(op::name(op::STEP), "step");
        assert_eq!(op::name(op::PHC), "phc");
        assert_eq!(op::name(1 << 30), "unknown");
    }
}
