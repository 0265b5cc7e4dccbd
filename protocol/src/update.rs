//! Wallet update (DESIGN.md §3.5): the versioned wallet parameters the trusted platform (the
//! wallet's institution) publishes, the wallet's signed withdraw authorization, and the
//! messages of the update saga.

use crate::canonical::Canon;
use crate::crypto::{self, BadSignature, KeyStore, PublicKey, Signature};
use crate::error::{fixed, required, ProtocolError};
use crate::ids::{Amount, CoinId, InstitutionId, SagaId, WalletId};
use crate::negotiate::{Capabilities, SignatureScheme};
use crate::pay::{AbortReason, AUTHORIZATION_COINS_MAX};
use crate::pb;
use serde::{Deserialize, Serialize};

const WITHDRAW_DOMAIN: &str = "specie/v1/withdraw-authorization";

/// The most coins one withdraw may retire. A wallet holding more withdraws them over several
/// updates (each withdraws the largest coins first).
pub const WITHDRAW_COINS_MAX: usize = AUTHORIZATION_COINS_MAX;
/// The most offline records one upload may carry.
pub const OFFLINE_UPLOAD_RECORDS_MAX: usize = 1024;
// A wallet uploads at most one offline sync's worth of records: it must fit one upload.
const _: () = assert!(crate::offline::SYNC_TRANSFERS_MAX <= OFFLINE_UPLOAD_RECORDS_MAX);

/// The parameters a wallet runs with, versioned by the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletParams {
    /// Increases with every publication.
    pub version: u32,
    /// What the wallet may do in proximity payments.
    pub capabilities: Capabilities,
}

impl WalletParams {
    /// The version wallets ship with.
    pub const SHIPPED_VERSION: u32 = 1;

    /// The parameters a wallet ships with: protocol version 1, Ed25519, offline payments up to
    /// 500.00, single payments up to 50,000.00.
    pub fn shipped() -> WalletParams {
        WalletParams {
            version: Self::SHIPPED_VERSION,
            capabilities: Capabilities {
                protocol_versions: vec![1],
                signature_schemes: vec![SignatureScheme::Ed25519],
                offline_limit: Some(Amount(50_000)),
                max_amount: Amount(5_000_000),
            },
        }
    }

    /// The parameters a platform publishes at start: version 2 adds protocol version 2 and
    /// raises the offline limit to 1,000.00, so every shipped wallet needs an update.
    pub fn platform_initial() -> WalletParams {
        WalletParams {
            version: Self::SHIPPED_VERSION + 1,
            capabilities: Capabilities {
                protocol_versions: vec![1, 2],
                signature_schemes: vec![SignatureScheme::Ed25519],
                offline_limit: Some(Amount(100_000)),
                max_amount: Amount(5_000_000),
            },
        }
    }
}

impl TryFrom<pb::WalletParams> for WalletParams {
    type Error = ProtocolError;

    fn try_from(p: pb::WalletParams) -> Result<WalletParams, ProtocolError> {
        Ok(WalletParams {
            version: p.version,
            capabilities: required("wallet_params.capabilities", p.capabilities)?.try_into()?,
        })
    }
}

impl From<&WalletParams> for pb::WalletParams {
    fn from(w: &WalletParams) -> pb::WalletParams {
        pb::WalletParams {
            version: w.version,
            capabilities: Some((&w.capabilities).into()),
        }
    }
}

/// What a wallet signs to withdraw its coins to its account at their issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawAuthorization {
    /// The update saga; the authorization cannot be replayed under another.
    pub saga_id: SagaId,
    /// The wallet, whose account is credited.
    pub wallet: WalletId,
    /// Its key; it must own every coin.
    pub wallet_key: PublicKey,
    /// The institution that issued the coins and keeps the account.
    pub institution: InstitutionId,
    /// The coins to retire, distinct.
    pub coin_ids: Vec<CoinId>,
    /// Their sum: what the account is credited.
    pub amount: Amount,
}

