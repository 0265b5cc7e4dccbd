//! Micro-benchmarks of the pieces a pay saga is made of (`cargo bench -p specie-bench`):
//!
//! - `envelope`: encode and decode of the largest message of the saga (a redeem request
//!   carrying a signed authorization) and of an issued coin;
//! - `coin`: issuing (signing) a coin and verifying one; an authorization's verification;
//! - `journal`: one durable group commit of the redb journal in a temp dir (64 actors' entries,
//!   fsync), from append to durable;
//! - `institution`: the lock/commit path of a cross-institution payment, driving the issuer,
//!   the coordinator and the central bank as pure state machines (no runtime), the payer's
//!   signature made outside the timed part;
//! - `saga`: one full payment through an in-process cluster (actors, network, in-memory
//!   journal), one at a time — the unloaded latency of a saga.

// `criterion_group!` generates a public function without documentation.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use specie_actors::central_bank::CentralBank;
use specie_actors::institution::{Institution, InstitutionCommand};
use specie_actors::wallet::WalletCommand;
use specie_actors::{Blueprint, Cluster};
use specie_protocol::{
    Address, Amount, Coin, CoinBody, Envelope, InstitutionId, KeyStore, Payload,
    PaymentAuthorization, SagaId, SoftKeyStore, WalletId,
};
use specie_runtime::config::Config;
use specie_runtime::{Effects, Journal, JournalSettings, RedbJournal, StateMachine};
use std::time::{Duration, Instant};

const LOCAL: &str = include_str!("../../config/local.toml");

fn config(wallets: u64) -> Config {
    let text = LOCAL.replace("wallets = 10000", &format!("wallets = {wallets}"));
    Config::parse(&text, "bench config").expect("valid config")
}

fn sample_coin(keys: &SoftKeyStore, nonce: u64) -> Coin {
    Coin::issue(
        CoinBody {
            issuer: InstitutionId(1),
            owner: SoftKeyStore::from_seed([3; 32]).public_key(),
            denomination: Amount(12_345),
            nonce,
            origin_saga: SagaId::from_u128(u128::from(nonce)),
            issued_at_ms: 1_700_000_000_000,
        },
        keys,
    )
}

fn sample_authorization(coins: usize) -> Envelope {
    let payer = SoftKeyStore::from_seed([7; 32]);
    let signed = PaymentAuthorization {
        saga_id: SagaId::from_u128(42),
        payer: WalletId(11),
        payer_key: payer.public_key(),
        payer_institution: InstitutionId(1),
        coin_ids: (0..coins)
            .map(|i| sample_coin(&payer, i as u64).id)
            .collect(),
        amount: Amount(5_500),
        payee: WalletId(21),
        payee_institution: InstitutionId(2),
        expires_at_ms: 1_700_000_030_000,
    }
    .sign(&payer);
    Envelope {
        message_id: 9,
        saga_id: SagaId::from_u128(42),
        from: Address::Wallet(WalletId(21)),
        to: Address::Institution(InstitutionId(2)),
        attempt: 0,
        trace: None,
        payload: Payload::RedeemRequest(signed),
    }
}

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let redeem = sample_authorization(2);
    let bytes = redeem.encode();
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_redeem_request", |b| {
        b.iter(|| std::hint::black_box(&redeem).encode())
    });
    g.bench_function("decode_redeem_request", |b| {
        b.iter(|| Envelope::decode(std::hint::black_box(&bytes)).expect("decodes"))
    });
    let coin = Envelope {
        payload: Payload::CoinIssued(sample_coin(&SoftKeyStore::from_seed([1; 32]), 1)),
        ..redeem.clone()
    };
    let coin_bytes = coin.encode();
    g.bench_function("encode_coin_issued", |b| {
        b.iter(|| std::hint::black_box(&coin).encode())
    });
    g.bench_function("decode_coin_issued", |b| {
        b.iter(|| Envelope::decode(std::hint::black_box(&coin_bytes)).expect("decodes"))
    });
    g.finish();
}

