//! Host integration tests: the real agent on the kernel of the machine running the tests.
//! Here (a sandbox that refuses LSM programs) that means observe-only; on a server whose
//! kernel allows BPF LSM, the same tests see enforcement. Nothing here changes the clock:
//! the only write is ADJ_MAXERROR with the value the kernel already holds.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use timeguard_tests::{
    agent::{agent_status, start_agent_on, start_agent_via, state_dir, RunningAgent},
    harness::{
        free_loopback_addr, http_get, provided_tool, require_root, sh, temp_dir, timeguard,
        wait_for, workspace, yaml_files, Run,
    },
};

#[test]
#[ignore = "needs the agent binary: run through `cargo xtask test`, which builds it"]
fn bundled_policies_pass_check() {
    let bin = timeguard();
    let policies = yaml_files(&workspace().join("policies"));
    let names: Vec<String> = policies
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    for expected in [
        "chrony",
        "default",
        "linuxptp",
        "ntpd-rs",
        "ntpsec",
        "systemd-timesyncd",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no bundled policy {expected}.yaml"
        );
    }
    let empty_root = temp_dir("empty-root");
    for policy in &policies {
        let out = check(&bin, Some(&empty_root), policy);
        let text = &out.stdout;
        assert!(
            out.status == 0,
            "{} failed check:\n{text}",
            policy.display()
        );
        assert!(text.contains("ok: policy"), "{text}");
        // The commented network example, as an operator would uncomment it, checks too.
        let original = std::fs::read_to_string(policy).expect("read the policy");
        if let Some(at) = original.find("\n  # network:") {
            let (head, example) = original.split_at(at + 1);
            let uncommented: String = example
                .lines()
                .map(|l| {
                    l.strip_prefix("  # ")
                        .map_or(l.to_string(), |r| format!("  {r}"))
                })
                .collect::<Vec<_>>()
                .join("\n");
            let path = empty_root.join("uncommented.yaml");
            std::fs::write(&path, format!("{head}{uncommented}\n")).expect("write");
            let out = check(&bin, Some(&empty_root), &path);
            let text = &out.stdout;
            assert!(
                out.status == 0 && text.contains("ok: policy"),
                "{}'s network example fails check:\n{text}",
                policy.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&empty_root);
    let default = workspace().join("policies/default.yaml");
    let out = check(&bin, None, &default);
    assert!(
        out.status == 0,
        "the default policy fails on this host:\n{}",
        out.stdout
    );
}

/// `timeguard check [--root ROOT] POLICY`.
fn check(bin: &Path, root: Option<&Path>, policy: &Path) -> Run {
    let mut args: Vec<&OsStr> = vec!["check".as_ref()];
    if let Some(root) = root {
        args.extend(["--root".as_ref(), root.as_os_str()]);
    }
    args.push(policy.as_os_str());
    sh(bin, &args).expect("timeguard check runs")
}

#[test]
#[ignore = "needs the agent binary: run through `cargo xtask test`, which builds it"]
fn check_rejects_a_broken_policy_with_its_file_name() {
    let dir = temp_dir("check");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: x}\nspec:\n  clock:\n    rules:\n      - name: a\n        match: {exe: /bin/sh}\n        allow: [jump]\n").expect("write");
    let out = check(&timeguard(), None, &bad);
    let text = &out.stdout;
    assert_eq!(out.status, 1, "{text}");
    assert!(text.contains("bad.yaml"), "{text}");
    assert!(text.contains("unknown operation `jump`"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rewrites the kernel's maxerror with the value it already has; the errno (0: done).
fn rewrite_maxerror() -> i32 {
    timeguard_tests::clock::rewrite_maxerror().errno
}

/// A policy in audit mode that denies by default: where the kernel lets timeguard enforce,
/// nothing is blocked, and a test must not block the host's time daemon.
fn audit_policy(name: &str) -> String {
    format!("apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: {name}}}\nspec:\n  mode: audit\n  clock:\n    default: deny\n")
}

/// Starts the agent on `audit_policy("first")` in a fresh temporary directory, its records
/// on stdout as well as in the trail file.
fn start_agent(tag: &str, stdout: Stdio) -> RunningAgent {
    start_agent_via(
        &[],
        tag,
        stdout,
        &audit_policy("first"),
        &["--audit-stdout"],
    )
    .expect("the agent starts")
}

#[test]
#[ignore = "needs root and the agent binary: run through `cargo xtask test`"]
fn the_agent_reports_its_enforcement_and_records_an_attempt() {
    let RunningAgent {
        dir,
        mut agent,
        pin_dir,
        ..
    } = start_agent("run", Stdio::piped());
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = agent.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let next = |pred: &dyn Fn(&Value) -> bool| -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(v) = rx.recv_timeout(Duration::from_millis(100)) {
                if pred(&v) {
                    return Some(v);
                }
            }
        }
        None
    };
    let started = next(&|v| v["event"] == "started");
    let Some(started) = started else {
        let _ = agent.kill();
        let out = agent.wait_with_output().expect("agent output");
        panic!(
            "the agent never reported started:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let enforcement = started["enforcement"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        enforcement == "enforce" || enforcement == "observe-only",
        "{started}"
    );
    assert_eq!(started["generation"], 1);

    let errno = rewrite_maxerror();
    let me = std::process::id();
    let event = next(&|v| v["kind"] == "clock" && v["who"]["tgid"] == me);
    // SAFETY: signalling the agent this test started, by its id.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    timeguard_tests::agent::unpin(&pin_dir);
    let stopped = next(&|v| v["event"] == "stopped");
    let out = agent.wait_with_output().expect("agent exits");
    let log = String::from_utf8_lossy(&out.stderr);
    let event = event.unwrap_or_else(|| panic!("no clock event for pid {me}; agent log:\n{log}"));

    assert_eq!(
        event["what"]["operations"],
        serde_json::json!(["status"]),
        "{event}"
    );
    assert_eq!(event["rule"], "default", "{event}");
    // Audit mode: where the kernel lets timeguard enforce, the attempt is allowed and
    // recorded as what enforce would deny; a test must not block the host's time daemon.
    if enforcement == "enforce" {
        assert_eq!(event["verdict"], "audit", "{event}");
        assert_eq!(errno, 0, "audit mode must not change the outcome");
    } else {
        assert_eq!(event["verdict"], "observed", "{event}");
        assert_eq!(errno, 0, "observe-only must not change the outcome");
        assert!(
            log.contains("OBSERVE-ONLY"),
            "the log must say it cannot enforce:\n{log}"
        );
    }
    assert!(
        stopped.is_some_and(|s| s["enforcement"] == enforcement.as_str()),
        "no stop record"
    );
    assert!(out.status.success(), "agent exit {:?}:\n{log}", out.status);
    assert!(
        log.contains("operation=status verdict="),
        "the stop summary lists the counters:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root and the agent binary: run through `cargo xtask test`"]
fn the_kernel_report_names_every_program_type_and_the_enforcement() {
    let bin = timeguard();
    require_root("probing BPF program types");
    let out = sh(&bin, &["kernel"]).expect("timeguard kernel runs");
    let text = &out.stdout;
    for name in [
        "btf",
        "bpf-lsm-active",
        "lsm programs",
        "tracepoint programs",
        "cgroup_skb",
        "xdp",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(name) && (l.starts_with("yes") || l.starts_with("NO"))),
            "no line for {name}:\n{text}"
        );
    }
    let lsm_loads = text
        .lines()
        .any(|l| l.starts_with("yes") && l.contains("lsm programs"));
    let expected = if lsm_loads {
        "enforcement: enforce"
    } else {
        "enforcement: observe-only"
    };
    assert!(text.contains(expected), "expected {expected:?}:\n{text}");
    // Monitoring reads the exit code: 0 enforced whole, 3 enforced in part, 4 observe-only.
    let (state, code) = if !lsm_loads {
        ("observe_only", 4)
    } else if text.lines().any(|l| l.starts_with("missing: ")) {
        ("enforce_partly", 3)
    } else {
        ("enforce", 0)
    };
    assert_eq!(out.status, code, "{text}{}", out.stderr);
    assert!(
        text.contains(&format!("state: {state} (exit {code})")),
        "expected state {state}:\n{text}"
    );
    assert!(
        !Path::new(&format!(
            "/sys/fs/bpf/timeguard-probe-{}",
            std::process::id()
        ))
        .exists(),
        "the trial removes its pins"
    );
}

/// Where something is mounted, as /proc/self/mountinfo says (mount points, unescaped for
/// the plain paths tests use).
fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

/// `--pin-dir` outside bpffs: the agent mounts bpffs on exactly that directory when it is
/// new or empty (never over its parent), `stop --unpin` takes the mount away again, and a
/// directory that holds a file is refused with a clear error, nothing mounted.
#[test]
#[ignore = "needs root and the agent binary: run through `cargo xtask test`"]
fn a_pin_dir_outside_bpffs_never_hides_what_a_directory_holds() {
    require_root("mounting bpffs for the pins");
    let dir = temp_dir("pins-outside");
    let kept = dir.join("kept.txt");
    std::fs::write(&kept, "the operator's file\n").expect("write");
    let pins = dir.join("pins");
    let pins_arg = pins.display().to_string();
    let agent = start_agent_via(
        &[],
        "pins-outside",
        Stdio::null(),
        &audit_policy("pins"),
        &["--pin-dir", &pins_arg],
    )
    .expect("the agent starts");
    let up = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        agent.status()
    });
    assert!(
        up.is_some(),
        "the agent answers with its pins at {pins_arg}"
    );
    let mounts = mount_points();
    assert!(mounts.contains(&pins), "bpffs on {pins_arg}: {mounts:?}");
    assert!(
        !mounts.contains(&dir),
        "nothing mounted over {}",
        dir.display()
    );
    assert_eq!(
        std::fs::read_to_string(&kept).expect("the parent's file stays readable"),
        "the operator's file\n"
    );
    let (exit, log) = agent.stop_unpinning();
    // Its own exit code, which the unit's RestartPreventExitStatus= names: not restarted.
    assert_eq!(exit, Some(3), "an unpinned agent exits 3:\n{log}");
    assert!(
        !mount_points().contains(&pins),
        "`stop --unpin` leaves no mount on {pins_arg}:\n{log}"
    );
    assert!(!pins.exists(), "the pin directory is gone:\n{log}");

    // A pin directory that holds a file: refused, nothing mounted, the file untouched.
    let policy = dir.join("refused.yaml");
    std::fs::write(&policy, audit_policy("refused")).expect("write");
    let refused = sh(
        timeguard(),
        &[
            "run".as_ref(),
            "--policy".as_ref(),
            policy.as_os_str(),
            "--socket".as_ref(),
            dir.join("refused.sock").as_os_str(),
            "--audit-log".as_ref(),
            dir.join("refused.jsonl").as_os_str(),
            "--pin-dir".as_ref(),
            dir.as_os_str(),
            "--state-dir".as_ref(),
            dir.join("refused-state").as_os_str(),
        ],
    )
    .expect("timeguard run runs");
    assert_ne!(refused.status, 0, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("would hide what that directory holds"),
        "{}",
        refused.stderr
    );
    assert!(
        !mount_points().contains(&dir),
        "nothing mounted on {}",
        dir.display()
    );
    assert!(kept.exists(), "the operator's file stays");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reload on file change, rejection of a broken edit (the old policy stays, counted),
