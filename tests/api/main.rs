//! Integration tests: one binary, every test starts its own application on port 0 with the
//! in-process vendor emulators and a manual clock (see `helpers::spawn_app`).

mod alerts;
mod appointments;
mod bad_input;
mod caldav_booking;
mod caldav_config;
mod call_flow;
mod commit_races;
mod config;
mod connect;
mod console;
mod console_browser;
mod crash;
mod crms;
mod fuzz_corpus;
mod graph_calendar;
mod helpers;
mod hostile_input;
mod identity;
mod inbound_hubspot;
mod isolation;
mod lifecycle;
mod match_eval;
mod mcp_http;
mod pending_bookings;
mod pilot;
mod pipedrive;
mod privacy;
mod reload;
mod salesforce;
mod sandbox_admin;
mod sandbox_crms;
mod secrets;
mod vapi;
mod writeback_durability;
mod writeback_rules;
