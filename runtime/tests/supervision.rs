//! Supervision of real hosts on a node: an actor that crashes is restarted with its state
//! rebuilt from the journal, after a backoff that grows with each restart in the window; one
//! that keeps crashing beyond the restart intensity escalates, which stops the actor system
//! with exit code 70 and names the actor; under `one_for_all`, the crash of one member of a
//! group restarts the whole group, under `one_for_one` only the member.

use actix::prelude::*;
use parking_lot::Mutex;
use specie_protocol::{Address, Envelope, WalletId};
use specie_runtime::supervision::{RestartVerdict, Supervision};
use specie_runtime::{
    Crash, Effects, Inspect, Journal, JournalSettings, MemoryJournal, Network, Node, NodeSettings,
    RedbJournal, RestartStrategy, Submit, SupervisionSettings, SystemClock,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit code of an actor system stopped by an escalation.
const ESCALATION_EXIT_CODE: i32 = 70;
/// A generous bound on anything that should take milliseconds: a hung test fails instead.
const WAIT_MAX: Duration = Duration::from_secs(20);

/// One start of a counter: when, and how many events its state held after recovery.
#[derive(Debug, Clone, Copy)]
struct Start {
    at: Instant,
    applied: u64,
}

/// What the test sees of a counter's starts, shared with every incarnation of it.
type Starts = Arc<Mutex<Vec<Start>>>;

/// The smallest state machine: counts the increments it was told to make, each one a
/// journaled event, and reports every start (first and after each restart).
struct Counter {
    address: Address,
    applied: u64,
    starts: Starts,
}

impl specie_runtime::StateMachine for Counter {
    type Event = u64;
    type Timer = ();
    type Command = ();
    type Snapshot = u64;

    fn address(&self) -> Address {
        self.address
    }

    fn apply(&mut self, event: &u64) {
        // Invariant: events are the running count, so replay order shows in the state.
        assert_eq!(*event, self.applied + 1, "events replay in order");
        self.applied = *event;
    }

    fn on_start(&mut self, _now_ms: u64, _out: &mut Effects<u64, ()>) {
        self.starts.lock().push(Start {
            at: Instant::now(),
            applied: self.applied,
        });
    }

    fn on_envelope(&mut self, _envelope: Envelope, _now_ms: u64, _out: &mut Effects<u64, ()>) {}

    fn on_timer(&mut self, _key: (), _now_ms: u64, _out: &mut Effects<u64, ()>) {}

    fn on_command(&mut self, _command: (), _now_ms: u64, out: &mut Effects<u64, ()>) {
        let next = self.applied + 1;
        self.record(next, out);
    }

    fn snapshot(&self) -> u64 {
        self.applied
    }
}

fn supervision(strategy: RestartStrategy) -> SupervisionSettings {
    SupervisionSettings {
        strategy,
        restart_intensity_max: 4,
        // Long enough that every restart of a test falls in one window.
        restart_window_ms: 60_000,
        restart_backoff_ms: 20,
        restart_backoff_max_ms: 1_000,
    }
}

fn start_node(journal: Arc<dyn Journal>, strategy: RestartStrategy) -> Node {
    Node::start(
        Network::new(),
        journal,
        Arc::new(SystemClock),
        NodeSettings {
            arbiters: 2,
            mailbox_capacity: 64,
            supervision: supervision(strategy),
            snapshot_entries_min: 1_000_000,
        },
    )
}

fn spawn_counter(
    node: &Node,
    wallet: u64,
    group: Option<u64>,
) -> (Addr<specie_runtime::Host<Counter>>, Starts) {
    let starts = Starts::default();
    let shared = starts.clone();
    let address = Address::Wallet(WalletId(wallet));
    let addr = node.spawn(wallet as usize, group, move || Counter {
        address,
        applied: 0,
        starts: shared.clone(),
    });
    (addr, starts)
}

/// Waits until `starts` holds `count` starts.
async fn wait_for_starts(starts: &Starts, count: usize) -> Vec<Start> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let seen = starts.lock().clone();
        if seen.len() >= count {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT_MAX:?} for start {count}, saw {}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn inspect(addr: &Addr<specie_runtime::Host<Counter>>) -> u64 {
    tokio::time::timeout(WAIT_MAX, addr.send(Inspect::<u64>::default()))
        .await
        .expect("the host answers")
        .expect("the host is alive")
}

fn restarts_of(node: &Node, kind: &str) -> u64 {
    node.restarts()
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(0, |(_, n)| *n)
}

#[test]
fn the_supervision_verdicts_double_the_backoff_then_escalate() {
    let settings = supervision(RestartStrategy::OneForOne);
    let s = Supervision::new(settings);
    let actor = Address::Wallet(WalletId(7));
    let t = Instant::now();
    let verdicts: Vec<RestartVerdict> = (0..=settings.restart_intensity_max)
        .map(|_| s.on_restart(actor, t))
        .collect();
    let expected: Vec<RestartVerdict> = [20, 40, 80, 160]
        .into_iter()
        .map(|ms| RestartVerdict::Restart(Duration::from_millis(ms)))
        .collect();
    assert_eq!(verdicts[..4], expected[..]);
    match &verdicts[4] {
        RestartVerdict::Escalate(why) => {
            assert!(why.contains(&actor.to_string()), "names the actor: {why}");
            assert!(why.contains("5 times"), "says how often: {why}");
        }
        other => panic!("the restart beyond the intensity escalates, got {other:?}"),
    }
}

#[test]
fn a_crashing_actor_recovers_its_state_with_growing_backoff_then_escalates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = JournalSettings {
        batch_entries_max: 256,
        batch_wait_us: 100,
        queue_capacity: 1024,
        snapshot_entries_min: 1_000_000,
    };
    let journal = Arc::new(
        RedbJournal::open(&dir.path().join("journal.redb"), b"test", settings).expect("journal"),
    );
    let system = System::new();
    let stopped = system.stop_future();
    let intensity = supervision(RestartStrategy::OneForOne).restart_intensity_max as usize;
    let (node, starts, crashes) = system.block_on(async {
        let node = start_node(journal.clone(), RestartStrategy::OneForOne);
        let (addr, starts) = spawn_counter(&node, 7, None);
        wait_for_starts(&starts, 1).await;
        let mut crashes = Vec::new();
        // Each round: two more increments, then a crash; the restarted actor must hold every
        // increment so far, rebuilt from the journal.
        for round in 1..=intensity {
            addr.do_send(Submit(()));
            addr.do_send(Submit(()));
            assert_eq!(
                inspect(&addr).await,
                2 * round as u64,
                "both increments applied before the crash"
            );
            crashes.push(Instant::now());
            addr.do_send(Crash::default());
            let seen = wait_for_starts(&starts, round + 1).await;
            assert_eq!(
                seen[round].applied,
                2 * round as u64,
                "restart {round} replayed every event"
            );
            assert_eq!(inspect(&addr).await, 2 * round as u64);
        }
        assert!(
            node.escalations().is_empty(),
            "no escalation within the intensity"
        );
        // One restart too many.
        addr.do_send(Crash::default());
        (node, starts, crashes)
    });
    let code = system
        .block_on(async { tokio::time::timeout(WAIT_MAX, stopped).await })
        .expect("the escalation stops the system")
        .expect("stop code");
    assert_eq!(
        code, ESCALATION_EXIT_CODE,
        "an escalation stops the system with exit code 70"
    );

    let escalations = node.escalations();
    assert_eq!(escalations.len(), 1, "one escalation: {escalations:?}");
    let actor = Address::Wallet(WalletId(7)).to_string();
    assert!(
        escalations[0].contains(&actor),
        "the escalation names {actor}: {}",
        escalations[0]
    );
    assert!(
        escalations[0].contains("intensity"),
        "and says why: {}",
        escalations[0]
    );
    assert_eq!(
        restarts_of(&node, "wallet"),
        intensity as u64 + 1,
        "every crash is counted as a restart"
    );

    // Backoff: restart k waits at least 20 ms * 2^(k-1), so the waits grow with each restart.
    // Only lower bounds: a slow machine can stretch any wait, never shorten it.
    let starts = starts.lock().clone();
    assert_eq!(
        starts.len(),
        intensity + 1,
        "the escalated crash is not restarted"
    );
    let waits: Vec<Duration> = crashes
        .iter()
        .zip(&starts[1..])
        .map(|(crash, start)| start.at - *crash)
        .collect();
    for (k, wait) in waits.iter().enumerate() {
        let backoff = Duration::from_millis(20 << k);
        assert!(
            *wait >= backoff,
            "restart {} waited {wait:?}, less than its backoff {backoff:?}",
            k + 1
        );
    }
    assert!(
        waits[intensity - 1] > waits[0],
        "the last restart in the window waited longer than the first: {waits:?}"
    );
    node.shutdown();
    journal.close();
}

