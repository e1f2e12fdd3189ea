//! Every kernel program of timeguard in one table: what it is, where it attaches, which
//! sensor it serves, and what happens when the kernel refuses it. `attach` attaches any of
//! them.

/// The concern a program serves (`crate::sensors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensor {
    Clock,
    Devices,
    Network,
    SelfProtection,
}

/// Where a program attaches, as the table says it: hooks named here, cgroups and
/// interfaces given when attaching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A BPF LSM hook (`bpf_lsm_<hook>`).
    Lsm(&'static str),
    /// A tracepoint: category and name.
    Tracepoint(&'static str, &'static str),
    /// A BTF-typed tracepoint (`tp_btf`), by name: its link is pinned like an LSM program's.
    BtfTracepoint(&'static str),
    /// A kprobe on a kernel function.
    Kprobe(&'static str),
    /// cgroup_skb ingress, on a cgroup.
    CgroupSkbIngress,
    /// cgroup sock_addr (bind, connect, sendmsg), on a cgroup.
    CgroupSockAddr,
    /// XDP, on an interface.
    Xdp,
}

/// What the kernel refusing the program costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Attached, or its group fails.
    Required,
    /// Skipped where the kernel lacks the hook: another hook covers its path there.
    OptionalIfHookAbsent,
    /// Attached on its own: a refusal loses what it does only, said in status.
    BestEffort,
}

/// When a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// At start, all of them or none: the clock's decisions (enforcement).
    Enforcing,
    /// At start, where the `Enforcing` ones attached (self-protection needs BPF LSM).
    WithEnforcement,
    /// At start, where the `Enforcing` ones were refused: observing what they would decide.
    InsteadOfEnforcement,
    /// At start, always.
    Always,
    /// When its sensor asks, on a cgroup or an interface.
    OnDemand,
}

/// One kernel program: its name in the object, where it attaches, whom it serves.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    pub name: &'static str,
    pub hook: Hook,
    pub sensor: Sensor,
    pub need: Need,
    pub when: When,
}

const fn spec(
    name: &'static str,
    hook: Hook,
    sensor: Sensor,
    need: Need,
    when: When,
) -> ProgramSpec {
    ProgramSpec {
        name,
        hook,
        sensor,
        need,
        when,
    }
}

use Hook::*;
use Need::*;
use Sensor::*;
use When::*;

