//! Write parity: a call's outcome becomes a durable plan of steps (persisted before `end_call`
//! is acknowledged), and a worker applies the steps to the CRM with idempotency keys, retries
//! with backoff, and dead letters.

pub mod plan;
pub mod worker;

pub use plan::{CallOutcome, EndReason, build_plan};
pub use worker::{Worker, WorkerHandle};
