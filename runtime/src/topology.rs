//! The topology of a multi-process cluster: which nodes exist, where they listen, where each
//! actor lives, how they authenticate each other, and where telemetry goes.
//!
//! A cluster file (`config/cluster-3.toml`) is an ordinary config (the tables of
//! [`crate::config`]) plus the tables `[[node]]`, `[placement]`, `[tls]`, `[transport]` and
//! `[telemetry]`. [`ClusterFile::parse`] takes the topology tables out, validates them, and
//! validates the rest as a [`Config`]; every error names the file and the field. Relative
//! paths are resolved against the directory the command runs in.

use crate::config::{Config, ConfigError};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Most nodes a cluster file may list.
pub const NODES_MAX: usize = 64;

/// The topology tables of a cluster file, as read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    node: Vec<RawNode>,
    placement: RawPlacement,
    tls: RawTls,
    #[serde(default)]
    transport: Option<RawTransport>,
    #[serde(default)]
    telemetry: Option<RawTelemetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    grpc: String,
    metrics: String,
    data_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    central_bank: String,
    institutions: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    mode: String,
    #[serde(default)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransport {
    queue_capacity: usize,
    reconnect_backoff_ms: u64,
    reconnect_backoff_max_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    #[serde(default)]
    otlp_endpoint: Option<String>,
    sampling_ratio: f64,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Its id (`n1`): names it in placement, certificates and metrics.
    pub id: String,
    /// Where its gRPC server (peers, clients, admin) listens.
    pub grpc: SocketAddr,
    /// Where it serves Prometheus metrics over HTTP.
    pub metrics: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
}

/// How nodes and clients authenticate each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSettings {
    /// Mutual TLS: every connection presents a certificate of the cluster's CA. The directory
    /// holds what `specie certs` writes: `ca.pem`, `NODE.pem`/`NODE.key` per node,
    /// `client.pem`/`client.key`, `admin.pem`/`admin.key`.
    Mutual {
        /// The certificate directory.
        dir: PathBuf,
    },
    /// No encryption and no authentication: only when the file says so.
    Plaintext,
}

impl TlsSettings {
    /// The files of one identity (`n1`, `client`, `admin`): (CA, certificate, key), or `None`
    /// in plaintext mode.
    pub fn files(&self, name: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
        match self {
            TlsSettings::Mutual { dir } => Some((
                dir.join("ca.pem"),
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            )),
            TlsSettings::Plaintext => None,
        }
    }
}

/// Links between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportSettings {
    /// Envelopes queued per peer before senders wait (back-pressure).
    pub queue_capacity: usize,
    /// First reconnect delay after a link breaks; doubles per failed attempt.
    pub reconnect_backoff_ms: u64,
    /// Most a reconnect delay grows to.
    pub reconnect_backoff_max_ms: u64,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            queue_capacity: 4096,
            reconnect_backoff_ms: 50,
            reconnect_backoff_max_ms: 2000,
        }
    }
}

/// Traces.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// OTLP/gRPC collector to export spans to (`http://127.0.0.1:4317`), if any.
    pub otlp_endpoint: Option<String>,
    /// Share of sagas traced, 0.0 to 1.0 (decided per saga, the same on every node).
    pub sampling_ratio: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: None,
            sampling_ratio: 0.01,
        }
    }
}

/// Where the actors live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Node index of the central bank (and of the reconciliation platform).
    pub central_bank: usize,
    /// Node index of each institution, by institution id (its position in
    /// `cluster.institutions`); its escrows and reconciler live with it.
    pub institutions: Vec<usize>,
    /// Number of nodes wallets are spread over (all of them).
    pub nodes: usize,
}

impl Placement {
    /// The node of a wallet: a stable hash of its id, so every node and client agrees.
    pub fn wallet_node(&self, wallet: u64) -> usize {
        // splitmix64: a fixed, well-mixed function of the id.
        let mut z = wallet.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % self.nodes as u64) as usize
    }
}

