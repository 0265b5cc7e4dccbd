//! Unit tests of the wallet's merge, split and offline payment, driven by hand.
//!
//! Coins are issued by the test with the institutions' real keys and delivered as their
//! issuers deliver them; what the wallet sends, publishes and holds is what is checked —
//! the signed requests, the outcome notices, the coins and chains it keeps, its offline
//! limit and double-spend counters.

use super::{
    OfflineCommand, OfflineSettings, Wallet, WalletCommand, WalletEvent, WalletLimits, WalletTimer,
};
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::merge::MergeMessage;
use specie_protocol::offline::{DoubleSpend, OfflineMessage, TrustChain};
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinBody, CoinId, Envelope, InstitutionId, KeyStore,
    Payload, PublicKey, SagaId, SagaKind, SagaState, SoftKeyStore, WalletId,
};
use specie_runtime::{Effects, StateMachine};
use std::collections::HashMap;
use std::sync::Arc;

type Out = Effects<WalletEvent, WalletTimer>;

const A: InstitutionId = InstitutionId(1);
const B: InstitutionId = InstitutionId(2);
const W1: WalletId = WalletId(11);
const W2: WalletId = WalletId(21);
const W3: WalletId = WalletId(22);
const NOW_MS: u64 = 1_000;
const TTL_MS: u64 = 10_000;
const OUTCOME_TIMEOUT_MS: u64 = 2_000;
const SAGA_TIMEOUT_MS: u64 = 5_000;
const OFFLINE_LIMIT: Amount = Amount(3_000);

fn saga(n: u128) -> SagaId {
    SagaId::from_u128(n)
}

fn institution_keys(id: InstitutionId) -> SoftKeyStore {
    SoftKeyStore::from_seed([100 + u8::try_from(id.0).expect("small"); 32])
}

fn wallet_keys(id: WalletId) -> SoftKeyStore {
    SoftKeyStore::from_seed([u8::try_from(id.0).expect("small"); 32])
}

fn key_of(id: WalletId) -> PublicKey {
    wallet_keys(id).public_key()
}

/// A coin issued by `issuer` to `owner`, as the issuer signs it.
fn coin(issuer: InstitutionId, owner: WalletId, value: u64, nonce: u64) -> Coin {
    Coin::issue(
        CoinBody {
            issuer,
            owner: key_of(owner),
            denomination: Amount(value),
            nonce,
            origin_saga: saga(7_000 + u128::from(nonce)),
            issued_at_ms: 0,
        },
        &institution_keys(issuer),
    )
}

fn envelope(from: Address, to: Address, id: SagaId, payload: Payload) -> Envelope {
    Envelope {
        message_id: 0,
        saga_id: id,
        from,
        to,
        attempt: 0,
        trace: None,
        payload,
    }
}

struct Node {
    wallet: Wallet,
    journal: Vec<WalletEvent>,
}

impl Node {
    fn new(id: WalletId, institution: InstitutionId) -> Node {
        let issuers: HashMap<InstitutionId, PublicKey> = [A, B]
            .into_iter()
            .map(|i| (i, institution_keys(i).public_key()))
            .collect();
        let limits = WalletLimits {
            authorization_ttl_ms: TTL_MS,
            outcome_timeout_ms: OUTCOME_TIMEOUT_MS,
            saga_timeout_ms: SAGA_TIMEOUT_MS,
            dedup_retention_ms: 86_400_000,
        };
        let wallet = Wallet::new(
            id,
            institution,
            Arc::new(wallet_keys(id)),
            Arc::new(issuers),
            Arc::new(limits),
        )
        .with_offline_settings(OfflineSettings {
            offline_limit: OFFLINE_LIMIT,
            coin_inputs_max: 4,
            select_own_coins: false,
        });
        Node {
            wallet,
            journal: Vec::new(),
        }
    }

    fn keep(&mut self, out: Out) -> Out {
        self.journal.extend(out.events.iter().cloned());
        out
    }

