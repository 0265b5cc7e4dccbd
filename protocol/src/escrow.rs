//! Escrow pre-payment (DESIGN.md §3.4): the terms a payer signs to freeze coins for a
//! merchant, contract ids, and the messages between wallets, the escrow contract, the issuer of
//! the frozen coins and the merchant's institution.
//!
//! A contract id names its hosting institution in its top 16 bits ([`contract_id`],
//! [`host_of`]): the escrow actor runs beside the institution that issued the frozen coins, in
//! its supervision group.

use crate::canonical::Canon;
use crate::crypto::{self, BadSignature, KeyStore, PublicKey, Signature};
use crate::error::{fixed, required, ProtocolError};
use crate::ids::{Amount, CoinId, InstitutionId, SagaId, WalletId};
use crate::pay::{AbortReason, AUTHORIZATION_COINS_MAX};
use crate::pb;
use serde::{Deserialize, Serialize};

const TERMS_DOMAIN: &str = "specie/v1/escrow-terms";

/// Bits of a contract id below the hosting institution: the contract's serial number.
pub const CONTRACT_SERIAL_BITS: u32 = 48;

/// The id of contract `serial` hosted by `host`. Only the low 48 bits of `serial` are kept.
pub fn contract_id(host: InstitutionId, serial: u64) -> u64 {
    (u64::from(host.0) << CONTRACT_SERIAL_BITS) | (serial & ((1 << CONTRACT_SERIAL_BITS) - 1))
}

/// The institution hosting contract `id`.
pub fn host_of(id: u64) -> InstitutionId {
    InstitutionId(u32::try_from(id >> CONTRACT_SERIAL_BITS).expect("16 bits fit u32"))
}

/// What a payer signs to open an escrow: which coins to freeze, for which merchant, how much
/// the merchant may claim in total, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowTerms {
    /// The escrow contract's id.
    pub contract: u64,
    /// The deposit saga; the terms cannot be replayed under another.
    pub saga_id: SagaId,
    /// The paying wallet.
    pub payer: WalletId,
    /// Its key; it must own every coin.
    pub payer_key: PublicKey,
    /// The issuer of the coins, which hosts the escrow.
    pub payer_institution: InstitutionId,
    /// The coins to freeze, distinct. Their sum (the deposit) is at least the cap; what the
    /// merchant does not claim is refunded.
    pub coin_ids: Vec<CoinId>,
    /// The most the merchant may claim in total.
    pub cap: Amount,
    /// The merchant, the only wallet that may claim.
    pub merchant: WalletId,
    /// The merchant's institution, which issues the claims' coins.
    pub merchant_institution: InstitutionId,
    /// Claims after this instant are refused and what remains is refunded (escrow's clock,
    /// ms since the epoch).
    pub expires_at_ms: u64,
}

impl EscrowTerms {
    /// The canonical bytes the payer signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(TERMS_DOMAIN);
        c.u64(self.contract)
            .fixed(&self.saga_id.0)
            .u64(self.payer.0)
            .fixed(&self.payer_key.0)
            .u32(self.payer_institution.0)
            .u32(u32::try_from(self.coin_ids.len()).expect("coin list bounded"));
        for id in &self.coin_ids {
            c.fixed(&id.0);
        }
        c.u64(self.cap.0)
            .u64(self.merchant.0)
            .u32(self.merchant_institution.0)
            .u64(self.expires_at_ms);
        c.finish()
    }

    /// Signs the terms inside the payer's key store.
    pub fn sign(self, keys: &dyn KeyStore) -> SignedTerms {
        let signature = keys.sign(&self.signing_bytes());
        SignedTerms {
            terms: self,
            signature,
        }
    }
}

/// Escrow terms with the payer's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTerms {
    /// What was signed.
    pub terms: EscrowTerms,
    /// The payer's Ed25519 signature over `terms.signing_bytes()`.
    pub signature: Signature,
}

