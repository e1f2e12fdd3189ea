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

/// `mmap`/`mprotect` protection bit of code.
pub const PROT_EXEC: u64 = 4;

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

crate::pod!(Taint, LostKey);

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
}
