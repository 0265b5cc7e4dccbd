//! Malformed input on the wire: seeded random bytes, every truncation and every single-bit flip
//! of valid envelopes, delivered straight into the mailboxes of a wallet and an institution.
//! Whatever does not decode, or is not addressed to the receiver, is rejected and counted;
//! whatever still decodes is handled as a normal message. Either way no coin, account or
//! reserve changes, every saga started by a mangled request terminates, the audit holds, and
//! both actors still serve real payments afterwards.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_actors::wallet::WalletCommand;
use specie_actors::{Cluster, ClusterSnapshot};
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinBody, Envelope, InstitutionId, Payload,
    PaymentAuthorization, SagaId, SagaKind, SagaState, SignedAuthorization, SoftKeyStore, WalletId,
};
use specie_runtime::Network;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SEED: u64 = 0x5eed_0002;
const RANDOM_INPUTS: usize = 400;

/// Builds a valid envelope for a saga number.
type Make<'a> = Box<dyn Fn(u128) -> Envelope + 'a>;

/// Everything that holds value, in a form that compares.
#[derive(Debug, PartialEq, Eq)]
struct Ledgers {
    /// Each wallet's coins (id and value), sorted.
    wallets: Vec<Vec<String>>,
    /// Account balances.
    accounts: BTreeMap<WalletId, u64>,
    /// Every register entry's state.
    registers: BTreeMap<String, String>,
    /// The central bank's reserves and what it minted.
    reserves: String,
}

fn ledgers(s: &ClusterSnapshot) -> Ledgers {
    let wallets = s
        .wallets
        .iter()
        .map(|w| {
            let mut ids: Vec<String> = w
                .coins
                .iter()
                .map(|c| format!("{}:{}", c.id, c.value().0))
                .collect();
            ids.sort();
            ids
        })
        .collect();
    let registers = s
        .institutions
        .iter()
        .flat_map(|i| {
            i.coins
                .iter()
                .map(|(id, r)| (id.to_string(), format!("{:?}", r.state)))
        })
        .collect();
    let reserves = format!(
        "{:?} minted {:?}",
        s.central_bank.reserves, s.central_bank.minted
    );
    Ledgers {
        wallets,
        accounts: common::account_balances(s),
        registers,
        reserves,
    }
}

/// Delivers raw bytes to `to` and counts whether the receiver must reject them.
struct Wire {
    network: Network,
    delivered: u64,
    must_reject: u64,
    decoded: u64,
}

impl Wire {
    fn deliver(&mut self, to: Address, bytes: Vec<u8>) {
        match Envelope::decode(&bytes) {
            Ok(e) if e.to == to => self.decoded += 1,
            _ => self.must_reject += 1,
        }
        self.delivered += 1;
        self.network.deliver_bytes(to, bytes.into());
    }
}

fn envelope(saga: u128, from: Address, to: Address, payload: Payload) -> Envelope {
    Envelope {
        message_id: 7,
        saga_id: SagaId::from_u128(saga),
        from,
        to,
        attempt: 0,
        trace: None,
        payload,
    }
}

/// An authorization naming `payer`'s key and coins but signed with a key that is not its own.
fn forged(
    s: &ClusterSnapshot,
    saga: u128,
    payer: WalletId,
    payee: WalletId,
    payee_institution: InstitutionId,
) -> SignedAuthorization {
    let w = &s.wallets[payer.0 as usize];
    let coins: Vec<_> = w.coins.iter().take(2).map(|c| c.id).collect();
    PaymentAuthorization {
        saga_id: SagaId::from_u128(saga),
        payer,
        payer_key: w.key,
        payer_institution: w.institution,
        coin_ids: coins,
        amount: Amount(1_500),
        payee,
        payee_institution,
        expires_at_ms: u64::MAX / 2,
    }
    .sign(&SoftKeyStore::from_seed([0xf0; 32]))
}

