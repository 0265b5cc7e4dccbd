//! The merge, split and offline-payment part of `specie run --workload mixed`.
//!
//! [`SagaWorkload`] starts operations for the driver in `run.rs` and settles them from the
//! node's notices; the driver lends it its random source, its set of busy wallets, its model
//! of the wallets' coin balances and the report through a [`Ctx`]:
//!
//! - **merge**: a wallet merges 2 to 4 of its coins, coins of other issuers first (it comes to
//!   hold them through offline payments). Planted: a client signs, with a wallet's key, a merge
//!   naming another wallet's coins; the coins' issuer must refuse it (`coin_not_owned`).
//! - **split**: a wallet splits its largest coin at the coin's issuer.
//! - **offline_pay**: after a proximity negotiation agreed (`workload_mixed.rs`), the payer
//!   pays offline (the hand-over uses no network), the payee redeems the chain through its
//!   institution at the coin's issuer (the latency runs to that outcome), and the payer syncs
//!   (uploads its records, redeems its remainder). The amount is the agreed one, capped so
//!   that one of the payer's coins covers it. Planted: a payer whose coin was paid offline and
//!   redeemed signs the whole coin away again to the negotiated payee; the issuer must refuse
//!   that redemption as an offline double spend and attribute it.
//!
//! The balance model moves only on committed offline payments (merges and splits keep a
//! wallet's value); a wallet is held busy until every step it takes part in has ended. The
//! payer of an offline payment is held until the payee's redemption ended and its own sync
//! after it: until then a coin it split offline may still be active at its issuer.

use crate::report::RunReport;
use anyhow::Result;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use specie_actors::wallet::{OfflineCommand, WalletCommand};
use specie_actors::Cluster;
use specie_protocol::merge::{CoinRef, MergeAuthorization, MergeMessage};
use specie_protocol::{
    AbortReason, Address, Amount, CoinId, Envelope, Payload, SagaId, SagaKind, WalletId,
};
use specie_runtime::Notice;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

/// The client address planted merge requests come from.
const MERGE_FORGER: Address = Address::External(667);
/// Merges that are planted refusals, in percent.
const PLANTED_MERGE_PERCENT: u32 = 10;
/// Offline payments that are planted double spends, in percent (when a candidate exists).
const PLANTED_DOUBLE_SPEND_PERCENT: u32 = 10;
/// Coins paid offline and redeemed, remembered for planting double spends.
const CHEAT_CANDIDATES_MAX: usize = 256;
/// The most coins one merge takes.
const MERGE_COINS_MAX: usize = 4;
/// Tries to find an idle wallet before giving up for this round.
const IDLE_TRIES_MAX: usize = 16;

/// What the driver lends a saga operation.
pub struct Ctx<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// The workload's random source.
    pub rng: &'a mut ChaCha8Rng,
    /// Wallets an operation in flight holds.
    pub busy: &'a mut HashSet<WalletId>,
    /// The driver's model of each wallet's coin value.
    pub balance: &'a mut [u64],
    /// The report.
    pub report: &'a mut RunReport,
}

/// An operation waiting for its notice.
struct Op {
    /// The report's kind; `None` for a step that is not reported on its own (a sync).
    kind: Option<&'static str>,
    started: Instant,
    /// Whose notice ends it.
    reporter: Address,
    /// Wallets it holds.
    busy: Vec<WalletId>,
    /// A planted refusal: its name and the reason it must be refused with.
    planted: Option<(&'static str, AbortReason)>,
    /// An offline payment: payer, payee, amount, and the coin it was split from (with its
    /// value), for the model and for planting double spends.
    offline: Option<(WalletId, WalletId, Amount, CoinId, Amount)>,
    /// A wallet that syncs once this operation ends (the payer of an offline payment).
    then_sync: Option<WalletId>,
}

/// The merge, split and offline operations in flight.
#[derive(Default)]
pub struct SagaWorkload {
    pending: HashMap<SagaId, Op>,
    /// Coins paid offline whose payee redeemed its chain: (payer, coin, value).
    cheats: VecDeque<(WalletId, CoinId, Amount)>,
    /// Commands decided while settling a notice, submitted at the next flush.
    outbox: Vec<(WalletId, WalletCommand)>,
}

/// Bounds of an offline payment's amount, from the config.
#[derive(Debug, Clone, Copy)]
pub struct OfflineBounds {
    /// `limits.offline_limit_fen`.
    pub offline_limit_fen: u64,
    /// `workload.amount_max_fen`.
    pub amount_max_fen: u64,
}

impl SagaWorkload {
    /// Operations waiting for their outcome (or to be submitted).
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.outbox.len()
    }

