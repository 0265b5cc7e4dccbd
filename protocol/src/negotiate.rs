//! Proximity payment negotiation (DESIGN.md §3.6): what a wallet can do ([`Capabilities`]),
//! and [`negotiate`], the one rule that turns two wallets' capabilities into the features both
//! support ([`AgreedFeatures`]) or a clear refusal ([`NegotiationError`]).
//!
//! The rule is symmetric — `negotiate(a, b, ..)` and `negotiate(b, a, ..)` give the same answer
//! — so both wallets reach the same verdict from the capabilities they exchanged, and neither
//! has to trust the other's verdict.

use crate::error::ProtocolError;
use crate::ids::Amount;
use crate::pay::AbortReason;
use crate::pb;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The most protocol versions or signature schemes one side may list. Bounds the work of a
/// negotiation and the size of an offer.
pub const CAPABILITY_LIST_MAX: usize = 16;

/// A signature scheme a wallet's key store can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SignatureScheme {
    /// Ed25519 (what specie's key stores sign with).
    Ed25519,
    /// ECDSA over P-256.
    EcdsaP256,
    /// SM2 (the Chinese national standard).
    Sm2,
}

impl SignatureScheme {
    /// Preference order when both sides support several schemes: a fixed global order, not
    /// either side's, so that the choice is the same from both ends.
    pub const PREFERENCE: [SignatureScheme; 3] = [
        SignatureScheme::Ed25519,
        SignatureScheme::EcdsaP256,
        SignatureScheme::Sm2,
    ];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            SignatureScheme::Ed25519 => "ed25519",
            SignatureScheme::EcdsaP256 => "ecdsa_p256",
            SignatureScheme::Sm2 => "sm2",
        }
    }

    fn to_pb(self) -> i32 {
        (match self {
            SignatureScheme::Ed25519 => pb::SignatureScheme::Ed25519,
            SignatureScheme::EcdsaP256 => pb::SignatureScheme::EcdsaP256,
            SignatureScheme::Sm2 => pb::SignatureScheme::Sm2,
        }) as i32
    }

    fn from_pb(field: &'static str, v: i32) -> Result<SignatureScheme, ProtocolError> {
        match pb::SignatureScheme::try_from(v) {
            Ok(pb::SignatureScheme::Ed25519) => Ok(SignatureScheme::Ed25519),
            Ok(pb::SignatureScheme::EcdsaP256) => Ok(SignatureScheme::EcdsaP256),
            Ok(pb::SignatureScheme::Sm2) => Ok(SignatureScheme::Sm2),
            Ok(pb::SignatureScheme::Unspecified) | Err(_) => Err(ProtocolError::Invalid {
                field,
                why: format!("unknown signature scheme {v}"),
            }),
        }
    }
}

/// What one wallet (terminal) can do: its interaction capability parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Protocol versions it speaks.
    pub protocol_versions: Vec<u32>,
    /// Signature schemes its key store signs and verifies.
    pub signature_schemes: Vec<SignatureScheme>,
    /// Its offline limit when it supports offline payments; `None` when it does not.
    pub offline_limit: Option<Amount>,
    /// The largest single payment it accepts.
    pub max_amount: Amount,
}

/// The transaction features both wallets support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreedFeatures {
    /// The highest protocol version both speak.
    pub protocol_version: u32,
    /// The most preferred scheme both support.
    pub signature_scheme: SignatureScheme,
    /// Whether the payment is offline, and then the lower of the two offline limits.
    pub offline_limit: Option<Amount>,
    /// The lower of the two maximum amounts.
    pub max_amount: Amount,
}

/// Why two wallets cannot pay each other, with the facts.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum NegotiationError {
    /// The two sides share no protocol version.
    #[error("no common protocol version: ours {ours:?}, theirs {theirs:?}")]
    NoCommonVersion {
        /// Ours.
        ours: Vec<u32>,
        /// Theirs.
        theirs: Vec<u32>,
    },
    /// The two sides share no signature scheme.
    #[error("no common signature scheme: ours {ours:?}, theirs {theirs:?}")]
    NoCommonScheme {
        /// Ours.
        ours: Vec<SignatureScheme>,
        /// Theirs.
        theirs: Vec<SignatureScheme>,
    },
    /// The amount is above what one side accepts (its maximum, or its offline limit for an
    /// offline payment).
    #[error("amount {amount} is above the limit {max}")]
    AmountAboveMax {
        /// The amount asked for.
        amount: Amount,
        /// The lower of the two sides' limits.
        max: Amount,
    },
    /// An offline payment, and one side does not support offline payments.
    #[error("offline payments are not supported by both sides")]
    OfflineUnsupported,
}

