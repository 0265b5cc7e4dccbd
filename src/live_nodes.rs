//! The node processes of a live cluster, shared by the controllers that start them
//! (`specie chaos run --cluster`, `specie bench --cluster`): a work directory with a fresh
//! data directory per node and a copy of the cluster file pointing at them, starting and
//! stopping `specie node` processes with their logs, the clients' TLS identities, and waiting
//! until a node takes submissions.

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use specie_protocol::grpc::ingress as gi;
use specie_runtime::topology::{ClusterFile, TlsSettings};
use specie_runtime::transport::TlsMode;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Longest graceful shutdown of a node may take.
pub const SHUTDOWN_MAX: Duration = Duration::from_secs(60);

/// The node processes a controller (`specie chaos run --cluster`, `specie bench --cluster`)
/// started.
pub struct Procs {
    /// The specie binary.
    pub exe: PathBuf,
    /// The cluster file the nodes start with.
    pub config: PathBuf,
    /// Where each start's stdout and stderr go (`ID.N.out`, `ID.N.err`).
    pub logs: PathBuf,
    /// A planted bug switched on in every node (`--planted-bug`).
    pub planted: Option<String>,
    /// The node ids, in the cluster file's order.
    pub ids: Vec<String>,
    /// The running process of each node.
    pub children: Vec<Option<Child>>,
    /// How many times each node was started.
    pub starts: Vec<u32>,
}

