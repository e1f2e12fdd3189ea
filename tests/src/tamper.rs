//! What an intruder with root tries against the guard, for the self-protection scenarios:
//! signals, ptrace, writes, unlinks and renames of protected files, and `bpf()` commands on
//! the guard's maps and links, and rewriting its own executable identity. Each call reports `{"errno": N}`.

use std::ffi::CString;

use serde_json::{json, Value};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn outcome(rc: i64) -> Value {
    if rc < 0 {
        json!({"errno": errno()})
    } else {
        json!({"errno": 0})
    }
}

fn c(path: &str) -> Result<CString, String> {
    CString::new(path).map_err(|e| e.to_string())
}

/// kill(pid, sig).
pub fn signal(pid: i32, sig: i32) -> Value {
    // SAFETY: a plain syscall.
    outcome(unsafe { libc::kill(pid, sig) }.into())
}

/// `prctl(PR_SET_MM, PR_SET_MM_EXE_FILE, fd)` with a descriptor of `path`: naming another
/// file as this process's executable. The kernel itself answers EBUSY while the process's
/// own image is still mapped; the guard decides before the kernel looks.
pub fn set_exe_file(path: &str) -> Result<Value, String> {
    const PR_SET_MM: libc::c_int = 35;
    const PR_SET_MM_EXE_FILE: libc::c_ulong = 13;
    let p = c(path)?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(format!("cannot open {path}: errno {}", errno()));
    }
    // SAFETY: a plain syscall on the descriptor just opened.
    let rc = unsafe { libc::prctl(PR_SET_MM, PR_SET_MM_EXE_FILE, fd as libc::c_ulong, 0, 0) };
    let out = outcome(rc.into());
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(fd) };
    Ok(out)
}

/// PTRACE_ATTACH to `pid` (detached again at once when it succeeds).
pub fn ptrace_attach(pid: i32) -> Value {
    // SAFETY: a plain syscall; the tracee is released right after.
    let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) };
    let out = outcome(rc);
    if rc >= 0 {
        // SAFETY: waiting for the stop the attach caused, detaching, and continuing it: a
        // tracee whose SIGSTOP became a group stop stays stopped after the detach.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
            libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
            libc::kill(pid, libc::SIGCONT);
        }
    }
    out
}

/// Attaches to `pid` and lets it run on traced until `go` exists (at most 120 s); the
/// tracee is let go when this process exits.
pub fn ptrace_hold(pid: i32, go: &str) -> Value {
    // SAFETY: a plain syscall.
    let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) };
    let out = outcome(rc);
    if rc >= 0 {
        // SAFETY: waiting for the stop the attach caused, then letting the tracee go on.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
            libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
        }
        // Said once attached: the test waits for this line.
        println!("{out}");
        let start = std::time::Instant::now();
        while !std::path::Path::new(go).exists()
            && start.elapsed() < std::time::Duration::from_secs(120)
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    out
}

/// Opens `path` for writing (appending, so that nothing is changed if it succeeds).
pub fn open_write(path: &str) -> Result<Value, String> {
    let p = c(path)?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_APPEND) };
    if fd >= 0 {
        // SAFETY: the descriptor just opened.
        unsafe { libc::close(fd) };
    }
    Ok(outcome(fd.into()))
}

/// unlink(path).
pub fn unlink(path: &str) -> Result<Value, String> {
    let p = c(path)?;
    // SAFETY: a NUL-terminated path.
    Ok(outcome(unsafe { libc::unlink(p.as_ptr()) }.into()))
}

/// rename(from, to).
pub fn rename(from: &str, to: &str) -> Result<Value, String> {
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: NUL-terminated paths.
    Ok(outcome(
        unsafe { libc::rename(f.as_ptr(), t.as_ptr()) }.into(),
    ))
}

/// `bpf(cmd, attr)` with an attribute block of 128 bytes.
fn bpf(cmd: i64, attr: &mut [u8; 128]) -> i64 {
    // SAFETY: the attribute block is as large as the kernel reads for these commands.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_MAP_GET_FD_BY_ID: i64 = 14;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;
const BPF_LINK_DETACH: i64 = 34;

/// A descriptor for a map or link by id (the way bpftool gets one).
fn fd_by_id(cmd: i64, id: u32) -> Result<i32, Value> {
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(cmd, &mut attr);
    if fd < 0 {
        Err(json!({"errno": errno(), "stage": "get fd by id"}))
    } else {
        Ok(fd as i32)
    }
}

/// Updates the first entry of map `id` with zeros (what `bpftool map update` does).
pub fn bpf_map_update(id: u32) -> Value {
    let fd = match fd_by_id(BPF_MAP_GET_FD_BY_ID, id) {
        Ok(fd) => fd,
        Err(v) => return v,
    };
    // struct bpf_map_info: type, id, key_size, value_size (u32 each).
    let mut info = [0u8; 80];
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) < 0 {
        return json!({"errno": errno(), "stage": "map info"});
    }
    let size = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
    let (key, value) = (vec![0u8; size(8) as usize], vec![0u8; size(12) as usize]);
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(value.as_ptr() as u64).to_ne_bytes());
    let rc = bpf(BPF_MAP_UPDATE_ELEM, &mut attr);
    let out = outcome(rc);
    // SAFETY: the descriptor this call opened.
    unsafe { libc::close(fd) };
    out
}

/// Detaches link `id` (what `bpftool link detach` does).
pub fn bpf_link_detach(id: u32) -> Value {
    let fd = match fd_by_id(BPF_LINK_GET_FD_BY_ID, id) {
        Ok(fd) => fd,
        Err(v) => return v,
    };
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    let out = outcome(bpf(BPF_LINK_DETACH, &mut attr));
    // SAFETY: the descriptor this call opened.
    unsafe { libc::close(fd) };
    out
}
