//! Coins: immutable, value-bearing records signed by their issuer.

use crate::canonical::Canon;
use crate::crypto::{self, BadSignature, KeyStore, PublicKey, Signature};
use crate::error::{fixed, required, ProtocolError};
use crate::ids::{Amount, CoinId, InstitutionId, SagaId};
use crate::pb;
use serde::{Deserialize, Serialize};

const COIN_BODY_DOMAIN: &str = "specie/v1/coin-body";

/// What a coin says about itself. Its SHA-256 over the canonical bytes is the coin's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoinBody {
    /// The institution that issued the coin and keeps its register entry.
    pub issuer: InstitutionId,
    /// The owner's public key: only its signature can spend the coin.
    pub owner: PublicKey,
    /// Value in minor units; never zero.
    pub denomination: Amount,
    /// Issuer-unique serial number, so that no two coins share an id.
    pub nonce: u64,
    /// The saga that issued this coin (its lineage).
    pub origin_saga: SagaId,
    /// Issuer's clock when the coin was issued.
    pub issued_at_ms: u64,
}

impl CoinBody {
    /// The canonical bytes the coin id is computed over.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(COIN_BODY_DOMAIN);
        c.u32(self.issuer.0)
            .fixed(&self.owner.0)
            .u64(self.denomination.0)
            .u64(self.nonce)
            .fixed(&self.origin_saga.0)
            .u64(self.issued_at_ms);
        c.finish()
    }

    /// The coin id: SHA-256 of the canonical body.
    pub fn id(&self) -> CoinId {
        CoinId(crypto::sha256(&self.canonical_bytes()))
    }
}

/// A coin: its body, its id and its issuer's signature over the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coin {
    /// SHA-256 of the canonical body (checked on every decode).
    pub id: CoinId,
    /// The coin's facts.
    pub body: CoinBody,
    /// The issuer's Ed25519 signature over `id`.
    pub issuer_signature: Signature,
}

impl Coin {
    /// Issues a coin: computes its id and signs it with the issuer's key.
    pub fn issue(body: CoinBody, issuer_key: &dyn KeyStore) -> Coin {
        let id = body.id();
        let issuer_signature = issuer_key.sign(&id.0);
        Coin {
            id,
            body,
            issuer_signature,
        }
    }

    /// Checks the issuer's signature (the id itself is checked when the coin is decoded).
    pub fn verify(&self, issuer_key: &PublicKey) -> Result<(), BadSignature> {
        if self.body.id() != self.id {
            return Err(BadSignature);
        }
        crypto::verify(issuer_key, &self.id.0, &self.issuer_signature)
    }

    /// The coin's value.
    pub fn value(&self) -> Amount {
        self.body.denomination
    }
}

impl TryFrom<pb::Coin> for Coin {
    type Error = ProtocolError;

    fn try_from(p: pb::Coin) -> Result<Coin, ProtocolError> {
        let b = required("coin.body", p.body)?;
        let body = CoinBody {
            issuer: InstitutionId(b.issuer),
            owner: PublicKey(fixed("coin.body.owner_key", &b.owner_key)?),
            denomination: Amount(b.denomination),
            nonce: b.nonce,
            origin_saga: SagaId(fixed("coin.body.origin_saga", &b.origin_saga)?),
            issued_at_ms: b.issued_at_ms,
        };
        if body.denomination.is_zero() {
            return Err(ProtocolError::Invalid {
                field: "coin.body.denomination",
                why: "a coin's denomination must be positive".into(),
            });
        }
        let id = CoinId(fixed("coin.id", &p.id)?);
        if body.id() != id {
            return Err(ProtocolError::Invalid {
                field: "coin.id",
                why: "does not match the SHA-256 of the canonical body".into(),
            });
        }
        Ok(Coin {
            id,
            body,
            issuer_signature: Signature(fixed("coin.issuer_signature", &p.issuer_signature)?),
        })
    }
}

impl From<&Coin> for pb::Coin {
    fn from(c: &Coin) -> pb::Coin {
        pb::Coin {
            id: c.id.0.to_vec().into(),
            body: Some(pb::CoinBody {
                issuer: c.body.issuer.0,
                owner_key: c.body.owner.0.to_vec().into(),
                denomination: c.body.denomination.0,
                nonce: c.body.nonce,
                origin_saga: c.body.origin_saga.0.to_vec().into(),
                issued_at_ms: c.body.issued_at_ms,
            }),
            issuer_signature: c.issuer_signature.0.to_vec().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SoftKeyStore;

    fn body() -> CoinBody {
        CoinBody {
            issuer: InstitutionId(1),
            owner: SoftKeyStore::from_seed([9; 32]).public_key(),
            denomination: Amount(500),
            nonce: 7,
            origin_saga: SagaId::from_u128(3),
            issued_at_ms: 1000,
        }
    }

    #[test]
    fn issued_coin_verifies_against_its_issuer_only() {
        let issuer = SoftKeyStore::from_seed([1; 32]);
        let other = SoftKeyStore::from_seed([2; 32]);
        let coin = Coin::issue(body(), &issuer);
        assert_eq!(coin.verify(&issuer.public_key()), Ok(()));
        assert_eq!(coin.verify(&other.public_key()), Err(BadSignature));
    }

    #[test]
    fn different_nonce_gives_a_different_id() {
        let mut b2 = body();
        b2.nonce += 1;
        assert_ne!(body().id(), b2.id());
    }

    #[test]
    fn decode_rejects_a_coin_whose_id_does_not_match_its_body() {
        let issuer = SoftKeyStore::from_seed([1; 32]);
        let coin = Coin::issue(body(), &issuer);
        let mut p = pb::Coin::from(&coin);
        p.body.as_mut().unwrap().denomination = 50_000; // inflate the value
        let err = Coin::try_from(p).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::Invalid {
                    field: "coin.id",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(Coin::try_from(pb::Coin::from(&coin)), Ok(coin));
    }
}
