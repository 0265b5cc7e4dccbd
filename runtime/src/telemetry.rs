//! Telemetry of a node: Prometheus metrics and OpenTelemetry traces.
//!
//! **Metrics.** The runtime and the actors record through the `metrics` facade; without a
//! recorder that costs next to nothing. [`install_prometheus`] installs the Prometheus
//! recorder with its HTTP listener (the node's metrics address serves the text format),
//! sets histogram buckets suited to millisecond latencies and describes every metric.
//! [`MailboxGauges`] samples the network's per-kind mailbox depths into
//! `specie_mailbox_depth{actor_kind}`.
//!
//! **Traces.** One trace per saga: the trace id is the saga id, so every node that handles a
//! step of the saga adds its spans to the same trace, and the sampling decision (a ratio of
//! the trace id, parent-based) is the same on every node. Each envelope a host handles for a
//! sampled saga becomes a span ([`StepSpan`]) named after the payload, the child of the span
//! of the step that sent it: the sender's span travels in the envelope's W3C
//! `traceparent`, inside the envelope's bytes, across actors and nodes alike. Spans go to an
//! OTLP/gRPC collector, to a file of JSON lines, or both ([`Telemetry::start`]); never to the
//! terminal.
//!
//! Without a started [`Telemetry`] (a `specie run`, a test) tracing is off: a host checks one
//! global flag per envelope and builds nothing.

use crate::network::Network;
use crate::topology::TelemetrySettings;
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use parking_lot::{Mutex, RwLock};
use specie_protocol::{Address, Envelope, SagaId, TraceContext};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Buckets (seconds) of `specie_saga_duration_seconds`: sagas take milliseconds, tens of
/// milliseconds under load, seconds only when something times out.
pub const SAGA_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// Buckets (seconds) of `specie_journal_fsync_seconds`: a group commit's fsync takes tens of
/// microseconds on a fast disk, milliseconds on most.
pub const JOURNAL_FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// What can go wrong starting or stopping telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The Prometheus exporter could not be built or could not listen.
    #[error("cannot serve Prometheus metrics on {addr}: {source}")]
    Metrics {
        /// The metrics address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: metrics_exporter_prometheus::BuildError,
    },
    /// This process already has a metrics recorder.
    #[error("cannot install the Prometheus recorder: this process already has a metrics recorder")]
    RecorderInstalled,
    /// A telemetry thread or its runtime could not start.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sampling ratio is not a share.
    #[error("the trace sampling ratio must be between 0.0 and 1.0, not {0}")]
    SamplingRatio(f64),
    /// The span file could not be opened.
    #[error("cannot open the trace file {path}: {source}")]
    TraceFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The OTLP exporter could not be built.
    #[error("cannot export spans to the OTLP endpoint {endpoint}: {why}")]
    Otlp {
        /// The endpoint.
        endpoint: String,
        /// Why.
        why: String,
    },
    /// Tracing is already running in this process.
    #[error("tracing is already started in this process; shut the running telemetry down first")]
    AlreadyStarted,
    /// Flushing or shutting down the span pipeline failed.
    #[error("cannot flush the spans: {0}")]
    Flush(String),
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Installs the Prometheus recorder as this process's metrics recorder and serves the text
/// format over HTTP on `addr` (any path, `/metrics` included), from a thread of its own.
/// Describes every metric of the runtime and gives the latency histograms their buckets.
/// Returns a handle that renders the same text (for tests and reports).
///
/// Once per process: a second call fails with [`TelemetryError::RecorderInstalled`].
pub fn install_prometheus(addr: SocketAddr) -> Result<PrometheusHandle, TelemetryError> {
    let metrics_error = |source| TelemetryError::Metrics { addr, source };
    let builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("specie_saga_duration_seconds".into()),
            SAGA_DURATION_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("specie_journal_fsync_seconds".into()),
                JOURNAL_FSYNC_BUCKETS,
            )
        })
        .map_err(metrics_error)?;
    let thread_error = |source| TelemetryError::Thread {
        what: "metrics exporter",
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(OwnRuntime::new)
        .map_err(thread_error)?;
    // Binds the listener now, so an address in use is an error here, not later.
    let (recorder, exporter) = {
        let _entered = runtime.enter();
        builder.build().map_err(metrics_error)?
    };
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| TelemetryError::RecorderInstalled)?;
    std::thread::Builder::new()
        .name("specie-metrics".into())
        .spawn(move || {
            if let Err(e) = runtime.get().block_on(exporter) {
                eprintln!("specie: the metrics endpoint on {addr} stopped: {e:?}");
            }
        })
        .map_err(thread_error)?;
    describe_metrics();
    Ok(handle)
}