/// `timeguard apply` (refusing an invalid policy, applying a valid one), a policy deleted
/// while running (reported, the last one stays in force), and `timeguard status` showing
/// generation and hash, on this host's kernel.
#[test]
#[ignore = "needs root and the agent binary: run through `cargo xtask test`"]
fn reload_rejects_a_broken_policy_and_status_shows_the_generation() {
    let RunningAgent {
        bin,
        dir,
        policy,
        socket,
        pin_dir,
        mut agent,
    } = start_agent("reload", Stdio::null());
    let text = audit_policy;
    let status = || agent_status(&bin, &socket);
    let until = |pred: &dyn Fn(&Value) -> bool| -> Option<Value> {
        wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
            status().filter(|v| pred(v))
        })
    };
    let first = until(&|v| v["policy"]["generation"] == 1);
    std::fs::write(&policy, format!("{}  bogus: 1\n", text("broken"))).expect("write");
    let rejected = until(&|v| v["reloads"]["failed"] == 1);
    std::fs::write(&policy, text("second")).expect("write");
    let second = until(&|v| v["policy"]["generation"] == 2);
    // The agent's own path: `timeguard apply` refuses an invalid policy and changes
    // nothing, and writes a valid one into place.
    let candidate = dir.join("candidate.yaml");
    let apply = || {
        Command::new(&bin)
            .arg("apply")
            .arg(&candidate)
            .arg("--policy")
            .arg(&policy)
            .arg("--socket")
            .arg(&socket)
            .output()
            .expect("timeguard apply runs")
    };
    std::fs::write(
        &candidate,
        format!(
            "{}  bogus: 1
",
            text("refused")
        ),
    )
    .expect("write");
    let refused = apply();
    std::fs::write(&candidate, text("third")).expect("write");
    let applied = apply();
    let third = until(&|v| v["policy"]["generation"] == 3);
    // The policy deleted while running: the fault is reported, the policy stays in force.
    std::fs::remove_file(&policy).expect("delete the policy");
    let deleted = until(&|v| v["reloads"]["failed"] == 2);
    // SAFETY: signalling the agent this test started, by its id.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    timeguard_tests::agent::unpin(&pin_dir);
    let status_code = agent.wait().expect("agent exits");
    let mut log = String::new();
    if let Some(mut e) = agent.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut log);
    }
    let first = first.unwrap_or_else(|| panic!("status never showed generation 1:\n{log}"));
    assert_eq!(first["policy"]["name"], "first");
    assert_eq!(first["policy"]["sha256"].as_str().map(str::len), Some(64));
    let rejected = rejected.unwrap_or_else(|| panic!("the broken policy was not rejected:\n{log}"));
    assert_eq!(
        rejected["policy"]["generation"], 1,
        "the old policy must stay in force"
    );
    assert_eq!(rejected["policy"]["name"], "first");
    assert!(
        rejected["reloads"]["last_error"]
            .to_string()
            .contains("unknown key `bogus`"),
        "{rejected}"
    );
    let second = second.unwrap_or_else(|| panic!("the fixed policy was not loaded:\n{log}"));
    assert_eq!(second["policy"]["name"], "second");
    assert_ne!(second["policy"]["sha256"], first["policy"]["sha256"]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stdout).contains("bogus"),
        "{refused:?}"
    );
    assert!(applied.status.success(), "{applied:?}");
    let third = third.unwrap_or_else(|| panic!("the applied policy was not loaded:\n{log}"));
    assert_eq!(third["policy"]["name"], "third");
    assert_eq!(third["self_protection"]["mode"], "audit", "{third}");
    let deleted = deleted.unwrap_or_else(|| panic!("deleting the policy was not reported:\n{log}"));
    assert_eq!(deleted["policy"]["generation"], 3, "{deleted}");
    assert_eq!(deleted["policy"]["name"], "third", "{deleted}");
    assert!(status_code.success(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An audit-mode policy (nothing is blocked on a kernel that enforces) with one rule, named
/// `rule`, for an executable that does not exist.
fn audit_policy_with_rule(name: &str, rule: &str) -> String {
    format!(
        "{}    rules:\n      - name: {rule}\n        match: {{exe: /nonexistent/{name}}}\n        allow: [slew]\n",
        audit_policy(name)
    )
}

/// Every file of a directory, by name, with its bytes.
fn directory_bytes(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read the directory")
        .filter_map(Result::ok)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read a file"),
            )
        })
        .collect()
}

