//! The pay saga's vocabulary: the payer's signed authorization, saga kinds, states and the
//! reasons a saga aborts.

use crate::canonical::Canon;
use crate::crypto::{self, BadSignature, KeyStore, PublicKey, Signature};
use crate::error::{fixed, required, ProtocolError};
use crate::ids::{Amount, CoinId, InstitutionId, SagaId, WalletId};
use crate::pb;
use serde::{Deserialize, Serialize};
use std::fmt;

const AUTHORIZATION_DOMAIN: &str = "specie/v1/payment-authorization";

/// The most coins one authorization may spend. Bounds the work of one lock step.
pub const AUTHORIZATION_COINS_MAX: usize = 64;

/// What the payer signs to spend coins: which coins, how much, to whom, under which saga,
/// and until when the signature is good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorization {
    /// The saga this authorization belongs to; it cannot be replayed under another.
    pub saga_id: SagaId,
    /// The paying wallet.
    pub payer: WalletId,
    /// The payer's public key; it must own every coin.
    pub payer_key: PublicKey,
    /// The institution that issued the coins (and keeps the payer's account).
    pub payer_institution: InstitutionId,
    /// The coins to spend. Their sum may exceed `amount`: the rest comes back as change.
    pub coin_ids: Vec<CoinId>,
    /// The amount paid, in minor units.
    pub amount: Amount,
    /// The receiving wallet.
    pub payee: WalletId,
    /// The payee's institution, which coordinates the saga and issues the payee's coin.
    pub payee_institution: InstitutionId,
    /// The authorization is void after this instant (issuer's clock, ms since the epoch).
    pub expires_at_ms: u64,
}

impl PaymentAuthorization {
    /// The canonical bytes the payer signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(AUTHORIZATION_DOMAIN);
        c.fixed(&self.saga_id.0)
            .u64(self.payer.0)
            .fixed(&self.payer_key.0)
            .u32(self.payer_institution.0)
            .u32(u32::try_from(self.coin_ids.len()).expect("coin list bounded"));
        for id in &self.coin_ids {
            c.fixed(&id.0);
        }
        c.u64(self.amount.0)
            .u64(self.payee.0)
            .u32(self.payee_institution.0)
            .u64(self.expires_at_ms);
        c.finish()
    }

    /// Signs the authorization inside the payer's key store.
    pub fn sign(self, keys: &dyn KeyStore) -> SignedAuthorization {
        let signature = keys.sign(&self.signing_bytes());
        SignedAuthorization {
            authorization: self,
            signature,
        }
    }
}

/// A payment authorization with the payer's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAuthorization {
    /// What was signed.
    pub authorization: PaymentAuthorization,
    /// The payer's Ed25519 signature over `authorization.signing_bytes()`.
    pub signature: Signature,
}

impl SignedAuthorization {
    /// Checks the signature against the key the authorization names.
    pub fn verify(&self) -> Result<(), BadSignature> {
        crypto::verify(
            &self.authorization.payer_key,
            &self.authorization.signing_bytes(),
            &self.signature,
        )
    }

    /// A digest identifying this exact request: two requests with the same saga id and a
    /// different digest are a conflicting reuse of the saga id.
    pub fn digest(&self) -> [u8; 32] {
        let mut bytes = self.authorization.signing_bytes();
        bytes.extend_from_slice(&self.signature.0);
        crypto::sha256(&bytes)
    }
}

impl TryFrom<pb::SignedAuthorization> for SignedAuthorization {
    type Error = ProtocolError;

    fn try_from(p: pb::SignedAuthorization) -> Result<Self, ProtocolError> {
        let a = required("authorization.authorization", p.authorization)?;
        if a.coin_ids.len() > AUTHORIZATION_COINS_MAX {
            return Err(ProtocolError::Invalid {
                field: "authorization.coin_ids",
                why: format!(
                    "{} coins, at most {AUTHORIZATION_COINS_MAX} allowed",
                    a.coin_ids.len()
                ),
            });
        }
        let coin_ids = a
            .coin_ids
            .iter()
            .map(|b| fixed("authorization.coin_ids[]", b).map(CoinId))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SignedAuthorization {
            authorization: PaymentAuthorization {
                saga_id: SagaId(fixed("authorization.saga_id", &a.saga_id)?),
                payer: WalletId(a.payer),
                payer_key: PublicKey(fixed("authorization.payer_key", &a.payer_key)?),
                payer_institution: InstitutionId(a.payer_institution),
                coin_ids,
                amount: Amount(a.amount),
                payee: WalletId(a.payee),
                payee_institution: InstitutionId(a.payee_institution),
                expires_at_ms: a.expires_at_ms,
            },
            signature: Signature(fixed("authorization.signature", &p.signature)?),
        })
    }
}

