//! The chaos harness (being written).