    fn deliver(&mut self, from: Address, id: SagaId, payload: Payload) -> Out {
        let mut out = Out::default();
        let to = self.wallet.address();
        self.wallet
            .on_envelope(envelope(from, to, id, payload), NOW_MS, &mut out);
        self.keep(out)
    }

    fn command(&mut self, command: WalletCommand) -> Out {
        let mut out = Out::default();
        self.wallet.on_command(command, NOW_MS, &mut out);
        self.keep(out)
    }

    fn offline(&mut self, command: OfflineCommand) -> Out {
        self.command(WalletCommand::Offline(command))
    }

    fn fire(&mut self, id: SagaId, now_ms: u64) -> Out {
        let mut out = Out::default();
        self.wallet.on_timer(
            WalletTimer {
                saga: id,
                attempt: 1,
            },
            now_ms,
            &mut out,
        );
        self.keep(out)
    }

    /// Gives the wallet a coin, delivered by its issuer.
    fn give(&mut self, c: &Coin) {
        let out = self.deliver(
            Address::Institution(c.body.issuer),
            c.body.origin_saga,
            Payload::CoinIssued(c.clone()),
        );
        assert_eq!(out.events.len(), 1, "a genuine coin is taken");
    }

    fn coins(&self) -> Vec<CoinId> {
        let mut ids: Vec<CoinId> = self.wallet.snapshot().coins.iter().map(|c| c.id).collect();
        ids.sort();
        ids
    }

    fn outcome(
        &mut self,
        from: InstitutionId,
        id: SagaId,
        kind: SagaKind,
        result: Result<(), AbortReason>,
    ) -> Out {
        let outcome = SagaOutcome {
            kind,
            result,
            spent_coin_ids: Vec::new(),
            decided_at_ms: 0,
        };
        self.deliver(
            Address::Institution(from),
            id,
            Payload::SagaOutcome(outcome),
        )
    }
}

/// The one notice of a step: (kind, result).
fn notice(out: &Out) -> (SagaKind, Result<(), AbortReason>) {
    assert_eq!(out.notices.len(), 1, "one notice: {:?}", out.notices);
    (out.notices[0].outcome.kind, out.notices[0].outcome.result)
}

fn only_send(out: &Out) -> &Envelope {
    assert_eq!(out.sends.len(), 1, "one envelope: {:?}", out.sends);
    &out.sends[0]
}

// ----- merge -----

#[test]
fn merge_signs_the_coins_with_their_issuers_and_total_and_asks_the_own_institution() {
    let mut w = Node::new(W1, A);
    let (a, b) = (coin(A, W1, 1_000, 1), coin(B, W1, 500, 2));
    w.give(&a);
    w.give(&b);
    let out = w.command(WalletCommand::Merge {
        saga: saga(1),
        coins: vec![a.id, b.id],
    });
    let e = only_send(&out);
    assert_eq!(e.to, Address::Institution(A));
    let Payload::Merge(MergeMessage::Request(signed)) = &e.payload else {
        panic!("a merge request, got {:?}", e.payload)
    };
    assert_eq!(signed.verify(), Ok(()));
    let auth = &signed.authorization;
    assert_eq!(
        (auth.wallet, auth.wallet_key, auth.institution, auth.total),
        (W1, key_of(W1), A, Amount(1_500))
    );
    assert_eq!(
        auth.coins
            .iter()
            .map(|c| (c.id, c.issuer))
            .collect::<Vec<_>>(),
        vec![(a.id, A), (b.id, B)]
    );
    assert_eq!(auth.expires_at_ms, NOW_MS + TTL_MS);
    assert!(out.notices.is_empty());
    assert_eq!(w.wallet.snapshot().pending, 1);
    assert_eq!(w.coins().len(), 2, "nothing is spent before the outcome");

    // Only the coordinator's outcome counts.
    let ignored = w.outcome(B, saga(1), SagaKind::Merge, Ok(()));
    assert!(ignored.events.is_empty());
    let out = w.outcome(A, saga(1), SagaKind::Merge, Ok(()));
    assert_eq!(notice(&out), (SagaKind::Merge, Ok(())));
    assert!(w.coins().is_empty(), "the inputs are gone");
    // A late redelivery of an input does not bring it back; the merged coin is taken.
    let late = w.deliver(
        Address::Institution(B),
        b.body.origin_saga,
        Payload::CoinIssued(b.clone()),
    );
    assert!(late.events.is_empty());
    w.give(&coin(A, W1, 1_500, 3));
    assert_eq!(w.wallet.balance(), Amount(1_500));
    assert_eq!(w.wallet.snapshot().pending, 0);
}