/// A parsed and validated cluster file.
#[derive(Debug, Clone)]
pub struct ClusterFile {
    /// The nodes, in file order.
    pub nodes: Vec<NodeSpec>,
    /// Where the actors live.
    pub placement: Placement,
    /// Authentication.
    pub tls: TlsSettings,
    /// Peer links.
    pub transport: TransportSettings,
    /// Traces.
    pub telemetry: TelemetrySettings,
    /// The cluster's ordinary config (every table but the topology's).
    pub config: Config,
    /// The text of that config, as stored in every node's data directory.
    pub config_text: String,
    /// Where the file came from, for messages.
    pub origin: String,
}

const TOPOLOGY_TABLES: [&str; 5] = ["node", "placement", "tls", "transport", "telemetry"];

impl ClusterFile {
    /// Reads, parses and validates a cluster file.
    pub fn load(path: &Path) -> Result<ClusterFile, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            file: file.clone(),
            why: e.to_string(),
        })?;
        ClusterFile::parse(&text, &file)
    }

    /// Parses and validates the text of a cluster file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ClusterFile, ConfigError> {
        let parse_error = |why: String| ConfigError::Parse {
            file: origin.to_string(),
            why,
        };
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.to_string().trim_end().to_string()))?;
        let mut topology = toml::Table::new();
        for name in TOPOLOGY_TABLES {
            if let Some(value) = table.remove(name) {
                topology.insert(name.to_string(), value);
            }
        }
        if !topology.contains_key("node") {
            return Err(ConfigError::Invalid {
                file: origin.to_string(),
                field: "node",
                why: "is missing: a cluster file lists its nodes as [[node]] tables".into(),
            });
        }
        let raw: RawTopology = topology
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.to_string().trim_end().to_string()))?;
        let config_text = toml::to_string(&table)
            .map_err(|e| parse_error(format!("cannot re-serialize the config tables: {e}")))?;
        let config = Config::parse(&config_text, origin)?;
        let (nodes, placement, tls, transport, telemetry) = validate(raw, &config, origin)?;
        Ok(ClusterFile {
            nodes,
            placement,
            tls,
            transport,
            telemetry,
            config,
            config_text,
            origin: origin.to_string(),
        })
    }

    /// The index of the node named `id`.
    pub fn node_index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }
}

type Validated = (
    Vec<NodeSpec>,
    Placement,
    TlsSettings,
    TransportSettings,
    TelemetrySettings,
);

