//! A real three-process cluster, tested as a platform team would run it: `specie certs`
//! makes the PKI, three `specie node` processes start from a copy of `config/cluster-3.toml`
//! on free ports, payments and merges across institutions on different nodes are driven
//! through the client API, one node is killed with SIGKILL mid-load and restarted, and then:
//! every acknowledged operation is committed, resubmitting a key returns the recorded
//! outcome through any node (forwarding), a client with a certificate of another CA is
//! refused and counted, the nodes' metrics agree with the client's counts, every node stops
//! cleanly on SIGTERM (exit 0), and `specie audit --cluster` finds every invariant holding.

mod common;
use common::*;
use specie_protocol::grpc::ingress as g;
use specie_runtime::topology::ClusterFile;
use specie_runtime::transport::{self, TlsMode};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Wallets of the test cluster: small, so genesis is quick in a debug build.
const WALLETS: u64 = 240;

/// The shipped three-node cluster file on free ports, with fewer wallets and full tracing.
fn write_cluster_file(work: &Path) -> PathBuf {
    let text = replace_in(
        &shipped_cluster(WALLETS),
        "sampling_ratio = 0.01\n",
        "sampling_ratio = 1.0\n",
    );
    let path = work.join("cluster.toml");
    std::fs::write(&path, text).expect("write cluster file");
    path
}

/// One client operation and what the cluster answered.
#[derive(Debug, Clone)]
struct Op {
    key: String,
    request: g::submit_request::Op,
    kind: &'static str,
    wallet_node: String,
    saga: Vec<u8>,
    state: i32,
}

