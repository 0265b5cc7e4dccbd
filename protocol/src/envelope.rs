//! The envelope: the one message that crosses between actors, and what it carries.

use crate::coin::Coin;
use crate::error::{fixed, required, ProtocolError};
use crate::escrow::EscrowMessage;
use crate::ids::{Amount, CoinId, InstitutionId, SagaId, WalletId};
use crate::merge::MergeMessage;
use crate::negotiate::NegotiationMessage;
use crate::offline::OfflineMessage;
use crate::pay::{AbortReason, SagaKind, SagaState, SignedAuthorization};
use crate::pb;
use crate::reconcile::{
    BatchHashAck, BatchHashPost, BatchId, LedgerForward, ReconcileReport, RecordHashesReply,
    RecordHashesRequest, ShardHashesReply, ShardHashesRequest,
};
use crate::update::UpdateMessage;
use bytes::Bytes;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where an envelope comes from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Address {
    /// The central bank (tier one). There is one.
    CentralBank,
    /// An operating institution.
    Institution(InstitutionId),
    /// A wallet.
    Wallet(WalletId),
    /// A client outside the cluster (an ingress connection, a load generator).
    External(u64),
    /// A reconciler: an institution's (the id is the institution id) or the reconciliation
    /// platform's ([`RECONCILIATION_PLATFORM`]).
    Reconciler(u64),
    /// An escrow contract; the id's top 16 bits name its hosting institution
    /// ([`crate::escrow::host_of`]).
    Escrow(u64),
}

/// The id of the reconciliation platform's reconciler: `Address::Reconciler(RECONCILIATION_PLATFORM)`.
/// Outside the range of institution ids, so it never names an institution's reconciler.
pub const RECONCILIATION_PLATFORM: u64 = u64::MAX;

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::CentralBank => f.write_str("central-bank"),
            Address::Institution(i) => write!(f, "{i}"),
            Address::Wallet(w) => write!(f, "{w}"),
            Address::External(n) => write!(f, "external-{n}"),
            Address::Reconciler(RECONCILIATION_PLATFORM) => f.write_str("reconciler-platform"),
            Address::Reconciler(i) => write!(f, "reconciler-inst-{i}"),
            Address::Escrow(id) => write!(
                f,
                "escrow-{}-{}",
                crate::escrow::host_of(*id).0,
                id & ((1 << crate::escrow::CONTRACT_SERIAL_BITS) - 1)
            ),
        }
    }
}

impl Address {
    fn to_pb(self) -> pb::Address {
        let (kind, id) = match self {
            Address::CentralBank => (pb::AddressKind::CentralBank, 0),
            Address::Institution(i) => (pb::AddressKind::Institution, u64::from(i.0)),
            Address::Wallet(w) => (pb::AddressKind::Wallet, w.0),
            Address::External(n) => (pb::AddressKind::External, n),
            Address::Reconciler(n) => (pb::AddressKind::Reconciler, n),
            Address::Escrow(n) => (pb::AddressKind::Escrow, n),
        };
        pb::Address {
            kind: kind as i32,
            id,
        }
    }

    /// The address as (kind, id), with the kind numbered as in `envelope.proto`: a compact,
    /// stable key for storage.
    pub fn code(self) -> (u8, u64) {
        let p = self.to_pb();
        (
            u8::try_from(p.kind).expect("address kinds fit in a byte"),
            p.id,
        )
    }

    /// The inverse of [`Address::code`]; `None` for an unknown kind or an id out of range.
    pub fn from_code(kind: u8, id: u64) -> Option<Address> {
        Address::from_pb(
            "address",
            Some(pb::Address {
                kind: i32::from(kind),
                id,
            }),
        )
        .ok()
    }

    fn from_pb(field: &'static str, p: Option<pb::Address>) -> Result<Address, ProtocolError> {
        let p = required(field, p)?;
        let invalid = |why: String| ProtocolError::Invalid { field, why };
        match pb::AddressKind::try_from(p.kind) {
            Ok(pb::AddressKind::CentralBank) => Ok(Address::CentralBank),
            Ok(pb::AddressKind::Institution) => u32::try_from(p.id)
                .map(|i| Address::Institution(InstitutionId(i)))
                .map_err(|_| invalid(format!("institution id {} out of range", p.id))),
            Ok(pb::AddressKind::Wallet) => Ok(Address::Wallet(WalletId(p.id))),
            Ok(pb::AddressKind::External) => Ok(Address::External(p.id)),
            Ok(pb::AddressKind::Reconciler) => {
                if p.id == RECONCILIATION_PLATFORM || u32::try_from(p.id).is_ok() {
                    Ok(Address::Reconciler(p.id))
                } else {
                    Err(invalid(format!(
                        "reconciler id {} is neither an institution nor the platform",
                        p.id
                    )))
                }
            }
            Ok(pb::AddressKind::Escrow) => Ok(Address::Escrow(p.id)),
            Ok(pb::AddressKind::Unspecified) | Err(_) => {
                Err(invalid(format!("unknown address kind {}", p.kind)))
            }
        }
    }
}

/// W3C trace context carried across actors and nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TraceContext {
    /// `version-traceid-parentid-flags`.
    pub traceparent: String,
    /// Vendor-specific state, passed through.
    pub tracestate: String,
}