/// Gives every metric of the runtime, the actors and the transport its help text and unit
/// (in the installed recorder).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "specie_sagas_committed_total",
        Unit::Count,
        "Client sagas committed, by saga kind."
    );
    describe_counter!(
        "specie_sagas_aborted_total",
        Unit::Count,
        "Client sagas aborted, by saga kind and abort reason."
    );
    describe_histogram!(
        "specie_saga_duration_seconds",
        Unit::Seconds,
        "Time from a client's submission to the saga's outcome, by saga kind."
    );
    describe_gauge!(
        "specie_mailbox_depth",
        Unit::Count,
        "Envelopes placed in the mailboxes of actors of a kind and not yet handled."
    );
    describe_counter!(
        "specie_actor_restarts_total",
        Unit::Count,
        "Actor restarts by their supervisor, by actor kind."
    );
    describe_counter!(
        "specie_envelopes_total",
        Unit::Count,
        "Envelopes by direction: sent and received locally, sent_remote and received_remote \
         between nodes, remote_dropped when a peer link gave up."
    );
    describe_counter!(
        "specie_envelopes_rejected_total",
        Unit::Count,
        "Envelopes a receiver rejected, by reason (undecodable, misaddressed, unexpected, ...)."
    );
    describe_counter!(
        "specie_faults_injected_total",
        Unit::Count,
        "Faults injected by the network and journal fault hooks, by fault \
         (drop, duplicate, delay, corrupt, journal_crash_before, journal_crash_after, crash)."
    );
    describe_histogram!(
        "specie_journal_fsync_seconds",
        Unit::Seconds,
        "Duration of each journal group commit, fsync included."
    );
    describe_gauge!(
        "specie_peer_connected",
        Unit::Count,
        "1 while the link to a peer node is connected, 0 otherwise."
    );
    describe_counter!(
        "specie_mailbox_full_total",
        Unit::Count,
        "Deliveries that found the receiver's mailbox full and waited for room."
    );
    describe_counter!(
        "specie_escalations_total",
        Unit::Count,
        "Failures a supervisor could not fix (the node stops)."
    );
    describe_counter!(
        "specie_journal_snapshots_total",
        Unit::Count,
        "Snapshots of actor state that replaced journal entries."
    );
    describe_counter!(
        "specie_protocol_violations_total",
        Unit::Count,
        "Messages that contradict the protocol, by what was violated."
    );
}