impl WithdrawAuthorization {
    /// The canonical bytes the wallet signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(WITHDRAW_DOMAIN);
        c.fixed(&self.saga_id.0)
            .u64(self.wallet.0)
            .fixed(&self.wallet_key.0)
            .u32(self.institution.0)
            .u32(u32::try_from(self.coin_ids.len()).expect("coin list bounded"));
        for id in &self.coin_ids {
            c.fixed(&id.0);
        }
        c.u64(self.amount.0);
        c.finish()
    }

    /// Signs the authorization inside the wallet's key store.
    pub fn sign(self, keys: &dyn KeyStore) -> SignedWithdraw {
        let signature = keys.sign(&self.signing_bytes());
        SignedWithdraw {
            authorization: self,
            signature,
        }
    }
}

/// A withdraw authorization with the wallet's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedWithdraw {
    /// What was signed.
    pub authorization: WithdrawAuthorization,
    /// The wallet's Ed25519 signature over `authorization.signing_bytes()`.
    pub signature: Signature,
}

impl SignedWithdraw {
    /// Checks the signature against the key the authorization names.
    pub fn verify(&self) -> Result<(), BadSignature> {
        crypto::verify(
            &self.authorization.wallet_key,
            &self.authorization.signing_bytes(),
            &self.signature,
        )
    }

    /// A digest identifying this exact request (a different one under the same saga is a
    /// conflict).
    pub fn digest(&self) -> [u8; 32] {
        let mut bytes = self.authorization.signing_bytes();
        bytes.extend_from_slice(&self.signature.0);
        crypto::sha256(&bytes)
    }
}

impl TryFrom<pb::SignedWithdraw> for SignedWithdraw {
    type Error = ProtocolError;

    fn try_from(p: pb::SignedWithdraw) -> Result<SignedWithdraw, ProtocolError> {
        let a = required("withdraw.authorization", p.authorization)?;
        if a.coin_ids.len() > WITHDRAW_COINS_MAX {
            return Err(ProtocolError::Invalid {
                field: "withdraw.coin_ids",
                why: format!(
                    "{} coins, at most {WITHDRAW_COINS_MAX} allowed",
                    a.coin_ids.len()
                ),
            });
        }
        Ok(SignedWithdraw {
            authorization: WithdrawAuthorization {
                saga_id: SagaId(fixed("withdraw.saga_id", &a.saga_id)?),
                wallet: WalletId(a.wallet),
                wallet_key: PublicKey(fixed("withdraw.wallet_key", &a.wallet_key)?),
                institution: InstitutionId(a.institution),
                coin_ids: a
                    .coin_ids
                    .iter()
                    .map(|b| fixed("withdraw.coin_ids[]", b).map(CoinId))
                    .collect::<Result<_, _>>()?,
                amount: Amount(a.amount),
            },
            signature: Signature(fixed("withdraw.signature", &p.signature)?),
        })
    }
}

impl From<&SignedWithdraw> for pb::SignedWithdraw {
    fn from(s: &SignedWithdraw) -> pb::SignedWithdraw {
        let a = &s.authorization;
        pb::SignedWithdraw {
            authorization: Some(pb::WithdrawAuthorization {
                saga_id: a.saga_id.0.to_vec().into(),
                wallet: a.wallet.0,
                wallet_key: a.wallet_key.0.to_vec().into(),
                institution: a.institution.0,
                coin_ids: a.coin_ids.iter().map(|c| c.0.to_vec().into()).collect(),
                amount: a.amount.0,
            }),
            signature: s.signature.0.to_vec().into(),
        }
    }
}

