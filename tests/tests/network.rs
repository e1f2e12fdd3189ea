//! The network guard on the kernel of the machine running the tests, in network namespaces,
//! veth pairs, a bridge and a cgroup that each test makes (nothing of the host's own network
//! is touched): real chronyd and ptp4l, crafted NTP and PTP, sockets opened by a time daemon
//! and by others, and malformed frames of every kind. None of the daemons can change this
//! host's clock: chronyd runs with -x, ptp4l free-running without CAP_SYS_TIME.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use timeguard_tests::{
    agent::RunningAgent,
    harness::{self, provided_tool, temp_dir},
    lab::{agent_for, can_run, NetLab},
};

const TG_CLOCK: &str = env!("CARGO_BIN_EXE_tg-clock");

/// A pair lab and an agent with `policy` watching its cgroup.
fn lab_with_agent(tag: char, policy: &str) -> (NetLab, RunningAgent) {
    let root = can_run().expect("the network lab can be made here");
    let lab = NetLab::pair(&root, tag, Path::new(TG_CLOCK)).expect("the network lab");
    let agent = agent_for(&lab, tag, policy, &[]).expect("the agent starts");
    (lab, agent)
}

/// Runs `tg-clock args…` in namespace `ns` (outside the lab's cgroup); it must succeed.
fn tg_clock_ok(lab: &NetLab, ns: &str, args: &[&str]) {
    let out = lab
        .tg_clock(ns, false, args)
        .output()
        .expect("tg-clock runs");
    assert!(
        out.status.success(),
        "tg-clock {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The count of a network counter section's entries matching every (key, value) given.
fn counted(status: &Value, section: &str, matching: &[(&str, &str)]) -> u64 {
    harness::counted(&status["network"][section], matching)
}

/// The NTP guard on this kernel, in namespaces this test makes: mode 7 (monlist) and mode 6
/// from a source outside `ntp.control` are dropped before the socket, the listed control
/// host gets through, a client flood above `ntp.rateLimit` is shed while another client is
/// unaffected, and each drop is counted exactly and recorded.
#[test]
#[ignore = "needs root, the agent binary and cgroup v2: run through `cargo xtask test`"]
fn the_ntp_guard_drops_control_queries_and_floods_in_a_namespace() {
    let policy = "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: net}\nspec:\n  mode: audit\n  clock: {default: deny}\n  network:\n    mode: enforce\n    ntp:\n      clients: [10.231.0.0/24, \"fd00:231::/64\"]\n      control: [10.231.0.3]\n      rateLimit: {requestsPerSecond: 2, burst: 5}\n";
    let (lab, agent) = lab_with_agent('n', policy);
    let receiver = lab.udp_receiver("10.231.0.1:123", 6);
    let receiver6 = lab.udp_receiver("[fd00:231::1]:123", 6);
    std::thread::sleep(Duration::from_millis(1500));
    let send = |from: &str, kind: &str, n: &str| {
        tg_clock_ok(&lab, &lab.b, &["udp-send", from, "10.231.0.1:123", kind, n]);
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
        tg_clock_ok(&lab, &lab.b, &args);
    }
    tg_clock_ok(
        &lab,
        &lab.b,
        &[
            "udp-send",
            "fd00:231::2",
            "[fd00:231::1]:123",
            "client",
            "1",
        ],
    );
    let got6 = receiver6
        .wait_with_output()
        .expect("the IPv6 receiver ends");
    let got6: Value = serde_json::from_slice(&got6.stdout).unwrap_or_default();
    let got = receiver.wait_with_output().expect("the receiver ends");
    let got: Value = serde_json::from_slice(&got.stdout).unwrap_or_default();
    let after = agent.status().unwrap_or_default();
    let records = agent.records();
    let dir = agent.dir.clone();
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    drop(lab);

    let count = |mode: &str, verdict: &str, reason: &str| -> u64 {
        counted(
            &after,
            "ntp_packets",
            &[("mode", mode), ("verdict", verdict), ("reason", reason)],
        )
    };
    // .2: only its 3 client requests (its monlist and mode 6 were dropped, and its own
    // bucket is untouched by .3's flood); .3: one burst (5, plus what 2/s refills while
    // sending) of its requests, monlist queries and clients alike.
    assert_eq!(got["10.231.0.2"], 3 + 4, "delivered: {got}");
    let from_3 = got["10.231.0.3"].as_u64().unwrap_or(0);
    assert!((5..=7).contains(&from_3), "delivered from .3: {got}");
    assert_eq!(got6["fd00:231::2"], 1, "delivered over IPv6: {got6}");
    assert_eq!(
        count("private", "deny", "source_not_listed"),
        3 + 4,
        "{after}"
    );
    assert_eq!(count("control", "deny", "source_not_listed"), 3, "{after}");
    assert_eq!(count("private", "allow", ""), 3, "{after}");
    let shed = count("client", "deny", "over_the_rate_limit");
    assert_eq!(shed, 43 - from_3, "{after}");
    let records: Vec<Value> = records.into_iter().filter(|v| v["kind"] == "ntp").collect();
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

/// Real chronyd in the lab, all with `-x` (none of them ever sets a clock): two servers in
/// namespace A (10.231.0.1, listed in `ntp.servers`, and 10.231.0.4, not), a client in B.
/// The client syncs to the listed server only, because the other's replies are dropped
/// before it reads them; chronyc reaches the listed server's command port from A (listed in
/// `ntp.control`) and not from B.
#[test]
#[ignore = "needs root, the agent binary, cgroup v2 and chronyd: run through `cargo xtask test`"]
fn real_chronyd_syncs_only_to_the_listed_server() {
    let (chronyd, chronyc) = (
        provided_tool("TIMEGUARD_CHRONYD", "chronyd")
            .display()
            .to_string(),
        provided_tool("TIMEGUARD_CHRONYC", "chronyc")
            .display()
            .to_string(),
    );
    let policy = "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: chrony-net}\nspec:\n  mode: audit\n  clock: {default: deny}\n  network:\n    mode: enforce\n    ntp:\n      servers: [10.231.0.1]\n      control: [10.231.0.1]\n";
    let (lab, agent) = lab_with_agent('c', policy);
    let dir = agent.dir.clone();
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
    let after = agent.status().unwrap_or_default();
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
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    drop(lab);

    let log = String::from_utf8_lossy(&client_log);
    let count = |mode: &str, verdict: &str| -> u64 {
        counted(
            &after,
            "ntp_packets",
            &[("mode", mode), ("verdict", verdict)],
        )
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

/// Runs `tg-clock` (or a copy of it) in a lab namespace; its JSON outcome's errno.
fn errno_of(mut c: Command) -> i64 {
    let out = c.output().expect("tg-clock runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str::<Value>(text.trim())
        .ok()
        .and_then(|v| v["errno"].as_i64())
        .unwrap_or_else(|| {
            panic!(
                "tg-clock printed {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// An executable's identity as records show it: `major:minor:inode`.
fn exe_id(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(path).expect("stat the executable");
    format!(
        "{}:{}:{}",
        libc::major(md.dev()),
        libc::minor(md.dev()),
        md.ino()
    )
}

/// A copy of tg-clock in a directory of its own: another file, so another executable to
/// the guard, which a policy can name as a time daemon.
fn daemon_copy(tag: &str) -> PathBuf {
    let dir = temp_dir(&format!("daemon-{tag}"));
    let copy = dir.join("tg-daemon");
    std::fs::copy(TG_CLOCK, &copy).expect("copy tg-clock");
    copy
}

/// Sockets that matter to time: only the listed daemon may bind UDP 123; the daemon may
/// connect and send only to its egress destinations (its own loopback always, a reply from
/// its time port to a listed client too), while a program that is no time daemon is not
/// held to them; an NTS-KE connection opens only from a listed client. Every refusal fails
/// with EPERM (or, for a dropped SYN, never connects), is counted exactly and recorded with
/// who asked.
#[test]
#[ignore = "needs root, the agent binary and cgroup v2: run through `cargo xtask test`"]
fn only_time_daemons_own_time_ports_and_daemons_connect_only_where_listed() {
    let copy = daemon_copy("s");
    let daemon = copy.display().to_string();
    let policy = format!(
        "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: sockets}}\nspec:\n  mode: audit\n  clock:\n    default: deny\n    rules:\n      - name: lab-daemon\n        match: {{exe: {daemon}}}\n        allow: [slew]\n  network:\n    mode: enforce\n    ntp:\n      clients: [10.231.0.3]\n    daemons: [lab-daemon]\n    egress:\n      - daemon: lab-daemon\n        to: [\"10.231.0.1:123\", \"10.231.0.1:4460\"]\n"
    );
    let (lab, agent) = lab_with_agent('s', &policy);
    let as_daemon = |args: &[&str]| errno_of(lab.run_in(&lab.b, true, &daemon, args));
    let as_other = |args: &[&str]| errno_of(lab.tg_clock(&lab.b, true, args));
    const EPERM: i64 = 1;
    let binds = [
        as_other(&["udp-bind", "0.0.0.0:123"]),
        as_other(&["udp-bind", "[::]:319"]),
        as_daemon(&["udp-bind", "0.0.0.0:123"]),
        as_other(&["udp-bind", "0.0.0.0:5123"]),
    ];
    let connects = [
        as_daemon(&["connect", "udp", "10.231.0.1:123"]),
        as_daemon(&["connect", "udp", "10.231.0.4:123"]),
        as_daemon(&["connect", "tcp", "10.231.0.1:22"]),
        as_daemon(&["sendto", "10.231.0.4:123"]),
        as_daemon(&["connect", "udp", "127.0.0.1:53"]),
        as_other(&["connect", "udp", "10.231.0.4:123"]),
        // Replies from the NTP port: to a listed client, and to another address.
        as_daemon(&["sendto", "10.231.0.3:40000", "123"]),
        as_daemon(&["sendto", "10.231.0.2:40000", "123"]),
    ];
    // NTS-KE: a listener in A; B's default source (.2) is not a listed client, nor is A's
    // own address.
    let listener = lab
        .tg_clock(&lab.a, true, &["tcp-listen", "10.231.0.1:4460", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the listener starts");
    std::thread::sleep(Duration::from_millis(500));
    let nts_from_b = errno_of(lab.tg_clock(&lab.b, false, &["connect", "tcp", "10.231.0.1:4460"]));
    let nts_from_a = errno_of(lab.tg_clock(&lab.a, false, &["connect", "tcp", "10.231.0.1:4460"]));
    let accepted: Value = listener
        .wait_with_output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    let after = agent.status().unwrap_or_default();
    let records = agent.records();
    let log = agent.stop();
    drop(lab);
    let _ = std::fs::remove_dir_all(copy.parent().unwrap_or(Path::new("/nonexistent")));

    assert_eq!(binds, [EPERM, EPERM, 0, 0], "binds\n{log}");
    assert_eq!(
        connects,
        [0, EPERM, EPERM, EPERM, 0, 0, 0, EPERM],
        "connects\n{log}"
    );
    assert_eq!(
        nts_from_b,
        libc::ETIMEDOUT as i64,
        "NTS-KE from an unlisted client"
    );
    assert_eq!(accepted["accepted"], 0, "{accepted}");
    assert_ne!(nts_from_a, 0, "NTS-KE from A's own address");
    let deny = |action: &str, service: &str, reason: &str| {
        counted(
            &after,
            "sockets",
            &[
                ("action", action),
                ("service", service),
                ("verdict", "deny"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(deny("bind", "ntp", "not_a_time_daemon"), 1, "{after}");
    assert_eq!(deny("bind", "ptp", "not_a_time_daemon"), 1, "{after}");
    // To 10.231.0.4:123 connected and unconnected; to port 22, and the reply to an
    // unlisted client (port 40000).
    assert_eq!(
        deny("connect", "ntp", "destination_not_listed"),
        2,
        "{after}"
    );
    assert_eq!(
        deny("connect", "other", "destination_not_listed"),
        2,
        "{after}"
    );
    // Each refused opening, and the SYNs TCP sent again while it waited.
    assert!(
        counted(&after, "nts_ke", &[("mode", "client"), ("verdict", "deny")]) >= 2,
        "{after}"
    );
    let refused_bind = records
        .iter()
        .find(|r| r["kind"] == "bind" && r["verdict"] == "deny")
        .unwrap_or_else(|| panic!("no bind record: {records:#?}"));
    // Who is the executable's identity (the path is read later from /proc, and a process
    // that has exited by then has none).
    assert_eq!(
        refused_bind["who"]["exe_id"],
        exe_id(Path::new(TG_CLOCK)),
        "{refused_bind}"
    );
    assert!(
        records.iter().any(|r| r["kind"] == "connect"
            && r["verdict"] == "deny"
            && r["who"]["daemon"] == "lab-daemon"
            && r["socket"]["address"] == "10.231.0.4"),
        "no record of the refused connection: {records:#?}"
    );
    assert!(
        records.iter().any(|r| r["alert"] == "new_destination"
            && r["socket"]["address"] == "10.231.0.1"
            && r["socket"]["port"] == 123),
        "no new_destination record: {records:#?}"
    );
}

/// ptp4l from Debian's linuxptp (TIMEGUARD_PTP4L), as `cargo xtask test` unpacks it.
fn ptp4l() -> String {
    provided_tool("TIMEGUARD_PTP4L", "ptp4l")
        .display()
        .to_string()
}

/// A ptp4l configuration: software timestamping, fast intervals, a fixed clock identity,
/// and never a clock adjustment (free-running, the null servo).
fn ptp4l_config(dir: &Path, role: &str, identity: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{role}.cfg"));
    let text = format!(
        "[global]\nfree_running 1\nclock_servo nullf\ntime_stamping software\ntx_timestamp_timeout 50\nlogAnnounceInterval -3\nlogSyncInterval -3\nlogMinDelayReqInterval -3\nannounceReceiptTimeout 3\nsummary_interval 0\nclockIdentity {identity}\nuds_address {}\n{extra}",
        dir.join(format!("{role}.sock")).display()
    );
    std::fs::write(&path, text).expect("write a ptp4l config");
    path
}

/// The grandmasters a ptp4l log says its client selected, in order.
fn selected(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("selected best master clock ").nth(1))
        .map(|id| id.trim().to_string())
        .collect()
}

/// ptp4l over veth, software timestamping, in a bridged lab: a grandmaster (listed), a rogue
/// grandmaster with a better priority, and a grandmaster of another domain, all heard by a
/// client whose host runs the guard. With the policy enforced the client selects the listed
/// grandmaster only; the rogue's and the other domain's Announces are dropped, counted and
/// recorded. The same policy in audit mode (reloaded) lets them through, and the client
/// turns to the rogue: what the guard stopped.
fn ptp4l_follows_only_the_listed_grandmaster(tag: char, transport: &str) {
    let ptp4l = ptp4l();
    let root = can_run().expect("the network lab can be made here");
    let roles = ["gm", "rogue", "other", "client"];
    let lab = NetLab::bridged(&root, tag, &roles, Path::new(TG_CLOCK)).expect("the PTP lab");
    let policy = |mode: &str| {
        format!("apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: ptp}}\nspec:\n  mode: audit\n  clock: {{default: deny}}\n  network:\n    mode: {mode}\n    ptp:\n      domains: [0]\n      grandmasters: [aaaaaa.fffe.000001]\n")
    };
    let client_ns = format!("--net=/run/netns/{}", lab.roles[3]);
    let agent = agent_for(&lab, tag, &policy("enforce"), &["nsenter", &client_ns])
        .expect("the agent starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let on = agent.status().is_some_and(|s| {
            s["network"]["ptp_interfaces"]
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i == lab.interface(3).as_str()))
        });
        if on {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let dir = agent.dir.clone();
    let configs = [
        ptp4l_config(
            &dir,
            "gm",
            "aaaaaa.fffe.000001",
            "priority1 128\nmasterOnly 1\n",
        ),
        ptp4l_config(&dir, "rogue", "bbbbbb.fffe.000002", "priority1 10\n"),
        ptp4l_config(
            &dir,
            "other",
            "dddddd.fffe.000024",
            "priority1 10\ndomainNumber 24\n",
        ),
        ptp4l_config(
            &dir,
            "client",
            "cccccc.fffe.000003",
            "priority1 255\nslaveOnly 1\n",
        ),
    ];
    let client_log = dir.join("client.log");
    let mut daemons: Vec<Child> = Vec::new();
    for (i, cfg) in configs.iter().enumerate() {
        let log = dir.join(format!("{}.log", roles[i]));
        let out = std::fs::File::create(&log).expect("a ptp4l log");
        let err = out.try_clone().expect("the log again");
        let cfg = cfg.display().to_string();
        let iface = lab.interface(i);
        // CAP_SYS_TIME dropped as well: this ptp4l cannot change this host's clock.
        let child = lab
            .run_in(
                &lab.roles[i],
                false,
                "setpriv",
                &[
                    "--bounding-set=-sys_time",
                    "--inh-caps=-sys_time",
                    &ptp4l,
                    "-f",
                    &cfg,
                    "-i",
                    &iface,
                    transport,
                    "-S",
                    "-m",
                ],
            )
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("ptp4l starts");
        daemons.push(child);
    }
    std::thread::sleep(Duration::from_secs(5));
    let enforced = selected(&client_log);
    let during = agent.status().unwrap_or_default();
    std::fs::write(&agent.policy, policy("audit")).expect("rewrite the policy");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if agent
            .status()
            .is_some_and(|s| s["policy"]["generation"] == 2)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let audited = selected(&client_log);
    let after = agent.status().unwrap_or_default();
    let records = agent.records();
    // Only the processes this test started, by their ids.
    for d in &mut daemons {
        let _ = d.kill();
        let _ = d.wait();
    }
    let client_text = std::fs::read_to_string(&client_log).unwrap_or_default();
    let log = agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    drop(lab);

    assert!(
        !enforced.is_empty() && enforced.iter().all(|g| g == "aaaaaa.fffe.000001"),
        "enforced: the client selected {enforced:?}\n{client_text}\n{log}"
    );
    let announce_deny = |reason: &str| {
        counted(
            &during,
            "ptp_messages",
            &[
                ("message", "announce"),
                ("verdict", "deny"),
                ("reason", reason),
            ],
        )
    };
    assert!(announce_deny("grandmaster_not_listed") > 0, "{during}");
    assert!(announce_deny("domain_not_listed") > 0, "{during}");
    let announces = |status: &Value, verdict: &str| {
        counted(
            status,
            "ptp_messages",
            &[("message", "announce"), ("verdict", verdict)],
        )
    };
    assert!(announces(&during, "allow") > 0, "{during}");
    assert!(
        audited.last().is_some_and(|g| g == "bbbbbb.fffe.000002"),
        "audit: the client should turn to the rogue, selected {audited:?}\n{client_text}"
    );
    assert!(announces(&after, "audit") > 0, "{after}");
    assert!(
        records.iter().any(|r| r["kind"] == "ptp"
            && r["verdict"] == "deny"
            && r["ptp"]["grandmaster"]["identity"] == "bbbbbb.fffe.000002"),
        "no record of the rogue's Announce: {records:#?}"
    );
    assert!(
        records.iter().any(|r| r["alert"] == "new_grandmaster"
            && r["ptp"]["grandmaster"]["identity"] == "aaaaaa.fffe.000001"),
        "no new_grandmaster record: {records:#?}"
    );
}

#[test]
#[ignore = "needs root, the agent binary, cgroup v2 and ptp4l: run through `cargo xtask test`"]
fn ptp4l_over_ethernet_follows_only_the_listed_grandmaster() {
    ptp4l_follows_only_the_listed_grandmaster('p', "-2");
}

#[test]
#[ignore = "needs root, the agent binary, cgroup v2 and ptp4l: run through `cargo xtask test`"]
fn ptp4l_over_udp_follows_only_the_listed_grandmaster() {
    ptp4l_follows_only_the_listed_grandmaster('u', "-4");
}

/// Malformed and truncated frames of every kind (PTP cut at every length and behind VLAN
/// tags, IPv4 with bad header lengths and fragments, UDP to the time ports cut short, IPv6
/// extension chains that overrun the packet, TCP with bad offsets, random bytes), then NTP
/// payloads cut at every length: the parsers refuse what they cannot read, count it, and the
/// guard goes on deciding well-formed traffic exactly as before.
#[test]
#[ignore = "needs root, the agent binary and cgroup v2: run through `cargo xtask test`"]
fn malformed_and_truncated_packets_pass_the_parsers_without_harm() {
    let root = can_run().expect("the network lab can be made here");
    let lab = NetLab::pair(&root, 'm', Path::new(TG_CLOCK)).expect("the network lab");
    let policy = "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: malformed}\nspec:\n  mode: audit\n  clock: {default: deny}\n  network:\n    mode: enforce\n    ntp:\n      control: [10.231.0.3]\n    ptp:\n      domains: [0]\n      grandmasters: [aaaaaa.fffe.000001]\n";
    let ns_a = format!("--net=/run/netns/{}", lab.a);
    let agent = agent_for(&lab, 'm', policy, &["nsenter", &ns_a]).expect("the agent starts");
    let receiver = lab.udp_receiver("10.231.0.1:123", 8);
    std::thread::sleep(Duration::from_millis(1500));
    let storm = lab
        .tg_clock(&lab.b, false, &["malformed", &lab.vb])
        .output()
        .expect("tg-clock runs");
    let storm: Value = serde_json::from_slice(&storm.stdout).unwrap_or_default();
    let cut = errno_of(lab.tg_clock(
        &lab.b,
        false,
        &["truncated-ntp", "10.231.0.2", "10.231.0.1:123"],
    ));
    let mid = agent.status();
    // Afterwards, well-formed traffic is decided as before.
    for (from, kind) in [
        ("10.231.0.2", "private"),
        ("10.231.0.2", "client"),
        ("10.231.0.3", "private"),
    ] {
        tg_clock_ok(
            &lab,
            &lab.b,
            &["udp-send", from, "10.231.0.1:123", kind, "2"],
        );
    }
    let got: Value = receiver
        .wait_with_output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    let after = agent.status().unwrap_or_default();
    let log = agent.stop();
    drop(lab);

    assert!(storm["sent"].as_u64().unwrap_or(0) > 500, "{storm}");
    assert_eq!(cut, 0);
    assert!(
        mid.is_some(),
        "the agent stopped answering during the storm:\n{log}"
    );
    // From .2: the 2 client requests only (its 48 cut monlists and 2 whole ones were
    // dropped, so was its empty datagram); from .3 (a control host): its 2 monlists.
    assert_eq!(got["10.231.0.2"], 2, "{got}\n{after}");
    assert_eq!(got["10.231.0.3"], 2, "{got}\n{after}");
    assert_eq!(
        counted(
            &after,
            "ntp_packets",
            &[("mode", "private"), ("verdict", "deny")]
        ),
        48 + 2,
        "{after}"
    );
    assert!(
        counted(
            &after,
            "ntp_packets",
            &[("reason", "not_parseable"), ("verdict", "deny")]
        ) >= 1,
        "{after}"
    );
    assert!(
        counted(&after, "ptp_messages", &[("message", "truncated")]) > 0,
        "{after}"
    );
    assert!(
        counted(
            &after,
            "ptp_messages",
            &[
                ("message", "announce"),
                ("reason", "grandmaster_not_listed")
            ]
        ) > 0,
        "{after}"
    );
    assert_eq!(after["events_lost"], 0, "{after}");
}

/// Enforcement outlives the agent: with the agent killed (SIGKILL), the pinned programs go
/// on dropping monlist queries and counting them; a restarted agent takes the pinned links
/// over (no second attachment: each packet is counted once) and its counters go on from
/// where the first one's stopped; `timeguard stop --unpin` removes the guard.
#[test]
#[ignore = "needs root, the agent binary and cgroup v2: run through `cargo xtask test`"]
fn enforcement_outlives_a_killed_agent_and_a_restarted_one_takes_over() {
    let policy = "apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: outlive}\nspec:\n  mode: audit\n  clock: {default: deny}\n  network:\n    mode: enforce\n    ntp:\n      control: [10.231.0.3]\n";
    let (lab, mut first) = lab_with_agent('k', policy);
    let receiver = lab.udp_receiver("10.231.0.1:123", 14);
    std::thread::sleep(Duration::from_millis(1000));
    let monlist = |n: &str| {
        tg_clock_ok(
            &lab,
            &lab.b,
            &["udp-send", "10.231.0.2", "10.231.0.1:123", "private", n],
        );
    };
    monlist("3");
    // Only the agent this test started, by its id: as a crash or `kill -9` would.
    let _ = first.agent.kill();
    let _ = first.agent.wait();
    monlist("4");
    std::thread::sleep(Duration::from_millis(200));
    let second = timeguard_tests::agent::start_agent_via(
        &[],
        "netk",
        Stdio::null(),
        policy,
        &["--network-cgroup", &lab.cgroup.display().to_string()],
    )
    .expect("the agent starts again");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = Value::Null;
    while Instant::now() < deadline {
        status = second.status().unwrap_or_default();
        if status["policy"]["generation"] == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    monlist("2");
    std::thread::sleep(Duration::from_millis(300));
    let after_restart = second.status().unwrap_or_default();
    let records = second.records();
    let log = second.stop();
    monlist("5");
    let got: Value = receiver
        .wait_with_output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&first.dir);
    drop(lab);

    let started = records
        .iter()
        .rev()
        .find(|r| r["event"] == "started")
        .cloned()
        .unwrap_or_default();
    assert_eq!(status["policy"]["generation"], 2, "{status}\n{log}");
    assert_eq!(started["inherited_generation"], 1, "{started}");
    assert!(
        started["adopted"].as_array().is_some_and(|a| a
            .iter()
            .any(|k| k.as_str().is_some_and(|k| k.starts_with("ntp_ingress@")))),
        "the restarted agent did not take over the pinned link: {started}"
    );
    // 3 with the first agent, 4 with none, 2 with the second: each counted once.
    assert_eq!(
        counted(
            &after_restart,
            "ntp_packets",
            &[("mode", "private"), ("verdict", "deny")]
        ),
        9,
        "{after_restart}"
    );
    // Only the 5 sent after `stop --unpin` reached the socket.
    assert_eq!(got["10.231.0.2"], 5, "{got}\n{log}");
}
