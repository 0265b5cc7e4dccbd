//! An operating institution (tier two, the patents' "currency management apparatus").
//!
//! It keeps its customers' accounts and the register of the coins it issued, answers balance
//! queries, exchanges account money into coins, and plays two roles in the pay saga: as the
//! coins' issuer it locks, retires or unlocks them; as the payee's institution it coordinates
//! the saga and issues the payee's coin. All rules are in [`state`].

#[cfg(test)]
mod merge_tests;
#[cfg(test)]
mod offline_tests;
#[cfg(test)]
mod sagas_fixture;
mod state;
#[cfg(test)]
mod tests;

pub use state::{
    Account, CoinRecord, CoinState, ExchangeState, Institution, InstitutionCommand,
    InstitutionEvent, InstitutionLimits, InstitutionSnapshot, InstitutionTimer, PayStep,
    PaySummary,
};
// Escrow pre-payment (issuer and merchant's institution) and the wallet update platform.
pub use state::{
    AppliedSettlement, EscrowIssuerEvent, HoldState, HoldSummary, IssuerEscrows, PayoutSummary,
    Platform, PlatformEvent, WithdrawState, WithdrawalSummary,
};
// Merge, split and offline payment (coordinator, issuer and ledger).
pub use state::{
    merge_backing_key, settlement_saga, ClaimState, ClaimSummary, LedgerSummary, MergeEvent,
    MergeStep, MergeSummary, OfflineEvent, RedeemStep, RedemptionSummary, SagaBookSnapshot,
    SplitSummary, SyncSummary,
};
