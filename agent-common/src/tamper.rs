//! The guard guarding itself (`spec.selfProtection`): who may signal or trace the agent and
//! the time daemons, write the files the guard trusts, and touch timeguard's own BPF
//! programs, links, maps and pins.

use crate::event::Caller;

crate::codes! {
    /// What was tried against the guard.
    pub enum Action: u8, unknown = "unknown" {
        /// A signal that would stop the agent, from anyone but its service manager.
        Signal = 1 => "signal",
        /// ptrace (or reading its memory, or its descriptors) of the agent or a time daemon.
        Ptrace = 2 => "ptrace",
        /// Opening a protected file for writing.
        Write = 3 => "write",
        /// Removing a protected file (or a pin).
        Unlink = 4 => "unlink",
        /// Renaming a protected file, or another file over it.
        Rename = 5 => "rename",
        /// A `bpf()` command on one of timeguard's maps or links: update, delete, freeze,
        /// detach, replace.
        Bpf = 6 => "bpf",
        /// `prctl(PR_SET_MM)`: rewriting what the kernel says a process runs (its
        /// executable file, `PR_SET_MM_EXE_FILE` or `PR_SET_MM_MAP`) or its memory layout.
        /// Decided by the clock policy's mode, with or without self-protection.
        RewriteIdentity = 7 => "rewrite_identity",
    }
}

crate::codes! {
    /// What a protected file or object is. `Daemon`'s name is prose (`time daemon`), as
    /// records and the `target` label have always said it.
    pub enum Target: u32, unknown = "" {
        Agent = 1 => "agent",
        Policy = 2 => "policy",
        Daemon = 3 => "time daemon",
        /// Timeguard's pins in bpffs, and their directories.
        Pin = 4 => "pin",
        Map = 5 => "map",
        Link = 6 => "link",
        /// The executable identity every decision rests on (the caller's own process).
        Identity = 7 => "identity",
        /// A file a rule process runs as code (`integrity::RULE_CODE_FILES`), opened for
        /// writing while it is mapped. Decided by the clock policy's mode.
        Code = 8 => "code",
    }
}

/// The state of self-protection, set by the agent (index 0 of an array map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SelfState {
    /// 0: self-protection is off (nothing is decided).
    pub generation: u32,
    /// `policy::Mode`.
    pub mode: u32,
    /// The agent's process (signals to it are decided).
    pub agent_tgid: u32,
    /// Its service manager's process (pid 1, or the agent's parent), which may stop it.
    pub manager_tgid: u32,
    /// The agent's executable: a process running it is the agent (the only one that may
    /// touch what is protected).
    pub agent_dev: u64,
    pub agent_ino: u64,
    /// Number of arguments of the `bpf` LSM hook on this kernel (3 before 6.9, 4 after):
    /// where the previous verdict is.
    pub bpf_hook_args: u32,
    pub _pad: u32,
}

/// A protected file: its file system's `dev_t` (kernel encoding) and inode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

/// One of timeguard's BPF objects, by kind (`Target::Map` or `Target::Link`) and id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ObjectKey {
    pub kind: u32,
    pub id: u32,
}

/// Key of the exact per-CPU counters of tamper attempts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TamperCounterKey {
    pub action: u8,
    pub verdict: u8,
    pub _pad: [u8; 2],
    /// `Target`
    pub target: u32,
}

/// The record of one tamper attempt.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TamperEvent {
    pub boot_ns: u64,
    pub tai_ns: u64,
    pub caller: Caller,
    /// `Action`.
    pub action: u8,
    /// `policy::Verdict`.
    pub verdict: u8,
    pub _pad: [u8; 2],
    /// `Target`
    pub target: u32,
    /// Signals: the signal; ptrace: the mode; bpf: the command; rewrite_identity: the
    /// `PR_SET_MM_*` request.
    pub detail: u32,
    /// Signals and ptrace: the target process.
    pub target_tgid: u32,
    /// Files: the file (rewrite_identity: the one offered as the executable); bpf: the
    /// object id in `target_ino`.
    pub target_dev: u64,
    pub target_ino: u64,
    pub generation: u32,
    pub _pad2: u32,
}