impl NegotiationError {
    /// The reason carried in outcomes and reports.
    pub fn reason(&self) -> AbortReason {
        match self {
            NegotiationError::NoCommonVersion { .. } => AbortReason::NoCommonVersion,
            NegotiationError::NoCommonScheme { .. } => AbortReason::NoCommonScheme,
            NegotiationError::AmountAboveMax { .. } => AbortReason::AmountAboveMax,
            NegotiationError::OfflineUnsupported => AbortReason::OfflineUnsupported,
        }
    }
}

/// The negotiation rule: the features `ours` and `theirs` both support for a payment of
/// `amount` (zero when the amount is not known yet), offline when `offline`.
///
/// Checked in order: a common protocol version (the highest is taken), a common signature
/// scheme (by [`SignatureScheme::PREFERENCE`]), offline support on both sides, and the amount
/// within both maxima (and both offline limits, offline). Symmetric in `ours` and `theirs`.
///
/// ```
/// use specie_protocol::negotiate::{negotiate, Capabilities, SignatureScheme};
/// use specie_protocol::Amount;
/// let a = Capabilities {
///     protocol_versions: vec![1, 2],
///     signature_schemes: vec![SignatureScheme::Ed25519],
///     offline_limit: Some(Amount(50_000)),
///     max_amount: Amount(100_000),
/// };
/// let b = Capabilities { protocol_versions: vec![2, 3], ..a.clone() };
/// let agreed = negotiate(&a, &b, Amount(20_000), true).unwrap();
/// assert_eq!(agreed.protocol_version, 2);
/// assert_eq!(agreed.offline_limit, Some(Amount(50_000)));
/// ```
pub fn negotiate(
    ours: &Capabilities,
    theirs: &Capabilities,
    amount: Amount,
    offline: bool,
) -> Result<AgreedFeatures, NegotiationError> {
    let protocol_version = ours
        .protocol_versions
        .iter()
        .filter(|v| theirs.protocol_versions.contains(v))
        .max()
        .copied()
        .ok_or_else(|| NegotiationError::NoCommonVersion {
            ours: ours.protocol_versions.clone(),
            theirs: theirs.protocol_versions.clone(),
        })?;
    let signature_scheme = SignatureScheme::PREFERENCE
        .into_iter()
        .find(|s| ours.signature_schemes.contains(s) && theirs.signature_schemes.contains(s))
        .ok_or_else(|| NegotiationError::NoCommonScheme {
            ours: ours.signature_schemes.clone(),
            theirs: theirs.signature_schemes.clone(),
        })?;
    let max_amount = ours.max_amount.min(theirs.max_amount);
    let offline_limit = if offline {
        let (Some(a), Some(b)) = (ours.offline_limit, theirs.offline_limit) else {
            return Err(NegotiationError::OfflineUnsupported);
        };
        Some(a.min(b))
    } else {
        None
    };
    let limit = offline_limit.map_or(max_amount, |l| l.min(max_amount));
    if amount > limit {
        return Err(NegotiationError::AmountAboveMax { amount, max: limit });
    }
    Ok(AgreedFeatures {
        protocol_version,
        signature_scheme,
        offline_limit,
        max_amount,
    })
}

fn check_list_len(field: &'static str, len: usize) -> Result<(), ProtocolError> {
    if len > CAPABILITY_LIST_MAX {
        return Err(ProtocolError::Invalid {
            field,
            why: format!("{len} entries, at most {CAPABILITY_LIST_MAX} allowed"),
        });
    }
    Ok(())
}

impl TryFrom<pb::Capabilities> for Capabilities {
    type Error = ProtocolError;

    fn try_from(p: pb::Capabilities) -> Result<Capabilities, ProtocolError> {
        check_list_len("capabilities.protocol_versions", p.protocol_versions.len())?;
        check_list_len("capabilities.signature_schemes", p.signature_schemes.len())?;
        Ok(Capabilities {
            protocol_versions: p.protocol_versions,
            signature_schemes: p
                .signature_schemes
                .iter()
                .map(|s| SignatureScheme::from_pb("capabilities.signature_schemes[]", *s))
                .collect::<Result<_, _>>()?,
            offline_limit: p.offline_supported.then_some(Amount(p.offline_limit)),
            max_amount: Amount(p.max_amount),
        })
    }
}

impl From<&Capabilities> for pb::Capabilities {
    fn from(c: &Capabilities) -> pb::Capabilities {
        pb::Capabilities {
            protocol_versions: c.protocol_versions.clone(),
            signature_schemes: c.signature_schemes.iter().map(|s| s.to_pb()).collect(),
            offline_supported: c.offline_limit.is_some(),
            offline_limit: c.offline_limit.map_or(0, |a| a.0),
            max_amount: c.max_amount.0,
        }
    }
}

