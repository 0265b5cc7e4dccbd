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

/// A coin: its body, its id and its issuer's seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coin {
    /// SHA-256 of the canonical body (checked on every decode).
    pub id: CoinId,
    /// The coin's facts.
    pub body: CoinBody,
    /// The issuer's signature, over the id or over the root of the coin's batch.
    pub seal: Seal,
}

/// The deepest batch path a coin may carry (a batch of at most 2^16 coins).
pub const SEAL_DEPTH_MAX: usize = 16;

/// The most coins an issuer seals under one signature. Each coin of a batch carries
/// log2(batch) sibling hashes, so the bound keeps a held coin small (4 hashes, 128 bytes)
/// while one signature still covers a whole group commit's coins at a few thousand sagas a
/// second.
pub const SEAL_BATCH_MAX: usize = 16;

const SEAL_NODE_DOMAIN: &[u8] = b"specie/v1/coin-seal-node";

/// What makes a coin genuine: the issuer's Ed25519 signature over the coin's id, or over the
/// Merkle root of a batch of coin ids the issuer sealed together (one signature for the
/// batch, verified once and remembered by every process that checks it), with the coin's path
/// to that root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The issuer's signature over the root (the id itself when `path` is empty).
    pub signature: Signature,
    /// The coin's position in its batch: bit `i` says on which side it is at level `i`.
    pub index: u32,
    /// Sibling hashes from the coin up to the root.
    pub path: Vec<[u8; 32]>,
}

impl Seal {
    /// No seal yet: a coin issued in a step carries this until the step's messages leave,
    /// when the issuer seals every coin of the batch (see [`Coin::seal_batch`]). It verifies
    /// against no key.
    pub fn pending() -> Seal {
        Seal {
            signature: Signature([0; 64]),
            index: 0,
            path: Vec::new(),
        }
    }

    /// Whether this is [`Seal::pending`].
    pub fn is_pending(&self) -> bool {
        self.path.is_empty() && self.signature.0 == [0; 64]
    }

    /// The root the signature is over, recomputed from a coin id along the path.
    fn root(&self, id: &CoinId) -> [u8; 32] {
        let mut node = id.0;
        for (level, sibling) in self.path.iter().enumerate() {
            node = if self.index >> level & 1 == 0 {
                seal_node(&node, sibling)
            } else {
                seal_node(sibling, &node)
            };
        }
        node
    }
}

fn seal_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut bytes = [0u8; SEAL_NODE_DOMAIN.len() + 64];
    bytes[..SEAL_NODE_DOMAIN.len()].copy_from_slice(SEAL_NODE_DOMAIN);
    bytes[SEAL_NODE_DOMAIN.len()..SEAL_NODE_DOMAIN.len() + 32].copy_from_slice(left);
    bytes[SEAL_NODE_DOMAIN.len() + 32..].copy_from_slice(right);
    crypto::sha256(&bytes)
}

impl Coin {
    /// Issues a coin sealed on its own: computes its id and signs it with the issuer's key.
    pub fn issue(body: CoinBody, issuer_key: &dyn KeyStore) -> Coin {
        let mut coin = Coin::unsealed(body);
        coin.seal.signature = issuer_key.sign(&coin.id.0);
        coin
    }

    /// A coin whose seal is still [`Seal::pending`]: its issuer seals it with the other coins
    /// that leave in the same batch.
    pub fn unsealed(body: CoinBody) -> Coin {
        Coin {
            id: body.id(),
            body,
            seal: Seal::pending(),
        }
    }

    /// Seals coins under one signature over the Merkle root of their ids (a single coin gets a
    /// signature over its id). Coins beyond [`SEAL_BATCH_MAX`] are sealed in further batches.
    pub fn seal_batch(coins: &mut [&mut Coin], issuer_key: &dyn KeyStore) {
        for batch in coins.chunks_mut(SEAL_BATCH_MAX) {
            // The leaves, padded to a power of two with the last one (a padded copy only
            // proves the same coin at a second position).
            let width = batch.len().next_power_of_two();
            let mut levels: Vec<Vec<[u8; 32]>> = vec![(0..width)
                .map(|i| batch[i.min(batch.len() - 1)].id.0)
                .collect()];
            while levels.last().expect("one level at least").len() > 1 {
                let below = levels.last().expect("one level at least");
                let above = below
                    .chunks(2)
                    .map(|pair| seal_node(&pair[0], &pair[1]))
                    .collect();
                levels.push(above);
            }
            let root = levels.last().expect("one level at least")[0];
            let signature = issuer_key.sign(&root);
            for (i, coin) in batch.iter_mut().enumerate() {
                let path = levels[..levels.len() - 1]
                    .iter()
                    .enumerate()
                    .map(|(level, nodes)| nodes[(i >> level) ^ 1])
                    .collect();
                coin.seal = Seal {
                    signature,
                    index: i as u32,
                    path,
                };
            }
        }
    }

    /// Whether the issuer has sealed the coin (see [`Seal::pending`]).
    pub fn is_sealed(&self) -> bool {
        !self.seal.is_pending()
    }

