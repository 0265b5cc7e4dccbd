//! A development PKI for a cluster, generated with rcgen: a CA and, signed by it, one
//! certificate per node, per client and for the operator. Not for production: the CA key is
//! written next to the certificates.
//!
//! Files written into the output directory (keys are PKCS#8 PEM, mode 0600 on Unix):
//!
//! | file | common name | extended key usage | SANs |
//! | --- | --- | --- | --- |
//! | `ca.pem`, `ca.key` | `specie development CA` | (CA) | |
//! | `<node>.pem`, `<node>.key` | `node:<node>` | server + client | `localhost`, `127.0.0.1`, `<node>` |
//! | `client.pem`, `client.key` | `client:<first client>` (default `cli`) | client | |
//! | `client-<name>.pem`, `.key` | `client:<name>` for each further client | client | |
//! | `admin.pem`, `admin.key` | `admin:<admin>` (default `ops`) | client | |
//!
//! Nodes dial each other by node id: a peer link expects the server's certificate to carry
//! the node id as a DNS name, which is why each node certificate has it as a SAN.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// An error generating the development PKI.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The output directory already has a CA, and overwriting was not asked for.
    #[error("{path} already exists; refusing to overwrite the CA (use --force to replace it and every certificate it signed)")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A node, client or admin name cannot be used.
    #[error("invalid {what} name {name:?}: {reason}")]
    BadName {
        /// "node", "client" or "admin".
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// No node was named.
    #[error("no nodes: name at least one node (--nodes n1,n2,n3)")]
    NoNodes,
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rcgen failed.
    #[error("generating the certificate for {subject}: {reason}")]
    Generate {
        /// The certificate's common name.
        subject: String,
        /// The rcgen error.
        reason: String,
    },
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiRequest {
    /// Node ids (a certificate `node:<id>` each).
    pub nodes: Vec<String>,
    /// Client names; the first is written as `client.pem`, the others as `client-<name>.pem`.
    pub clients: Vec<String>,
    /// The operator's name (`admin.pem`, `admin:<name>`), if any.
    pub admin: Option<String>,
    /// Replace an existing CA in the output directory.
    pub force: bool,
}

impl PkiRequest {
    /// Certificates for `nodes`, the default client `cli` and the default admin `ops`.
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> PkiRequest {
        PkiRequest {
            nodes: nodes.into_iter().map(Into::into).collect(),
            clients: vec!["cli".into()],
            admin: Some("ops".into()),
            force: false,
        }
    }
}

/// The files of a generated PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The output directory.
    pub dir: PathBuf,
    /// `ca.pem`.
    pub ca_cert: PathBuf,
    /// `ca.key`.
    pub ca_key: PathBuf,
    /// Per node id: its certificate and key.
    pub nodes: Vec<(String, PathBuf, PathBuf)>,
    /// Per client name: its certificate and key.
    pub clients: Vec<(String, PathBuf, PathBuf)>,
    /// The admin's name, certificate and key.
    pub admin: Option<(String, PathBuf, PathBuf)>,
}

