//! The clock's devices: PHC character devices (`phc_*` programs decide their opens and
//! ioctls under the clock policy's rules), and the RTC the kernel sets itself
//! (`kernel_sets_rtc`, observed). Their rows are `Sensor::Devices` in the program table;
//! their rules are the clock's (`sensors::clock`).

/// The character-device major of PTP clocks now (0: the PTP core is not loaded): the
/// programs tell a PHC from other character devices by it. It changes when the PTP core
/// is loaded as a module, so it is read again at each watch tick.
pub fn phc_major() -> u32 {
    crate::kernel::char_major("ptp").unwrap_or(0)
}
