//! `specie client`: the command-line client of a multi-process cluster. It connects to one
//! node's ingress (any node: requests for wallets elsewhere are forwarded), with the client
//! certificate of the cluster's CA under mutual TLS.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use specie_protocol::grpc::ingress as g;
use specie_runtime::topology::ClusterFile;
use specie_runtime::transport::{self, TlsMode};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `specie client`.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The cluster file (`config/cluster-3.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// The node to connect to (default: the first listed).
    #[arg(long)]
    pub node: Option<String>,
    /// The identity in the certificate directory to present (`client.pem`/`client.key`).
    #[arg(long, default_value = "client")]
    pub identity: String,
    /// Print the reply as JSON.
    #[arg(long)]
    pub json: bool,
    /// The operation.
    #[command(subcommand)]
    pub op: ClientOp,
}

/// Options every submission takes.
#[derive(Args, Debug, Clone)]
pub struct SubmitOptions {
    /// The idempotency key (default: a fresh random one, printed). Resubmitting a key returns
    /// the outcome recorded for it instead of starting the operation again.
    #[arg(long)]
    pub key: Option<String>,
    /// How long the node waits for the outcome before answering `pending`, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub wait_ms: u32,
}

/// What `specie client` does.
#[derive(Subcommand, Debug)]
pub enum ClientOp {
    /// Pay AMOUNT (fen) from one wallet to another.
    Pay {
        /// Paying wallet.
        #[arg(long)]
        from: u64,
        /// Receiving wallet.
        #[arg(long)]
        to: u64,
        /// Amount in fen.
        #[arg(long)]
        amount: u64,
        #[command(flatten)]
        submit: SubmitOptions,
    },
    /// Merge a wallet's coins (every coin, or the ones named) into one.
    Merge {
        /// The wallet.
        #[arg(long)]
        wallet: u64,
        /// Coin ids (hex), comma-separated; default every coin the wallet holds.
        #[arg(long, value_delimiter = ',')]
        coins: Vec<String>,
        #[command(flatten)]
        submit: SubmitOptions,
    },
    /// Split one coin of a wallet into AMOUNT and the rest.
    Split {
        /// The wallet.
        #[arg(long)]
        wallet: u64,
        /// The coin id (hex); default the wallet's largest coin.
        #[arg(long)]
        coin: Option<String>,
        /// Value of the first part, in fen.
        #[arg(long)]
        amount: u64,
        #[command(flatten)]
        submit: SubmitOptions,
    },
    /// Open an escrow: freeze coins of PAYER up to CAP for MERCHANT.
    EscrowOpen {
        /// Paying wallet.
        #[arg(long)]
        payer: u64,
        /// Merchant wallet.
        #[arg(long)]
        merchant: u64,
        /// Most the merchant may claim, in fen.
        #[arg(long)]
        cap: u64,
        /// Time until the escrow expires, in ms.
        #[arg(long, default_value_t = 600_000)]
        ttl_ms: u64,
        #[command(flatten)]
        submit: SubmitOptions,
    },
    /// Claim AMOUNT from an escrow as its merchant.
    EscrowClaim {
        /// Merchant wallet.
        #[arg(long)]
        merchant: u64,
        /// The contract id `escrow-open` printed.
        #[arg(long)]
        contract: u64,
        /// The merchant's claim number (each resolves once).
        #[arg(long)]
        claim_id: u64,
        /// Amount in fen.
        #[arg(long)]
        amount: u64,
        #[command(flatten)]
        submit: SubmitOptions,
    },
    /// Release an escrow as its payer (the rest is refunded).
    EscrowRelease {
        /// Paying wallet.
        #[arg(long)]
        payer: u64,
        /// The contract id.
        #[arg(long)]
        contract: u64,
        #[command(flatten)]
        submit: SubmitOptions,
    },
    /// A saga's state (the id a submission printed).
    Status {
        /// Saga id, 32 hex digits.
        saga: String,
    },
    /// A wallet's coins.
    Balance {
        /// The wallet.
        wallet: u64,
    },
}

fn state_name(state: i32) -> &'static str {
    match g::OperationState::try_from(state) {
        Ok(g::OperationState::Pending) => "pending",
        Ok(g::OperationState::Committed) => "committed",
        Ok(g::OperationState::Aborted) => "aborted",
        Ok(g::OperationState::Unknown) => "unknown",
        _ => "unspecified",
    }
}

fn coin_id(text: &str) -> Result<bytes::Bytes> {
    let bytes = hex::decode(text.trim()).with_context(|| format!("coin id {text:?} is not hex"))?;
    if bytes.len() != 32 {
        bail!("coin id {text:?} is not 32 bytes (64 hex digits)");
    }
    Ok(bytes.into())
}

fn fresh_key() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// Connects to a node's ingress as `identity` (mutual TLS per the cluster file).
pub async fn connect(
    file: &ClusterFile,
    node: Option<&str>,
    identity: &str,
) -> Result<g::IngressClient<tonic::transport::Channel>> {
    let spec = match node {
        Some(id) => file
            .nodes
            .iter()
            .find(|n| n.id == id)
            .with_context(|| format!("{}: no node `{id}`", file.origin))?,
        None => &file.nodes[0],
    };
    let tls = match file.tls.files(identity) {
        Some((ca, cert, key)) => TlsMode::mutual(ca, cert, key)?,
        None => TlsMode::Plaintext,
    };
    let channel = transport::channel(
        &spec.grpc.to_string(),
        &spec.id,
        &tls,
        Duration::from_secs(5),
    )
    .await
    .with_context(|| format!("connecting to node {} at {}", spec.id, spec.grpc))?;
    Ok(g::IngressClient::new(channel))
}

/// Runs `specie client`; returns whether the operation committed (or the query answered).
pub async fn run(args: ClientArgs) -> Result<bool> {
    let file = ClusterFile::load(&args.config)?;
    let mut client = connect(&file, args.node.as_deref(), &args.identity).await?;
    let submit = |op: g::submit_request::Op, o: &SubmitOptions| {
        let key = o.key.clone().unwrap_or_else(fresh_key);
        g::SubmitRequest {
            idempotency_key: key,
            op: Some(op),
            wait_ms: o.wait_ms,
            forwarded: false,
        }
    };
    use g::submit_request::Op;
    let request = match &args.op {
        ClientOp::Pay {
            from,
            to,
            amount,
            submit: o,
        } => submit(
            Op::Pay(g::PayOp {
                from: *from,
                to: *to,
                amount: *amount,
            }),
            o,
        ),
        ClientOp::Merge {
            wallet,
            coins,
            submit: o,
        } => submit(
            Op::Merge(g::MergeOp {
                wallet: *wallet,
                coin_ids: coins.iter().map(|c| coin_id(c)).collect::<Result<_>>()?,
            }),
            o,
        ),
        ClientOp::Split {
            wallet,
            coin,
            amount,
            submit: o,
        } => submit(
            Op::Split(g::SplitOp {
                wallet: *wallet,
                coin_id: coin
                    .as_deref()
                    .map(coin_id)
                    .transpose()?
                    .unwrap_or_default(),
                amount: *amount,
            }),
            o,
        ),
        ClientOp::EscrowOpen {
            payer,
            merchant,
            cap,
            ttl_ms,
            submit: o,
        } => submit(
            Op::EscrowOpen(g::EscrowOpenOp {
                payer: *payer,
                merchant: *merchant,
                cap: *cap,
                ttl_ms: *ttl_ms,
            }),
            o,
        ),
        ClientOp::EscrowClaim {
            merchant,
            contract,
            claim_id,
            amount,
            submit: o,
        } => submit(
            Op::EscrowClaim(g::EscrowClaimOp {
                merchant: *merchant,
                contract: *contract,
                claim_id: *claim_id,
                amount: *amount,
            }),
            o,
        ),
        ClientOp::EscrowRelease {
            payer,
            contract,
            submit: o,
        } => submit(
            Op::EscrowRelease(g::EscrowReleaseOp {
                payer: *payer,
                contract: *contract,
            }),
            o,
        ),
        ClientOp::Status { saga } => {
            let id = hex::decode(saga.trim())
                .ok()
                .filter(|b| b.len() == 16)
                .with_context(|| format!("saga id {saga:?} is not 32 hex digits"))?;
            let r = client
                .status(g::SagaStatusRequest {
                    saga_id: id.into(),
                    forwarded: false,
                })
                .await?
                .into_inner();
            let state = state_name(r.state);
            if args.json {
                println!(
                    "{}",
                    json!({"saga_id": saga, "state": state, "reason": r.reason,
                           "kind": r.kind, "wallet": r.wallet, "node": r.node})
                );
            } else if r.state == g::OperationState::Unknown as i32 {
                println!("saga {saga}: unknown to every node");
            } else {
                let reason = if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.reason)
                };
                println!(
                    "saga {saga}: {} {state}{reason} — wallet {} on node {}",
                    r.kind, r.wallet, r.node
                );
            }
            return Ok(r.state != g::OperationState::Unknown as i32);
        }
        ClientOp::Balance { wallet } => {
            let r = client
                .balance(g::WalletBalanceRequest {
                    wallet: *wallet,
                    forwarded: false,
                })
                .await?
                .into_inner();
            if args.json {
                let coins: Vec<_> = r
                    .coins
                    .iter()
                    .map(|c| json!({"id": hex::encode(&c.id), "issuer": c.issuer, "value_fen": c.value}))
                    .collect();
                println!(
                    "{}",
                    json!({"wallet": r.wallet, "coins_total_fen": r.coins_total, "coins": coins,
                           "pending": r.pending, "node": r.node})
                );
            } else {
                println!(
                    "wallet {} on node {}: {} fen in {} coins, {} operations in flight",
                    r.wallet,
                    r.node,
                    r.coins_total,
                    r.coins.len(),
                    r.pending
                );
                for c in &r.coins {
                    println!(
                        "  {}  issuer {}  {} fen",
                        hex::encode(&c.id),
                        c.issuer,
                        c.value
                    );
                }
            }
            return Ok(true);
        }
    };
    let key = request.idempotency_key.clone();
    let r = client.submit(request).await?.into_inner();
    let state = state_name(r.state);
    let saga = hex::encode(&r.saga_id);
    if args.json {
        println!(
            "{}",
            json!({"saga_id": saga, "key": key, "kind": r.kind, "state": state,
                   "reason": r.reason, "resubmitted": r.resubmitted, "node": r.node,
                   "contract": r.contract})
        );
    } else {
        let reason = if r.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.reason)
        };
        let again = if r.resubmitted {
            " [recorded outcome of an earlier submission]"
        } else {
            ""
        };
        println!(
            "{} {state}{reason}{again}\n  saga {saga}  key {key}  node {}",
            r.kind, r.node
        );
        if r.contract != 0 {
            println!("  contract {}", r.contract);
        }
    }
    Ok(r.state == g::OperationState::Committed as i32)
}
