//! Host integration tests: the real agent on the kernel of the machine running the tests.
//! Here (a sandbox that refuses LSM programs) that means observe-only; on a server whose
//! kernel allows BPF LSM, the same tests see enforcement. Nothing here changes the clock:
//! the only write is ADJ_MAXERROR with the value the kernel already holds.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use timeguard_tests::harness::{
    free_loopback_addr, http_get, is_root, timeguard, workspace, yaml_files,
};

#[test]
fn bundled_policies_pass_check() {
    let Some(bin) = timeguard() else { return };
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
    let empty_root = std::env::temp_dir().join(format!("tg-empty-root-{}", std::process::id()));
    std::fs::create_dir_all(&empty_root).expect("temp dir");
    for policy in &policies {
        let out = Command::new(&bin)
            .arg("check")
            .arg("--root")
            .arg(&empty_root)
            .arg(policy)
            .output()
            .expect("timeguard check runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed check:\n{text}",
            policy.display()
        );
        assert!(text.contains("ok: policy"), "{text}");
    }
    let _ = std::fs::remove_dir_all(&empty_root);
    let default = workspace().join("policies/default.yaml");
    let out = Command::new(&bin)
        .arg("check")
        .arg(&default)
        .output()
        .expect("timeguard check runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the default policy fails on this host:\n{text}"
    );
}