/// Starts three counters in group 1 and one outside it, crashes one member, and returns the
/// starts of each and the node.
fn crash_one_group_member(strategy: RestartStrategy) -> (Vec<Vec<Start>>, Vec<Start>, Node) {
    let system = System::new();
    let result = system.block_on(async {
        let node = start_node(Arc::new(MemoryJournal::new()), strategy);
        let members: Vec<_> = (0..3).map(|w| spawn_counter(&node, w, Some(1))).collect();
        let (outsider, outsider_starts) = spawn_counter(&node, 10, None);
        for (addr, starts) in &members {
            wait_for_starts(starts, 1).await;
            addr.do_send(Submit(()));
            assert_eq!(inspect(addr).await, 1);
        }
        wait_for_starts(&outsider_starts, 1).await;
        members[1].0.do_send(Crash::default());
        wait_for_starts(&members[1].1, 2).await;
        if strategy == RestartStrategy::OneForAll {
            for (_, starts) in &members {
                wait_for_starts(starts, 2).await;
            }
        } else {
            // Give a wrongly propagated restart time to show.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (addr, _) in &members {
            assert_eq!(
                inspect(addr).await,
                1,
                "every member keeps its state across the restart"
            );
        }
        assert_eq!(inspect(&outsider).await, 0);
        let starts = members.iter().map(|(_, s)| s.lock().clone()).collect();
        let outsider_starts = outsider_starts.lock().clone();
        node.shutdown();
        (starts, outsider_starts, node)
    });
    result
}

#[test]
fn one_for_all_restarts_the_whole_group_of_a_crashed_member() {
    let (members, outsider, node) = crash_one_group_member(RestartStrategy::OneForAll);
    for (i, starts) in members.iter().enumerate() {
        assert_eq!(
            starts.len(),
            2,
            "member {i} started once and restarted once with the group"
        );
        assert_eq!(starts[1].applied, 1, "member {i} recovered its state");
    }
    assert_eq!(
        outsider.len(),
        1,
        "an actor outside the group is not restarted"
    );
    assert_eq!(
        restarts_of(&node, "wallet"),
        3,
        "three restarts: the crashed member and its two siblings"
    );
    assert!(node.escalations().is_empty());
}

#[test]
fn one_for_one_restarts_only_the_crashed_member() {
    let (members, outsider, node) = crash_one_group_member(RestartStrategy::OneForOne);
    let restarted: Vec<usize> = members.iter().map(|s| s.len() - 1).collect();
    assert_eq!(
        restarted,
        vec![0, 1, 0],
        "only the crashed member restarted"
    );
    assert_eq!(outsider.len(), 1);
    assert_eq!(restarts_of(&node, "wallet"), 1);
}
