//! Reconcilers on a node: the platform's and some institutions', each a supervised host, with
//! what a driver needs — load a batch on either side, wait for its result, take snapshots,
//! crash a reconciler. `specie reconcile --demo` and the integration tests use it; a cluster
//! starts its reconcilers the same way.

use crate::reconciler::hash::{Batch, BatchKey, ReconcileError};
use crate::reconciler::state::{
    BatchStatus, Progress, Reconciler, ReconcilerCommand, ReconcilerLimits, ReconcilerSnapshot,
};
use actix::prelude::*;
use specie_protocol::{Address, InstitutionId};
use specie_runtime::{Crash, Host, Inspect, Node, Submit};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often [`LocalReconcilers::wait`] looks at the reconcilers.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// The platform's reconciler and institutions' reconcilers, running on one node.
pub struct LocalReconcilers {
    platform: Addr<Host<Reconciler>>,
    institutions: BTreeMap<InstitutionId, Addr<Host<Reconciler>>>,
}

impl std::fmt::Debug for LocalReconcilers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalReconcilers")
            .field(
                "institutions",
                &self.institutions.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn unreachable(actor: Address) -> impl Fn(MailboxError) -> ReconcileError {
    move |e| ReconcileError::Unreachable {
        actor,
        why: e.to_string(),
    }
}

impl LocalReconcilers {
    /// Starts the platform's reconciler and one per institution on `node` (must run inside
    /// an actix system). Each recovers from the node's journal.
    pub fn start(
        node: &Node,
        institutions: impl IntoIterator<Item = InstitutionId>,
        limits: ReconcilerLimits,
    ) -> LocalReconcilers {
        let platform = node.spawn(0, None, move || Reconciler::platform(limits));
        let institutions = institutions
            .into_iter()
            .enumerate()
            .map(|(n, i)| {
                let host = node.spawn(n + 1, None, move || Reconciler::institution(i, limits));
                (i, host)
            })
            .collect();
        LocalReconcilers {
            platform,
            institutions,
        }
    }

    fn institution(&self, i: InstitutionId) -> Result<&Addr<Host<Reconciler>>, ReconcileError> {
        self.institutions
            .get(&i)
            .ok_or(ReconcileError::NoReconciler { institution: i })
    }

    /// Hands the platform its records of a batch.
    pub async fn load_platform(&self, batch: Batch) -> Result<(), ReconcileError> {
        self.platform
            .send(Submit(ReconcilerCommand::LoadBatch(batch)))
            .await
            .map_err(unreachable(Address::Reconciler(
                specie_protocol::RECONCILIATION_PLATFORM,
            )))
    }

    /// Hands an institution's reconciler the institution's records of a batch (the batch
    /// names the institution); it posts the batch hash.
    pub async fn load_institution(&self, batch: Batch) -> Result<(), ReconcileError> {
        let i = batch.key().institution;
        self.institution(i)?
            .send(Submit(ReconcilerCommand::LoadBatch(batch)))
            .await
            .map_err(unreachable(Address::Reconciler(u64::from(i.0))))
    }

    /// The platform's snapshot.
    pub async fn platform_snapshot(&self) -> Result<ReconcilerSnapshot, ReconcileError> {
        self.platform
            .send(Inspect::default())
            .await
            .map_err(unreachable(Address::Reconciler(
                specie_protocol::RECONCILIATION_PLATFORM,
            )))
    }

    /// An institution's snapshot.
    pub async fn institution_snapshot(
        &self,
        i: InstitutionId,
    ) -> Result<ReconcilerSnapshot, ReconcileError> {
        self.institution(i)?
            .send(Inspect::default())
            .await
            .map_err(unreachable(Address::Reconciler(u64::from(i.0))))
    }

    /// Waits until the platform's report of `key` is acknowledged and the institution holds
    /// it, or `timeout`. Returns both sides' status of the batch.
    pub async fn wait(
        &self,
        key: BatchKey,
        timeout: Duration,
    ) -> Result<(BatchStatus, BatchStatus), ReconcileError> {
        let deadline = Instant::now() + timeout;
        loop {
            let platform = self.platform_snapshot().await?.batch(key).cloned();
            let institution = self
                .institution_snapshot(key.institution)
                .await?
                .batch(key)
                .cloned();
            match (platform, institution) {
                (Some(p), Some(i))
                    if p.progress == Progress::Done && i.progress == Progress::Done =>
                {
                    return Ok((p, i))
                }
                (p, i) if Instant::now() >= deadline => {
                    return Err(ReconcileError::Timeout {
                        batch: key,
                        platform: p.map(|s| s.progress),
                        institution: i.map(|s| s.progress),
                    })
                }
                _ => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// Crashes a reconciler; its supervisor restarts it from the journal.
    pub fn crash(&self, institution: Option<InstitutionId>) {
        match institution {
            None => self.platform.do_send(Crash::default()),
            Some(i) => {
                if let Some(host) = self.institutions.get(&i) {
                    host.do_send(Crash::default());
                }
            }
        }
    }
}
