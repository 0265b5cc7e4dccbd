//! The transport between processes, with two networks in one test process: envelopes cross
//! peer links over mutual TLS both ways and reach registered mailboxes; a link reconnects after
//! the other node restarts and delivers what was queued meanwhile; a certificate from another
//! CA (or none) is refused and counted in `specie_tls_refused_total`; a certificate that is not
//! a node's cannot open a link; plaintext mode works when asked for.
//!
//! Every wait is bounded by a generous timeout that fails the test instead of hanging it; no
//! assertion depends on timing.

use actix::prelude::*;
use parking_lot::Mutex;
use specie_protocol::grpc::peer::{PeerClient, PeerFrame, PeerFrameKind, PeerHello};
use specie_protocol::{Address, Amount, Envelope, Payload, SagaId, WalletId};
use specie_runtime::transport::{
    channel, generate_dev_pki, server_builder, DevPki, Incoming, PeerAddress, PkiRequest,
    Placement, TlsIdentity, TlsMode, Transport, TransportSettings,
};
use specie_runtime::{Deliver, Network};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A generous bound on anything that should take milliseconds: a hung test fails instead.
const WAIT_MAX: Duration = Duration::from_secs(30);

// ---- a metrics recorder that keeps counters and gauges, by name and labels ----

#[derive(Default)]
struct TestRecorder {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

fn metric_key(key: &metrics::Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl TestRecorder {
    fn cell(&self, key: &metrics::Key) -> Arc<AtomicU64> {
        self.values
            .lock()
            .entry(metric_key(key))
            .or_default()
            .clone()
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
        recorder
    })
}

/// The value of counter `name{labels}` (labels as `k=v`, sorted), 0 if never counted.
fn counter(name: &str, labels: &[&str]) -> u64 {
    let key = format!("{name}{{{}}}", labels.join(","));
    recorder()
        .values
        .lock()
        .get(&key)
        .map_or(0, |v| v.load(Ordering::Relaxed))
}

/// Every refused TLS handshake, whatever the reason.
fn tls_refused_total() -> u64 {
    recorder()
        .values
        .lock()
        .iter()
        .filter(|(k, _)| k.starts_with("specie_tls_refused_total{"))
        .map(|(_, v)| v.load(Ordering::Relaxed))
        .sum()
}

// ---- a mailbox that hands what it receives to the test ----

struct Sink {
    network: Network,
    address: Address,
    tx: mpsc::UnboundedSender<Envelope>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Sink {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) {
        let envelope = msg
            .into_envelope()
            .expect("the transport carries envelopes intact");
        assert_eq!(envelope.to, self.address, "delivered to the right mailbox");
        self.network.handled(self.address, None);
        let _ = self.tx.send(envelope);
    }
}

/// Registers a sink for each address on `network`; everything they receive comes out of the
/// returned channel.
fn sinks(network: &Network, addresses: &[Address]) -> mpsc::UnboundedReceiver<Envelope> {
    let (tx, rx) = mpsc::unbounded_channel();
    for &address in addresses {
        let sink = Sink {
            network: network.clone(),
            address,
            tx: tx.clone(),
        }
        .start();
        network.register(address, sink.recipient());
    }
    rx
}

fn envelope(from: Address, to: Address, n: u64) -> Envelope {
    Envelope {
        message_id: 0,
        saga_id: SagaId::NONE,
        from,
        to,
        attempt: 0,
        trace: None,
        payload: Payload::BalanceQuery { amount: Amount(n) },
    }
}

fn amount(envelope: &Envelope) -> u64 {
    match &envelope.payload {
        Payload::BalanceQuery { amount } => amount.0,
        other => panic!("unexpected payload {other:?}"),
    }
}

/// Receives `n` envelopes (failing after [`WAIT_MAX`]) and returns their amounts, sorted.
async fn receive(rx: &mut mpsc::UnboundedReceiver<Envelope>, n: usize) -> Vec<u64> {
    let mut amounts = Vec::with_capacity(n);
    while amounts.len() < n {
        let envelope = tokio::time::timeout(WAIT_MAX, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} envelopes arrived", amounts.len()))
            .expect("sinks alive");
        amounts.push(amount(&envelope));
    }
    amounts.sort_unstable();
    amounts
}

/// Waits until `condition` holds, failing after [`WAIT_MAX`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- nodes ----

/// Wallets below 1000 live on n1, the others on n2.
const SPLIT: u64 = 1000;

/// n1's view: wallets from [`SPLIT`] up are on its only peer, n2.
fn placement_n1() -> Placement {
    Arc::new(|address| match address {
        Address::Wallet(WalletId(id)) if id >= SPLIT => Some(0),
        _ => None,
    })
}

/// n2's view: wallets below [`SPLIT`] are on its only peer, n1.
fn placement_n2() -> Placement {
    Arc::new(|address| match address {
        Address::Wallet(WalletId(id)) if id < SPLIT => Some(0),
        _ => None,
    })
}

fn tls(pki: &DevPki, node: &str) -> TlsMode {
    let (cert, key) = pki.node(node).expect("node in the PKI");
    TlsMode::mutual(&pki.ca_cert, cert, key).expect("load node TLS")
}

fn settings(node: &str, peer: &str, peer_addr: SocketAddr, tls: TlsMode) -> TransportSettings {
    let mut settings = TransportSettings::new(
        node,
        vec![PeerAddress::new(peer, peer_addr.to_string())],
        tls,
    );
    settings.backoff_base = Duration::from_millis(20);
    settings.backoff_cap = Duration::from_millis(400);
    settings.connect_timeout = Duration::from_secs(5);
    settings
}

/// A node's gRPC server serving its transport's `Peer` service on `incoming`.
struct Server {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

fn serve(transport: &Transport, incoming: Incoming) -> Server {
    let (stop, stopped) = oneshot::channel::<()>();
    let router = server_builder().add_service(transport.peer_service());
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));
    Server { stop, task }
}

