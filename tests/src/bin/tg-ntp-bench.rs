//! `cargo xtask bench`'s network figures, on this host's kernel, in namespaces it makes:
//! the requests a real chronyd answers per second at saturation without the network guard
//! and with it (rounds alternating, the best of each kept), and a flood from one source
//! above `ntp.rateLimit`: what the kernel sheds and what still reaches chronyd.
//!
//!   tg-ntp-bench CHRONYD [SECONDS_PER_ROUND]
//!
//! Prints one `TG-BENCH {json}` line per figure. Needs root; chronyd runs with -x (it never
//! touches this host's clock).

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;
use timeguard_tests::{
    agent::{start_agent_via, RunningAgent},
    lab::{agent_for, can_run, NetLab},
    ntp,
};

const ROUNDS: usize = 3;

fn policy(rate: &str) -> String {
    format!("apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {{name: bench}}\nspec:\n  mode: audit\n  clock: {{default: deny}}\n  network:\n    mode: enforce\n    ntp:\n      clients: [10.231.0.0/24]\n      control: [127.0.0.1]\n      rateLimit: {rate}\n")
}

/// Client load from `from` (an address of B) against the server, run in B's namespace;
/// `pace` as `tg-clock ntp-load` takes it ("": saturation, "flood", or requests a second).
fn load(
    lab: &NetLab,
    tg_clock: &Path,
    from: &str,
    secs: f64,
    pace: &str,
) -> Result<ntp::Load, String> {
    let secs_arg = format!("{secs}");
    let mut args = vec!["ntp-load", from, "10.231.0.1:123", &secs_arg];
    if !pace.is_empty() {
        args.push(pace);
    }
    let out = lab
        .tg_clock(&lab.b, false, &args)
        .output()
        .map_err(|e| format!("{}: {e}", tg_clock.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "ntp-load printed {:?}: {e} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(ntp::Load {
        sent: v["sent"].as_u64().unwrap_or(0),
        answered: v["answered"].as_u64().unwrap_or(0),
        seconds: v["seconds"].as_f64().unwrap_or(secs),
    })
}

fn with_agent<T>(
    lab: &NetLab,
    rate: &str,
    f: impl FnOnce(&RunningAgent) -> T,
) -> Result<T, String> {
    let agent = agent_for(lab, 'B', &policy(rate), &[])?;
    let out = f(&agent);
    agent.stop();
    Ok(out)
}

const SECTION: &str = "NTP server";