/// The terminal outcome of a saga, as its coordinator tells the parties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaOutcome {
    /// Which saga kind.
    pub kind: SagaKind,
    /// Committed, or aborted with the reason.
    pub result: Result<(), AbortReason>,
    /// The coins the saga spent (empty when aborted).
    pub spent_coin_ids: Vec<CoinId>,
    /// When the coordinator decided commit (its clock, ms since the epoch): the time the
    /// saga's transaction records carry on both sides of reconciliation. 0 when aborted, and
    /// in the notices of wallets and escrows (their records carry it instead).
    pub decided_at_ms: u64,
}

/// What an envelope carries. One variant per message of `proto/specie/v1/pay.proto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Wallet → its institution: is `amount` within my available balance?
    BalanceQuery {
        /// The amount to cover.
        amount: Amount,
    },
    /// Institution → wallet: the available balance and the coins selected to cover the amount.
    BalanceReply {
        /// Sum of the wallet's active coins.
        available: Amount,
        /// Coins covering the amount; empty when they do not.
        coin_ids: Vec<CoinId>,
    },
    /// Payee (merchant) wallet → payer wallet: please pay this amount.
    CollectRequest {
        /// The amount asked for.
        amount: Amount,
        /// The merchant's wallet.
        payee: WalletId,
        /// The merchant's institution.
        payee_institution: InstitutionId,
        /// The payer's authorization must expire by then: after it (plus the lock timeout) the
        /// merchant may give up knowing the payment can no longer commit.
        expires_at_ms: u64,
    },
    /// Wallet → wallet: the other side declines (a payer declining a collect request, or a
    /// payee declining a payment not meant for it).
    PaymentDeclined {
        /// Why.
        reason: AbortReason,
    },
    /// Payer wallet → payee wallet: the signed payment.
    PaymentRequest(SignedAuthorization),
    /// Payee wallet → payee institution: redeem this payment for me.
    RedeemRequest(SignedAuthorization),
    /// Coordinator → issuer: lock the coins of this authorization.
    LockRequest(SignedAuthorization),
    /// Issuer → coordinator: the coins are locked (with their total), or why not.
    LockReply(Result<Amount, AbortReason>),
    /// Coordinator → issuer: the decision is commit; retire the locked coins.
    CommitRequest {
        /// When the coordinator decided (its clock): the time of the step's transaction
        /// records.
        decided_at_ms: u64,
    },
    /// Issuer → coordinator: committed, or why not.
    CommitReply(Result<(), AbortReason>),
    /// Coordinator → issuer: the decision is abort; unlock.
    AbortRequest {
        /// Why the saga aborted.
        reason: AbortReason,
    },
    /// Issuer → coordinator: the abort is done.
    AbortReply,
    /// Institution → wallet: a coin now owned by the wallet (resent until acknowledged).
    CoinIssued(Coin),
    /// Wallet → its institution: these coins arrived.
    CoinAck {
        /// The coins.
        coin_ids: Vec<CoinId>,
    },
    /// Coordinator → parties: the saga's terminal outcome.
    SagaOutcome(SagaOutcome),
    /// Anyone → coordinator: where does the saga stand?
    StatusQuery,
    /// Coordinator → asker: the saga's state.
    StatusReply {
        /// The state.
        state: SagaState,
        /// The reason when aborted.
        reason: Option<AbortReason>,
        /// When the coordinator decided commit; 0 unless committed.
        decided_at_ms: u64,
    },
    /// Coordinator → central bank: move backing reserve between institutions.
    MoveBacking {
        /// Institution whose backing decreases.
        from: InstitutionId,
        /// Institution whose backing increases.
        to: InstitutionId,
        /// How much.
        amount: Amount,
    },
    /// Institution → central bank: move this much of my reserve from free to backing.
    ReserveBacking {
        /// How much.
        amount: Amount,
    },
    /// Central bank → institution: done, or why not.
    ReserveAck(Result<(), AbortReason>),
    /// Wallet → institution: exchange this much account money into coins.
    ExchangeRequest {
        /// How much.
        amount: Amount,
    },
    /// Institution → wallet: the exchange is done (the coins follow as `CoinIssued`), or not.
    ExchangeReply {
        /// Done, or why not.
        result: Result<(), AbortReason>,
        /// When the institution issued the coins; 0 unless done.
        decided_at_ms: u64,
    },
    /// Institution reconciler → platform reconciler: append my batch hash to the hash chain.
    BatchHashPost(BatchHashPost),
    /// Platform → institution: the block holding the institution's post.
    BatchHashAck(BatchHashAck),
    /// Platform → institution: the child hashes of these nodes of the batch's shard tree.
    ShardHashesRequest(ShardHashesRequest),
    /// Institution → platform: the answer.
    ShardHashesReply(ShardHashesReply),
    /// Platform → institution: the record hashes of these (unequal) shards.
    RecordHashesRequest(RecordHashesRequest),
    /// Institution → platform: (part of) the answer.
    RecordHashesReply(RecordHashesReply),
    /// Platform → institution: the inconsistent records of a batch (none when agreed).
    ReconcileReport(ReconcileReport),
    /// Institution → platform: the report arrived.
    ReconcileReportAck {
        /// The batch.
        batch_id: BatchId,
    },
    /// Platform → institution: post your hash of this batch (an empty batch if you never had
    /// a record in it and have closed its interval).
    BatchHashRequest {
        /// The batch.
        batch_id: BatchId,
    },
    /// A node without the platform's reconciler → the ledger inbox on the node with it: the
    /// platform-side transaction records made there.
    LedgerForward(LedgerForward),
    /// Escrow pre-payment (wallets, escrow contract, issuer, merchant's institution).
    Escrow(EscrowMessage),
    /// The wallet update saga (wallet and its institution).
    WalletUpdate(UpdateMessage),
    /// Proximity payment negotiation (wallet to wallet).
    Negotiation(NegotiationMessage),
    /// The merge saga (wallet, its institution, the coins' issuers).
    Merge(MergeMessage),
    /// Split, offline redemption and offline sync (wallets, institutions, issuers).
    Offline(OfflineMessage),
    /// Institution → central bank: move this much of my reserve from backing to free (coins
    /// withdrawn to accounts).
    ReleaseBacking {
        /// How much.
        amount: Amount,
    },
}