/// Every program, in the order they attach (and are listed in status and metrics).
pub const TABLE: [ProgramSpec; 37] = [
    // The clock's decisions and the devices' (PHC, RTC, PPS character devices).
    spec(
        "clock_settime_guard",
        Lsm("settime"),
        Clock,
        Required,
        Enforcing,
    ),
    spec(
        "clock_capable_guard",
        Lsm("capable"),
        Clock,
        Required,
        Enforcing,
    ),
    // The executable identity the clock's decisions rest on (`prctl(PR_SET_MM)` refused).
    spec(
        "identity_prctl_guard",
        Lsm("task_prctl"),
        Clock,
        Required,
        Enforcing,
    ),
    // The executable a process was executed from is its identity until its next exec.
    spec(
        "identity_exec",
        Lsm("bprm_committed_creds"),
        Clock,
        Required,
        Enforcing,
    ),
    // A new process carries its parent's identity and taint; they go with the process's
    // last thread.
    spec(
        "identity_fork",
        BtfTracepoint("sched_process_fork"),
        Clock,
        Required,
        Enforcing,
    ),
    spec(
        "identity_exit",
        BtfTracepoint("sched_process_exit"),
        Clock,
        Required,
        Enforcing,
    ),
    // ptrace decides self-protection (while it is on) and taints the processes another one
    // acts as (always): a tainted process loses its rule, so these enforce with the clock.
    spec(
        "tamper_ptrace",
        Lsm("ptrace_access_check"),
        Clock,
        Required,
        Enforcing,
    ),
    spec(
        "tamper_traceme",
        Lsm("ptrace_traceme"),
        Clock,
        Required,
        Enforcing,
    ),
    // The unit a process is of: the service manager's moves into a unit's cgroup.
    spec(
        "identity_unit_attach",
        BtfTracepoint("cgroup_attach_task"),
        Clock,
        Required,
        Enforcing,
    ),
    // Code a rule process maps that is not the system's (preloaded, a library path of
    // the intruder's, a library changed since the policy loaded) taints it.
    spec(
        "identity_mmap_guard",
        Lsm("mmap_file"),
        Clock,
        Required,
        Enforcing,
    ),
    spec(
        "identity_mprotect_guard",
        Lsm("file_mprotect"),
        Clock,
        Required,
        Enforcing,
    ),
    // Write-opens of what the guard trusts and of code rule processes run (a program of
    // its own on file_open: with the PHC guard's decision, 6.1's stack limit is passed).
    spec(
        "file_write_guard",
        Lsm("file_open"),
        Clock,
        Required,
        Enforcing,
    ),
    spec(
        "phc_open_guard",
        Lsm("file_open"),
        Devices,
        Required,
        Enforcing,
    ),
    spec(
        "phc_ioctl_guard",
        Lsm("file_ioctl"),
        Devices,
        Required,
        Enforcing,
    ),
    // Before 6.8, 32-bit ioctls pass file_ioctl.
    spec(
        "phc_ioctl_compat_guard",
        Lsm("file_ioctl_compat"),
        Devices,
        OptionalIfHookAbsent,
        Enforcing,
    ),
    // Packet sockets that see PTP frames (they decide only under a network policy).
    spec(
        "packet_socket_create",
        Lsm("socket_create"),
        Network,
        Required,
        Enforcing,
    ),
    spec(
        "packet_socket_bind",
        Lsm("socket_bind"),
        Network,
        Required,
        Enforcing,
    ),
    // Self-protection (decides only while it is on); each hook on its own.
    spec(
        "tamper_signal",
        Lsm("task_kill"),
        SelfProtection,
        BestEffort,
        WithEnforcement,
    ),
    spec(
        "tamper_sigio",
        Lsm("file_send_sigiotask"),
        SelfProtection,
        BestEffort,
        WithEnforcement,
    ),
    spec(
        "tamper_unlink",
        Lsm("inode_unlink"),
        SelfProtection,
        BestEffort,
        WithEnforcement,
    ),
    spec(
        "tamper_rename",
        Lsm("inode_rename"),
        SelfProtection,
        BestEffort,
        WithEnforcement,
    ),
    spec(
        "tamper_bpf",
        Lsm("bpf"),
        SelfProtection,
        BestEffort,
        WithEnforcement,
    ),
    // The same requests observed where LSM programs are refused.
    spec(
        "observe_clock_settime",
        Tracepoint("syscalls", "sys_enter_clock_settime"),
        Clock,
        Required,
        InsteadOfEnforcement,
    ),
    spec(
        "observe_settimeofday",
        Tracepoint("syscalls", "sys_enter_settimeofday"),
        Clock,
        Required,
        InsteadOfEnforcement,
    ),
    spec(
        "observe_adjtimex",
        Tracepoint("syscalls", "sys_enter_adjtimex"),
        Clock,
        Required,
        InsteadOfEnforcement,
    ),
    spec(
        "observe_clock_adjtime",
        Tracepoint("syscalls", "sys_enter_clock_adjtime"),
        Clock,
        Required,
        InsteadOfEnforcement,
    ),
    // The kernel's own setters: observed, never decided, wherever the kernel allows.
    spec(
        "kernel_sets_clock",
        Kprobe("do_settimeofday64"),
        Clock,
        BestEffort,
        Always,
    ),
    // x86: the 11-minute mode writes the CMOS clock here; other RTCs through the class.
    spec(
        "kernel_sets_rtc",
        Kprobe("update_persistent_clock64"),
        Devices,
        BestEffort,
        Always,
    ),
    spec(
        "kernel_sets_rtc",
        Kprobe("rtc_set_time"),
        Devices,
        BestEffort,
        Always,
    ),
    // The network guard: NTP ingress and time sockets on a cgroup, PTP on interfaces.
    spec("ntp_ingress", CgroupSkbIngress, Network, Required, OnDemand),
    spec("time_bind4", CgroupSockAddr, Network, Required, OnDemand),
    spec("time_bind6", CgroupSockAddr, Network, Required, OnDemand),
    spec("time_connect4", CgroupSockAddr, Network, Required, OnDemand),
    spec("time_connect6", CgroupSockAddr, Network, Required, OnDemand),
    spec("time_sendmsg4", CgroupSockAddr, Network, Required, OnDemand),
    spec("time_sendmsg6", CgroupSockAddr, Network, Required, OnDemand),
    spec("ptp_ingress", Xdp, Network, Required, OnDemand),
];

/// The programs attached at `when`, in table order.
pub fn attached_at(when: When) -> impl Iterator<Item = &'static ProgramSpec> {
    TABLE.iter().filter(move |s| s.when == when)
}

/// A sensor's programs, in table order.
pub fn of(sensor: Sensor) -> impl Iterator<Item = &'static ProgramSpec> {
    TABLE.iter().filter(move |s| s.sensor == sensor)
}

/// Every program name once, in table order.
pub fn names() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for s in &TABLE {
        if !out.contains(&s.name) {
            out.push(s.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_program_once_per_point() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert!(
                    a.name != b.name || a.hook != b.hook,
                    "{} twice on {:?}",
                    a.name,
                    a.hook
                );
            }
        }
        assert_eq!(
            names().len(),
            TABLE.len() - 1,
            "kernel_sets_rtc has two points"
        );
        // Only the enforcing group may skip a hook the kernel lacks.
        for s in TABLE.iter().filter(|s| s.need == OptionalIfHookAbsent) {
            assert_eq!(s.when, Enforcing, "{}", s.name);
        }
    }
}