fn validate(raw: RawTopology, config: &Config, file: &str) -> Result<Validated, ConfigError> {
    let invalid = |field: &'static str, why: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        why,
    };
    if raw.node.is_empty() || raw.node.len() > NODES_MAX {
        return Err(invalid(
            "node",
            format!("must list 1 to {NODES_MAX} nodes, lists {}", raw.node.len()),
        ));
    }
    let mut ids = HashSet::new();
    let mut addresses = HashSet::new();
    let mut dirs = HashSet::new();
    let mut nodes = Vec::with_capacity(raw.node.len());
    for n in raw.node {
        let id_ok = !n.id.is_empty()
            && n.id.len() <= 32
            && n.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        // A node id is also a DNS name in its certificate (`specie certs`).
        if !id_ok || n.id.starts_with('-') || n.id.ends_with('-') {
            return Err(invalid(
                "node.id",
                format!(
                    "`{}` must be 1 to 32 letters, digits or `-`, not starting or ending with `-` (it names the node's certificate)",
                    n.id
                ),
            ));
        }
        if !ids.insert(n.id.clone()) {
            return Err(invalid("node.id", format!("`{}` is listed twice", n.id)));
        }
        let grpc: SocketAddr = n.grpc.parse().map_err(|e| {
            invalid(
                "node.grpc",
                format!("`{}` of node {} is not IP:PORT: {e}", n.grpc, n.id),
            )
        })?;
        let metrics: SocketAddr = n.metrics.parse().map_err(|e| {
            invalid(
                "node.metrics",
                format!("`{}` of node {} is not IP:PORT: {e}", n.metrics, n.id),
            )
        })?;
        for (field, a) in [("node.grpc", grpc), ("node.metrics", metrics)] {
            if !addresses.insert(a) {
                return Err(invalid(
                    field,
                    format!("{a} of node {} is already used by another address", n.id),
                ));
            }
        }
        if n.data_dir.as_os_str().is_empty() || !dirs.insert(n.data_dir.clone()) {
            return Err(invalid(
                "node.data_dir",
                format!(
                    "`{}` of node {} must be non-empty and distinct",
                    n.data_dir.display(),
                    n.id
                ),
            ));
        }
        nodes.push(NodeSpec {
            id: n.id,
            grpc,
            metrics,
            data_dir: n.data_dir,
        });
    }
    let index = |field: &'static str, id: &str, what: &str| {
        nodes.iter().position(|n| n.id == id).ok_or_else(|| {
            invalid(
                field,
                format!("places {what} on `{id}`, which is not a listed node"),
            )
        })
    };
    let central_bank = index(
        "placement.central_bank",
        &raw.placement.central_bank,
        "the central bank",
    )?;
    let names = &config.cluster.institutions;
    for name in raw.placement.institutions.keys() {
        if !names.contains(name) {
            return Err(invalid(
                "placement.institutions",
                format!("names `{name}`, which is not in cluster.institutions"),
            ));
        }
    }
    let mut institutions = Vec::with_capacity(names.len());
    for name in names {
        let node = raw.placement.institutions.get(name).ok_or_else(|| {
            invalid(
                "placement.institutions",
                format!("does not place institution `{name}`"),
            )
        })?;
        institutions.push(index(
            "placement.institutions",
            node,
            &format!("institution `{name}`"),
        )?);
    }
    let tls = match raw.tls.mode.as_str() {
        "mutual" => TlsSettings::Mutual {
            dir: raw.tls.dir.ok_or_else(|| {
                invalid(
                    "tls.dir",
                    "is required with mode = \"mutual\" (the directory `specie certs --out` wrote)"
                        .into(),
                )
            })?,
        },
        "plaintext" => TlsSettings::Plaintext,
        other => {
            return Err(invalid(
                "tls.mode",
                format!("must be \"mutual\" or \"plaintext\", is \"{other}\""),
            ))
        }
    };
    let transport = match raw.transport {
        None => TransportSettings::default(),
        Some(t) => {
            if t.queue_capacity == 0 || t.queue_capacity > 1 << 20 {
                return Err(invalid(
                    "transport.queue_capacity",
                    format!("must be 1 to {}, is {}", 1 << 20, t.queue_capacity),
                ));
            }
            if t.reconnect_backoff_ms == 0 || t.reconnect_backoff_max_ms < t.reconnect_backoff_ms {
                return Err(invalid(
                    "transport.reconnect_backoff_max_ms",
                    format!(
                        "must be at least reconnect_backoff_ms ({}) which must be positive, is {}",
                        t.reconnect_backoff_ms, t.reconnect_backoff_max_ms
                    ),
                ));
            }
            TransportSettings {
                queue_capacity: t.queue_capacity,
                reconnect_backoff_ms: t.reconnect_backoff_ms,
                reconnect_backoff_max_ms: t.reconnect_backoff_max_ms,
            }
        }
    };
    let telemetry = match raw.telemetry {
        None => TelemetrySettings::default(),
        Some(t) => {
            if !(0.0..=1.0).contains(&t.sampling_ratio) {
                return Err(invalid(
                    "telemetry.sampling_ratio",
                    format!("must be 0.0 to 1.0, is {}", t.sampling_ratio),
                ));
            }
            let otlp_endpoint = t.otlp_endpoint.filter(|e| !e.is_empty());
            if let Some(e) = &otlp_endpoint {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    return Err(invalid(
                        "telemetry.otlp_endpoint",
                        format!("`{e}` must be an http:// or https:// address"),
                    ));
                }
            }
            TelemetrySettings {
                otlp_endpoint,
                sampling_ratio: t.sampling_ratio,
            }
        }
    };
    let placement = Placement {
        central_bank,
        institutions,
        nodes: nodes.len(),
    };
    Ok((nodes, placement, tls, transport, telemetry))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = include_str!("../../config/local.toml");

    fn file(topology: &str) -> String {
        format!("{topology}\n{BASE}")
    }

    const TOPOLOGY: &str = r#"
