//! The load generator's parts (`src/bin/loadgen.rs` is the command): valid unique reports,
//! latency summaries, a process's CPU time from `/proc`, and the bare gRPC echo server measured
//! beside the gateway. Nothing here runs inside the gateway.

pub mod cpu;
pub mod echo;
pub mod reports;
pub mod stats;