impl SignedTerms {
    /// Checks the signature against the key the terms name.
    pub fn verify(&self) -> Result<(), BadSignature> {
        crypto::verify(
            &self.terms.payer_key,
            &self.terms.signing_bytes(),
            &self.signature,
        )
    }

    /// A digest identifying this exact deposit (another under the same contract or saga is a
    /// conflict).
    pub fn digest(&self) -> [u8; 32] {
        let mut bytes = self.terms.signing_bytes();
        bytes.extend_from_slice(&self.signature.0);
        crypto::sha256(&bytes)
    }
}

impl TryFrom<pb::SignedEscrowTerms> for SignedTerms {
    type Error = ProtocolError;

    fn try_from(p: pb::SignedEscrowTerms) -> Result<SignedTerms, ProtocolError> {
        let t = required("escrow.terms", p.terms)?;
        if t.coin_ids.len() > AUTHORIZATION_COINS_MAX {
            return Err(ProtocolError::Invalid {
                field: "escrow.terms.coin_ids",
                why: format!(
                    "{} coins, at most {AUTHORIZATION_COINS_MAX} allowed",
                    t.coin_ids.len()
                ),
            });
        }
        Ok(SignedTerms {
            terms: EscrowTerms {
                contract: t.contract,
                saga_id: SagaId(fixed("escrow.terms.saga_id", &t.saga_id)?),
                payer: WalletId(t.payer),
                payer_key: PublicKey(fixed("escrow.terms.payer_key", &t.payer_key)?),
                payer_institution: InstitutionId(t.payer_institution),
                coin_ids: t
                    .coin_ids
                    .iter()
                    .map(|b| fixed("escrow.terms.coin_ids[]", b).map(CoinId))
                    .collect::<Result<_, _>>()?,
                cap: Amount(t.cap),
                merchant: WalletId(t.merchant),
                merchant_institution: InstitutionId(t.merchant_institution),
                expires_at_ms: t.expires_at_ms,
            },
            signature: Signature(fixed("escrow.signature", &p.signature)?),
        })
    }
}

impl From<&SignedTerms> for pb::SignedEscrowTerms {
    fn from(s: &SignedTerms) -> pb::SignedEscrowTerms {
        let t = &s.terms;
        pb::SignedEscrowTerms {
            terms: Some(pb::EscrowTerms {
                contract: t.contract,
                saga_id: t.saga_id.0.to_vec().into(),
                payer: t.payer.0,
                payer_key: t.payer_key.0.to_vec().into(),
                payer_institution: t.payer_institution.0,
                coin_ids: t.coin_ids.iter().map(|c| c.0.to_vec().into()).collect(),
                cap: t.cap.0,
                merchant: t.merchant.0,
                merchant_institution: t.merchant_institution.0,
                expires_at_ms: t.expires_at_ms,
            }),
            signature: s.signature.0.to_vec().into(),
        }
    }
}

/// What one settlement does at the issuer of the frozen coins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settlement {
    /// Retire the frozen coins, re-freeze what remains as one new coin, and pay `amount` to the
    /// merchant (issued here when the merchant banks here, else by its institution).
    Claim {
        /// Paid to the merchant.
        amount: Amount,
        /// The merchant.
        merchant: WalletId,
        /// The merchant's institution.
        merchant_institution: InstitutionId,
    },
    /// Retire the frozen coins and issue their value to the payer as a new coin.
    Refund,
}

/// Which step of an escrow an outcome is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EscrowStep {
    /// Opening: the coins were frozen (or not).
    Deposit,
    /// A merchant's claim.
    Claim,
    /// The payer's release.
    Release,
    /// The escrow expired.
    Expiry,
}

/// How an escrow step ended, as the escrow tells the wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowResult {
    /// The step.
    pub step: EscrowStep,
    /// Done, or why not.
    pub result: Result<(), AbortReason>,
    /// Deposit: the value frozen; claim: paid; release and expiry: refunded.
    pub amount: Amount,
    /// What the merchant may still claim.
    pub remaining: Amount,
}