/// The messages of the wallet update saga, between a wallet and its institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateMessage {
    /// Wallet → institution: do I (running `params_version`) need an update?
    Check {
        /// The version the wallet runs.
        params_version: u32,
    },
    /// Institution → wallet: the answer.
    CheckReply {
        /// Whether the wallet runs an older version than the platform's.
        needed: bool,
        /// The platform's version.
        latest_version: u32,
    },
    /// Wallet → institution: retire these coins and credit my account.
    Withdraw(SignedWithdraw),
    /// Institution → wallet: the account was credited this much (once the central bank
    /// released the backing), or why not.
    WithdrawReply {
        /// The amount credited, or why not.
        result: Result<Amount, AbortReason>,
        /// When the institution retired the coins and credited the account (its clock): the
        /// time of the withdraw's transaction records; 0 unless credited.
        decided_at_ms: u64,
    },
    /// Wallet → institution: offline records not yet synced (opaque here).
    Upload {
        /// The records, each an encoded offline transfer record.
        records: Vec<Vec<u8>>,
    },
    /// Institution → wallet: how many records it took.
    UploadReply {
        /// Records accepted.
        accepted: u32,
    },
    /// Wallet → institution: send me the update instruction.
    Request {
        /// The version the wallet runs.
        params_version: u32,
    },
    /// Institution → wallet: the account data and parameters to apply.
    Instruction {
        /// The wallet's account balance.
        account_balance: Amount,
        /// The parameters to run with.
        params: WalletParams,
    },
}

impl UpdateMessage {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            UpdateMessage::Check { .. } => "update_check",
            UpdateMessage::CheckReply { .. } => "update_check_reply",
            UpdateMessage::Withdraw(_) => "withdraw_request",
            UpdateMessage::WithdrawReply { .. } => "withdraw_reply",
            UpdateMessage::Upload { .. } => "offline_upload",
            UpdateMessage::UploadReply { .. } => "offline_upload_reply",
            UpdateMessage::Request { .. } => "update_request",
            UpdateMessage::Instruction { .. } => "update_instruction",
        }
    }
}

impl TryFrom<pb::WalletUpdateMessage> for UpdateMessage {
    type Error = ProtocolError;

    fn try_from(p: pb::WalletUpdateMessage) -> Result<UpdateMessage, ProtocolError> {
        use pb::wallet_update_message::Body;
        Ok(match required("wallet_update.body", p.body)? {
            Body::Check(m) => UpdateMessage::Check {
                params_version: m.params_version,
            },
            Body::CheckReply(m) => UpdateMessage::CheckReply {
                needed: m.needed,
                latest_version: m.latest_version,
            },
            Body::Withdraw(m) => UpdateMessage::Withdraw(
                required("withdraw_request.withdraw", m.withdraw)?.try_into()?,
            ),
            Body::WithdrawReply(m) => UpdateMessage::WithdrawReply {
                result: if m.ok {
                    Ok(Amount(m.amount))
                } else {
                    Err(AbortReason::from_pb("withdraw_reply.reason", m.reason)?)
                },
                decided_at_ms: m.decided_at_ms,
            },
            Body::Upload(m) => {
                if m.records.len() > OFFLINE_UPLOAD_RECORDS_MAX {
                    return Err(ProtocolError::Invalid {
                        field: "offline_upload.records",
                        why: format!(
                            "{} records, at most {OFFLINE_UPLOAD_RECORDS_MAX} allowed",
                            m.records.len()
                        ),
                    });
                }
                UpdateMessage::Upload {
                    records: m.records.iter().map(|r| r.to_vec()).collect(),
                }
            }
            Body::UploadReply(m) => UpdateMessage::UploadReply {
                accepted: m.accepted,
            },
            Body::Request(m) => UpdateMessage::Request {
                params_version: m.params_version,
            },
            Body::Instruction(m) => UpdateMessage::Instruction {
                account_balance: Amount(m.account_balance),
                params: required("update_instruction.params", m.params)?.try_into()?,
            },
        })
    }
}