impl TryFrom<pb::AgreedFeatures> for AgreedFeatures {
    type Error = ProtocolError;

    fn try_from(p: pb::AgreedFeatures) -> Result<AgreedFeatures, ProtocolError> {
        Ok(AgreedFeatures {
            protocol_version: p.protocol_version,
            signature_scheme: SignatureScheme::from_pb(
                "agreed_features.signature_scheme",
                p.signature_scheme,
            )?,
            offline_limit: p.offline.then_some(Amount(p.offline_limit)),
            max_amount: Amount(p.max_amount),
        })
    }
}

impl From<&AgreedFeatures> for pb::AgreedFeatures {
    fn from(a: &AgreedFeatures) -> pb::AgreedFeatures {
        pb::AgreedFeatures {
            protocol_version: a.protocol_version,
            signature_scheme: a.signature_scheme.to_pb(),
            offline: a.offline_limit.is_some(),
            offline_limit: a.offline_limit.map_or(0, |l| l.0),
            max_amount: a.max_amount.0,
        }
    }
}

/// The messages of a negotiation, wallet to wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NegotiationMessage {
    /// Initiator → peer: my capabilities, for a payment of `amount` (offline or not).
    Offer {
        /// The initiator's capabilities.
        capabilities: Capabilities,
        /// The payment's amount (zero: not known yet).
        amount: Amount,
        /// Whether the payment is to be offline.
        offline: bool,
    },
    /// Peer → initiator: the peer's capabilities and its verdict.
    Answer {
        /// The peer's capabilities.
        capabilities: Capabilities,
        /// The features the peer agreed to, or why it refused.
        verdict: Result<AgreedFeatures, AbortReason>,
    },
}

impl NegotiationMessage {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            NegotiationMessage::Offer { .. } => "capability_offer",
            NegotiationMessage::Answer { .. } => "capability_answer",
        }
    }
}

impl TryFrom<pb::NegotiationMessage> for NegotiationMessage {
    type Error = ProtocolError;

    fn try_from(p: pb::NegotiationMessage) -> Result<NegotiationMessage, ProtocolError> {
        use crate::error::required;
        use pb::negotiation_message::Body;
        Ok(match required("negotiation.body", p.body)? {
            Body::Offer(m) => NegotiationMessage::Offer {
                capabilities: required("capability_offer.capabilities", m.capabilities)?
                    .try_into()?,
                amount: Amount(m.amount),
                offline: m.offline,
            },
            Body::Answer(m) => NegotiationMessage::Answer {
                capabilities: required("capability_answer.capabilities", m.capabilities)?
                    .try_into()?,
                verdict: if m.agreed {
                    Ok(required("capability_answer.features", m.features)?.try_into()?)
                } else {
                    Err(AbortReason::from_pb("capability_answer.reason", m.reason)?)
                },
            },
        })
    }
}

