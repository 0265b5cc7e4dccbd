//! Mutual TLS for the cluster: loading the PEM files, the rustls server configuration that
//! requires a client certificate signed by the cluster CA, the client configuration, the
//! accept loop that turns a `TcpListener` into the incoming stream of a tonic server, and the
//! identity (`node:<id>`, `client:<name>`, `admin:<name>`) a service reads off a request.
//!
//! A refused handshake (no client certificate, a certificate from another CA, not TLS at all)
//! is counted in `specie_tls_refused_total{reason}` and logged to stderr once per remote IP
//! and reason, so a misconfigured client retrying in a loop does not flood the log.

use super::TransportError;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

/// How long a client may take to complete the TLS handshake before it is refused.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An error loading TLS material or building a TLS configuration. Every variant names the
/// file(s) involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        /// What the file should hold ("CA certificate", "certificate", "private key").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not valid PEM or holds no item of the expected kind.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the material (a key that does not match its certificate, a CA that is
    /// not a valid trust anchor, ...).
    #[error("TLS configuration from {files}: {reason}")]
    Config {
        /// The files the configuration was built from.
        files: String,
        /// The rustls error.
        reason: String,
    },
}

/// Whether the transport speaks TLS.
#[derive(Clone)]
pub enum TlsMode {
    /// No TLS: plain HTTP/2 over TCP, no peer identity. Only when the configuration says so
    /// explicitly.
    Plaintext,
    /// Mutual TLS with the cluster CA: both sides present a certificate signed by it.
    Mutual(Arc<TlsIdentity>),
}

impl fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsMode::Plaintext => f.write_str("Plaintext"),
            TlsMode::Mutual(identity) => f.debug_tuple("Mutual").field(identity).finish(),
        }
    }
}

impl TlsMode {
    /// Loads the CA certificate, this process's certificate and its private key (PEM files)
    /// for mutual TLS.
    pub fn mutual(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsMode, TlsError> {
        Ok(TlsMode::Mutual(Arc::new(TlsIdentity::load(ca, cert, key)?)))
    }

    /// Whether this is mutual TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, TlsMode::Mutual(_))
    }

    /// The URI scheme a client uses (`https` or `http`).
    pub fn scheme(&self) -> &'static str {
        match self {
            TlsMode::Plaintext => "http",
            TlsMode::Mutual(_) => "https",
        }
    }
}

/// The TLS material of one process: the cluster CA it trusts, its certificate chain and its
/// private key, loaded and checked once.
pub struct TlsIdentity {
    files: String,
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    own: Option<PeerIdentity>,
    server: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("files", &self.files)
            .field("identity", &self.own)
            .finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            problem: format!("invalid PEM in {what} file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            problem: format!(
                "no certificate in {what} file (expected -----BEGIN CERTIFICATE-----)"
            ),
        });
    }
    Ok(certs)
}