impl Server {
    /// Graceful shutdown: the transport first (it ends the streams), then the server.
    async fn shutdown(self, transport: &Transport) {
        transport.shutdown().await;
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT_MAX, self.task)
            .await
            .expect("server shuts down once the peer streams are closed")
            .expect("server task")
            .expect("server");
    }
}

fn pki(dir: &Path, nodes: &[&str]) -> DevPki {
    generate_dev_pki(dir, &PkiRequest::new(nodes.iter().copied())).expect("dev PKI")
}

/// Starts n1 and n2 on ephemeral ports with the given TLS modes and placements.
async fn two_nodes(
    tls1: TlsMode,
    tls2: TlsMode,
) -> (
    (Network, Transport, Server, SocketAddr),
    (Network, Transport, Server, SocketAddr),
) {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let incoming1 = Incoming::bind(any, &tls1).await.expect("bind n1");
    let incoming2 = Incoming::bind(any, &tls2).await.expect("bind n2");
    let (addr1, addr2) = (incoming1.local_addr(), incoming2.local_addr());
    let network1 = Network::new();
    let network2 = Network::new();
    let t1 = Transport::start(
        network1.clone(),
        settings("n1", "n2", addr2, tls1),
        placement_n1(),
    )
    .expect("start n1");
    let t2 = Transport::start(
        network2.clone(),
        settings("n2", "n1", addr1, tls2),
        placement_n2(),
    )
    .expect("start n2");
    let s1 = serve(&t1, incoming1);
    let s2 = serve(&t2, incoming2);
    ((network1, t1, s1, addr1), (network2, t2, s2, addr2))
}

/// Sends envelopes `range` from `from` (a wallet of one node) to wallet `to` (on the other).
fn send_all(network: &Network, from: u64, to: u64, range: std::ops::Range<u64>) {
    for n in range {
        network.send(envelope(
            Address::Wallet(WalletId(from)),
            Address::Wallet(WalletId(to)),
            n,
        ));
    }
}