impl From<&NegotiationMessage> for pb::NegotiationMessage {
    fn from(m: &NegotiationMessage) -> pb::NegotiationMessage {
        use pb::negotiation_message::Body;
        let body = match m {
            NegotiationMessage::Offer {
                capabilities,
                amount,
                offline,
            } => Body::Offer(pb::CapabilityOffer {
                capabilities: Some(capabilities.into()),
                amount: amount.0,
                offline: *offline,
            }),
            NegotiationMessage::Answer {
                capabilities,
                verdict,
            } => Body::Answer(pb::CapabilityAnswer {
                capabilities: Some(capabilities.into()),
                agreed: verdict.is_ok(),
                reason: match verdict {
                    Ok(_) => pb::AbortReason::Unspecified as i32,
                    Err(r) => r.to_pb(),
                },
                features: verdict.as_ref().ok().map(Into::into),
            }),
        };
        pb::NegotiationMessage { body: Some(body) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn terminal(
        versions: &[u32],
        schemes: &[SignatureScheme],
        offline: Option<u64>,
        max: u64,
    ) -> Capabilities {
        Capabilities {
            protocol_versions: versions.to_vec(),
            signature_schemes: schemes.to_vec(),
            offline_limit: offline.map(Amount),
            max_amount: Amount(max),
        }
    }

    use SignatureScheme::{EcdsaP256, Ed25519, Sm2};

    #[test]
    fn agreed_features_are_the_best_both_support() {
        let a = terminal(&[1, 2, 3], &[Sm2, Ed25519], Some(50_000), 200_000);
        let b = terminal(
            &[2, 3, 4],
            &[EcdsaP256, Sm2, Ed25519],
            Some(30_000),
            100_000,
        );
        let agreed = negotiate(&a, &b, Amount(20_000), true).unwrap();
        assert_eq!(
            agreed,
            AgreedFeatures {
                protocol_version: 3,
                signature_scheme: Ed25519,
                offline_limit: Some(Amount(30_000)),
                max_amount: Amount(100_000),
            }
        );
        let online = negotiate(&a, &b, Amount(90_000), false).unwrap();
        assert_eq!(
            online.offline_limit, None,
            "an online payment agrees no offline limit"
        );
    }

    #[test]
    fn no_common_version_is_refused_with_both_lists() {
        let a = terminal(&[1], &[Ed25519], None, 100);
        let b = terminal(&[2, 3], &[Ed25519], None, 100);
        let err = negotiate(&a, &b, Amount(1), false).unwrap_err();
        assert_eq!(
            err,
            NegotiationError::NoCommonVersion {
                ours: vec![1],
                theirs: vec![2, 3]
            }
        );
        assert_eq!(err.reason(), AbortReason::NoCommonVersion);
    }

    #[test]
    fn no_common_scheme_is_refused() {
        let a = terminal(&[1], &[Ed25519], None, 100);
        let b = terminal(&[1], &[Sm2], None, 100);
        assert_eq!(
            negotiate(&a, &b, Amount(1), false).unwrap_err().reason(),
            AbortReason::NoCommonScheme
        );
    }

    #[test]
    fn an_amount_above_either_maximum_is_refused() {
        let a = terminal(&[1], &[Ed25519], Some(500), 10_000);
        let b = terminal(&[1], &[Ed25519], Some(800), 2_000);
        assert_eq!(
            negotiate(&a, &b, Amount(2_001), false),
            Err(NegotiationError::AmountAboveMax {
                amount: Amount(2_001),
                max: Amount(2_000)
            })
        );
        assert!(negotiate(&a, &b, Amount(2_000), false).is_ok());
        // Offline, the lower offline limit bounds the amount.
        assert_eq!(
            negotiate(&a, &b, Amount(501), true),
            Err(NegotiationError::AmountAboveMax {
                amount: Amount(501),
                max: Amount(500)
            })
        );
    }

    #[test]
    fn offline_needs_both_sides() {
        let a = terminal(&[1], &[Ed25519], Some(500), 10_000);
        let b = terminal(&[1], &[Ed25519], None, 10_000);
        assert_eq!(
            negotiate(&a, &b, Amount(10), true),
            Err(NegotiationError::OfflineUnsupported)
        );
        assert!(
            negotiate(&a, &b, Amount(10), false).is_ok(),
            "online is fine"
        );
    }

    #[test]
    fn messages_round_trip_through_protobuf() {
        let caps = terminal(&[1, 2], &[Ed25519, Sm2], Some(700), 9_000);
        let agreed = negotiate(&caps, &caps, Amount(5), true).unwrap();
        for m in [
            NegotiationMessage::Offer {
                capabilities: caps.clone(),
                amount: Amount(5),
                offline: true,
            },
            NegotiationMessage::Answer {
                capabilities: caps.clone(),
                verdict: Ok(agreed),
            },
            NegotiationMessage::Answer {
                capabilities: caps.clone(),
                verdict: Err(AbortReason::NoCommonScheme),
            },
        ] {
            let p = pb::NegotiationMessage::from(&m);
            assert_eq!(NegotiationMessage::try_from(p).unwrap(), m);
        }
    }

    #[test]
    fn an_oversized_capability_list_is_rejected_at_the_boundary() {
        let mut p = pb::Capabilities::from(&terminal(&[1], &[Ed25519], None, 1));
        p.protocol_versions = (0..100).collect();
        assert!(matches!(
            Capabilities::try_from(p),
            Err(ProtocolError::Invalid {
                field: "capabilities.protocol_versions",
                ..
            })
        ));
    }

    fn any_caps() -> impl Strategy<Value = Capabilities> {
        (
            proptest::collection::vec(1u32..5, 0..4),
            proptest::sample::subsequence(vec![Ed25519, EcdsaP256, Sm2], 0..=3),
            proptest::option::of(0u64..1_000),
            0u64..2_000,
        )
            .prop_map(|(versions, schemes, offline, max)| {
                terminal(&versions, &schemes, offline, max)
            })
    }

    proptest! {
        #[test]
        fn negotiation_is_symmetric(a in any_caps(), b in any_caps(), amount in 0u64..2_000, offline: bool) {
            let ab = negotiate(&a, &b, Amount(amount), offline);
            let ba = negotiate(&b, &a, Amount(amount), offline);
            prop_assert_eq!(ab.clone().map_err(|e| e.reason()), ba.map_err(|e| e.reason()));
            if let Ok(agreed) = ab {
                prop_assert!(a.protocol_versions.contains(&agreed.protocol_version));
                prop_assert!(b.protocol_versions.contains(&agreed.protocol_version));
                prop_assert!(Amount(amount) <= agreed.max_amount);
            }
        }
    }
}
