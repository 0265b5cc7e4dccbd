//! The blueprint of a cluster: everything that follows from a config and a seed — keys,
//! limits, and a factory for every actor. The live cluster and the offline audit build their
//! actors from the same blueprint, so a journal replays into the same state machines.

use crate::central_bank::CentralBank;
use crate::escrow::{Escrow, EscrowLimits};
use crate::institution::{Institution, InstitutionLimits};
use crate::wallet::{OfflineSettings, Wallet, WalletLimits};
use specie_protocol::crypto::{sha256, PublicKey};
use specie_protocol::{Amount, InstitutionId, KeyStore, SoftKeyStore, WalletId};
use specie_runtime::config::Config;
use std::collections::HashMap;
use std::sync::Arc;

/// Derives a key seed for an actor from the cluster seed, so that the same seed gives the
/// same keys (and a restarted actor gets its key back without journaling secrets).
fn key_seed(cluster_seed: u64, role: &str, id: u64) -> [u8; 32] {
    let mut input = b"specie/v1/key-seed".to_vec();
    input.extend_from_slice(&cluster_seed.to_be_bytes());
    input.extend_from_slice(role.as_bytes());
    input.extend_from_slice(&id.to_be_bytes());
    sha256(&input)
}

/// Keys, limits and actor factories of one cluster.
#[derive(Clone)]
pub struct Blueprint {
    config: Config,
    seed: u64,
    institution_keys: Vec<Arc<SoftKeyStore>>,
    issuers: Arc<HashMap<InstitutionId, PublicKey>>,
    institution_limits: Arc<InstitutionLimits>,
    wallet_limits: Arc<WalletLimits>,
    escrow_limits: Arc<EscrowLimits>,
}

impl std::fmt::Debug for Blueprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blueprint")
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Blueprint {
    /// The blueprint of `config` with `seed`.
    pub fn new(config: &Config, seed: u64) -> Blueprint {
        let limits = &config.limits;
        let institution_keys: Vec<Arc<SoftKeyStore>> = (0..config.cluster.institutions.len())
            .map(|i| {
                Arc::new(SoftKeyStore::from_seed(key_seed(
                    seed,
                    "institution",
                    i as u64,
                )))
            })
            .collect();
        let issuers = Arc::new(
            institution_keys
                .iter()
                .enumerate()
                .map(|(i, k)| (InstitutionId(i as u32), k.public_key()))
                .collect(),
        );
        Blueprint {
            config: config.clone(),
            seed,
            institution_keys,
            issuers,
            institution_limits: Arc::new(InstitutionLimits {
                saga_timeout_ms: limits.saga_timeout_ms,
                retry_interval_ms: limits.retry_interval_ms,
                retry_interval_max_ms: limits.retry_interval_max_ms,
                coin_inputs_max: limits.coin_inputs_max,
                denominations: config
                    .genesis
                    .coin_denominations_fen
                    .iter()
                    .map(|d| Amount(*d))
                    .collect(),
                dedup_retention_ms: limits.dedup_retention_ms,
            }),
            escrow_limits: Arc::new(EscrowLimits {
                saga_timeout_ms: limits.saga_timeout_ms,
                retry_interval_ms: limits.retry_interval_ms,
                retry_interval_max_ms: limits.retry_interval_max_ms,
            }),
            wallet_limits: Arc::new(WalletLimits {
                authorization_ttl_ms: limits.authorization_ttl_ms,
                outcome_timeout_ms: limits.outcome_timeout_ms,
                saga_timeout_ms: limits.saga_timeout_ms,
                dedup_retention_ms: limits.dedup_retention_ms,
            }),
        }
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of institutions.
    pub fn institution_count(&self) -> usize {
        self.institution_keys.len()
    }

    /// Number of wallets.
    pub fn wallet_count(&self) -> u64 {
        self.config.cluster.wallets
    }

    /// The institution a wallet banks with (round-robin placement).
    pub fn institution_of(&self, wallet: WalletId) -> InstitutionId {
        InstitutionId((wallet.0 % self.institution_keys.len() as u64) as u32)
    }

    /// Issuers' public keys.
    pub fn issuers(&self) -> &Arc<HashMap<InstitutionId, PublicKey>> {
        &self.issuers
    }

    /// A wallet's key store.
    pub fn wallet_keys(&self, wallet: WalletId) -> Arc<SoftKeyStore> {
        Arc::new(SoftKeyStore::from_seed(key_seed(
            self.seed, "wallet", wallet.0,
        )))
    }

    /// Value the genesis deposits put in: every wallet's account deposit.
    pub fn deposited(&self) -> Amount {
        Amount(self.config.genesis.account_balance_fen * self.config.cluster.wallets)
    }

    /// Reserves the central bank mints to institution `i` at genesis: its customers' deposits.
    pub fn genesis_mint(&self, i: usize) -> Amount {
        let n = self.institution_keys.len() as u64;
        let wallets = self.config.cluster.wallets;
        let customers = wallets / n + u64::from((i as u64) < wallets % n);
        Amount(self.config.genesis.account_balance_fen * customers)
    }

    /// The central bank's factory.
    pub fn central_bank(&self) -> impl Fn() -> CentralBank + Send + Sync + 'static {
        let retention = self.config.limits.dedup_retention_ms;
        move || CentralBank::new(retention)
    }

    /// Institution `i`'s factory.
    pub fn institution(&self, i: usize) -> impl Fn() -> Institution + Send + Sync + 'static {
        let (keys, limits) = (
            self.institution_keys[i].clone(),
            self.institution_limits.clone(),
        );
        let count = self.institution_keys.len() as u32;
        move || {
            Institution::new(InstitutionId(i as u32), keys.clone(), limits.clone())
                .with_institutions(count)
        }
    }

    /// The factory of escrow contract `id` (hosted by the institution its id names).
    pub fn escrow(&self, id: u64) -> impl Fn() -> Escrow + Send + Sync + 'static {
        let limits = self.escrow_limits.clone();
        move || Escrow::new(id, limits.clone())
    }

    /// A wallet's factory, given its key store.
    pub fn wallet(
        &self,
        wallet: WalletId,
        keys: Arc<SoftKeyStore>,
    ) -> impl Fn() -> Wallet + Send + Sync + 'static {
        let institution = self.institution_of(wallet);
        let (issuers, limits) = (self.issuers.clone(), self.wallet_limits.clone());
        let offline = OfflineSettings {
            offline_limit: Amount(self.config.limits.offline_limit_fen),
            select_own_coins: self.config.limits.wallet_selects_coins,
            coin_inputs_max: self.config.limits.coin_inputs_max,
        };
        move || {
            Wallet::new(
                wallet,
                institution,
                keys.clone(),
                issuers.clone(),
                limits.clone(),
            )
            .with_offline_settings(offline)
        }
    }
}
