//! Helpers shared by the tests that run `specie` processes: the binary, free ports, the
//! shipped cluster file and PKI, node processes, a client of a node's ingress, and reading a
//! node's Prometheus metrics.
// Each test binary uses a part of these.
#![allow(dead_code)]

use specie_protocol::grpc::ingress as g;
use specie_runtime::topology::ClusterFile;
use specie_runtime::transport::{self, TlsMode};
use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The `specie` binary of this build.
pub fn specie() -> Command {
    Command::new(env!("CARGO_BIN_EXE_specie"))
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A lazily connected client of `node`'s ingress, presenting the client certificate in `certs`.
pub async fn client(file: &ClusterFile, node: &str, certs: &Path) -> g::IngressClient<Channel> {
    let spec = &file.nodes[file.node_index(node).expect("node")];
    let tls = TlsMode::mutual(
        certs.join("ca.pem"),
        certs.join("client.pem"),
        certs.join("client.key"),
    )
    .expect("client identity");
    let channel = transport::endpoint(&spec.grpc.to_string(), node, &tls, Duration::from_secs(2))
        .expect("endpoint")
        .connect_lazy();
    g::IngressClient::new(channel)
}

/// The Prometheus text a node serves at `addr`.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read metrics");
    body
}

/// Sum of a metric's samples whose labels contain `label` (e.g. `kind="pay"`).
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Bound on any wait of these tests, so that a broken cluster fails the test instead of
/// hanging it.
pub const WAIT_MAX: Duration = Duration::from_secs(120);

/// Makes the development PKI (a CA; certificates for nodes n1–n3, a client and an admin) in
/// `dir/certs`.
pub fn dev_certs(dir: &Path) {
    let certs = specie()
        .args(["certs", "--out", "certs", "--nodes", "n1,n2,n3"])
        .current_dir(dir)
        .output()
        .expect("specie certs");
    assert!(certs.status.success(), "{certs:?}");
}

/// The shipped three-node cluster file (`config/cluster-3.toml`) on free ports, with
/// `wallets` wallets (a small number keeps genesis quick in a debug build).
pub fn shipped_cluster(wallets: u64) -> String {
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster-3.toml"),
    )
    .expect("read config/cluster-3.toml");
    for port in ["7101", "7102", "7103", "9101", "9102", "9103"] {
        let quoted = format!("127.0.0.1:{port}\"");
        assert!(text.contains(&quoted), "cluster-3.toml uses {port}");
        text = text.replace(&quoted, &format!("127.0.0.1:{}\"", free_port()));
    }
    replace_in(
        &text,
        "\nwallets = 3000\n",
        &format!("\nwallets = {wallets}\n"),
    )
}

/// `text` with `from` replaced by `to`; `from` must be there (the shipped file changed).
pub fn replace_in(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the shipped config has {from:?}");
    text.replace(from, to)
}

/// A fresh directory with the development PKI and the shipped cluster file (on free ports,
/// with `wallets` wallets) written as `cluster.toml`.
pub fn cluster_dir(wallets: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    dev_certs(dir.path());
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, shipped_cluster(wallets)).expect("write cluster file");
    (dir, path)
}

/// `specie node` processes of one cluster file, started by a test. They exit when the test
/// process does (`--exit-with-stdin`), and are killed when this is dropped. Each start of a
/// node logs to `ID.N.out` and `ID.N.err` in the work directory.
pub struct Nodes {
    work: PathBuf,
    file: PathBuf,
    trace: bool,
    children: BTreeMap<String, Child>,
    starts: HashMap<String, u32>,
}

impl Nodes {
    /// Nodes of the cluster file `file`, run in `work`.
    pub fn new(work: &Path, file: &Path) -> Nodes {
        Nodes {
            work: work.to_path_buf(),
            file: file.to_path_buf(),
            trace: false,
            children: BTreeMap::new(),
            starts: HashMap::new(),
        }
    }

    /// Each node writes its spans to `ID.spans.jsonl` in the work directory.
    pub fn with_trace_files(mut self) -> Nodes {
        self.trace = true;
        self
    }

    /// Starts node `id` (again, after a kill or a stop).
    pub fn start(&mut self, id: &str) {
        let n = self.starts.entry(id.to_string()).or_insert(0);
        *n += 1;
        let log = |kind: &str| {
            std::fs::File::create(self.work.join(format!("{id}.{n}.{kind}"))).expect("log file")
        };
        let mut command = specie();
        command
            .args(["node", "--exit-with-stdin", "--id", id, "--config"])
            .arg(&self.file);
        if self.trace {
            command
                .arg("--trace-file")
                .arg(self.work.join(format!("{id}.spans.jsonl")));
        }
        let child = command
            .current_dir(&self.work)
            .stdout(log("out"))
            .stderr(log("err"))
            .stdin(Stdio::piped())
            .spawn()
            .expect("start specie node");
        self.children.insert(id.to_string(), child);
    }

    /// How many times node `id` was started.
    pub fn starts(&self, id: &str) -> u32 {
        self.starts.get(id).copied().unwrap_or(0)
    }

    /// What the latest start of node `id` wrote to its `kind` ("out" or "err").
    pub fn log(&self, id: &str, kind: &str) -> String {
        let n = self.starts(id);
        std::fs::read_to_string(self.work.join(format!("{id}.{n}.{kind}"))).unwrap_or_default()
    }

    /// The last lines of every log of every start, for a failure message.
    pub fn logs(&self) -> String {
        let mut ids: Vec<(&String, &u32)> = self.starts.iter().collect();
        ids.sort();
        let mut all = String::new();
        for (id, n) in ids {
            for i in 1..=*n {
                for kind in ["out", "err"] {
                    let path = self.work.join(format!("{id}.{i}.{kind}"));
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    all.push_str(&format!("--- {}\n", path.display()));
                    for line in tail.into_iter().rev() {
                        all.push_str(line);
                        all.push('\n');
                    }
                }
            }
        }
        all
    }

    /// SIGKILLs node `id`.
    pub fn kill9(&mut self, id: &str) {
        let mut child = self.children.remove(id).expect("running node");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// SIGTERMs node `id` and waits for it: it must exit 0.
    pub fn terminate(&mut self, id: &str) {
        let mut child = self.children.remove(id).expect("running node");
        sigterm(id, &child);
        let exit = child.wait().expect("wait");
        assert!(exit.success(), "node {id} did not stop cleanly: {exit}");
    }

    /// SIGTERMs every node and waits: each must exit 0 (graceful shutdown).
    pub fn terminate_all(&mut self) {
        for (id, child) in &self.children {
            sigterm(id, child);
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

fn sigterm(id: &str, child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success(), "signal {id}");
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
pub async fn wait_ready(c: &mut g::IngressClient<Channel>, nodes: &Nodes, node: &str) {
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