#[test]
fn merge_commands_the_wallet_refuses_send_nothing() {
    let mut w = Node::new(W1, A);
    let (a, b) = (coin(A, W1, 1_000, 1), coin(B, W1, 500, 2));
    w.give(&a);
    w.give(&b);
    let someone_elses = coin(B, W2, 700, 3);
    let cases = [
        ("empty", vec![], AbortReason::EmptyRequest),
        (
            "the same coin twice",
            vec![a.id, a.id],
            AbortReason::DuplicateCoin,
        ),
        (
            "a coin it does not hold",
            vec![a.id, someone_elses.id],
            AbortReason::CoinNotOwned,
        ),
    ];
    for (i, (what, coins, reason)) in cases.into_iter().enumerate() {
        let out = w.command(WalletCommand::Merge {
            saga: saga(10 + i as u128),
            coins,
        });
        assert!(out.sends.is_empty() && out.events.is_empty(), "{what}");
        assert_eq!(notice(&out), (SagaKind::Merge, Err(reason)), "{what}");
    }
    // A coin promised to a split in flight is not merged.
    w.command(WalletCommand::Split {
        saga: saga(20),
        coin: b.id,
        amount: Amount(100),
    });
    let out = w.command(WalletCommand::Merge {
        saga: saga(21),
        coins: vec![a.id, b.id],
    });
    assert_eq!(
        notice(&out),
        (SagaKind::Merge, Err(AbortReason::CoinLocked))
    );
    // A saga id in use is a conflict.
    let out = w.command(WalletCommand::Merge {
        saga: saga(20),
        coins: vec![a.id],
    });
    assert_eq!(notice(&out), (SagaKind::Merge, Err(AbortReason::Conflict)));
    assert_eq!(w.coins().len(), 2);
}

#[test]
fn a_slow_merge_is_chased_resent_while_it_can_start_and_expires_after() {
    let mut w = Node::new(W1, A);
    let a = coin(A, W1, 1_000, 1);
    w.give(&a);
    w.command(WalletCommand::Merge {
        saga: saga(30),
        coins: vec![a.id],
    });
    let chase = w.fire(saga(30), NOW_MS + OUTCOME_TIMEOUT_MS);
    assert_eq!(only_send(&chase).payload, Payload::StatusQuery);
    assert_eq!(only_send(&chase).to, Address::Institution(A));
    // The coordinator never heard of it: hand the request over again.
    let unknown = Payload::StatusReply {
        state: SagaState::Unknown,
        reason: None,
        decided_at_ms: 0,
    };
    let resend = w.deliver(Address::Institution(A), saga(30), unknown.clone());
    assert!(matches!(
        only_send(&resend).payload,
        Payload::Merge(MergeMessage::Request(_))
    ));
    // After the request's expiry plus the lock timeout it can never start.
    let mut out = Out::default();
    let late = envelope(
        Address::Institution(A),
        Address::Wallet(W1),
        saga(30),
        unknown,
    );
    w.wallet
        .on_envelope(late, NOW_MS + TTL_MS + SAGA_TIMEOUT_MS + 1, &mut out);
    assert_eq!(notice(&out), (SagaKind::Merge, Err(AbortReason::Expired)));
    assert_eq!(w.coins(), vec![a.id], "an aborted merge spent nothing");
}

// ----- split -----