/// The ring crypto provider: the one specie uses everywhere (no aws-lc).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsIdentity {
    /// Loads and checks the CA certificate, the certificate (chain) and the private key from
    /// PEM files. Fails with an error naming the file when one is missing, not PEM, holds no
    /// certificate / key, or when the key does not match the certificate.
    pub fn load(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsIdentity, TlsError> {
        let (ca, cert, key) = (ca.as_ref(), cert.as_ref(), key.as_ref());
        let ca_pem = read("CA certificate", ca)?;
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("private key", key)?;
        let ca_certs = certificates("CA certificate", ca, &ca_pem)?;
        let chain = certificates("certificate", cert, &cert_pem)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: key.to_path_buf(),
            problem: match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "no private key in key file (expected -----BEGIN PRIVATE KEY-----)".into()
                }
                e => format!("invalid PEM in private key file: {e}"),
            },
        })?;
        let files = format!(
            "CA {}, certificate {}, key {}",
            ca.display(),
            cert.display(),
            key.display()
        );
        let own = chain.first().and_then(|der| identity_of(der.as_ref()));
        let server = server_config(&files, &ca_certs, &chain, &private)?;
        let identity = TlsIdentity {
            files,
            ca: ca_certs,
            chain,
            key: private,
            ca_pem,
            cert_pem,
            key_pem,
            own,
            server,
        };
        // Building the client side too checks it once, here, rather than at the first dial.
        identity.rustls_client_config()?;
        Ok(identity)
    }

    /// The identity in this process's own certificate (`node:n1`, ...), if it has one of the
    /// recognised forms.
    pub fn own_identity(&self) -> Option<&PeerIdentity> {
        self.own.as_ref()
    }

    /// The server configuration: presents this certificate and REQUIRES a client certificate
    /// signed by the cluster CA. ALPN is `h2` (gRPC).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The client configuration for tonic: trusts the cluster CA only, presents this
    /// certificate, and expects the server's certificate to name `server_name` (a node id:
    /// every node certificate carries its id as a DNS name).
    pub fn client_config(&self, server_name: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(server_name)
    }

    /// The same client configuration as a rustls `ClientConfig` (for callers that do not go
    /// through tonic's channel).
    pub fn rustls_client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let config_error = |reason: String| TlsError::Config {
            files: self.files.clone(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.ca {
            roots
                .add(ca.clone())
                .map_err(|e| config_error(format!("CA certificate: {e}")))?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| config_error(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn server_config(
    files: &str,
    ca: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let config_error = |reason: String| TlsError::Config {
        files: files.to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| config_error(format!("CA certificate: {e}")))?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| config_error(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(|e| config_error(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What a certificate is for, from the prefix of its common name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `node:<id>`: a node of the cluster (may open peer links).
    Node,
    /// `client:<name>`: a client of the ingress.
    Client,
    /// `admin:<name>`: an operator (administrative requests).
    Admin,
}

impl Role {
    /// The common-name prefix (`node`, `client`, `admin`).
    pub fn prefix(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

/// Who is on the other end of a mutually authenticated connection: the role and name from
/// the common name of its certificate (which the cluster CA signed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The role (`node`, `client`, `admin`).
    pub role: Role,
    /// The name after the colon (a node id, a client or admin name).
    pub name: String,
}

impl PeerIdentity {
    /// Parses a common name `node:<id>`, `client:<name>` or `admin:<name>`.
    pub fn parse(common_name: &str) -> Option<PeerIdentity> {
        let (prefix, name) = common_name.split_once(':')?;
        let role = match prefix {
            "node" => Role::Node,
            "client" => Role::Client,
            "admin" => Role::Admin,
            _ => return None,
        };
        if name.is_empty() {
            return None;
        }
        Some(PeerIdentity {
            role,
            name: name.to_string(),
        })
    }

    /// The common name (`node:n1`).
    pub fn common_name(&self) -> String {
        format!("{}:{}", self.role.prefix(), self.name)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role.prefix(), self.name)
    }
}

/// The common name of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The identity in a DER certificate's common name.
pub fn identity_of(der: &[u8]) -> Option<PeerIdentity> {
    PeerIdentity::parse(&common_name(der)?)
}

/// What a server knows about an accepted connection; tonic puts it in every request's
/// extensions (see [`peer_identity`]).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The remote socket address.
    pub remote_addr: Option<SocketAddr>,
    /// The identity of the verified client certificate; `None` in plaintext mode (or for a
    /// certificate whose common name has none of the recognised forms).
    pub identity: Option<PeerIdentity>,
    /// Whether the connection is TLS (then the client certificate was verified against the
    /// cluster CA).
    pub tls: bool,
    /// The verified client certificate chain (end entity first); `None` in plaintext mode.
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// The identity of the client that sent `request`, from its verified certificate: `None` in
/// plaintext mode or without a recognised common name. Works with the connections of
/// [`Incoming`] and with tonic's own TLS acceptor.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<PeerIdentity> {
    if let Some(info) = request.extensions().get::<PeerInfo>() {
        return info.identity.clone();
    }
    let certs = request.peer_certs()?;
    identity_of(certs.first()?.as_ref())
}

/// The remote address of the client that sent `request`.
pub fn peer_addr<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    if let Some(info) = request.extensions().get::<PeerInfo>() {
        return info.remote_addr;
    }
    request.remote_addr()
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection (TLS after a successful handshake, or plain TCP), as tonic's
/// server consumes it. Its connect info is a [`PeerInfo`].
pub struct ServerIo {
    io: Io,
    info: PeerInfo,
}

impl fmt::Debug for ServerIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIo")
            .field("info", &self.info)
            .finish()
    }
}

impl ServerIo {
    /// What is known about the peer.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl Connected for ServerIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Why a handshake was refused: the `reason` label of `specie_tls_refused_total`.
pub fn refusal_reason(error: &io::Error) -> &'static str {
    if error.kind() == io::ErrorKind::TimedOut {
        return "timeout";
    }
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "io";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(cert) => match cert {
            rustls::CertificateError::UnknownIssuer
            | rustls::CertificateError::BadSignature
            | rustls::CertificateError::UnsupportedSignatureAlgorithmContext { .. } => "unknown_ca",
            rustls::CertificateError::Expired
            | rustls::CertificateError::ExpiredContext { .. }
            | rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. } => "certificate_expired",
            _ => "bad_certificate",
        },
        rustls::Error::AlertReceived(_) => "client_rejected_server",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "not_tls",
        _ => "handshake_failed",
    }
}

/// Refusals already logged, by remote IP and reason.
#[derive(Default)]
struct RefusalLog {
    seen: Mutex<HashSet<(IpAddr, &'static str)>>,
}

impl RefusalLog {
    fn refused(&self, addr: SocketAddr, error: &io::Error) {
        let reason = refusal_reason(error);
        metrics::counter!("specie_tls_refused_total", "reason" => reason).increment(1);
        let first = {
            let mut seen = self.seen.lock();
            // Bounded: past this many distinct (IP, reason) pairs, stop remembering (and
            // logging) new ones; the counter still counts every refusal.
            seen.len() < 4096 && seen.insert((addr.ip(), reason))
        };
        if first {
            eprintln!(
                "specie: refused TLS connection from {addr}: {reason} ({error}); further refusals from {} for this reason are only counted",
                addr.ip()
            );
        }
    }
}

/// The stream of accepted connections of a listener, for
/// `tonic::transport::Server::serve_with_incoming_shutdown`. With mutual TLS, each connection
/// completes its handshake on its own task (a slow client does not hold up the others) and
/// only verified connections are yielded; refusals are counted and logged. Dropping it stops
/// accepting.
pub struct Incoming {
    rx: mpsc::Receiver<io::Result<ServerIo>>,
    local_addr: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl Incoming {
    /// Binds `addr` (port 0 picks a free port, see [`Incoming::local_addr`]) and accepts
    /// connections in `tls` mode. Must be called inside a tokio runtime.
    pub async fn bind(addr: SocketAddr, tls: &TlsMode) -> Result<Incoming, TransportError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TransportError::Bind { addr, source })?;
        Incoming::from_listener(listener, tls)
    }

    /// Accepts connections from an already bound listener in `tls` mode. Must be called
    /// inside a tokio runtime.
    pub fn from_listener(listener: TcpListener, tls: &TlsMode) -> Result<Incoming, TransportError> {
        let local_addr = listener
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let acceptor = match tls {
            TlsMode::Plaintext => None,
            TlsMode::Mutual(identity) => Some(TlsAcceptor::from(identity.server_config())),
        };
        let (tx, rx) = mpsc::channel(64);
        let accept_loop = runtime.spawn(accept_loop(listener, acceptor, tx));
        Ok(Incoming {
            rx,
            local_addr,
            accept_loop,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<ServerIo>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    tx: mpsc::Sender<io::Result<ServerIo>>,
) {
    let log = Arc::new(RefusalLog::default());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                eprintln!(
                    "specie: accept on {:?} failed: {e}",
                    listener.local_addr().ok()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = acceptor.clone() else {
            let io = ServerIo {
                io: Io::Plain(tcp),
                info: PeerInfo {
                    remote_addr: Some(remote),
                    identity: None,
                    tls: false,
                    certificates: None,
                },
            };
            if tx.send(Ok(io)).await.is_err() {
                return;
            }
            continue;
        };
        let tx = tx.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let handshake =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(result) => result,
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    )),
                };
            match handshake {
                Ok(stream) => {
                    let certificates = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|certs| Arc::new(certs.to_vec()));
                    let identity = certificates
                        .as_ref()
                        .and_then(|certs| certs.first())
                        .and_then(|der| identity_of(der.as_ref()));
                    let io = ServerIo {
                        io: Io::Tls(Box::new(stream)),
                        info: PeerInfo {
                            remote_addr: Some(remote),
                            identity,
                            tls: true,
                            certificates,
                        },
                    };
                    let _ = tx.send(Ok(io)).await;
                }
                Err(e) => log.refused(remote, &e),
            }
        });
    }
}
