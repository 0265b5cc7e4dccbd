//! specie's actors and how they are put together.
//!
//! Layout:
//! - [`central_bank`], [`institution`], [`wallet`]: one folder per role, each a pure state
//!   machine (`state.rs`: message in, effects out) run by the runtime's generic supervised
//!   host. The rule for "can this coin be locked?" is `Institution::check_lock`.
//! - [`cluster`]: assembles a cluster from a config on one node (keys, actors, genesis
//!   funding) and gives clients a handle to submit operations, crash actors and take
//!   snapshots.
//! - [`audit`]: checks the money invariants of DESIGN.md §4 over a cluster snapshot.

pub mod audit;
pub mod central_bank;
pub mod cluster;
pub mod institution;
pub mod wallet;

pub use audit::{audit, AuditReport, Check};
pub use cluster::{Cluster, ClusterError, ClusterSnapshot};