#[actix::test]
async fn mangled_envelopes_are_rejected_and_change_nothing() {
    let mut config = common::config(8);
    // Sagas that a mangled request starts against an unreachable issuer time out quickly.
    config.limits.saga_timeout_ms = 300;
    config.limits.retry_interval_ms = 50;
    config.limits.retry_interval_max_ms = 200;
    config.limits.outcome_timeout_ms = 300;
    let cluster = Cluster::start(config, SEED).await.expect("cluster starts");
    let network = cluster.node().network().clone();
    let before = cluster.snapshot().await.expect("snapshot");

    // The targets: wallet 1 (of inst-1) and institution 0.
    let wallet = WalletId(1);
    let wallet_addr = Address::Wallet(wallet);
    let inst = InstitutionId(0);
    let inst_addr = Address::Institution(inst);
    assert_eq!(cluster.institution_of(wallet), InstitutionId(1));
    let held = before.wallets[1].coins[0].clone();
    let fake_issuer = SoftKeyStore::from_seed([0xee; 32]);
    let fake_coin = Coin::issue(
        CoinBody {
            issuer: InstitutionId(1),
            owner: before.wallets[1].key,
            denomination: Amount(50_000),
            nonce: 1 << 40,
            origin_saga: SagaId::from_u128(99),
            issued_at_ms: 1,
        },
        &fake_issuer,
    );
    let i0 = Address::Institution(inst);
    let i1 = Address::Institution(InstitutionId(1));
    let customer = Address::Wallet(WalletId(4));
    // Each base envelope is built for a given saga number, so that every mangled copy of a
    // request that starts a saga starts its own (instead of colliding with the first one).
    let held_id = held.id;
    let to_wallet: Vec<Make> = vec![
        Box::new(move |n| envelope(n, i1, wallet_addr, Payload::CoinIssued(held.clone()))),
        Box::new(move |n| envelope(n, i1, wallet_addr, Payload::CoinIssued(fake_coin.clone()))),
        Box::new(move |n| {
            let outcome = SagaOutcome {
                kind: SagaKind::Pay,
                result: Ok(()),
                spent_coin_ids: vec![held_id],
                decided_at_ms: 1,
            };
            envelope(n, i1, wallet_addr, Payload::SagaOutcome(outcome))
        }),
        Box::new(|n| {
            let a = forged(&before, n, WalletId(2), wallet, InstitutionId(1));
            envelope(
                n,
                Address::Wallet(WalletId(2)),
                wallet_addr,
                Payload::PaymentRequest(a),
            )
        }),
        Box::new(move |n| {
            let reply = Payload::BalanceReply {
                available: Amount(1),
                coin_ids: vec![held_id],
            };
            envelope(n, i1, wallet_addr, reply)
        }),
        Box::new(move |n| {
            let reply = Payload::StatusReply {
                state: SagaState::Committed,
                reason: None,
                decided_at_ms: 1,
            };
            envelope(n, i1, wallet_addr, reply)
        }),
        Box::new(move |n| {
            let reply = Payload::ExchangeReply {
                result: Ok(()),
                decided_at_ms: 1,
            };
            envelope(n, i1, wallet_addr, reply)
        }),
    ];
    let to_institution: Vec<Make> = vec![
        Box::new(move |n| envelope(n, customer, inst_addr, Payload::StatusQuery)),
        Box::new(move |n| {
            envelope(
                n,
                customer,
                inst_addr,
                Payload::BalanceQuery {
                    amount: Amount(1_234),
                },
            )
        }),
        // Local path: payer and payee bank here.
        Box::new(|n| {
            let a = forged(&before, n, WalletId(0), WalletId(4), inst);
            envelope(
                n,
                Address::External(5),
                inst_addr,
                Payload::RedeemRequest(a),
            )
        }),
        // Cross path: the payer's coins are at inst-3.
        Box::new(|n| {
            let a = forged(&before, n, WalletId(3), WalletId(4), inst);
            envelope(
                n,
                Address::External(5),
                inst_addr,
                Payload::RedeemRequest(a),
            )
        }),
        // As the issuer, asked by inst-1 to lock coins of wallet 0.
        Box::new(|n| {
            let a = forged(&before, n, WalletId(0), WalletId(5), InstitutionId(1));
            envelope(n, i1, inst_addr, Payload::LockRequest(a))
        }),
        Box::new(move |n| {
            let abort = Payload::AbortRequest {
                reason: AbortReason::Timeout,
            };
            envelope(n, Address::Institution(InstitutionId(2)), inst_addr, abort)
        }),
        Box::new(move |n| envelope(n, i0, inst_addr, Payload::ReserveAck(Ok(())))),
    ];

    let stats_before = network.stats();
    let mut wire = Wire {
        network: network.clone(),
        delivered: 0,
        must_reject: 0,
        decoded: 0,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    for (target, bases) in [(wallet_addr, &to_wallet), (inst_addr, &to_institution)] {
        for _ in 0..RANDOM_INPUTS {
            let len = rng.gen_range(0..256);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            wire.deliver(target, bytes);
        }
        for (b, make) in bases.iter().enumerate() {
            let offset = if target == inst_addr { 1u128 << 96 } else { 0 };
            let saga = |variant: usize| offset | (b as u128 + 1) << 64 | variant as u128;
            let base = make(saga(0));
            let bytes = base.encode().to_vec();
            // Sanity: the base itself is valid and addressed to the target.
            assert_eq!(Envelope::decode(&bytes).as_ref(), Ok(&base));
            wire.deliver(target, bytes.clone());
            for cut in 0..bytes.len() {
                assert!(
                    Envelope::decode(&bytes[..cut]).is_err(),
                    "a truncation decoded"
                );
                wire.deliver(target, bytes[..cut].to_vec());
            }
            for bit in 0..bytes.len() * 8 {
                let mut flipped = make(saga(bit + 1)).encode().to_vec();
                assert_eq!(flipped.len(), bytes.len());
                flipped[bit / 8] ^= 1 << (bit % 8);
                wire.deliver(target, flipped);
            }
        }
        // A valid envelope for someone else is misaddressed here.
        let elsewhere = envelope(300, i1, Address::Wallet(WalletId(6)), Payload::StatusQuery);
        wire.deliver(target, elsewhere.encode().to_vec());
    }
    eprintln!(
        "delivered {}, must reject {}, decoded {}",
        wire.delivered, wire.must_reject, wire.decoded
    );
    assert!(wire.decoded > 0 && wire.must_reject > 0);

    // Every delivery is handled, and every saga a mangled request started terminates.
    assert!(
        cluster.quiesce(Duration::from_secs(10)).await,
        "the network goes quiet"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = cluster.audit().await.expect("audit");
        if report.in_flight == 0 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        cluster.quiesce(Duration::from_secs(10)).await,
        "the network goes quiet"
    );
    let stats = network.stats();
    assert_eq!(
        stats.rejected - stats_before.rejected,
        wire.must_reject,
        "rejections counted: {stats:?}"
    );
    assert_eq!(network.in_flight(), 0);
    assert!(report.ok(), "audit: {report:#?}");
    if report.in_flight > 0 {
        let s = cluster.snapshot().await.expect("snapshot");
        let stuck: Vec<String> = s
            .institutions
            .iter()
            .flat_map(|i| {
                i.pays
                    .iter()
                    .filter(|(_, p)| !p.step.is_terminal())
                    .map(move |(saga, p)| {
                        format!(
                            "{saga} at {}: issuer {} {:?}",
                            i.id, p.payer_institution, p.step
                        )
                    })
            })
            .collect();
        panic!(
            "{} sagas started by mangled requests never ended: {stuck:#?}",
            report.in_flight
        );
    }

    let after = cluster.snapshot().await.expect("snapshot");
    assert_eq!(
        ledgers(&before),
        ledgers(&after),
        "mangled input changed the ledgers"
    );
    assert!(after.wallets.iter().all(|w| w.pending == 0));
    assert!(cluster.node().escalations().is_empty());

    // Both targets still serve real payments, in both directions.
    let mut notices = cluster.notices();
    let sagas = [SagaId::from_u128(401), SagaId::from_u128(402)];
    for (saga, payer, payee) in [
        (sagas[0], wallet, WalletId(4)),
        (sagas[1], WalletId(4), wallet),
    ] {
        let command = WalletCommand::Pay {
            saga,
            payee,
            payee_institution: cluster.institution_of(payee),
            amount: Amount(2_345),
            coins: None,
        };
        cluster
            .submit(payer, command)
            .await
            .expect("payer reachable");
    }
    let mut committed = 0;
    while committed < 4 {
        let n = tokio::time::timeout(Duration::from_secs(10), notices.recv())
            .await
            .expect("payments after the garbage finish")
            .expect("notice channel open");
        assert!(sagas.contains(&n.saga_id), "unexpected notice {n:?}");
        assert_eq!(n.outcome.result, Ok(()), "{n:?}");
        committed += 1;
    }
    assert!(cluster.quiesce(Duration::from_secs(10)).await);
    let end = cluster.snapshot().await.expect("snapshot");
    assert_eq!(common::coin_balances(&end), common::coin_balances(&before));
    let report = cluster.audit().await.expect("audit");
    assert!(report.ok() && report.in_flight == 0, "audit: {report:#?}");
    cluster.shutdown();
}
