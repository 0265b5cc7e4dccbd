//! Reconcilers on a node: the platform's and some institutions', each a supervised host, with
//! what a driver needs — load a batch on either side, tell them which batches are closed,
//! collect finished batches, wait for a result, take snapshots, crash a reconciler.
//! `specie reconcile --demo` and the integration tests start the platform's and every
//! institution's on one node; a node of a multi-process cluster starts only the ones its
//! placement puts there ([`LocalReconcilers::start_on`]).

use crate::reconciler::hash::{Batch, BatchKey, ReconcileError};
use crate::reconciler::state::{
    BatchStatus, FinishedBatches, Progress, Reconciler, ReconcilerCommand, ReconcilerLimits,
    ReconcilerSnapshot, Retained,
};
use actix::prelude::*;
use specie_protocol::reconcile::BatchId;
use specie_protocol::{Address, InstitutionId, RECONCILIATION_PLATFORM};
use specie_runtime::{Crash, Host, Inspect, Node, Query, Submit};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often [`LocalReconcilers::wait`] looks at the reconcilers.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// The platform's reconciler (when it runs here) and institutions' reconcilers, on one node.
pub struct LocalReconcilers {
    platform: Option<Addr<Host<Reconciler>>>,
    institutions: BTreeMap<InstitutionId, Addr<Host<Reconciler>>>,
}

impl std::fmt::Debug for LocalReconcilers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalReconcilers")
            .field("platform", &self.platform.is_some())
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

const PLATFORM: Address = Address::Reconciler(RECONCILIATION_PLATFORM);

fn institution_address(i: InstitutionId) -> Address {
    Address::Reconciler(u64::from(i.0))
}

impl LocalReconcilers {
    /// Starts the platform's reconciler and one per institution on `node` (must run inside
    /// an actix system). Each recovers from the node's journal.
    pub fn start(
        node: &Node,
        institutions: impl IntoIterator<Item = InstitutionId>,
        limits: ReconcilerLimits,
    ) -> LocalReconcilers {
        LocalReconcilers::start_on(node, true, institutions, limits)
    }

    /// Starts the reconcilers a node of a cluster hosts: the platform's if `platform`, and
    /// those of `institutions` (must run inside an actix system). Each recovers from the
    /// node's journal.
    pub fn start_on(
        node: &Node,
        platform: bool,
        institutions: impl IntoIterator<Item = InstitutionId>,
        limits: ReconcilerLimits,
    ) -> LocalReconcilers {
        let platform = platform.then(|| node.spawn(0, None, move || Reconciler::platform(limits)));
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

    /// Whether the platform's reconciler runs here.
    pub fn hosts_platform(&self) -> bool {
        self.platform.is_some()
    }

    /// Whether institution `i`'s reconciler runs here.
    pub fn hosts_institution(&self, i: InstitutionId) -> bool {
        self.institutions.contains_key(&i)
    }

    /// The institutions whose reconcilers run here.
    pub fn institutions(&self) -> Vec<InstitutionId> {
        self.institutions.keys().copied().collect()
    }

    fn platform(&self) -> Result<&Addr<Host<Reconciler>>, ReconcileError> {
        self.platform.as_ref().ok_or(ReconcileError::NoPlatform)
    }

    fn institution(&self, i: InstitutionId) -> Result<&Addr<Host<Reconciler>>, ReconcileError> {
        self.institutions
            .get(&i)
            .ok_or(ReconcileError::NoReconciler { institution: i })
    }

    /// The platform's reconciler (`None`) or institution `i`'s, with its address.
    fn host(
        &self,
        institution: Option<InstitutionId>,
    ) -> Result<(&Addr<Host<Reconciler>>, Address), ReconcileError> {
        match institution {
            None => Ok((self.platform()?, PLATFORM)),
            Some(i) => Ok((self.institution(i)?, institution_address(i))),
        }
    }

    /// Hands the platform its records of a batch.
    pub async fn load_platform(&self, batch: Batch) -> Result<(), ReconcileError> {
        self.platform()?
            .send(Submit(ReconcilerCommand::LoadBatch(batch)))
            .await
            .map_err(unreachable(PLATFORM))
    }

    /// Hands an institution's reconciler the institution's records of a batch (the batch
    /// names the institution); it posts the batch hash.
    pub async fn load_institution(&self, batch: Batch) -> Result<(), ReconcileError> {
        let i = batch.key().institution;
        self.institution(i)?
            .send(Submit(ReconcilerCommand::LoadBatch(batch)))
            .await
            .map_err(unreachable(institution_address(i)))
    }

    /// Tells every reconciler here that the batches below `below` are closed on this node
    /// (their records, if any, were loaded before).
    pub async fn close_below(&self, below: BatchId) -> Result<(), ReconcileError> {
        let hosts = self.platform.iter().map(|h| (h, PLATFORM)).chain(
            self.institutions
                .iter()
                .map(|(i, h)| (h, institution_address(*i))),
        );
        for (host, address) in hosts {
            host.send(Submit(ReconcilerCommand::CloseBelow(below)))
                .await
                .map_err(unreachable(address))?;
        }
        Ok(())
    }

    /// The platform's snapshot.
    pub async fn platform_snapshot(&self) -> Result<ReconcilerSnapshot, ReconcileError> {
        self.platform()?
            .send(Inspect::default())
            .await
            .map_err(unreachable(PLATFORM))
    }

    /// An institution's snapshot.
    pub async fn institution_snapshot(
        &self,
        i: InstitutionId,
    ) -> Result<ReconcilerSnapshot, ReconcileError> {
        self.institution(i)?
            .send(Inspect::default())
            .await
            .map_err(unreachable(institution_address(i)))
    }

    async fn query<R: Send + 'static>(
        &self,
        institution: Option<InstitutionId>,
        f: impl FnOnce(&Reconciler) -> R + Send + 'static,
    ) -> Result<R, ReconcileError> {
        let (host, address) = self.host(institution)?;
        host.send(Query::<Reconciler, R>(Box::new(f)))
            .await
            .map_err(unreachable(address))
    }

    /// The batches the platform's reconciler (`None`) or institution `i`'s finished after
    /// `cursor` (see [`Reconciler::finished_since`]).
    pub async fn finished_since(
        &self,
        institution: Option<InstitutionId>,
        cursor: u64,
    ) -> Result<FinishedBatches, ReconcileError> {
        self.query(institution, move |r| r.finished_since(cursor))
            .await
    }

    /// One batch's status at the platform (`None`) or at institution `i`.
    pub async fn status(
        &self,
        institution: Option<InstitutionId>,
        key: BatchKey,
    ) -> Result<Option<BatchStatus>, ReconcileError> {
        self.query(institution, move |r| r.status_of(key)).await
    }

    /// The highest batch id a reconciler knows of, and how many batches it finished.
    pub async fn progress(
        &self,
        institution: Option<InstitutionId>,
    ) -> Result<(Option<BatchId>, u64), ReconcileError> {
        self.query(institution, |r| {
            (r.latest_batch(), r.retained().finished_total)
        })
        .await
    }

    /// How much a reconciler holds.
    pub async fn retained(
        &self,
        institution: Option<InstitutionId>,
    ) -> Result<Retained, ReconcileError> {
        self.query(institution, |r| r.retained()).await
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
            let platform = self.status(None, key).await?;
            let institution = self.status(Some(key.institution), key).await?;
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
        if let Ok((host, _)) = self.host(institution) {
            host.do_send(Crash::default());
        }
    }
}
