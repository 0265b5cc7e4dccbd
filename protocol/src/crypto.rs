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