fn coin(c: &mut Criterion) {
    let mut g = c.benchmark_group("coin");
    g.throughput(Throughput::Elements(1));
    let issuer = SoftKeyStore::from_seed([1; 32]);
    let mut nonce = 0;
    g.bench_function("issue_sign", |b| {
        b.iter(|| {
            nonce += 1;
            sample_coin(&issuer, nonce)
        })
    });
    let coin = sample_coin(&issuer, 1);
    let key = issuer.public_key();
    g.bench_function("verify", |b| {
        b.iter(|| coin.verify(std::hint::black_box(&key)).expect("verifies"))
    });
    let Payload::RedeemRequest(signed) = sample_authorization(2).payload else {
        unreachable!()
    };
    g.bench_function("verify_authorization", |b| {
        b.iter(|| signed.verify().expect("verifies"))
    });
    g.finish();
}

fn journal(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal");
    const ACTORS: u64 = 64;
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = JournalSettings {
        batch_entries_max: 8192,
        batch_wait_us: 0,
        queue_capacity: 65_536,
        snapshot_entries_min: u64::MAX,
    };
    let journal = RedbJournal::open(&dir.path().join("j.redb"), b"bench", settings).expect("opens");
    let entry = bytes::Bytes::from(vec![0xabu8; 200]);
    g.throughput(Throughput::Elements(ACTORS));
    g.bench_function("group_commit_64_actors_fsync", |b| {
        b.iter(|| {
            let mut last = 0;
            for a in 0..ACTORS {
                last = journal
                    .append(Address::Wallet(WalletId(a)), vec![entry.clone()])
                    .expect("appends");
            }
            while !journal.is_durable(last) {
                std::thread::yield_now();
            }
        })
    });
    g.finish();
    journal.close();
}

type Out<S> = Effects<<S as StateMachine>::Event, <S as StateMachine>::Timer>;

/// The issuer `A` (institution 0), the coordinator `B` (institution 1) and the central bank,
/// with envelopes between them handed over by hand.
struct Ledger {
    a: Institution,
    b: Institution,
    bank: CentralBank,
    now_ms: u64,
}

impl Ledger {
    /// Delivers `first` and everything it causes among A, B and the bank; returns what went
    /// to wallets.
    fn route(&mut self, first: Envelope) -> Vec<Envelope> {
        let mut queue = vec![first];
        let mut to_wallets = Vec::new();
        while let Some(e) = queue.pop() {
            match e.to {
                Address::Institution(InstitutionId(0)) => {
                    let mut out: Out<Institution> = Effects::default();
                    self.a.on_envelope(e, self.now_ms, &mut out);
                    self.a.seal(&mut out.sends); // as the host does when the step is durable
                    queue.extend(out.sends);
                }
                Address::Institution(InstitutionId(1)) => {
                    let mut out: Out<Institution> = Effects::default();
                    self.b.on_envelope(e, self.now_ms, &mut out);
                    self.b.seal(&mut out.sends); // as the host does when the step is durable
                    queue.extend(out.sends);
                }
                Address::CentralBank => {
                    let mut out: Out<CentralBank> = Effects::default();
                    self.bank.on_envelope(e, self.now_ms, &mut out);
                    queue.extend(out.sends);
                }
                _ => to_wallets.push(e),
            }
        }
        to_wallets
    }
}

