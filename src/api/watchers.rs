//! The open `WatchDeregistration` streams: counted per principal, so that one caller cannot
//! hold an unbounded number of them (each is a task and a broadcast subscription), and in
//! total for the `etk_watch_streams_open` gauge. A stream holds a [`WatchPermit`] for exactly as
//! long as its task lives; dropping the permit is what frees its place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::HsaId;
use crate::metrics::Metrics;

/// The registry of open watch streams. One per server.
#[derive(Debug)]
pub struct Watchers {
    per_principal: usize,
    open: Mutex<HashMap<HsaId, usize>>,
    metrics: Option<Arc<Metrics>>,
}

impl Watchers {
    /// At most `per_principal` open streams per principal.
    pub fn new(per_principal: usize) -> Self {
        Self {
            per_principal,
            open: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// Counts open streams in `etk_watch_streams_open`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A place for one more stream of `principal`, or `None` when it has its maximum open.
    pub fn try_open(self: &Arc<Self>, principal: &HsaId) -> Option<WatchPermit> {
        {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let n = open.entry(principal.clone()).or_default();
            if *n >= self.per_principal {
                return None;
            }
            *n += 1;
        }
        if let Some(m) = &self.metrics {
            m.watch_streams_add(1);
        }
        Some(WatchPermit {
            watchers: self.clone(),
            principal: principal.clone(),
        })
    }

    /// Streams open now, over all principals.
    pub fn open_total(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.values().sum()
    }

    fn close(&self, principal: &HsaId) {
        {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = open.get_mut(principal) {
                *n = n.saturating_sub(1);
                // No entry for a principal without streams: the map is as large as the
                // number of principals watching now.
                if *n == 0 {
                    open.remove(principal);
                }
            }
        }
        if let Some(m) = &self.metrics {
            m.watch_streams_add(-1);
        }
    }
}

/// One open stream's place; freed when dropped.
#[derive(Debug)]
pub struct WatchPermit {
    watchers: Arc<Watchers>,
    principal: HsaId,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        self.watchers.close(&self.principal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hsa(n: u32) -> HsaId {
        HsaId::parse(&format!("SE2321000131-E{n:012}")).expect("valid HSA-id")
    }

    #[test]
    fn each_principal_has_its_own_cap_and_a_dropped_permit_frees_its_place() {
        let w = Arc::new(Watchers::new(2));
        let a1 = w.try_open(&hsa(1)).expect("first");
        let a2 = w.try_open(&hsa(1)).expect("second");
        assert!(w.try_open(&hsa(1)).is_none(), "the third is over the cap");
        let b = w
            .try_open(&hsa(2))
            .expect("another principal is not affected");
        assert_eq!(w.open_total(), 3);
        drop(a1);
        let a3 = w.try_open(&hsa(1)).expect("a place was freed");
        drop((a2, a3, b));
        assert_eq!(w.open_total(), 0);
        assert!(
            w.open.lock().expect("lock").is_empty(),
            "no entry is kept for principals without streams"
        );
    }

    #[test]
    fn the_gauge_follows_the_open_streams() {
        let metrics = Arc::new(Metrics::new());
        let w = Arc::new(Watchers::new(5).with_metrics(metrics.clone()));
        let permits: Vec<_> = (0..3).filter_map(|_| w.try_open(&hsa(1))).collect();
        assert!(
            metrics.render().contains("etk_watch_streams_open 3"),
            "{}",
            metrics.render()
        );
        drop(permits);
        assert!(metrics.render().contains("etk_watch_streams_open 0"));
    }
}
