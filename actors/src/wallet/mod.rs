//! A wallet (client / terminal): holds coins and a key in its key store, pays, collects as a
//! merchant, receives, and exchanges account money into coins. Rules in [`state`].

#[cfg(test)]
mod sagas_tests;
mod state;
#[cfg(test)]
mod tests;

pub use state::{
    SagaProgress, Wallet, WalletCommand, WalletEvent, WalletLimits, WalletSnapshot, WalletTimer,
};
// Escrow pre-payment, wallet update and proximity negotiation.
pub use state::{
    EscrowCommand, EscrowOp, EscrowWalletEvent, NegotiateCommand, NegotiateOp, NegotiationEvent,
    UpdateCommand, UpdateEvent, UpdateOp, UpdateStep, AGREEMENTS_MAX,
};
// Merge, split and offline payment.
pub use state::{
    OfflineCommand, OfflineSettings, OfflineSnapshot, OfflineSource, SagaOp, SagaWalletEvent,
    CHAINS_HELD_MAX, DOUBLE_SPEND_REPORTS_MAX,
};
