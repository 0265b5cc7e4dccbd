//! The central bank (tier one): mints reserves to institutions, keeps their reserve accounts
//! (backing and free) and moves backing between institutions when value moves between their
//! coins.

mod state;

pub use state::{CentralBank, CentralBankCommand, CentralBankEvent, CentralBankSnapshot, Reserve};