    fn hold(&mut self, ctx: &mut Ctx<'_>, saga: SagaId, op: Op) {
        for w in &op.busy {
            let fresh = ctx.busy.insert(*w);
            debug_assert!(fresh, "{w} is held by one operation at a time");
        }
        self.pending.insert(saga, op);
    }

    fn idle(ctx: &mut Ctx<'_>, except: Option<WalletId>) -> Option<WalletId> {
        let n = ctx.cluster.wallet_count();
        (0..IDLE_TRIES_MAX)
            .map(|_| WalletId(ctx.rng.gen_range(0..n)))
            .find(|w| !ctx.busy.contains(w) && Some(*w) != except)
    }

    /// Starts a merge (or, sometimes, a planted merge of another wallet's coins); false when
    /// no idle wallet with two coins was found this time.
    pub async fn start_merge(&mut self, mut ctx: Ctx<'_>) -> Result<bool> {
        if ctx.rng.gen_range(0..100) < PLANTED_MERGE_PERCENT {
            return self.plant_merge(ctx).await;
        }
        let Some(wallet) = Self::idle(&mut ctx, None) else {
            return Ok(false);
        };
        let home = ctx.cluster.institution_of(wallet);
        let mut coins = ctx.cluster.wallet_snapshot(wallet).await?.coins;
        if coins.len() < 2 {
            return Ok(false);
        }
        // Coins of other issuers first, then the smallest: merging consolidates them.
        coins.sort_by_key(|c| (c.body.issuer == home, c.value(), c.id));
        let take = ctx.rng.gen_range(2..=coins.len().min(MERGE_COINS_MAX));
        let saga = SagaId::from_u128(ctx.rng.gen());
        let command = WalletCommand::Merge {
            saga,
            coins: coins.iter().take(take).map(|c| c.id).collect(),
        };
        let op = Op {
            kind: Some("merge"),
            started: Instant::now(),
            reporter: Address::Wallet(wallet),
            busy: vec![wallet],
            planted: None,
            offline: None,
            then_sync: None,
        };
        self.hold(&mut ctx, saga, op);
        ctx.cluster.submit(wallet, command).await?;
        Ok(true)
    }

    /// A client that bypasses the wallet signs, with `me`'s key, a merge of `other`'s coins.
    async fn plant_merge(&mut self, mut ctx: Ctx<'_>) -> Result<bool> {
        let Some(me) = Self::idle(&mut ctx, None) else {
            return Ok(false);
        };
        let Some(other) = Self::idle(&mut ctx, Some(me)) else {
            return Ok(false);
        };
        let theirs = ctx.cluster.wallet_snapshot(other).await?.coins;
        if theirs.is_empty() {
            return Ok(false);
        }
        let home = ctx.cluster.institution_of(me);
        let saga = SagaId::from_u128(ctx.rng.gen());
        let coins: Vec<CoinRef> = theirs
            .iter()
            .take(MERGE_COINS_MAX)
            .map(|c| CoinRef {
                id: c.id,
                issuer: c.body.issuer,
            })
            .collect();
        let total = Amount::sum(theirs.iter().take(MERGE_COINS_MAX).map(|c| c.value()))
            .expect("supply fits u64");
        let signed = MergeAuthorization {
            saga_id: saga,
            wallet: me,
            wallet_key: ctx.cluster.wallet_key(me),
            institution: home,
            coins,
            total,
            expires_at_ms: u64::MAX,
        }
        .sign(ctx.cluster.blueprint().wallet_keys(me).as_ref());
        let op = Op {
            kind: Some("merge"),
            started: Instant::now(),
            reporter: Address::Institution(home),
            busy: Vec::new(),
            planted: Some(("merge_not_owned", AbortReason::CoinNotOwned)),
            offline: None,
            then_sync: None,
        };
        self.hold(&mut ctx, saga, op);
        ctx.cluster.inject(Envelope {
            message_id: 0,
            saga_id: saga,
            from: MERGE_FORGER,
            to: Address::Institution(home),
            attempt: 0,
            trace: None,
            payload: Payload::Merge(MergeMessage::Request(signed)),
        });
        Ok(true)
    }

