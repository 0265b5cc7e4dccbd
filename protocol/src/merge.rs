//! The merge saga's vocabulary (DESIGN.md §3.2): the wallet's signed merge authorization.
//!
//! A wallet hands coins issued by several institutions to its own institution, which locks
//! each at its issuer and issues one coin of exactly their sum. Every issuer checks the
//! wallet's signature over the whole request before it locks its share of the coins, so a
//! coordinator cannot merge coins the wallet did not sign for.

use crate::canonical::Canon;
use crate::crypto::{self, BadSignature, KeyStore, PublicKey, Signature};
use crate::error::{fixed, required, ProtocolError};
use crate::ids::{Amount, CoinId, InstitutionId, SagaId, WalletId};
use crate::pay::AUTHORIZATION_COINS_MAX;
use crate::pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

const MERGE_AUTHORIZATION_DOMAIN: &str = "specie/v1/merge-authorization";

/// The most coins one merge may name (the same bound as a payment's inputs).
pub const MERGE_COINS_MAX: usize = AUTHORIZATION_COINS_MAX;

/// A coin named in a merge, with its issuer (who keeps its register entry and locks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CoinRef {
    /// The coin.
    pub id: CoinId,
    /// Its issuer.
    pub issuer: InstitutionId,
}

/// What a wallet signs to merge coins into one coin of its own institution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeAuthorization {
    /// The saga; the authorization cannot be replayed under another.
    pub saga_id: SagaId,
    /// The merging wallet.
    pub wallet: WalletId,
    /// Its key: it must own every coin, and it owns the merged coin.
    pub wallet_key: PublicKey,
    /// The merging institution (the wallet's own): it coordinates and issues the merged coin.
    pub institution: InstitutionId,
    /// The coins, with their issuers. Distinct and non-empty in a valid request.
    pub coins: Vec<CoinRef>,
    /// The sum of the coins' denominations the wallet expects: the merged coin's value.
    pub total: Amount,
    /// Void after this instant (ms since the epoch).
    pub expires_at_ms: u64,
}

impl MergeAuthorization {
    /// The canonical bytes the wallet signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(MERGE_AUTHORIZATION_DOMAIN);
        c.fixed(&self.saga_id.0)
            .u64(self.wallet.0)
            .fixed(&self.wallet_key.0)
            .u32(self.institution.0)
            .u32(u32::try_from(self.coins.len()).expect("coin list bounded"));
        for coin in &self.coins {
            c.fixed(&coin.id.0).u32(coin.issuer.0);
        }
        c.u64(self.total.0).u64(self.expires_at_ms);
        c.finish()
    }

    /// Signs the authorization inside the wallet's key store.
    pub fn sign(self, keys: &dyn KeyStore) -> SignedMergeAuthorization {
        let signature = keys.sign(&self.signing_bytes());
        SignedMergeAuthorization {
            authorization: self,
            signature,
        }
    }

    /// The distinct issuers of the coins, in id order.
    pub fn issuers(&self) -> BTreeSet<InstitutionId> {
        self.coins.iter().map(|c| c.issuer).collect()
    }

    /// The coins of one issuer, in request order.
    pub fn coins_of(&self, issuer: InstitutionId) -> Vec<CoinId> {
        self.coins
            .iter()
            .filter(|c| c.issuer == issuer)
            .map(|c| c.id)
            .collect()
    }
}

/// A merge authorization with the wallet's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedMergeAuthorization {
    /// What was signed.
    pub authorization: MergeAuthorization,
    /// The wallet's Ed25519 signature over `authorization.signing_bytes()`.
    pub signature: Signature,
}

impl SignedMergeAuthorization {
    /// Checks the signature against the key the authorization names.
    pub fn verify(&self) -> Result<(), BadSignature> {
        crypto::verify(
            &self.authorization.wallet_key,
            &self.authorization.signing_bytes(),
            &self.signature,
        )
    }

    /// A digest identifying this exact request (same saga id, other digest: a conflict).
    pub fn digest(&self) -> [u8; 32] {
        let mut bytes = self.authorization.signing_bytes();
        bytes.extend_from_slice(&self.signature.0);
        crypto::sha256(&bytes)
    }
}

impl TryFrom<pb::SignedMergeAuthorization> for SignedMergeAuthorization {
    type Error = ProtocolError;

    fn try_from(p: pb::SignedMergeAuthorization) -> Result<Self, ProtocolError> {
        let a = required("merge.authorization", p.authorization)?;
        if a.coins.len() > MERGE_COINS_MAX {
            return Err(ProtocolError::Invalid {
                field: "merge.authorization.coins",
                why: format!("{} coins, at most {MERGE_COINS_MAX} allowed", a.coins.len()),
            });
        }
        let coins = a
            .coins
            .iter()
            .map(|c| {
                Ok(CoinRef {
                    id: CoinId(fixed("merge.authorization.coins[].coin_id", &c.coin_id)?),
                    issuer: InstitutionId(c.issuer),
                })
            })
            .collect::<Result<Vec<_>, ProtocolError>>()?;
        Ok(SignedMergeAuthorization {
            authorization: MergeAuthorization {
                saga_id: SagaId(fixed("merge.authorization.saga_id", &a.saga_id)?),
                wallet: WalletId(a.wallet),
                wallet_key: PublicKey(fixed("merge.authorization.wallet_key", &a.wallet_key)?),
                institution: InstitutionId(a.institution),
                coins,
                total: Amount(a.total),
                expires_at_ms: a.expires_at_ms,
            },
            signature: Signature(fixed("merge.signature", &p.signature)?),
        })
    }
}

