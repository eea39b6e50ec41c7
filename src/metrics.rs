//! Process counters. Names are constants here, in one place; labels never carry personal data.
//! Read in-process with `get` (the tests do); exporting them (Prometheus) is future work.

use std::sync::atomic::{AtomicU64, Ordering};

pub const STEPS_SUCCEEDED: &str = "etk_saga_steps_succeeded_total";
pub const STEPS_RETRIED: &str = "etk_saga_steps_retried_total";
pub const STEPS_FAILED: &str = "etk_saga_steps_failed_total";
pub const KIV_EARLY_REMOVALS: &str = "etk_kiv_early_removals_total";

static SUCCEEDED: AtomicU64 = AtomicU64::new(0);
static RETRIED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static EARLY: AtomicU64 = AtomicU64::new(0);

fn counter(name: &str) -> Option<&'static AtomicU64> {
    match name {
        STEPS_SUCCEEDED => Some(&SUCCEEDED),
        STEPS_RETRIED => Some(&RETRIED),
        STEPS_FAILED => Some(&FAILED),
        KIV_EARLY_REMOVALS => Some(&EARLY),
        _ => None,
    }
}

pub fn inc(name: &str) {
    if let Some(c) = counter(name) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn get(name: &str) -> u64 {
    counter(name).map_or(0, |c| c.load(Ordering::Relaxed))
}
