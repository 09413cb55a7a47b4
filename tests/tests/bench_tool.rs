//! The `postbox-bench` load tool, run as users run it: its `--quick` preset
//! against Postbox (a broker it starts itself) and whichever peers answer, a
//! peer that cannot be reached, and bad input.

use std::path::Path;
use std::process::{Command, Output};

use postbox_tests::bin;
use serde_json::Value;

/// Runs `postbox-bench` with `args`, its report and broker data in `dir`.
fn bench(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("postbox-bench"))
        .args(args)
        .arg("--out")
        .arg(dir.join("report"))
        .env("POSTBOX_BENCH_DIR", dir.join("data"))
        .output()
        .expect("running postbox-bench")
}

fn rows(dir: &Path) -> Vec<Value> {
    let json = std::fs::read_to_string(dir.join("report/results.json")).expect("results.json");
    let report: Value = serde_json::from_str(&json).expect("results.json is JSON");
    report["rows"].as_array().expect("rows").clone()
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_quick_preset_checks_every_record_of_every_system_it_reaches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = bench(dir.path(), &["--quick"]);
    assert!(output.status.success(), "{}", describe(&output));
    let rows = rows(dir.path());
    let postbox: Vec<&Value> = rows.iter().filter(|r| r["system"] == "postbox").collect();
    // Four scenarios, each measured on Postbox.
    assert_eq!(postbox.len(), 4, "{rows:#?}");
    for row in &rows {
        match row["outcome"].as_str() {
            Some("passed") => {
                let check = &row["check"];
                assert_eq!(check["exactly_once"], true, "{row:#}");
                assert_eq!(check["received"], check["expected"], "{row:#}");
                assert!(check["expected"].as_u64() > Some(0), "{row:#}");
                assert!(
                    row["publish"]["records_per_s"].as_f64() > Some(0.0),
                    "{row:#}"
                );
                assert!(row["durability_at_ack"]
                    .as_str()
                    .is_some_and(|d| d.len() > 3));
            }
            Some("not_measured") => {
                assert_ne!(row["system"], "postbox", "{row:#}");
                let reason = row["reason"].as_str().unwrap_or_default();
                assert!(reason.starts_with("not reachable: "), "{row:#}");
            }
            _ => panic!("a run failed: {row:#}\n{}", describe(&output)),
        }
    }
    for row in &postbox {
        assert!(
            row["broker_peak_rss_bytes"].as_u64() > Some(1 << 20),
            "{row:#}"
        );
    }
    // The fixed-rate run measured latency from when each publish was due.
    let fixed = postbox
        .iter()
        .find(|r| r["scenario"]["rate"] == 10_000)
        .expect("the fixed-rate scenario");
    assert!(
        fixed["publish"]["latency_us"]["p99"].as_u64() > Some(0),
        "{fixed:#}"
    );
    // The table has a line per row, and the chart names every system measured.
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        table.lines().filter(|l| l.starts_with("postbox ")).count(),
        4,
        "{table}"
    );
    let svg = std::fs::read_to_string(dir.path().join("report/throughput.svg")).expect("svg");
    assert!(
        svg.starts_with("<svg") && svg.contains(">postbox<"),
        "{svg}"
    );
}

#[test]
fn a_system_that_cannot_be_reached_is_reported_not_measured_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = bench(
        dir.path(),
        &[
            "--systems",
            "postbox,nats",
            "--nats",
            "127.0.0.1:1",
            "--records",
            "2000",
            "--batch",
            "100",
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let rows = rows(dir.path());
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(rows[0]["system"], "postbox");
    assert_eq!(rows[0]["outcome"], "passed", "{:#}", rows[0]);
    assert_eq!(rows[0]["check"]["received"], 2000);
    assert_eq!(rows[1]["system"], "nats");
    assert_eq!(rows[1]["outcome"], "not_measured", "{:#}", rows[1]);
    assert!(
        rows[1]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("not reachable: ")),
        "{:#}",
        rows[1]
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("skipped") && table.contains("not reachable"),
        "{table}"
    );
}

#[test]
fn bad_settings_are_refused_with_the_limit_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = bench(
        dir.path(),
        &["--systems", "postbox", "--record-bytes", "10"],
    );
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("record size is 10; it must be 20 to 1048576"),
        "{stderr}"
    );
    let output = bench(dir.path(), &["--partitions", "4", "--consumers", "2"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("consumers is 2; it must be 1"), "{stderr}");
    assert!(!dir.path().join("report").exists());
}
