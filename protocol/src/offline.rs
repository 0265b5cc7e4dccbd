//! Split and offline payment (DESIGN.md §3.3): the split authorization, offline transfer
//! records, trust chains, and the attribution of an offline double spend.
//!
//! Offline, a wallet pays by splitting what it holds — a coin, or the tip of a trust chain it
//! received — into the paid part and the remainder, and signing one [`TransferRecord`] for
//! each inside its key store. The payee gets the first [`TrustChain`] (the coin and the
//! ordered signed transfers), the payer keeps the second. Every record names its parent (the
//! coin id, or the digest of the previous record) and the signer's sequence number, so the
//! chains of one coin form a tree that the coin's issuer can check claim by claim: the
//! transfers under one parent never sum to more than the parent holds.
//!
//! [`TrustChain::verify`] is the structural check both a receiving wallet and the issuer
//! run: the coin's issuer signature, every record's signature, and that each record spends
//! what its signer held. Only the issuer can see a double spend (two chains that together
//! spend more than the coin holds), because only it sees every claim.

use crate::canonical::Canon;
use crate::coin::Coin;
use crate::crypto::{self, BadSignature, KeyStore, PublicKey, Signature};
use crate::error::{fixed, required, ProtocolError};
use crate::ids::{Amount, CoinId, InstitutionId, SagaId, WalletId};
use crate::pay::AbortReason;
use crate::pb;
use serde::{Deserialize, Serialize};
use std::fmt;

const SPLIT_AUTHORIZATION_DOMAIN: &str = "specie/v1/split-authorization";
const TRANSFER_DOMAIN: &str = "specie/v1/offline-transfer";
const CHAIN_DOMAIN: &str = "specie/v1/trust-chain";

/// The most transfers one trust chain may carry. Bounds the signature checks of one claim.
pub const TRANSFERS_MAX: usize = 16;

/// The most transfer records one offline sync may upload.
pub const SYNC_TRANSFERS_MAX: usize = 1024;

/// What a wallet signs to split one of its coins into two at the coin's issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitAuthorization {
    /// The saga.
    pub saga_id: SagaId,
    /// The owning wallet (the new coins are delivered to it).
    pub wallet: WalletId,
    /// Its key: it owns the coin and the new coins.
    pub wallet_key: PublicKey,
    /// The coin to split.
    pub coin_id: CoinId,
    /// The coin's issuer, which performs the split.
    pub issuer: InstitutionId,
    /// Value of the first new coin; the second gets the rest. `0 < amount < coin value`.
    pub amount: Amount,
    /// Void after this instant.
    pub expires_at_ms: u64,
}

impl SplitAuthorization {
    /// The canonical bytes the wallet signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(SPLIT_AUTHORIZATION_DOMAIN);
        c.fixed(&self.saga_id.0)
            .u64(self.wallet.0)
            .fixed(&self.wallet_key.0)
            .fixed(&self.coin_id.0)
            .u32(self.issuer.0)
            .u64(self.amount.0)
            .u64(self.expires_at_ms);
        c.finish()
    }

    /// Signs inside the wallet's key store.
    pub fn sign(self, keys: &dyn KeyStore) -> SignedSplitAuthorization {
        let signature = keys.sign(&self.signing_bytes());
        SignedSplitAuthorization {
            authorization: self,
            signature,
        }
    }
}

/// A split authorization with the wallet's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSplitAuthorization {
    /// What was signed.
    pub authorization: SplitAuthorization,
    /// The wallet's signature over `authorization.signing_bytes()`.
    pub signature: Signature,
}

impl SignedSplitAuthorization {
    /// Checks the signature against the key the authorization names.
    pub fn verify(&self) -> Result<(), BadSignature> {
        crypto::verify(
            &self.authorization.wallet_key,
            &self.authorization.signing_bytes(),
            &self.signature,
        )
    }

    /// A digest identifying this exact request.
    pub fn digest(&self) -> [u8; 32] {
        let mut bytes = self.authorization.signing_bytes();
        bytes.extend_from_slice(&self.signature.0);
        crypto::sha256(&bytes)
    }
}