impl From<&SignedAuthorization> for pb::SignedAuthorization {
    fn from(s: &SignedAuthorization) -> Self {
        let a = &s.authorization;
        pb::SignedAuthorization {
            authorization: Some(pb::PaymentAuthorization {
                saga_id: a.saga_id.0.to_vec().into(),
                payer: a.payer.0,
                payer_key: a.payer_key.0.to_vec().into(),
                coin_ids: a.coin_ids.iter().map(|c| c.0.to_vec().into()).collect(),
                amount: a.amount.0,
                payee: a.payee.0,
                payee_institution: a.payee_institution.0,
                payer_institution: a.payer_institution.0,
                expires_at_ms: a.expires_at_ms,
            }),
            signature: s.signature.0.to_vec().into(),
        }
    }
}

/// The kinds of saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SagaKind {
    /// A payment (redemption) from one wallet to another.
    Pay,
    /// Exchange of account money into coins.
    Exchange,
    /// Coins frozen in an escrow for a merchant.
    EscrowDeposit,
    /// A merchant's claim paid out of an escrow.
    EscrowClaim,
    /// The payer released an escrow: what remained is refunded.
    EscrowRelease,
    /// An escrow expired: what remained is refunded.
    EscrowExpiry,
    /// A wallet withdrew its coins, synced and applied new parameters.
    WalletUpdate,
    /// Two wallets negotiated the features of a proximity payment.
    Negotiation,
    /// Coins of several issuers merged into one coin of the wallet's institution.
    Merge,
    /// One coin split into two at its issuer.
    Split,
    /// A payer signed an offline transfer and handed the trust chain over (no network).
    OfflinePay,
    /// A trust chain redeemed at its coin's issuer.
    OfflineRedeem,
    /// A wallet uploaded its offline records and redeemed the chains it held.
    OfflineSync,
}

impl SagaKind {
    /// The name used in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            SagaKind::Pay => "pay",
            SagaKind::Exchange => "exchange",
            SagaKind::EscrowDeposit => "escrow_deposit",
            SagaKind::EscrowClaim => "escrow_claim",
            SagaKind::EscrowRelease => "escrow_release",
            SagaKind::EscrowExpiry => "escrow_expiry",
            SagaKind::WalletUpdate => "wallet_update",
            SagaKind::Negotiation => "negotiation",
            SagaKind::Merge => "merge",
            SagaKind::Split => "split",
            SagaKind::OfflinePay => "offline_pay",
            SagaKind::OfflineRedeem => "offline_redeem",
            SagaKind::OfflineSync => "offline_sync",
        }
    }
}

/// Where a saga stands, as seen by its coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaState {
    /// The coordinator has no record of the saga.
    Unknown,
    /// Started, not yet terminal.
    InProgress,
    /// Terminal: committed.
    Committed,
    /// Terminal: aborted.
    Aborted,
}

/// Why a saga (or one of its steps) was refused or aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AbortReason {
    /// The amount exceeds the payer's available balance.
    InsufficientFunds,
    /// The amount is zero or overflows.
    InvalidAmount,
    /// A coin is not in the issuer's register.
    CoinUnknown,
    /// A coin is owned by another key than the authorization's.
    CoinNotOwned,
    /// A coin is locked by another saga.
    CoinLocked,
    /// A coin was already spent.
    CoinSpent,
    /// The payer's signature does not verify.
    BadSignature,
    /// The authorization expired before the coins were locked.
    Expired,
    /// The saga id was reused with different content.
    Conflict,
    /// A participant did not answer before the commit decision.
    Timeout,
    /// A coin was not issued by the institution asked to lock it.
    WrongIssuer,
    /// The saga was already aborted; a late step is refused.
    SagaAborted,
    /// A step names a saga the receiver has no record of.
    SagaUnknown,
    /// The request does not match the payee or amount it claims.
    PayeeMismatch,
    /// The wallet has no account at the institution.
    UnknownWallet,
    /// The same coin appears twice in one request.
    DuplicateCoin,
    /// More coins than one request may carry.
    TooManyCoins,
    /// The institution's free reserve does not cover an exchange.
    InsufficientReserve,
    /// The saga already committed; it cannot abort.
    AlreadyCommitted,
    /// The wallet already has an operation of this kind in flight.
    Busy,
    /// An escrow claim above what remains of the escrow's cap.
    CapExceeded,
    /// The claim id was already used by another claim, or the escrow is fully claimed.
    AlreadyClaimed,
    /// The payer already released the escrow.
    AlreadyReleased,
    /// The request comes from neither the escrow's merchant (a claim) nor its payer (a release).
    WrongParty,
    /// The escrow holds no frozen deposit (not yet, or its deposit was refused).
    EscrowNotOpen,
    /// The two wallets share no protocol version.
    NoCommonVersion,
    /// The two wallets share no signature scheme.
    NoCommonScheme,
    /// The amount is above what one of the wallets accepts.
    AmountAboveMax,
    /// One of the wallets does not support offline payments.
    OfflineUnsupported,
    /// A merge that names no coin.
    EmptyRequest,
    /// An offline claim that would spend more than its coin holds: an offline double spend.
    OfflineDoubleSpend,
    /// An offline payment above what the wallet may still pay offline before it syncs.
    OfflineLimit,
}

