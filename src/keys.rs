//! Key rotation: `keys reencrypt` moves every case row to the current master key, in batches
//! committed one by one, so an interrupted run loses at most one batch of work and the next run
//! picks up what is left (it selects only rows not yet under the current key). Progress is
//! reported through a callback (the CLI draws a bar on a terminal).

use crate::storage::{CaseStore, StoreError};

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Rows moved to the current master key.
    pub moved: u64,
    /// Rows left as they were because they could not be read (logged by case id).
    pub failed: u64,
}

/// Moves every row still under another master key (or, from before m0006, under none) to the
/// current one, `batch` rows per transaction. `progress(done, total)` is called after every
/// batch; `total` is counted once at the start.
pub async fn reencrypt(
    store: &dyn CaseStore,
    batch: u32,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ReencryptReport, StoreError> {
    let total = store.reencrypt_pending().await?;
    let mut report = ReencryptReport::default();
    let mut after = None;
    progress(0, total);
    loop {
        let b = store.reencrypt_batch(after.as_ref(), batch.max(1)).await?;
        report.moved += b.moved;
        report.failed += b.failed;
        progress(report.moved + report.failed, total);
        match b.last {
            Some(last) => after = Some(last),
            None => return Ok(report),
        }
    }
}
