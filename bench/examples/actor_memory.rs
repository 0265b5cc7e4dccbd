//! Where a wallet's memory goes: resident memory added by `N` hosted actors of two kinds — a
//! state machine with no state (the runtime's own cost per actor: actix context, mailbox,
//! task, supervisor, directory entry) and a wallet before genesis (its key pair and empty
//! state on top) — per actor. What genesis adds (accounts, coins, journal) is the rest of the
//! `bytes_per_wallet` that `specie bench` reports.
//!
//! `cargo run --release -p specie-bench --example actor_memory -- 100000`

use serde::{Deserialize, Serialize};
use specie_actors::Blueprint;
use specie_bench::sys::rss_bytes;
use specie_protocol::{Address, Envelope, WalletId};
use specie_runtime::config::Config;
use specie_runtime::{
    Effects, MemoryJournal, Network, Node, NodeSettings, StateMachine, SystemClock,
};
use std::sync::Arc;
use std::time::Duration;

/// A state machine with nothing in it.
struct Empty(u64);

#[derive(Serialize, Deserialize)]
struct NoEvent;

impl StateMachine for Empty {
    type Event = NoEvent;
    type Timer = ();
    type Command = ();
    type Snapshot = ();

    fn address(&self) -> Address {
        Address::External(self.0)
    }
    fn apply(&mut self, _event: &NoEvent) {}
    fn on_start(&mut self, _now_ms: u64, _out: &mut Effects<NoEvent, ()>) {}
    fn on_envelope(&mut self, _envelope: Envelope, _now_ms: u64, _out: &mut Effects<NoEvent, ()>) {}
    fn on_timer(&mut self, _key: (), _now_ms: u64, _out: &mut Effects<NoEvent, ()>) {}
    fn on_command(&mut self, _command: (), _now_ms: u64, _out: &mut Effects<NoEvent, ()>) {}
    fn snapshot(&self) {}
}

fn settle() -> u64 {
    std::thread::sleep(Duration::from_millis(500));
    rss_bytes().unwrap_or(0)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let text = specie_bench::profile::DEFAULT_CLUSTER_CONFIG
        .replace("wallets = 10000", &format!("wallets = {n}"));
    let config = Config::parse(&text, "embedded").expect("valid config");
    let system = actix::System::new();
    system.block_on(async {
        let settings = NodeSettings {
            arbiters: config.runtime.arbiters,
            mailbox_capacity: config.runtime.mailbox_capacity,
            supervision: config.supervision,
            snapshot_entries_min: config.journal.snapshot_entries_min,
        };
        let node = Node::start(
            Network::new(),
            Arc::new(MemoryJournal::new()),
            Arc::new(SystemClock),
            settings,
        );
        let before = settle();
        let empty: Vec<_> = (0..n)
            .map(|i| node.spawn(i as usize, None, move || Empty(i)))
            .collect();
        let after_empty = settle();
        let blueprint = Blueprint::new(&config, 1);
        let wallets: Vec<_> = (0..n)
            .map(|w| {
                let keys = blueprint.wallet_keys(WalletId(w));
                node.spawn(w as usize, None, blueprint.wallet(WalletId(w), keys))
            })
            .collect();
        let after_wallets = settle();
        println!("{n} actors of each kind, resident bytes per actor:");
        println!(
            "  runtime only (empty state machine)   {:>8.0}",
            (after_empty - before) as f64 / n as f64
        );
        println!(
            "  wallet before genesis (keys, state)  {:>8.0}",
            (after_wallets - after_empty) as f64 / n as f64
        );
        drop((empty, wallets));
        node.shutdown();
    });
}
