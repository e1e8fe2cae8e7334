//! The Google Cloud Spanner backend (SPEC 5.3): syncstorage-rs's interleaved schema through the
//! pure-Rust gRPC client `gcloud-spanner`. Reads run in strong read-only transactions; a write
//! is one read-write transaction (Spanner's own locks serialize writers), run again when
//! Spanner aborts it, and answered with 503 + Retry-After when it keeps being aborted.

mod ddl;
mod statements;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gcloud_gax::conn::Environment;
use gcloud_gax::grpc::{Code, Status};
use gcloud_gax::retry::TryAs;
use gcloud_spanner::client::{Client, ClientConfig};
use gcloud_spanner::statement::Statement;

use super::tx::Backend;
use super::units::{self, ReadOp, ReadOut, WriteOp, WriteOut};
use super::{PoolState, PurgeStats, StorageConfig};
use crate::error::{ApiError, ApiResult};
use crate::protocol::SyncTimestamp;
use statements::SpannerTx;

pub use ddl::migrate;

/// Spanner commits at most 80,000 mutations; a record is eight cells, so a batch commit stays
/// under the limit at upstream's 9,984 records (and 100 MB of payload).
pub const MAX_TOTAL_RECORDS: u32 = 9_984;
pub const MAX_TOTAL_BYTES: u32 = 100_000_000;

use crate::db::fault::DbFault;
use crate::db::retry::SPANNER as SPANNER_RETRIES;

pub fn is_spanner_url(url: &str) -> bool {
    url.starts_with("spanner://")
}

/// `spanner://projects/P/instances/I/databases/D` → `projects/P/instances/I/databases/D`.
pub fn database_path(url: &str) -> Result<String, String> {
    let path = url
        .strip_prefix("spanner://")
        .unwrap_or(url)
        .trim_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    let valid = parts.len() == 6
        && parts[0] == "projects"
        && parts[2] == "instances"
        && parts[4] == "databases"
        && parts.iter().all(|p| !p.is_empty());
    if valid {
        Ok(path.to_owned())
    } else {
        Err(format!(
            "syncstorage.database_url: {url:?} is not spanner://projects/P/instances/I/databases/D"
        ))
    }
}

/// How to reach Spanner: the emulator at `emulator_host`, else Google Cloud with the usual
/// application-default credentials.
#[derive(Debug, Clone, Default)]
pub struct SpannerSettings {
    pub emulator_host: Option<String>,
    pub max_sessions: u32,
    /// Seconds a request waits for Spanner (a session, a connection, an answer).
    pub timeout_secs: u32,
    pub run_migrations: bool,
}

/// `syncstorage.spanner_emulator_host`, else the standard SPANNER_EMULATOR_HOST variable.
fn emulator_host(settings: &SpannerSettings) -> Option<String> {
    settings
        .emulator_host
        .clone()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::env::var("SPANNER_EMULATOR_HOST")
                .ok()
                .filter(|h| !h.is_empty())
        })
}

/// rustls needs one process-wide crypto provider for Google's TLS endpoints.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The boundary of Spanner: a gRPC status becomes a `DbFault` by its code.
pub(crate) fn status_error(status: Status) -> ApiError {
    let fault = match status.code() {
        Code::Aborted => DbFault::Conflict,
        Code::Unavailable => DbFault::Unavailable,
        // Cancelled: our side's RPC timeout fired (Spanner did not answer).
        Code::DeadlineExceeded | Code::Cancelled => DbFault::Deadline,
        Code::ResourceExhausted => DbFault::Busy,
        Code::AlreadyExists => DbFault::Integrity,
        _ => DbFault::Other,
    };
    fault.error(format!("spanner: {status}"))
}

fn client_error(e: gcloud_spanner::client::Error) -> ApiError {
    match e {
        gcloud_spanner::client::Error::GRPC(status) => status_error(status),
        other => DbFault::Unavailable.error(format!("spanner unavailable: {other}")),
    }
}

/// The error type a read-write transaction ends with; `try_as` is None so that a failed unit
/// of work is always rolled back.
struct TxError(ApiError);

impl From<Status> for TxError {
    fn from(status: Status) -> Self {
        TxError(status_error(status))
    }
}

impl TryAs<Status> for TxError {
    fn try_as(&self) -> Option<&Status> {
        None
    }
}

pub struct SpannerStorage {
    client: Client,
    config: Arc<StorageConfig>,
    max_sessions: u32,
    /// A unit of work that takes longer (Spanner unreachable) is answered with 503: twice
    /// the connection timeout, so a big batch commit still has room.
    deadline: Duration,
}

impl SpannerStorage {
    pub async fn open(
        url: &str,
        settings: &SpannerSettings,
        config: StorageConfig,
    ) -> Result<Self, String> {
        install_crypto_provider();
        let database = database_path(url)?;
        if settings.run_migrations {
            migrate(&database, emulator_host(settings)).await?;
        }
        let mut client_config = ClientConfig::default();
        let max = settings.max_sessions.max(1) as usize;
        client_config.session_config.max_opened = max;
        client_config.session_config.min_opened = max.min(4);
        client_config.session_config.max_idle = max;
        let timeout = Duration::from_secs(settings.timeout_secs.max(1).into());
        client_config.session_config.session_get_timeout = timeout;
        client_config.channel_config.timeout = timeout;
        client_config.channel_config.connect_timeout = timeout;
        client_config.channel_config.num_channels = max.div_ceil(100).max(1);
        client_config = match emulator_host(settings) {
            Some(host) => ClientConfig {
                environment: Environment::Emulator(host),
                ..client_config
            },
            None => client_config
                .with_auth()
                .await
                .map_err(|e| format!("spanner credentials: {e}"))?,
        };
        let client = Client::new(database, client_config)
            .await
            .map_err(|e| format!("syncstorage.database_url: cannot reach spanner: {e}"))?;
        Ok(SpannerStorage {
            client,
            config: Arc::new(config),
            max_sessions: max as u32,
            deadline: timeout * 2,
        })
    }
}

