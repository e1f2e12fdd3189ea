//! The one path that attaches any program of the table (`program::TABLE`) and pins its
//! link, or takes over the link an earlier agent of this build pinned; and what it made:
//! attachments as typed values.

use std::{
    fmt,
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::FdLink, xdp::XdpLinkId, BtfTracePoint,
        CgroupAttachMode, CgroupSkb, CgroupSockAddr, KProbe, Lsm, TracePoint, Xdp, XdpMode,
    },
    Btf, Ebpf,
};

use super::{
    pins::{link_key, Pins},
    program::{Hook, ProgramSpec},
};

/// Where an on-demand program goes.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// Programs whose hook says all.
    Hook,
    /// A cgroup v2 directory, opened.
    Cgroup { path: &'a Path, dir: &'a File },
    /// A network interface, by name and index.
    Interface { name: &'a str, index: u32 },
}

/// Where a program is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachPoint {
    Lsm(&'static str),
    BtfTracepoint(&'static str),
    Tracepoint(&'static str, &'static str),
    Kprobe(&'static str),
    CgroupSkbIngress(PathBuf),
    CgroupSockAddr(PathBuf),
    Xdp { interface: String, index: u32 },
}

impl AttachPoint {
    fn of(hook: Hook, target: Target<'_>) -> anyhow::Result<Self> {
        Ok(match (hook, target) {
            (Hook::Lsm(h), Target::Hook) => AttachPoint::Lsm(h),
            (Hook::BtfTracepoint(t), Target::Hook) => AttachPoint::BtfTracepoint(t),
            (Hook::Tracepoint(c, n), Target::Hook) => AttachPoint::Tracepoint(c, n),
            (Hook::Kprobe(f), Target::Hook) => AttachPoint::Kprobe(f),
            (Hook::CgroupSkbIngress, Target::Cgroup { path, .. }) => {
                AttachPoint::CgroupSkbIngress(path.to_path_buf())
            }
            (Hook::CgroupSockAddr, Target::Cgroup { path, .. }) => {
                AttachPoint::CgroupSockAddr(path.to_path_buf())
            }
            (Hook::Xdp, Target::Interface { name, index }) => AttachPoint::Xdp {
                interface: name.to_string(),
                index,
            },
            (hook, _) => bail!("a program on {hook:?} cannot attach there"),
        })
    }

    /// The key its link is pinned under (None: held by this agent only, not pinned).
    fn pin_key(&self, program: &str) -> Option<String> {
        let target = match self {
            AttachPoint::Lsm(hook) => format!("lsm.{hook}"),
            AttachPoint::BtfTracepoint(tp) => format!("tp_btf.{tp}"),
            AttachPoint::CgroupSkbIngress(p) | AttachPoint::CgroupSockAddr(p) => {
                format!("cgroup{}", p.display())
            }
            AttachPoint::Xdp { interface, index } => format!("xdp.{interface}.{index}"),
            AttachPoint::Tracepoint(..) | AttachPoint::Kprobe(_) => return None,
        };
        Some(link_key(program, &target))
    }
}

/// An attached program. Shown (logs, status, the `started` record) as
/// "name (lsm/hook)", "name (lsm/hook, adopted)", "name (tracepoint/category/name)",
/// "name (kprobe/function)", "name (cgroup_skb/ingress on /cgroup)",
/// "name (cgroup/sock_addr on /cgroup)", "name (xdp on interface)".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub program: &'static str,
    pub point: AttachPoint,
    /// Taken over from an earlier agent's pin, not attached by this one.
    pub adopted: bool,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.program;
        match &self.point {
            // Only LSM links were ever said to be adopted; the text stays as it was.
            AttachPoint::Lsm(hook) if self.adopted => write!(f, "{name} (lsm/{hook}, adopted)"),
            AttachPoint::Lsm(hook) => write!(f, "{name} (lsm/{hook})"),
            AttachPoint::BtfTracepoint(tp) if self.adopted => {
                write!(f, "{name} (tp_btf/{tp}, adopted)")
            }
            AttachPoint::BtfTracepoint(tp) => write!(f, "{name} (tp_btf/{tp})"),
            AttachPoint::Tracepoint(c, n) => write!(f, "{name} (tracepoint/{c}/{n})"),
            AttachPoint::Kprobe(function) => write!(f, "{name} (kprobe/{function})"),
            AttachPoint::CgroupSkbIngress(p) => {
                write!(f, "{name} (cgroup_skb/ingress on {})", p.display())
            }
            AttachPoint::CgroupSockAddr(p) => {
                write!(f, "{name} (cgroup/sock_addr on {})", p.display())
            }
            AttachPoint::Xdp { interface, .. } => write!(f, "{name} (xdp on {interface})"),
        }
    }
}

