//! Who asks is the executable file: a copy, a new name, links, exec through a descriptor or
//! a memfd gain nothing; `match.users` narrows a rule by the caller's uid; a process another one
//! acted as (ptrace) loses its rule.

use std::os::unix::fs::MetadataExt as _;

use crate::daemons::CHRONY_UNIT;
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

/// The executable identity cannot be rewritten: `prctl(PR_SET_MM_EXE_FILE)` naming the
/// allowed program as the denied copy's executable is refused under the enforcing guest
/// policy (EPERM, before the kernel's own EBUSY for an image still mapped), counted, and
/// recorded with the file offered. Under the audit policy the same call reaches the kernel
/// (EBUSY there) and is recorded as audit: the refusal is the guard's.
#[test]
fn rewriting_the_executable_identity_is_refused() {
    scenario(|agent| {
        let offered = |v: &Value, verdict: &str| {
            v["kind"] == "tamper"
                && v["action"] == "rewrite_identity"
                && v["verdict"] == verdict
                && v["what"]["prctl"] == "PR_SET_MM_EXE_FILE"
                && v["what"]["exe_offered"] == ALLOWED
        };
        let enforced = errno_of(sh(COPY, &["set-exe-file", ALLOWED])?)?;
        if enforced != libc::EPERM {
            return Err(format!(
                "enforcing: PR_SET_MM_EXE_FILE got errno {enforced}, not EPERM"
            ));
        }
        wait_record("a rewrite_identity refusal", |v| offered(v, "deny"))?;
        let st = agent_status()?;
        let counted_deny = counted(
            &st["self_protection"]["attempts"],
            &[
                ("action", "rewrite_identity"),
                ("target", "identity"),
                ("verdict", "deny"),
            ],
        );
        if counted_deny == 0 {
            return Err(format!("refusal not counted: {}", st["self_protection"]));
        }
        agent.reload_to(policies::AUDIT, "vm-test-audit")?;
        let audited = sh(COPY, &["set-exe-file", ALLOWED]).and_then(errno_of);
        agent.reload_to(policies::GUEST, "vm-test")?;
        let audited = audited?;
        if audited != libc::EBUSY {
            return Err(format!(
                "audit: PR_SET_MM_EXE_FILE got errno {audited}, not the kernel's EBUSY"
            ));
        }
        wait_record("a rewrite_identity audit record", |v| offered(v, "audit"))?;
        Ok(format!(
            "enforce: EPERM, counted {counted_deny}, recorded; audit: reached the kernel (EBUSY), recorded"
        ))
    })
}

