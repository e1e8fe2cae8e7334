//! The TTL purge, the same on every engine: short transactions of a bounded number of rows
//! (`StorageDb::purge_expired_chunk`, each run again on a conflict like any write), with a
//! pause between them, so that it can run from cron beside a busy server without long locks.

use std::time::Duration;

use crate::db::{PurgeStats, StorageDb};
use crate::error::ApiResult;
use crate::protocol::SyncTimestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeOptions {
    /// Rows deleted per transaction (records, and batch rows, each up to this).
    pub rows_per_chunk: u32,
    /// Pause between transactions, for the server's own writers.
    pub pause: Duration,
    /// Count, delete nothing.
    pub dry_run: bool,
}

impl Default for PurgeOptions {
    fn default() -> Self {
        PurgeOptions {
            rows_per_chunk: 1000,
            pause: Duration::ZERO,
            dry_run: false,
        }
    }
}

/// Purges what expired before the start of the run, chunk by chunk, calling `progress` with
/// the running totals after each chunk; returns the totals.
pub async fn purge_expired<D: StorageDb + ?Sized>(
    db: &D,
    options: &PurgeOptions,
    mut progress: impl FnMut(&PurgeStats) + Send,
) -> ApiResult<PurgeStats> {
    let now = SyncTimestamp::now();
    if options.dry_run {
        return db.count_expired(now).await;
    }
    let mut total = PurgeStats::default();
    loop {
        let chunk = db
            .purge_expired_chunk(now, options.rows_per_chunk.max(1))
            .await?;
        if chunk.is_empty() {
            return Ok(total);
        }
        total += chunk;
        progress(&total);
        if !options.pause.is_zero() {
            tokio::time::sleep(options.pause).await;
        }
    }
}
