//! etjanstekort-gateway: takes care providers' reports of cut eTjänstekort and drives the
//! deregistration through TjänsteID-service and KIV. See ARCHITECTURE.md for the map.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod app;
pub mod audit_record;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod connectors;
pub mod console;
pub mod crl;
pub mod ctl;
pub mod devcerts;
pub mod domain;
pub mod engine;
pub mod keys;
pub mod loadgen;
pub mod metrics;
pub mod privacy;
pub mod reload;
pub mod retention;
pub mod rpc;
pub mod secret;
pub mod server;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod verifier;
