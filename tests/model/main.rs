//! The contracts every backend keeps (queues, journals, ledgers: embedded on real
//! SQLite files, AWS on moto) and the models the lanes and the embedded queue are held
//! to by property tests.

#[path = "../common/mod.rs"]
mod common;
#[macro_use]
mod queue_contract;

mod journal_contract;
mod lane_model;
mod ledger_contract;
mod queue_embedded;
mod queue_model;
mod queue_sqs;
