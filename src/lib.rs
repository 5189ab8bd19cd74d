//! callside: the layer between a voice AI and a business's CRM, calendar and POS.
//!
//! A call's path through the crate (see ARCHITECTURE.md for the full map):
//!
//! - [`gateway`] accepts the per-call WebSocket (`/v1/calls/ws`), health and metrics routes.
//! - [`protocol`] owns the wire: JSON-RPC 2.0 / MCP messages and tool schemas.
//! - [`session`] owns one call's lifetime and dispatches tool calls to the domain.
//! - [`context`] assembles what the CRM knows about the caller, prefetched at ring time.
//! - [`identity`] normalizes phone numbers and decides who the caller is.
//! - [`schedule`] computes bookable slots (pure); [`booking`] holds and commits them.
//! - [`writeback`] turns a call's outcome into a durable plan and applies it to the CRM.
//! - [`connectors`] speak each vendor's API; [`sandbox`] emulates those vendors in-process.
//! - [`store`] keeps durable state (SQLite by default); [`config`] is the typed configuration.
//! - [`console`] is the operator console and its JSON API (sync status, re-sync, replay).
//! - [`alerts`] raises one alert per incident (error rate, backlog age, parked connection).
//! - [`audit`] is `callside audit`: seed 000's monthly checklist as a Markdown report.
//! - [`outcomes`] reads back what became of each booked appointment (attended, no-show, late).
//! - [`privacy`] is the retention sweep and `callside erase` (personal data callside keeps).
//! - [`reload`] swaps in a validated config without a restart (SIGHUP, `/v1/admin/reload`).
//! - [`clock`] is the injected source of domain time; [`observe`] holds metrics.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod alerts;
pub mod app;
pub mod audit;
pub mod booking;
pub mod clock;
pub mod config;
pub mod connections;
pub mod connectors;
pub mod console;
pub mod context;
pub mod failpoint;
pub mod fuzzing;
pub mod gateway;
pub mod identity;
pub mod inbound;
pub mod instance;
pub mod invalidation;
pub mod leader;
pub mod matching;
pub mod notify;
pub mod observe;
pub mod outcomes;
pub mod pilot;
pub mod privacy;
pub mod protocol;
pub mod reload;
pub mod sandbox;
pub mod schedule;
pub mod session;
pub mod store;
pub mod tenant;
pub mod writeback;