impl Procs {
    /// Starts (or restarts) node `node`, its output to fresh log files.
    pub fn start(&mut self, node: usize) -> Result<()> {
        self.starts[node] += 1;
        let id = &self.ids[node];
        let n = self.starts[node];
        let log = |kind: &str| -> Result<std::fs::File> {
            let path = self.logs.join(format!("{id}.{n}.{kind}"));
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
        };
        let mut cmd = Command::new(&self.exe);
        // `--exit-with-stdin` and a pipe the controller holds: if the controller dies (even
        // by SIGKILL), the pipe closes and the node shuts down instead of running orphaned.
        cmd.args(["node", "--exit-with-stdin", "--id", id, "--config"])
            .arg(&self.config);
        if let Some(bug) = &self.planted {
            cmd.args(["--planted-bug", bug]);
        }
        // Its own process group: a Ctrl-C in the terminal reaches the controller, which
        // clears the rules and stops the nodes in order.
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(log("out")?)
            .stderr(log("err")?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting node {id} ({})", self.exe.display()))?;
        self.children[node] = Some(child);
        Ok(())
    }

    /// SIGKILLs node `node` and reaps it.
    pub fn kill9(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether node `node` has a process.
    pub fn is_up(&self, node: usize) -> bool {
        self.children[node].is_some()
    }

    /// The exit status of a node that stopped by itself.
    pub fn exited(&mut self, node: usize) -> Option<ExitStatus> {
        self.children[node]
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last lines of node `node`'s current logs.
    pub fn log_tail(&self, node: usize) -> String {
        let id = &self.ids[node];
        let n = self.starts[node];
        let mut out = String::new();
        for kind in ["out", "err"] {
            let path = self.logs.join(format!("{id}.{n}.{kind}"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let _ = writeln!(out, "--- {}", path.display());
            for line in &lines[lines.len().saturating_sub(15)..] {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// The process ids of the running nodes, in the cluster file's order.
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.children
            .iter()
            .map(|c| c.as_ref().map(Child::id))
            .collect()
    }

    /// SIGTERM to every running node, then waits: (node, how it exited).
    pub fn terminate_all(&mut self) -> Vec<(String, Result<ExitStatus, String>)> {
        for child in self.children.iter().flatten() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + SHUTDOWN_MAX;
        let mut out = Vec::new();
        for (i, slot) in self.children.iter_mut().enumerate() {
            let Some(mut child) = slot.take() else {
                continue;
            };
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(format!(
                            "did not stop within {} s of SIGTERM; killed",
                            SHUTDOWN_MAX.as_secs()
                        ));
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    Err(e) => break Err(e.to_string()),
                }
            };
            out.push((self.ids[i].clone(), status));
        }
        out
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The TLS identity `identity` (`client`, `admin`) of the cluster file's certificate
/// directory, or plaintext.
pub fn tls_for(file: &ClusterFile, identity: &str) -> Result<TlsMode> {
    match file.tls.files(identity) {
        None => Ok(TlsMode::Plaintext),
        Some((ca, cert, key)) => TlsMode::mutual(ca, &cert, key).with_context(|| {
            format!(
                "the {identity} identity {} (run `specie certs --out DIR --nodes ...` first)",
                cert.display()
            )
        }),
    }
}

/// Resolves a relative path against the current directory.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(path))
}

/// Prepares the work directory: a fresh data directory per node, and a copy of the cluster
/// file pointing at them (certificates resolved to absolute paths).
/// `command` names the tool in messages (`specie chaos run --cluster`); its marker file
/// (`marker`) tells a work directory it made, whose `data/` it may clear, from anything else.
pub fn prepare_work(
    work: &Path,
    file: &ClusterFile,
    cluster: &Path,
    marker: &str,
    command: &str,
) -> Result<PathBuf> {
    if work.exists() {
        let empty = std::fs::read_dir(work)
            .with_context(|| format!("reading {}", work.display()))?
            .next()
            .is_none();
        if !empty && !work.join(marker).exists() {
            bail!(
                "{}: exists and was not made by `{command}`; name another --work directory",
                work.display()
            );
        }
        let data = work.join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("clearing {}", data.display()))?;
        }
    }
    for dir in [work.to_path_buf(), work.join("data"), work.join("logs")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(
        work.join(marker),
        format!("made by `{command}`; its data/ is cleared at the next run\n"),
    )
    .with_context(|| format!("writing {}", work.join(marker).display()))?;
    let text = std::fs::read_to_string(cluster)
        .with_context(|| format!("{}: cannot read", cluster.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not TOML", cluster.display()))?;
    let data = absolute(&work.join("data"))?;
    if let Some(toml::Value::Array(nodes)) = table.get_mut("node") {
        for node in nodes.iter_mut() {
            if let Some(t) = node.as_table_mut() {
                let id = t
                    .get("id")
                    .and_then(|v| v.as_str())
                    .unwrap_or("node")
                    .to_string();
                t.insert(
                    "data_dir".into(),
                    toml::Value::String(data.join(&id).display().to_string()),
                );
            }
        }
    }
    if let TlsSettings::Mutual { dir } = &file.tls {
        if let Some(toml::Value::Table(tls)) = table.get_mut("tls") {
            tls.insert(
                "dir".into(),
                toml::Value::String(absolute(dir)?.display().to_string()),
            );
        }
    }
    let copy = work.join("cluster.toml");
    let header = format!(
        "# Written by `{command} {}`: the same cluster with its data in {}.\n",
        cluster.display(),
        data.display()
    );
    std::fs::write(
        &copy,
        header + &toml::to_string(&table).context("writing the cluster file copy")?,
    )
    .with_context(|| format!("writing {}", copy.display()))?;
    // The copy must still be a valid cluster file.
    ClusterFile::load(&copy)?;
    Ok(copy)
}

/// Waits until a node takes submissions: a payment of 0 is refused as invalid, not as
/// unavailable.
/// `procs` are the processes the controller started (none when it attached): a node that
/// exits during start-up fails at once, with its log.
pub async fn wait_ready(
    ingress: &gi::IngressClient<Channel>,
    file: &ClusterFile,
    node: usize,
    procs: &Mutex<Option<Procs>>,
    bound: Duration,
) -> Result<()> {
    let deadline = Instant::now() + bound;
    let mut c = ingress.clone();
    loop {
        let probe = tokio::time::timeout(
            Duration::from_secs(5),
            c.submit(gi::SubmitRequest {
                idempotency_key: "readiness-probe".into(),
                op: Some(gi::submit_request::Op::Pay(gi::PayOp {
                    from: 0,
                    to: 1,
                    amount: 0,
                })),
                wait_ms: 0,
                forwarded: false,
            }),
        )
        .await;
        if let Ok(Err(s)) = &probe {
            if s.code() == tonic::Code::InvalidArgument {
                return Ok(());
            }
        }
        if let Some(procs) = procs.lock().as_mut() {
            if let Some(status) = procs.exited(node) {
                bail!(
                    "node {} exited during start-up ({status}); is another cluster already using its ports?\n{}",
                    file.nodes[node].id,
                    procs.log_tail(node)
                );
            }
        }
        if Instant::now() > deadline {
            let why = match probe {
                Ok(Err(s)) => s.message().to_string(),
                Ok(Ok(_)) => "answered a probe it should refuse".into(),
                Err(_) => "no answer".into(),
            };
            let tail = procs
                .lock()
                .as_ref()
                .map(|p| p.log_tail(node))
                .unwrap_or_default();
            bail!(
                "node {} at {} was not ready within {} s: {why}\n{tail}",
                file.nodes[node].id,
                file.nodes[node].grpc,
                bound.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