[[node]]
id = "n1"
grpc = "127.0.0.1:7101"
metrics = "127.0.0.1:9101"
data_dir = "data/n1"

[[node]]
id = "n2"
grpc = "127.0.0.1:7102"
metrics = "127.0.0.1:9102"
data_dir = "data/n2"

[placement]
central_bank = "n1"
institutions = { north = "n1", south = "n2", east = "n1", west = "n2" }

[tls]
mode = "mutual"
dir = "certs"
"#;

    #[test]
    fn a_cluster_file_splits_into_topology_and_config() {
        let c = ClusterFile::parse(&file(TOPOLOGY), "t.toml").unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.placement.institutions, vec![0, 1, 0, 1]);
        assert_eq!(c.config.cluster.institutions.len(), 4);
        assert_eq!(c.node_index("n2"), Some(1));
        assert_eq!(
            c.tls.files("n1").unwrap().1,
            PathBuf::from("certs").join("n1.pem")
        );
        // The stored config text parses to the same config.
        assert_eq!(Config::parse(&c.config_text, "again").unwrap(), c.config);
    }

    #[test]
    fn the_shipped_three_node_cluster_file_is_valid() {
        let text = include_str!("../../config/cluster-3.toml");
        let c = ClusterFile::parse(text, "config/cluster-3.toml").unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.config.cluster.institutions.len(), 4);
        assert!(matches!(c.tls, TlsSettings::Mutual { .. }));
        // Every node hosts something.
        for n in 0..3 {
            assert!(c.placement.central_bank == n || c.placement.institutions.contains(&n));
        }
    }

    #[test]
    fn wallets_spread_over_every_node_stably() {
        let c = ClusterFile::parse(&file(TOPOLOGY), "t.toml").unwrap();
        let mut counts = [0u32; 2];
        for w in 0..1000 {
            let n = c.placement.wallet_node(w);
            assert_eq!(n, c.placement.wallet_node(w));
            counts[n] += 1;
        }
        assert!(counts.iter().all(|&k| k > 400), "{counts:?}");
    }

    #[test]
    fn bad_topologies_are_refused_naming_the_field() {
        let cases = [
            (
                TOPOLOGY.replace("central_bank = \"n1\"", "central_bank = \"n9\""),
                "placement.central_bank",
            ),
            (
                TOPOLOGY.replace("west = \"n2\"", "wild = \"n2\""),
                "placement.institutions",
            ),
            (
                TOPOLOGY.replace(", west = \"n2\"", ""),
                "placement.institutions",
            ),
            (
                TOPOLOGY.replace("127.0.0.1:9102", "127.0.0.1:7101"),
                "node.metrics",
            ),
            (
                TOPOLOGY.replace("\"127.0.0.1:7102\"", "\"localhost\""),
                "node.grpc",
            ),
            (TOPOLOGY.replace("id = \"n2\"", "id = \"n1\""), "node.id"),
            (
                TOPOLOGY.replace("mode = \"mutual\"", "mode = \"sometimes\""),
                "tls.mode",
            ),
            (TOPOLOGY.replace("dir = \"certs\"", ""), "tls.dir"),
        ];
        for (text, field) in cases {
            match ClusterFile::parse(&file(&text), "t.toml") {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("expected an error on {field}, got {other:?}"),
            }
        }
        let plaintext =
            TOPOLOGY.replace("mode = \"mutual\"\ndir = \"certs\"", "mode = \"plaintext\"");
        let c = ClusterFile::parse(&file(&plaintext), "t.toml").unwrap();
        assert_eq!(c.tls, TlsSettings::Plaintext);
        assert!(matches!(
            ClusterFile::parse(BASE, "t.toml"),
            Err(ConfigError::Invalid { field: "node", .. })
        ));
        assert!(matches!(
            ClusterFile::parse(
                &file(&format!("{TOPOLOGY}\n[telemetry]\nsampling_ratio = 2.0\n")),
                "t.toml"
            ),
            Err(ConfigError::Invalid {
                field: "telemetry.sampling_ratio",
                ..
            })
        ));
    }
}