impl serde::Serialize for Attached {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How this agent holds an attachment's link.
#[derive(Debug)]
pub enum Link {
    /// Pinned under this key: it outlives the agent.
    Pinned(String),
    /// Held by the program in the object: it lives as long as this agent.
    Program,
    /// An XDP link held by this agent only: the kernel refused to pin it.
    Xdp {
        program: &'static str,
        id: XdpLinkId,
    },
}

/// What `attach` made: the attachment as status shows it, and its link.
#[derive(Debug)]
pub struct Attachment {
    pub attached: Attached,
    pub link: Link,
}

fn missing(name: &str) -> anyhow::Error {
    anyhow!("program {name} missing from the embedded object")
}

/// Attaches one program to `target` and pins its link, or takes over the link an earlier
/// agent of this build pinned there. Programs are loaded on first use.
pub fn attach(
    ebpf: &mut Ebpf,
    pins: &mut Pins,
    btf: Result<&Btf, &str>,
    spec: &ProgramSpec,
    target: Target<'_>,
) -> anyhow::Result<Attachment> {
    let name = spec.name;
    let point = AttachPoint::of(spec.hook, target)?;
    let key = point.pin_key(name);
    let attached = |adopted| Attached {
        program: name,
        point: point.clone(),
        adopted,
    };
    if let Some(key) = key.as_deref().filter(|k| pins.adopt(k)) {
        return Ok(Attachment {
            attached: attached(true),
            link: Link::Pinned(key.to_string()),
        });
    }
    let program = ebpf.program_mut(name).ok_or_else(|| missing(name))?;
    let pin = |pins: &mut Pins, link: FdLink| -> anyhow::Result<Link> {
        let key = key.clone().ok_or_else(|| anyhow!("{name}: no pin key"))?;
        pins.keep(&key, link)?;
        Ok(Link::Pinned(key))
    };
    let link = match (&point, target) {
        (AttachPoint::Lsm(hook), _) => {
            let btf = btf.map_err(|e| anyhow!("reading the kernel's BTF: {e}"))?;
            let lsm: &mut Lsm = program.try_into()?;
            if lsm.fd().is_err() {
                lsm.load(hook, btf).map_err(describe_load_error)?;
            }
            let id = lsm.attach()?;
            pin(pins, FdLink::from(lsm.take_link(id)?))?
        }
        (AttachPoint::BtfTracepoint(tp), _) => {
            let btf = btf.map_err(|e| anyhow!("reading the kernel's BTF: {e}"))?;
            let prog: &mut BtfTracePoint = program.try_into()?;
            if prog.fd().is_err() {
                prog.load(tp, btf).map_err(describe_load_error)?;
            }
            let id = prog.attach()?;
            pin(pins, FdLink::from(prog.take_link(id)?))?
        }
        (AttachPoint::Tracepoint(category, tracepoint), _) => {
            let tp: &mut TracePoint = program.try_into()?;
            if tp.fd().is_err() {
                tp.load().with_context(|| format!("loading {name}"))?;
            }
            tp.attach(category, tracepoint)
                .with_context(|| format!("attaching {name} to {category}/{tracepoint}"))?;
            Link::Program
        }
        (AttachPoint::Kprobe(function), _) => {
            let kp: &mut KProbe = program.try_into()?;
            if kp.fd().is_err() {
                kp.load().map_err(describe_load_error)?;
            }
            kp.attach(function, 0)?;
            Link::Program
        }
        // Attached as links: other programs on the same cgroup (systemd's, another
        // agent's) keep running, and a packet passes only if every one of them lets it.
        (AttachPoint::CgroupSkbIngress(path), Target::Cgroup { dir, .. }) => {
            let prog: &mut CgroupSkb = program.try_into()?;
            if prog.fd().is_err() {
                prog.load().with_context(|| format!("loading {name}"))?;
            }
            let id = prog
                .attach(dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", path.display()))?;
            let link = FdLink::try_from(prog.take_link(id)?)
                .with_context(|| format!("the kernel attached {name} without a link to pin"))?;
            pin(pins, link)?
        }
        (AttachPoint::CgroupSockAddr(path), Target::Cgroup { dir, .. }) => {
            let prog: &mut CgroupSockAddr = program.try_into()?;
            if prog.fd().is_err() {
                prog.load().with_context(|| format!("loading {name}"))?;
            }
            let id = prog
                .attach(dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", path.display()))?;
            let link = FdLink::try_from(prog.take_link(id)?)
                .with_context(|| format!("the kernel attached {name} without a link to pin"))?;
            pin(pins, link)?
        }
        (AttachPoint::Xdp { interface, index }, _) => {
            let prog: &mut Xdp = program.try_into()?;
            if prog.fd().is_err() {
                prog.load().with_context(|| format!("loading {name}"))?;
            }
            // The driver's own XDP where it has one, the kernel's generic XDP otherwise;
            // both run before any packet socket sees the frame.
            let attach = |prog: &mut Xdp| {
                prog.attach_to_if_index(*index, XdpMode::Default)
                    .with_context(|| format!("attaching {name} (XDP) to {interface}"))
            };
            let id = attach(prog)?;
            let link = FdLink::try_from(prog.take_link(id)?).with_context(|| {
                format!("the kernel attached XDP to {interface} without a link")
            })?;
            match pin(pins, link) {
                Ok(link) => link,
                Err(e) => {
                    // A kernel that refuses the pin: the guard still holds while this agent runs.
                    log::warn!(
                        "{e:#}; the PTP guard on {interface} holds only while this agent runs"
                    );
                    Link::Xdp {
                        program: name,
                        id: attach(prog)?,
                    }
                }
            }
        }
        (point, _) => bail!("{name} cannot attach to {point:?}"),
    };
    Ok(Attachment {
        attached: attached(false),
        link,
    })
}

/// Detaches what `attach` made; a pinned link is unpinned first.
pub fn release(ebpf: &mut Ebpf, pins: &mut Pins, link: Link) {
    match link {
        Link::Pinned(key) => pins.release(&key),
        Link::Program => {}
        Link::Xdp { program, id } => {
            if let Some(Ok(p)) = ebpf.program_mut(program).map(<&mut Xdp>::try_from) {
                let _ = p.detach(id);
            }
        }
    }
}

/// Unpins an enforcing program's link (LSM or BTF tracepoint) and unloads the program.
pub fn unload_enforcing(
    ebpf: &mut Ebpf,
    pins: &mut Pins,
    spec: &ProgramSpec,
) -> anyhow::Result<()> {
    let point = match spec.hook {
        Hook::Lsm(hook) => AttachPoint::Lsm(hook),
        Hook::BtfTracepoint(tp) => AttachPoint::BtfTracepoint(tp),
        _ => bail!("{} is not an enforcing program", spec.name),
    };
    if let Some(key) = point.pin_key(spec.name) {
        pins.release(&key);
    }
    if let Some(p) = ebpf.program_mut(spec.name) {
        match point {
            AttachPoint::Lsm(_) => {
                let lsm: &mut Lsm = p.try_into()?;
                let _ = lsm.unload();
            }
            _ => {
                let tp: &mut BtfTracePoint = p.try_into()?;
                let _ = tp.unload();
            }
        }
    }
    Ok(())
}

/// Makes the kernel's refusal readable: an empty verifier log with EPERM is the sandbox or
/// lockdown refusing the program type, not a bug in the program.
fn describe_load_error(e: aya::programs::ProgramError) -> anyhow::Error {
    if let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &e
    {
        let log = verifier_log.to_string();
        if log.trim().is_empty() {
            return anyhow!("the kernel refused the program: {io_error}");
        }
        return anyhow!("the kernel refused the program: {io_error}\nverifier log:\n{log}");
    }
    anyhow::Error::new(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(program: &'static str, point: AttachPoint, adopted: bool) -> String {
        Attached {
            program,
            point,
            adopted,
        }
        .to_string()
    }

    #[test]
    fn attachments_read_as_they_always_did() {
        assert_eq!(
            shown("clock_settime_guard", AttachPoint::Lsm("settime"), false),
            "clock_settime_guard (lsm/settime)"
        );
        assert_eq!(
            shown("tamper_bpf", AttachPoint::Lsm("bpf"), true),
            "tamper_bpf (lsm/bpf, adopted)"
        );
        assert_eq!(
            shown(
                "observe_adjtimex",
                AttachPoint::Tracepoint("syscalls", "sys_enter_adjtimex"),
                false
            ),
            "observe_adjtimex (tracepoint/syscalls/sys_enter_adjtimex)"
        );
        assert_eq!(
            shown(
                "kernel_sets_rtc",
                AttachPoint::Kprobe("rtc_set_time"),
                false
            ),
            "kernel_sets_rtc (kprobe/rtc_set_time)"
        );
        let cgroup = PathBuf::from("/sys/fs/cgroup");
        assert_eq!(
            shown(
                "ntp_ingress",
                AttachPoint::CgroupSkbIngress(cgroup.clone()),
                true
            ),
            "ntp_ingress (cgroup_skb/ingress on /sys/fs/cgroup)"
        );
        assert_eq!(
            shown("time_bind4", AttachPoint::CgroupSockAddr(cgroup), false),
            "time_bind4 (cgroup/sock_addr on /sys/fs/cgroup)"
        );
        let xdp = AttachPoint::Xdp {
            interface: "eth0".into(),
            index: 2,
        };
        assert_eq!(
            shown("ptp_ingress", xdp, false),
            "ptp_ingress (xdp on eth0)"
        );
        let json = serde_json::to_value([Attached {
            program: "clock_capable_guard",
            point: AttachPoint::Lsm("capable"),
            adopted: false,
        }])
        .expect("json");
        assert_eq!(
            json,
            serde_json::json!(["clock_capable_guard (lsm/capable)"])
        );
    }

    #[test]
    fn pins_keep_their_keys() {
        assert_eq!(
            AttachPoint::Lsm("settime").pin_key("clock_settime_guard"),
            Some("clock_settime_guard@lsm_settime".to_string())
        );
        assert_eq!(
            AttachPoint::CgroupSockAddr("/sys/fs/cgroup".into()).pin_key("time_bind4"),
            Some("time_bind4@cgroup_sys_fs_cgroup".to_string())
        );
        let xdp = AttachPoint::Xdp {
            interface: "eth0".into(),
            index: 2,
        };
        assert_eq!(
            xdp.pin_key("ptp_ingress"),
            Some("ptp_ingress@xdp_eth0_2".to_string())
        );
        assert_eq!(
            AttachPoint::Kprobe("rtc_set_time").pin_key("kernel_sets_rtc"),
            None
        );
    }
}
