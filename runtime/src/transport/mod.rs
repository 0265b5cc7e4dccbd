//! The transport between the processes of a cluster: gRPC (tonic) over mutual TLS (rustls,
//! ring provider), or plain TCP when the configuration says so explicitly.
//!
//! - [`tls`]: PEM loading, the server configuration that requires a client certificate
//!   signed by the cluster CA, the accept loop ([`Incoming`]) that counts and logs refused
//!   handshakes, and [`peer_identity`] — who sent a request (`node:`, `client:`, `admin:`).
//! - [`peer`]: the `Peer` service and the peer links: one long-lived bidirectional stream
//!   per pair of nodes, reconnecting with exponential backoff, with a bounded queue per peer;
//!   [`Transport`] installs itself as the network's remote route.
//! - [`certs`]: a development PKI (CA, node, client and admin certificates) with rcgen.
//! - [`endpoint`] / [`channel`]: a tonic channel to a node, for peer links and clients.
//!
//! A node process composes them like this:
//!
//! ```no_run
//! # use specie_runtime::transport::*;
//! # use specie_runtime::Network;
//! # use std::sync::Arc;
//! # async fn node(network: Network) -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsMode::mutual("certs/ca.pem", "certs/n1.pem", "certs/n1.key")?;
//! let settings = TransportSettings::new("n1", vec![PeerAddress::new("n2", "127.0.0.1:7102")], tls.clone());
//! let placement: Placement = Arc::new(|_address| None); // index into `peers`, None = local
//! let transport = Transport::start(network, settings, placement)?;
//! let incoming = Incoming::bind("127.0.0.1:7101".parse()?, &tls).await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(
//!     server_builder()
//!         .add_service(transport.peer_service())
//!         .serve_with_incoming_shutdown(incoming, async { let _ = stopped.await; }),
//! );
//! // ... on SIGTERM:
//! transport.shutdown().await; // ends the peer streams (else graceful shutdown waits on them)
//! let _ = stop.send(());
//! server.await??;
//! # Ok(()) }
//! ```

pub mod certs;
pub mod peer;
pub mod tls;

pub use crate::network::{RemoteRoute, Routed};
pub use certs::{generate_dev_pki, CertsError, DevPki, PkiRequest};
pub use peer::{backoff_delay, PeerAddress, PeerService, Placement, Transport, TransportSettings};
pub use tls::{
    peer_addr, peer_identity, Incoming, PeerIdentity, PeerInfo, Role, ServerIo, TlsError,
    TlsIdentity, TlsMode,
};

use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Server};

/// An error of the transport: TLS material, binding, addresses, connecting.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TLS material could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A node address is not a valid `host:port`.
    #[error("invalid node address {address:?}: {reason}")]
    Address {
        /// The address as configured.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting to a node failed.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The address.
        address: String,
        /// The error, with its sources.
        reason: String,
    },
    /// The transport settings are inconsistent.
    #[error("transport settings: {0}")]
    Settings(String),
    /// Called outside a tokio runtime.
    #[error("the transport must be started inside a tokio runtime")]
    NoRuntime,
}

/// The error and its chain of sources on one line (tonic's errors say little at the top).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// A tonic endpoint for the node at `address` (`host:port`), lazily connected: with mutual
/// TLS it presents this process's certificate and expects the server's to name
/// `server_name` (the node id). HTTP/2 keep-alives detect a dead peer within ~30 s.
pub fn endpoint(
    address: &str,
    server_name: &str,
    tls: &TlsMode,
    connect_timeout: Duration,
) -> Result<Endpoint, TransportError> {
    let uri = format!("{}://{address}", tls.scheme());
    let bad = |reason: String| TransportError::Address {
        address: address.to_string(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| bad(error_chain(&e)))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if let TlsMode::Mutual(identity) = tls {
        endpoint = endpoint
            .tls_config(identity.client_config(server_name))
            .map_err(|e| bad(error_chain(&e)))?;
    }
    Ok(endpoint)
}

/// Connects a tonic channel to the node at `address` (see [`endpoint`]). Fails if the TCP
/// connection or the TLS handshake fails (note that with TLS 1.3 a server's refusal of the
/// client certificate shows up at the first request, not here).
pub async fn channel(
    address: &str,
    server_name: &str,
    tls: &TlsMode,
    connect_timeout: Duration,
) -> Result<Channel, TransportError> {
    endpoint(address, server_name, tls, connect_timeout)?
        .connect()
        .await
        .map_err(|e| TransportError::Connect {
            address: address.to_string(),
            reason: error_chain(&e),
        })
}

/// A tonic server builder with the settings the peer links rely on: HTTP/2 keep-alives, so
/// a vanished peer's stream is noticed and its link can be re-established.
pub fn server_builder() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}
