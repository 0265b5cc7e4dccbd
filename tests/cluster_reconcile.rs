//! Continuous reconciliation across a real three-process cluster: three `specie node`
//! processes from a copy of `config/cluster-3.toml` (free ports, fewer wallets, short
//! reconciliation batches), payments between wallets on different nodes through the client
//! API, and then: the platform's node (the central bank's, n1) reconciled batches of
//! platform-side records made on every node (forwarded to it), every batch agreed and nothing
//! was found; the institutions' reconcilers on the other nodes took part (their batches
//! finished, their metrics count them); every node's last summary line shows no batch left in
//! progress; every node stops cleanly and the audit holds.

mod common;
use common::*;
use specie_protocol::grpc::ingress as g;
use specie_runtime::topology::ClusterFile;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Wallets of the test cluster: small, so genesis is quick in a debug build.
const WALLETS: u64 = 240;
/// The test's reconciliation batches: half a second wide, closed 2.5 s after their end.
const BATCH_INTERVAL_MS: u64 = 500;
const CLOSE_AFTER_MS: u64 = 2_500;

/// The shipped cluster file on free ports, with fewer wallets and short reconciliation batches.
fn write_cluster_file(work: &Path) -> PathBuf {
    let text = replace_in(
        &shipped_cluster(WALLETS),
        "\nbatch_interval_ms = 1000\n",
        &format!("\nbatch_interval_ms = {BATCH_INTERVAL_MS}\n"),
    );
    let text = replace_in(
        &text,
        "\nclose_after_ms = 5000\n",
        &format!("\nclose_after_ms = {CLOSE_AFTER_MS}\n"),
    );
    let path = work.join("cluster.toml");
    std::fs::write(&path, text).expect("write cluster file");
    path
}

