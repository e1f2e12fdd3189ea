//! Integrity of a rule's process: a process keeps the rights its executable's rule gives
//! only while the code it runs is that program's own. Once another process has acted as it
//! (ptrace, `/proc/PID/mem`, `process_vm_writev`), it asked to be traced, or it mapped as
//! code a file that is not the system's (outside the library directories, or changed since
//! the guard started: `LD_PRELOAD`, `/etc/ld.so.preload`, `LD_LIBRARY_PATH`, `LD_AUDIT`,
//! `dlopen` all come to that), it is tainted for the rest of its life, and so is every
//! process it forks: its requests are decided by the policy's default, and each record says
//! which rule it lost and why.

crate::codes! {
    /// Why a process lost its rule: bits of `Taint::reasons`, named as records and the
    /// `reason` label say them.
    pub enum TaintReason: u32, unknown = "unknown" {
        /// Another process acted as it: attached by ptrace, its memory opened or written
        /// (`/proc/PID/mem`, `process_vm_writev`), its descriptors taken (`pidfd_getfd`).
        Traced = 1 => "traced",
        /// It asked its parent to trace it (`PTRACE_TRACEME`, how a debugger or strace
        /// starts a program).
        AskedToBeTraced = 2 => "asked_to_be_traced",
        /// It mapped as code (or made executable) a file outside the system's library
        /// directories (`LIBRARY_DIRS`), other than its own executable, or memory backed by
        /// no file.
        ForeignCode = 4 => "foreign_code",
        /// It mapped as code a file in the library directories that was written, renamed or
        /// linked there since the guard started (its inode's change time is later).
        ModifiedCode = 8 => "modified_code",
        /// Not a taint but a rule that does not hold: the rule names a systemd unit
        /// (`match.unit`) and the process is not one the service manager started in it.
        OutsideUnit = 16 => "outside_unit",
        /// Not this process's taint but every rule process's: a taint a fork should have
        /// carried could not be kept (the map of tainted processes was full), so no rule
        /// process can be told clean any more (map `TAINTS_LOST`), until the programs are
        /// unpinned (or the machine restarts).
        TaintsLost = 32 => "taints_lost",
    }
}

/// The reasons in `bits`, in table order.
pub fn reason_names(bits: u32) -> impl Iterator<Item = &'static str> {
    TaintReason::ALL
        .into_iter()
        .filter(move |r| bits & r.code() != 0)
        .map(TaintReason::name)
}

/// What the kernel remembers of a tainted process (by its tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Taint {
    /// `TaintReason` bits.
    pub reasons: u32,
    /// The process that first acted as it (the tracer); for a fork, the tracer of the
    /// ancestor that was tainted. 0 when it tainted itself (code it mapped).
    pub source_tgid: u32,
    /// The first foreign or modified file it mapped as code: its file system's `dev_t`
    /// (kernel encoding) and inode; 0 for none (or memory backed by no file).
    pub file_dev: u64,
    pub file_ino: u64,
}

/// The system's library directories (map `LIBRARY_DIRS`), by (dev, ino) (`tamper::FileKey`), at
/// most `LIBRARY_DIRS_MAX`: the agent fills
/// them from the dynamic loader's defaults and `/etc/ld.so.conf`. A file mapped as code is
/// the system's when one of its first `LIBRARY_DIR_DEPTH` ancestors is one of them (the
/// kernel walks the file's own dentries: a bind mount or a symlink does not move it).
pub const LIBRARY_DIRS_MAX: u32 = 256;
pub const LIBRARY_DIR_DEPTH: u32 = 6;

/// Files rule processes run as code (map `RULE_CODE`, by `tamper::FileKey`): their own
/// executables and the system libraries they mapped, noted by the kernel as they map them
/// and by the agent from `/proc/PID/maps` for those running before it. While the policy
/// enforces, none of them is opened for writing as long as it is mapped: a library written
/// in place changes the code of every process that has it mapped, no mapping later.
pub const RULE_CODE_FILES: u32 = 16384;

/// The systemd unit a process was started in, as the kernel saw the service manager put it
/// there (by tgid, map `UNIT_OF`): its cgroup's id, and `unit_hash` of the cgroup's path and
/// of its parent's (the slice, which names a template unit's instances).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UnitMark {
    pub cgroup_id: u64,
    pub unit_hash: u64,
    pub slice_hash: u64,
}

/// Processes whose executable at exec is kept at once (map `EXE_AT_EXEC`).
pub const EXECUTED_PROCESSES: u32 = 65536;

/// Processes with a unit tracked at once.
pub const UNIT_PROCESSES: u32 = 65536;
/// Cgroup path components hashed, and bytes of each (longer names are cut, on both sides).
pub const UNIT_PATH_DEPTH: usize = 8;
pub const UNIT_NAME_MAX: usize = 128;

/// FNV-1a, one byte at a time: the kernel hashes a cgroup's path as it walks it.
pub const UNIT_HASH_START: u64 = 0xcbf2_9ce4_8422_2325;
#[inline(always)]
pub const fn unit_hash_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The hash of a cgroup path (`/system.slice/chrony.service`), as the kernel computes it:
/// components from the leaf up, each cut to `UNIT_NAME_MAX - 1` bytes and followed by `/`.
/// 0 never comes out of a real path; it means "no unit".
pub fn unit_hash(path: &str) -> u64 {
    let mut h = UNIT_HASH_START;
    for part in path
        .rsplit('/')
        .filter(|p| !p.is_empty())
        .take(UNIT_PATH_DEPTH)
    {
        let bytes = part.as_bytes();
        let mut i = 0;
        while i < bytes.len() && i < UNIT_NAME_MAX - 1 {
            h = unit_hash_step(h, bytes[i]);
            i += 1;
        }
        h = unit_hash_step(h, b'/');
    }
    h
}

/// `mmap`/`mprotect` protection bit of code.
pub const PROT_EXEC: u64 = 4;

/// `PROT_WRITE`: memory that can be written.
pub const PROT_WRITE: u64 = 2;

/// Decisions a tainted process lost its rule in are counted per (rule, reasons), from the
/// clock's counters (`policy::CounterKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LostKey {
    /// The rule the process's executable matched, and lost.
    pub rule_id: u32,
    /// `TaintReason` bits.
    pub reasons: u32,
}

/// Tainted processes tracked at once (an entry goes when its process's last thread exits).
pub const TAINTED_PROCESSES: u32 = 65536;

crate::pod!(Taint, LostKey, UnitMark);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_named_in_table_order() {
        let both = TaintReason::Traced.code() | TaintReason::AskedToBeTraced.code();
        let mut names = reason_names(both);
        assert_eq!(names.next(), Some("traced"));
        assert_eq!(names.next(), Some("asked_to_be_traced"));
        assert_eq!(names.next(), None);
        assert_eq!(reason_names(0x8000_0000).count(), 0);
    }

    #[test]
    fn a_unit_hash_is_its_path_leaf_first() {
        let unit = unit_hash("/system.slice/chrony.service");
        assert_eq!(unit, unit_hash("system.slice/chrony.service/"));
        assert_ne!(unit, unit_hash("/chrony.service/system.slice"));
        assert_ne!(unit, unit_hash("/system.slice/chronyd.service"));
        // Leaf first: a path's hash continues its leaf's.
        let mut h = UNIT_HASH_START;
        for b in b"chrony.service/system.slice/" {
            h = unit_hash_step(h, *b);
        }
        assert_eq!(unit, h);
        let long = "x".repeat(300);
        assert_eq!(unit_hash(&long), unit_hash(&long[..UNIT_NAME_MAX - 1]));
    }
}