impl Payload {
    /// A short name for logs, metrics and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Payload::BalanceQuery { .. } => "balance_query",
            Payload::BalanceReply { .. } => "balance_reply",
            Payload::CollectRequest { .. } => "collect_request",
            Payload::PaymentDeclined { .. } => "payment_declined",
            Payload::PaymentRequest(_) => "payment_request",
            Payload::RedeemRequest(_) => "redeem_request",
            Payload::LockRequest(_) => "lock_request",
            Payload::LockReply(_) => "lock_reply",
            Payload::CommitRequest { .. } => "commit_request",
            Payload::CommitReply(_) => "commit_reply",
            Payload::AbortRequest { .. } => "abort_request",
            Payload::AbortReply => "abort_reply",
            Payload::CoinIssued(_) => "coin_issued",
            Payload::CoinAck { .. } => "coin_ack",
            Payload::SagaOutcome(_) => "saga_outcome",
            Payload::StatusQuery => "status_query",
            Payload::StatusReply { .. } => "status_reply",
            Payload::MoveBacking { .. } => "move_backing",
            Payload::ReserveBacking { .. } => "reserve_backing",
            Payload::ReserveAck(_) => "reserve_ack",
            Payload::ExchangeRequest { .. } => "exchange_request",
            Payload::ExchangeReply { .. } => "exchange_reply",
            Payload::BatchHashPost(_) => "batch_hash_post",
            Payload::BatchHashAck(_) => "batch_hash_ack",
            Payload::ShardHashesRequest(_) => "shard_hashes_request",
            Payload::ShardHashesReply(_) => "shard_hashes_reply",
            Payload::RecordHashesRequest(_) => "record_hashes_request",
            Payload::RecordHashesReply(_) => "record_hashes_reply",
            Payload::ReconcileReport(_) => "reconcile_report",
            Payload::ReconcileReportAck { .. } => "reconcile_report_ack",
            Payload::BatchHashRequest { .. } => "batch_hash_request",
            Payload::LedgerForward(_) => "ledger_forward",
            Payload::Escrow(m) => m.name(),
            Payload::WalletUpdate(m) => m.name(),
            Payload::Negotiation(m) => m.name(),
            Payload::Merge(m) => m.name(),
            Payload::Offline(m) => m.name(),
            Payload::ReleaseBacking { .. } => "release_backing",
        }
    }
}

/// The one message that crosses between actors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique per sender; receivers may use it to drop exact duplicates.
    pub message_id: u64,
    /// The saga this message belongs to ([`SagaId::NONE`] if none).
    pub saga_id: SagaId,
    /// Sender.
    pub from: Address,
    /// Receiver.
    pub to: Address,
    /// 0 for the first send, +1 for each retry of the same step.
    pub attempt: u32,
    /// Trace context, when the saga is traced.
    pub trace: Option<TraceContext>,
    /// The message itself.
    pub payload: Payload,
}

fn ids_to_pb(ids: &[CoinId]) -> Vec<Bytes> {
    ids.iter().map(|c| Bytes::copy_from_slice(&c.0)).collect()
}

fn ids_from_pb(field: &'static str, ids: &[Bytes]) -> Result<Vec<CoinId>, ProtocolError> {
    ids.iter().map(|b| fixed(field, b).map(CoinId)).collect()
}

fn result_from_pb(
    field: &'static str,
    ok: bool,
    reason: i32,
) -> Result<Result<(), AbortReason>, ProtocolError> {
    if ok {
        Ok(Ok(()))
    } else {
        Ok(Err(AbortReason::from_pb(field, reason)?))
    }
}

fn reason_of<T>(r: &Result<T, AbortReason>) -> i32 {
    match r {
        Ok(_) => pb::AbortReason::Unspecified as i32,
        Err(reason) => reason.to_pb(),
    }
}