/// Submits until a definitive answer (committed or aborted), retrying the same key through
/// the nodes in turn while one is down.
async fn drive(clients: &mut [g::IngressClient<Channel>], op: &mut Op, start: usize) {
    let deadline = Instant::now() + WAIT_MAX;
    let mut attempt = start;
    loop {
        let c = &mut clients[attempt % clients.len()];
        let reply = c
            .submit(g::SubmitRequest {
                idempotency_key: op.key.clone(),
                op: Some(op.request.clone()),
                wait_ms: 5_000,
                forwarded: false,
            })
            .await;
        if let Ok(r) = reply {
            let r = r.into_inner();
            op.saga = r.saga_id.to_vec();
            op.wallet_node = r.node;
            op.state = r.state;
            if r.state == g::OperationState::Committed as i32
                || r.state == g::OperationState::Aborted as i32
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{op:?} never finished");
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn three_node_processes_settle_survive_a_kill_and_stay_consistent() {
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path().to_path_buf();
    let certs = specie()
        .args(["certs", "--out", "certs", "--nodes", "n1,n2,n3"])
        .current_dir(&work)
        .output()
        .expect("specie certs");
    assert!(certs.status.success(), "{certs:?}");
    let foreign = specie()
        .args(["certs", "--out", "foreign", "--nodes", "n1"])
        .current_dir(&work)
        .output()
        .expect("specie certs (foreign CA)");
    assert!(foreign.status.success(), "{foreign:?}");
    let file_path = write_cluster_file(&work);
    let file = ClusterFile::load(&file_path).expect("cluster file");
    let mut nodes = Nodes::new(&work, &file_path).with_trace_files();
    for id in ["n1", "n2", "n3"] {
        nodes.start(id);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let certs_dir = work.join("certs");
    let ops = rt.block_on(async {
        let mut clients = Vec::new();
        for id in ["n1", "n2", "n3"] {
            let mut c = client(&file, id, &certs_dir).await;
            wait_ready(&mut c, &nodes, id).await;
            clients.push(c);
        }
        // Payments across institutions (wallet w banks with institution w % 4, which the
        // cluster file spreads over the three nodes) and merges, 4 at a time, with node n2
        // killed while a third of them are done and more are in flight, then restarted.
        let mut ops: Vec<Op> = Vec::new();
        for i in 0..90u64 {
            let from = (i * 7) % WALLETS;
            let (request, kind) = if i % 6 == 5 {
                (
                    g::submit_request::Op::Merge(g::MergeOp {
                        wallet: (i * 11 + 3) % WALLETS,
                        coin_ids: vec![],
                    }),
                    "merge",
                )
            } else {
                (
                    g::submit_request::Op::Pay(g::PayOp {
                        from,
                        to: (from + 1 + i % 5) % WALLETS,
                        amount: 100 + i,
                    }),
                    "pay",
                )
            };
            ops.push(Op {
                key: format!("op-{i}"),
                request,
                kind,
                wallet_node: String::new(),
                saga: vec![],
                state: 0,
            });
        }
        let mut done = 0;
        for chunk in ops.chunks_mut(4) {
            let mut tasks = Vec::new();
            for (j, op) in chunk.iter_mut().enumerate() {
                let mut cs = clients.clone();
                let mut op = op.clone();
                tasks.push(tokio::spawn(async move {
                    drive(&mut cs, &mut op, j).await;
                    op
                }));
            }
            if done == 32 {
                // Mid-load: this chunk's operations are on their way when n2 dies.
                tokio::time::sleep(Duration::from_millis(5)).await;
                nodes.kill9("n2");
                tokio::time::sleep(Duration::from_millis(300)).await;
                nodes.start("n2");
            }
            for (slot, task) in chunk.iter_mut().zip(tasks) {
                *slot = task.await.expect("driver task");
            }
            done += chunk.len();
        }
        ops
    });
    let committed = |kind: &str, node: Option<&str>| {
        ops.iter()
            .filter(|o| o.kind == kind && o.state == g::OperationState::Committed as i32)
            .filter(|o| node.is_none_or(|n| o.wallet_node == n))
            .count() as f64
    };
    eprintln!(
        "committed: {} pays, {} merges; on n2: {} pays; aborted: {:?}",
        committed("pay", None),
        committed("merge", None),
        committed("pay", Some("n2")),
        ops.iter()
            .filter(|o| o.state == g::OperationState::Aborted as i32)
            .map(|o| &o.key)
            .collect::<Vec<_>>()
    );
    assert_eq!(nodes.starts("n2"), 2, "n2 was killed and restarted");
    assert!(committed("pay", None) >= 60.0, "{ops:#?}\n{}", nodes.logs());
    assert!(committed("merge", None) >= 5.0, "{ops:#?}");

    rt.block_on(async {
        let mut clients = Vec::new();
        for id in ["n1", "n2", "n3"] {
            clients.push(client(&file, id, &certs_dir).await);
        }
        // Every acknowledged operation is committed, asked through every node (forwarding),
        // and resubmitting its key returns the recorded outcome without starting anything.
        for (i, op) in ops.iter().enumerate() {
            let c = &mut clients[i % 3];
            let status = c
                .status(g::SagaStatusRequest {
                    saga_id: op.saga.clone().into(),
                    forwarded: false,
                })
                .await
                .expect("status")
                .into_inner();
            assert_eq!(status.state, op.state, "{op:?}: {status:?}");
            assert_eq!(status.node, op.wallet_node);
            let again = clients[(i + 1) % 3]
                .submit(g::SubmitRequest {
                    idempotency_key: op.key.clone(),
                    op: Some(op.request.clone()),
                    wait_ms: 1_000,
                    forwarded: false,
                })
                .await
                .expect("resubmission")
                .into_inner();
            assert!(again.resubmitted, "{op:?}: {again:?}");
            assert_eq!(again.saga_id.to_vec(), op.saga);
            assert_eq!(again.state, op.state);
        }
        // A client presenting a certificate of another CA is refused.
        // (It trusts the cluster's CA, so the refusal is the node's, not the client's.)
        let foreign = TlsMode::mutual(
            work.join("certs/ca.pem"),
            work.join("foreign/client.pem"),
            work.join("foreign/client.key"),
        )
        .expect("foreign identity");
        let spec = &file.nodes[0];
        let channel = transport::endpoint(
            &spec.grpc.to_string(),
            "n1",
            &foreign,
            Duration::from_secs(2),
        )
        .expect("endpoint")
        .connect_lazy();
        let refused = g::IngressClient::new(channel)
            .balance(g::WalletBalanceRequest {
                wallet: 0,
                forwarded: false,
            })
            .await;
        assert!(
            refused.is_err(),
            "a foreign certificate was accepted: {refused:?}"
        );
    });

    // The command-line client: a payment through n3 for a wallet elsewhere, resubmitted
    // through n1 with the same key, then its status and the payee's balance.
    let cli = |args: &[&str]| -> serde_json::Value {
        let out = specie()
            .args(["client", "--json", "--config"])
            .arg(&file_path)
            .args(args)
            .current_dir(&work)
            .output()
            .expect("specie client");
        assert!(out.status.success(), "specie client {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("client JSON")
    };
    let payer = (0..WALLETS)
        .find(|w| file.placement.wallet_node(*w) != 2)
        .expect("a wallet off n3");
    let payee = (payer + 1) % WALLETS;
    // Coins of earlier payments may still be on their way: wait for a settled balance.
    let balance = |w: u64| {
        cli(&["balance", &w.to_string()])["coins_total_fen"]
            .as_u64()
            .expect("balance")
    };
    let mut before = balance(payee);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = balance(payee);
        if now == before {
            break;
        }
        before = now;
    }
    let pay = [
        "pay",
        "--from",
        &payer.to_string(),
        "--to",
        &payee.to_string(),
        "--amount",
        "777",
        "--key",
        "cli-1",
    ];
    let first = cli(&[&["--node", "n3"], &pay[..]].concat());
    assert_eq!(first["state"], "committed", "{first}");
    assert_eq!(first["resubmitted"], false);
    assert_ne!(
        first["node"], "n3",
        "the request was forwarded to the payer's node"
    );
    let again = cli(&[&["--node", "n1"], &pay[..]].concat());
    assert_eq!(again["resubmitted"], true, "{again}");
    assert_eq!(again["saga_id"], first["saga_id"]);
    let status = cli(&["status", first["saga_id"].as_str().expect("saga id")]);
    assert_eq!(status["state"], "committed", "{status}");
    // The payee's new coin arrives from its institution shortly after the payer's outcome.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now = balance(payee);
        if now >= before + 777 || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(after, before + 777, "paid once, not twice");

    // Metrics agree with what the client saw. n1 and n3 ran from the start, so their
    // counters hold every saga of their wallets; n2's restarted from zero with its process.
    let mut refused = 0.0;
    for (n, spec) in file.nodes.iter().enumerate() {
        let text = scrape(spec.metrics);
        for kind in ["pay", "merge"] {
            let counted = metric(
                &text,
                "specie_sagas_committed_total",
                &format!("kind=\"{kind}\""),
            );
            let cli_pay = u64::from(kind == "pay" && first["node"] == spec.id.as_str());
            let seen = committed(kind, Some(&spec.id)) + cli_pay as f64;
            if spec.id == "n2" {
                assert!(counted <= seen, "{kind} on n2: {counted} > {seen}");
            } else {
                assert_eq!(counted, seen, "{kind} committed on node {n}:\n{text}");
            }
        }
        refused += metric(&text, "specie_tls_refused_total", "");
        assert!(text.contains("specie_peer_connected"), "{text}");
        assert!(text.contains("specie_journal_fsync_seconds"), "{text}");
    }
    assert!(
        refused >= 1.0,
        "the foreign certificate's refusal was not counted"
    );

    nodes.terminate_all();
    let audit = specie()
        .arg("audit")
        .arg("--cluster")
        .arg(&file_path)
        .arg("--json")
        .arg(work.join("audit.json"))
        .current_dir(&work)
        .output()
        .expect("specie audit");
    assert!(
        audit.status.success(),
        "audit failed:\n{}\n{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
    // Moving an institution to another node in the cluster file would start it empty there:
    // the node refuses its data directory instead, naming the placement.
    let text = std::fs::read_to_string(&file_path).expect("cluster file");
    let moved = text.replace("east = \"n3\"", "east = \"n1\"");
    assert_ne!(moved, text, "the cluster file places east on n3");
    let moved_path = work.join("moved.toml");
    std::fs::write(&moved_path, moved).expect("write moved cluster file");
    let refused = specie()
        .args(["node", "--id", "n1", "--config"])
        .arg(&moved_path)
        .current_dir(&work)
        .output()
        .expect("specie node");
    assert!(!refused.status.success(), "a moved placement was accepted");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("placement"), "{stderr}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("audit.json")).unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    // Every saga is traced (ratio 1.0): each node wrote spans to its trace file.
    for id in ["n1", "n2", "n3"] {
        let spans =
            std::fs::read_to_string(work.join(format!("{id}.spans.jsonl"))).unwrap_or_default();
        assert!(spans.lines().count() > 0, "node {id} wrote no spans");
    }
}