#[actix_rt::test]
async fn two_networks_exchange_envelopes_both_ways_over_mutual_tls() {
    recorder();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path(), &["n1", "n2"]);
    let ((net1, t1, s1, _), (net2, t2, s2, _)) = two_nodes(tls(&pki, "n1"), tls(&pki, "n2")).await;
    let mut on1 = sinks(&net1, &[Address::Wallet(WalletId(1))]);
    let mut on2 = sinks(
        &net2,
        &[
            Address::Wallet(WalletId(1001)),
            Address::Wallet(WalletId(1002)),
        ],
    );
    // Sent before the link is up: queued, then delivered.
    send_all(&net1, 1, 1001, 0..100);
    send_all(&net2, 1002, 1, 100..200);
    send_all(&net1, 1, 1002, 200..250);
    let mut to2 = receive(&mut on2, 150).await;
    to2.sort_unstable();
    assert_eq!(to2, (0..100).chain(200..250).collect::<Vec<_>>());
    assert_eq!(receive(&mut on1, 100).await, (100..200).collect::<Vec<_>>());
    assert!(t1.is_connected("n2") && t2.is_connected("n1"));
    // (`specie_peer_connected{peer}` is set with it; not asserted here: the gauge is
    // process-wide and the other tests of this binary run links to an "n2" too.)
    // Remote sends are counted as such, and never as local deliveries in flight.
    assert_eq!(net1.stats().remote, 150);
    assert_eq!(net1.stats().delivered, 100);
    eventually("n1 and n2 have nothing in flight", || {
        net1.in_flight() == 0 && net2.in_flight() == 0
    })
    .await;
    assert!(counter("specie_envelopes_total", &["direction=received_remote"]) >= 250);
    s1.shutdown(&t1).await;
    s2.shutdown(&t2).await;
    assert!(!t1.is_connected("n2"));
}

#[actix_rt::test]
async fn a_link_reconnects_after_the_other_node_restarts_and_delivers_what_was_queued() {
    recorder();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path(), &["n1", "n2"]);
    let ((net1, t1, s1, _), (net2, t2, s2, addr2)) =
        two_nodes(tls(&pki, "n1"), tls(&pki, "n2")).await;
    let mut on1 = sinks(&net1, &[Address::Wallet(WalletId(7))]);
    let mut on2 = sinks(&net2, &[Address::Wallet(WalletId(1007))]);
    send_all(&net1, 7, 1007, 0..10);
    assert_eq!(receive(&mut on2, 10).await, (0..10).collect::<Vec<_>>());

    // n2 goes away (its server and transport stop); n1 notices and keeps retrying.
    s2.shutdown(&t2).await;
    drop((t2, net2, on2));
    eventually("n1 to see the link to n2 down", || !t1.is_connected("n2")).await;

    // Sent while n2 is down: they wait in n1's queue for n2.
    send_all(&net1, 7, 1007, 10..60);

    // n2 restarts on the same address, with fresh mailboxes.
    let tls2 = tls(&pki, "n2");
    let incoming2 = Incoming::bind(addr2, &tls2)
        .await
        .expect("rebind n2's address");
    let net2 = Network::new();
    let mut on2 = sinks(&net2, &[Address::Wallet(WalletId(1007))]);
    let peer1 = PeerAddress::new("n1", "127.0.0.1:1"); // n2 never dials n1 (n1 < n2)
    let mut settings2 = TransportSettings::new("n2", vec![peer1], tls2);
    settings2.backoff_base = Duration::from_millis(20);
    let t2 = Transport::start(net2.clone(), settings2, placement_n2()).expect("restart n2");
    let s2 = serve(&t2, incoming2);

    assert_eq!(receive(&mut on2, 50).await, (10..60).collect::<Vec<_>>());
    // And the re-established link carries the other way too.
    send_all(&net2, 1007, 7, 60..70);
    assert_eq!(receive(&mut on1, 10).await, (60..70).collect::<Vec<_>>());
    s2.shutdown(&t2).await;
    s1.shutdown(&t1).await;
}

