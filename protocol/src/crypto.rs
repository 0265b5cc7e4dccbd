//! Ed25519 signatures and SHA-256 digests with `ring`, and the wallet's key store.

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(&self.0[..8]))
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "sig_serde")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..8]))
    }
}

mod sig_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: Vec<u8> = Deserialize::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("signature must be 64 bytes"))
    }
}

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("signature does not verify")]
pub struct BadSignature;

/// Where a private key lives and signs (the patents' "security chip"). The private key never
/// leaves the store; callers only get signatures.
pub trait KeyStore: Send + Sync {
    /// The public half of the key.
    fn public_key(&self) -> PublicKey;
    /// Signs `message` with the private key.
    fn sign(&self, message: &[u8]) -> Signature;
}

/// A key store in process memory, for simulation and tests. A deployment puts the key in a
/// secure element behind the same trait.
pub struct SoftKeyStore {
    pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl SoftKeyStore {
    /// Derives the key pair from a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> SoftKeyStore {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .expect("every 32-byte string is a valid Ed25519 seed");
        SoftKeyStore { pair, seed }
    }

    /// The seed, so that a software wallet can persist and reload its key.
    pub fn seed(&self) -> [u8; 32] {
        self.seed
    }
}

impl fmt::Debug for SoftKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftKeyStore")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl KeyStore for SoftKeyStore {
    fn public_key(&self) -> PublicKey {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(out)
    }

    fn sign(&self, message: &[u8]) -> Signature {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        Signature(out)
    }
}

/// Verifies an Ed25519 signature.
pub fn verify(key: &PublicKey, message: &[u8], signature: &Signature) -> Result<(), BadSignature> {
    UnparsedPublicKey::new(&signature::ED25519, &key.0)
        .verify(message, &signature.0)
        .map_err(|_| BadSignature)
}

/// Verifies an Ed25519 signature over a 32-byte digest, remembering the triples that verified
/// in a bounded process-wide memo: a signature many messages share (the one over a batch of
/// coins, which every payee of the batch checks) costs one verification per process. Only a
/// triple that verified is remembered, so a forged signature is checked — and refused — every
/// time.
pub fn verify_remembered(
    key: &PublicKey,
    digest: &[u8; 32],
    signature: &Signature,
) -> Result<(), BadSignature> {
    memo::check(key, digest, signature)
}

mod memo {
    use super::{verify, BadSignature, PublicKey, Signature};
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// Shards, so that actors on different threads rarely wait for each other.
    const SHARDS: usize = 8;
    /// Triples a shard remembers before it starts over (≈ 40 bytes each).
    const SHARD_MAX: usize = 4096;

    static VERIFIED: [Mutex<Option<HashSet<[u8; 32]>>>; SHARDS] =
        [const { Mutex::new(None) }; SHARDS];

    pub(super) fn check(
        key: &PublicKey,
        digest: &[u8; 32],
        signature: &Signature,
    ) -> Result<(), BadSignature> {
        let mut triple = [0u8; 128];
        triple[..32].copy_from_slice(&key.0);
        triple[32..64].copy_from_slice(digest);
        triple[64..].copy_from_slice(&signature.0);
        let name = super::sha256(&triple);
        let shard = &VERIFIED[name[0] as usize % SHARDS];
        let known =
            |set: &Option<HashSet<[u8; 32]>>| set.as_ref().is_some_and(|s| s.contains(&name));
        if known(&shard.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(());
        }
        verify(key, digest, signature)?;
        let mut guard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let set = guard.get_or_insert_with(HashSet::new);
        if set.len() >= SHARD_MAX {
            set.clear();
        }
        set.insert(name);
        Ok(())
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_verification_refuses_forgeries_every_time() {
        let alice = SoftKeyStore::from_seed([11; 32]);
        let digest = sha256(b"a batch root");
        let good = alice.sign(&digest);
        let mut forged = good;
        forged.0[5] ^= 1;
        for _ in 0..3 {
            assert_eq!(
                verify_remembered(&alice.public_key(), &digest, &good),
                Ok(())
            );
            assert_eq!(
                verify_remembered(&alice.public_key(), &digest, &forged),
                Err(BadSignature)
            );
            let other = sha256(b"another root");
            assert_eq!(
                verify_remembered(&alice.public_key(), &other, &good),
                Err(BadSignature)
            );
        }
    }

    #[test]
    fn signature_verifies_only_with_the_signers_key_and_message() {
        let alice = SoftKeyStore::from_seed([1; 32]);
        let mallory = SoftKeyStore::from_seed([2; 32]);
        let sig = alice.sign(b"pay 5");
        assert_eq!(verify(&alice.public_key(), b"pay 5", &sig), Ok(()));
        assert_eq!(
            verify(&alice.public_key(), b"pay 6", &sig),
            Err(BadSignature)
        );
        assert_eq!(
            verify(&mallory.public_key(), b"pay 5", &sig),
            Err(BadSignature)
        );
    }
}