impl AbortReason {
    /// Every reason, in a stable order (for reports).
    pub const ALL: [AbortReason; 32] = [
        AbortReason::InsufficientFunds,
        AbortReason::InvalidAmount,
        AbortReason::CoinUnknown,
        AbortReason::CoinNotOwned,
        AbortReason::CoinLocked,
        AbortReason::CoinSpent,
        AbortReason::BadSignature,
        AbortReason::Expired,
        AbortReason::Conflict,
        AbortReason::Timeout,
        AbortReason::WrongIssuer,
        AbortReason::SagaAborted,
        AbortReason::SagaUnknown,
        AbortReason::PayeeMismatch,
        AbortReason::UnknownWallet,
        AbortReason::DuplicateCoin,
        AbortReason::TooManyCoins,
        AbortReason::InsufficientReserve,
        AbortReason::AlreadyCommitted,
        AbortReason::Busy,
        AbortReason::CapExceeded,
        AbortReason::AlreadyClaimed,
        AbortReason::AlreadyReleased,
        AbortReason::WrongParty,
        AbortReason::EscrowNotOpen,
        AbortReason::NoCommonVersion,
        AbortReason::NoCommonScheme,
        AbortReason::AmountAboveMax,
        AbortReason::OfflineUnsupported,
        AbortReason::EmptyRequest,
        AbortReason::OfflineDoubleSpend,
        AbortReason::OfflineLimit,
    ];

