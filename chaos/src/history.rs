//! The history: every client operation, Jepsen-style — an `invoke` when the client hands it
//! to the cluster, then one completion: `ok` (committed), `fail` (refused or aborted: it did
//! not happen) or `info` (the client does not know: it timed out or the run ended).
//!
//! The history is serialized as JSON lines in a fixed field order; its SHA-256 is the run's
//! `history_digest`. Same seed and build ⇒ same bytes.

use serde::Serialize;
use specie_protocol::crypto::sha256;

/// What kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The client started the operation.
    Invoke,
    /// Committed.
    Ok,
    /// Refused or aborted: nothing happened.
    Fail,
    /// Unknown outcome.
    Info,
}

/// The operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Payer-initiated payment.
    Pay,
    /// Payee-initiated payment (merchant's collect request).
    Collect,
    /// Exchange of account money into coins.
    Exchange,
    /// A payment far above the payer's balance: must not commit.
    Insufficient,
    /// A re-spend of coins already spent: must not commit.
    DoubleSpend,
    /// An authorization forged with another key: must not commit.
    Forged,
    /// One of two concurrent payments of the same coin: at most one of the pair commits.
    Conflict,
}

impl OpKind {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Pay => "pay",
            OpKind::Collect => "collect",
            OpKind::Exchange => "exchange",
            OpKind::Insufficient => "insufficient",
            OpKind::DoubleSpend => "double_spend",
            OpKind::Forged => "forged",
            OpKind::Conflict => "conflict",
        }
    }

    /// Operations that must be refused.
    pub fn must_fail(self) -> bool {
        matches!(
            self,
            OpKind::Insufficient | OpKind::DoubleSpend | OpKind::Forged
        )
    }

    /// Honest operations, whose commit rate is part of the steady state.
    pub fn honest(self) -> bool {
        matches!(self, OpKind::Pay | OpKind::Collect)
    }
}

/// The arguments of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpValue {
    /// Paying wallet (the exchanging wallet for an exchange).
    pub payer: u64,
    /// Receiving wallet (the payer again for an exchange).
    pub payee: u64,
    /// Amount in fen.
    pub amount: u64,
    /// The other operation of a conflicting pair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair: Option<u64>,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Position in the history.
    pub index: u64,
    /// Simulated time, ms since the start of the run.
    pub time_ms: u64,
    /// The client (`wallet-3`, `forger`).
    pub process: String,
    /// invoke / ok / fail / info.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The operation.
    pub f: OpKind,
    /// Operation number (pairs an invoke with its completion).
    pub op: u64,
    /// Saga id, hex.
    pub saga: String,
    /// Arguments.
    pub value: OpValue,
    /// Why it failed, or why it is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The history of a run.
#[derive(Debug, Clone, Default)]
pub struct History {
    entries: Vec<Entry>,
}

impl History {
    /// Appends a record; its `index` is set to its position.
    pub fn push(&mut self, mut entry: Entry) {
        entry.index = self.entries.len() as u64;
        self.entries.push(entry);
    }

    /// The records in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// JSON lines, one record per line.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            out.push_str(&serde_json::to_string(e).expect("history entries serialize"));
            out.push('\n');
        }
        out
    }

    /// SHA-256 of [`History::to_jsonl`], hex.
    pub fn digest(&self) -> String {
        hex::encode(sha256(self.to_jsonl().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_covers_every_byte_of_the_history() {
        let entry = |time_ms, kind, error: Option<&str>| Entry {
            index: 0,
            time_ms,
            process: "wallet-1".into(),
            kind,
            f: OpKind::Pay,
            op: 0,
            saga: "00".into(),
            value: OpValue {
                payer: 1,
                payee: 2,
                amount: 300,
                pair: None,
            },
            error: error.map(str::to_string),
        };
        let mut a = History::default();
        a.push(entry(5, OpType::Invoke, None));
        let mut b = a.clone();
        assert_eq!(a.digest(), b.digest());
        a.push(entry(9, OpType::Ok, None));
        b.push(entry(9, OpType::Fail, Some("timeout")));
        assert_ne!(a.digest(), b.digest());
        assert!(a.to_jsonl().starts_with(
            "{\"index\":0,\"time_ms\":5,\"process\":\"wallet-1\",\"type\":\"invoke\",\"f\":\"pay\""
        ));
    }
}
