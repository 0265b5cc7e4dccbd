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
//! - [`envelope`]: [`Envelope`], the one message that crosses between actors, its
//!   [`Address`]es and its [`Payload`], with `encode` / `decode`.
//! - [`reconcile`]: transaction records and the messages of reconciliation (batch hashes
//!   posted to the hash chain, the shard and record drill-down, the report).

pub mod canonical;
pub mod coin;
pub mod crypto;
pub mod envelope;
mod error;
pub mod ids;
pub mod pay;
mod pb;
pub mod reconcile;

pub use coin::{Coin, CoinBody};
pub use crypto::{KeyStore, PublicKey, Signature, SoftKeyStore};
pub use envelope::{Address, Envelope, Payload, TraceContext, RECONCILIATION_PLATFORM};
pub use error::ProtocolError;
pub use ids::{Amount, CoinId, InstitutionId, SagaId, WalletId};
pub use pay::{AbortReason, PaymentAuthorization, SagaKind, SagaState, SignedAuthorization};
