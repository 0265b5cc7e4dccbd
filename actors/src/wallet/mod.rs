//! A wallet (client / terminal): holds coins and a key in its key store, pays, collects as a
//! merchant, receives, and exchanges account money into coins. Rules in [`state`].

mod state;
#[cfg(test)]
mod tests;

pub use state::{Wallet, WalletCommand, WalletEvent, WalletLimits, WalletSnapshot, WalletTimer};
