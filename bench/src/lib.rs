//! specie's load benchmarks: `specie bench`.
//!
//! Layout:
//! - [`profile`]: bench profiles (`config/bench/NAME.toml`), parsed then validated; the
//!   cluster config is the base config merged with the profile's overrides.
//! - [`arrival`]: the open loop's Poisson arrival process and intended send times (latency is
//!   measured from the intended time: no coordinated omission).
//! - [`workload`]: what to offer next — pay across and within institutions, collect requests,
//!   hot wallets (contention), planted invalid operations — with a model of the balances.
//! - [`driver`]: offers operations to a running cluster in an open or closed loop and
//!   collects outcomes per kind, reason and interval ([`driver::Tracker`] is the pure
//!   bookkeeping).
//! - [`peak`]: the peak finder (ramp, bisect, confirm at ±margin with repeats).
//! - [`histogram`]: hdrhistogram latencies, their summaries and `.hgrm` files.
//! - [`stats`]: what one run collects.
//! - [`floor`]: the crypto floor, Ed25519 verifications per second on this machine.
//! - [`sys`]: CPU time and resident memory from `/proc/self`.
//! - [`plot`]: the SVG of throughput and latency over time and the latency distribution.
//! - [`progress`]: the progress bar (quiet when stderr is not a terminal).
//! - [`bench`]: one bench from start to end; [`report`]: its verdict, text, JSON and folder.
//!
//! The bench drives the same in-process cluster as `specie run` (`Cluster::start_with`),
//! durable or in memory. `specie bench --cluster` (the binary's `bench_cluster`) drives a
//! cluster of `specie node` processes through their ingress with the same [`driver::Tracker`].

// The report's JSON document is one `json!` literal, deeper than the default limit.
#![recursion_limit = "256"]

pub mod arrival;
pub mod bench;
pub mod driver;
pub mod floor;
pub mod histogram;
pub mod peak;
pub mod plot;
pub mod profile;
pub mod progress;
pub mod report;
pub mod stats;
pub mod sys;
pub mod workload;

pub use bench::{run, BenchError, BenchMode, Options};
pub use profile::{Profile, ProfileError};
pub use report::BenchReport;