/// One offline transfer: the holder of `parent` gives `amount` of it to `to_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    /// The chain's coin.
    pub coin_id: CoinId,
    /// The coin id for the first transfer, else the digest of the previous transfer: binds
    /// the record to its place in the chain.
    pub parent: [u8; 32],
    /// Value transferred; positive and at most what the parent holds.
    pub amount: Amount,
    /// The signing wallet (the holder of the parent).
    pub from: WalletId,
    /// Its key; the record's signature must verify with it.
    pub from_key: PublicKey,
    /// The receiving wallet.
    pub to: WalletId,
    /// Its key: the new holder.
    pub to_key: PublicKey,
    /// The signer's offline sequence number: unique per signer, rising.
    pub sequence: u64,
}

impl TransferRecord {
    /// The canonical bytes the signer signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(TRANSFER_DOMAIN);
        c.fixed(&self.coin_id.0)
            .fixed(&self.parent)
            .u64(self.amount.0)
            .u64(self.from.0)
            .fixed(&self.from_key.0)
            .u64(self.to.0)
            .fixed(&self.to_key.0)
            .u64(self.sequence);
        c.finish()
    }

    /// Signs inside the holder's key store.
    pub fn sign(self, keys: &dyn KeyStore) -> SignedTransfer {
        let signature = keys.sign(&self.signing_bytes());
        SignedTransfer {
            record: self,
            signature,
        }
    }
}

/// A transfer record with its signer's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTransfer {
    /// What was signed.
    pub record: TransferRecord,
    /// The signature of `record.from_key` over `record.signing_bytes()`.
    pub signature: Signature,
}

impl SignedTransfer {
    /// Checks the signature against the signer's key.
    pub fn verify(&self) -> Result<(), BadSignature> {
        crypto::verify(
            &self.record.from_key,
            &self.record.signing_bytes(),
            &self.signature,
        )
    }

    /// The record's identity in its coin's tree of transfers (the `parent` of the next).
    pub fn digest(&self) -> [u8; 32] {
        let mut bytes = self.record.signing_bytes();
        bytes.extend_from_slice(&self.signature.0);
        crypto::sha256(&bytes)
    }

    /// The record as protobuf bytes (for an upload that carries records opaquely, such as
    /// the wallet update's).
    pub fn to_bytes(&self) -> Vec<u8> {
        use prost::Message;
        pb::SignedTransfer::from(self).encode_to_vec()
    }

    /// Decodes and validates [`SignedTransfer::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedTransfer, ProtocolError> {
        use prost::Message;
        pb::SignedTransfer::decode(bytes)?.try_into()
    }
}

/// A trust chain's identifier: SHA-256 over its coin id and its transfers' digests.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainId(pub [u8; 32]);

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainId({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A coin and the ordered transfers made offline since it was issued. A chain with no
/// transfers stands for the coin itself in its owner's hands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustChain {
    /// The coin, as its issuer signed it.
    pub coin: Coin,
    /// The transfers, in order; each spends (part of) what the previous one gave.
    pub transfers: Vec<SignedTransfer>,
}

/// Who made an offline double spend: the signer of the transfer that would spend more than
/// its parent holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoubleSpend {
    /// The chain's coin.
    pub coin_id: CoinId,
    /// The wallet the offending record names as its signer.
    pub signer: WalletId,
    /// The key whose signature made the second spend (the attribution that counts: only the
    /// holder of the private key can have signed).
    pub signer_key: PublicKey,
    /// The offending record's sequence number.
    pub sequence: u64,
}

impl TrustChain {
    /// The coin held by its owner, before any offline transfer.
    pub fn of_coin(coin: Coin) -> TrustChain {
        TrustChain {
            coin,
            transfers: Vec::new(),
        }
    }

    /// The chain's identifier.
    pub fn id(&self) -> ChainId {
        let mut c = Canon::new(CHAIN_DOMAIN);
        c.fixed(&self.coin.id.0)
            .u32(u32::try_from(self.transfers.len()).expect("chain bounded"));
        for t in &self.transfers {
            c.fixed(&t.digest());
        }
        ChainId(crypto::sha256(&c.finish()))
    }