/// Submits a payment until it is committed or aborted; returns whether it committed.
async fn pay(
    c: &mut g::IngressClient<Channel>,
    key: String,
    from: u64,
    to: u64,
    amount: u64,
) -> bool {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let reply = c
            .submit(g::SubmitRequest {
                idempotency_key: key.clone(),
                op: Some(g::submit_request::Op::Pay(g::PayOp { from, to, amount })),
                wait_ms: 5_000,
                forwarded: false,
            })
            .await;
        if let Ok(r) = reply {
            let state = r.into_inner().state;
            if state == g::OperationState::Committed as i32 {
                return true;
            }
            if state == g::OperationState::Aborted as i32 {
                return false;
            }
        }
        assert!(Instant::now() < deadline, "payment {key} never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last reconciliation line a node printed when it stopped.
fn final_summary(out: &str) -> Option<&str> {
    out.lines()
        .rev()
        .find(|l| l.contains(": reconciliation — "))
}

#[test]
fn three_node_processes_reconcile_payments_across_nodes_and_find_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path().to_path_buf();
    let certs = specie()
        .args(["certs", "--out", "certs", "--nodes", "n1,n2,n3"])
        .current_dir(&work)
        .output()
        .expect("specie certs");
    assert!(certs.status.success(), "{certs:?}");
    let file_path = write_cluster_file(&work);
    let file = ClusterFile::load(&file_path).expect("cluster file");
    assert_eq!(file.config.reconcile.batch_interval_ms, BATCH_INTERVAL_MS);
    let mut nodes = Nodes::new(&work, &file_path);
    for id in ["n1", "n2", "n3"] {
        nodes.start(id);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let certs_dir = work.join("certs");
    let committed = rt.block_on(async {
        let mut clients = Vec::new();
        for id in ["n1", "n2", "n3"] {
            let mut c = client(&file, id, &certs_dir).await;
            wait_ready(&mut c, &nodes, id).await;
            clients.push(c);
        }
        // Payments between wallets of every institution (wallet w banks with w % 4), most of
        // them across nodes, submitted through every node, 4 at a time.
        let mut committed = 0;
        for round in 0..15u64 {
            if round == 7 {
                // A graceful restart of n3 (institution `east`) mid-run: the records of its
                // batches still open are kept in its journal and reconciled after the restart,
                // so it costs no finding.
                nodes.terminate("n3");
                nodes.start("n3");
                wait_ready(&mut clients[2], &nodes, "n3").await;
            }
            let mut tasks = Vec::new();
            for j in 0..4u64 {
                let i = round * 4 + j;
                let from = (i * 13 + 5) % WALLETS;
                let to = (from + 1 + i % 7) % WALLETS;
                let mut c = clients[(i % 3) as usize].clone();
                tasks.push(tokio::spawn(async move {
                    pay(&mut c, format!("pay-{i}"), from, to, 100 + i).await
                }));
            }
            for task in tasks {
                committed += u32::from(task.await.expect("payment task"));
            }
        }
        committed
    });
    assert!(
        committed >= 40,
        "only {committed} payments committed\n{}",
        nodes.logs()
    );
    let paid_at = Instant::now();

    // Every batch closes CLOSE_AFTER_MS after its end; then the reconcilers compare. Wait for
    // that, then until the platform's count of reconciled batches stops moving.
    std::thread::sleep(Duration::from_millis(BATCH_INTERVAL_MS + CLOSE_AFTER_MS));
    let spec = |id: &str| file.nodes[file.node_index(id).expect("node")].clone();
    let batches = |text: &str| metric(text, "specie_reconcile_batches_total", "");
    let mut last = -1.0;
    let platform = loop {
        let text = scrape(spec("n1").metrics);
        let now = batches(&text);
        if now > 0.0 && now == last {
            break text;
        }
        assert!(
            paid_at.elapsed() < WAIT_MAX,
            "the platform's reconciliation never settled ({now} batches)\n{text}\n{}",
            nodes.logs()
        );
        last = now;
        std::thread::sleep(Duration::from_millis(1_500));
    };
    // The platform's node: batches reconciled, every one agreed, nothing found; it took
    // platform-side records forwarded by the other nodes and compared whole batches only.
    let agreed = metric(
        &platform,
        "specie_reconcile_batches_total",
        "result=\"agreed\"",
    );
    assert!(agreed > 0.0, "{platform}");
    assert_eq!(
        metric(
            &platform,
            "specie_reconcile_batches_total",
            "result=\"inconsistent\""
        ),
        0.0,
        "{platform}\n{}",
        nodes.logs()
    );
    assert_eq!(
        metric(&platform, "specie_reconcile_findings_total", ""),
        0.0,
        "{platform}"
    );
    assert!(
        metric(
            &platform,
            "specie_reconcile_forwarded_records_total",
            "direction=\"received\""
        ) > 0.0,
        "{platform}"
    );
    assert!(
        metric(
            &platform,
            "specie_reconcile_records_total",
            "side=\"platform\""
        ) > 0.0,
        "{platform}"
    );
    // The other nodes: their institutions' reconcilers finished batches (each counts its own
    // institutions'), they loaded institution-side records and forwarded platform-side ones.
    for id in ["n2", "n3"] {
        let text = scrape(spec(id).metrics);
        assert!(
            metric(&text, "specie_reconcile_batches_total", "result=\"agreed\"") > 0.0,
            "{id}: {text}"
        );
        assert_eq!(
            metric(&text, "specie_reconcile_findings_total", ""),
            0.0,
            "{id}"
        );
        assert!(
            metric(
                &text,
                "specie_reconcile_records_total",
                "side=\"institution\""
            ) > 0.0,
            "{id}: {text}"
        );
        assert_eq!(
            metric(&text, "specie_reconcile_records_total", "side=\"platform\""),
            0.0,
            "{id} has no platform reconciler: {text}"
        );
        assert!(
            metric(
                &text,
                "specie_reconcile_forwarded_records_total",
                "direction=\"sent\""
            ) > 0.0,
            "{id}: {text}"
        );
    }

    nodes.terminate_all();
    // Each node's last line: batches reconciled, none inconsistent, nothing found, none left
    // in progress.
    for id in ["n1", "n2", "n3"] {
        let out = nodes.log(id, "out");
        let line = final_summary(&out)
            .unwrap_or_else(|| panic!("{id} printed no reconciliation summary\n{out}"));
        eprintln!("{line}");
        assert!(
            line.contains(" agreed, 0 inconsistent), 0 findings"),
            "{id}: {line}"
        );
        assert!(line.contains("; 0 batches in progress"), "{id}: {line}");
        assert!(!line.contains(": 0 batches reconciled"), "{id}: {line}");
    }
    let audit = specie()
        .arg("audit")
        .arg("--cluster")
        .arg(&file_path)
        .current_dir(&work)
        .output()
        .expect("specie audit");
    assert!(
        audit.status.success(),
        "audit failed:\n{}\n{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
}