fn main() {
    if let Err(e) = run() {
        println!("TG-BENCH-FAILED {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let chronyd = args
        .next()
        .ok_or("usage: tg-ntp-bench CHRONYD [SECONDS_PER_ROUND]")?;
    let secs: f64 = args
        .next()
        .map_or(Ok(5.0), |s| s.parse().map_err(|e| format!("{s}: {e}")))?;
    let root = can_run()?;
    let tg_clock: PathBuf = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("tg-clock");
    let lab = NetLab::pair(&root, 'B', &tg_clock)?;
    let dir = std::env::temp_dir().join(format!("tg-ntp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let conf = dir.join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "local stratum 1\nallow all\nbindaddress 10.231.0.1\ncmdport 0\npidfile {}\n",
            dir.join("chronyd.pid").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let conf = conf.display().to_string();
    let mut server: Child = lab
        .run_in(
            &lab.a,
            true,
            &chronyd,
            &["-x", "-d", "-u", "root", "-f", &conf],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("chronyd: {e}"))?;
    std::thread::sleep(Duration::from_secs(1));
    let result = measure(&lab, &tg_clock, secs);
    // Only the process this bench started, by its id.
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Start-up on this host's kernel, at native speed: from exec to the agent's `started`
/// record (every program attached that this kernel accepts; it refuses BPF LSM and fentry
/// here, so the clock guard's own programs are tried and refused), median of 3.
fn startup_on_host(lab: &NetLab) -> Result<(), String> {
    use std::io::BufRead as _;
    let cgroup = lab.cgroup.display().to_string();
    let mut samples = Vec::new();
    for i in 0..3 {
        let started = Instant::now();
        let mut agent = start_agent_via(
            &[],
            &format!("startup{i}"),
            Stdio::piped(),
            &policy("{requestsPerSecond: 64, burst: 128}"),
            &["--network-cgroup", &cgroup, "--audit-stdout"],
        )?;
        let trail = agent.agent.stdout.take().ok_or("no trail on stdout")?;
        let seen = std::io::BufReader::new(trail)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("\"event\":\"started\""));
        let took = started.elapsed().as_secs_f64();
        let log = agent.stop();
        if !seen {
            return Err(format!("the agent wrote no started record: {log}"));
        }
        samples.push(took);
    }
    let listed: Vec<String> = samples.iter().map(|s| format!("{s:.3}")).collect();
    samples.sort_by(f64::total_cmp);
    println!(
        "TG-BENCH {}",
        json!({"section": "the guard's own footprint", "figure": "start-up to the agent's started record (LSM refused on this kernel)",
            "unit": "s", "better": "lower", "timeguard": samples[1], "note": format!("median of {}", listed.join(", "))})
    );
    Ok(())
}

fn measure(lab: &NetLab, tg_clock: &Path, secs: f64) -> Result<(), String> {
    startup_on_host(lab)?;
    // A limit no client of the benchmark reaches: the bucket is still kept per source.
    let generous = "{requestsPerSecond: 1000000, burst: 1000000}";
    let (mut without, mut with) = (0.0f64, 0.0f64);
    for _ in 0..ROUNDS {
        let w = load(lab, tg_clock, "10.231.0.2", secs, "")?;
        without = without.max(w.answered as f64 / w.seconds);
        let g = with_agent(lab, generous, |_| {
            load(lab, tg_clock, "10.231.0.2", secs, "")
        })??;
        with = with.max(g.answered as f64 / g.seconds);
    }
    println!(
        "TG-BENCH {}",
        json!({"section": SECTION, "figure": "NTP server throughput (chronyd -x, best of 3 rounds)", "unit": "requests/s", "better": "higher", "none": without, "timeguard": with})
    );
    // A flood from one source (.3) over a limit of 64/s, while a client (.2) asks 16 times
    // a second: the kernel sheds the flood, the client is answered.
    let (flood, client, shed) = with_agent(lab, "{requestsPerSecond: 64, burst: 128}", |agent| {
        let client = std::thread::scope(|s| {
            let c = s.spawn(|| load(lab, tg_clock, "10.231.0.2", secs, "16"));
            let f = load(lab, tg_clock, "10.231.0.3", secs, "flood");
            (
                f,
                c.join()
                    .unwrap_or_else(|_| Err("the client thread panicked".into())),
            )
        });
        let shed = agent
            .status()
            .and_then(|s| {
                s["network"]["ntp_packets"].as_array().map(|a| {
                    a.iter()
                        .filter(|c| c["reason"] == "over_the_rate_limit")
                        .filter_map(|c| c["count"].as_u64())
                        .sum::<u64>()
                })
            })
            .unwrap_or(0);
        (client.0, client.1, shed)
    })?;
    let (flood, client) = (flood?, client?);
    println!(
        "TG-BENCH {}",
        json!({
            "section": SECTION,
            "figure": "a flood from one source over ntp.rateLimit (64/s), shed in the kernel",
            "unit": "packets/s",
            "better": "higher",
            "timeguard": shed as f64 / flood.seconds,
            "note": format!(
                "offered {:.0}/s, the flooding source answered {:.0}/s; another client asking {:.0}/s was answered {:.0}/s",
                flood.sent as f64 / flood.seconds,
                flood.answered as f64 / flood.seconds,
                client.sent as f64 / client.seconds,
                client.answered as f64 / client.seconds,
            ),
        })
    );
    Ok(())
}