/// Whether a signal's default action ends or stops a process the agent does not handle:
/// everything but SIGHUP (reload), the ignorable ones, and 0 (a liveness probe).
pub const fn stops_the_agent(sig: u32) -> bool {
    const SIGHUP: u32 = 1;
    const SIGCHLD: u32 = 17;
    const SIGCONT: u32 = 18;
    const SIGURG: u32 = 23;
    const SIGWINCH: u32 = 28;
    !matches!(sig, 0 | SIGHUP | SIGCHLD | SIGCONT | SIGURG | SIGWINCH)
}

/// `bpf()` commands that change a map or a link, and where the map or link descriptor is in
/// `union bpf_attr`; None for the others.
pub const fn changing_bpf_command(cmd: u32) -> Option<(Target, usize)> {
    const MAP_UPDATE_ELEM: u32 = 2;
    const MAP_DELETE_ELEM: u32 = 3;
    const MAP_LOOKUP_AND_DELETE_ELEM: u32 = 21;
    const MAP_FREEZE: u32 = 22;
    const MAP_LOOKUP_AND_DELETE_BATCH: u32 = 25;
    const MAP_UPDATE_BATCH: u32 = 26;
    const MAP_DELETE_BATCH: u32 = 27;
    const LINK_UPDATE: u32 = 29;
    const LINK_DETACH: u32 = 34;
    // `batch`: in_batch, out_batch, keys, values (8 bytes each), count, then map_fd.
    const BATCH_MAP_FD: usize = 36;
    match cmd {
        MAP_UPDATE_ELEM | MAP_DELETE_ELEM | MAP_LOOKUP_AND_DELETE_ELEM | MAP_FREEZE => {
            Some((Target::Map, 0))
        }
        MAP_LOOKUP_AND_DELETE_BATCH | MAP_UPDATE_BATCH | MAP_DELETE_BATCH => {
            Some((Target::Map, BATCH_MAP_FD))
        }
        LINK_UPDATE | LINK_DETACH => Some((Target::Link, 0)),
        _ => None,
    }
}

/// `prctl` options and `PR_SET_MM` requests (uapi `linux/prctl.h`).
pub mod prctl {
    pub const PR_SET_MM: u32 = 35;
    pub const PR_SET_MM_EXE_FILE: u32 = 13;

    /// The name of a `PR_SET_MM` request, as records say it.
    pub const fn set_mm_request(arg2: u32) -> &'static str {
        match arg2 {
            1 => "PR_SET_MM_START_CODE",
            2 => "PR_SET_MM_END_CODE",
            3 => "PR_SET_MM_START_DATA",
            4 => "PR_SET_MM_END_DATA",
            5 => "PR_SET_MM_START_STACK",
            6 => "PR_SET_MM_START_BRK",
            7 => "PR_SET_MM_BRK",
            8 => "PR_SET_MM_ARG_START",
            9 => "PR_SET_MM_ARG_END",
            10 => "PR_SET_MM_ENV_START",
            11 => "PR_SET_MM_ENV_END",
            12 => "PR_SET_MM_AUXV",
            PR_SET_MM_EXE_FILE => "PR_SET_MM_EXE_FILE",
            14 => "PR_SET_MM_MAP",
            15 => "PR_SET_MM_MAP_SIZE",
            _ => "PR_SET_MM (unknown request)",
        }
    }
}

crate::pod!(SelfState, FileKey, ObjectKey, TamperCounterKey, TamperEvent);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_that_stop_the_agent() {
        for sig in [2, 3, 6, 9, 15, 19, 20] {
            assert!(stops_the_agent(sig), "signal {sig}");
        }
        for sig in [0, 1, 17, 18, 23, 28] {
            assert!(!stops_the_agent(sig), "signal {sig}");
        }
    }

    #[test]
    fn set_mm_requests_are_named() {
        assert_eq!(prctl::set_mm_request(13), "PR_SET_MM_EXE_FILE");
        assert_eq!(prctl::set_mm_request(14), "PR_SET_MM_MAP");
        assert_eq!(prctl::set_mm_request(99), "PR_SET_MM (unknown request)");
    }

    #[test]
    fn bpf_commands() {
        assert_eq!(changing_bpf_command(2), Some((Target::Map, 0)));
        assert_eq!(changing_bpf_command(26), Some((Target::Map, 36)));
        assert_eq!(changing_bpf_command(34), Some((Target::Link, 0)));
        // Lookups, gets by id and program loads change nothing of ours.
        for cmd in [0, 1, 4, 5, 13, 14, 30] {
            assert_eq!(changing_bpf_command(cmd), None, "command {cmd}");
        }
    }
}
