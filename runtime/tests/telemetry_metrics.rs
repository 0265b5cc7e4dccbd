//! The Prometheus endpoint of a node: the recorder is installed with its HTTP listener, the
//! runtime's metrics show up in the text a scraper fetches from `/metrics`, with their help
//! text and the millisecond buckets of the latency histograms.
//!
//! The metrics recorder is global to the process: this test binary is the only one that
//! installs it, and holds a single test.

use bytes::Bytes;
use specie_protocol::{Address, Envelope, Payload, SagaId, WalletId};
use specie_runtime::telemetry::{self, TelemetryError};
use specie_runtime::{Delivery, FaultHook, Network};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A free port on the loopback interface (bound, then released for the exporter).
fn free_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

/// Fetches `/metrics` over plain HTTP/1.1 and returns the body.
fn scrape(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_scrape(addr) {
            Ok(text) => return text,
            Err(e) if Instant::now() < deadline => {
                eprintln!("scrape {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot scrape {addr}: {e}"),
        }
    }
}

fn try_scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no end of headers"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status: {head}")));
    }
    Ok(body.to_owned())
}

/// Drops every other envelope and duplicates the rest, with a delay on the copy.
struct DropOrDuplicate(std::sync::atomic::AtomicU64);

impl FaultHook for DropOrDuplicate {
    fn on_send(&self, _from: Address, _to: Address, bytes: Bytes, out: &mut Vec<Delivery>) {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 2 == 0 {
            return;
        }
        out.push(Delivery {
            after: Duration::ZERO,
            bytes: bytes.clone(),
        });
        out.push(Delivery {
            after: Duration::ZERO,
            bytes,
        });
    }
}

fn envelope(saga: u128) -> Envelope {
    Envelope {
        message_id: 0,
        saga_id: SagaId::from_u128(saga),
        from: Address::Wallet(WalletId(1)),
        // Nobody lives there: the deliveries are counted undeliverable, nothing else.
        to: Address::Wallet(WalletId(2)),
        attempt: 0,
        trace: None,
        payload: Payload::StatusQuery,
    }
}

#[test]
fn the_metrics_endpoint_serves_the_runtime_metrics_as_prometheus_text() {
    let addr = free_address();
    let handle = telemetry::install_prometheus(addr).expect("install the exporter");
    assert!(
        matches!(
            telemetry::install_prometheus(free_address()),
            Err(TelemetryError::RecorderInstalled)
        ),
        "one recorder per process"
    );

    // What the actors record, as they record it.
    metrics::counter!("specie_sagas_committed_total", "kind" => "pay").increment(3);
    metrics::counter!("specie_sagas_aborted_total", "kind" => "pay", "reason" => "timeout")
        .increment(1);
    metrics::histogram!("specie_saga_duration_seconds", "kind" => "pay").record(0.003);
    metrics::histogram!("specie_journal_fsync_seconds").record(0.0004);
    metrics::counter!("specie_actor_restarts_total", "actor_kind" => "wallet").increment(1);

    // What the network records: sends, and the faults its hook injects.
    let network = Network::new();
    network.set_fault_hook(std::sync::Arc::new(DropOrDuplicate(Default::default())));
    for saga in 1..=4 {
        network.send(envelope(saga));
    }
    telemetry::record_mailbox_depths(&network);

    let text = scrape(addr);
    for expected in [
        "specie_sagas_committed_total{kind=\"pay\"} 3",
        "specie_sagas_aborted_total{kind=\"pay\",reason=\"timeout\"} 1",
        "specie_saga_duration_seconds_bucket{kind=\"pay\",le=\"0.005\"} 1",
        "specie_saga_duration_seconds_bucket{kind=\"pay\",le=\"0.002\"} 0",
        "specie_journal_fsync_seconds_bucket{le=\"0.0005\"} 1",
        "specie_actor_restarts_total{actor_kind=\"wallet\"} 1",
        "specie_envelopes_total{direction=\"sent\"} 4",
        "specie_faults_injected_total{fault=\"drop\"} 2",
        "specie_faults_injected_total{fault=\"duplicate\"} 2",
        "specie_mailbox_depth{actor_kind=\"wallet\"} 0",
        "specie_mailbox_depth{actor_kind=\"institution\"} 0",
        "# HELP specie_sagas_committed_total Client sagas committed",
        "# TYPE specie_saga_duration_seconds histogram",
        "# HELP specie_journal_fsync_seconds",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from the scrape:\n{text}"
        );
    }
    assert!(
        !text.contains("fault=\"corrupt\""),
        "nothing was corrupted:\n{text}"
    );
    // The handle renders what the endpoint serves.
    assert!(handle
        .render()
        .contains("specie_sagas_committed_total{kind=\"pay\"} 3"));
}
