//! Integration tests: one binary, every test starts its own application on port 0 with the
//! in-process vendor emulators and a manual clock (see `helpers::spawn_app`).

mod appointments;
mod bad_input;
mod caldav_booking;
mod call_flow;
mod config;
mod connect;
mod graph_calendar;
mod helpers;
mod lifecycle;
mod pending_bookings;
mod mcp_http;
mod vapi;