/// What a unit of work needs, owned, so that it can run on a task of its own.
#[derive(Clone)]
struct Handle {
    client: Client,
    config: Arc<StorageConfig>,
    deadline: Duration,
}

pub(crate) fn timed_out() -> ApiError {
    DbFault::Deadline.error("spanner did not answer in time")
}

impl SpannerStorage {
    fn handle(&self) -> Handle {
        Handle {
            client: self.client.clone(),
            config: self.config.clone(),
            deadline: self.deadline,
        }
    }
}

/// Units of work run detached: a transaction is always committed or rolled back, even when
/// the client goes away (an abandoned one would hold its locks until Spanner expires it).
/// Every step is bounded by the deadline: an unreachable Spanner is a 503, never a hang.
#[async_trait]
impl Backend for SpannerStorage {
    /// A strong read-only transaction (it holds no locks). A listing's pace is the client's,
    /// so only its statements are bounded, not the whole.
    async fn read(&self, op: ReadOp) -> ApiResult<ReadOut> {
        let this = self.handle();
        let whole = if op.is_stream() {
            Duration::MAX
        } else {
            this.deadline
        };
        crate::db::pooled::detached(whole, async move {
            let mut ro = tokio::time::timeout(this.deadline, this.client.read_only_transaction())
                .await
                .map_err(|_| timed_out())?
                .map_err(client_error)?;
            let mut tx = SpannerTx {
                tx: &mut ro,
                step: this.deadline,
            };
            units::read(&mut tx, &this.config, &op, true).await
        })
        .await
    }

    /// One read-write transaction, run again when Spanner aborted it (it was rolled back
    /// whole), as `retry::SPANNER` says.
    async fn write(&self, op: WriteOp) -> ApiResult<WriteOut> {
        let this = self.handle();
        crate::db::pooled::detached(Duration::MAX, async move {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut rw =
                    tokio::time::timeout(this.deadline, this.client.begin_read_write_transaction())
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(client_error)?;
                let body = async {
                    let mut tx = SpannerTx {
                        tx: &mut rw,
                        step: this.deadline,
                    };
                    units::write(&mut tx, &this.config, &op)
                        .await
                        .map_err(TxError)
                };
                // Past the deadline the body is abandoned and the transaction rolled back
                // (never left open holding its locks); the commit itself is bounded too.
                let result: Result<_, TxError> = tokio::time::timeout(this.deadline, body)
                    .await
                    .unwrap_or_else(|_| Err(TxError(timed_out())));
                let ended = tokio::time::timeout(this.deadline, rw.end(result, None))
                    .await
                    .unwrap_or_else(|_| Err(TxError(timed_out())));
                match ended {
                    Ok((_, value)) => break Ok(value),
                    Err(TxError(e)) => match SPANNER_RETRIES.next_delay(attempt, &e.kind) {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => break Err(e),
                    },
                }
            }
        })
        .await
    }

    /// Spanner's row deletion policies purge expired rows by themselves; this does it now,
    /// with partitioned DML, which Spanner itself runs in many small transactions (no
    /// transaction's mutation limit applies, and no long lock is held), so one step removes
    /// all and the next finds nothing. `max_rows` does not apply.
    async fn purge_expired_chunk(
        &self,
        now: SyncTimestamp,
        _max_rows: u32,
    ) -> ApiResult<PurgeStats> {
        let this = self.handle();
        crate::db::pooled::detached(Duration::MAX, async move {
            let now = now.as_i64();
            let mut removed = [0i64; 2];
            for (i, table) in ["bsos", "batches"].iter().enumerate() {
                let mut stmt = Statement::new(format!(
                    "DELETE FROM {table} WHERE expiry <= TIMESTAMP_MILLIS(@now)"
                ));
                stmt.add_param("now", &now);
                removed[i] = this
                    .client
                    .partitioned_update(stmt)
                    .await
                    .map_err(client_error)?;
            }
            Ok(PurgeStats {
                bsos: removed[0].max(0) as usize,
                batches: removed[1].max(0) as usize,
                staged: 0,
            })
        })
        .await
    }

    fn pool_state(&self) -> PoolState {
        let open = self.client.session_count() as u32;
        PoolState {
            active: 0,
            idle: open,
            max_size: self.max_sessions,
            // The session pool does not say how many wait for a session.
            waiting: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_are_faults() {
        let kind = |code| status_error(Status::new(code, "x")).kind;
        use crate::error::ErrorKind::Database;
        assert_eq!(kind(Code::Aborted), Database(DbFault::Conflict));
        assert_eq!(kind(Code::Unavailable), Database(DbFault::Unavailable));
        assert_eq!(kind(Code::DeadlineExceeded), Database(DbFault::Deadline));
        assert_eq!(kind(Code::Cancelled), Database(DbFault::Deadline));
        assert_eq!(kind(Code::ResourceExhausted), Database(DbFault::Busy));
        assert_eq!(kind(Code::AlreadyExists), Database(DbFault::Integrity));
        assert_eq!(kind(Code::InvalidArgument), Database(DbFault::Other));
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            database_path("spanner://projects/p/instances/i/databases/d").unwrap(),
            "projects/p/instances/i/databases/d"
        );
        for bad in [
            "spanner://projects/p",
            "spanner://projects/p/instances/i/tables/d",
            "spanner://projects//instances/i/databases/d",
        ] {
            assert!(database_path(bad).is_err(), "{bad}");
        }
    }
}