/// Samples the network's mailbox depths into the `specie_mailbox_depth{actor_kind}` gauges,
/// from a thread of its own, every period. Stops when dropped.
#[derive(Debug)]
pub struct MailboxGauges {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MailboxGauges {
    /// Starts sampling `network` every `every`.
    pub fn start(network: &Network, every: Duration) -> Result<MailboxGauges, TelemetryError> {
        let network = network.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("specie-mailbox-gauges".into())
            .spawn(move || loop {
                record_mailbox_depths(&network);
                match stopped.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|source| TelemetryError::Thread {
                what: "mailbox gauges",
                source,
            })?;
        Ok(MailboxGauges {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for MailboxGauges {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sets the `specie_mailbox_depth{actor_kind}` gauges from the network's counts, once.
pub fn record_mailbox_depths(network: &Network) {
    for (kind, depth) in network.mailbox_depths() {
        metrics::gauge!("specie_mailbox_depth", "actor_kind" => kind).set(depth as f64);
    }
}

// ---------------------------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------------------------

/// Whether spans are recorded in this process: set while a [`Telemetry`] that exports spans
/// runs. The one check a host makes per envelope when tracing is off.
static TRACING: AtomicBool = AtomicBool::new(false);

/// The tracer of the running [`Telemetry`].
static TRACER: RwLock<Option<Arc<ActiveTracer>>> = parking_lot::const_rwlock(None);

struct ActiveTracer {
    tracer: SdkTracer,
    node: Value,
}

/// Whether spans are being recorded in this process (cheap: one relaxed load).
#[inline]
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// What [`Telemetry::start`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The node's id (a span attribute, the `node` of the JSON spans, the service instance).
    pub node_id: String,
    /// Share of sagas traced, 0.0 to 1.0, decided per saga (trace) id.
    pub sampling_ratio: f64,
    /// OTLP/gRPC collector to export spans to (`http://127.0.0.1:4317`), if any.
    pub otlp_endpoint: Option<String>,
    /// File to append the spans to, one JSON object per line, if any.
    pub trace_file: Option<PathBuf>,
}

impl TelemetryConfig {
    /// The config of node `node_id` from the cluster file's `[telemetry]` and the command
    /// line's `--trace-file`.
    pub fn new(
        node_id: impl Into<String>,
        settings: &TelemetrySettings,
        trace_file: Option<PathBuf>,
    ) -> TelemetryConfig {
        TelemetryConfig {
            node_id: node_id.into(),
            sampling_ratio: settings.sampling_ratio,
            otlp_endpoint: settings.otlp_endpoint.clone(),
            trace_file,
        }
    }
}

/// The running trace pipeline of a process. Shut it down (or drop it) to flush the spans.
pub struct Telemetry {
    provider: Mutex<Option<SdkTracerProvider>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("tracing", &self.provider.lock().is_some())
            .finish()
    }
}

impl Telemetry {
    /// Starts tracing: spans of sampled sagas go to the OTLP endpoint and/or the trace file.
    /// With neither configured, tracing stays off (and this returns an inert [`Telemetry`]).
    /// One at a time per process.
    pub fn start(config: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
        let ratio = config.sampling_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(TelemetryError::SamplingRatio(ratio));
        }
        if config.otlp_endpoint.is_none() && config.trace_file.is_none() {
            return Ok(Telemetry {
                provider: Mutex::new(None),
            });
        }
        let mut active = TRACER.write();
        if active.is_some() {
            return Err(TelemetryError::AlreadyStarted);
        }
        let resource = Resource::builder()
            .with_service_name("specie")
            .with_attribute(KeyValue::new("service.instance.id", config.node_id.clone()))
            .build();
        let mut builder = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))));
        if let Some(path) = &config.trace_file {
            let exporter = JsonSpanFile::create(path, &config.node_id)?;
            builder = builder.with_span_processor(BatchSpanProcessor::builder(exporter).build());
        }
        if let Some(endpoint) = &config.otlp_endpoint {
            let exporter = OtlpExporter::start(endpoint)?;
            builder = builder.with_span_processor(BatchSpanProcessor::builder(exporter).build());
        }
        let provider = builder.build();
        *active = Some(Arc::new(ActiveTracer {
            tracer: provider.tracer("specie"),
            node: Value::from(config.node_id),
        }));
        TRACING.store(true, Ordering::Release);
        Ok(Telemetry {
            provider: Mutex::new(Some(provider)),
        })
    }

    /// Whether this telemetry records spans.
    pub fn tracing(&self) -> bool {
        self.provider.lock().is_some()
    }

    /// Stops recording spans, exports every span recorded so far and shuts the exporters
    /// down (waiting at most a few seconds for an unreachable collector). Idempotent.
    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        let Some(provider) = self.provider.lock().take() else {
            return Ok(());
        };
        TRACING.store(false, Ordering::Release);
        // Spans still ending on other threads hold their own reference to the tracer; the
        // provider's shutdown exports them if they end before it.
        *TRACER.write() = None;
        let flushed = provider.force_flush();
        let shut = provider.shutdown_with_timeout(Duration::from_secs(5));
        flushed
            .and(shut)
            .map_err(|e| TelemetryError::Flush(e.to_string()))
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("specie: {e}");
        }
    }
}