    /// What the chain's holder holds: the last transfer's amount, or the coin's value.
    pub fn value(&self) -> Amount {
        self.transfers
            .last()
            .map_or(self.coin.value(), |t| t.record.amount)
    }

    /// The key of the chain's holder: the last transfer's receiver, or the coin's owner.
    pub fn holder_key(&self) -> PublicKey {
        self.transfers
            .last()
            .map_or(self.coin.body.owner, |t| t.record.to_key)
    }

    /// The wallet the last transfer names as receiver (`None` for a bare coin).
    pub fn holder(&self) -> Option<WalletId> {
        self.transfers.last().map(|t| t.record.to)
    }

    /// The `parent` the next transfer out of this chain names.
    pub fn tip(&self) -> [u8; 32] {
        self.transfers.last().map_or(self.coin.id.0, |t| t.digest())
    }

    /// The structural check of a chain: the coin's issuer signature, and for every transfer
    /// in order that it names the coin and its parent, is signed by the key that held the
    /// parent, and moves a positive amount no larger than the parent held. Says nothing about
    /// other chains of the same coin (that is the issuer's ledger's job).
    pub fn verify(&self, issuer_key: &PublicKey) -> Result<(), AbortReason> {
        self.coin
            .verify(issuer_key)
            .map_err(|_| AbortReason::BadSignature)?;
        let mut holder = self.coin.body.owner;
        let mut held = self.coin.value();
        let mut parent = self.coin.id.0;
        for t in &self.transfers {
            let r = &t.record;
            if r.coin_id != self.coin.id || r.parent != parent || r.from_key != holder {
                // The signer did not hold what it claims to transfer.
                return Err(AbortReason::CoinNotOwned);
            }
            if r.amount.is_zero() || r.amount > held {
                return Err(AbortReason::InvalidAmount);
            }
            t.verify().map_err(|_| AbortReason::BadSignature)?;
            holder = r.to_key;
            held = r.amount;
            parent = t.digest();
        }
        Ok(())
    }

    /// Signs, inside `keys` (the holder's key store), the transfer of `amount` of this chain
    /// to `payee` and, when something is left, of the remainder back to the holder. Returns
    /// the payee's chain and the holder's remainder chain.
    ///
    /// The caller checks `0 < amount <= self.value()` and that `keys` is the holder's.
    pub fn split(
        &self,
        keys: &dyn KeyStore,
        holder: WalletId,
        payee: (WalletId, PublicKey),
        amount: Amount,
        sequence: u64,
    ) -> (TrustChain, Option<TrustChain>) {
        assert!(
            !amount.is_zero() && amount <= self.value(),
            "split checked by the caller"
        );
        assert_eq!(
            keys.public_key(),
            self.holder_key(),
            "only the holder signs a transfer"
        );
        let record = |amount: Amount, to: WalletId, to_key: PublicKey, sequence: u64| {
            TransferRecord {
                coin_id: self.coin.id,
                parent: self.tip(),
                amount,
                from: holder,
                from_key: keys.public_key(),
                to,
                to_key,
                sequence,
            }
            .sign(keys)
        };
        let mut paid = self.clone();
        paid.transfers
            .push(record(amount, payee.0, payee.1, sequence));
        let rest = self.value().checked_sub(amount).expect("checked above");
        let remainder = (!rest.is_zero()).then(|| {
            let mut remainder = self.clone();
            remainder
                .transfers
                .push(record(rest, holder, keys.public_key(), sequence + 1));
            remainder
        });
        (paid, remainder)
    }
}

impl TryFrom<pb::SignedSplitAuthorization> for SignedSplitAuthorization {
    type Error = ProtocolError;