#[test]
fn split_asks_the_coins_issuer_and_its_outcome_spends_the_coin() {
    let mut w = Node::new(W2, B);
    let foreign = coin(A, W2, 5_000, 1);
    w.give(&foreign);
    for (amount, reason) in [
        (Amount(0), AbortReason::InvalidAmount),
        (Amount(5_000), AbortReason::InvalidAmount),
    ] {
        let out = w.command(WalletCommand::Split {
            saga: saga(40),
            coin: foreign.id,
            amount,
        });
        assert_eq!(notice(&out), (SagaKind::Split, Err(reason)));
    }
    let out = w.command(WalletCommand::Split {
        saga: saga(41),
        coin: CoinId([3; 32]),
        amount: Amount(1),
    });
    assert_eq!(
        notice(&out),
        (SagaKind::Split, Err(AbortReason::CoinNotOwned))
    );

    let out = w.command(WalletCommand::Split {
        saga: saga(42),
        coin: foreign.id,
        amount: Amount(2_000),
    });
    let e = only_send(&out);
    assert_eq!(
        e.to,
        Address::Institution(A),
        "the coin's issuer, not the wallet's institution"
    );
    let Payload::Offline(OfflineMessage::SplitRequest(signed)) = &e.payload else {
        panic!("a split request")
    };
    assert_eq!(signed.verify(), Ok(()));
    assert_eq!(
        (signed.authorization.coin_id, signed.authorization.amount),
        (foreign.id, Amount(2_000))
    );
    // The wallet's own institution is not the coordinator of this split.
    assert!(w
        .outcome(B, saga(42), SagaKind::Split, Ok(()))
        .events
        .is_empty());
    let out = w.outcome(A, saga(42), SagaKind::Split, Ok(()));
    assert_eq!(notice(&out), (SagaKind::Split, Ok(())));
    assert!(w.coins().is_empty());
    w.give(&coin(A, W2, 2_000, 2));
    w.give(&coin(A, W2, 3_000, 3));
    assert_eq!(w.wallet.balance(), Amount(5_000));
}

#[test]
fn a_split_whose_request_or_outcome_was_lost_is_chased_at_the_issuer() {
    let mut w = Node::new(W2, B);
    let foreign = coin(A, W2, 5_000, 1);
    w.give(&foreign);
    w.command(WalletCommand::Split {
        saga: saga(43),
        coin: foreign.id,
        amount: Amount(1_000),
    });
    // Before the decision: the request was lost, the issuer never heard of it.
    let chase = w.fire(saga(43), NOW_MS + OUTCOME_TIMEOUT_MS);
    assert_eq!(only_send(&chase).to, Address::Institution(A));
    assert_eq!(only_send(&chase).payload, Payload::StatusQuery);
    let unknown = Payload::StatusReply {
        state: SagaState::Unknown,
        reason: None,
        decided_at_ms: 0,
    };
    let resend = w.deliver(Address::Institution(A), saga(43), unknown);
    assert!(matches!(
        only_send(&resend).payload,
        Payload::Offline(OfflineMessage::SplitRequest(_))
    ));
    // After the decision: the outcome was lost; the status tells it.
    let committed = Payload::StatusReply {
        state: SagaState::Committed,
        reason: None,
        decided_at_ms: 0,
    };
    let out = w.deliver(Address::Institution(A), saga(43), committed);
    assert_eq!(notice(&out), (SagaKind::Split, Ok(())));
    assert!(
        w.coins().is_empty(),
        "the split coin is spent; its parts arrive from the issuer"
    );
    assert_eq!(w.wallet.snapshot().pending, 0);
}

// ----- offline -----

fn pay(w: &mut Node, id: SagaId, payee: WalletId, amount: u64) -> Out {
    w.offline(OfflineCommand::Pay {
        saga: id,
        payee,
        payee_key: key_of(payee),
        amount: Amount(amount),
        reuse: None,
    })
}

fn outbox(w: &Node, id: SagaId) -> TrustChain {
    w.wallet
        .snapshot()
        .offline
        .outbox
        .into_iter()
        .find(|(s, _)| *s == id)
        .expect("in the outbox")
        .1
}