    /// The snake_case name used in reports, JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            AbortReason::InsufficientFunds => "insufficient_funds",
            AbortReason::InvalidAmount => "invalid_amount",
            AbortReason::CoinUnknown => "coin_unknown",
            AbortReason::CoinNotOwned => "coin_not_owned",
            AbortReason::CoinLocked => "coin_locked",
            AbortReason::CoinSpent => "coin_spent",
            AbortReason::BadSignature => "bad_signature",
            AbortReason::Expired => "expired",
            AbortReason::Conflict => "conflict",
            AbortReason::Timeout => "timeout",
            AbortReason::WrongIssuer => "wrong_issuer",
            AbortReason::SagaAborted => "saga_aborted",
            AbortReason::SagaUnknown => "saga_unknown",
            AbortReason::PayeeMismatch => "payee_mismatch",
            AbortReason::UnknownWallet => "unknown_wallet",
            AbortReason::DuplicateCoin => "duplicate_coin",
            AbortReason::TooManyCoins => "too_many_coins",
            AbortReason::InsufficientReserve => "insufficient_reserve",
            AbortReason::AlreadyCommitted => "already_committed",
            AbortReason::Busy => "busy",
            AbortReason::CapExceeded => "cap_exceeded",
            AbortReason::AlreadyClaimed => "already_claimed",
            AbortReason::AlreadyReleased => "already_released",
            AbortReason::WrongParty => "wrong_party",
            AbortReason::EscrowNotOpen => "escrow_not_open",
            AbortReason::NoCommonVersion => "no_common_version",
            AbortReason::NoCommonScheme => "no_common_scheme",
            AbortReason::AmountAboveMax => "amount_above_max",
            AbortReason::OfflineUnsupported => "offline_unsupported",
            AbortReason::EmptyRequest => "empty_request",
            AbortReason::OfflineDoubleSpend => "offline_double_spend",
            AbortReason::OfflineLimit => "offline_limit",
        }
    }

    pub(crate) fn to_pb(self) -> i32 {
        let r = match self {
            AbortReason::InsufficientFunds => pb::AbortReason::InsufficientFunds,
            AbortReason::InvalidAmount => pb::AbortReason::InvalidAmount,
            AbortReason::CoinUnknown => pb::AbortReason::CoinUnknown,
            AbortReason::CoinNotOwned => pb::AbortReason::CoinNotOwned,
            AbortReason::CoinLocked => pb::AbortReason::CoinLocked,
            AbortReason::CoinSpent => pb::AbortReason::CoinSpent,
            AbortReason::BadSignature => pb::AbortReason::BadSignature,
            AbortReason::Expired => pb::AbortReason::Expired,
            AbortReason::Conflict => pb::AbortReason::Conflict,
            AbortReason::Timeout => pb::AbortReason::Timeout,
            AbortReason::WrongIssuer => pb::AbortReason::WrongIssuer,
            AbortReason::SagaAborted => pb::AbortReason::SagaAborted,
            AbortReason::SagaUnknown => pb::AbortReason::SagaUnknown,
            AbortReason::PayeeMismatch => pb::AbortReason::PayeeMismatch,
            AbortReason::UnknownWallet => pb::AbortReason::UnknownWallet,
            AbortReason::DuplicateCoin => pb::AbortReason::DuplicateCoin,
            AbortReason::TooManyCoins => pb::AbortReason::TooManyCoins,
            AbortReason::InsufficientReserve => pb::AbortReason::InsufficientReserve,
            AbortReason::AlreadyCommitted => pb::AbortReason::AlreadyCommitted,
            AbortReason::Busy => pb::AbortReason::Busy,
            AbortReason::CapExceeded => pb::AbortReason::CapExceeded,
            AbortReason::AlreadyClaimed => pb::AbortReason::AlreadyClaimed,
            AbortReason::AlreadyReleased => pb::AbortReason::AlreadyReleased,
            AbortReason::WrongParty => pb::AbortReason::WrongParty,
            AbortReason::EscrowNotOpen => pb::AbortReason::EscrowNotOpen,
            AbortReason::NoCommonVersion => pb::AbortReason::NoCommonVersion,
            AbortReason::NoCommonScheme => pb::AbortReason::NoCommonScheme,
            AbortReason::AmountAboveMax => pb::AbortReason::AmountAboveMax,
            AbortReason::OfflineUnsupported => pb::AbortReason::OfflineUnsupported,
            AbortReason::EmptyRequest => pb::AbortReason::EmptyRequest,
            AbortReason::OfflineDoubleSpend => pb::AbortReason::OfflineDoubleSpend,
            AbortReason::OfflineLimit => pb::AbortReason::OfflineLimit,
        };
        r as i32
    }

    pub(crate) fn from_pb(field: &'static str, v: i32) -> Result<AbortReason, ProtocolError> {
        let invalid = || ProtocolError::Invalid {
            field,
            why: format!("unknown abort reason {v}"),
        };
        let r = pb::AbortReason::try_from(v).map_err(|_| invalid())?;
        Ok(match r {
            pb::AbortReason::Unspecified => return Err(invalid()),
            pb::AbortReason::InsufficientFunds => AbortReason::InsufficientFunds,
            pb::AbortReason::InvalidAmount => AbortReason::InvalidAmount,
            pb::AbortReason::CoinUnknown => AbortReason::CoinUnknown,
            pb::AbortReason::CoinNotOwned => AbortReason::CoinNotOwned,
            pb::AbortReason::CoinLocked => AbortReason::CoinLocked,
            pb::AbortReason::CoinSpent => AbortReason::CoinSpent,
            pb::AbortReason::BadSignature => AbortReason::BadSignature,
            pb::AbortReason::Expired => AbortReason::Expired,
            pb::AbortReason::Conflict => AbortReason::Conflict,
            pb::AbortReason::Timeout => AbortReason::Timeout,
            pb::AbortReason::WrongIssuer => AbortReason::WrongIssuer,
            pb::AbortReason::SagaAborted => AbortReason::SagaAborted,
            pb::AbortReason::SagaUnknown => AbortReason::SagaUnknown,
            pb::AbortReason::PayeeMismatch => AbortReason::PayeeMismatch,
            pb::AbortReason::UnknownWallet => AbortReason::UnknownWallet,
            pb::AbortReason::DuplicateCoin => AbortReason::DuplicateCoin,
            pb::AbortReason::TooManyCoins => AbortReason::TooManyCoins,
            pb::AbortReason::InsufficientReserve => AbortReason::InsufficientReserve,
            pb::AbortReason::AlreadyCommitted => AbortReason::AlreadyCommitted,
            pb::AbortReason::Busy => AbortReason::Busy,
            pb::AbortReason::CapExceeded => AbortReason::CapExceeded,
            pb::AbortReason::AlreadyClaimed => AbortReason::AlreadyClaimed,
            pb::AbortReason::AlreadyReleased => AbortReason::AlreadyReleased,
            pb::AbortReason::WrongParty => AbortReason::WrongParty,
            pb::AbortReason::EscrowNotOpen => AbortReason::EscrowNotOpen,
            pb::AbortReason::NoCommonVersion => AbortReason::NoCommonVersion,
            pb::AbortReason::NoCommonScheme => AbortReason::NoCommonScheme,
            pb::AbortReason::AmountAboveMax => AbortReason::AmountAboveMax,
            pb::AbortReason::OfflineUnsupported => AbortReason::OfflineUnsupported,
            pb::AbortReason::EmptyRequest => AbortReason::EmptyRequest,
            pb::AbortReason::OfflineDoubleSpend => AbortReason::OfflineDoubleSpend,
            pb::AbortReason::OfflineLimit => AbortReason::OfflineLimit,
        })
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
