//! Helpers shared by the tests that run `specie` processes: the binary, free ports, a client
//! of a node's ingress, and reading a node's Prometheus metrics.
// Each test binary uses a part of these.
#![allow(dead_code)]

use specie_protocol::grpc::ingress as g;
use specie_runtime::topology::ClusterFile;
use specie_runtime::transport::{self, TlsMode};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
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
