//! The one integration-test binary: the real server over real mTLS, a real database.

mod admin;
mod api;
mod audit;
mod auth;
mod connections;
mod console;
mod ctl;
mod deploy;
mod fuzz;
mod helpers;
mod launcher;
mod limits;
mod loadgen;
mod privacy;
mod process;
mod real;
mod reload;
mod replicas;
mod retention;
mod revocation;
mod routine;
mod saga;
mod servers;
mod store;
mod telemetry;
mod traces;