impl From<&UpdateMessage> for pb::WalletUpdateMessage {
    fn from(m: &UpdateMessage) -> pb::WalletUpdateMessage {
        use pb::wallet_update_message::Body;
        let body = match m {
            UpdateMessage::Check { params_version } => Body::Check(pb::UpdateCheck {
                params_version: *params_version,
            }),
            UpdateMessage::CheckReply {
                needed,
                latest_version,
            } => Body::CheckReply(pb::UpdateCheckReply {
                needed: *needed,
                latest_version: *latest_version,
            }),
            UpdateMessage::Withdraw(s) => Body::Withdraw(pb::WithdrawRequest {
                withdraw: Some(s.into()),
            }),
            UpdateMessage::WithdrawReply {
                result,
                decided_at_ms,
            } => Body::WithdrawReply(pb::WithdrawReply {
                ok: result.is_ok(),
                reason: match result {
                    Ok(_) => pb::AbortReason::Unspecified as i32,
                    Err(reason) => reason.to_pb(),
                },
                amount: result.map_or(0, |a| a.0),
                decided_at_ms: *decided_at_ms,
            }),
            UpdateMessage::Upload { records } => Body::Upload(pb::OfflineUpload {
                records: records.iter().map(|r| r.clone().into()).collect(),
            }),
            UpdateMessage::UploadReply { accepted } => Body::UploadReply(pb::OfflineUploadReply {
                accepted: *accepted,
            }),
            UpdateMessage::Request { params_version } => Body::Request(pb::UpdateRequest {
                params_version: *params_version,
            }),
            UpdateMessage::Instruction {
                account_balance,
                params,
            } => Body::Instruction(pb::UpdateInstruction {
                account_balance: account_balance.0,
                params: Some(params.into()),
            }),
        };
        pb::WalletUpdateMessage { body: Some(body) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SoftKeyStore;

    fn signed() -> SignedWithdraw {
        let keys = SoftKeyStore::from_seed([3; 32]);
        WithdrawAuthorization {
            saga_id: SagaId::from_u128(9),
            wallet: WalletId(4),
            wallet_key: keys.public_key(),
            institution: InstitutionId(1),
            coin_ids: vec![CoinId([1; 32]), CoinId([2; 32])],
            amount: Amount(700),
        }
        .sign(&keys)
    }

    #[test]
    fn the_signature_covers_every_field_of_the_withdraw() {
        let s = signed();
        assert_eq!(s.verify(), Ok(()));
        let mut t = s.clone();
        t.authorization.amount = Amount(701);
        assert!(t.verify().is_err());
        let mut t = s.clone();
        t.authorization.wallet = WalletId(5);
        assert!(t.verify().is_err());
        let mut t = s;
        t.authorization.coin_ids.pop();
        assert!(t.verify().is_err());
    }

    #[test]
    fn every_update_message_round_trips() {
        for m in [
            UpdateMessage::Check { params_version: 1 },
            UpdateMessage::CheckReply {
                needed: true,
                latest_version: 2,
            },
            UpdateMessage::Withdraw(signed()),
            UpdateMessage::WithdrawReply {
                result: Ok(Amount(700)),
                decided_at_ms: 5,
            },
            UpdateMessage::WithdrawReply {
                result: Err(AbortReason::CoinLocked),
                decided_at_ms: 0,
            },
            UpdateMessage::Upload {
                records: vec![vec![1, 2, 3], vec![]],
            },
            UpdateMessage::UploadReply { accepted: 2 },
            UpdateMessage::Request { params_version: 1 },
            UpdateMessage::Instruction {
                account_balance: Amount(12_345),
                params: WalletParams::platform_initial(),
            },
        ] {
            let p = pb::WalletUpdateMessage::from(&m);
            assert_eq!(UpdateMessage::try_from(p).unwrap(), m);
        }
    }

    #[test]
    fn the_platform_starts_ahead_of_shipped_wallets() {
        assert!(WalletParams::platform_initial().version > WalletParams::shipped().version);
    }
}
