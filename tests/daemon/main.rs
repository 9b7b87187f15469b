//! The daemon from outside, on the embedded default: the real binary (or the
//! application in process) behind a real socket, GitHub's API served by wiremock,
//! CodeCommit's by wiremock and SNS's signatures made here; moto where a test needs
//! AWS's side too. One test binary, so that the suite links the AWS SDK and octocrab
//! once for all of these.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod api;
mod cli;
mod codecommit;
mod console;
mod end_to_end;
mod faults_embedded;
mod github_history;
mod github_reporting;
mod github_webhooks;
mod hostile_input;
mod local_executor;
mod operations;
mod reconcile;
mod redeliver;
mod reload;
mod secrets;
mod tls;
