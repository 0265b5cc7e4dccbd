//! One trace per saga: each envelope a host handles for a sampled saga becomes a span, the
//! child of the span of the step that sent it, in the trace whose id is the saga id — on one
//! node, and across nodes because the parent travels inside the envelope's bytes. Sampling
//! is decided per saga id by ratio; at ratio 0 nothing is written.
//!
//! The same spans reach an OTLP/gRPC collector (a test one, in process).
//!
//! Tracing is global to the process: this test binary holds a single test that runs its
//! scenarios one after the other.

use actix::prelude::*;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use parking_lot::Mutex;
use specie_protocol::pay::SagaState;
use specie_protocol::{Address, Envelope, Payload, SagaId, WalletId};
use specie_runtime::telemetry::{self, Telemetry, TelemetryConfig};
use specie_runtime::{
    Effects, MemoryJournal, Network, Node, NodeSettings, RemoteRoute, RestartStrategy, Routed,
    Submit, SupervisionSettings, SystemClock,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT_MAX: Duration = Duration::from_secs(20);

/// A test OTLP collector: keeps every span it receives, with its resource's service name.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.spans.lock();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                kept.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the collector on a free loopback port from a runtime of its own; returns its
/// endpoint and the runtime (dropping it stops the collector).
fn start_collector(collector: Collector) -> (String, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("collector runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the collector");
    let addr = listener.local_addr().expect("collector address");
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), runtime)
}

/// Sagas whose exchange finished, shared with every relay.
type Finished = Arc<Mutex<Vec<SagaId>>>;

/// A three-message exchange: on a command the relay asks a peer for a saga's status
/// (`status_query`); the peer replies (`status_reply`, copying the query's trace context as
/// the central bank does); the asker acknowledges (`coin_ack`), which finishes the exchange.
struct Relay {
    address: Address,
    finished: Finished,
}

impl specie_runtime::StateMachine for Relay {
    type Event = ();
    type Timer = ();
    type Command = (SagaId, Address);
    type Snapshot = ();

    fn address(&self) -> Address {
        self.address
    }

    fn apply(&mut self, _event: &()) {}

    fn on_start(&mut self, _now_ms: u64, _out: &mut Effects<(), ()>) {}

    fn on_envelope(&mut self, envelope: Envelope, _now_ms: u64, out: &mut Effects<(), ()>) {
        let reply = |payload, trace| Envelope {
            message_id: 0,
            saga_id: envelope.saga_id,
            from: self.address,
            to: envelope.from,
            attempt: 0,
            trace,
            payload,
        };
        match envelope.payload {
            Payload::StatusQuery => out.send(reply(
                Payload::StatusReply {
                    state: SagaState::Committed,
                    reason: None,
                    decided_at_ms: 0,
                },
                envelope.trace.clone(),
            )),
            Payload::StatusReply { .. } => {
                out.send(reply(Payload::CoinAck { coin_ids: vec![] }, None))
            }
            _ => self.finished.lock().push(envelope.saga_id),
        }
    }

    fn on_timer(&mut self, _key: (), _now_ms: u64, _out: &mut Effects<(), ()>) {}

    fn on_command(
        &mut self,
        (saga, to): (SagaId, Address),
        _now_ms: u64,
        out: &mut Effects<(), ()>,
    ) {
        out.send(Envelope {
            message_id: 0,
            saga_id: saga,
            from: self.address,
            to,
            attempt: 0,
            trace: None,
            payload: Payload::StatusQuery,
        });
    }

    fn snapshot(&self) {}
}

fn start_node(network: Network) -> Node {
    Node::start(
        network,
        Arc::new(MemoryJournal::default()),
        Arc::new(SystemClock),
        NodeSettings {
            arbiters: 2,
            mailbox_capacity: 64,
            supervision: SupervisionSettings {
                strategy: RestartStrategy::OneForOne,
                restart_intensity_max: 4,
                restart_window_ms: 60_000,
                restart_backoff_ms: 20,
                restart_backoff_max_ms: 1_000,
            },
            snapshot_entries_min: 1_000_000,
        },
    )
}

fn spawn_relay(node: &Node, wallet: u64, finished: &Finished) -> Addr<specie_runtime::Host<Relay>> {
    let finished = finished.clone();
    let address = Address::Wallet(WalletId(wallet));
    node.spawn(wallet as usize, None, move || Relay {
        address,
        finished: finished.clone(),
    })
}

/// Hands the bytes for addresses of another "node" (another network in this process) to
/// that network, as the transport would after carrying them over gRPC.
struct Bridge {
    remote: HashMap<Address, Network>,
}

