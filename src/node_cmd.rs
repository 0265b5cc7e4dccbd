//! `specie node --config CLUSTER --id N`: one node of a multi-process cluster.
//!
//! Start-up: load and validate the cluster file, open (or create) the node's data directory,
//! serve Prometheus metrics, start tracing, link to the other nodes over gRPC (mutual TLS),
//! start this node's actors from the journal, serve the `Peer` and `Ingress` services, and run
//! this node's part of genesis; then take client operations.
//!
//! Fault control: the node's network runs with live fault rules (initially none) that the admin
//! service — `admin:` certificates only — installs and clears at run time
//! (`specie chaos run SCENARIO --cluster FILE`); each rule expires by itself.
//!
//! Graceful shutdown on SIGTERM or Ctrl-C: stop taking operations (new submissions get
//! `UNAVAILABLE`), let those in progress finish (bounded), let in-flight envelopes settle,
//! flush and close the peer links, stop the gRPC server, stop the actors, close the journal
//! (everything journaled is on disk), flush telemetry, exit 0.

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::FutureExt;
use specie_actors::ingress::{count_outcomes, Connector, Ingress};
use specie_actors::member::{node_of, Member};
use specie_actors::reconciler::Feed;
use specie_actors::DataDir;
use specie_runtime::admin::AdminService;
use specie_runtime::live_faults::LiveFaults;
use specie_runtime::telemetry::{self, MailboxGauges, Telemetry, TelemetryConfig};
use specie_runtime::topology::ClusterFile;
use specie_runtime::transport::{
    self, Incoming, PeerAddress, TlsMode, Transport, TransportSettings,
};
use specie_runtime::Network;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `specie node`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The cluster file (`config/cluster-3.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// This node's id, as listed in the cluster file.
    #[arg(long)]
    pub id: String,
    /// Seed of the cluster's keys (every node of a cluster must use the same; stored in the
    /// data directory at its creation).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write spans as JSON lines to this file (for a user without an OTLP collector).
    #[arg(long)]
    pub trace_file: Option<PathBuf>,
    /// How long this node's part of genesis may wait for the other nodes, in seconds.
    #[arg(long, default_value_t = 120)]
    pub genesis_timeout: u64,
    /// Shut down gracefully, as on SIGTERM, when standard input reaches its end: a controller
    /// that starts nodes with a pipe (chaos, bench, tests) takes them down with it even when
    /// it is killed itself.
    #[arg(long)]
    pub exit_with_stdin: bool,
    /// Switch on a deliberately wrong behaviour of the runtime (`early-ack`; builds with
    /// `--features planted-bugs` only), for chaos experiments that must catch it.
    #[arg(long)]
    pub planted_bug: Option<String>,
}

/// Switches on the planted bug named on the command line, if this build has it.
fn plant(name: Option<&str>) -> Result<()> {
    let Some(name) = name else { return Ok(()) };
    #[cfg(feature = "planted-bugs")]
    {
        if name == "early-ack" {
            specie_runtime::planted::set_early_ack(true);
            eprintln!("specie node: WARNING: planted bug early-ack is on (messages leave before they are durable)");
            return Ok(());
        }
        bail!("unknown planted bug `{name}` for a node; the runtime has: early-ack");
    }
    #[cfg(not(feature = "planted-bugs"))]
    bail!("--planted-bug {name} needs a build with the planted bugs compiled in (cargo build --features planted-bugs)")
}

/// Longest a forwarded request may take at the node it was forwarded to.
const FORWARD_TIMEOUT: Duration =
    Duration::from_millis(specie_actors::ingress::WAIT_MS_MAX as u64 + 10_000);

/// How long graceful shutdown waits for submissions in progress.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// Runs a node until SIGTERM / Ctrl-C.
pub fn run(args: NodeArgs) -> Result<()> {
    plant(args.planted_bug.as_deref())?;
    let file = ClusterFile::load(&args.config)?;
    let me = file.node_index(&args.id).with_context(|| {
        format!(
            "{}: no node `{}` (nodes: {})",
            file.origin,
            args.id,
            file.nodes
                .iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let spec = file.nodes[me].clone();
    let dir = DataDir::open_or_create(
        &spec.data_dir,
        &file.config_text,
        &file.origin,
        true,
        args.seed,
    )?;
    let tls = match file.tls.files(&spec.id) {
        Some((ca, cert, key)) => TlsMode::mutual(ca, cert, key).with_context(|| {
            format!(
                "node {}'s TLS identity (run `specie certs` first?)",
                spec.id
            )
        })?,
        None => {
            eprintln!(
                "specie node {}: WARNING: plaintext mode, no TLS (tls.mode = \"plaintext\")",
                spec.id
            );
            TlsMode::Plaintext
        }
    };
    telemetry::install_prometheus(spec.metrics)
        .with_context(|| format!("serving metrics on {}", spec.metrics))?;
    let system = actix::System::new();
    system.block_on(serve(args, file, me, dir, tls))
}

async fn serve(
    args: NodeArgs,
    file: ClusterFile,
    me: usize,
    dir: DataDir,
    tls: TlsMode,
) -> Result<()> {
    // Listen for SIGTERM / Ctrl-C once, from the start: a signal that arrives at any later
    // moment (during genesis, or just after it) is kept until it is awaited.
    let mut signals = Signals::new(args.exit_with_stdin)?;
    let spec = file.nodes[me].clone();
    let telemetry = Telemetry::start(TelemetryConfig::new(
        spec.id.clone(),
        &file.telemetry,
        args.trace_file.clone(),
    ))?;
    let network = Network::new();
    // Live fault rules (none until the admin service installs some), on every envelope this
    // node's actors send.
    let faults = Arc::new(LiveFaults::new(
        spec.id.clone(),
        file.config.cluster.institutions.len() as u32,
    ));
    network.set_fault_hook(faults.clone());
    tokio::spawn(faults.clone().expire_forever());
    // Peers are every other node, in file order; route addresses by placement.
    let peer_nodes: Vec<usize> = (0..file.nodes.len()).filter(|n| *n != me).collect();
    let peers = peer_nodes
        .iter()
        .map(|&n| PeerAddress::new(file.nodes[n].id.clone(), file.nodes[n].grpc.to_string()))
        .collect();
    let mut settings = TransportSettings::new(spec.id.clone(), peers, tls.clone());
    settings.queue_capacity = file.transport.queue_capacity;
    settings.backoff_base = Duration::from_millis(file.transport.reconnect_backoff_ms);
    settings.backoff_cap = Duration::from_millis(file.transport.reconnect_backoff_max_ms);
    let placement = file.placement.clone();
    let route = {
        let peer_nodes = peer_nodes.clone();
        Arc::new(move |address| {
            let node = node_of(&placement, address)?;
            peer_nodes.iter().position(|&p| p == node)
        })
    };
    let transport = Transport::start(network.clone(), settings, route)?;
    let member = Arc::new(Member::start(
        network,
        &dir,
        &spec.id,
        file.placement.clone(),
        me,
    )?);
    count_outcomes(&member);
    let reconciliation = member.start_reconciliation().await?;
    report_reconciliation(reconciliation.clone(), spec.id.clone());
    {
        let journal = member.journal().clone();
        faults.attach_journal(Arc::new(move |delay| journal.set_commit_delay(delay)));
    }
    let gauges = MailboxGauges::start(member.node().network(), Duration::from_secs(1))?;
    let connector: Connector = {
        let nodes = file.nodes.clone();
        let tls = tls.clone();
        Arc::new(move |n: usize| {
            let (address, name, tls) =
                (nodes[n].grpc.to_string(), nodes[n].id.clone(), tls.clone());
            async move {
                // A forwarded call waits at most `WAIT_MS_MAX` for its outcome; a peer that
                // does not answer well past that is treated as unreachable.
                transport::endpoint(&address, &name, &tls, Duration::from_secs(5))
                    .map(|e| e.timeout(FORWARD_TIMEOUT).connect_lazy())
                    .map_err(|e| e.to_string())
            }
            .boxed()
        })
    };
    let node_ids = file.nodes.iter().map(|n| n.id.clone()).collect();
    let ingress = Ingress::new(member.clone(), node_ids, connector);
    let incoming = Incoming::bind(spec.grpc, &tls)
        .await
        .with_context(|| format!("listening on {}", spec.grpc))?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = transport::server_builder()
        .add_service(transport.peer_service())
        .add_service(ingress.service())
        .add_service(AdminService::new(faults, !tls.is_tls()).server())
        .serve_with_incoming_shutdown(incoming, async {
            let _ = server_stopped.await;
        });
    let server = tokio::spawn(server);
    println!(
        "specie node {}: serving gRPC on {} ({}), metrics on http://{}/metrics, data in {}",
        spec.id,
        spec.grpc,
        if tls.is_tls() {
            "mutual TLS"
        } else {
            "plaintext"
        },
        spec.metrics,
        spec.data_dir.display()
    );
    let started = Instant::now();
    let genesis = member.genesis(Duration::from_secs(args.genesis_timeout));
    tokio::select! {
        result = genesis => result.context("genesis")?,
        _ = signals.recv() => {
            bail!("stopped by a signal during genesis");
        }
    }
    ingress.start_accepting();
    println!(
        "specie node {}: ready in {:.1} s — {} wallets here, peers connected: {}",
        spec.id,
        started.elapsed().as_secs_f64(),
        member.local_wallets(),
        transport.connected_peers().join(", ")
    );
    signals.recv().await;
    println!("specie node {}: shutting down", spec.id);
    ingress.stop_accepting();
    let deadline = Instant::now() + DRAIN_MAX;
    while ingress.in_progress() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Sends the platform-side records still held for the platform's node.
    reconciliation.stop();
    member.quiesce(Duration::from_secs(2)).await;
    transport.shutdown().await;
    let _ = stop_server.send(());
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), server).await {
        eprintln!("specie node {}: server task: {e}", spec.id);
    }
    // The batches still open are reconciled after the restart, with these records.
    if let Err(e) = member.keep_open_batches(&reconciliation) {
        eprintln!(
            "specie node {}: keeping the open reconciliation batches: {e}",
            spec.id
        );
    }
    member.shutdown();
    drop(gauges);
    if let Err(e) = telemetry.shutdown() {
        eprintln!("specie node {}: flushing telemetry: {e}", spec.id);
    }
    println!(
        "specie node {}: reconciliation — {}",
        spec.id,
        reconciliation.summary().line()
    );
    println!("specie node {}: stopped cleanly", spec.id);
    Ok(())
}

/// How often a node reports reconciliation (when batches were reconciled since).
const RECONCILE_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Prints a line every [`RECONCILE_REPORT_INTERVAL`] in which batches were reconciled.
fn report_reconciliation(feed: Feed, id: String) {
    actix::spawn(async move {
        let mut reported = 0;
        loop {
            tokio::time::sleep(RECONCILE_REPORT_INTERVAL).await;
            let summary = feed.summary();
            if summary.reconciled != reported {
                reported = summary.reconciled;
                println!("specie node {id}: reconcile — {}", summary.line());
            }
        }
    });
}

/// SIGTERM and SIGINT (Ctrl-C), listened to from when this is made.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    /// With `--exit-with-stdin`: resolves once standard input has ended.
    stdin_closed: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Signals {
    fn new(exit_with_stdin: bool) -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let stdin_closed = exit_with_stdin.then(|| {
            let (tx, rx) = tokio::sync::watch::channel(false);
            // A plain thread: reading stdin blocks, and it must not hold a runtime thread.
            std::thread::spawn(move || {
                let mut sink = [0u8; 256];
                let mut stdin = std::io::stdin().lock();
                while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
                let _ = tx.send(true);
            });
            rx
        });
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            stdin_closed,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT (or one received since the last call), or once
    /// standard input has ended (with `--exit-with-stdin`).
    async fn recv(&mut self) {
        let stdin_closed = async {
            match &mut self.stdin_closed {
                Some(rx) => {
                    let _ = rx.wait_for(|closed| *closed).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            _ = stdin_closed => {}
        }
    }
}
