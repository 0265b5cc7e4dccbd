//! A short smoke bench through the library, as `specie bench --profile config/bench/smoke.toml`
//! runs it: the report has the documented shape, the planted refusals were refused, and the
//! audit passed. No timing is asserted: throughput and latency are measurements, not tests.

use serde_json::Value;
use specie_bench::{Options, Profile};
use std::path::Path;

fn smoke_profile() -> Profile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/bench/smoke.toml");
    Profile::load(&path).expect("the shipped smoke profile is valid")
}

#[test]
fn smoke_bench_reports_the_documented_shape_and_passes_the_audit() {
    let profile = smoke_profile();
    assert!(
        profile.durable,
        "the smoke bench exercises the durable journal"
    );
    let options = Options {
        duration_s: Some(2.0),
        ..Options::default()
    };
    let report = specie_bench::run(&profile, &options).expect("the bench runs");
    let json = report.to_json();
    assert_eq!(report.problems(), Vec::<String>::new(), "{}", report.text());
    assert_eq!(json["ok"], Value::Bool(true));
    assert_eq!(json["profile"], "smoke");
    assert_eq!(json["durable"], Value::Bool(true));
    for key in [
        "throughput_per_s",
        "offered_per_s",
        "peak_rss_bytes",
        "bytes_per_wallet",
        "crypto_floor_verifies_per_s",
        "floor_ratio",
    ] {
        assert!(json[key].is_number(), "`{key}` is a number: {}", json[key]);
    }
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(json["latency_ms"][q].is_number(), "latency_ms.{q}");
    }
    assert!(json["latency_ms"]["p50"].as_f64() <= json["latency_ms"]["max"].as_f64());
    let by_kind = json["by_kind"].as_object().expect("by_kind is an object");
    assert!(by_kind.contains_key("pay_cross"), "{by_kind:?}");
    for (kind, k) in by_kind {
        assert!(k["latency_ms"]["p99"].is_number(), "{kind}");
        assert!(k["committed"].is_u64() && k["aborted"].is_u64(), "{kind}");
    }
    assert!(json["committed"].as_u64().expect("committed") > 0);
    assert!(json["peak_rss_bytes"].as_u64().expect("rss") > 0);
    assert!(json["crypto_floor_verifies_per_s"].as_f64().expect("floor") > 0.0);
    for (name, verdict) in json["invariants"].as_object().expect("invariants") {
        assert_eq!(verdict, "ok", "{name}");
    }
    // Every planted request that settled was refused, and none committed.
    for (class, p) in json["planted_refusals"].as_object().expect("planted") {
        assert_eq!(p["committed"].as_array().map(Vec::len), Some(0), "{class}");
    }
    assert!(!json["intervals"].as_array().expect("intervals").is_empty());

    let dir = tempfile::tempdir().expect("temp dir");
    let files = report.write_dir(dir.path()).expect("report folder");
    for f in [
        "bench.json",
        "plot.svg",
        "latency-all.hgrm",
        "latency-pay_cross.hgrm",
    ] {
        assert!(files.iter().any(|w| w == f), "{f} in {files:?}");
        assert!(
            dir.path().join(f).metadata().expect("written").len() > 0,
            "{f} is not empty"
        );
    }
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("bench.json")).expect("read"),
    )
    .expect("JSON");
    assert_eq!(written["ok"], Value::Bool(true));
    let hgrm = std::fs::read_to_string(dir.path().join("latency-all.hgrm")).expect("read");
    assert!(hgrm.contains("#[Max"), "{hgrm}");
}

#[test]
fn every_shipped_profile_is_valid_and_merge_profiles_offer_merges() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/bench");
    for name in [
        "smoke",
        "pay",
        "merge",
        "mixed",
        "contended",
        "million-wallets",
    ] {
        let p = Profile::load(&dir.join(format!("{name}.toml")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.name, name);
    }
    assert!(
        Profile::load(&dir.join("merge.toml"))
            .expect("valid")
            .workload
            .merge_percent
            > 0
    );
    assert!(
        Profile::load(&dir.join("mixed.toml"))
            .expect("valid")
            .workload
            .merge_percent
            > 0
    );
    let million = Profile::load(&dir.join("million-wallets.toml")).expect("valid");
    assert_eq!(million.cluster_config.cluster.wallets, 1_000_000);
}
