//! A start with a bad policy on disk (a reboot after an edit gone wrong): the agent enforces
//! the last policy it accepted, or with none kept the built-in default, never nothing, and
//! says so in status, in a record and in a metric. Fixing the file brings the configured
//! policy back.

use std::path::Path;

use timeguard_tests::harness::http_get;

use crate::prelude::*;

/// The state directory of these tests' agents, emptied before each.
const STATE: &str = "/var/lib/timeguard-fallback";
const METRICS: &str = "127.0.0.1:9817";
const ARGS: [&str; 4] = ["--state-dir", STATE, "--metrics-addr", METRICS];

/// The value, or a failed test (with the agent's log and records, while one runs).
fn must<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// What the running agent says about its fallback: status, the record and the metric.
fn reported_fallback(source: &str) -> Result<(Value, Value), String> {
    let st = agent_status()?;
    if st["policy"]["source"] != source {
        return Err(format!(
            "status says the policy comes from {}: {st}",
            st["policy"]["source"]
        ));
    }
    let problems = st["policy"]["configured_problems"].to_string();
    if !problems.contains("alow") {
        return Err(format!(
            "status does not say why the configured policy was refused: {problems}"
        ));
    }
    let record = wait_record("policy_fallback", |v| v["event"] == "policy_fallback")?;
    if record["enforced"] != source || !record["problems"].to_string().contains("alow") {
        return Err(format!("the policy_fallback record: {record}"));
    }
    let metrics = http_get(METRICS, "/metrics")
        .map(|(_, body)| body)
        .ok_or("the agent's metrics do not answer")?;
    let series = format!("timeguard_policy_source{{source=\"{source}\"}} 1");
    if !metrics.contains(&series) {
        return Err(format!("no `{series}` in the metrics"));
    }
    Ok((st, record))
}

#[test]
fn a_reboot_with_a_bad_policy_on_disk_enforces_the_last_known_good() {
    let _ = fs::remove_dir_all(STATE);
    let mut first = must(GuestAgent::start_with(policies::GUEST, &ARGS));
    let kept = must(agent_status());
    // A reboot: the agent stops, and bpffs comes up empty.
    must(first.finish());
    drop(first);
    let mut agent = must(GuestAgent::start_with(policies::BROKEN, &ARGS));
    let (st, record) = must(reported_fallback("last_known_good"));
    if st["policy"]["name"] != "vm-test" || st["policy"]["sha256"] != kept["policy"]["sha256"] {
        panic!("in force: {}, kept: {}", st["policy"], kept["policy"]);
    }
    // The kept policy, not the broken one (its default allows) nor the built-in default (it
    // has no rule for the test program).
    let denied = must(denied_step(COPY, &["step", "3600"], Some("tg-clock")));
    must(step_and_back(ALLOWED, "step", 10));
    // An upgrade while the fallback is in force: the kept policy is resolved again and
    // follows the new file; the old one loses the rule.
    let old = "/usr/local/sbin/tg-clock-before-upgrade";
    let generation = st["policy"]["generation"].as_u64().unwrap_or(0);
    must(upgrade_allowed(old));
    let upgraded = must(wait_status("the kept policy resolved again", |now| {
        now["policy"]["generation"].as_u64().unwrap_or(0) > generation
            && now["policy"]["source"] == "last_known_good"
    }));
    must(step_and_back(ALLOWED, "step", 10).map_err(|e| format!("the upgraded file: {e}")));
    must(denied_step(old, &["step", "3600"], None));
    let _ = fs::remove_file(old);
    // The operator fixes the file: the agent follows it out of the fallback.
    must(fs::write(POLICY, policies::GUEST).map_err(|e| e.to_string()));
    let back = must(wait_status("the fixed policy in force", |now| {
        now["policy"]["source"] == "configured"
    }));
    must(wait_record("policy_loaded from the fixed file", |v| {
        v["event"] == "policy_loaded" && v["source"] == "configured"
    }));
    must(agent.finish());
    println!(
        "started on the last known good (sha256 {}, accepted {}): copy {denied}; the allowed file steps, and after its upgrade (generation {}) the new file; fixed file in force as generation {}",
        st["policy"]["sha256"], record["accepted"], upgraded["policy"]["generation"], back["policy"]["generation"]
    );
}

#[test]
fn a_bad_policy_and_nothing_kept_enforce_the_built_in_default() {
    let _ = fs::remove_dir_all(STATE);
    let mut agent = must(GuestAgent::start_with(policies::BROKEN, &ARGS));
    let (st, record) = must(reported_fallback("built_in_default"));
    if st["policy"]["name"] != "default" {
        panic!("in force: {}", st["policy"]);
    }
    let unusable = record["last_known_good_unusable"].to_string();
    if !unusable.contains("no last known good policy") {
        panic!("the record does not say why the last known good is not used: {record}");
    }
    // Only the installed time daemons may discipline the clock: the test program is none.
    let denied = must(denied_step(
        ALLOWED,
        &["step", "3600"],
        Some("tg-clock-allowe"),
    ));
    if Path::new(STATE).join("last-known-good.json").exists() {
        panic!("the built-in default was kept as the last known good");
    }
    must(agent.finish());
    println!("started on the built-in default ({unusable}): the test program's step {denied}");
}