/// The messages of escrow pre-payment. The envelope's saga id keys each step: the deposit's,
/// a claim's, a release's or the expiry's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EscrowMessage {
    /// Payer wallet → escrow: open with this deposit.
    Open(SignedTerms),
    /// Escrow → issuer: freeze the deposit's coins.
    Freeze(SignedTerms),
    /// Issuer → escrow: frozen (with their total), or why not.
    FreezeReply(Result<Amount, AbortReason>),
    /// Escrow → issuer: the deposit was abandoned before it opened; release any freeze.
    Unfreeze {
        /// Why.
        reason: AbortReason,
    },
    /// Issuer → escrow: nothing of the deposit is frozen any more.
    UnfreezeReply,
    /// Merchant wallet → escrow: pay me `amount` under claim number `claim_id`.
    Claim {
        /// The merchant's claim number; each resolves exactly once.
        claim_id: u64,
        /// How much.
        amount: Amount,
        /// The merchant's institution (must match the terms).
        merchant_institution: InstitutionId,
    },
    /// Payer wallet → escrow: refund what remains.
    Release,
    /// Escrow → issuer: apply settlement number `seq` (in order).
    Settle {
        /// Settlements apply in sequence, starting at 1.
        seq: u32,
        /// What to do.
        settlement: Settlement,
        /// When the escrow decided it (its clock): the time of its transaction records.
        decided_at_ms: u64,
    },
    /// Issuer → escrow: settlement `seq` is applied, or why not.
    SettleReply {
        /// The settlement.
        seq: u32,
        /// Its answer.
        result: Result<(), AbortReason>,
    },
    /// Escrow → merchant's institution (when not the issuer): issue the claim's coin and move
    /// the backing from the issuer.
    Payout {
        /// Paid.
        amount: Amount,
        /// To whom.
        merchant: WalletId,
        /// The issuer of the retired frozen coins, whose backing moves.
        from: InstitutionId,
        /// When the escrow decided the claim: the time of its transaction records.
        decided_at_ms: u64,
        /// The escrow's payer: the payer of the claim's transaction record.
        payer: WalletId,
    },
    /// Merchant's institution → escrow: the coin is issued and the backing moved, or why not.
    PayoutReply(Result<(), AbortReason>),
    /// Escrow → wallet: how a step ended.
    Result(EscrowResult),
}

impl EscrowMessage {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            EscrowMessage::Open(_) => "escrow_open",
            EscrowMessage::Freeze(_) => "escrow_freeze",
            EscrowMessage::FreezeReply(_) => "escrow_freeze_reply",
            EscrowMessage::Unfreeze { .. } => "escrow_unfreeze",
            EscrowMessage::UnfreezeReply => "escrow_unfreeze_reply",
            EscrowMessage::Claim { .. } => "escrow_claim",
            EscrowMessage::Release => "escrow_release",
            EscrowMessage::Settle { .. } => "escrow_settle",
            EscrowMessage::SettleReply { .. } => "escrow_settle_reply",
            EscrowMessage::Payout { .. } => "escrow_payout",
            EscrowMessage::PayoutReply(_) => "escrow_payout_reply",
            EscrowMessage::Result(_) => "escrow_result",
        }
    }
}

fn reason_pb<T>(r: &Result<T, AbortReason>) -> i32 {
    match r {
        Ok(_) => pb::AbortReason::Unspecified as i32,
        Err(reason) => reason.to_pb(),
    }
}