    /// Starts a split of a wallet's largest coin at its issuer.
    pub async fn start_split(&mut self, mut ctx: Ctx<'_>) -> Result<bool> {
        let Some(wallet) = Self::idle(&mut ctx, None) else {
            return Ok(false);
        };
        let coins = ctx.cluster.wallet_snapshot(wallet).await?.coins;
        let Some(coin) = coins
            .iter()
            .filter(|c| c.value().0 >= 2)
            .max_by_key(|c| (c.value(), c.id))
        else {
            return Ok(false);
        };
        let amount = Amount(ctx.rng.gen_range(1..coin.value().0));
        let saga = SagaId::from_u128(ctx.rng.gen());
        let command = WalletCommand::Split {
            saga,
            coin: coin.id,
            amount,
        };
        let op = Op {
            kind: Some("split"),
            started: Instant::now(),
            reporter: Address::Wallet(wallet),
            busy: vec![wallet],
            planted: None,
            offline: None,
            then_sync: None,
        };
        self.hold(&mut ctx, saga, op);
        ctx.cluster.submit(wallet, command).await?;
        Ok(true)
    }

    /// Starts the offline payment of an agreed negotiation between `payer` and `payee` (both
    /// held busy by the negotiation; this takes them over), or, sometimes, a planted offline
    /// double spend to the same payee instead. The hand-over happens here; the payee's
    /// redemption and the payer's sync follow.
    pub async fn start_offline_pay(
        &mut self,
        mut ctx: Ctx<'_>,
        payer: WalletId,
        payee: WalletId,
        agreed: u64,
        bounds: OfflineBounds,
    ) -> Result<()> {
        ctx.busy.remove(&payer);
        ctx.busy.remove(&payee);
        if ctx.rng.gen_range(0..100) < PLANTED_DOUBLE_SPEND_PERCENT {
            let idle = |w: &WalletId| *w != payee && !ctx.busy.contains(w);
            if let Some(i) = self.cheats.iter().position(|(w, _, _)| idle(w)) {
                let cheat = self.cheats.remove(i).expect("index in range");
                return self.plant_double_spend(ctx, cheat, payee).await;
            }
        }
        let top = (ctx.balance[payer.0 as usize] / 3)
            .min(bounds.offline_limit_fen / 4)
            .min(bounds.amount_max_fen);
        if top == 0 {
            return Ok(());
        }
        let amount = Amount(agreed.clamp(1, top));
        let saga = SagaId::from_u128(ctx.rng.gen());
        let started = Instant::now();
        let chain = match ctx.cluster.offline_pay(saga, payer, payee, amount).await? {
            Ok(chain) => chain,
            Err(reason) => {
                // Refused by the payer (no single coin covers it, say): nothing moved.
                ctx.report
                    .record("offline_pay", Err(reason), started.elapsed());
                return Ok(());
            }
        };
        let redeem = SagaId::from_u128(ctx.rng.gen());
        let op = Op {
            kind: Some("offline_pay"),
            started,
            reporter: Address::Wallet(payee),
            busy: vec![payee, payer],
            planted: None,
            offline: Some((payer, payee, amount, chain.coin.id, chain.coin.value())),
            then_sync: Some(payer),
        };
        self.hold(&mut ctx, redeem, op);
        let redeem_command = OfflineCommand::Redeem {
            saga: redeem,
            chain: chain.id(),
        };
        ctx.cluster
            .submit(payee, WalletCommand::Offline(redeem_command))
            .await?;
        Ok(())
    }