fn coins_to(sends: &[Envelope], wallet: WalletId) -> Vec<Coin> {
    sends
        .iter()
        .filter(|e| e.to == Address::Wallet(wallet))
        .filter_map(|e| match &e.payload {
            Payload::CoinIssued(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn institution(c: &mut Criterion) {
    let config = config(4);
    let mut two = config.clone();
    two.cluster.institutions.truncate(2);
    let blueprint = Blueprint::new(&two, 1);
    let payer = WalletId(0); // banks at institution 0
    let payee = WalletId(1); // banks at institution 1
    let payer_keys = blueprint.wallet_keys(payer);
    let mut ledger = Ledger {
        a: blueprint.institution(0)(),
        b: blueprint.institution(1)(),
        bank: blueprint.central_bank()(),
        now_ms: 1_000,
    };
    let mut ignore_bank: Out<CentralBank> = Effects::default();
    for i in 0..2 {
        ledger.bank.on_command(
            specie_actors::central_bank::CentralBankCommand::Mint {
                institution: InstitutionId(i),
                amount: Amount(1_000_000_000),
            },
            1_000,
            &mut ignore_bank,
        );
    }
    let mut ignore: Out<Institution> = Effects::default();
    let open = |w: WalletId| InstitutionCommand::OpenAccount {
        wallet: w,
        key: blueprint.wallet_keys(w).public_key(),
        deposit: Amount(100_000_000),
    };
    ledger.a.on_command(open(payer), 1_000, &mut ignore);
    ledger.b.on_command(open(payee), 1_000, &mut ignore);
    let exchange = Envelope {
        message_id: 0,
        saga_id: SagaId::from_u128(1),
        from: Address::Wallet(payer),
        to: Address::Institution(InstitutionId(0)),
        attempt: 0,
        trace: None,
        payload: Payload::ExchangeRequest {
            amount: Amount(20_000),
        },
    };
    let mut coin = coins_to(&ledger.route(exchange), payer).remove(0);
    let mut saga = 1_000u128;
    let mut g = c.benchmark_group("institution");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cross_institution_lock_commit", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                saga += 1;
                if coin.value().0 < 2 {
                    let refill = Envelope {
                        saga_id: SagaId::from_u128(saga << 32),
                        payload: Payload::ExchangeRequest {
                            amount: Amount(20_000),
                        },
                        ..exchange_template(payer)
                    };
                    coin = coins_to(&ledger.route(refill), payer).remove(0);
                }
                // The payer's signature is the wallet's work, not the institutions'.
                let signed = PaymentAuthorization {
                    saga_id: SagaId::from_u128(saga),
                    payer,
                    payer_key: payer_keys.public_key(),
                    payer_institution: InstitutionId(0),
                    coin_ids: vec![coin.id],
                    amount: Amount(1),
                    payee,
                    payee_institution: InstitutionId(1),
                    expires_at_ms: u64::MAX / 2,
                }
                .sign(payer_keys.as_ref());
                let request = Envelope {
                    message_id: 0,
                    saga_id: SagaId::from_u128(saga),
                    from: Address::Wallet(payee),
                    to: Address::Institution(InstitutionId(1)),
                    attempt: 0,
                    trace: None,
                    payload: Payload::RedeemRequest(signed),
                };
                let started = Instant::now();
                let to_wallets = ledger.route(request);
                timed += started.elapsed();
                coin = coins_to(&to_wallets, payer).pop().expect("the change coin");
            }
            timed
        })
    });
    g.finish();
}

fn exchange_template(payer: WalletId) -> Envelope {
    Envelope {
        message_id: 0,
        saga_id: SagaId::NONE,
        from: Address::Wallet(payer),
        to: Address::Institution(InstitutionId(0)),
        attempt: 0,
        trace: None,
        payload: Payload::StatusQuery,
    }
}

fn saga(c: &mut Criterion) {
    let system = actix::System::new();
    let mut config = config(64);
    config.cluster.institutions.truncate(2);
    let cluster = system
        .block_on(Cluster::start(config, 1))
        .expect("cluster starts");
    let mut notices = cluster.notices();
    let mut n = 0u64;
    let mut g = c.benchmark_group("saga");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.bench_function("pay_cross_institution_one_at_a_time", |b| {
        b.iter_batched(
            || {
                n += 1;
                let payer = WalletId(n % 64);
                let payee = WalletId((n + 1) % 64);
                (payer, payee, SagaId::from_u128(u128::from(n) << 16 | 7))
            },
            |(payer, payee, saga)| {
                system.block_on(async {
                    let payee_institution = cluster.institution_of(payee);
                    cluster
                        .submit(
                            payer,
                            WalletCommand::Pay {
                                saga,
                                payee,
                                payee_institution,
                                amount: Amount(1),
                                coins: None,
                            },
                        )
                        .await
                        .expect("submitted");
                    loop {
                        let notice = notices.recv().await.expect("notices");
                        if notice.saga_id == saga && notice.source == Address::Wallet(payer) {
                            assert!(notice.outcome.result.is_ok(), "{:?}", notice.outcome);
                            break;
                        }
                    }
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    cluster.shutdown();
}

criterion_group! {
    name = micro;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = envelope, coin, journal, institution, saga
}
criterion_main!(micro);
