//! An escrow contract (the patents' pre-payment deposit and verification smart contracts): one
//! actor per contract, addressed `Address::Escrow(id)`, hosted beside the institution that
//! issued the frozen coins (the id's top 16 bits; same arbiter and supervision group) and
//! started on its first message. It freezes the payer's coins for a merchant with a cap and an
//! expiry, verifies and pays each claim, and refunds what remains on release or expiry. Rules
//! in [`state`]; the issuer's and the merchant's institution's side in the institution.

pub(crate) mod audit;
mod state;
#[cfg(test)]
mod tests;

pub use state::{
    closure_saga, Closure, Escrow, EscrowEvent, EscrowLimits, EscrowSnapshot, EscrowStatus,
    EscrowTimer, PayoutState, RequestKind, SettlementRecord, ESCROW_REQUESTS_MAX,
    ESCROW_TTL_MAX_MS,
};