/// The span of one step: a host handling one envelope of a sampled saga.
pub struct StepSpan {
    span: opentelemetry_sdk::trace::Span,
    /// The `traceparent` of the step's sends: this span as their parent.
    context: TraceContext,
}

impl std::fmt::Debug for StepSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepSpan")
            .field("traceparent", &self.context.traceparent)
            .finish()
    }
}

/// The parent named by an envelope's trace context: a span of the step that sent it, or
/// `None` when the context is the network's default stamp (span id = message id: no span
/// was recorded for the sending step) or does not parse.
fn remote_parent(envelope: &Envelope) -> Option<SpanContext> {
    let trace = envelope.trace.as_ref()?;
    let mut parts = trace.traceparent.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID
        || span_id == SpanId::INVALID
        || span_id == SpanId::from_bytes(envelope.message_id.to_be_bytes())
    {
        return None;
    }
    let state = if trace.tracestate.is_empty() {
        TraceState::NONE
    } else {
        trace.tracestate.parse().unwrap_or(TraceState::NONE)
    };
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

impl StepSpan {
    /// Starts the span of `at` handling `envelope`, when tracing is on and the envelope's
    /// saga is sampled; `None` otherwise (and without allocating when tracing is off).
    #[inline]
    pub fn start(envelope: &Envelope, at: Address) -> Option<StepSpan> {
        if !tracing_enabled() || envelope.saga_id == SagaId::NONE {
            return None;
        }
        StepSpan::start_traced(envelope, at)
    }

    fn start_traced(envelope: &Envelope, at: Address) -> Option<StepSpan> {
        let active = TRACER.read().clone()?;
        let builder = SpanBuilder::from_name(envelope.payload.name())
            .with_kind(SpanKind::Consumer)
            .with_trace_id(TraceId::from_bytes(envelope.saga_id.0));
        let span = match remote_parent(envelope) {
            Some(parent) => active
                .tracer
                .build_with_context(builder, &Context::new().with_remote_span_context(parent)),
            // The first step of the saga seen here: a root in the saga's trace.
            None => active.tracer.build_with_context(builder, &Context::new()),
        };
        let sc = span.span_context();
        if !sc.is_sampled() {
            return None;
        }
        let context = TraceContext {
            traceparent: format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            ),
            tracestate: sc.trace_state().header(),
        };
        let mut span = span;
        span.set_attributes([
            KeyValue::new("specie.node", active.node.clone()),
            KeyValue::new("specie.actor", at.to_string()),
            KeyValue::new("specie.from", envelope.from.to_string()),
            KeyValue::new("specie.saga_id", envelope.saga_id.to_string()),
            KeyValue::new("specie.message_id", envelope.message_id as i64),
            KeyValue::new("specie.attempt", i64::from(envelope.attempt)),
        ]);
        Some(StepSpan { span, context })
    }

    /// The trace context the step's sends carry (this span as their parent).
    pub fn context(&self) -> &TraceContext {
        &self.context
    }

    /// Ends the span (dropping it does too).
    pub fn end(mut self) {
        self.span.end();
    }
}

/// Sets the trace context of a step's sends, after the step handled an envelope of `saga`
/// (with `span` when that saga is sampled). The sends of the same saga carry the step's span
/// as their parent when sampled, and no context otherwise (a context copied from the
/// handled envelope would claim a parent that was never recorded): the network then stamps
/// its default one. Does nothing when tracing is off.
#[inline]
pub fn stamp_sends(span: Option<&StepSpan>, saga: SagaId, sends: &mut [Envelope]) {
    if !tracing_enabled() || saga == SagaId::NONE {
        return;
    }
    for envelope in sends.iter_mut().filter(|e| e.saga_id == saga) {
        envelope.trace = span.map(|s| s.context.clone());
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::I64(n) => serde_json::Value::from(*n),
        Value::F64(x) => serde_json::Number::from_f64(*x)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::String(s) => serde_json::Value::String(s.as_str().to_owned()),
        other => serde_json::Value::String(other.to_string()),
    }
}

