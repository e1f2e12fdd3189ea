//! The agent as systemd runs it (`Type=notify`), on this host's kernel (observe-only here:
//! the policy switch still happens): a fake service manager's `NOTIFY_SOCKET` hears READY=1
//! only once the policy is live, STATUS= saying what is enforced, WATCHDOG=1 from the event
//! loop and STOPPING=1; the log is JSON when asked; the audit trail stays off stdout.

use std::{
    io::Read as _,
    os::unix::net::UnixDatagram,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;

use timeguard_tests::{agent::start_agent_via, harness::temp_dir};

fn policy(name: &str) -> String {
    format!("apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: {name}}}\nspec:\n  mode: audit\n  clock:\n    default: deny\n")
}

/// The next notification that contains `what`, within `within`; every one received on the
/// way is kept in `heard`.
fn next_containing(
    socket: &UnixDatagram,
    what: &str,
    within: Duration,
    heard: &mut Vec<String>,
) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            heard.push(message.clone());
            if message.lines().any(|l| l.starts_with(what)) {
                return Some(message);
            }
        }
    }
    None
}

/// The value of `KEY=` in a notification.
fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message.lines().find_map(|l| l.strip_prefix(key))
}

#[test]
#[ignore = "needs root: loads BPF"]
fn ready_only_once_the_policy_is_live() {
    let dir = temp_dir("notify");
    let socket_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).expect("the fake service manager listens");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("a read timeout");
    let notify = format!("NOTIFY_SOCKET={}", socket_path.display());
    // A watchdog of 2 s: the loop must say it is alive every second.
    let mut agent = start_agent_via(
        &["env", &notify, "WATCHDOG_USEC=2000000"],
        "notify",
        Stdio::piped(),
        &policy("first"),
        &["--log-format", "json"],
    )
    .expect("the agent starts");
    let mut stdout = agent.agent.stdout.take().expect("stdout");
    let printed = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stdout.read_to_string(&mut all);
        all
    });

    let mut heard = Vec::new();
    let ready = next_containing(&socket, "READY=1", Duration::from_secs(60), &mut heard);
    // At the instant READY=1 is here: the trail has the started record, status answers with
    // the policy in force.
    let started_then = agent.records().iter().any(|r| r["event"] == "started");
    let status_then = agent.status();
    let watchdog = next_containing(&socket, "WATCHDOG=1", Duration::from_secs(5), &mut heard);

    // A reload is told too.
    std::fs::write(&agent.policy, policy("second")).expect("a new policy");
    let reloaded = next_containing(&socket, "STATUS=", Duration::from_secs(10), &mut heard);

    let pin_dir = agent.pin_dir.to_path_buf();
    let log = agent.stop();
    let stopping = next_containing(&socket, "STOPPING=1", Duration::from_secs(5), &mut heard);
    let printed = printed.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !pin_dir.exists(),
        "the pins were left at {}",
        pin_dir.display()
    );

    let ready = ready.unwrap_or_else(|| panic!("no READY=1; heard {heard:?}; log:\n{log}"));
    assert!(
        heard.iter().take_while(|m| !m.contains("READY=1")).count() == 0,
        "notifications before READY=1: {heard:?}"
    );
    assert!(
        started_then,
        "READY=1 came before the started record; log:\n{log}"
    );
    let generation = status_then
        .as_ref()
        .and_then(|s| s["policy"]["generation"].as_u64());
    assert!(
        generation.is_some_and(|g| g >= 1),
        "at READY=1, status said {status_then:?}"
    );
    let status =
        field(&ready, "STATUS=").unwrap_or_else(|| panic!("READY=1 without STATUS=: {ready:?}"));
    println!("STATUS= at READY=1: {status}");
    assert!(
        status.contains("policy first generation 1")
            && (status.contains("observe-only") || status.contains("auditing")),
        "{status}"
    );
    assert!(
        watchdog.is_some(),
        "no WATCHDOG=1 within 5 s of a 2 s watchdog: {heard:?}"
    );
    let reloaded = reloaded.unwrap_or_else(|| panic!("no STATUS= after a reload: {heard:?}"));
    assert!(
        field(&reloaded, "STATUS=").is_some_and(|s| s.contains("policy second generation 2")),
        "{reloaded:?}"
    );
    assert!(stopping.is_some(), "no STOPPING=1: {heard:?}");

    // The log: one JSON object a line, with what a collector needs.
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the agent logged nothing");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["level", "target", "message", "timestamp"] {
            assert!(v[key].is_string(), "{key} missing: {line}");
        }
    }
    // The trail went to its file only: nothing on stdout without --audit-stdout.
    assert!(
        printed.trim().is_empty(),
        "records on stdout without --audit-stdout:\n{printed}"
    );
}
