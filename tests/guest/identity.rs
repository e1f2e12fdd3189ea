//! Who asks is the executable file: a copy, a new name, links, exec through a descriptor or
//! a memfd gain nothing; `match.users` narrows a rule by the caller's uid.

use crate::prelude::*;

#[test]
fn a_copy_of_the_allowed_binary_is_denied() {
    scenario(|_| {
        let detail = denied_step(COPY, &["step", "3600"], Some("tg-clock"))?;
        Ok(format!(
            "{detail}: identity is the file, not its contents or name"
        ))
    })
}

#[test]
fn a_renamed_process_gains_nothing() {
    scenario(|_| {
        // The denied copy names itself after the allowed program and after chronyd.
        denied_step(
            COPY,
            &["as-comm", "tg-clock-allowe", "step", "3600"],
            Some("tg-clock-allowe"),
        )?;
        denied_step(
            COPY,
            &["as-comm", "chronyd", "step", "3600"],
            Some("chronyd"),
        )
    })
}

#[test]
fn symlinks_and_hard_links_gain_nothing() {
    scenario(|_| {
        // A symlink that carries the allowed program's name, and a hard link, both to the copy.
        let _ = fs::remove_file("/tmp/tg-clock-allowed");
        std::os::unix::fs::symlink(COPY, "/tmp/tg-clock-allowed").map_err(|e| e.to_string())?;
        denied_step(
            "/tmp/tg-clock-allowed",
            &["step", "3600"],
            Some("tg-clock-allowe"),
        )?;
        let _ = fs::remove_file("/usr/local/sbin/tg-clock-hardlink");
        fs::hard_link(COPY, "/usr/local/sbin/tg-clock-hardlink").map_err(|e| e.to_string())?;
        denied_step(
            "/usr/local/sbin/tg-clock-hardlink",
            &["step", "3600"],
            Some("tg-clock-hardli"),
        )
    })
}

#[test]
fn exec_through_proc_self_fd_or_a_memfd_gains_nothing() {
    scenario(|_| {
        // The allowed program executes the denied copy through /proc/self/fd: the new image
        // is the copy, and so is the identity.
        let fd = denied_step(ALLOWED, &["via-fd", COPY, "step", "3600"], None)?;
        // The allowed program's own bytes in a memfd are not the allowed file.
        let memfd = denied_step(ALLOWED, &["via-memfd", ALLOWED, "step", "3600"], None)?;
        Ok(format!("via fd: {fd}; via memfd: {memfd}"))
    })
}

/// `match.users` narrows a rule to the users it names, by the caller's uid in the kernel:
/// root running the allowed file under a rule for `_chrony` gets the default.
#[test]
fn match_users_narrows_a_rule() {
    scenario(|agent| {
        agent.reload_to(policies::USERS_CHRONY_ONLY, "vm-test-chrony-only")?;
        let denied = denied_step(ALLOWED, &["step", "3600"], Some("tg-clock-allowe"));
        agent.reload_to(policies::USERS_ROOT, "vm-test-root")?;
        let allowed = step_and_back(ALLOWED, "step", 60);
        agent.reload_to(policies::GUEST, "vm-test")?;
        let denied = denied.map_err(|e| format!("rule for _chrony, run as root: {e}"))?;
        allowed.map_err(|e| format!("rule for root: {e}"))?;
        Ok(format!(
            "users: [_chrony] -> root denied by the default ({denied}); users: [root, _chrony] -> allowed"
        ))
    })
}
