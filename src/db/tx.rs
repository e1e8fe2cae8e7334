//! The contract between the units of work (`units`) and an engine: the statements a unit of
//! work runs inside one transaction, as two traits every engine implements once (`ReadTx` for
//! any transaction, `WriteTx` for a write transaction), and `Backend`, how an engine runs a
//! unit of work (which transaction, which isolation, retries and deadlines). The rules and the
//! order of the steps are in `units`; an implementation only says how to read and write rows.
//!
//! Every statement runs inside the transaction the engine opened, or on its own for a read that
//! needs no snapshot (`ReadOp::needs_snapshot`); none commits.

use std::collections::HashMap;
use std::future::Future;

use crate::db::rules::Staged;
use crate::db::units::{ReadOp, ReadOut, WriteOp, WriteOut};
use crate::db::{PoolState, PurgeStats, UserId};
use crate::error::ApiResult;
use crate::protocol::{BsoQuery, BsoUpdate, StoredBso, SyncTimestamp};

/// A write unit of work once the user is locked: whose data, which collection, its T.
#[derive(Debug, Clone)]
pub struct Scope<U> {
    pub user: U,
    /// The written collection's id (-1 when the write is for the whole storage).
    pub cid: i32,
    /// The timestamp of this write.
    pub t: SyncTimestamp,
    /// The collection's timestamp before this write (0 when it has none).
    pub collection_ts: SyncTimestamp,
}

/// What `WriteTx::write_rows` writes over a row that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Every column: the rows are whole records (merged with what was read before).
    Whole,
    /// The payload and `modified`; the sortindex where the record has one; the expiry when
    /// `expiry`. The rest stays the row's own, so a write whose records all bring a payload
    /// needs no read first (`units::apply_updates`). A new row takes the record's values.
    Given { expiry: bool },
}

/// The statements of a read, on any transaction (a read-only snapshot or a write).
pub trait ReadTx: Send {
    /// How this engine keys a user's rows.
    type User: Send + Sync;
    /// A batch as this engine's tables key it.
    type Batch: Send + Sync;

    /// The user's key; an error when the token cannot name a user here.
    fn user_key(user: &UserId) -> ApiResult<Self::User>;
    /// A batch key as the client sees it.
    fn encode_batch(batch: &Self::Batch) -> String;