/// One span as a JSON object: `trace_id`, `span_id`, `parent_span_id` (null for a root),
/// `name`, `start_time_unix_nano`, `end_time_unix_nano`, `attributes`, `node`.
pub fn span_json(span: &SpanData, node: &str) -> serde_json::Value {
    let parent = (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_string());
    let attributes: serde_json::Map<String, serde_json::Value> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_owned(), json_value(&kv.value)))
        .collect();
    serde_json::json!({
        "trace_id": span.span_context.trace_id().to_string(),
        "span_id": span.span_context.span_id().to_string(),
        "parent_span_id": parent,
        "name": span.name,
        "start_time_unix_nano": unix_nanos(span.start_time),
        "end_time_unix_nano": unix_nanos(span.end_time),
        "attributes": attributes,
        "node": node,
    })
}

/// A span exporter that appends spans to a file, one JSON object per line
/// ([`span_json`]): traces for a user without a collector.
#[derive(Debug)]
pub struct JsonSpanFile {
    path: PathBuf,
    node: String,
    out: Mutex<BufWriter<File>>,
}

impl JsonSpanFile {
    /// Opens (creating, or appending to) the file at `path`, for the spans of `node`.
    pub fn create(path: &Path, node: &str) -> Result<JsonSpanFile, TelemetryError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| TelemetryError::TraceFile {
                path: path.to_owned(),
                source,
            })?;
        Ok(JsonSpanFile {
            path: path.to_owned(),
            node: node.to_owned(),
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    fn write(&self, batch: &[SpanData]) -> OTelSdkResult {
        let mut out = self.out.lock();
        let failed = |e: std::io::Error| {
            OTelSdkError::InternalFailure(format!("{}: {e}", self.path.display()))
        };
        for span in batch {
            serde_json::to_writer(&mut *out, &span_json(span, &self.node))
                .map_err(|e| failed(e.into()))?;
            out.write_all(b"\n").map_err(failed)?;
        }
        out.flush().map_err(failed)
    }
}

impl SpanExporter for JsonSpanFile {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.write(&batch))
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.write(&[])
    }

    fn shutdown_with_timeout(&mut self, _timeout: Duration) -> OTelSdkResult {
        self.write(&[])
    }
}

/// A tokio runtime of telemetry's own that may be dropped anywhere, an async context
/// included (where dropping a plain runtime panics): it shuts down in the background.
#[derive(Debug)]
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn new(runtime: tokio::runtime::Runtime) -> OwnRuntime {
        OwnRuntime(Some(runtime))
    }

    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl std::ops::Deref for OwnRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.get()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The OTLP/gRPC exporter (tonic) on a tokio runtime of its own: the batch span processor
/// exports from a plain thread, where tonic's channel would find no reactor.
#[derive(Debug)]
struct OtlpExporter {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: Option<OwnRuntime>,
}

impl OtlpExporter {
    fn start(endpoint: &str) -> Result<OtlpExporter, TelemetryError> {
        use opentelemetry_otlp::WithExportConfig as _;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("specie-otlp")
            .enable_all()
            .build()
            .map(OwnRuntime::new)
            .map_err(|source| TelemetryError::Thread {
                what: "OTLP exporter",
                source,
            })?;
        let inner = {
            let _entered = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| TelemetryError::Otlp {
                    endpoint: endpoint.to_owned(),
                    why: e.to_string(),
                })?
        };
        Ok(OtlpExporter {
            inner: Arc::new(inner),
            runtime: Some(runtime),
        })
    }
}

impl SpanExporter for OtlpExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let task = self
            .runtime
            .as_ref()
            .map(|rt| rt.spawn(async move { inner.export(batch).await }));
        async move {
            match task {
                Some(task) => task
                    .await
                    .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string()))),
                None => Err(OTelSdkError::AlreadyShutdown),
            }
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        if let Some(mut runtime) = self.runtime.take() {
            if let Some(runtime) = runtime.0.take() {
                runtime.shutdown_timeout(timeout);
            }
        }
        Ok(())
    }
}