#[test]
fn an_offline_payment_splits_the_smallest_covering_coin_and_keeps_the_remainder() {
    let mut w = Node::new(W1, A);
    let (small, big) = (coin(A, W1, 1_000, 1), coin(A, W1, 5_000, 2));
    w.give(&small);
    w.give(&big);
    let out = pay(&mut w, saga(50), W2, 800);
    assert_eq!(notice(&out), (SagaKind::OfflinePay, Ok(())));
    assert!(out.sends.is_empty(), "no network");
    let paid = outbox(&w, saga(50));
    assert_eq!(
        (paid.coin.id, paid.value(), paid.holder(), paid.holder_key()),
        (small.id, Amount(800), Some(W2), key_of(W2))
    );
    let s = w.wallet.snapshot();
    assert_eq!(s.offline.chains.len(), 1);
    assert_eq!(
        s.offline.chains[0].value(),
        Amount(200),
        "the remainder stays with the payer"
    );
    assert_eq!(s.offline.spent_offline, vec![small.id]);
    assert_eq!(
        s.coins.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![big.id]
    );
    assert_eq!(
        (s.offline.unsynced, s.offline.sequence, s.offline.limit),
        (Amount(800), 2, OFFLINE_LIMIT)
    );
    // The hand-over empties the outbox.
    w.offline(OfflineCommand::HandedOver { saga: saga(50) });
    assert!(w.wallet.snapshot().offline.outbox.is_empty());
}

#[test]
fn the_offline_limit_bounds_what_is_paid_before_a_sync_and_a_sync_frees_it() {
    let mut w = Node::new(W1, A);
    w.give(&coin(A, W1, 5_000, 1));
    w.give(&coin(A, W1, 5_000, 2));
    assert_eq!(
        notice(&pay(&mut w, saga(60), W2, 2_000)),
        (SagaKind::OfflinePay, Ok(()))
    );
    assert_eq!(
        notice(&pay(&mut w, saga(61), W2, 1_500)),
        (SagaKind::OfflinePay, Err(AbortReason::OfflineLimit))
    );
    assert_eq!(
        notice(&pay(&mut w, saga(62), W2, 0)),
        (SagaKind::OfflinePay, Err(AbortReason::InvalidAmount))
    );
    assert_eq!(
        notice(&pay(&mut w, saga(63), W1, 10)),
        (SagaKind::OfflinePay, Err(AbortReason::PayeeMismatch))
    );
    assert_eq!(
        notice(&pay(&mut w, saga(64), W2, 9_000)),
        (SagaKind::OfflinePay, Err(AbortReason::OfflineLimit))
    );

    // Sync: the records go to the institution, and the remainder chain is redeemed.
    let out = w.offline(OfflineCommand::Sync { saga: saga(65) });
    let upload = out
        .sends
        .iter()
        .find(|e| matches!(e.payload, Payload::Offline(OfflineMessage::Sync { .. })))
        .expect("an upload");
    let Payload::Offline(OfflineMessage::Sync { transfers }) = &upload.payload else {
        unreachable!()
    };
    assert_eq!(
        transfers
            .iter()
            .map(|t| t.record.sequence)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    let redemptions: Vec<&Envelope> = out
        .sends
        .iter()
        .filter(|e| {
            matches!(
                e.payload,
                Payload::Offline(OfflineMessage::RedeemRequest(_))
            )
        })
        .collect();
    assert_eq!(redemptions.len(), 1, "the remainder chain");
    assert!(
        out.notices.is_empty(),
        "not done before the institution answers"
    );
    let ack = w.deliver(
        Address::Institution(A),
        saga(65),
        Payload::Offline(OfflineMessage::SyncAck { sequence: 2 }),
    );
    assert!(ack.notices.is_empty(), "the redemption is still under way");
    assert_eq!(w.wallet.snapshot().offline.unsynced, Amount::ZERO);
    let redeemed = w.outcome(A, redemptions[0].saga_id, SagaKind::OfflineRedeem, Ok(()));
    let kinds: Vec<_> = redeemed
        .notices
        .iter()
        .map(|n| (n.outcome.kind, n.outcome.result))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (SagaKind::OfflineRedeem, Ok(())),
            (SagaKind::OfflineSync, Ok(()))
        ]
    );
    assert_eq!(w.wallet.snapshot().pending, 0);
    // The limit is free again.
    assert_eq!(
        notice(&pay(&mut w, saga(66), W2, 1_500)),
        (SagaKind::OfflinePay, Ok(()))
    );
}