/// `timeguard apply` checks the policy directory as it will be: a file valid alone that
/// makes the directory invalid (its rule name is another file's) exits 1 and changes
/// nothing (the directory's bytes, the agent's generation); a good file exits 0 once the
/// agent reports the new generation with the hash applied; with no agent, exit 3.
#[test]
#[ignore = "needs root: loads BPF"]
fn apply_checks_the_merged_directory_and_waits_for_the_agents_verdict() {
    let dir = temp_dir("apply");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policy dir");
    std::fs::write(
        policies.join("a.yaml"),
        audit_policy_with_rule("first", "shared"),
    )
    .expect("write");
    let candidates = dir.join("candidates");
    std::fs::create_dir_all(&candidates).expect("candidate dir");
    let clash = candidates.join("b.yaml");
    std::fs::write(&clash, audit_policy_with_rule("clash", "shared")).expect("write");
    let good = candidates.join("c.yaml");
    std::fs::write(&good, audit_policy_with_rule("good", "own")).expect("write");
    let running = start_agent_on(&[], "apply", Stdio::null(), policies.clone(), &[])
        .expect("the agent starts");
    let status = || agent_status(&running.bin, &running.socket);
    let apply = |file: &Path| {
        sh(
            &running.bin,
            &[
                "apply".as_ref(),
                file.as_os_str(),
                "--policy".as_ref(),
                policies.as_os_str(),
                "--socket".as_ref(),
                running.socket.as_os_str(),
            ],
        )
        .expect("timeguard apply runs")
    };
    let first = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        status().filter(|v| v["policy"]["generation"] == 1)
    });
    let before = directory_bytes(&policies);
    let refused = apply(&clash);
    // Long enough for the agent's watch (once a second) to have seen any change.
    std::thread::sleep(Duration::from_millis(2500));
    let after_refusal = status();
    let unchanged = directory_bytes(&policies);
    let applied = apply(&good);
    let after_apply = status();
    let stopped = running.stop();
    let unanswered = sh(
        timeguard(),
        &[
            "apply".as_ref(),
            good.as_os_str(),
            "--policy".as_ref(),
            policies.as_os_str(),
            "--socket".as_ref(),
            dir.join("status.sock").as_os_str(),
        ],
    )
    .expect("timeguard apply runs");
    let first = first.unwrap_or_else(|| panic!("status never showed generation 1:\n{stopped}"));
    assert_eq!(first["policy"]["name"], "first");
    assert_eq!(refused.status, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stdout.contains("shared") && refused.stdout.contains("nothing was changed"),
        "{}",
        refused.stdout
    );
    assert_eq!(unchanged, before, "a refused apply changed the directory");
    let after_refusal = after_refusal.expect("status after the refusal");
    assert_eq!(after_refusal["policy"]["generation"], 1, "{after_refusal}");
    assert_eq!(after_refusal["policy"]["sha256"], first["policy"]["sha256"]);
    assert_eq!(after_refusal["reloads"]["failed"], 0, "{after_refusal}");
    assert_eq!(
        applied.status, 0,
        "{}\n{}\n{stopped}",
        applied.stdout, applied.stderr
    );
    let after_apply = after_apply.expect("status after the apply");
    // apply returned once the agent reported the new generation: status says so already.
    assert_eq!(after_apply["policy"]["generation"], 2, "{after_apply}");
    assert_eq!(after_apply["policy"]["name"], "first+good", "{after_apply}");
    let hash = after_apply["policy"]["sha256"].as_str().unwrap_or_default();
    assert!(
        hash.len() == 64 && applied.stdout.contains(hash),
        "apply said {} while the agent enforces {hash}",
        applied.stdout
    );
    assert!(
        applied.stdout.contains("the agent enforces policy"),
        "{}",
        applied.stdout
    );
    assert_eq!(
        std::fs::read(policies.join("c.yaml")).ok(),
        std::fs::read(&good).ok()
    );
    assert_eq!(unanswered.status, 3, "{}", unanswered.stdout);
    assert!(
        unanswered.stdout.contains("no agent answers"),
        "{}",
        unanswered.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A start whose policy is broken enforces the last policy accepted (kept in the state
/// directory by an earlier start), and says so in status; with nothing kept, the built-in
/// default, said the same way.
#[test]
#[ignore = "needs root: loads BPF"]
fn a_start_with_a_broken_policy_enforces_the_last_known_good_or_the_built_in_default() {
    let broken = format!("{}  bogus: 1\n", audit_policy("broken"));
    let until_started = |running: &RunningAgent| {
        wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
            running
                .status()
                .filter(|v| v["policy"]["generation"].as_u64().unwrap_or(0) >= 1)
        })
    };
    let good = start_agent_via(&[], "lkg", Stdio::null(), &audit_policy("kept"), &[])
        .expect("the agent starts");
    let kept = until_started(&good);
    let state = state_dir(&good.dir);
    let log = good.stop();
    let kept = kept.unwrap_or_else(|| panic!("the first agent did not start:\n{log}"));
    assert!(state.join("last-known-good.json").exists(), "{log}");
    // The same directory (same tag), the same state directory: a start after a bad edit.
    let fallback =
        start_agent_via(&[], "lkg", Stdio::null(), &broken, &[]).expect("the agent starts");
    let on_kept = until_started(&fallback);
    let records = fallback.records();
    let log = fallback.stop();
    let on_kept = on_kept.unwrap_or_else(|| panic!("no start on the last known good:\n{log}"));
    assert_eq!(on_kept["policy"]["source"], "last_known_good", "{on_kept}");
    assert_eq!(on_kept["policy"]["name"], "kept", "{on_kept}");
    assert_eq!(on_kept["policy"]["sha256"], kept["policy"]["sha256"]);
    assert!(
        on_kept["policy"]["configured_problems"]
            .to_string()
            .contains("unknown key `bogus`"),
        "{on_kept}"
    );
    let fell_back = records
        .iter()
        .find(|v| v["event"] == "policy_fallback")
        .unwrap_or_else(|| panic!("no policy_fallback record:\n{log}"));
    assert_eq!(fell_back["enforced"], "last_known_good", "{fell_back}");
    assert!(log.contains("last known good"), "{log}");
    // Nothing kept: the built-in default.
    std::fs::remove_dir_all(&state).expect("empty the state directory");
    let bare = start_agent_via(&[], "lkg", Stdio::null(), &broken, &[]).expect("the agent starts");
    let on_default = until_started(&bare);
    let dir = bare.dir.clone();
    let log = bare.stop();
    let on_default = on_default.unwrap_or_else(|| panic!("no start on the default:\n{log}"));
    assert_eq!(
        on_default["policy"]["source"], "built_in_default",
        "{on_default}"
    );
    assert_eq!(on_default["policy"]["name"], "default", "{on_default}");
    assert!(
        on_default["policy"]["last_known_good"]["error"]
            .to_string()
            .contains("no last known good policy"),
        "{on_default}"
    );
    // A fallback is never kept as the last known good.
    assert!(!state.join("last-known-good.json").exists());
    // A kept file that is corrupt: the built-in default, and the reason.
    std::fs::create_dir_all(&state).expect("the state directory");
    std::fs::write(state.join("last-known-good.json"), "{\"format\": 1, \"na").expect("write");
    let corrupt =
        start_agent_via(&[], "lkg", Stdio::null(), &broken, &[]).expect("the agent starts");
    let on_corrupt = until_started(&corrupt);
    let log = corrupt.stop();
    let on_corrupt = on_corrupt.unwrap_or_else(|| panic!("no start past a corrupt file:\n{log}"));
    assert_eq!(
        on_corrupt["policy"]["source"], "built_in_default",
        "{on_corrupt}"
    );
    assert!(
        on_corrupt["policy"]["last_known_good"]["error"]
            .to_string()
            .contains("is corrupt"),
        "{on_corrupt}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Percent-encodes a query parameter.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of one series in Prometheus text format, if present.
fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Metric names (timeguard_*) an expression or file mentions.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("timeguard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The agent's metrics count exactly what this test did, the audit trail has each record,
/// a real Prometheus scraping the agent on loopback returns the same number, and the shipped
/// alerting rules and dashboard use only metrics the agent serves.
#[test]
#[ignore = "needs root, the agent binary and Prometheus: run through `cargo xtask test`"]
fn metrics_audit_trail_and_a_real_prometheus_agree_on_the_attempts() {
    const ATTEMPTS: u32 = 5;
    let prometheus = provided_tool("TIMEGUARD_PROMETHEUS", "Prometheus");
    let promtool = provided_tool("TIMEGUARD_PROMTOOL", "promtool");
    // The shipped rules first: valid, and their own unit tests pass.
    let rules_dir = workspace().join("deploy/prometheus");
    for args in [
        ["check", "rules", "timeguard-alerts.yml"],
        ["test", "rules", "timeguard-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&rules_dir)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A rule for the test program, so that its attempts are told apart from the host time
    // daemon's and from other tests running in this process: audit mode, allowing nothing
    // it does.
    let me = PathBuf::from(env!("CARGO_BIN_EXE_tg-clock"));
    let policy = format!("apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: metrics}}\nspec:\n  mode: audit\n  clock:\n    default: deny\n    rules:\n      - name: this-test\n        match: {{exe: {}}}\n        allow: [rtc]\n", me.display());
    let metrics_addr = free_loopback_addr();
    let RunningAgent {
        bin,
        dir,
        mut agent,
        pin_dir,
        ..
    } = start_agent_via(
        &[],
        "metrics",
        Stdio::null(),
        &policy,
        &["--metrics-addr", &metrics_addr],
    )
    .expect("the agent starts");
    let wait = |what: &str, secs: u64, f: &mut dyn FnMut() -> Option<String>| -> String {
        wait_for(Duration::from_secs(secs), Duration::from_millis(200), f)
            .unwrap_or_else(|| panic!("{what} within {secs}s"))
    };
    let first = wait("the agent serves its metrics", 30, &mut || {
        http_get(&metrics_addr, "/metrics")
            .filter(|(code, text)| *code == 200 && text.contains("timeguard_policy_generation 1"))
            .map(|(_, t)| t)
    });
    let verdict = if first.contains(r#"timeguard_enforcement_available{hook="settime"} 1"#) {
        "audit"
    } else {
        "observed"
    };
    let series = format!(
        r#"timeguard_clock_change_attempts_total{{operation="status",rule="this-test",verdict="{verdict}"}}"#
    );
    for _ in 0..ATTEMPTS {
        let out = sh(&me, &["same-maxerror"]).expect("tg-clock runs");
        assert!(
            out.status == 0,
            "audit and observe must not refuse: {}",
            out.stdout
        );
    }
    let text = wait("the attempts counted", 20, &mut || {
        http_get(&metrics_addr, "/metrics")
            .map(|(_, t)| t)
            .filter(|t| series_value(t, &series) == Some(ATTEMPTS as f64))
    });
    assert_eq!(http_get(&metrics_addr, "/other").map(|(c, _)| c), Some(404));

    // The dashboard and the rules use only metrics the agent serves (the two step gauges
    // appear after the first step, which a host test must not make; the network counters
    // with the first packet or socket a network policy decides, which this agent has not:
    // their exposition is checked in the agent's metrics unit test).
    let served = metric_names(&text);
    let mut used = metric_names(
        &std::fs::read_to_string(workspace().join("deploy/grafana/timeguard-dashboard.json"))
            .expect("the dashboard"),
    );
    used.extend(metric_names(
        &std::fs::read_to_string(rules_dir.join("timeguard-alerts.yml")).expect("the rules"),
    ));
    for name in used {
        let after_a_step = [
            "timeguard_clock_seconds_since_last_step",
            "timeguard_clock_last_step_seconds",
            "timeguard_ntp_packets_total",
            "timeguard_ptp_messages_total",
            "timeguard_time_sockets_total",
            "timeguard_nts_ke_connections_total",
        ];
        assert!(
            served.contains(&name) || after_a_step.contains(&name.as_str()),
            "{name} is used by the dashboard or rules but not served:\n{text}"
        );
    }

    // A real Prometheus scrapes the agent and answers a query with the same number.
    let prom_addr = free_loopback_addr();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: timeguard\n    static_configs:\n      - targets: ['{metrics_addr}']\n"),
    )
    .expect("write the Prometheus config");
    let mut prom = Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prometheus starts");
    let query = format!(
        "/api/v1/query?query={}",
        url_encode(
            r#"sum(timeguard_clock_change_attempts_total{rule="this-test",job="timeguard"})"#
        )
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answer = None;
    while Instant::now() < deadline {
        if let Some((200, body)) = http_get(&prom_addr, &query) {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(n) = v["data"]["result"][0]["value"][1].as_str() {
                answer = Some(n.to_string());
                if n == ATTEMPTS.to_string() {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every dashboard query is valid PromQL, as this Prometheus parses it.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("deploy/grafana/timeguard-dashboard.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut refused = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_default()
                .replace("$instance", ".*");
            let path = format!("/api/v1/query?query={}", url_encode(&expr));
            let ok = http_get(&prom_addr, &path)
                .is_some_and(|(code, body)| code == 200 && body.contains(r#""status":"success""#));
            if !ok {
                refused.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    // Only the processes this test started, by their ids.
    let _ = prom.kill();
    let prom_out = prom.wait_with_output().expect("prometheus exits");
    // The audit trail, read back by `timeguard events`.
    let events = Command::new(&bin)
        .args(["events", "--audit-log"])
        .arg(dir.join("audit.jsonl"))
        .output()
        .expect("timeguard events runs");
    // SAFETY: signalling the agent this test started, by its id.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    timeguard_tests::agent::unpin(&pin_dir);
    let _ = agent.wait();
    let trail = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        refused.is_empty(),
        "dashboard queries Prometheus refused: {refused:#?}"
    );
    assert_eq!(
        answer.as_deref(),
        Some(ATTEMPTS.to_string().as_str()),
        "Prometheus's answer; its log:\n{}",
        String::from_utf8_lossy(&prom_out.stderr)
    );
    let mine = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "clock" && v["rule"] == "this-test")
        .count();
    assert_eq!(
        mine, ATTEMPTS as usize,
        "records in the audit trail:\n{trail}"
    );
    let human = String::from_utf8_lossy(&events.stdout);
    assert!(events.status.success(), "{human}");
    assert_eq!(
        human
            .lines()
            .filter(|l| l.contains("rule this-test"))
            .count(),
        ATTEMPTS as usize,
        "{human}"
    );
    assert!(human.contains("agent    started"), "{human}");
}

/// `timeguard events --follow` prints records as they are appended, and goes on with the new
/// file when the trail is rotated under it.
#[test]
#[ignore = "needs the agent binary: run through `cargo xtask test`, which builds it"]
fn events_follow_reads_on_across_a_rotation() {
    let bin = timeguard();
    let dir = temp_dir("follow");
    let trail = dir.join("audit.jsonl");
    let record = |n: u32| {
        format!("{{\"time\":\"2026-11-22T00:00:0{n}Z\",\"kind\":\"clock\",\"verdict\":\"deny\",\"rule\":\"default\",\"reason\":\"\",\"generation\":1,\"hook\":\"lsm/settime\",\"who\":{{\"comm\":\"tool{n}\",\"pid\":{n},\"uid\":0,\"exe\":\"/bin/tool\"}},\"what\":{{\"operations\":[\"step\"],\"syscall\":\"clock_settime\"}}}}\n")
    };
    let append = |path: &std::path::Path, text: &str| {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the trail");
        f.write_all(text.as_bytes()).expect("append");
    };
    append(&trail, &record(1));
    let mut follower = Command::new(&bin)
        .args(["events", "--follow", "--audit-log"])
        .arg(&trail)
        .stdout(Stdio::piped())
        .spawn()
        .expect("timeguard events runs");
    let (tx, rx) = mpsc::channel::<String>();
    let out = follower.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |comm: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if seen.iter().any(|l: &String| l.contains(comm)) {
                return true;
            }
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                seen.push(l);
            }
        }
        false
    };
    let first = wait_for("tool1[1]");
    append(&trail, &record(2));
    let appended = wait_for("tool2[2]");
    // Rotation as the agent does it: the file renamed away, a new one in its place.
    std::fs::rename(&trail, dir.join("audit.jsonl.1")).expect("rotate");
    append(&trail, &record(3));
    let rotated = wait_for("tool3[3]");
    // Only the process this test started, by its id.
    let _ = follower.kill();
    let _ = follower.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(first && appended && rotated, "follow printed: {seen:#?}");
}

/// One spelling per concept: every command that reaches the agent's control socket says
/// `--socket`, every one that reads or writes the trail `--audit-log`; the old spellings
/// (`run --status-socket`, `events --file`) still work, unlisted.
#[test]
#[ignore = "needs the agent binary: run through `cargo xtask test`, which builds it"]
fn one_spelling_per_option_and_the_old_ones_still_work() {
    let bin = timeguard();
    let help = |command: &str| sh(&bin, &[command, "--help"]).expect("help").stdout;
    let flags = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim_start().strip_prefix("--"))
            .filter_map(|l| l.split([' ', '<']).next().map(str::to_string))
            .collect()
    };
    for (command, expected) in [
        ("run", &["socket", "audit-log", "pin-dir", "policy"][..]),
        ("stop", &["socket", "audit-log", "pin-dir"][..]),
        ("status", &["socket"][..]),
        ("events", &["audit-log"][..]),
        ("apply", &["socket", "policy"][..]),
    ] {
        let listed = flags(&help(command));
        for flag in expected {
            assert!(
                listed.iter().any(|l| l == flag),
                "{command} --help lists no --{flag}: {listed:?}"
            );
        }
        for old in ["status-socket", "file"] {
            assert!(
                !listed.iter().any(|l| l == old),
                "{command} --help still lists --{old}: {listed:?}"
            );
        }
    }
    let dir = temp_dir("spelling");
    let trail = dir.join("missing.jsonl");
    let by_new = sh(
        &bin,
        &["events".as_ref(), "--audit-log".as_ref(), trail.as_os_str()],
    )
    .expect("events runs");
    let by_old = sh(
        &bin,
        &["events".as_ref(), "--file".as_ref(), trail.as_os_str()],
    )
    .expect("events runs");
    assert_eq!(by_new.status, 1, "{}", by_new.stderr);
    assert_eq!(
        (
            by_old.status,
            by_old.stderr.contains(&trail.display().to_string())
        ),
        (1, true),
        "`events --file` is `--audit-log`: {}",
        by_old.stderr
    );
    // `run --status-socket` parses; a bad value after it stops the command before anything
    // starts, so no agent runs here.
    let run = sh(
        &bin,
        &[
            "run".as_ref(),
            "--status-socket".as_ref(),
            dir.join("s.sock").as_os_str(),
            "--audit-log-max-mib".as_ref(),
            "0".as_ref(),
        ],
    )
    .expect("run runs");
    assert!(
        run.status == 2
            && !run.stderr.contains("unexpected argument")
            && run.stderr.contains("audit-log-max-mib"),
        "`run --status-socket` is `--socket`: {}",
        run.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