#[actix_rt::test]
async fn certificates_from_another_ca_or_none_are_refused_and_counted() {
    recorder();
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = pki(&dir.path().join("cluster"), &["n1", "n2"]);
    let foreign = pki(&dir.path().join("foreign"), &["n1", "n2"]);
    let tls1 = tls(&cluster, "n1");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let incoming = Incoming::bind(any, &tls1).await.expect("bind n1");
    let addr1 = incoming.local_addr();
    let net1 = Network::new();
    let unreachable = PeerAddress::new("n2", "127.0.0.1:1");
    let t1 = Transport::start(
        net1.clone(),
        TransportSettings::new("n1", vec![unreachable], tls1),
        placement_n1(),
    )
    .expect("start n1");
    let s1 = serve(&t1, incoming);

    // 1. A client whose certificate comes from another CA (it trusts the cluster's CA, so it
    //    is the server that refuses): unknown_ca.
    let unknown_ca = counter("specie_tls_refused_total", &["reason=unknown_ca"]);
    let (foreign_cert, foreign_key) = foreign.node("n2").expect("n2");
    let impostor = TlsMode::Mutual(Arc::new(
        TlsIdentity::load(&cluster.ca_cert, foreign_cert, foreign_key).expect("impostor TLS"),
    ));
    assert_link_refused(&addr1.to_string(), &impostor).await;
    eventually("the refusal to be counted as unknown_ca", || {
        counter("specie_tls_refused_total", &["reason=unknown_ca"]) > unknown_ca
    })
    .await;

    // 2. A node of another cluster altogether (another CA on both sides) cannot link either,
    //    and the server counts the refusal too.
    let before = tls_refused_total();
    let stranger_tls = tls(&foreign, "n2");
    assert_link_refused(&addr1.to_string(), &stranger_tls).await;
    eventually("the stranger's refusal to be counted", || {
        tls_refused_total() > before
    })
    .await;

    // 3. A TLS client without any certificate: no_client_certificate.
    let no_cert = counter(
        "specie_tls_refused_total",
        &["reason=no_client_certificate"],
    );
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(&cluster.ca_cert).expect("read ca");
    for cert in rustls_pemfile_certs(&ca_pem) {
        roots.add(cert).expect("add CA");
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr1).await.expect("tcp");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("n1").expect("name");
    if let Ok(mut stream) = connector.connect(name, tcp).await {
        // TLS 1.3: the client finishes first; the server's refusal arrives as an alert.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT_MAX, stream.read(&mut buf)).await;
        assert!(
            !matches!(read, Ok(Ok(n)) if n > 0),
            "a client without a certificate must not get an answer"
        );
    }
    eventually("the refusal to be counted as no_client_certificate", || {
        counter(
            "specie_tls_refused_total",
            &["reason=no_client_certificate"],
        ) > no_cert
    })
    .await;

    // 4. Plain HTTP/2 to the TLS port: refused as well.
    let before = tls_refused_total();
    assert_link_refused(&addr1.to_string(), &TlsMode::Plaintext).await;
    eventually("the plaintext attempt to be counted", || {
        tls_refused_total() > before
    })
    .await;

    // The server is still healthy: a real node certificate links fine.
    assert_link_accepted(&addr1.to_string(), &tls(&cluster, "n2"), "n2").await;
    s1.shutdown(&t1).await;
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("CA PEM")
}