    fn try_from(p: pb::SignedSplitAuthorization) -> Result<Self, ProtocolError> {
        let a = required("split.authorization", p.authorization)?;
        Ok(SignedSplitAuthorization {
            authorization: SplitAuthorization {
                saga_id: SagaId(fixed("split.authorization.saga_id", &a.saga_id)?),
                wallet: WalletId(a.wallet),
                wallet_key: PublicKey(fixed("split.authorization.wallet_key", &a.wallet_key)?),
                coin_id: CoinId(fixed("split.authorization.coin_id", &a.coin_id)?),
                issuer: InstitutionId(a.issuer),
                amount: Amount(a.amount),
                expires_at_ms: a.expires_at_ms,
            },
            signature: Signature(fixed("split.signature", &p.signature)?),
        })
    }
}

impl From<&SignedSplitAuthorization> for pb::SignedSplitAuthorization {
    fn from(s: &SignedSplitAuthorization) -> Self {
        let a = &s.authorization;
        pb::SignedSplitAuthorization {
            authorization: Some(pb::SplitAuthorization {
                saga_id: a.saga_id.0.to_vec().into(),
                wallet: a.wallet.0,
                wallet_key: a.wallet_key.0.to_vec().into(),
                coin_id: a.coin_id.0.to_vec().into(),
                issuer: a.issuer.0,
                amount: a.amount.0,
                expires_at_ms: a.expires_at_ms,
            }),
            signature: s.signature.0.to_vec().into(),
        }
    }
}

impl TryFrom<pb::SignedTransfer> for SignedTransfer {
    type Error = ProtocolError;

    fn try_from(p: pb::SignedTransfer) -> Result<Self, ProtocolError> {
        let r = required("transfer.record", p.record)?;
        Ok(SignedTransfer {
            record: TransferRecord {
                coin_id: CoinId(fixed("transfer.record.coin_id", &r.coin_id)?),
                parent: fixed("transfer.record.parent", &r.parent)?,
                amount: Amount(r.amount),
                from: WalletId(r.from_wallet),
                from_key: PublicKey(fixed("transfer.record.from_key", &r.from_key)?),
                to: WalletId(r.to_wallet),
                to_key: PublicKey(fixed("transfer.record.to_key", &r.to_key)?),
                sequence: r.sequence,
            },
            signature: Signature(fixed("transfer.signature", &p.signature)?),
        })
    }
}

impl From<&SignedTransfer> for pb::SignedTransfer {
    fn from(s: &SignedTransfer) -> Self {
        let r = &s.record;
        pb::SignedTransfer {
            record: Some(pb::TransferRecord {
                coin_id: r.coin_id.0.to_vec().into(),
                parent: r.parent.to_vec().into(),
                amount: r.amount.0,
                from_wallet: r.from.0,
                from_key: r.from_key.0.to_vec().into(),
                to_wallet: r.to.0,
                to_key: r.to_key.0.to_vec().into(),
                sequence: r.sequence,
            }),
            signature: s.signature.0.to_vec().into(),
        }
    }
}

impl TryFrom<pb::TrustChain> for TrustChain {
    type Error = ProtocolError;

    fn try_from(p: pb::TrustChain) -> Result<Self, ProtocolError> {
        let coin = required("trust_chain.coin", p.coin)?.try_into()?;
        if p.transfers.len() > TRANSFERS_MAX {
            return Err(ProtocolError::Invalid {
                field: "trust_chain.transfers",
                why: format!(
                    "{} transfers, at most {TRANSFERS_MAX} allowed",
                    p.transfers.len()
                ),
            });
        }
        let transfers = p
            .transfers
            .into_iter()
            .map(SignedTransfer::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustChain { coin, transfers })
    }
}