#[test]
fn an_offline_payment_needs_one_coin_that_covers_it_and_no_online_payment_in_flight() {
    let mut w = Node::new(W1, A);
    w.give(&coin(A, W1, 1_000, 1));
    w.give(&coin(A, W1, 1_000, 2));
    assert_eq!(
        notice(&pay(&mut w, saga(70), W2, 1_500)),
        (SagaKind::OfflinePay, Err(AbortReason::InsufficientFunds))
    );
    w.command(WalletCommand::Pay {
        saga: saga(71),
        payee: W2,
        payee_institution: B,
        amount: Amount(100),
        coins: None,
    });
    assert_eq!(
        notice(&pay(&mut w, saga(72), W2, 100)),
        (SagaKind::OfflinePay, Err(AbortReason::Busy))
    );
}

#[test]
fn a_payee_takes_a_genuine_chain_once_and_refuses_forged_or_misaddressed_ones() {
    let mut payer = Node::new(W1, A);
    payer.give(&coin(A, W1, 1_000, 1));
    pay(&mut payer, saga(80), W2, 600);
    let chain = outbox(&payer, saga(80));
    let mut payee = Node::new(W2, B);
    let out = payee.offline(OfflineCommand::Receive {
        saga: saga(80),
        chain: chain.clone(),
    });
    assert_eq!(notice(&out), (SagaKind::OfflinePay, Ok(())));
    let again = payee.offline(OfflineCommand::Receive {
        saga: saga(80),
        chain: chain.clone(),
    });
    assert_eq!(notice(&again), (SagaKind::OfflinePay, Ok(())));
    assert!(
        again.events.is_empty(),
        "a repeated hand-over is taken once"
    );
    assert_eq!(payee.wallet.snapshot().offline.chains, vec![chain.clone()]);

    let mut inflated = chain.clone();
    inflated.transfers[0].record.amount = Amount(900);
    let refused = |node: &mut Node, id: SagaId, c: TrustChain, reason: AbortReason| {
        let out = node.offline(OfflineCommand::Receive { saga: id, chain: c });
        assert_eq!(notice(&out), (SagaKind::OfflinePay, Err(reason)));
        assert!(out.events.is_empty());
    };
    refused(&mut payee, saga(81), inflated, AbortReason::BadSignature);
    let mut other = Node::new(W3, B);
    refused(
        &mut other,
        saga(82),
        chain.clone(),
        AbortReason::PayeeMismatch,
    );
    refused(
        &mut other,
        saga(83),
        TrustChain::of_coin(coin(A, W3, 10, 9)),
        AbortReason::EmptyRequest,
    );
}

#[test]
fn a_received_chain_can_be_paid_onward_and_redeemed() {
    let mut payer = Node::new(W1, A);
    payer.give(&coin(A, W1, 1_000, 1));
    pay(&mut payer, saga(90), W2, 600);
    let mut w2 = Node::new(W2, B);
    w2.offline(OfflineCommand::Receive {
        saga: saga(90),
        chain: outbox(&payer, saga(90)),
    });
    // W2 holds no coin: it pays W3 out of the chain it received.
    let out = pay(&mut w2, saga(91), W3, 250);
    assert_eq!(notice(&out), (SagaKind::OfflinePay, Ok(())));
    let onward = outbox(&w2, saga(91));
    assert_eq!(
        (onward.transfers.len(), onward.value(), onward.holder()),
        (2, Amount(250), Some(W3))
    );
    let kept = w2.wallet.snapshot().offline.chains;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].value(), Amount(350));
    // Redeem what it kept.
    let id = kept[0].id();
    let out = w2.offline(OfflineCommand::Redeem {
        saga: saga(92),
        chain: id,
    });
    let e = only_send(&out);
    assert_eq!(
        e.to,
        Address::Institution(B),
        "redeemed through its own institution"
    );
    assert_eq!(
        e.payload,
        Payload::Offline(OfflineMessage::RedeemRequest(kept[0].clone()))
    );
    let busy = w2.offline(OfflineCommand::Redeem {
        saga: saga(93),
        chain: id,
    });
    assert_eq!(
        notice(&busy),
        (SagaKind::OfflineRedeem, Err(AbortReason::Busy))
    );
    let done = w2.outcome(B, saga(92), SagaKind::OfflineRedeem, Ok(()));
    assert_eq!(notice(&done), (SagaKind::OfflineRedeem, Ok(())));
    assert!(w2.wallet.snapshot().offline.chains.is_empty());
}

