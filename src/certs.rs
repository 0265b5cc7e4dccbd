//! `specie certs`: generates a development PKI for a cluster (a CA and node, client and admin
//! certificates) with rcgen. The work is `specie_runtime::transport::generate_dev_pki`; this is
//! the command line around it.

use anyhow::{Context, Result};
use clap::Args;
use specie_runtime::transport::{generate_dev_pki, PkiRequest};
use std::path::PathBuf;

/// `specie certs --out DIR --nodes n1,n2,n3 [--clients NAME,...] [--admin NAME] [--force]`
#[derive(Args, Debug)]
pub struct CertsArgs {
    /// The directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Node ids, comma-separated: `<node>.pem`/`.key` each, common name `node:<node>`, SANs
    /// localhost, 127.0.0.1 and the node id.
    #[arg(long, value_name = "IDS", value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Client names, comma-separated: the first is written as `client.pem`/`.key`, each
    /// further one as `client-<name>.pem`/`.key`; common name `client:<name>`.
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        default_value = "cli"
    )]
    pub clients: Vec<String>,
    /// The operator's name: `admin.pem`/`.key`, common name `admin:<name>`.
    #[arg(long, value_name = "NAME", default_value = "ops")]
    pub admin: String,
    /// Replace an existing CA in DIR (and with it every certificate it signed).
    #[arg(long)]
    pub force: bool,
}

/// Generates the PKI and lists the files written.
pub fn run(args: &CertsArgs) -> Result<bool> {
    let request = PkiRequest {
        nodes: args.nodes.clone(),
        clients: args.clients.clone(),
        admin: Some(args.admin.clone()),
        force: args.force,
    };
    let pki = generate_dev_pki(&args.out, &request)
        .with_context(|| format!("generating certificates in {}", args.out.display()))?;
    println!(
        "specie certs — a development CA and {} node, {} client and 1 admin certificate in {}",
        pki.nodes.len(),
        pki.clients.len(),
        pki.dir.display()
    );
    for file in pki.files() {
        println!("  {}", file.display());
    }
    println!("  (for development only: the CA key is in the same directory)");
    Ok(true)
}
