//! specie's actors and how they are put together.
//!
//! Layout:
//! - [`central_bank`], [`institution`], [`wallet`]: one folder per role, each a pure state
//!   machine (`state.rs`: message in, effects out) run by the runtime's generic supervised
//!   host. The rule for "can this coin be locked?" is `Institution::check_lock`.
//! - [`cluster`]: assembles a cluster from a config on one node (keys, actors, genesis
//!   funding) and gives clients a handle to submit operations, crash actors and take
//!   snapshots.
//! - [`blueprint`]: keys, limits and actor factories that follow from a config and a seed.
//! - [`compact`]: ordered maps and sets that cost little when they hold one or two entries,
//!   for the per-wallet state a million wallets each keep.
//! - [`data_dir`]: a node's data directory (manifest and durable journal).
//! - [`audit`]: checks the money invariants of DESIGN.md §4 over a cluster snapshot.
//! - `planted` (feature `planted-bugs` only): deliberately wrong behaviours the chaos
//!   harness must catch, switched on at run time.
//! - [`escrow`]: escrow pre-payment, one actor per contract (deposit, verified claims,
//!   refund on release or expiry), hosted beside the institution that issued the frozen coins.
//! - [`reconciler`]: reconciliation of transaction records between institutions and the
//!   reconciliation platform over a hash chain (record → shard → batch hashes, drill-down).

pub mod audit;
pub mod blueprint;
pub mod central_bank;
pub mod cluster;
pub mod compact;
pub mod data_dir;
pub mod escrow;
pub mod ingress;
pub mod institution;
pub mod member;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod reconciler;
pub mod wallet;

pub use audit::{audit, AuditReport, Check};
pub use blueprint::Blueprint;
pub use cluster::{Cluster, ClusterError, ClusterSnapshot, Storage};
pub use data_dir::DataDir;