impl RemoteRoute for Bridge {
    fn route(&self, to: Address, bytes: Bytes) -> Routed {
        match self.remote.get(&to) {
            Some(network) => {
                network.deliver_bytes(to, bytes);
                Routed::Remote
            }
            None => Routed::Local(bytes),
        }
    }
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !done() {
        assert!(Instant::now() < deadline, "waited {WAIT_MAX:?} for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs one exchange of `saga` from `from` (on `from_node`) to `to`, and waits until every
/// network is idle (each step's span has ended before its delivery counts as handled).
async fn exchange(
    from: &Addr<specie_runtime::Host<Relay>>,
    to: Address,
    saga: SagaId,
    finished: &Finished,
    networks: &[&Network],
) {
    from.do_send(Submit((saga, to)));
    wait_until("the exchange", || finished.lock().contains(&saga)).await;
    wait_until("idle networks", || {
        networks.iter().all(|n| n.in_flight() == 0)
    })
    .await;
}

#[derive(Debug, Clone)]
struct JsonSpan {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    name: String,
    actor: String,
    node: String,
    saga: String,
}

fn read_spans(path: &Path) -> Vec<JsonSpan> {
    let text = std::fs::read_to_string(path).expect("read the trace file");
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("one JSON span per line");
            let s = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
            let start = v["start_time_unix_nano"].as_u64().expect("start time");
            let end = v["end_time_unix_nano"].as_u64().expect("end time");
            assert!(start > 0 && start <= end, "start {start} end {end}");
            JsonSpan {
                trace_id: s("trace_id"),
                span_id: s("span_id"),
                parent_span_id: v["parent_span_id"].as_str().map(str::to_owned),
                name: s("name"),
                actor: v["attributes"]["specie.actor"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                node: s("node"),
                saga: v["attributes"]["specie.saga_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            }
        })
        .collect()
}

/// Checks the three spans of one exchange of `saga` from `asker` to `peer`: query (a root,
/// the first step of the saga seen), reply (its child), ack (the reply's child).
fn check_exchange(spans: &[JsonSpan], saga: SagaId, asker: Address, peer: Address) {
    let trace: Vec<&JsonSpan> = spans
        .iter()
        .filter(|s| s.trace_id == saga.to_string())
        .collect();
    assert_eq!(
        trace.len(),
        3,
        "three spans in the saga's trace: {spans:#?}"
    );
    let named = |name: &str| {
        *trace
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("a `{name}` span in {trace:#?}"))
    };
    let (query, reply, ack) = (
        named("status_query"),
        named("status_reply"),
        named("coin_ack"),
    );
    assert_eq!(query.parent_span_id, None, "the first step is the root");
    assert_eq!(reply.parent_span_id.as_ref(), Some(&query.span_id));
    assert_eq!(ack.parent_span_id.as_ref(), Some(&reply.span_id));
    assert_eq!(query.actor, peer.to_string());
    assert_eq!(reply.actor, asker.to_string());
    assert_eq!(ack.actor, peer.to_string());
    for span in [query, reply, ack] {
        assert_eq!(span.node, "n1");
        assert_eq!(span.saga, saga.to_string());
        assert_eq!(span.span_id.len(), 16);
    }
}

fn config(ratio: f64, file: &Path) -> TelemetryConfig {
    TelemetryConfig {
        node_id: "n1".into(),
        sampling_ratio: ratio,
        otlp_endpoint: None,
        trace_file: Some(file.to_owned()),
    }
}

#[test]
fn a_saga_is_one_trace_of_parent_and_child_spans_sampled_by_ratio() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Outside the actix system: starting a runtime inside another one is refused.
    let collector = Collector::default();
    let (endpoint, collector_runtime) = start_collector(collector.clone());
    let system = System::new();
    system.block_on(async {
        assert!(!telemetry::tracing_enabled(), "off until telemetry starts");
        let finished = Finished::default();

        // One node: wallets 1 and 2 on one network.
        let local = Network::new();
        let node = start_node(local.clone());
        let w1 = spawn_relay(&node, 1, &finished);
        let _w2 = spawn_relay(&node, 2, &finished);

        // Two "nodes": wallet 3 on network a, wallet 4 on network b, bridged.
        let (a, b) = (Network::new(), Network::new());
        let node_a = start_node(a.clone());
        let node_b = start_node(b.clone());
        let (wallet3, wallet4) = (Address::Wallet(WalletId(3)), Address::Wallet(WalletId(4)));
        a.set_remote(Some(Arc::new(Bridge {
            remote: HashMap::from([(wallet4, b.clone())]),
        })));
        b.set_remote(Some(Arc::new(Bridge {
            remote: HashMap::from([(wallet3, a.clone())]),
        })));
        let w3 = spawn_relay(&node_a, 3, &finished);
        let _w4 = spawn_relay(&node_b, 4, &finished);
        let (w1a, w2a) = (Address::Wallet(WalletId(1)), Address::Wallet(WalletId(2)));
        wait_until("registered hosts", || {
            local.is_registered(w1a)
                && local.is_registered(w2a)
                && a.is_registered(wallet3)
                && b.is_registered(wallet4)
        })
        .await;
        let networks = [&local, &a, &b];

        // Ratio 1: every saga traced, on one node and across nodes.
        let all = dir.path().join("all.jsonl");
        let telemetry = Telemetry::start(config(1.0, &all)).expect("start tracing");
        assert!(telemetry.tracing() && telemetry::tracing_enabled());
        let (one_node, two_nodes) = (
            SagaId::from_u128(0xa11 << 64 | 7),
            SagaId::from_u128(0xb22 << 64 | 9),
        );
        exchange(&w1, w2a, one_node, &finished, &networks).await;
        exchange(&w3, wallet4, two_nodes, &finished, &networks).await;
        telemetry.shutdown().expect("flush the spans");
        assert!(!telemetry::tracing_enabled(), "off after shutdown");
        let spans = read_spans(&all);
        assert_eq!(spans.len(), 6, "{spans:#?}");
        check_exchange(&spans, one_node, w1a, w2a);
        check_exchange(&spans, two_nodes, wallet3, wallet4);

        // Ratio 0: nothing traced, nothing written.
        let none = dir.path().join("none.jsonl");
        let telemetry = Telemetry::start(config(0.0, &none)).expect("start tracing");
        exchange(
            &w1,
            w2a,
            SagaId::from_u128(0xc33 << 64 | 1),
            &finished,
            &networks,
        )
        .await;
        exchange(
            &w3,
            wallet4,
            SagaId::from_u128(0xc33 << 64 | 2),
            &finished,
            &networks,
        )
        .await;
        telemetry.shutdown().expect("flush the spans");
        assert_eq!(
            std::fs::read_to_string(&none).expect("the trace file exists"),
            "",
            "no span at ratio 0"
        );

        // Ratio 0.5: decided by the saga (trace) id, the same on every node: the low half of
        // the id below 2^63 is in, above is out.
        let half = dir.path().join("half.jsonl");
        let telemetry = Telemetry::start(config(0.5, &half)).expect("start tracing");
        let (inside, outside) = (
            SagaId::from_u128(0xd44 << 64 | 3),
            SagaId::from_u128(0xd44 << 64 | u128::from(u64::MAX)),
        );
        exchange(&w3, wallet4, inside, &finished, &networks).await;
        exchange(&w3, wallet4, outside, &finished, &networks).await;
        let outside_too = SagaId::from_u128(0xd45 << 64 | u128::from(u64::MAX));
        exchange(&w1, w2a, outside_too, &finished, &networks).await;
        drop(telemetry); // Dropping flushes too.
        let spans = read_spans(&half);
        assert_eq!(spans.len(), 3, "{spans:#?}");
        check_exchange(&spans, inside, wallet3, wallet4);

        // OTLP: the same spans reach a collector over gRPC.
        let telemetry = Telemetry::start(TelemetryConfig {
            node_id: "n1".into(),
            sampling_ratio: 1.0,
            otlp_endpoint: Some(endpoint),
            trace_file: None,
        })
        .expect("start tracing to the collector");
        let exported = SagaId::from_u128(0xe55 << 64 | 5);
        exchange(&w3, wallet4, exported, &finished, &networks).await;
        telemetry
            .shutdown()
            .expect("flush the spans to the collector");
        let received = collector.spans.lock().clone();
        assert_eq!(received.len(), 3, "{received:#?}");
        let trace_id = u128::from_be_bytes(exported.0).to_be_bytes();
        for (service, span) in &received {
            assert_eq!(service, "specie");
            assert_eq!(span.trace_id, trace_id.to_vec());
        }
        let roots = received
            .iter()
            .filter(|(_, span)| span.parent_span_id.is_empty())
            .count();
        assert_eq!(roots, 1, "one root, two children: {received:#?}");

        for n in [&local, &a, &b] {
            n.set_remote(None);
            assert_eq!(n.stats().rejected, 0);
            assert!(n.mailbox_depths().iter().all(|(_, depth)| *depth == 0));
        }
        for n in [node, node_a, node_b] {
            n.shutdown();
        }
    });
    collector_runtime.shutdown_background();
}