impl From<&SignedMergeAuthorization> for pb::SignedMergeAuthorization {
    fn from(s: &SignedMergeAuthorization) -> Self {
        let a = &s.authorization;
        pb::SignedMergeAuthorization {
            authorization: Some(pb::MergeAuthorization {
                saga_id: a.saga_id.0.to_vec().into(),
                wallet: a.wallet.0,
                wallet_key: a.wallet_key.0.to_vec().into(),
                institution: a.institution.0,
                coins: a
                    .coins
                    .iter()
                    .map(|c| pb::CoinRef {
                        coin_id: c.id.0.to_vec().into(),
                        issuer: c.issuer.0,
                    })
                    .collect(),
                total: a.total.0,
                expires_at_ms: a.expires_at_ms,
            }),
            signature: s.signature.0.to_vec().into(),
        }
    }
}

/// The merge saga's own messages; its other steps reuse the pay saga's (`LockReply`,
/// `CommitRequest`, `CommitReply`, `AbortRequest`, `AbortReply`, `MoveBacking`, `ReserveAck`,
/// `CoinIssued`, `SagaOutcome`, `StatusQuery`, `StatusReply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeMessage {
    /// Wallet → its institution: merge these coins into one.
    Request(SignedMergeAuthorization),
    /// Coordinator → an issuer: lock your coins of this merge (answered with `LockReply`).
    LockRequest(SignedMergeAuthorization),
}

impl MergeMessage {
    /// A short name for logs, metrics and reports.
    pub fn name(&self) -> &'static str {
        match self {
            MergeMessage::Request(_) => "merge_request",
            MergeMessage::LockRequest(_) => "merge_lock_request",
        }
    }
}

impl From<&MergeMessage> for pb::MergeMessage {
    fn from(m: &MergeMessage) -> Self {
        use pb::merge_message::Body;
        let body = match m {
            MergeMessage::Request(a) => Body::Request(pb::MergeRequest {
                authorization: Some(a.into()),
            }),
            MergeMessage::LockRequest(a) => Body::LockRequest(pb::MergeLockRequest {
                authorization: Some(a.into()),
            }),
        };
        pb::MergeMessage { body: Some(body) }
    }
}

impl TryFrom<pb::MergeMessage> for MergeMessage {
    type Error = ProtocolError;

    fn try_from(p: pb::MergeMessage) -> Result<Self, ProtocolError> {
        use pb::merge_message::Body;
        Ok(match required("merge.body", p.body)? {
            Body::Request(m) => MergeMessage::Request(
                required("merge_request.authorization", m.authorization)?.try_into()?,
            ),
            Body::LockRequest(m) => MergeMessage::LockRequest(
                required("merge_lock_request.authorization", m.authorization)?.try_into()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SoftKeyStore;

    fn sample() -> MergeAuthorization {
        let keys = SoftKeyStore::from_seed([5; 32]);
        MergeAuthorization {
            saga_id: SagaId::from_u128(9),
            wallet: WalletId(3),
            wallet_key: keys.public_key(),
            institution: InstitutionId(0),
            coins: vec![
                CoinRef {
                    id: CoinId([1; 32]),
                    issuer: InstitutionId(1),
                },
                CoinRef {
                    id: CoinId([2; 32]),
                    issuer: InstitutionId(2),
                },
                CoinRef {
                    id: CoinId([3; 32]),
                    issuer: InstitutionId(1),
                },
            ],
            total: Amount(700),
            expires_at_ms: 50,
        }
    }

    #[test]
    fn the_signature_covers_every_coin_its_issuer_and_the_total() {
        let keys = SoftKeyStore::from_seed([5; 32]);
        let signed = sample().sign(&keys);
        assert_eq!(signed.verify(), Ok(()));
        let mut tampered = signed.clone();
        tampered.authorization.total = Amount(701);
        assert!(tampered.verify().is_err());
        let mut tampered = signed.clone();
        tampered.authorization.coins[1].issuer = InstitutionId(3);
        assert!(tampered.verify().is_err());
        let mut tampered = signed.clone();
        tampered.authorization.coins.pop();
        assert!(tampered.verify().is_err());
        let mut tampered = signed;
        tampered.authorization.institution = InstitutionId(2);
        assert!(tampered.verify().is_err());
    }

    #[test]
    fn issuers_and_their_coins() {
        let a = sample();
        assert_eq!(
            a.issuers().into_iter().collect::<Vec<_>>(),
            vec![InstitutionId(1), InstitutionId(2)]
        );
        assert_eq!(
            a.coins_of(InstitutionId(1)),
            vec![CoinId([1; 32]), CoinId([3; 32])]
        );
        assert!(a.coins_of(InstitutionId(0)).is_empty());
    }

    #[test]
    fn the_merge_domain_differs_from_the_payment_domain() {
        // A merge signature can never be replayed as a payment authorization.
        let bytes = sample().signing_bytes();
        assert!(bytes
            .windows(MERGE_AUTHORIZATION_DOMAIN.len())
            .any(|w| w == MERGE_AUTHORIZATION_DOMAIN.as_bytes()));
        assert!(!bytes
            .windows(b"payment-authorization".len())
            .any(|w| w == b"payment-authorization"));
    }

    #[test]
    fn too_many_coins_are_rejected_at_decode() {
        let keys = SoftKeyStore::from_seed([5; 32]);
        let mut a = sample();
        a.coins = (0..=MERGE_COINS_MAX)
            .map(|i| CoinRef {
                id: CoinId([i as u8; 32]),
                issuer: InstitutionId(1),
            })
            .collect();
        let p = pb::SignedMergeAuthorization::from(&a.sign(&keys));
        assert!(matches!(
            SignedMergeAuthorization::try_from(p),
            Err(ProtocolError::Invalid {
                field: "merge.authorization.coins",
                ..
            })
        ));
    }
}