#[test]
fn a_refused_redemption_drops_a_worthless_chain_counts_double_spends_and_keeps_a_chain_worth_retrying(
) {
    let mut payer = Node::new(W1, A);
    payer.give(&coin(A, W1, 1_000, 1));
    payer.give(&coin(A, W1, 2_000, 2));
    pay(&mut payer, saga(100), W2, 500);
    pay(&mut payer, saga(101), W2, 1_500);
    let mut w2 = Node::new(W2, B);
    for id in [saga(100), saga(101)] {
        w2.offline(OfflineCommand::Receive {
            saga: id,
            chain: outbox(&payer, id),
        });
    }
    let chains = w2.wallet.snapshot().offline.chains;
    assert_eq!(chains.len(), 2);
    let (first, second) = (chains[0].id(), chains[1].id());

    // Timed out: the chain is kept and can be redeemed again.
    w2.offline(OfflineCommand::Redeem {
        saga: saga(102),
        chain: first,
    });
    let out = w2.outcome(
        B,
        saga(102),
        SagaKind::OfflineRedeem,
        Err(AbortReason::Timeout),
    );
    assert_eq!(
        notice(&out),
        (SagaKind::OfflineRedeem, Err(AbortReason::Timeout))
    );
    assert_eq!(w2.wallet.snapshot().offline.chains.len(), 2);

    // A double spend: the chain is worthless; the report names who made it.
    w2.offline(OfflineCommand::Redeem {
        saga: saga(103),
        chain: first,
    });
    let report = DoubleSpend {
        coin_id: chains[0].coin.id,
        signer: W1,
        signer_key: key_of(W1),
        sequence: 1,
    };
    w2.deliver(
        Address::Institution(B),
        saga(103),
        Payload::Offline(OfflineMessage::DoubleSpendReport(report.clone())),
    );
    w2.outcome(
        B,
        saga(103),
        SagaKind::OfflineRedeem,
        Err(AbortReason::OfflineDoubleSpend),
    );
    let s = w2.wallet.snapshot().offline;
    assert_eq!(
        (s.double_spends_detected, s.double_spend_reports),
        (1, vec![report])
    );
    assert_eq!(
        s.chains.iter().map(|c| c.id()).collect::<Vec<_>>(),
        vec![second]
    );
    // A report from anyone but the wallet's institution is not taken.
    let stray = w2.deliver(
        Address::Institution(A),
        saga(103),
        Payload::Offline(OfflineMessage::DoubleSpendReport(DoubleSpend {
            coin_id: CoinId([1; 32]),
            signer: W3,
            signer_key: key_of(W3),
            sequence: 9,
        })),
    );
    assert!(stray.events.is_empty());
}

#[test]
fn a_coin_split_offline_is_never_taken_back_nor_offered_to_an_online_payment() {
    let mut w = Node::new(W1, A);
    let (small, big) = (coin(A, W1, 1_000, 1), coin(A, W1, 5_000, 2));
    w.give(&small);
    w.give(&big);
    pay(&mut w, saga(110), W2, 500);
    // Its issuer resends it (never acknowledged, say): it stays out of the wallet.
    let late = w.deliver(
        Address::Institution(A),
        small.body.origin_saga,
        Payload::CoinIssued(small.clone()),
    );
    assert!(late.events.is_empty());
    assert_eq!(w.coins(), vec![big.id]);
    // An online payment: the wallet chooses its coins itself (its institution might pick the
    // coin split offline, which it still shows active), and signs at once.
    let out = w.command(WalletCommand::Pay {
        saga: saga(111),
        payee: W2,
        payee_institution: B,
        amount: Amount(300),
        coins: None,
    });
    let e = only_send(&out);
    let Payload::PaymentRequest(signed) = &e.payload else {
        panic!("a signed payment, not a balance query: {:?}", e.payload)
    };
    assert_eq!(signed.authorization.coin_ids, vec![big.id]);
}

