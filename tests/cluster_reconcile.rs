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
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Wallets of the test cluster: small, so genesis is quick in a debug build.
const WALLETS: u64 = 240;
/// Bound on any wait, so a broken cluster fails the test instead of hanging it.
const WAIT_MAX: Duration = Duration::from_secs(120);
/// The test's reconciliation batches: half a second wide, closed 2.5 s after their end.
const BATCH_INTERVAL_MS: u64 = 500;
const CLOSE_AFTER_MS: u64 = 2_500;

/// The shipped cluster file on free ports, with fewer wallets and short reconciliation batches.
fn write_cluster_file(work: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster-3.toml"),
    )
    .expect("read config/cluster-3.toml");
    for port in ["7101", "7102", "7103", "9101", "9102", "9103"] {
        let quoted = format!("127.0.0.1:{port}\"");
        assert!(text.contains(&quoted), "cluster-3.toml uses {port}");
        text = text.replace(&quoted, &format!("127.0.0.1:{}\"", free_port()));
    }
    for (from, to) in [
        (
            "\nwallets = 3000\n".to_string(),
            format!("\nwallets = {WALLETS}\n"),
        ),
        (
            "\nbatch_interval_ms = 1000\n".to_string(),
            format!("\nbatch_interval_ms = {BATCH_INTERVAL_MS}\n"),
        ),
        (
            "\nclose_after_ms = 5000\n".to_string(),
            format!("\nclose_after_ms = {CLOSE_AFTER_MS}\n"),
        ),
    ] {
        assert!(text.contains(&from), "cluster-3.toml has {from:?}");
        text = text.replace(&from, &to);
    }
    let path = work.join("cluster.toml");
    std::fs::write(&path, text).expect("write cluster file");
    path
}

struct Nodes {
    work: PathBuf,
    file: PathBuf,
    children: BTreeMap<String, Child>,
}

impl Nodes {
    fn start(&mut self, id: &str) {
        let log = |kind: &str| {
            std::fs::File::create(self.work.join(format!("{id}.{kind}"))).expect("log file")
        };
        let child = specie()
            .args(["node", "--id", id, "--config"])
            .arg(&self.file)
            .current_dir(&self.work)
            .stdout(log("out"))
            .stderr(log("err"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start specie node");
        self.children.insert(id.to_string(), child);
    }

    /// SIGTERM one node and wait for it: it must exit 0.
    fn terminate(&mut self, id: &str) {
        let mut child = self.children.remove(id).expect("running node");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "signal {id}");
        let exit = child.wait().expect("wait");
        assert!(exit.success(), "node {id} did not stop cleanly: {exit}");
    }

    fn log(&self, id: &str, kind: &str) -> String {
        std::fs::read_to_string(self.work.join(format!("{id}.{kind}"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for id in ["n1", "n2", "n3"] {
            for kind in ["out", "err"] {
                let text = self.log(id, kind);
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                all.push_str(&format!("--- {id}.{kind}\n"));
                for line in tail.into_iter().rev() {
                    all.push_str(line);
                    all.push('\n');
                }
            }
        }
        all
    }

    /// SIGTERM every node and wait: each must exit 0 (graceful shutdown).
    fn terminate_all(&mut self) {
        for (id, child) in &self.children {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill -TERM");
            assert!(status.success(), "signal {id}");
        }
        let deadline = Instant::now() + WAIT_MAX;
        for (id, mut child) in std::mem::take(&mut self.children) {
            loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    assert!(
                        status.success(),
                        "node {id} did not exit cleanly on SIGTERM: {status}\n{}",
                        self.logs()
                    );
                    break;
                }
                assert!(Instant::now() < deadline, "node {id} ignores SIGTERM");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `node` takes submissions (genesis done): a submission refused as invalid
/// (not unavailable).
async fn wait_ready(c: &mut g::IngressClient<Channel>, nodes: &Nodes, node: &str) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let probe = c
            .submit(g::SubmitRequest {
                idempotency_key: "readiness-probe".into(),
                op: Some(g::submit_request::Op::Pay(g::PayOp {
                    from: 0,
                    to: 1,
                    amount: 0,
                })),
                wait_ms: 0,
                forwarded: false,
            })
            .await;
        match probe {
            Err(s) if s.code() == tonic::Code::InvalidArgument => return,
            _ if Instant::now() > deadline => {
                panic!(
                    "node {node} never became ready: {probe:?}\n{}",
                    nodes.logs()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
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
    let mut nodes = Nodes {
        work: work.clone(),
        file: file_path.clone(),
        children: BTreeMap::new(),
    };
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
