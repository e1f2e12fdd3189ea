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
    agent::{agent_status, start_agent_via, RunningAgent},
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
    assert!(out.status == 0, "{text}{}", out.stderr);
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
        .args(["events", "--file"])
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
        .args(["events", "--follow", "--file"])
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