    fn collection_id(&mut self, name: &str) -> impl Future<Output = ApiResult<Option<i32>>> + Send;
    fn collection_names(
        &mut self,
        ids: Vec<i32>,
    ) -> impl Future<Output = ApiResult<HashMap<i32, String>>> + Send;
    /// The collection's timestamp, `None` when it has no row (placeholders read as 0 or less).
    fn collection_ts(
        &mut self,
        user: &Self::User,
        cid: i32,
    ) -> impl Future<Output = ApiResult<Option<SyncTimestamp>>> + Send;
    /// The latest timestamp of all the user's rows (the tombstone included).
    fn storage_ts(
        &mut self,
        user: &Self::User,
    ) -> impl Future<Output = ApiResult<SyncTimestamp>> + Send;
    /// Every collection row of the user as (collection id, ms), placeholders and the
    /// tombstone included.
    fn user_collections(
        &mut self,
        user: &Self::User,
    ) -> impl Future<Output = ApiResult<Vec<(i32, i64)>>> + Send;
    /// Live records per collection.
    fn record_counts(
        &mut self,
        user: &Self::User,
        now: SyncTimestamp,
    ) -> impl Future<Output = ApiResult<Vec<(i32, i64)>>> + Send;
    /// Payload bytes of live records per collection.
    fn record_bytes(
        &mut self,
        user: &Self::User,
        now: SyncTimestamp,
    ) -> impl Future<Output = ApiResult<Vec<(i32, i64)>>> + Send;
    fn get_live_bso(
        &mut self,
        user: &Self::User,
        cid: i32,
        id: &str,
        now: SyncTimestamp,
    ) -> impl Future<Output = ApiResult<Option<StoredBso>>> + Send;
    /// Live records matching `q` in its order, from `q.offset` on, at most `limit + 1` (the
    /// extra one says whether there is a next page); ids and `modified` only unless `q.full`.
    /// With them, the collection's timestamp as the same statement saw it (`None` from an
    /// engine that reads on one snapshot anyway), so a listing read outside a transaction
    /// still reports a timestamp no older than any record it holds.
    fn list_bsos(
        &mut self,
        user: &Self::User,
        cid: i32,
        q: &BsoQuery,
        limit: u32,
        now: SyncTimestamp,
    ) -> impl Future<Output = ApiResult<(Vec<StoredBso>, Option<SyncTimestamp>)>> + Send;
    /// The rows for `ids`, expired included (writes overwrite them).
    fn load_existing(
        &mut self,
        user: &Self::User,
        cid: i32,
        ids: &[String],
    ) -> impl Future<Output = ApiResult<HashMap<String, StoredBso>>> + Send;
    /// The batch if it exists for this user and collection and has not expired (400 else).
    fn find_batch(
        &mut self,
        scope: &Scope<Self::User>,
        id: &str,
    ) -> impl Future<Output = ApiResult<Self::Batch>> + Send;
    /// Staged records: those with the given ids, or the next `COMMIT_CHUNK` in id order.
    fn staged_items(
        &mut self,
        scope: &Scope<Self::User>,
        batch: &Self::Batch,
        which: Staged<'_>,
    ) -> impl Future<Output = ApiResult<Vec<BsoUpdate>>> + Send;
    /// How many records and payload bytes the batch holds.
    fn staged_totals(
        &mut self,
        scope: &Scope<Self::User>,
        batch: &Self::Batch,
    ) -> impl Future<Output = ApiResult<(i64, i64)>> + Send;
    fn ping(&mut self) -> impl Future<Output = ApiResult<()>> + Send;
    /// Expired records and expired batches of every user (`purge-ttl --dry-run`).
    fn expired_counts(
        &mut self,
        now: SyncTimestamp,
    ) -> impl Future<Output = ApiResult<PurgeStats>> + Send;
    /// Users with any collection row, in uid order after `after`, at most `limit` (`transfer`).
    fn users_after(
        &mut self,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = ApiResult<Vec<u64>>> + Send;
    /// The collection's rows, expired included, in id order after `after`, at most `limit`
    /// (`transfer`).
    fn rows_after(
        &mut self,
        user: &Self::User,
        cid: i32,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = ApiResult<Vec<StoredBso>>> + Send;
}

/// The statements of a write transaction.
pub trait WriteTx: ReadTx {
    /// Makes every later write of this user wait until this transaction ends (on engines
    /// whose transaction does not already hold such a lock), so a user's writes serialize.
    fn lock_user(&mut self, user: &Self::User) -> impl Future<Output = ApiResult<()>> + Send;
    /// Custom names get the next id after the highest (101 upwards).
    fn get_or_create_collection_id(
        &mut self,
        name: &str,
    ) -> impl Future<Output = ApiResult<i32>> + Send;
    /// Creates the collection's invisible placeholder row (records and batches need it) and
    /// holds it for this transaction; returns its timestamp as a read would see it.
    fn add_collection(
        &mut self,
        user: &Self::User,
        cid: i32,
    ) -> impl Future<Output = ApiResult<SyncTimestamp>> + Send;
    /// Sets the collection's timestamp to `t`, creating its row when absent.
    fn touch_collection(
        &mut self,
        user: &Self::User,
        cid: i32,
        t: SyncTimestamp,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// Whether `write_rows` takes `Overwrite::Given` (else only `Whole`).
    const OVERWRITES_GIVEN: bool = false;
    /// Writes records over the rows with their ids, as `overwrite` says.
    fn write_rows(
        &mut self,
        user: &Self::User,
        cid: i32,
        rows: &[StoredBso],
        overwrite: Overwrite,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    fn delete_rows(
        &mut self,
        user: &Self::User,
        cid: i32,
        ids: &[String],
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// The collection's row, records and batches.
    fn delete_collection_rows(
        &mut self,
        user: &Self::User,
        cid: i32,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// Every row of the user: collections (the tombstone too), records, batches.
    fn delete_user_rows(&mut self, user: &Self::User)
    -> impl Future<Output = ApiResult<()>> + Send;
    /// The collection's quota counters (live records and their bytes).
    fn refresh_counters(
        &mut self,
        scope: &Scope<Self::User>,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// A new batch, with nothing staged (`units::stage` counts on it).
    fn create_batch(
        &mut self,
        scope: &Scope<Self::User>,
    ) -> impl Future<Output = ApiResult<Self::Batch>> + Send;
    /// Whether `put_staged` merges each record with the staged row of its id itself (the
    /// fields the record leaves out kept, as `BsoUpdate::merged_with`): then a batch POST
    /// stages without reading the staged rows first.
    const MERGES_STAGED: bool = false;
    /// Stages these records: merged with the staged rows of their ids by the engine
    /// (`MERGES_STAGED`), else replacing them (the caller merged them first).
    fn put_staged(
        &mut self,
        scope: &Scope<Self::User>,
        batch: &Self::Batch,
        updates: &[BsoUpdate],
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// The batch and its staged records.
    fn drop_batch(
        &mut self,
        scope: &Scope<Self::User>,
        batch: &Self::Batch,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// Waits, holding the user's lock (a write waiting out the clock's tick).
    fn pause(&mut self, ms: u64) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(std::time::Duration::from_millis(ms))
    }
}

/// How an engine runs units of work: a read on one snapshot when `ReadOp::needs_snapshot` (or
/// the unit answered `ReadOut::NeedsSnapshot`), else statement by statement without a
/// transaction; a write in one transaction that commits before the answer (run again on
/// `DbFault::Conflict` as `retry` says), each on a task of its own within the request deadline.
/// `StorageDb` is implemented once for every `Backend` (`units`).
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn read(&self, op: ReadOp) -> ApiResult<ReadOut>;
    async fn write(&self, op: WriteOp) -> ApiResult<WriteOut>;
    /// One short transaction of the TTL purge (`StorageDb::purge_expired_chunk`).
    async fn purge_expired_chunk(&self, now: SyncTimestamp, max_rows: u32)
    -> ApiResult<PurgeStats>;
    fn pool_state(&self) -> PoolState;
}