fn kind_to_pb(kind: SagaKind) -> i32 {
    match kind {
        SagaKind::Pay => pb::SagaKind::Pay as i32,
        SagaKind::Exchange => pb::SagaKind::Exchange as i32,
        SagaKind::EscrowDeposit => pb::SagaKind::EscrowDeposit as i32,
        SagaKind::EscrowClaim => pb::SagaKind::EscrowClaim as i32,
        SagaKind::EscrowRelease => pb::SagaKind::EscrowRelease as i32,
        SagaKind::EscrowExpiry => pb::SagaKind::EscrowExpiry as i32,
        SagaKind::WalletUpdate => pb::SagaKind::WalletUpdate as i32,
        SagaKind::Negotiation => pb::SagaKind::Negotiation as i32,
        SagaKind::Merge => pb::SagaKind::Merge as i32,
        SagaKind::Split => pb::SagaKind::Split as i32,
        SagaKind::OfflinePay => pb::SagaKind::OfflinePay as i32,
        SagaKind::OfflineRedeem => pb::SagaKind::OfflineRedeem as i32,
        SagaKind::OfflineSync => pb::SagaKind::OfflineSync as i32,
    }
}

fn kind_from_pb(v: i32) -> Result<SagaKind, ProtocolError> {
    match pb::SagaKind::try_from(v) {
        Ok(pb::SagaKind::Pay) => Ok(SagaKind::Pay),
        Ok(pb::SagaKind::Exchange) => Ok(SagaKind::Exchange),
        Ok(pb::SagaKind::EscrowDeposit) => Ok(SagaKind::EscrowDeposit),
        Ok(pb::SagaKind::EscrowClaim) => Ok(SagaKind::EscrowClaim),
        Ok(pb::SagaKind::EscrowRelease) => Ok(SagaKind::EscrowRelease),
        Ok(pb::SagaKind::EscrowExpiry) => Ok(SagaKind::EscrowExpiry),
        Ok(pb::SagaKind::WalletUpdate) => Ok(SagaKind::WalletUpdate),
        Ok(pb::SagaKind::Negotiation) => Ok(SagaKind::Negotiation),
        Ok(pb::SagaKind::Merge) => Ok(SagaKind::Merge),
        Ok(pb::SagaKind::Split) => Ok(SagaKind::Split),
        Ok(pb::SagaKind::OfflinePay) => Ok(SagaKind::OfflinePay),
        Ok(pb::SagaKind::OfflineRedeem) => Ok(SagaKind::OfflineRedeem),
        Ok(pb::SagaKind::OfflineSync) => Ok(SagaKind::OfflineSync),
        _ => Err(ProtocolError::Invalid {
            field: "saga_outcome.kind",
            why: format!("unknown saga kind {v}"),
        }),
    }
}

impl Envelope {
    /// Encodes the envelope as protobuf bytes.
    /// Encodes the envelope for the wire: its protobuf bytes followed by their CRC-32
    /// (4 bytes, little-endian), so that a corrupted envelope is rejected rather than read
    /// as another valid message.
    pub fn encode(&self) -> Bytes {
        let mut bytes = self.to_pb().encode_to_vec();
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Bytes::from(bytes)
    }

