//! Who made a request, as every record names them.

use agent_common::event::COMM_LEN;

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
}

impl<'a> Who<'a> {
    pub fn new(
        (pid, tgid): (u32, u32),
        (uid, gid): (u32, u32),
        comm: &[u8; COMM_LEN],
        exe: Option<&'a str>,
        exe_id: ExeId,
    ) -> Self {
        Who {
            pid,
            tgid,
            uid,
            gid,
            comm: comm_text(comm),
            exe,
            exe_id: exe_id.to_string(),
        }
    }
}

/// A task's name as the kernel keeps it (NUL-padded).
fn comm_text(comm: &[u8; COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}