#[test]
fn check_rejects_a_broken_policy_with_its_file_name() {
    let Some(bin) = timeguard() else { return };
    let dir = std::env::temp_dir().join(format!("tg-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: x}\nspec:\n  clock:\n    rules:\n      - name: a\n        match: {exe: /bin/sh}\n        allow: [jump]\n").expect("write");
    let out = Command::new(&bin)
        .arg("check")
        .arg(&bad)
        .output()
        .expect("timeguard check runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
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

/// An agent this test started, with its own directory, policy and status socket.
struct RunningAgent {
    bin: PathBuf,
    dir: PathBuf,
    policy: PathBuf,
    socket: PathBuf,
    agent: Child,
}

/// Starts the agent on `audit_policy("first")` in a fresh temporary directory; None (said
/// in one line) where it cannot run.
fn start_agent(tag: &str, stdout: Stdio) -> Option<RunningAgent> {
    start_agent_with(tag, stdout, &audit_policy("first"), &[])
}

/// The same with another policy and more arguments; the audit trail goes to `audit.jsonl`
/// in the agent's directory.
fn start_agent_with(
    tag: &str,
    stdout: Stdio,
    policy_text: &str,
    args: &[&str],
) -> Option<RunningAgent> {
    let bin = timeguard()?;
    if !is_root() {
        eprintln!("skipped: loading BPF programs needs root");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("tg-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let policy = dir.join("policy.yaml");
    let socket = dir.join("status.sock");
    std::fs::write(&policy, policy_text).expect("write the policy");
    let agent = Command::new(&bin)
        .args(["run", "--policy"])
        .arg(&policy)
        .arg("--status-socket")
        .arg(&socket)
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent starts");
    Some(RunningAgent {
        bin,
        dir,
        policy,
        socket,
        agent,
    })
}

#[test]
fn the_agent_reports_its_enforcement_and_records_an_attempt() {
    let Some(RunningAgent { dir, mut agent, .. }) = start_agent("run", Stdio::piped()) else {
        return;
    };
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
fn the_kernel_report_names_every_program_type_and_the_enforcement() {
    let Some(bin) = timeguard() else { return };
    if !is_root() {
        eprintln!("skipped: probing BPF program types needs root");
        return;
    }
    let out = Command::new(&bin)
        .arg("kernel")
        .output()
        .expect("timeguard kernel runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

/// Reload on file change, rejection of a broken edit (the old policy stays, counted), and
/// `timeguard status` showing generation and hash, on this host's kernel.
#[test]
fn reload_rejects_a_broken_policy_and_status_shows_the_generation() {
    let Some(RunningAgent {
        bin,
        dir,
        policy,
        socket,
        mut agent,
    }) = start_agent("reload", Stdio::null())
    else {
        return;
    };
    let text = audit_policy;
    let status = || agent_status(&bin, &socket);
    let wait_for = |pred: &dyn Fn(&Value) -> bool| -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(v) = status().filter(|v| pred(v)) {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };
    let first = wait_for(&|v| v["policy"]["generation"] == 1);
    std::fs::write(&policy, format!("{}  bogus: 1\n", text("broken"))).expect("write");
    let rejected = wait_for(&|v| v["reloads"]["failed"] == 1);
    std::fs::write(&policy, text("second")).expect("write");
    let second = wait_for(&|v| v["policy"]["generation"] == 2);
    // SAFETY: signalling the agent this test started, by its id.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
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
fn metrics_audit_trail_and_a_real_prometheus_agree_on_the_attempts() {
    const ATTEMPTS: u32 = 5;
    let (Some(prometheus), Some(promtool)) = (
        std::env::var_os("TIMEGUARD_PROMETHEUS").map(PathBuf::from),
        std::env::var_os("TIMEGUARD_PROMTOOL").map(PathBuf::from),
    ) else {
        eprintln!("skipped: no Prometheus (cargo xtask test unpacks Debian's and sets TIMEGUARD_PROMETHEUS, TIMEGUARD_PROMTOOL)");
        return;
    };
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
    let Some(RunningAgent {
        bin,
        dir,
        mut agent,
        ..
    }) = start_agent_with(
        "metrics",
        Stdio::null(),
        &policy,
        &["--metrics-addr", &metrics_addr],
    )
    else {
        return;
    };
    let wait = |what: &str, secs: u64, f: &mut dyn FnMut() -> Option<String>| -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "{what} within {secs}s");
            std::thread::sleep(Duration::from_millis(200));
        }
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
        let out = Command::new(&me)
            .arg("same-maxerror")
            .output()
            .expect("tg-clock runs");
        assert!(
            out.status.success(),
            "audit and observe must not refuse: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let text = wait("the attempts counted", 20, &mut || {
        http_get(&metrics_addr, "/metrics")
            .map(|(_, t)| t)
            .filter(|t| series_value(t, &series) == Some(ATTEMPTS as f64))
    });
    assert_eq!(http_get(&metrics_addr, "/other").map(|(c, _)| c), Some(404));

    // The dashboard and the rules use only metrics the agent serves (the two step gauges
    // appear after the first step, which a host test must not make; the packet counters
    // with the first NTP packet a network policy decides, tested below).
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
fn events_follow_reads_on_across_a_rotation() {
    let Some(bin) = timeguard() else { return };
    let dir = std::env::temp_dir().join(format!("tg-follow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
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

/// Two network namespaces this test makes, joined by a veth pair, and a cgroup of its own:
/// the network guard is attached there, so nothing of the host's own traffic is touched.
struct NetLab {
    a: String,
    b: String,
    cgroup: PathBuf,
}

impl NetLab {
    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A lab named by `tag` (one letter), so that tests running at once have their own.
    fn new(cgroup_root: &std::path::Path, tag: char) -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let lab = NetLab {
            a: format!("tg-a{tag}-{id}"),
            b: format!("tg-b{tag}-{id}"),
            cgroup: cgroup_root.join(format!("tg-net{tag}-{id}")),
        };
        let (va, vb) = (format!("tga{tag}{id}"), format!("tgb{tag}{id}"));
        for args in [
            vec!["netns", "add", &lab.a],
            vec!["netns", "add", &lab.b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", &lab.a],
            vec!["link", "set", &vb, "netns", &lab.b],
            vec!["-n", &lab.a, "addr", "add", "10.231.0.1/24", "dev", &va],
            vec!["-n", &lab.a, "addr", "add", "10.231.0.4/24", "dev", &va],
            vec!["-n", &lab.b, "addr", "add", "10.231.0.2/24", "dev", &vb],
            vec!["-n", &lab.b, "addr", "add", "10.231.0.3/24", "dev", &vb],
            vec!["-n", &lab.a, "link", "set", &va, "up"],
            vec!["-n", &lab.b, "link", "set", &vb, "up"],
            vec!["-n", &lab.a, "link", "set", "lo", "up"],
            vec![
                "-n",
                &lab.a,
                "addr",
                "add",
                "fd00:231::1/64",
                "dev",
                &va,
                "nodad",
            ],
            vec![
                "-n",
                &lab.b,
                "addr",
                "add",
                "fd00:231::2/64",
                "dev",
                &vb,
                "nodad",
            ],
        ] {
            NetLab::ip(&args)?;
        }
        std::fs::create_dir_all(&lab.cgroup)
            .map_err(|e| format!("{}: {e}", lab.cgroup.display()))?;
        Ok(lab)
    }

    /// Runs `tg-clock args…` in namespace `ns`, inside the lab's cgroup when `in_cgroup`.
    fn tg_clock(&self, ns: &str, in_cgroup: bool, args: &[&str]) -> Command {
        self.run_in(ns, in_cgroup, env!("CARGO_BIN_EXE_tg-clock"), args)
    }

    /// Runs `program args…` in namespace `ns`, inside the lab's cgroup when `in_cgroup`.
    fn run_in(&self, ns: &str, in_cgroup: bool, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        let enter = if in_cgroup {
            format!("echo $$ > '{}/cgroup.procs' && ", self.cgroup.display())
        } else {
            String::new()
        };
        c.arg("-c").arg(format!(
            "{enter}exec ip netns exec {ns} {program} {}",
            args.join(" ")
        ));
        c
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let _ = NetLab::ip(&["netns", "del", &self.a]);
        let _ = NetLab::ip(&["netns", "del", &self.b]);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// The NTP guard on this kernel, in namespaces this test makes: mode 7 (monlist) and mode 6
/// from a source outside `ntp.control` are dropped before the socket, the listed control
/// host gets through, a client flood above `ntp.rateLimit` is shed while another client is
/// unaffected, and each drop is counted exactly and recorded.
#[test]
fn the_ntp_guard_drops_control_queries_and_floods_in_a_namespace() {
    let policy = "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: net}\nspec:\n  mode: audit\n  clock: {default: deny}\n  network:\n    mode: enforce\n    ntp:\n      clients: [10.231.0.0/24, \"fd00:231::/64\"]\n      control: [10.231.0.3]\n      rateLimit: {requestsPerSecond: 2, burst: 5}\n";
    let Some((
        lab,
        RunningAgent {
            bin,
            dir,
            socket,
            mut agent,
            ..
        },
    )) = lab_with_agent('n', policy)
    else {
        return;
    };
    let status = || agent_status(&bin, &socket);
    let receiver = lab
        .tg_clock(&lab.a, true, &["udp-recv", "10.231.0.1:123", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the receiver starts");
    let receiver6 = lab
        .tg_clock(&lab.a, true, &["udp-recv", "[fd00:231::1]:123", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the IPv6 receiver starts");
    std::thread::sleep(Duration::from_millis(1500));
    let send = |from: &str, kind: &str, n: &str| {
        let out = lab
            .tg_clock(
                &lab.b,
                false,
                &["udp-send", from, "10.231.0.1:123", kind, n],
            )
            .output()
            .expect("tg-clock runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    send("10.231.0.2", "private", "3");
    send("10.231.0.2", "control", "3");
    send("10.231.0.3", "private", "3");
    send("10.231.0.3", "client", "40");
    send("10.231.0.2", "client", "3");
    // As an upstream: first heard, the same again, a changed stratum and leap, a KoD.
    for kind in ["server", "server", "server-changed", "kod"] {
        send("10.231.0.2", kind, "1");
    }
    // Over IPv6, a monlist query behind a destination options header is decided all the
    // same (dropped: not from the control address); a client request gets through.
    for extra in [&["dstopts"][..], &[]] {
        let mut args = vec![
            "udp-send",
            "fd00:231::2",
            "[fd00:231::1]:123",
            "private",
            "2",
        ];
        args.extend_from_slice(extra);
        let out = lab
            .tg_clock(&lab.b, false, &args)
            .output()
            .expect("tg-clock runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = lab
        .tg_clock(
            &lab.b,
            false,
            &[
                "udp-send",
                "fd00:231::2",
                "[fd00:231::1]:123",
                "client",
                "1",
            ],
        )
        .output()
        .expect("tg-clock runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got6 = receiver6
        .wait_with_output()
        .expect("the IPv6 receiver ends");
    let got6: Value = serde_json::from_slice(&got6.stdout).unwrap_or_default();
    let got = receiver.wait_with_output().expect("the receiver ends");
    let got: Value = serde_json::from_slice(&got.stdout).unwrap_or_default();
    let after = status().unwrap_or_default();
    // SAFETY: signalling the agent this test started, by its id.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let _ = agent.wait();
    let trail = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    drop(lab);

    let count = |mode: &str, verdict: &str, reason: &str| -> u64 {
        after["network"]["ntp_packets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["mode"] == mode && c["verdict"] == verdict && c["reason"] == reason)
            .filter_map(|c| c["count"].as_u64())
            .sum()
    };
    // .2: only its 3 client requests (its monlist and mode 6 were dropped, and its own
    // bucket is untouched by .3's flood); .3: one burst (5, plus what 2/s refills while
    // sending) of its requests, monlist queries and clients alike.
    assert_eq!(got["10.231.0.2"], 3 + 4, "delivered: {got}");
    let from_3 = got["10.231.0.3"].as_u64().unwrap_or(0);
    assert!((5..=7).contains(&from_3), "delivered from .3: {got}");
    assert_eq!(got6["fd00:231::2"], 1, "delivered over IPv6: {got6}");
    assert_eq!(
        count("private", "deny", "source not listed"),
        3 + 4,
        "{after}"
    );
    assert_eq!(count("control", "deny", "source not listed"), 3, "{after}");
    assert_eq!(count("private", "allow", ""), 3, "{after}");
    let shed = count("client", "deny", "over the rate limit");
    assert_eq!(shed, 43 - from_3, "{after}");
    let records: Vec<Value> = trail
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["kind"] == "ntp")
        .collect();
    assert!(
        records.iter().any(|v| v["ntp"]["mode"] == "private"
            && v["packet"]["src"] == "10.231.0.2"
            && v["verdict"] == "deny"),
        "no record of the dropped monlist: {records:#?}"
    );
    let alerts: Vec<(String, Value)> = records
        .iter()
        .filter(|v| v["packet"]["src"] == "10.231.0.2" && v["alert"] != "")
        .map(|v| {
            (
                v["alert"].as_str().unwrap_or("").to_string(),
                v["ntp"].clone(),
            )
        })
        .collect();
    let names: Vec<&str> = alerts.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        names,
        ["new_source", "upstream_changed", "kiss_of_death"],
        "{alerts:#?}"
    );
    assert_eq!(alerts[1].1["previous"]["stratum"], 2, "{alerts:#?}");
    assert_eq!(alerts[1].1["stratum"], 3, "{alerts:#?}");
    assert_eq!(alerts[1].1["leap"], 1, "{alerts:#?}");
    assert_eq!(alerts[2].1["kiss_of_death"], "RATE", "{alerts:#?}");
}

/// Where the cgroup v2 hierarchy is mounted on this host (the root, or `unified` when the
/// host runs a hybrid hierarchy).
fn timeguard_agent_cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(2) == Some("cgroup2"))?;
    line.split(' ').nth(1).map(PathBuf::from)
}

/// Real chronyd in the lab, all with `-x` (none of them ever sets a clock): two servers in
/// namespace A (10.231.0.1, listed in `ntp.servers`, and 10.231.0.4, not), a client in B.
/// The client syncs to the listed server only, because the other's replies are dropped
/// before it reads them; chronyc reaches the listed server's command port from A (listed in
/// `ntp.control`) and not from B.
#[test]
fn real_chronyd_syncs_only_to_the_listed_server() {
    let (Some(chronyd), Some(chronyc)) = (
        std::env::var_os("TIMEGUARD_CHRONYD"),
        std::env::var_os("TIMEGUARD_CHRONYC"),
    ) else {
        eprintln!("skipped: no chronyd (cargo xtask test unpacks Debian's and sets TIMEGUARD_CHRONYD, TIMEGUARD_CHRONYC)");
        return;
    };
    let (chronyd, chronyc) = (
        chronyd.to_string_lossy().into_owned(),
        chronyc.to_string_lossy().into_owned(),
    );
    let policy = "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: chrony-net}\nspec:\n  mode: audit\n  clock: {default: deny}\n  network:\n    mode: enforce\n    ntp:\n      servers: [10.231.0.1]\n      control: [10.231.0.1]\n";
    let Some((
        lab,
        RunningAgent {
            bin,
            dir,
            socket,
            mut agent,
            ..
        },
    )) = lab_with_agent('c', policy)
    else {
        return;
    };
    let status = || agent_status(&bin, &socket).unwrap_or_default();
    let conf = |name: &str, body: &str| -> String {
        let path = dir.join(format!("{name}.conf"));
        let pid = dir.join(format!("{name}.pid"));
        std::fs::write(
            &path,
            format!("{body}pidfile {}\nbindcmdaddress /\n", pid.display()),
        )
        .expect("write a chrony.conf");
        path.display().to_string()
    };
    let listed = conf(
        "listed",
        "local stratum 1\nallow all\nbindaddress 10.231.0.1\nbindcmdaddress 10.231.0.1\ncmdallow all\n",
    );
    let unlisted = conf(
        "unlisted",
        "local stratum 1\nallow all\nbindaddress 10.231.0.4\ncmdport 0\n",
    );
    let client = conf(
        "client",
        "server 10.231.0.1 iburst minpoll -4 maxpoll -4\nserver 10.231.0.4 iburst minpoll -4 maxpoll -4\ncmdport 0\n",
    );
    let daemon = |ns: &str, conf: &str| {
        lab.run_in(ns, true, &chronyd, &["-x", "-d", "-u", "root", "-f", conf])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chronyd starts")
    };
    let mut servers = [daemon(&lab.a, &listed), daemon(&lab.a, &unlisted)];
    std::thread::sleep(Duration::from_millis(500));
    let mut client = daemon(&lab.b, &client);
    std::thread::sleep(Duration::from_secs(8));
    let chronyc_from = |ns: &str| -> bool {
        lab.run_in(
            ns,
            false,
            "timeout",
            &["4", &chronyc, "-n", "-h", "10.231.0.1", "tracking"],
        )
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Reference ID"))
    };
    let from_a = chronyc_from(&lab.a);
    let from_b = chronyc_from(&lab.b);
    let after = status();
    // Only the processes this test started, by their ids.
    let _ = client.kill();
    let client_log = client
        .wait_with_output()
        .map(|o| o.stderr)
        .unwrap_or_default();
    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    // SAFETY: signalling the agent this test started, by its id.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);
    drop(lab);

    let log = String::from_utf8_lossy(&client_log);
    let count = |mode: &str, verdict: &str| -> u64 {
        after["network"]["ntp_packets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["mode"] == mode && c["verdict"] == verdict)
            .filter_map(|c| c["count"].as_u64())
            .sum()
    };
    assert!(
        log.contains("Selected source 10.231.0.1"),
        "the client did not sync to the listed server:\n{log}"
    );
    assert!(
        !log.contains("Selected source 10.231.0.4"),
        "the client synced to the unlisted server:\n{log}"
    );
    assert!(count("server", "allow") > 0, "{after}");
    assert!(count("server", "deny") > 0, "{after}");
    assert!(from_a, "chronyc from the control address was refused");
    assert!(!from_b, "chronyc from an unlisted address got an answer");
    assert!(count("chronyc", "deny") > 0, "{after}");
}

/// `timeguard status --json` of an agent a test started.
fn agent_status(bin: &std::path::Path, socket: &std::path::Path) -> Option<Value> {
    let out = Command::new(bin)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// A network lab, and an agent with `policy` whose network guard watches the lab's cgroup,
/// attached; None (said in one line) where it cannot run.
fn lab_with_agent(tag: char, policy: &str) -> Option<(NetLab, RunningAgent)> {
    if !is_root() || timeguard().is_none() {
        eprintln!("skipped: needs root and the agent binary");
        return None;
    }
    let Some(cgroup_root) = timeguard_agent_cgroup2_root() else {
        eprintln!("skipped: no cgroup v2 hierarchy mounted");
        return None;
    };
    let lab = NetLab::new(&cgroup_root, tag).expect("the network lab");
    let cg = lab.cgroup.display().to_string();
    let mut running = start_agent_with(
        &format!("net{tag}"),
        Stdio::null(),
        policy,
        &["--network-cgroup", &cg],
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let attached = agent_status(&running.bin, &running.socket)
            .is_some_and(|s| !s["network"]["attached"].is_null());
        if attached {
            return Some((lab, running));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = running.agent.kill();
    let mut log = String::new();
    if let Some(mut e) = running.agent.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut log);
    }
    let _ = running.agent.wait();
    panic!("the network guard never attached:\n{log}");
}
