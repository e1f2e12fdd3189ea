//! Who made a request, as every record names them.

use agent_common::event::{Caller, COMM_LEN};

use crate::policy::ExeId;

/// Who made a request, as every record names them (clock, network and tamper records): the
/// kernel's ids and task name, the executable's path while known, and its identity.
#[derive(serde::Serialize)]
pub struct Who<'a> {
    pid: u32,
    tgid: u32,
    uid: u32,
    gid: u32,
    comm: String,
    exe: Option<&'a str>,
    exe_id: String,
    /// The cgroup it ran in (its systemd unit), read while it lives: what `match.unit`
    /// decides by is the kernel's own mark, and the reason says when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a str>,
}

impl<'a> Who<'a> {
    /// The caller block of a kernel record; `exe` is its executable's path while known.
    pub fn of(caller: &Caller, exe: Option<&'a str>) -> Self {
        Who {
            pid: caller.pid,
            tgid: caller.tgid,
            uid: caller.uid,
            gid: caller.gid,
            comm: comm_text(&caller.comm),
            exe,
            exe_id: ExeId {
                dev: caller.exe_dev,
                ino: caller.exe_ino,
            }
            .to_string(),
            cgroup: None,
        }
    }

    /// The same, with the cgroup the process runs in.
    pub fn in_cgroup(self, cgroup: Option<&'a str>) -> Self {
        Who { cgroup, ..self }
    }
}

/// A task's name as the kernel keeps it (NUL-padded).
fn comm_text(comm: &[u8; COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}
