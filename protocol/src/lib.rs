//! The specie wire protocol and the domain types every other crate speaks.
//!
//! Layout:
//! - `pb` (private): types generated from `proto/specie/v1/*.proto` by `prost`. They never leave
//!   this crate; every public type is hand-written and built from its protobuf twin with
//!   `TryFrom`, so malformed input is rejected here, at the boundary, with a [`ProtocolError`].
//! - [`ids`]: identifiers and amounts (`CoinId`, `SagaId`, `WalletId`, `InstitutionId`, `Amount`).
//! - [`canonical`]: the canonical byte encoding that signatures and hashes are computed over.
//!   It is defined here, field by field, and does not depend on what `prost` happens to emit.
//! - [`crypto`]: Ed25519 and SHA-256 with `ring`, and the [`KeyStore`] trait (the wallet's
//!   security chip) with a software implementation.
//! - [`coin`]: coins, their canonical body, issuing and verification.
//! - [`pay`]: the payment authorization and the vocabulary of saga outcomes.
//! - [`grpc`]: the gRPC services (`tonic`) generated from the `service` blocks, e.g.
//!   [`grpc::peer`], the link between nodes.
//! - [`envelope`]: [`Envelope`], the one message that crosses between actors, its
//!   [`Address`]es and its [`Payload`], with `encode` / `decode`.
//! - [`reconcile`]: transaction records and the messages of reconciliation (batch hashes
//!   posted to the hash chain, the shard and record drill-down, the report).
//! - [`escrow`]: escrow pre-payment — the payer's signed terms, contract ids and the messages
//!   between wallets, the escrow contract and the institutions.
//! - [`update`]: wallet update — versioned wallet parameters, the signed withdraw and the
//!   update saga's messages.
//! - [`negotiate`]: proximity payment negotiation — capabilities and [`negotiate()`], the
//!   rule that agrees the features two wallets both support.
//! - [`merge`]: the merge saga's signed authorization (coins of several issuers into one).
//! - [`offline`]: split and offline payment — the split authorization, signed transfer
//!   records, trust chains and the attribution of an offline double spend.

pub mod canonical;
pub mod coin;
pub mod crypto;
pub mod envelope;
mod error;
pub mod escrow;
pub mod grpc;
pub mod ids;
pub mod merge;
pub mod negotiate;
pub mod offline;
pub mod pay;
mod pb;
pub mod reconcile;
pub mod update;

pub use coin::{Coin, CoinBody, Seal};
pub use crypto::{KeyStore, PublicKey, Signature, SoftKeyStore};
pub use envelope::{Address, Envelope, Payload, TraceContext, RECONCILIATION_PLATFORM};
pub use error::ProtocolError;
pub use ids::{Amount, CoinId, InstitutionId, SagaId, WalletId};
pub use negotiate::negotiate;
pub use pay::{AbortReason, PaymentAuthorization, SagaKind, SagaState, SignedAuthorization};