/// The identity is the file a process was executed from, kept at its exec: a swap done while
/// the guard only audits (the denied copy unmaps its own image, running from anonymous
/// memory, and names the allowed program as its executable, which the kernel then shows in
/// /proc) gains nothing once the policy enforces. Its frequency request is decided as the
/// copy's, by the default; the record names the copy's identity and no path (/proc's link
/// names the other file).
#[test]
fn an_executable_renamed_while_audited_stays_what_it_was_executed_as() {
    scenario(|agent| {
        let (ready, go) = ("/tmp/tg-swap.ready", "/tmp/tg-swap.go");
        let _ = fs::remove_file(ready);
        let _ = fs::remove_file(go);
        agent.reload_to(policies::AUDIT, "vm-test-audit")?;
        let child = Command::new(COPY)
            .args(["swap-exe", ALLOWED, ready, go, "7"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {COPY}: {e}"));
        let renamed = child.and_then(|c| {
            timeguard_tests::harness::wait_for(
                Duration::from_secs(30),
                Duration::from_millis(50),
                || std::path::Path::new(ready).exists().then_some(()),
            )
            .map(|()| c)
            .ok_or_else(|| "the copy never renamed its executable".to_string())
        });
        let enforced = agent.reload_to(policies::GUEST, "vm-test");
        let _ = fs::write(go, "");
        let out = renamed.and_then(|c| finished_within(c, Duration::from_secs(60)));
        let _ = fs::remove_file(ready);
        let _ = fs::remove_file(go);
        enforced?;
        let run = run_of(&out?);
        let v: Value = serde_json::from_str(&run.stdout)
            .map_err(|e| format!("{e}: {:?} (stderr: {})", run.stdout, run.stderr))?;
        if v["rename_errno"] != 0 {
            return Err(format!("the rename itself failed under audit: {v}"));
        }
        if v["errno"] != libc::EPERM {
            let _ = sh(ALLOWED, &["freq", "0"]);
            return Err(format!(
                "renamed to {ALLOWED}, its frequency request: {v} (expected EPERM)"
            ));
        }
        let pid = v["pid"].as_u64().unwrap_or(0);
        let md = fs::metadata(COPY).map_err(|e| format!("{COPY}: {e}"))?;
        let copy_id = format!(
            "{}:{}:{}",
            libc::major(md.dev()),
            libc::minor(md.dev()),
            md.ino()
        );
        let rec = wait_record("the renamed copy's refusal", |r| {
            r["kind"] == "clock" && r["verdict"] == "deny" && r["who"]["tgid"] == pid
        })?;
        if rec["who"]["exe_id"] != copy_id.as_str() || rec["rule"] != "default" {
            return Err(format!(
                "decided as {} by rule {} (the copy is {copy_id}): {rec}",
                rec["who"]["exe_id"], rec["rule"]
            ));
        }
        if !rec["who"]["exe"].is_null() {
            return Err(format!("the record names a path: {}", rec["who"]));
        }
        Ok(format!(
            "renamed under audit; enforcing: EPERM, decided as {copy_id} by the default"
        ))
    })
}

/// A rule program executed by another rule program is decided as itself from its first
/// instruction: its image is judged as its own code when the kernel maps it during the
/// exec, not as code the program that executed it maps (which would strip the new one's
/// rule as foreign code). The allowed test program executes hwclock, whose rule allows
/// setting the RTC; the write is allowed by the hwclock rule, with no rule lost.
#[test]
fn a_rule_program_executed_by_another_keeps_its_own_rule() {
    scenario(|_| {
        if !std::path::Path::new("/dev/rtc0").exists() {
            return Err("/dev/rtc0 is missing".into());
        }
        let since = records().len();
        let run = sh(
            ALLOWED,
            &[
                "via-fd",
                HWCLOCK_ALLOWED,
                "--systohc",
                "--utc",
                "--noadjfile",
            ],
        )?;
        if run.status != 0 {
            return Err(format!(
                "hwclock --systohc executed by {ALLOWED}: exit {} ({})",
                run.status, run.stderr
            ));
        }
        let rec = clock_event_since(since, "", "allow", "rtc")?;
        if rec["rule"] != "hwclock" || !rec["integrity"]["lost_rule"].is_null() {
            return Err(format!("decided by rule {}: {rec}", rec["rule"]));
        }
        Ok("hwclock executed by the allowed program: RTC set under its own rule".into())
    })
}

/// A rule's rights stay with the program's own code: once another process has acted as
/// the allowed program (ptrace attach, the way code is injected), that process is decided by
/// the default for the rest of its life, and so is a child it forks; so is the allowed
/// program started under `PTRACE_TRACEME` (how strace and gdb start one). Each refusal's
/// record names the rule lost, the reason and the tracer, and is counted. The control: the
/// allowed program started plainly keeps its right.
#[test]
fn a_rule_process_another_one_acted_as_loses_its_rule() {
    scenario(|_| {
        let plain = outcome(sh(ALLOWED, &["freq", "5"])?)?;
        let reset = outcome(sh(ALLOWED, &["freq", "0"])?)?;
        if plain.errno != 0 || reset.errno != 0 {
            return Err(format!(
                "the allowed program started plainly: errno {} / {}",
                plain.errno, reset.errno
            ));
        }
        // Attached while it waits; then it asks, and forks a child that asks.
        let attached = traced_then_asks(&["freq", "5"])?;
        let forked = traced_then_asks(&["in-child", "freq", "5"])?;
        let tracer_pid = |v: &Value| v["integrity"]["source_pid"].as_u64().unwrap_or(0);
        let lost = |v: &Value, pid: u32, reason: &str| {
            v["kind"] == "clock"
                && v["verdict"] == "deny"
                && v["rule"] == "default"
                && v["integrity"]["lost_rule"] == "test-allowed"
                && v["integrity"]["reasons"] == serde_json::json!([reason])
                && (pid == 0 || v["who"]["tgid"] == pid)
        };
        let rec = wait_record("a traced process's lost rule", |v| {
            lost(v, attached, "traced")
        })?;
        if tracer_pid(&rec) == 0 {
            return Err(format!("the record names no tracer: {rec}"));
        }
        // The child has a pid of its own: any record of the forked run's lost rule that is
        // not the parent's.
        wait_record("a forked child's lost rule", |v| {
            lost(v, 0, "traced") && v["who"]["tgid"] != attached && v["who"]["tgid"] != forked
        })?;
        // Started the way a debugger starts a program.
        let traceme = outcome(sh(COPY, &["traced-exec", ALLOWED, "freq", "5"])?)?;
        if traceme.errno != libc::EPERM {
            return Err(format!(
                "started under PTRACE_TRACEME: errno {} (expected EPERM)",
                traceme.errno
            ));
        }
        wait_record("a lost rule under PTRACE_TRACEME", |v| {
            lost(v, 0, "asked_to_be_traced")
        })?;
        let st = agent_status()?;
        let traced = counted(
            &st["rules_lost"],
            &[("rule", "test-allowed"), ("reason", "traced")],
        );
        let asked = counted(
            &st["rules_lost"],
            &[("rule", "test-allowed"), ("reason", "asked_to_be_traced")],
        );
        if traced < 2 || asked < 1 {
            return Err(format!("rules lost counted: {}", st["rules_lost"]));
        }
        // Untouched, the program still has its right.
        let after = outcome(sh(ALLOWED, &["freq", "5"])?)?;
        let _ = sh(ALLOWED, &["freq", "0"]);
        if after.errno != 0 {
            return Err(format!(
                "a fresh allowed process after: errno {}",
                after.errno
            ));
        }
        Ok(format!(
            "plain: allowed; attached: EPERM; its fork: EPERM; PTRACE_TRACEME: EPERM; counted traced {traced}, asked_to_be_traced {asked}; fresh process after: allowed"
        ))
    })
}

/// Traced before the first agent of the boot started: the seed from `TracerPid` taints it.
#[test]
fn a_process_traced_before_the_guard_started_has_no_rule() {
    use std::io::BufRead as _;
    let go = "/tmp/tg-traced-early.go";
    let _ = fs::remove_file(go);
    let tracee = Command::new(ALLOWED)
        .args(["await", go, "freq", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {ALLOWED}: {e}"));
    let pid = tracee.id();
    let mut tracer = Command::new(COPY)
        .args(["ptrace-hold", &pid.to_string(), go])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {COPY}: {e}"));
    let tracer_pid = tracer.id();
    let mut attached = String::new();
    if let Some(out) = tracer.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut attached);
    }
    let played = (|| {
        if !attached.contains(r#""errno":0"#) {
            return Err(format!("the attach before the agent: {attached:?}"));
        }
        let agent = GuestAgent::start(policies::GUEST)?;
        fs::write(go, "").map_err(|e| e.to_string())?;
        let out = tracee
            .wait_with_output()
            .map_err(|e| format!("waiting for {ALLOWED}: {e}"))?;
        let _ = sh(ALLOWED, &["freq", "0"]);
        let o = outcome(run_of(&out))?;
        if o.errno != libc::EPERM {
            return Err(format!(
                "traced since before the agent: errno {} (expected EPERM)",
                o.errno
            ));
        }
        let rec = wait_record("the lost rule of a process traced early", |v| {
            v["kind"] == "clock"
                && v["who"]["tgid"] == pid
                && v["integrity"]["lost_rule"] == "test-allowed"
                && v["integrity"]["reasons"] == serde_json::json!(["traced"])
        })?;
        if rec["integrity"]["source_pid"] != tracer_pid {
            return Err(format!("the tracer is {tracer_pid}: {rec}"));
        }
        drop(agent);
        Ok(format!(
            "traced by {tracer_pid} before the agent started: EPERM, lost its rule (traced)"
        ))
    })();
    let _ = fs::write(go, "");
    let _ = tracer.wait();
    let _ = fs::remove_file(go);
    report(played);
}

/// The cgroups of the units `policies::UNIT` names (chronyd's is `CHRONY_UNIT`).
const TG_UNIT: &str = "/sys/fs/cgroup/system.slice/tg-clock.service";

#[test]
fn match_unit_holds_a_rule_to_its_unit() {
    let mut agent = GuestAgent::start(policies::UNIT).unwrap_or_else(|e| panic!("{e}"));
    let played = (|| {
        for cg in [TG_UNIT, CHRONY_UNIT] {
            fs::create_dir_all(cg).map_err(|e| format!("{cg}: {e}"))?;
        }
        let launcher = crate::daemons::in_unit(TG_UNIT);
        let run_in_unit = |args: &[&str]| -> Result<clock::Outcome, String> {
            let mut argv: Vec<&str> = launcher.iter().map(String::as_str).collect();
            argv.push(ALLOWED);
            argv.extend_from_slice(args);
            outcome(sh(argv[0], &argv[1..])?)
        };
        // Only the unit may put the frequency back.
        let reset = || {
            let _ = run_in_unit(&["freq", "0"]);
        };
        let mut seen = Vec::new();
        for (how, args) in [
            ("started as its unit", vec!["freq", "5"]),
            ("its fork", vec!["in-child", "freq", "5"]),
        ] {
            let o = run_in_unit(&args)?;
            reset();
            if o.errno != 0 {
                return Err(format!("{how}: errno {} (expected its rule)", o.errno));
            }
            seen.push(format!("{how}: allowed"));
        }
        let outside_unit = |what: &str, pid: Option<u32>| {
            wait_record(what, move |v| {
                v["kind"] == "clock"
                    && v["verdict"] == "deny"
                    && v["integrity"]["reasons"] == serde_json::json!(["outside_unit"])
                    && pid.is_none_or(|p| v["who"]["tgid"] == p)
            })
        };
        // From a shell: the same program, outside its unit.
        let shell = outcome(sh(ALLOWED, &["freq", "5"])?)?;
        if shell.errno != libc::EPERM {
            return Err(format!(
                "from a shell: errno {} (expected EPERM)",
                shell.errno
            ));
        }
        outside_unit("the program from a shell", None)?;
        seen.push("from a shell: EPERM, outside_unit".into());
        // Moved into the unit's cgroup by a program that is not the service manager.
        let go = "/tmp/tg-unit.go";
        let _ = fs::remove_file(go);
        let child = Command::new(ALLOWED)
            .args(["await", go, "freq", "5"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {ALLOWED}: {e}"))?;
        let pid = child.id();
        let moved = fs::write(format!("{TG_UNIT}/cgroup.procs"), pid.to_string());
        let _ = fs::write(go, "");
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let _ = fs::remove_file(go);
        reset();
        moved.map_err(|e| format!("moving {pid} into {TG_UNIT}: {e}"))?;
        let o = clock::Outcome::from_json(String::from_utf8_lossy(&out.stdout).trim())
            .map_err(|e| format!("the moved program: {e}"))?;
        if o.errno != libc::EPERM {
            return Err(format!(
                "moved into the unit's cgroup by hand: errno {} (expected EPERM)",
                o.errno
            ));
        }
        outside_unit("a process moved into the unit by hand", Some(pid))?;
        seen.push("moved into its cgroup by hand: EPERM, outside_unit".into());
        // Real chronyd, from a shell and as its unit.
        let since = records().len();
        let server = timeguard_tests::ntp::Server::start(crate::daemons::NTP_ADDR, 300_000_000)
            .map_err(|e| e.to_string())?;
        let conf = crate::daemons::chrony_conf("maxslewrate 500\nmaxdrift 500\n");
        let from_shell = crate::daemons::chronyd(&conf, &[], 6)?;
        let refused = records().into_iter().skip(since).find(|v| {
            v["who"]["comm"] == "chronyd"
                && v["integrity"]["reasons"] == serde_json::json!(["outside_unit"])
        });
        if refused.is_none() {
            return Err(format!("chronyd from a shell was not refused as outside its unit\nchronyd log:\n{from_shell}"));
        }
        let since = records().len();
        let chrony_launcher = crate::daemons::in_unit(CHRONY_UNIT);
        let launcher: Vec<&str> = chrony_launcher.iter().map(String::as_str).collect();
        let as_unit = crate::daemons::chronyd_as(&launcher, &conf, &[], 12)?;
        drop(server);
        reset();
        let mine: Vec<Value> = records()
            .into_iter()
            .skip(since)
            .filter(|v| v["who"]["comm"] == "chronyd")
            .collect();
        if let Some(v) = mine.iter().find(|v| v["verdict"] != "allow") {
            return Err(format!(
                "chronyd as its unit was refused: {v}\nchronyd log:\n{as_unit}"
            ));
        }
        if !mine.iter().any(|v| v["rule"] == "chronyd") {
            return Err(format!(
                "chronyd as its unit made no change under its rule\nchronyd log:\n{as_unit}"
            ));
        }
        seen.push("chronyd from a shell: refused, outside_unit; chronyd as its unit: slews under its rule".into());
        Ok(seen.join("; "))
    })();
    // Out of the units' cgroups before they go.
    for cg in [TG_UNIT, CHRONY_UNIT] {
        let _ = fs::remove_dir(cg);
    }
    let _ = agent.finish();
    report(played);
}

/// A system library the test programs load anyway (`ldd tg-clock`), and where copies of it go.
const SYSTEM_LIB: &str = "/lib/x86_64-linux-gnu/libgcc_s.so.1";
const FOREIGN_LIB: &str = "/tmp/tg-foreign.so";
const MODIFIED_LIB: &str = "/lib/x86_64-linux-gnu/tg-modified.so";
const BOUND_LIB: &str = "/lib/x86_64-linux-gnu/tg-bound.so";
const HELD_LIB: &str = "/lib/x86_64-linux-gnu/tg-held.so";
const STAGED_DIR: &str = "/tg-staged";
const MOVED_DIR: &str = "/lib/x86_64-linux-gnu/tg-moved";
const STAGED_NAME: &str = "libtg.so";

#[test]
fn a_rule_process_mapping_code_not_the_systems_loses_its_rule() {
    let mounted = std::cell::Cell::new(false);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario(|agent| {
            fs::copy(SYSTEM_LIB, FOREIGN_LIB).map_err(|e| format!("{FOREIGN_LIB}: {e}"))?;
            // Written into a library directory after the policy loaded.
            fs::copy(SYSTEM_LIB, MODIFIED_LIB).map_err(|e| format!("{MODIFIED_LIB}: {e}"))?;
            // A file of the intruder's mounted over a path in a library directory.
            fs::copy(SYSTEM_LIB, BOUND_LIB).map_err(|e| format!("{BOUND_LIB}: {e}"))?;
            bind_mount(FOREIGN_LIB, BOUND_LIB)?;
            mounted.set(true);
            let mut seen = Vec::new();
            // The system's own code keeps the rule, preloaded or mapped by hand.
            for (how, env, args) in [
                (
                    "the system library mapped",
                    None,
                    vec!["map-code", SYSTEM_LIB, "exec"],
                ),
                ("the system library preloaded", Some(SYSTEM_LIB), vec![]),
            ] {
                let o = freq_with(env, &args)?;
                if o.errno != 0 {
                    return Err(format!(
                        "{how}: errno {} (expected the rule to hold)",
                        o.errno
                    ));
                }
                seen.push(format!("{how}: allowed"));
            }
            for (how, env, args, reason) in [
                (
                    "LD_PRELOAD of a copy in /tmp",
                    Some(FOREIGN_LIB),
                    vec![],
                    "foreign_code",
                ),
                (
                    "a copy in /tmp mapped as code",
                    None,
                    vec!["map-code", FOREIGN_LIB, "exec"],
                    "foreign_code",
                ),
                (
                    "a copy in /tmp made executable",
                    None,
                    vec!["map-code", FOREIGN_LIB, "mprotect"],
                    "foreign_code",
                ),
                (
                    "the system library mapped writable and executable",
                    None,
                    vec!["map-code", SYSTEM_LIB, "rwx"],
                    "foreign_code",
                ),
                (
                    "the system library written in a private mapping, then made executable",
                    None,
                    vec!["map-code", SYSTEM_LIB, "written"],
                    "foreign_code",
                ),
                (
                    "anonymous memory made code",
                    None,
                    vec!["map-code", "anon", "exec"],
                    "foreign_code",
                ),
                (
                    "a library written since the policy loaded",
                    Some(MODIFIED_LIB),
                    vec![],
                    "modified_code",
                ),
                (
                    "a bind mount over a library path",
                    Some(BOUND_LIB),
                    vec![],
                    "foreign_code",
                ),
            ] {
                seen.push(loses_rule_mapping(how, env, &args, reason)?);
            }
            // A library older than the policy (which is loaded again over it), unchanged,
            // while another process holds it open for writing: what runs from it can change
            // under the mapping at any moment.
            fs::copy(SYSTEM_LIB, HELD_LIB).map_err(|e| format!("{HELD_LIB}: {e}"))?;
            // And a directory of the intruder's, as old, outside (on the same file system).
            fs::create_dir_all(STAGED_DIR).map_err(|e| format!("{STAGED_DIR}: {e}"))?;
            fs::copy(SYSTEM_LIB, format!("{STAGED_DIR}/{STAGED_NAME}"))
                .map_err(|e| format!("{STAGED_DIR}: {e}"))?;
            sleep(Duration::from_millis(1100));
            agent.reload_to(policies::AUDIT, "vm-test-audit")?;
            agent.reload_to(policies::GUEST, "vm-test")?;
            if freq_with(Some(HELD_LIB), &[])?.errno != 0 {
                return Err(format!(
                    "{HELD_LIB}, older than the policy: the rule did not hold"
                ));
            }
            {
                let _writer = fs::OpenOptions::new()
                    .write(true)
                    .open(HELD_LIB)
                    .map_err(|e| format!("{HELD_LIB} for writing: {e}"))?;
                seen.push(loses_rule_mapping(
                    "a library older than the policy preloaded while open for writing",
                    Some(HELD_LIB),
                    &[],
                    "modified_code",
                )?);
            }
            // Moved into a library directory whole, the directory keeps its files' change
            // times; its own says when it came.
            fs::rename(STAGED_DIR, MOVED_DIR).map_err(|e| format!("{MOVED_DIR}: {e}"))?;
            seen.push(loses_rule_mapping(
                "an old library in a directory moved into a library directory",
                Some(&format!("{MOVED_DIR}/{STAGED_NAME}")),
                &[],
                "modified_code",
            )?);
            let st = agent_status()?;
            let foreign = counted(
                &st["rules_lost"],
                &[("rule", "test-allowed"), ("reason", "foreign_code")],
            );
            if foreign < 7 {
                return Err(format!("rules lost counted: {}", st["rules_lost"]));
            }
            Ok(format!(
                "{}; counted foreign_code {foreign}",
                seen.join("; ")
            ))
        })
    }));
    if mounted.get() {
        let target = std::ffi::CString::new(BOUND_LIB).unwrap_or_default();
        // SAFETY: a NUL-terminated path; the mount this test made.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    for f in [FOREIGN_LIB, MODIFIED_LIB, BOUND_LIB, HELD_LIB] {
        let _ = fs::remove_file(f);
    }
    for d in [STAGED_DIR, MOVED_DIR] {
        let _ = fs::remove_dir_all(d);
    }
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

/// A rule for one user is still a rule for the code its executable maps as another: the
/// allowed program, its rule narrowed to _chrony, preloads foreign code while it runs as
/// root and then becomes _chrony (as chronyd starts and drops privileges): it has no rule.
/// Without the foreign code the same change as _chrony goes through.
#[test]
fn code_mapped_before_becoming_the_rules_user_takes_the_rule() {
    scenario(|agent| {
        agent.reload_to(policies::USERS_CHRONY_ONLY, "vm-test-chrony-only")?;
        let result = as_chrony_with_and_without_foreign_code();
        agent.reload_to(policies::GUEST, "vm-test")?;
        // As root the frequency could not be put back under the narrowed rule.
        let _ = sh(ALLOWED, &["freq", "0"]);
        let _ = fs::remove_file(FOREIGN_LIB);
        result
    })
}

fn as_chrony_with_and_without_foreign_code() -> Outcome {
    let as_chrony = ["as-user", "100"];
    let plain = freq_with(None, &as_chrony)?;
    if plain.errno != 0 {
        return Err(format!(
            "as _chrony, plainly: errno {} (expected the rule to hold)",
            plain.errno
        ));
    }
    fs::copy(SYSTEM_LIB, FOREIGN_LIB).map_err(|e| format!("{FOREIGN_LIB}: {e}"))?;
    let took = loses_rule_mapping(
        "foreign code preloaded as root, then as _chrony",
        Some(FOREIGN_LIB),
        &as_chrony,
        "foreign_code",
    )?;
    Ok(format!("as _chrony, plainly: allowed; {took}"))
}

/// Only the operator's reload vouches for the libraries in place: a library dropped into a
/// library directory after the policy loaded stays `modified_code` across the reloads the
/// agent makes by itself (the policy file changed by hand, twice: another policy and back),
/// and is vouched for by a SIGHUP (`systemctl reload`) with the policy unchanged.
#[test]
fn only_the_operators_reload_vouches_for_a_new_library() {
    scenario(|agent| {
        let result = reloads_and_a_late_library(agent);
        let _ = fs::remove_file(LATE_LIB);
        result
    })
}

const LATE_LIB: &str = "/lib/x86_64-linux-gnu/tg-late.so";

fn reloads_and_a_late_library(agent: &GuestAgent) -> Outcome {
    fs::copy(SYSTEM_LIB, LATE_LIB).map_err(|e| format!("{LATE_LIB}: {e}"))?;
    // The change times the kernel compares are whole seconds.
    sleep(Duration::from_millis(1100));
    let generation = || -> Result<u64, String> {
        agent_status()?["policy"]["generation"]
            .as_u64()
            .ok_or_else(|| "status without generation".to_string())
    };
    let mut at = generation()?;
    for policy in [policies::AUDIT, policies::GUEST] {
        // By hand, as an intruder with root would (self-protection audits in the guest
        // policy): `write_policy` goes through `timeguard apply`, the operator's way.
        let staged = format!("{POLICY}.staged");
        fs::write(&staged, policy).map_err(|e| format!("{staged}: {e}"))?;
        fs::rename(&staged, POLICY).map_err(|e| format!("{POLICY}: {e}"))?;
        at = timeguard_tests::harness::wait_for(
            Duration::from_secs(10),
            Duration::from_millis(100),
            || generation().ok().filter(|&g| g > at),
        )
        .ok_or("the agent did not reload the changed policy file by itself within 10 s")?;
    }
    let kept = loses_rule_mapping(
        "a library dropped in, then two reloads the agent made by itself",
        Some(LATE_LIB),
        &[],
        "modified_code",
    )?;
    agent.sighup();
    let vouched = timeguard_tests::harness::wait_for(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || freq_with(Some(LATE_LIB), &[]).ok().filter(|o| o.errno == 0),
    );
    if vouched.is_none() {
        return Err(format!(
            "{kept}; after SIGHUP the library still takes the rule"
        ));
    }
    Ok(format!("{kept}; after SIGHUP (policy unchanged): allowed"))
}

/// The code a rule process runs cannot be written under it: while the policy enforces, a
/// file a rule process has mapped as code (here a system library it links) is not opened
/// for writing, by its path or by another name (a hard link); a file nobody maps is. The
/// refusal is recorded and counted, and the running process keeps its rule.
#[test]
fn code_a_rule_process_runs_cannot_be_written() {
    scenario(|_| {
        let _ = fs::remove_file(CODE_GO);
        let result = writes_to_code_refused();
        // A child still waiting goes on and ends.
        let _ = fs::write(CODE_GO, "");
        for f in [CODE_LINK, FOREIGN_LIB] {
            let _ = fs::remove_file(f);
        }
        result
    })
}

const CODE_LINK: &str = "/tg-code-link.so";
const CODE_GO: &str = "/tmp/tg-code.go";

fn writes_to_code_refused() -> Outcome {
    let child = Command::new(ALLOWED)
        .args(["await", CODE_GO, "freq", "5"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {ALLOWED}: {e}"))?;
    let maps = format!("/proc/{}/maps", child.id());
    timeguard_tests::harness::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        // As code: the loader maps the file read-only first, and the hard link below
        // would change it (its inode's change time) before its code is mapped.
        fs::read_to_string(&maps)
            .is_ok_and(|m| {
                m.lines()
                    .any(|l| l.contains(" r-xp ") && l.ends_with(SYSTEM_LIB))
            })
            .then_some(())
    })
    .ok_or_else(|| format!("{SYSTEM_LIB} never mapped as code by the allowed program"))?;
    fs::hard_link(SYSTEM_LIB, CODE_LINK).map_err(|e| format!("link {CODE_LINK}: {e}"))?;
    let mut seen = Vec::new();
    for path in [SYSTEM_LIB, CODE_LINK] {
        let since = records().len();
        match fs::OpenOptions::new().write(true).open(path) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            other => {
                // What became of the process says why its code was not noted.
                let _ = fs::write(CODE_GO, "");
                let run = child.wait_with_output().map(|o| run_of(&o).stdout);
                let last = records().into_iter().rev().find(|v| v["kind"] == "clock");
                return Err(format!(
                    "{path} opened for writing: {other:?} (expected EPERM); the process then: {run:?}; last clock record: {last:?}"
                ));
            }
        }
        wait_record_since("a refused write to code", since, |v| {
            v["kind"] == "tamper"
                && v["action"] == "write"
                && v["what"]["target"] == "code"
                && v["verdict"] == "deny"
        })?;
        seen.push(format!("{path}: EPERM"));
    }
    // A copy nobody maps is an ordinary file.
    fs::copy(SYSTEM_LIB, FOREIGN_LIB).map_err(|e| format!("{FOREIGN_LIB}: {e}"))?;
    fs::OpenOptions::new()
        .write(true)
        .open(FOREIGN_LIB)
        .map_err(|e| format!("{FOREIGN_LIB} (mapped by nobody) for writing: {e}"))?;
    fs::write(CODE_GO, "").map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let o = outcome(run_of(&out))?;
    let _ = sh(ALLOWED, &["freq", "0"]);
    if o.errno != 0 {
        return Err(format!(
            "the allowed program lost its rule: errno {}",
            o.errno
        ));
    }
    let st = agent_status()?;
    let counted_deny = counted(
        &st["self_protection"]["attempts"],
        &[("action", "write"), ("target", "code"), ("verdict", "deny")],
    );
    if counted_deny < 2 {
        return Err(format!("refusals not counted: {}", st["self_protection"]));
    }
    Ok(format!(
        "{}; a copy mapped by nobody: writable; the process kept its rule; counted {counted_deny}",
        seen.join("; ")
    ))
}

/// The allowed program, mapping code as `args` and `preload` say, is refused a frequency
/// change, and its record names the rule it lost and `reason` alone (no tracer).
fn loses_rule_mapping(
    how: &str,
    preload: Option<&str>,
    args: &[&str],
    reason: &str,
) -> Result<String, String> {
    let since = records().len();
    let o = freq_with(preload, args)?;
    if o.errno != libc::EPERM {
        return Err(format!("{how}: errno {} (expected EPERM)", o.errno));
    }
    let rec = wait_record_since(how, since, |v| {
        v["kind"] == "clock"
            && v["verdict"] == "deny"
            && v["who"]["comm"] == "tg-clock-allowe"
            && v["integrity"]["lost_rule"] == "test-allowed"
    })?;
    if rec["integrity"]["reasons"] != serde_json::json!([reason]) {
        return Err(format!(
            "{how}: reasons {} (expected [{reason}])",
            rec["integrity"]["reasons"]
        ));
    }
    if rec["integrity"].get("source_pid").is_some() {
        return Err(format!("{how}: a tracer named: {rec}"));
    }
    Ok(format!("{how}: EPERM, {reason}"))
}

/// What a finished child printed, as `sh` reports a run.
fn run_of(out: &std::process::Output) -> Run {
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// `mount --bind from to`.
fn bind_mount(from: &str, to: &str) -> Result<(), String> {
    let c = |p: &str| std::ffi::CString::new(p).map_err(|e| e.to_string());
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: NUL-terminated paths; a bind mount needs no type or data.
    let r = unsafe {
        libc::mount(
            from_c.as_ptr(),
            to_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "mount --bind {from} {to}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The allowed program's frequency change, run with `LD_PRELOAD=env` (if any) and the
/// wrapper `args` before it; the frequency is put back after.
fn freq_with(preload: Option<&str>, args: &[&str]) -> Result<clock::Outcome, String> {
    let mut cmd = Command::new(ALLOWED);
    cmd.args(args).args(["freq", "5"]);
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start {ALLOWED}: {e}"))?;
    let o = outcome(run_of(&out));
    let _ = sh(ALLOWED, &["freq", "0"]);
    o
}

/// Starts the allowed program waiting, attaches to it by ptrace from the denied copy (which
/// goes through: self-protection audits in the guest policy), then lets it run `then`; its
/// process id, once it has been refused (EPERM).
fn traced_then_asks(then: &[&str]) -> Result<u32, String> {
    let go = "/tmp/tg-traced.go";
    let _ = fs::remove_file(go);
    let mut args = vec!["await", go];
    args.extend_from_slice(then);
    let child = Command::new(ALLOWED)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {ALLOWED}: {e}"))?;
    let pid = child.id();
    let attach = errno_of(sh(COPY, &["ptrace", &pid.to_string()])?);
    let _ = fs::write(go, "");
    let out = finished_within(child, Duration::from_secs(90))?;
    let _ = fs::remove_file(go);
    if attach? != 0 {
        return Err("the attach was refused: nothing to show".into());
    }
    let o = outcome(run_of(&out))?;
    if o.errno != libc::EPERM {
        let _ = sh(ALLOWED, &["freq", "0"]);
        return Err(format!(
            "{ALLOWED} {then:?} after an attach: errno {} (expected EPERM)",
            o.errno
        ));
    }
    Ok(pid)
}

/// A child's output once it has ended, or, when it has not within `limit`, what the kernel
/// says of it (then it is killed): a hang becomes a failure that tells where.
fn finished_within(
    mut child: std::process::Child,
    limit: Duration,
) -> Result<std::process::Output, String> {
    let pid = child.id();
    let ended = timeguard_tests::harness::wait_for(limit, Duration::from_millis(50), || {
        child.try_wait().ok().flatten()
    });
    if ended.is_none() {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let state: Vec<&str> = status
            .lines()
            .filter(|l| l.starts_with("State:") || l.starts_with("TracerPid:"))
            .collect();
        let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "{ALLOWED} ({pid}) did not end within {}s: {state:?}, waiting in {wchan:?}",
            limit.as_secs()
        ));
    }
    child
        .wait_with_output()
        .map_err(|e| format!("waiting for {ALLOWED}: {e}"))
}

/// The `{"errno": N}` a tamper attempt of the test program reports.
fn errno_of(run: Run) -> Result<i32, String> {
    serde_json::from_str::<Value>(&run.stdout)
        .ok()
        .and_then(|v| v["errno"].as_i64())
        .map(|e| e as i32)
        .ok_or_else(|| format!("no errno in {:?} (stderr: {})", run.stdout, run.stderr))
}