    /// Checks the checksum, then decodes and validates an envelope. Any malformed input is an
    /// error; nothing panics.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, ProtocolError> {
        let split = bytes.len().checked_sub(4).ok_or_else(|| {
            ProtocolError::Decode(format!("{} bytes is shorter than a checksum", bytes.len()))
        })?;
        let (body, crc) = bytes.split_at(split);
        let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != crc {
            return Err(ProtocolError::Checksum);
        }
        let p = pb::Envelope::decode(body)?;
        Envelope::try_from(p)
    }

    fn to_pb(&self) -> pb::Envelope {
        use pb::envelope::Payload as P;
        let payload = match &self.payload {
            Payload::BalanceQuery { amount } => {
                P::BalanceQuery(pb::BalanceQuery { amount: amount.0 })
            }
            Payload::BalanceReply {
                available,
                coin_ids,
            } => P::BalanceReply(pb::BalanceReply {
                available: available.0,
                coin_ids: ids_to_pb(coin_ids),
            }),
            Payload::CollectRequest {
                amount,
                payee,
                payee_institution,
                expires_at_ms,
            } => P::CollectRequest(pb::CollectRequest {
                amount: amount.0,
                payee: payee.0,
                payee_institution: payee_institution.0,
                expires_at_ms: *expires_at_ms,
            }),
            Payload::PaymentDeclined { reason } => P::PaymentDeclined(pb::PaymentDeclined {
                reason: reason.to_pb(),
            }),
            Payload::PaymentRequest(a) => P::PaymentRequest(pb::PaymentRequest {
                authorization: Some(a.into()),
            }),
            Payload::RedeemRequest(a) => P::RedeemRequest(pb::RedeemRequest {
                authorization: Some(a.into()),
            }),
            Payload::LockRequest(a) => P::LockRequest(pb::LockRequest {
                authorization: Some(a.into()),
            }),
            Payload::LockReply(r) => P::LockReply(pb::LockReply {
                locked: r.is_ok(),
                reason: reason_of(r),
                locked_total: r.map(|a| a.0).unwrap_or(0),
            }),
            Payload::CommitRequest { decided_at_ms } => P::CommitRequest(pb::CommitRequest {
                decided_at_ms: *decided_at_ms,
            }),
            Payload::CommitReply(r) => P::CommitReply(pb::CommitReply {
                committed: r.is_ok(),
                reason: reason_of(r),
            }),
            Payload::AbortRequest { reason } => P::AbortRequest(pb::AbortRequest {
                reason: reason.to_pb(),
            }),
            Payload::AbortReply => P::AbortReply(pb::AbortReply {}),
            Payload::CoinIssued(c) => P::CoinIssued(pb::CoinIssued {
                coin: Some(c.into()),
            }),
            Payload::CoinAck { coin_ids } => P::CoinAck(pb::CoinAck {
                coin_ids: ids_to_pb(coin_ids),
            }),
            Payload::SagaOutcome(o) => P::SagaOutcome(pb::SagaOutcome {
                kind: kind_to_pb(o.kind),
                committed: o.result.is_ok(),
                reason: reason_of(&o.result),
                spent_coin_ids: ids_to_pb(&o.spent_coin_ids),
                decided_at_ms: o.decided_at_ms,
            }),
            Payload::StatusQuery => P::StatusQuery(pb::StatusQuery {}),
            Payload::StatusReply {
                state,
                reason,
                decided_at_ms,
            } => P::StatusReply(pb::StatusReply {
                state: match state {
                    SagaState::Unknown => pb::SagaState::Unknown,
                    SagaState::InProgress => pb::SagaState::InProgress,
                    SagaState::Committed => pb::SagaState::Committed,
                    SagaState::Aborted => pb::SagaState::Aborted,
                } as i32,
                reason: reason.map_or(pb::AbortReason::Unspecified as i32, |r| r.to_pb()),
                decided_at_ms: *decided_at_ms,
            }),
            Payload::MoveBacking { from, to, amount } => P::MoveBacking(pb::MoveBacking {
                from: from.0,
                to: to.0,
                amount: amount.0,
            }),
            Payload::ReserveBacking { amount } => {
                P::ReserveBacking(pb::ReserveBacking { amount: amount.0 })
            }
            Payload::ReserveAck(r) => P::ReserveAck(pb::ReserveAck {
                ok: r.is_ok(),
                reason: reason_of(r),
            }),
            Payload::ExchangeRequest { amount } => {
                P::ExchangeRequest(pb::ExchangeRequest { amount: amount.0 })
            }
            Payload::ExchangeReply {
                result,
                decided_at_ms,
            } => P::ExchangeReply(pb::ExchangeReply {
                ok: result.is_ok(),
                reason: reason_of(result),
                decided_at_ms: *decided_at_ms,
            }),
            Payload::BatchHashPost(m) => P::BatchHashPost(m.into()),
            Payload::BatchHashAck(m) => P::BatchHashAck(m.into()),
            Payload::ShardHashesRequest(m) => P::ShardHashesRequest(m.into()),
            Payload::ShardHashesReply(m) => P::ShardHashesReply(m.into()),
            Payload::RecordHashesRequest(m) => P::RecordHashesRequest(m.into()),
            Payload::RecordHashesReply(m) => P::RecordHashesReply(m.into()),
            Payload::ReconcileReport(m) => P::ReconcileReport(m.into()),
            Payload::ReconcileReportAck { batch_id } => {
                P::ReconcileReportAck(pb::ReconcileReportAck {
                    batch_id: batch_id.0,
                })
            }
            Payload::BatchHashRequest { batch_id } => P::BatchHashRequest(pb::BatchHashRequest {
                batch_id: batch_id.0,
            }),
            Payload::LedgerForward(m) => P::LedgerForward(m.into()),
            Payload::Escrow(m) => P::Escrow(m.into()),
            Payload::WalletUpdate(m) => P::WalletUpdate(m.into()),
            Payload::Negotiation(m) => P::Negotiation(m.into()),
            Payload::Merge(m) => P::Merge(m.into()),
            Payload::Offline(m) => P::Offline(m.into()),
            Payload::ReleaseBacking { amount } => {
                P::ReleaseBacking(pb::ReleaseBacking { amount: amount.0 })
            }
        };
        pb::Envelope {
            message_id: self.message_id,
            saga_id: Bytes::copy_from_slice(&self.saga_id.0),
            from: Some(self.from.to_pb()),
            to: Some(self.to.to_pb()),
            attempt: self.attempt,
            trace: self.trace.as_ref().map(|t| pb::TraceContext {
                traceparent: t.traceparent.clone(),
                tracestate: t.tracestate.clone(),
            }),
            payload: Some(payload),
        }
    }
}

impl TryFrom<pb::Envelope> for Envelope {
    type Error = ProtocolError;