impl From<&TrustChain> for pb::TrustChain {
    fn from(c: &TrustChain) -> Self {
        pb::TrustChain {
            coin: Some((&c.coin).into()),
            transfers: c.transfers.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::DoubleSpend> for DoubleSpend {
    type Error = ProtocolError;

    fn try_from(p: pb::DoubleSpend) -> Result<Self, ProtocolError> {
        Ok(DoubleSpend {
            coin_id: CoinId(fixed("double_spend.coin_id", &p.coin_id)?),
            signer: WalletId(p.signer),
            signer_key: PublicKey(fixed("double_spend.signer_key", &p.signer_key)?),
            sequence: p.sequence,
        })
    }
}

impl From<&DoubleSpend> for pb::DoubleSpend {
    fn from(d: &DoubleSpend) -> Self {
        pb::DoubleSpend {
            coin_id: d.coin_id.0.to_vec().into(),
            signer: d.signer.0,
            signer_key: d.signer_key.0.to_vec().into(),
            sequence: d.sequence,
        }
    }
}

/// The messages of split, offline redemption and offline sync; their other steps reuse the
/// pay saga's (`CommitRequest`, `CommitReply`, `AbortRequest`, `AbortReply`, `CoinIssued`,
/// `SagaOutcome`, `StatusQuery`, `StatusReply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineMessage {
    /// Wallet → the coin's issuer: split it.
    SplitRequest(SignedSplitAuthorization),
    /// Wallet → its institution: redeem this chain for me.
    RedeemRequest(TrustChain),
    /// Coordinator → the coin's issuer: reserve this claim.
    Claim {
        /// The chain claimed.
        chain: TrustChain,
        /// The chain's last holder, who is paid.
        claimant: WalletId,
    },
    /// Issuer → coordinator: the claim is reserved (with its value), or why not.
    ClaimReply {
        /// The claim's value, or the refusal.
        result: Result<Amount, AbortReason>,
        /// Who double-spent, when the refusal is [`AbortReason::OfflineDoubleSpend`].
        double_spend: Option<DoubleSpend>,
    },
    /// Coordinator → claimant: the claim was an offline double spend, made by this signer.
    DoubleSpendReport(DoubleSpend),
    /// Wallet → its institution: the transfers I signed offline since my last sync.
    Sync {
        /// The records, in sequence order.
        transfers: Vec<SignedTransfer>,
    },
    /// Institution → wallet: the records up to this sequence are on record.
    SyncAck {
        /// The highest sequence number on record.
        sequence: u64,
    },
}

impl OfflineMessage {
    /// A short name for logs, metrics and reports.
    pub fn name(&self) -> &'static str {
        match self {
            OfflineMessage::SplitRequest(_) => "split_request",
            OfflineMessage::RedeemRequest(_) => "offline_redeem_request",
            OfflineMessage::Claim { .. } => "offline_claim",
            OfflineMessage::ClaimReply { .. } => "offline_claim_reply",
            OfflineMessage::DoubleSpendReport(_) => "double_spend_report",
            OfflineMessage::Sync { .. } => "offline_sync",
            OfflineMessage::SyncAck { .. } => "offline_sync_ack",
        }
    }
}

impl From<&OfflineMessage> for pb::OfflineMessage {
    fn from(m: &OfflineMessage) -> Self {
        use pb::offline_message::Body;
        let body = match m {
            OfflineMessage::SplitRequest(a) => Body::SplitRequest(pb::SplitRequest {
                authorization: Some(a.into()),
            }),
            OfflineMessage::RedeemRequest(chain) => Body::RedeemRequest(pb::OfflineRedeemRequest {
                chain: Some(chain.into()),
            }),
            OfflineMessage::Claim { chain, claimant } => Body::Claim(pb::OfflineClaim {
                chain: Some(chain.into()),
                claimant: claimant.0,
            }),
            OfflineMessage::ClaimReply {
                result,
                double_spend,
            } => Body::ClaimReply(pb::OfflineClaimReply {
                reserved: result.is_ok(),
                reason: match result {
                    Ok(_) => pb::AbortReason::Unspecified as i32,
                    Err(reason) => reason.to_pb(),
                },
                amount: result.map_or(0, |a| a.0),
                double_spend: double_spend.as_ref().map(Into::into),
            }),
            OfflineMessage::DoubleSpendReport(d) => {
                Body::DoubleSpendReport(pb::DoubleSpendReport {
                    double_spend: Some(d.into()),
                })
            }
            OfflineMessage::Sync { transfers } => Body::Sync(pb::OfflineSync {
                transfers: transfers.iter().map(Into::into).collect(),
            }),
            OfflineMessage::SyncAck { sequence } => Body::SyncAck(pb::OfflineSyncAck {
                sequence: *sequence,
            }),
        };
        pb::OfflineMessage { body: Some(body) }
    }
}

impl TryFrom<pb::OfflineMessage> for OfflineMessage {
    type Error = ProtocolError;