    fn sync_op(wallet: WalletId) -> Op {
        Op {
            kind: None,
            started: Instant::now(),
            reporter: Address::Wallet(wallet),
            busy: vec![wallet],
            planted: None,
            offline: None,
            then_sync: None,
        }
    }

    /// Submits the commands decided while settling notices (the syncs that follow offline
    /// payments).
    pub async fn flush(&mut self, cluster: &Cluster) -> Result<()> {
        for (wallet, command) in std::mem::take(&mut self.outbox) {
            cluster.submit(wallet, command).await?;
        }
        Ok(())
    }

    /// `cheat` signs away, to an idle payee, the whole of a coin it already paid offline
    /// and whose payee redeemed its part: the issuer must refuse the redemption.
    async fn plant_double_spend(
        &mut self,
        mut ctx: Ctx<'_>,
        (cheat, coin, value): (WalletId, CoinId, Amount),
        payee: WalletId,
    ) -> Result<()> {
        let saga = SagaId::from_u128(ctx.rng.gen());
        let started = Instant::now();
        let Ok(chain) = ctx
            .cluster
            .offline_double_spend(saga, cheat, payee, value, coin)
            .await?
        else {
            // The cheat's own offline limit stopped it: nothing was planted.
            return Ok(());
        };
        let redeem = SagaId::from_u128(ctx.rng.gen());
        let op = Op {
            kind: Some("offline_pay"),
            started,
            reporter: Address::Wallet(payee),
            busy: vec![payee, cheat],
            planted: Some(("offline_double_spend", AbortReason::OfflineDoubleSpend)),
            offline: None,
            then_sync: Some(cheat),
        };
        self.hold(&mut ctx, redeem, op);
        let redeem_command = OfflineCommand::Redeem {
            saga: redeem,
            chain: chain.id(),
        };
        ctx.cluster
            .submit(payee, WalletCommand::Offline(redeem_command))
            .await?;
        Ok(())
    }

    /// Settles an operation of this workload from its notice; false when the notice is not
    /// one of them (the driver settles it).
    pub fn settle(&mut self, notice: &Notice, ctx: Ctx<'_>) -> bool {
        let Some(op) = self.pending.get(&notice.saga_id) else {
            return false;
        };
        if op.reporter != notice.source || notice.outcome.kind == SagaKind::OfflinePay {
            // Another party's notice of the same saga (the payee's hand-over, say).
            return self.pending.contains_key(&notice.saga_id);
        }
        let op = self.pending.remove(&notice.saga_id).expect("present");
        for w in &op.busy {
            ctx.busy.remove(w);
        }
        if let Some(wallet) = op.then_sync {
            // The payer syncs now (uploads its records, redeems its remainder), held until done.
            let sync = SagaId::from_u128(ctx.rng.gen());
            ctx.busy.insert(wallet);
            self.pending.insert(sync, Self::sync_op(wallet));
            let command = WalletCommand::Offline(OfflineCommand::Sync { saga: sync });
            self.outbox.push((wallet, command));
        }
        let result = notice.outcome.result;
        let Some(kind) = op.kind else { return true };
        ctx.report.record(kind, result, op.started.elapsed());
        if let Some((name, expected)) = op.planted {
            let planted = ctx.report.planted.entry(name).or_default();
            planted.planted += 1;
            if result == Err(expected) {
                planted.refused_as_expected += 1;
            } else {
                planted.other.push(format!(
                    "saga {}: {:?}",
                    notice.saga_id,
                    result.map_err(|r| r.name())
                ));
            }
        }
        if let (Ok(()), Some((payer, payee, amount, coin, value))) = (result, op.offline) {
            let (payer_i, payee_i) = (payer.0 as usize, payee.0 as usize);
            ctx.balance[payer_i] =
                ctx.balance[payer_i]
                    .checked_sub(amount.0)
                    .unwrap_or_else(|| {
                        ctx.report.model_mismatches += 1;
                        0
                    });
            ctx.balance[payee_i] += amount.0;
            if self.cheats.len() == CHEAT_CANDIDATES_MAX {
                self.cheats.pop_front();
            }
            self.cheats.push_back((payer, coin, value));
        }
        true
    }
}
