//! Deliberately wrong behaviours of the runtime itself, for the chaos harness to catch against
//! a live cluster (cargo feature `planted-bugs`, off by default; never in a production build).
//!
//! `early-ack`: a host releases a step's envelopes and notices (a client's acknowledgement)
//! before the journal says its entries are durable, so a process crash can forget what it
//! already announced. `specie node --planted-bug early-ack` switches it on for the node's
//! process; the live chaos run must then catch an acknowledged operation that is missing
//! after a restart.

use std::sync::atomic::{AtomicBool, Ordering};

static EARLY_ACK: AtomicBool = AtomicBool::new(false);

/// Switches the planted bug `early-ack` on or off for the whole process.
pub fn set_early_ack(on: bool) {
    EARLY_ACK.store(on, Ordering::SeqCst);
}

/// Whether the planted bug `early-ack` is on.
pub fn early_ack() -> bool {
    EARLY_ACK.load(Ordering::Relaxed)
}
