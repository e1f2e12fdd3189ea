//! What a time server operator is told about a packet, beyond its verdict: shared by the
//! NTP (`net`) and PTP (`ptp`) decisions.

crate::codes! {
    pub enum Alert: u8, unknown = "" {
        None = 0 => "",
        /// A server (or grandmaster) this host had not heard from before replied.
        NewSource = 1 => "new_source",
        /// An upstream's stratum or leap indicator (a grandmaster's quality, leap flags or
        /// UTC offset) changed.
        UpstreamChanged = 2 => "upstream_changed",
        /// A server sent a Kiss-o'-Death (stratum 0, a code in the refid).
        KissOfDeath = 3 => "kiss_of_death",
        /// A time daemon connected to a destination it had not used before.
        NewDestination = 4 => "new_destination",
    }
}