    fn try_from(p: pb::Envelope) -> Result<Envelope, ProtocolError> {
        use pb::envelope::Payload as P;
        let payload = match required("envelope.payload", p.payload)? {
            P::BalanceQuery(m) => Payload::BalanceQuery {
                amount: Amount(m.amount),
            },
            P::BalanceReply(m) => Payload::BalanceReply {
                available: Amount(m.available),
                coin_ids: ids_from_pb("balance_reply.coin_ids[]", &m.coin_ids)?,
            },
            P::CollectRequest(m) => Payload::CollectRequest {
                amount: Amount(m.amount),
                payee: WalletId(m.payee),
                payee_institution: InstitutionId(m.payee_institution),
                expires_at_ms: m.expires_at_ms,
            },
            P::PaymentDeclined(m) => Payload::PaymentDeclined {
                reason: AbortReason::from_pb("payment_declined.reason", m.reason)?,
            },
            P::PaymentRequest(m) => Payload::PaymentRequest(
                required("payment_request.authorization", m.authorization)?.try_into()?,
            ),
            P::RedeemRequest(m) => Payload::RedeemRequest(
                required("redeem_request.authorization", m.authorization)?.try_into()?,
            ),
            P::LockRequest(m) => Payload::LockRequest(
                required("lock_request.authorization", m.authorization)?.try_into()?,
            ),
            P::LockReply(m) => Payload::LockReply(
                result_from_pb("lock_reply.reason", m.locked, m.reason)?
                    .map(|()| Amount(m.locked_total)),
            ),
            P::CommitRequest(m) => Payload::CommitRequest {
                decided_at_ms: m.decided_at_ms,
            },
            P::CommitReply(m) => Payload::CommitReply(result_from_pb(
                "commit_reply.reason",
                m.committed,
                m.reason,
            )?),
            P::AbortRequest(m) => Payload::AbortRequest {
                reason: AbortReason::from_pb("abort_request.reason", m.reason)?,
            },
            P::AbortReply(_) => Payload::AbortReply,
            P::CoinIssued(m) => {
                Payload::CoinIssued(required("coin_issued.coin", m.coin)?.try_into()?)
            }
            P::CoinAck(m) => Payload::CoinAck {
                coin_ids: ids_from_pb("coin_ack.coin_ids[]", &m.coin_ids)?,
            },
            P::SagaOutcome(m) => Payload::SagaOutcome(SagaOutcome {
                kind: kind_from_pb(m.kind)?,
                result: result_from_pb("saga_outcome.reason", m.committed, m.reason)?,
                spent_coin_ids: ids_from_pb("saga_outcome.spent_coin_ids[]", &m.spent_coin_ids)?,
                decided_at_ms: m.decided_at_ms,
            }),
            P::StatusQuery(_) => Payload::StatusQuery,
            P::StatusReply(m) => {
                let state = match pb::SagaState::try_from(m.state) {
                    Ok(pb::SagaState::Unknown) => SagaState::Unknown,
                    Ok(pb::SagaState::InProgress) => SagaState::InProgress,
                    Ok(pb::SagaState::Committed) => SagaState::Committed,
                    Ok(pb::SagaState::Aborted) => SagaState::Aborted,
                    _ => {
                        return Err(ProtocolError::Invalid {
                            field: "status_reply.state",
                            why: format!("unknown saga state {}", m.state),
                        })
                    }
                };
                let reason = if state == SagaState::Aborted {
                    Some(AbortReason::from_pb("status_reply.reason", m.reason)?)
                } else {
                    None
                };
                Payload::StatusReply {
                    state,
                    reason,
                    decided_at_ms: m.decided_at_ms,
                }
            }
            P::MoveBacking(m) => Payload::MoveBacking {
                from: InstitutionId(m.from),
                to: InstitutionId(m.to),
                amount: Amount(m.amount),
            },
            P::ReserveBacking(m) => Payload::ReserveBacking {
                amount: Amount(m.amount),
            },
            P::ReserveAck(m) => {
                Payload::ReserveAck(result_from_pb("reserve_ack.reason", m.ok, m.reason)?)
            }
            P::ExchangeRequest(m) => Payload::ExchangeRequest {
                amount: Amount(m.amount),
            },
            P::ExchangeReply(m) => Payload::ExchangeReply {
                result: result_from_pb("exchange_reply.reason", m.ok, m.reason)?,
                decided_at_ms: m.decided_at_ms,
            },
            P::BatchHashPost(m) => Payload::BatchHashPost(m.try_into()?),
            P::BatchHashAck(m) => Payload::BatchHashAck(m.try_into()?),
            P::ShardHashesRequest(m) => Payload::ShardHashesRequest(m.try_into()?),
            P::ShardHashesReply(m) => Payload::ShardHashesReply(m.try_into()?),
            P::RecordHashesRequest(m) => Payload::RecordHashesRequest(m.try_into()?),
            P::RecordHashesReply(m) => Payload::RecordHashesReply(m.try_into()?),
            P::ReconcileReport(m) => Payload::ReconcileReport(m.try_into()?),
            P::ReconcileReportAck(m) => Payload::ReconcileReportAck {
                batch_id: BatchId(m.batch_id),
            },
            P::BatchHashRequest(m) => Payload::BatchHashRequest {
                batch_id: BatchId(m.batch_id),
            },
            P::LedgerForward(m) => Payload::LedgerForward(m.try_into()?),
            P::Escrow(m) => Payload::Escrow(m.try_into()?),
            P::WalletUpdate(m) => Payload::WalletUpdate(m.try_into()?),
            P::Negotiation(m) => Payload::Negotiation(m.try_into()?),
            P::Merge(m) => Payload::Merge(m.try_into()?),
            P::Offline(m) => Payload::Offline(m.try_into()?),
            P::ReleaseBacking(m) => Payload::ReleaseBacking {
                amount: Amount(m.amount),
            },
        };
        let trace = p.trace.map(|t| TraceContext {
            traceparent: t.traceparent,
            tracestate: t.tracestate,
        });
        Ok(Envelope {
            message_id: p.message_id,
            saga_id: SagaId(fixed("envelope.saga_id", &p.saga_id)?),
            from: Address::from_pb("envelope.from", p.from)?,
            to: Address::from_pb("envelope.to", p.to)?,
            attempt: p.attempt,
            trace,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyStore, SoftKeyStore};
    use crate::pay::PaymentAuthorization;
    use proptest::prelude::*;

    fn sample_authorization() -> SignedAuthorization {
        let keys = SoftKeyStore::from_seed([4; 32]);
        PaymentAuthorization {
            saga_id: SagaId::from_u128(77),
            payer: WalletId(1),
            payer_key: keys.public_key(),
            payer_institution: InstitutionId(0),
            coin_ids: vec![CoinId([1; 32]), CoinId([2; 32])],
            amount: Amount(1234),
            payee: WalletId(2),
            payee_institution: InstitutionId(1),
            expires_at_ms: 99,
        }
        .sign(&keys)
    }

    fn envelope(payload: Payload) -> Envelope {
        Envelope {
            message_id: 42,
            saga_id: SagaId::from_u128(77),
            from: Address::Wallet(WalletId(1)),
            to: Address::Institution(InstitutionId(3)),
            attempt: 2,
            trace: Some(TraceContext {
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: String::new(),
            }),
            payload,
        }
    }

    #[test]
    fn every_payload_round_trips() {
        let auth = sample_authorization();
        let coin = Coin::issue(
            crate::coin::CoinBody {
                issuer: InstitutionId(0),
                owner: auth.authorization.payer_key,
                denomination: Amount(10),
                nonce: 1,
                origin_saga: SagaId::from_u128(1),
                issued_at_ms: 5,
            },
            &SoftKeyStore::from_seed([8; 32]),
        );
        let payloads = vec![
            Payload::BalanceQuery { amount: Amount(5) },
            Payload::BalanceReply {
                available: Amount(9),
                coin_ids: vec![CoinId([3; 32])],
            },
            Payload::CollectRequest {
                amount: Amount(5),
                payee: WalletId(9),
                payee_institution: InstitutionId(2),
                expires_at_ms: 77,
            },
            Payload::PaymentDeclined {
                reason: AbortReason::InsufficientFunds,
            },
            Payload::PaymentRequest(auth.clone()),
            Payload::RedeemRequest(auth.clone()),
            Payload::LockRequest(auth.clone()),
            Payload::LockReply(Ok(Amount(20))),
            Payload::LockReply(Err(AbortReason::CoinSpent)),
            Payload::CommitRequest { decided_at_ms: 12 },
            Payload::CommitReply(Ok(())),
            Payload::CommitReply(Err(AbortReason::SagaAborted)),
            Payload::AbortRequest {
                reason: AbortReason::Timeout,
            },
            Payload::AbortReply,
            Payload::CoinIssued(coin),
            Payload::CoinAck {
                coin_ids: vec![CoinId([5; 32]), CoinId([6; 32])],
            },
            Payload::SagaOutcome(SagaOutcome {
                kind: SagaKind::Pay,
                result: Err(AbortReason::BadSignature),
                spent_coin_ids: vec![],
                decided_at_ms: 0,
            }),
            Payload::StatusQuery,
            Payload::StatusReply {
                state: SagaState::Aborted,
                reason: Some(AbortReason::Timeout),
                decided_at_ms: 0,
            },
            Payload::StatusReply {
                state: SagaState::Committed,
                reason: None,
                decided_at_ms: 1_700_000_000_123,
            },
            Payload::MoveBacking {
                from: InstitutionId(1),
                to: InstitutionId(2),
                amount: Amount(3),
            },
            Payload::ReserveBacking { amount: Amount(3) },
            Payload::ReserveAck(Err(AbortReason::InsufficientReserve)),
            Payload::ExchangeRequest { amount: Amount(3) },
            Payload::ExchangeReply {
                result: Ok(()),
                decided_at_ms: 99,
            },
        ];
        let payloads = payloads.into_iter().chain(reconcile_payloads());
        for payload in payloads {
            let env = envelope(payload);
            let decoded = Envelope::decode(&env.encode()).expect("round trip");
            assert_eq!(decoded, env);
        }
    }

    fn reconcile_payloads() -> Vec<Payload> {
        use crate::reconcile::*;
        let record = |id: u64| TransactionRecord {
            id: RecordId(id),
            saga_id: SagaId::from_u128(u128::from(id) + 1),
            kind: RecordKind::EscrowClaim,
            payer: WalletId(3),
            payee: WalletId(4),
            amount: Amount(250),
            at_ms: 1_700_000_000_000,
        };
        let count = |compared, unequal| LevelCount { compared, unequal };
        vec![
            Payload::BatchHashPost(BatchHashPost {
                batch_id: BatchId(7),
                batch_hash: Digest([1; 32]),
                record_count: 100,
            }),
            Payload::BatchHashAck(BatchHashAck {
                batch_id: BatchId(7),
                height: 3,
                block_hash: Digest([2; 32]),
                batch_hash: Digest([1; 32]),
            }),
            Payload::ShardHashesRequest(ShardHashesRequest {
                batch_id: BatchId(7),
                level: 1,
                nodes: vec![0, 5, 15],
            }),
            Payload::ShardHashesReply(ShardHashesReply {
                batch_id: BatchId(7),
                level: 1,
                nodes: vec![ShardNode {
                    node: 5,
                    children: vec![Digest([3; 32]), Digest([4; 32])],
                }],
            }),
            Payload::RecordHashesRequest(RecordHashesRequest {
                batch_id: BatchId(7),
                shards: vec![81, 4000],
            }),
            Payload::RecordHashesReply(RecordHashesReply {
                batch_id: BatchId(7),
                shards: vec![
                    ShardRecords {
                        shard: 81,
                        records: vec![
                            RecordHash {
                                record_id: RecordId(2),
                                hash: Digest([5; 32]),
                            },
                            RecordHash {
                                record_id: RecordId(9),
                                hash: Digest([6; 32]),
                            },
                        ],
                    },
                    ShardRecords {
                        shard: 4000,
                        records: vec![],
                    },
                ],
            }),
            Payload::ReconcileReport(ReconcileReport {
                batch_id: BatchId(7),
                inconsistent_total: 3,
                inconsistencies: vec![
                    Inconsistency {
                        record_id: RecordId(2),
                        kind: InconsistencyKind::Missing,
                        shard: 81,
                        platform_hash: Some(Digest([5; 32])),
                        institution_hash: None,
                        platform_record: Some(record(2)),
                    },
                    Inconsistency {
                        record_id: RecordId(9),
                        kind: InconsistencyKind::Altered,
                        shard: 81,
                        platform_hash: Some(Digest([6; 32])),
                        institution_hash: Some(Digest([7; 32])),
                        platform_record: Some(record(9)),
                    },
                    Inconsistency {
                        record_id: RecordId(11),
                        kind: InconsistencyKind::Extra,
                        shard: 4000,
                        platform_hash: None,
                        institution_hash: Some(Digest([8; 32])),
                        platform_record: None,
                    },
                ],
                batch: count(1, 1),
                shard: count(48, 3),
                record: count(70, 3),
            }),
            Payload::ReconcileReport(ReconcileReport {
                batch_id: BatchId(8),
                inconsistent_total: 0,
                inconsistencies: vec![],
                batch: count(1, 0),
                shard: count(0, 0),
                record: count(0, 0),
            }),
            Payload::ReconcileReportAck {
                batch_id: BatchId(7),
            },
            Payload::BatchHashRequest {
                batch_id: BatchId(7),
            },
            Payload::LedgerForward(LedgerForward {
                origin: 0x5eed,
                sequence: 3,
                records: vec![
                    ForwardedRecord {
                        institution: InstitutionId(0),
                        record: record(2),
                    },
                    ForwardedRecord {
                        institution: InstitutionId(0),
                        record: record(9),
                    },
                    ForwardedRecord {
                        institution: InstitutionId(3),
                        record: record(1),
                    },
                ],
            }),
        ]
    }

    #[test]
    fn reconciler_addresses_round_trip_and_bad_ids_are_rejected() {
        for address in [
            Address::Reconciler(0),
            Address::Reconciler(u64::from(u32::MAX)),
            Address::Reconciler(RECONCILIATION_PLATFORM),
        ] {
            let mut env = envelope(Payload::StatusQuery);
            env.to = address;
            assert_eq!(Envelope::decode(&env.encode()).unwrap().to, address);
        }
        let mut p = envelope(Payload::StatusQuery).to_pb();
        p.to = Some(pb::Address {
            kind: pb::AddressKind::Reconciler as i32,
            id: 1 << 40,
        });
        assert!(matches!(
            Envelope::try_from(p),
            Err(ProtocolError::Invalid {
                field: "envelope.to",
                ..
            })
        ));
    }

    #[test]
    fn truncated_envelopes_are_rejected() {
        let bytes = envelope(Payload::LockRequest(sample_authorization())).encode();
        for cut in 0..bytes.len() {
            assert!(
                Envelope::decode(&bytes[..cut]).is_err(),
                "a prefix of {cut} of {} bytes decoded",
                bytes.len()
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected_by_the_checksum() {
        let bytes = envelope(Payload::MoveBacking {
            from: InstitutionId(1),
            to: InstitutionId(2),
            amount: Amount(500),
        })
        .encode();
        for i in 0..bytes.len() * 8 {
            let mut flipped = bytes.to_vec();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(
                Envelope::decode(&flipped).is_err(),
                "bit {i} flipped still decodes"
            );
        }
    }

    #[test]
    fn wrong_length_fields_name_the_field() {
        let mut p = envelope(Payload::StatusQuery).to_pb();
        p.saga_id = Bytes::from_static(&[1, 2, 3]);
        let err = Envelope::try_from(p).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::BadLength {
                field: "envelope.saga_id",
                expected: 16,
                actual: 3
            }
        );
    }

    #[test]
    fn the_signature_covers_every_field_of_the_authorization() {
        let auth = sample_authorization();
        assert_eq!(auth.verify(), Ok(()));
        let mut tampered = auth.clone();
        tampered.authorization.amount = Amount(1235);
        assert!(tampered.verify().is_err());
        let mut tampered = auth.clone();
        tampered.authorization.payee = WalletId(666);
        assert!(tampered.verify().is_err());
        let mut tampered = auth;
        tampered.authorization.coin_ids.pop();
        assert!(tampered.verify().is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_valid_results_reencode(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(env) = Envelope::decode(&bytes) {
                // Whatever decodes must be a well-formed envelope that survives a round trip.
                prop_assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
            }
        }
    }
}
