//! gitdispatch: turns Git events into deployment-pipeline executions.
//!
//! The modules follow the data: `source` (authenticate and decode a delivery) →
//! `plan` (pure: event to execution requests) → `queue` (durable) → `worker` →
//! `executor` → `report` (tell the source what happened). Every planned start gets on the
//! queue through `admission`, and `lanes` owns the states of a lane's jobs. `server`
//! holds the HTTP routes, `daemon` runs the long-lived parts and `cli` the one-shot
//! commands. See ARCHITECTURE.md.

pub mod admission;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dynamo;
pub mod error;
pub mod event;
pub mod execution;
pub mod executor;
pub mod github;
pub mod job;
pub mod journal;
pub mod lanes;
pub mod ledger;
pub mod operator;
pub mod pattern;
pub mod plan;
pub mod process;
pub mod queue;
pub mod reconcile;
pub mod report;
pub mod retry;
pub mod runtime;
pub mod server;
pub mod source;
pub mod sqlite;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod worker;
