//! Write parity: a call's outcome becomes a durable plan of steps (persisted before `end_call`
//! is acknowledged), and a worker applies the steps to the CRM with idempotency keys, retries
//! with backoff, and dead letters.

pub mod conflicts;
pub mod mapping;
pub mod plan;
pub mod rules;
pub mod settings;
pub mod steps;
pub mod undo;
pub mod worker;

pub use plan::{CallOutcome, EndReason, build_plan, build_plan_with};
pub use worker::{Worker, WorkerHandle};