/// Opens a link to `address` as node `hello` and returns the first answer (the server's
/// hello) or the error.
async fn open_link(address: &str, tls: &TlsMode, hello: &str) -> Result<PeerFrame, String> {
    let channel = channel(address, "n1", tls, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(PeerFrame {
        kind: Some(PeerFrameKind::Hello(PeerHello {
            node_id: hello.to_string(),
        })),
    })
    .await
    .expect("queue hello");
    let response = tokio::time::timeout(
        WAIT_MAX,
        PeerClient::new(channel).link(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    let mut inbound = response.into_inner();
    let first = tokio::time::timeout(WAIT_MAX, inbound.message())
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    drop(tx);
    first.ok_or_else(|| "stream ended".to_string())
}

async fn assert_link_refused(address: &str, tls: &TlsMode) {
    let result = open_link(address, tls, "n2").await;
    assert!(result.is_err(), "the link must be refused, got {result:?}");
}

async fn assert_link_accepted(address: &str, tls: &TlsMode, hello: &str) {
    let frame = open_link(address, tls, hello)
        .await
        .unwrap_or_else(|e| panic!("the link must be accepted: {e}"));
    assert!(
        matches!(frame.kind, Some(PeerFrameKind::Hello(ref h)) if h.node_id == "n1"),
        "the server says hello as n1: {frame:?}"
    );
}

#[actix_rt::test]
async fn only_node_certificates_naming_themselves_may_open_a_link() {
    recorder();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path(), &["n1", "n2", "n3"]);
    let tls1 = tls(&pki, "n1");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let incoming = Incoming::bind(any, &tls1).await.expect("bind n1");
    let addr1 = incoming.local_addr().to_string();
    let net1 = Network::new();
    let peers = vec![
        PeerAddress::new("n2", "127.0.0.1:1"),
        PeerAddress::new("n3", "127.0.0.1:1"),
    ];
    let t1 = Transport::start(
        net1,
        TransportSettings::new("n1", peers, tls1),
        placement_n1(),
    )
    .expect("start n1");
    let s1 = serve(&t1, incoming);

    let load = |cert: &Path, key: &Path| {
        TlsMode::Mutual(Arc::new(
            TlsIdentity::load(&pki.ca_cert, cert, key).expect("load"),
        ))
    };
    let (_, client_cert, client_key) = &pki.clients[0];
    let client = load(client_cert, client_key);
    let err = open_link(&addr1, &client, "n2")
        .await
        .expect_err("client refused");
    assert!(
        err.contains("PermissionDenied") && err.contains("client:cli"),
        "{err}"
    );
    let (_, admin_cert, admin_key) = pki.admin.as_ref().expect("admin");
    let admin = load(admin_cert, admin_key);
    let err = open_link(&addr1, &admin, "n2")
        .await
        .expect_err("admin refused");
    assert!(err.contains("PermissionDenied"), "{err}");
    // A node may not pretend to be another one.
    let err = open_link(&addr1, &tls(&pki, "n3"), "n2")
        .await
        .expect_err("impersonation refused");
    assert!(
        err.contains("PermissionDenied") && err.contains("node:n3"),
        "{err}"
    );
    assert!(counter("specie_peer_links_refused_total", &["reason=not_a_node"]) >= 2);
    // The real n3 may.
    assert_link_accepted(&addr1, &tls(&pki, "n3"), "n3").await;
    s1.shutdown(&t1).await;
}

#[actix_rt::test]
async fn plaintext_mode_links_nodes_when_asked_for() {
    recorder();
    let ((net1, t1, s1, _), (net2, t2, s2, _)) =
        two_nodes(TlsMode::Plaintext, TlsMode::Plaintext).await;
    let mut on1 = sinks(&net1, &[Address::Wallet(WalletId(3))]);
    let mut on2 = sinks(&net2, &[Address::Wallet(WalletId(1003))]);
    send_all(&net1, 3, 1003, 0..20);
    send_all(&net2, 1003, 3, 20..40);
    assert_eq!(receive(&mut on2, 20).await, (0..20).collect::<Vec<_>>());
    assert_eq!(receive(&mut on1, 20).await, (20..40).collect::<Vec<_>>());
    s1.shutdown(&t1).await;
    s2.shutdown(&t2).await;
}

#[test]
fn loading_names_the_file_that_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path(), &["n1"]);
    let (cert, key) = pki.node("n1").expect("n1");
    let missing = dir.path().join("nope.pem");
    let err = TlsIdentity::load(&missing, cert, key).expect_err("missing CA");
    assert!(err.to_string().contains("nope.pem"), "{err}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let err = TlsIdentity::load(&pki.ca_cert, &garbage, key).expect_err("no certificate");
    assert!(err.to_string().contains("garbage.pem"), "{err}");
    let err = TlsIdentity::load(&pki.ca_cert, cert, &garbage).expect_err("no key");
    assert!(err.to_string().contains("garbage.pem"), "{err}");
    // A key that does not match the certificate.
    let (_, _, other_key) = &pki.clients[0];
    let err = TlsIdentity::load(&pki.ca_cert, cert, other_key).expect_err("mismatched key");
    assert!(err.to_string().contains("n1.pem"), "{err}");
}

/// Duplicates every envelope: the fault hook runs before the remote route.
struct Duplicate;

impl specie_runtime::FaultHook for Duplicate {
    fn on_send(
        &self,
        _from: Address,
        _to: Address,
        bytes: bytes::Bytes,
        out: &mut Vec<specie_runtime::Delivery>,
    ) {
        for after in [Duration::ZERO, Duration::from_millis(5)] {
            out.push(specie_runtime::Delivery {
                after,
                bytes: bytes.clone(),
            });
        }
    }
}

#[actix_rt::test]
async fn the_fault_hook_applies_between_nodes_too() {
    recorder();
    let ((net1, t1, s1, _), (net2, t2, s2, _)) =
        two_nodes(TlsMode::Plaintext, TlsMode::Plaintext).await;
    let _on1 = sinks(&net1, &[Address::Wallet(WalletId(4))]);
    let mut on2 = sinks(&net2, &[Address::Wallet(WalletId(1004))]);
    net1.set_fault_hook(Arc::new(Duplicate));
    send_all(&net1, 4, 1004, 0..10);
    let twice: Vec<u64> = (0..10).flat_map(|n| [n, n]).collect();
    assert_eq!(receive(&mut on2, 20).await, twice);
    eventually("the delayed copies to leave n1's in-flight count", || {
        net1.in_flight() == 0
    })
    .await;
    assert_eq!(net1.stats().remote, 20);
    s1.shutdown(&t1).await;
    s2.shutdown(&t2).await;
}