fn result_pb(
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

impl TryFrom<pb::EscrowMessage> for EscrowMessage {
    type Error = ProtocolError;

    fn try_from(p: pb::EscrowMessage) -> Result<EscrowMessage, ProtocolError> {
        use pb::escrow_message::Body;
        Ok(match required("escrow.body", p.body)? {
            Body::Open(m) => {
                EscrowMessage::Open(required("escrow_open.deposit", m.deposit)?.try_into()?)
            }
            Body::Freeze(m) => {
                EscrowMessage::Freeze(required("escrow_freeze.deposit", m.deposit)?.try_into()?)
            }
            Body::FreezeReply(m) => EscrowMessage::FreezeReply(
                result_pb("escrow_freeze_reply.reason", m.frozen, m.reason)?
                    .map(|()| Amount(m.frozen_total)),
            ),
            Body::Unfreeze(m) => EscrowMessage::Unfreeze {
                reason: AbortReason::from_pb("escrow_unfreeze.reason", m.reason)?,
            },
            Body::UnfreezeReply(_) => EscrowMessage::UnfreezeReply,
            Body::Claim(m) => EscrowMessage::Claim {
                claim_id: m.claim_id,
                amount: Amount(m.amount),
                merchant_institution: InstitutionId(m.merchant_institution),
            },
            Body::Release(_) => EscrowMessage::Release,
            Body::Settle(m) => EscrowMessage::Settle {
                seq: m.seq,
                settlement: match pb::SettlementKind::try_from(m.kind) {
                    Ok(pb::SettlementKind::Claim) => Settlement::Claim {
                        amount: Amount(m.amount),
                        merchant: WalletId(m.merchant),
                        merchant_institution: InstitutionId(m.merchant_institution),
                    },
                    Ok(pb::SettlementKind::Refund) => Settlement::Refund,
                    Ok(pb::SettlementKind::Unspecified) | Err(_) => {
                        return Err(ProtocolError::Invalid {
                            field: "escrow_settle.kind",
                            why: format!("unknown settlement kind {}", m.kind),
                        })
                    }
                },
                decided_at_ms: m.decided_at_ms,
            },
            Body::SettleReply(m) => EscrowMessage::SettleReply {
                seq: m.seq,
                result: result_pb("escrow_settle_reply.reason", m.ok, m.reason)?,
            },
            Body::Payout(m) => EscrowMessage::Payout {
                amount: Amount(m.amount),
                merchant: WalletId(m.merchant),
                from: InstitutionId(m.from_institution),
                decided_at_ms: m.decided_at_ms,
                payer: WalletId(m.payer),
            },
            Body::PayoutReply(m) => {
                EscrowMessage::PayoutReply(result_pb("escrow_payout_reply.reason", m.ok, m.reason)?)
            }
            Body::Result(m) => EscrowMessage::Result(EscrowResult {
                step: match pb::EscrowStep::try_from(m.step) {
                    Ok(pb::EscrowStep::Deposit) => EscrowStep::Deposit,
                    Ok(pb::EscrowStep::Claim) => EscrowStep::Claim,
                    Ok(pb::EscrowStep::Release) => EscrowStep::Release,
                    Ok(pb::EscrowStep::Expiry) => EscrowStep::Expiry,
                    Ok(pb::EscrowStep::Unspecified) | Err(_) => {
                        return Err(ProtocolError::Invalid {
                            field: "escrow_result.step",
                            why: format!("unknown escrow step {}", m.step),
                        })
                    }
                },
                result: result_pb("escrow_result.reason", m.ok, m.reason)?,
                amount: Amount(m.amount),
                remaining: Amount(m.remaining),
            }),
        })
    }
}

impl From<&EscrowMessage> for pb::EscrowMessage {
    fn from(m: &EscrowMessage) -> pb::EscrowMessage {
        use pb::escrow_message::Body;
        let body = match m {
            EscrowMessage::Open(s) => Body::Open(pb::EscrowOpen {
                deposit: Some(s.into()),
            }),
            EscrowMessage::Freeze(s) => Body::Freeze(pb::EscrowFreeze {
                deposit: Some(s.into()),
            }),
            EscrowMessage::FreezeReply(r) => Body::FreezeReply(pb::EscrowFreezeReply {
                frozen: r.is_ok(),
                reason: reason_pb(r),
                frozen_total: r.map_or(0, |a| a.0),
            }),
            EscrowMessage::Unfreeze { reason } => Body::Unfreeze(pb::EscrowUnfreeze {
                reason: reason.to_pb(),
            }),
            EscrowMessage::UnfreezeReply => Body::UnfreezeReply(pb::EscrowUnfreezeReply {}),
            EscrowMessage::Claim {
                claim_id,
                amount,
                merchant_institution,
            } => Body::Claim(pb::EscrowClaim {
                claim_id: *claim_id,
                amount: amount.0,
                merchant_institution: merchant_institution.0,
            }),
            EscrowMessage::Release => Body::Release(pb::EscrowRelease {}),
            EscrowMessage::Settle {
                seq,
                settlement,
                decided_at_ms,
            } => Body::Settle(match settlement {
                Settlement::Claim {
                    amount,
                    merchant,
                    merchant_institution,
                } => pb::EscrowSettle {
                    seq: *seq,
                    kind: pb::SettlementKind::Claim as i32,
                    amount: amount.0,
                    merchant: merchant.0,
                    merchant_institution: merchant_institution.0,
                    decided_at_ms: *decided_at_ms,
                },
                Settlement::Refund => pb::EscrowSettle {
                    seq: *seq,
                    kind: pb::SettlementKind::Refund as i32,
                    decided_at_ms: *decided_at_ms,
                    ..Default::default()
                },
            }),
            EscrowMessage::SettleReply { seq, result } => {
                Body::SettleReply(pb::EscrowSettleReply {
                    seq: *seq,
                    ok: result.is_ok(),
                    reason: reason_pb(result),
                })
            }
            EscrowMessage::Payout {
                amount,
                merchant,
                from,
                decided_at_ms,
                payer,
            } => Body::Payout(pb::EscrowPayout {
                amount: amount.0,
                merchant: merchant.0,
                from_institution: from.0,
                decided_at_ms: *decided_at_ms,
                payer: payer.0,
            }),
            EscrowMessage::PayoutReply(r) => Body::PayoutReply(pb::EscrowPayoutReply {
                ok: r.is_ok(),
                reason: reason_pb(r),
            }),
            EscrowMessage::Result(r) => Body::Result(pb::EscrowResult {
                step: (match r.step {
                    EscrowStep::Deposit => pb::EscrowStep::Deposit,
                    EscrowStep::Claim => pb::EscrowStep::Claim,
                    EscrowStep::Release => pb::EscrowStep::Release,
                    EscrowStep::Expiry => pb::EscrowStep::Expiry,
                }) as i32,
                ok: r.result.is_ok(),
                reason: reason_pb(&r.result),
                amount: r.amount.0,
                remaining: r.remaining.0,
            }),
        };
        pb::EscrowMessage { body: Some(body) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SoftKeyStore;

    fn terms() -> SignedTerms {
        let keys = SoftKeyStore::from_seed([5; 32]);
        EscrowTerms {
            contract: contract_id(InstitutionId(3), 77),
            saga_id: SagaId::from_u128(1),
            payer: WalletId(7),
            payer_key: keys.public_key(),
            payer_institution: InstitutionId(3),
            coin_ids: vec![CoinId([9; 32])],
            cap: Amount(500),
            merchant: WalletId(8),
            merchant_institution: InstitutionId(0),
            expires_at_ms: 10_000,
        }
        .sign(&keys)
    }

    #[test]
    fn a_contract_id_names_its_host() {
        let id = contract_id(InstitutionId(1023), u64::MAX);
        assert_eq!(host_of(id), InstitutionId(1023));
        assert_eq!(
            id & ((1 << CONTRACT_SERIAL_BITS) - 1),
            (1 << CONTRACT_SERIAL_BITS) - 1
        );
        assert_eq!(host_of(contract_id(InstitutionId(0), 5)), InstitutionId(0));
    }

    #[test]
    fn the_signature_covers_every_term() {
        let s = terms();
        assert_eq!(s.verify(), Ok(()));
        for tamper in [
            |t: &mut EscrowTerms| t.cap = Amount(501),
            |t: &mut EscrowTerms| t.merchant = WalletId(9),
            |t: &mut EscrowTerms| t.expires_at_ms += 1,
            |t: &mut EscrowTerms| t.contract += 1,
            |t: &mut EscrowTerms| t.coin_ids.clear(),
        ] {
            let mut t = s.clone();
            tamper(&mut t.terms);
            assert!(t.verify().is_err(), "{:?}", t.terms);
        }
    }

    #[test]
    fn every_escrow_message_round_trips() {
        let messages = [
            EscrowMessage::Open(terms()),
            EscrowMessage::Freeze(terms()),
            EscrowMessage::FreezeReply(Ok(Amount(600))),
            EscrowMessage::FreezeReply(Err(AbortReason::CoinSpent)),
            EscrowMessage::Unfreeze {
                reason: AbortReason::Timeout,
            },
            EscrowMessage::UnfreezeReply,
            EscrowMessage::Claim {
                claim_id: 4,
                amount: Amount(10),
                merchant_institution: InstitutionId(0),
            },
            EscrowMessage::Release,
            EscrowMessage::Settle {
                seq: 3,
                settlement: Settlement::Claim {
                    amount: Amount(10),
                    merchant: WalletId(8),
                    merchant_institution: InstitutionId(0),
                },
                decided_at_ms: 1_000,
            },
            EscrowMessage::Settle {
                seq: 4,
                settlement: Settlement::Refund,
                decided_at_ms: 2_000,
            },
            EscrowMessage::SettleReply {
                seq: 4,
                result: Ok(()),
            },
            EscrowMessage::Payout {
                amount: Amount(10),
                merchant: WalletId(8),
                from: InstitutionId(3),
                decided_at_ms: 1_000,
                payer: WalletId(9),
            },
            EscrowMessage::PayoutReply(Err(AbortReason::UnknownWallet)),
            EscrowMessage::Result(EscrowResult {
                step: EscrowStep::Claim,
                result: Err(AbortReason::CapExceeded),
                amount: Amount(0),
                remaining: Amount(490),
            }),
        ];
        for m in messages {
            let p = pb::EscrowMessage::from(&m);
            assert_eq!(EscrowMessage::try_from(p).unwrap(), m);
        }
    }

    #[test]
    fn escrow_update_and_negotiation_payloads_cross_the_wire_in_an_envelope() {
        use crate::envelope::{Address, Envelope, Payload};
        use crate::negotiate::NegotiationMessage;
        use crate::update::{UpdateMessage, WalletParams};
        let contract = contract_id(InstitutionId(3), 77);
        for payload in [
            Payload::Escrow(EscrowMessage::Open(terms())),
            Payload::Escrow(EscrowMessage::Release),
            Payload::WalletUpdate(UpdateMessage::Check { params_version: 1 }),
            Payload::Negotiation(NegotiationMessage::Offer {
                capabilities: WalletParams::shipped().capabilities,
                amount: Amount(3),
                offline: false,
            }),
            Payload::ReleaseBacking { amount: Amount(12) },
        ] {
            let env = Envelope {
                message_id: 1,
                saga_id: SagaId::from_u128(5),
                from: Address::Wallet(WalletId(7)),
                to: Address::Escrow(contract),
                attempt: 0,
                trace: None,
                payload,
            };
            assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        }
        assert_eq!(
            Address::from_code(6, contract),
            Some(Address::Escrow(contract))
        );
        assert_eq!(Address::Escrow(contract).code(), (6, contract));
        assert_eq!(Address::Escrow(contract).to_string(), "escrow-3-77");
    }
}