impl DevPki {
    /// Every file written, in order.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.ca_cert.as_path(), self.ca_key.as_path()];
        for (_, cert, key) in self.nodes.iter().chain(&self.clients).chain(&self.admin) {
            files.push(cert);
            files.push(key);
        }
        files
    }

    /// The certificate and key of node `id`.
    pub fn node(&self, id: &str) -> Option<(&Path, &Path)> {
        self.nodes
            .iter()
            .find(|(n, _, _)| n == id)
            .map(|(_, c, k)| (c.as_path(), k.as_path()))
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), CertsError> {
    let bad = |reason: &str| CertsError::BadName {
        what,
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > 63 {
        return Err(bad("must be 1 to 63 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(bad("only ASCII letters, digits, '-' and '.' are allowed"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(bad("must start and end with a letter or digit"));
    }
    Ok(())
}

/// The current year, from the system clock (certificates are valid from the year before to
/// ten years after).
fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Mean Gregorian year; off by at most a day, which the one-year margin absorbs.
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "specie");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Generates a development CA and the node, client and admin certificates of `request` into
/// `dir` (created if missing). Refuses to overwrite an existing `ca.pem` / `ca.key` unless
/// `request.force`.
pub fn generate_dev_pki(dir: &Path, request: &PkiRequest) -> Result<DevPki, CertsError> {
    if request.nodes.is_empty() {
        return Err(CertsError::NoNodes);
    }
    let mut stems = HashSet::from(["ca".to_string()]);
    let mut stem = |what: &'static str, name: &str, file_stem: String| {
        check_name(what, name)?;
        if !stems.insert(file_stem.clone()) {
            return Err(CertsError::BadName {
                what,
                name: name.to_string(),
                reason: format!("its files {file_stem}.pem/.key clash with another name"),
            });
        }
        Ok(file_stem)
    };
    let mut plan: Vec<(String, String, bool)> = Vec::new(); // (file stem, common name, is node)
    for node in &request.nodes {
        plan.push((
            stem("node", node, node.clone())?,
            format!("node:{node}"),
            true,
        ));
    }
    for (i, client) in request.clients.iter().enumerate() {
        let file_stem = if i == 0 {
            "client".to_string()
        } else {
            format!("client-{client}")
        };
        plan.push((
            stem("client", client, file_stem)?,
            format!("client:{client}"),
            false,
        ));
    }
    if let Some(admin) = &request.admin {
        plan.push((
            stem("admin", admin, "admin".into())?,
            format!("admin:{admin}"),
            false,
        ));
    }

    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    if !request.force {
        for path in [&ca_cert_path, &ca_key_path] {
            if path.exists() {
                return Err(CertsError::Exists { path: path.clone() });
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;

    let year = this_year();
    let (not_before, not_after) = (
        rcgen::date_time_ymd(year - 1, 1, 1),
        rcgen::date_time_ymd(year + 10, 1, 1),
    );
    let generate = |subject: &str, e: rcgen::Error| CertsError::Generate {
        subject: subject.to_string(),
        reason: e.to_string(),
    };

    const CA_NAME: &str = "specie development CA";
    let mut ca = CertificateParams::default();
    ca.distinguished_name = distinguished_name(CA_NAME);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(|e| generate(CA_NAME, e))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| generate(CA_NAME, e))?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let mut leaves = Vec::new();
    for (file_stem, common_name, is_node) in &plan {
        let mut params = if *is_node {
            let id = &common_name["node:".len()..];
            CertificateParams::new(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                id.to_string(),
            ])
            .map_err(|e| generate(common_name, e))?
        } else {
            CertificateParams::default()
        };
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if *is_node {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().map_err(|e| generate(common_name, e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| generate(common_name, e))?;
        leaves.push((file_stem.clone(), cert.pem(), key.serialize_pem()));
    }

    // Everything is generated: now write, CA first.
    write_file(&ca_cert_path, &ca_cert.pem(), false)?;
    write_file(&ca_key_path, &ca_key_pem, true)?;
    let mut pki = DevPki {
        dir: dir.to_path_buf(),
        ca_cert: ca_cert_path,
        ca_key: ca_key_path,
        nodes: Vec::new(),
        clients: Vec::new(),
        admin: None,
    };
    for ((file_stem, cert_pem, key_pem), (_, common_name, _)) in leaves.into_iter().zip(&plan) {
        let cert_path = dir.join(format!("{file_stem}.pem"));
        let key_path = dir.join(format!("{file_stem}.key"));
        write_file(&cert_path, &cert_pem, false)?;
        write_file(&key_path, &key_pem, true)?;
        let (role, name) = common_name.split_once(':').unwrap_or(("", common_name));
        let entry = (name.to_string(), cert_path, key_path);
        match role {
            "node" => pki.nodes.push(entry),
            "client" => pki.clients.push(entry),
            _ => pki.admin = Some(entry),
        }
    }
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tls::{PeerIdentity, Role, TlsIdentity};

    #[test]
    fn generates_loadable_certificates_with_roles_and_refuses_to_overwrite_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let request = PkiRequest::new(["n1", "n2"]);
        let pki = generate_dev_pki(dir.path(), &request).expect("generate");
        assert_eq!(pki.files().len(), 2 + 2 * 4);
        let (cert, key) = pki.node("n2").expect("n2");
        let identity = TlsIdentity::load(&pki.ca_cert, cert, key).expect("load");
        assert_eq!(
            identity.own_identity(),
            Some(&PeerIdentity {
                role: Role::Node,
                name: "n2".into()
            })
        );
        let (_, cert, key) = &pki.clients[0];
        assert!(cert.ends_with("client.pem"));
        let identity = TlsIdentity::load(&pki.ca_cert, cert, key).expect("load client");
        assert_eq!(
            identity.own_identity().map(|i| i.common_name()),
            Some("client:cli".to_string())
        );
        let err = generate_dev_pki(dir.path(), &request).expect_err("must refuse");
        assert!(matches!(err, CertsError::Exists { .. }), "{err}");
        let forced = PkiRequest {
            force: true,
            ..request
        };
        generate_dev_pki(dir.path(), &forced).expect("forced");
    }

    #[test]
    fn refuses_bad_and_clashing_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        for nodes in [
            vec!["n 1"],
            vec!["ca"],
            vec!["client"],
            vec!["n1", "n1"],
            vec![],
        ] {
            let request = PkiRequest::new(nodes.clone());
            assert!(
                generate_dev_pki(dir.path(), &request).is_err(),
                "{nodes:?} accepted"
            );
        }
    }
}
