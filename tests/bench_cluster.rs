//! `specie bench --cluster FILE`: the smoke profile's payments against three `specie node`
//! processes the bench starts itself, through their ingress with mutual TLS; the nodes are
//! stopped with SIGTERM and their journals audited. Checks the report's shape and that the
//! audit passed — no timing assertions.

mod common;
use common::*;
use std::path::Path;
use std::process::Stdio;

/// Wallets of the test cluster: small, so genesis is quick in a debug build.
const WALLETS: u64 = 120;

#[test]
fn the_smoke_bench_drives_a_started_node_cluster_and_audits_it() {
    let (dir, cluster) = cluster_dir(WALLETS);
    let json = dir.path().join("b.json");
    let out = specie()
        .arg("bench")
        .arg("--profile")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bench/smoke.toml"))
        .arg("--cluster")
        .arg(&cluster)
        .args(["--rate", "50", "--duration", "3", "--json"])
        .arg(&json)
        .arg("--report")
        .arg(dir.path().join("r"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("specie bench --cluster");
    let show = format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{show}");
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no JSON ({e}): {show}")),
    )
    .expect("the report is JSON");
    assert_eq!(doc["ok"], true, "{doc:#}");
    assert_eq!(doc["profile"], "smoke");
    assert_eq!(doc["nodes"], 3);
    assert_eq!(doc["durable"], true);
    assert_eq!(doc["cluster"], cluster.display().to_string());
    assert!(doc["committed"].as_u64().is_some_and(|c| c > 0), "{doc:#}");
    for key in [
        "throughput_per_s",
        "offered_per_s",
        "crypto_floor_verifies_per_s",
        "floor_ratio",
        "bytes_per_wallet",
    ] {
        assert!(doc[key].is_number(), "{key}: {doc:#}");
    }
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(doc["latency_ms"][q].is_number(), "latency_ms.{q}: {doc:#}");
    }
    assert!(
        doc["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0),
        "{doc:#}"
    );
    let by_kind = doc["by_kind"].as_object().expect("by_kind");
    assert!(
        by_kind.keys().all(|k| k.starts_with("pay_")) && !by_kind.is_empty(),
        "{doc:#}"
    );
    assert_eq!(doc["audit"]["ok"], true, "{doc:#}");
    for node in ["n1", "n2", "n3"] {
        assert_eq!(doc["shutdown"][node], "exit 0", "{doc:#}");
    }
    for file in ["bench.json", "plot.svg", "latency-all.hgrm"] {
        assert!(dir.path().join("r").join(file).exists(), "{file}");
    }
}

#[test]
fn the_peak_finder_searches_a_node_cluster_and_reports_every_step() {
    let (dir, cluster) = cluster_dir(WALLETS);
    // The smoke workload with a short search: 30/s (which any machine sustains), ten times
    // more, and more until a step fails, then the confirmation around the last passing rate.
    let smoke = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bench/smoke.toml"),
    )
    .expect("read smoke.toml");
    let peak = "[peak]\nstart_rate_per_s = 100\nstep_s = 2\nrefine_steps = 0\nconfirm_repeats = 1\nconfirm_passes_min = 1\n";
    assert!(smoke.contains(peak), "smoke.toml's [peak] table");
    let profile = dir.path().join("peak.toml");
    std::fs::write(
        &profile,
        smoke.replace(
            peak,
            "[peak]\nstart_rate_per_s = 30\ngrowth = 10\nstep_s = 1\nrefine_steps = 0\nconfirm_repeats = 1\nconfirm_passes_min = 1\nsteps_max = 6\n",
        ),
    )
    .expect("write profile");
    let json = dir.path().join("b.json");
    let out = specie()
        .arg("bench")
        .arg("--profile")
        .arg(&profile)
        .arg("--cluster")
        .arg(&cluster)
        .arg("--find-peak")
        .arg("--json")
        .arg(&json)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("specie bench --find-peak --cluster");
    let show = format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no JSON ({e}): {show}")),
    )
    .expect("the report is JSON");
    assert_eq!(doc["mode"], "find_peak", "{doc:#}");
    assert_eq!(
        doc["audit"]["ok"], true,
        "the nodes' journals audit clean: {doc:#}"
    );
    let steps = doc["peak"]["steps"].as_array().expect("the search's steps");
    assert!(steps.len() >= 2 && steps.len() <= 6, "{show}");
    assert_eq!(steps[0]["stage"], "ramp");
    assert_eq!(steps[0]["rate_per_s"], 30.0);
    assert_eq!(steps[0]["pass"], true, "30/s holds anywhere: {show}");
    assert_eq!(
        steps[1]["rate_per_s"], 300.0,
        "the ramp grows by the profile's factor"
    );
    for step in steps {
        assert!(
            step["pass"].is_boolean() && step["why"].is_array(),
            "{step:#}"
        );
        assert!(step["committed"].as_u64().is_some(), "{step:#}");
    }
    assert_eq!(out.status.success(), doc["ok"] == true, "{show}");
    match doc["peak"]["sustainable_per_s"].as_f64() {
        Some(rate) => {
            assert_eq!(doc["ok"], true, "{show}");
            assert_eq!(doc["at_half_peak"]["rate_per_s"].as_f64(), Some(rate / 2.0));
            assert!(doc["at_half_peak"]["p99_ms"].as_f64().is_some());
        }
        None => {
            assert_eq!(doc["ok"], false, "no confirmed rate is not ok: {show}");
            assert!(doc["at_half_peak"].is_null());
        }
    }
}

#[test]
fn a_closed_loop_against_a_node_cluster_is_refused_with_the_way_out() {
    let out = specie()
        .arg("bench")
        .arg("--profile")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bench/million-wallets.toml"))
        .arg("--cluster")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster-3.toml"))
        .stdin(Stdio::null())
        .output()
        .expect("specie bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("closed") && err.contains("--rate") && err.contains("--find-peak"),
        "{err}"
    );
}
