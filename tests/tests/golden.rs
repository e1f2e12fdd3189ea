//! Golden tests for every message `timeguard check` gives: each `tests/golden/cases/X.yaml`
//! is checked against the fake host in `tests/golden/root` (chronyd installed and enabled),
//! and the exit status and output must equal `X.expected` exactly.
//! `TIMEGUARD_BLESS=1 cargo xtask test --no-vm golden` rewrites the expected files.

use std::{path::PathBuf, process::Command};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

use timeguard_tests::harness::{timeguard, yaml_files};

#[test]
#[ignore = "needs the agent binary: run through `cargo xtask test`, which builds it"]
fn every_check_message_matches_its_golden_file() {
    let bin = timeguard();
    let bless = std::env::var_os("TIMEGUARD_BLESS").is_some();
    let cases = yaml_files(&golden_dir().join("cases"));
    assert!(
        cases.len() >= 20,
        "expected the full set of golden cases, found {}",
        cases.len()
    );
    let mut mismatches = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = Command::new(&bin)
            .args(["check", "--root", "root"])
            .arg(format!("cases/{name}"))
            .current_dir(golden_dir())
            .output()
            .expect("timeguard check runs");
        let actual = format!(
            "exit: {}\n{}{}",
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let expected_path = case.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &actual).expect("write expected");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            mismatches.push(format!("--- {name}: expected\n{expected}--- got\n{actual}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} golden mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