    fn try_from(p: pb::OfflineMessage) -> Result<Self, ProtocolError> {
        use pb::offline_message::Body;
        Ok(match required("offline.body", p.body)? {
            Body::SplitRequest(m) => OfflineMessage::SplitRequest(
                required("split_request.authorization", m.authorization)?.try_into()?,
            ),
            Body::RedeemRequest(m) => OfflineMessage::RedeemRequest(
                required("offline_redeem_request.chain", m.chain)?.try_into()?,
            ),
            Body::Claim(m) => OfflineMessage::Claim {
                chain: required("offline_claim.chain", m.chain)?.try_into()?,
                claimant: WalletId(m.claimant),
            },
            Body::ClaimReply(m) => {
                let result = if m.reserved {
                    Ok(Amount(m.amount))
                } else {
                    Err(AbortReason::from_pb(
                        "offline_claim_reply.reason",
                        m.reason,
                    )?)
                };
                OfflineMessage::ClaimReply {
                    result,
                    double_spend: m.double_spend.map(DoubleSpend::try_from).transpose()?,
                }
            }
            Body::DoubleSpendReport(m) => OfflineMessage::DoubleSpendReport(
                required("double_spend_report.double_spend", m.double_spend)?.try_into()?,
            ),
            Body::Sync(m) => {
                if m.transfers.len() > SYNC_TRANSFERS_MAX {
                    return Err(ProtocolError::Invalid {
                        field: "offline_sync.transfers",
                        why: format!(
                            "{} transfers, at most {SYNC_TRANSFERS_MAX} allowed",
                            m.transfers.len()
                        ),
                    });
                }
                OfflineMessage::Sync {
                    transfers: m
                        .transfers
                        .into_iter()
                        .map(SignedTransfer::try_from)
                        .collect::<Result<Vec<_>, _>>()?,
                }
            }
            Body::SyncAck(m) => OfflineMessage::SyncAck {
                sequence: m.sequence,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coin::CoinBody;
    use crate::crypto::SoftKeyStore;

    fn issuer() -> SoftKeyStore {
        SoftKeyStore::from_seed([1; 32])
    }

    fn wallet(n: u8) -> SoftKeyStore {
        SoftKeyStore::from_seed([n; 32])
    }

    fn coin(owner: &SoftKeyStore, value: u64) -> Coin {
        Coin::issue(
            CoinBody {
                issuer: InstitutionId(0),
                owner: owner.public_key(),
                denomination: Amount(value),
                nonce: 1,
                origin_saga: SagaId::from_u128(1),
                issued_at_ms: 0,
            },
            &issuer(),
        )
    }

    #[test]
    fn a_split_gives_the_payee_its_part_and_the_holder_the_rest() {
        let (w1, w2) = (wallet(11), wallet(12));
        let chain = TrustChain::of_coin(coin(&w1, 500));
        let (paid, rest) = chain.split(
            &w1,
            WalletId(11),
            (WalletId(12), w2.public_key()),
            Amount(200),
            7,
        );
        let rest = rest.expect("300 left");
        assert_eq!((paid.value(), rest.value()), (Amount(200), Amount(300)));
        assert_eq!(paid.holder_key(), w2.public_key());
        assert_eq!(rest.holder_key(), w1.public_key());
        assert_eq!(paid.holder(), Some(WalletId(12)));
        assert_eq!(paid.transfers[0].record.sequence, 7);
        assert_eq!(rest.transfers[0].record.sequence, 8);
        assert_eq!(paid.verify(&issuer().public_key()), Ok(()));
        assert_eq!(rest.verify(&issuer().public_key()), Ok(()));
        assert_ne!(paid.id(), rest.id());
        // Paying the whole value leaves no remainder.
        let (all, none) = chain.split(
            &w1,
            WalletId(11),
            (WalletId(12), w2.public_key()),
            Amount(500),
            9,
        );
        assert!(none.is_none());
        assert_eq!(all.value(), Amount(500));
    }

    #[test]
    fn a_received_chain_can_be_paid_onward_by_its_holder() {
        let (w1, w2, w3) = (wallet(11), wallet(12), wallet(13));
        let chain = TrustChain::of_coin(coin(&w1, 500));
        let (paid, _) = chain.split(
            &w1,
            WalletId(11),
            (WalletId(12), w2.public_key()),
            Amount(200),
            1,
        );
        let (onward, rest) = paid.split(
            &w2,
            WalletId(12),
            (WalletId(13), w3.public_key()),
            Amount(50),
            1,
        );
        assert_eq!(onward.transfers.len(), 2);
        assert_eq!(onward.verify(&issuer().public_key()), Ok(()));
        assert_eq!(rest.expect("150 left").value(), Amount(150));
        assert_eq!(
            onward.transfers[1].record.parent,
            paid.transfers[0].digest()
        );
    }

    #[test]
    fn verify_rejects_forged_spliced_and_inflated_chains() {
        let (w1, w2, mallory) = (wallet(11), wallet(12), wallet(66));
        let issuer_key = issuer().public_key();
        let chain = TrustChain::of_coin(coin(&w1, 500));
        let (paid, _) = chain.split(
            &w1,
            WalletId(11),
            (WalletId(12), w2.public_key()),
            Amount(200),
            1,
        );

        // Someone who never held the coin signs its transfer.
        let stolen = TrustChain::of_coin(coin(&w1, 500));
        let forged = TransferRecord {
            coin_id: stolen.coin.id,
            parent: stolen.tip(),
            amount: Amount(500),
            from: WalletId(11),
            from_key: w1.public_key(),
            to: WalletId(66),
            to_key: mallory.public_key(),
            sequence: 1,
        }
        .sign(&mallory);
        let mut bad = stolen.clone();
        bad.transfers.push(forged);
        assert_eq!(bad.verify(&issuer_key), Err(AbortReason::BadSignature));

        // The amount raised after signing.
        let mut inflated = paid.clone();
        inflated.transfers[0].record.amount = Amount(250);
        assert_eq!(inflated.verify(&issuer_key), Err(AbortReason::BadSignature));

        // More than the parent holds, properly signed.
        let (over, _) = (paid.clone(), ());
        let mut over = over;
        let too_much = TransferRecord {
            coin_id: over.coin.id,
            parent: over.tip(),
            amount: Amount(201),
            from: WalletId(12),
            from_key: w2.public_key(),
            to: WalletId(66),
            to_key: mallory.public_key(),
            sequence: 1,
        }
        .sign(&w2);
        over.transfers.push(too_much);
        assert_eq!(over.verify(&issuer_key), Err(AbortReason::InvalidAmount));

        // A record spliced under another parent.
        let mut spliced = paid.clone();
        let mut record = spliced.transfers[0].record.clone();
        record.parent = [7; 32];
        spliced.transfers[0] = record.sign(&w1);
        assert_eq!(spliced.verify(&issuer_key), Err(AbortReason::CoinNotOwned));

        // A coin not signed by the issuer the verifier trusts.
        assert_eq!(
            paid.verify(&mallory.public_key()),
            Err(AbortReason::BadSignature)
        );
    }

    #[test]
    fn chains_round_trip_and_over_long_chains_are_rejected() {
        let (w1, w2) = (wallet(11), wallet(12));
        let chain = TrustChain::of_coin(coin(&w1, 500));
        let (paid, _) = chain.split(
            &w1,
            WalletId(11),
            (WalletId(12), w2.public_key()),
            Amount(200),
            1,
        );
        assert_eq!(
            TrustChain::try_from(pb::TrustChain::from(&paid)),
            Ok(paid.clone())
        );
        let mut long = pb::TrustChain::from(&paid);
        let t = long.transfers[0].clone();
        long.transfers = vec![t; TRANSFERS_MAX + 1];
        assert!(matches!(
            TrustChain::try_from(long),
            Err(ProtocolError::Invalid {
                field: "trust_chain.transfers",
                ..
            })
        ));
    }

    #[test]
    fn the_split_signature_covers_the_coin_and_amount() {
        let w = wallet(11);
        let signed = SplitAuthorization {
            saga_id: SagaId::from_u128(4),
            wallet: WalletId(11),
            wallet_key: w.public_key(),
            coin_id: CoinId([3; 32]),
            issuer: InstitutionId(0),
            amount: Amount(10),
            expires_at_ms: 99,
        }
        .sign(&w);
        assert_eq!(signed.verify(), Ok(()));
        let mut tampered = signed.clone();
        tampered.authorization.amount = Amount(11);
        assert!(tampered.verify().is_err());
        let mut tampered = signed;
        tampered.authorization.coin_id = CoinId([4; 32]);
        assert!(tampered.verify().is_err());
    }

    #[test]
    fn every_merge_and_offline_payload_round_trips_through_an_envelope() {
        use crate::envelope::{Address, Envelope, Payload};
        use crate::merge::{CoinRef, MergeAuthorization, MergeMessage};
        let (w1, w2) = (wallet(11), wallet(12));
        let chain = TrustChain::of_coin(coin(&w1, 500));
        let (paid, rest) = chain.split(
            &w1,
            WalletId(11),
            (WalletId(12), w2.public_key()),
            Amount(200),
            1,
        );
        let merge = MergeAuthorization {
            saga_id: SagaId::from_u128(5),
            wallet: WalletId(11),
            wallet_key: w1.public_key(),
            institution: InstitutionId(0),
            coins: vec![CoinRef {
                id: chain.coin.id,
                issuer: InstitutionId(0),
            }],
            total: Amount(500),
            expires_at_ms: 9,
        }
        .sign(&w1);
        let split = SplitAuthorization {
            saga_id: SagaId::from_u128(6),
            wallet: WalletId(11),
            wallet_key: w1.public_key(),
            coin_id: chain.coin.id,
            issuer: InstitutionId(0),
            amount: Amount(10),
            expires_at_ms: 9,
        }
        .sign(&w1);
        let ds = DoubleSpend {
            coin_id: chain.coin.id,
            signer: WalletId(11),
            signer_key: w1.public_key(),
            sequence: 3,
        };
        let payloads = vec![
            Payload::Merge(MergeMessage::Request(merge.clone())),
            Payload::Merge(MergeMessage::LockRequest(merge)),
            Payload::Offline(OfflineMessage::SplitRequest(split)),
            Payload::Offline(OfflineMessage::RedeemRequest(paid.clone())),
            Payload::Offline(OfflineMessage::Claim {
                chain: paid.clone(),
                claimant: WalletId(12),
            }),
            Payload::Offline(OfflineMessage::ClaimReply {
                result: Ok(Amount(200)),
                double_spend: None,
            }),
            Payload::Offline(OfflineMessage::ClaimReply {
                result: Err(AbortReason::OfflineDoubleSpend),
                double_spend: Some(ds.clone()),
            }),
            Payload::Offline(OfflineMessage::DoubleSpendReport(ds)),
            Payload::Offline(OfflineMessage::Sync {
                transfers: vec![
                    paid.transfers[0].clone(),
                    rest.expect("300 left").transfers[0].clone(),
                ],
            }),
            Payload::Offline(OfflineMessage::SyncAck { sequence: 2 }),
        ];
        for payload in payloads {
            let env = Envelope {
                message_id: 1,
                saga_id: SagaId::from_u128(7),
                from: Address::Wallet(WalletId(11)),
                to: Address::Institution(InstitutionId(0)),
                attempt: 0,
                trace: None,
                payload,
            };
            assert_eq!(Envelope::decode(&env.encode()).expect("round trip"), env);
        }
        // Opaque records (the wallet update's upload) round trip too.
        let t = &paid.transfers[0];
        assert_eq!(SignedTransfer::from_bytes(&t.to_bytes()), Ok(t.clone()));
    }
}