    /// Checks the issuer's seal (the id itself is checked when the coin is decoded). A batch
    /// signature that verified once in this process is not verified again.
    pub fn verify(&self, issuer_key: &PublicKey) -> Result<(), BadSignature> {
        if self.body.id() != self.id || self.seal.path.len() > SEAL_DEPTH_MAX {
            return Err(BadSignature);
        }
        if self.seal.path.is_empty() {
            return crypto::verify(issuer_key, &self.id.0, &self.seal.signature);
        }
        crypto::verify_remembered(issuer_key, &self.seal.root(&self.id), &self.seal.signature)
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
        if p.seal_path.len() > SEAL_DEPTH_MAX {
            return Err(ProtocolError::Invalid {
                field: "coin.seal_path",
                why: format!("at most {SEAL_DEPTH_MAX} hashes"),
            });
        }
        if u64::from(p.seal_index) >> p.seal_path.len() != 0 {
            return Err(ProtocolError::Invalid {
                field: "coin.seal_index",
                why: "beyond the batch its path describes".into(),
            });
        }
        let path = p
            .seal_path
            .iter()
            .map(|h| fixed("coin.seal_path", h))
            .collect::<Result<_, _>>()?;
        Ok(Coin {
            id,
            body,
            seal: Seal {
                signature: Signature(fixed("coin.issuer_signature", &p.issuer_signature)?),
                index: p.seal_index,
                path,
            },
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
            issuer_signature: c.seal.signature.0.to_vec().into(),
            seal_path: c.seal.path.iter().map(|h| h.to_vec().into()).collect(),
            seal_index: c.seal.index,
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

    fn coins(n: u64) -> Vec<Coin> {
        (0..n)
            .map(|nonce| Coin::unsealed(CoinBody { nonce, ..body() }))
            .collect()
    }

    #[test]
    fn a_batch_seal_verifies_each_coin_and_survives_the_wire() {
        let issuer = SoftKeyStore::from_seed([1; 32]);
        let other = SoftKeyStore::from_seed([2; 32]);
        for n in [1, 2, 3, 5, 16, 17, 40] {
            let mut batch = coins(n);
            assert!(batch.iter().all(|c| !c.is_sealed()));
            assert_eq!(batch[0].verify(&issuer.public_key()), Err(BadSignature));
            let mut refs: Vec<&mut Coin> = batch.iter_mut().collect();
            Coin::seal_batch(&mut refs, &issuer);
            for coin in &batch {
                assert!(coin.is_sealed());
                assert!(coin.seal.path.len() <= 4, "{n}: {:?}", coin.seal.path.len());
                assert_eq!(coin.verify(&issuer.public_key()), Ok(()), "{n}");
                assert_eq!(coin.verify(&other.public_key()), Err(BadSignature), "{n}");
                let back = Coin::try_from(pb::Coin::from(coin)).expect("decodes");
                assert_eq!(&back, coin);
            }
            // One signature per SEAL_BATCH_MAX coins.
            let signatures: std::collections::HashSet<_> =
                batch.iter().map(|c| c.seal.signature.0).collect();
            assert_eq!(signatures.len(), (n as usize).div_ceil(SEAL_BATCH_MAX));
        }
    }

    #[test]
    fn a_batch_seal_does_not_vouch_for_another_coin_or_position() {
        let issuer = SoftKeyStore::from_seed([1; 32]);
        let mut batch = coins(4);
        let mut refs: Vec<&mut Coin> = batch.iter_mut().collect();
        Coin::seal_batch(&mut refs, &issuer);
        // A coin outside the batch wearing a member's seal.
        let mut outsider = Coin::unsealed(CoinBody {
            nonce: 99,
            ..body()
        });
        outsider.seal = batch[1].seal.clone();
        assert_eq!(outsider.verify(&issuer.public_key()), Err(BadSignature));
        // A member claiming another position, or with a sibling altered.
        let mut moved = batch[1].clone();
        moved.seal.index = 2;
        assert_eq!(moved.verify(&issuer.public_key()), Err(BadSignature));
        let mut altered = batch[1].clone();
        altered.seal.path[1][0] ^= 1;
        assert_eq!(altered.verify(&issuer.public_key()), Err(BadSignature));
        // An inflated member: its id no longer matches its body.
        let mut inflated = batch[2].clone();
        inflated.body.denomination = Amount(1_000_000);
        assert_eq!(inflated.verify(&issuer.public_key()), Err(BadSignature));
        // A path deeper than a batch can be, or an index beyond it, is refused on decode.
        let mut p = pb::Coin::from(&batch[0]);
        p.seal_index = 4;
        assert!(Coin::try_from(p).is_err());
        let mut p = pb::Coin::from(&batch[0]);
        p.seal_path = vec![vec![0u8; 32].into(); SEAL_DEPTH_MAX + 1];
        assert!(Coin::try_from(p).is_err());
        let mut p = pb::Coin::from(&batch[0]);
        p.seal_path[0] = vec![0u8; 31].into();
        assert!(Coin::try_from(p).is_err());
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