#[test]
fn a_planted_reuse_signs_a_second_transfer_of_a_coin_already_split_offline() {
    let mut w = Node::new(W1, A);
    let c = coin(A, W1, 1_000, 1);
    w.give(&c);
    pay(&mut w, saga(120), W2, 1_000);
    assert_eq!(
        notice(&pay(&mut w, saga(121), W3, 100)),
        (SagaKind::OfflinePay, Err(AbortReason::InsufficientFunds))
    );
    let out = w.offline(OfflineCommand::Pay {
        saga: saga(122),
        payee: W3,
        payee_key: key_of(W3),
        amount: Amount(1_000),
        reuse: Some(c.id),
    });
    assert_eq!(notice(&out), (SagaKind::OfflinePay, Ok(())));
    let (first, second) = (outbox(&w, saga(120)), outbox(&w, saga(122)));
    assert_eq!(first.coin.id, second.coin.id);
    assert_ne!(
        first.transfers[0].record.sequence,
        second.transfers[0].record.sequence
    );
}

#[test]
fn the_state_survives_a_checkpoint_and_a_journal_replay() {
    let mut w = Node::new(W1, A);
    w.give(&coin(A, W1, 1_000, 1));
    w.give(&coin(B, W1, 2_000, 2));
    pay(&mut w, saga(130), W2, 400);
    let ids = w.coins();
    w.command(WalletCommand::Merge {
        saga: saga(131),
        coins: ids,
    });
    w.offline(OfflineCommand::Sync { saga: saga(132) });
    let live = w.wallet.snapshot();
    let fresh = || Node::new(W1, A).wallet;
    let mut restored = fresh();
    restored
        .restore(&w.wallet.checkpoint().expect("wallets take snapshots"))
        .expect("restores");
    let mut replayed = fresh();
    for e in &w.journal {
        replayed.apply(e);
    }
    for other in [restored.snapshot(), replayed.snapshot()] {
        assert_eq!(other.coins, live.coins);
        assert_eq!(other.pending, live.pending);
        assert_eq!(other.offline, live.offline);
    }
    assert_eq!(live.pending, 3, "the merge, the sync and its redemption");
    // The restored wallet still enforces the configured limit.
    assert_eq!(restored.snapshot().offline.limit, OFFLINE_LIMIT);
}

#[test]
fn an_institutions_selection_naming_a_coin_split_offline_becomes_no_selection() {
    let mut w = Node::new(W1, A);
    let (small, big) = (coin(A, W1, 1_000, 1), coin(A, W1, 5_000, 2));
    w.give(&small);
    w.give(&big);
    assert_eq!(
        notice(&pay(&mut w, saga(140), W2, 500)),
        (SagaKind::OfflinePay, Ok(()))
    );
    // Its issuer still shows `small` active: an institution's selection (for an escrow
    // deposit, say) may name it. The wallet treats that as no selection.
    let reply = |coin_ids: Vec<CoinId>| {
        let payload = Payload::BalanceReply {
            available: Amount(6_000),
            coin_ids,
        };
        envelope(
            Address::Institution(A),
            Address::Wallet(W1),
            saga(141),
            payload,
        )
    };
    let filtered = w
        .wallet
        .without_coins_spent_offline(reply(vec![small.id, big.id]));
    assert_eq!(filtered, reply(vec![]));
    let untouched = w.wallet.without_coins_spent_offline(reply(vec![big.id]));
    assert_eq!(untouched, reply(vec![big.id]));
}
