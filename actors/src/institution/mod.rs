//! An operating institution (tier two, the patents' "currency management apparatus").
//!
//! It keeps its customers' accounts and the register of the coins it issued, answers balance
//! queries, exchanges account money into coins, and plays two roles in the pay saga: as the
//! coins' issuer it locks, retires or unlocks them; as the payee's institution it coordinates
//! the saga and issues the payee's coin. All rules are in [`state`].

mod state;
#[cfg(test)]
mod tests;

pub use state::{
    Account, CoinRecord, CoinState, ExchangeState, Institution, InstitutionCommand,
    InstitutionEvent, InstitutionLimits, InstitutionSnapshot, InstitutionTimer, PayStep,
    PaySummary,
};
