//! The `StorageDb` trait called directly, without HTTP (`tests/conformance*.rs`): a backend on
//! the engine under test, users of a test's own, and short ways to call each method.
//!
//! On MySQL, PostgreSQL and Spanner the tests of one re-run share one database (creating and
//! migrating a database per test would cost more than the tests; the emulator takes seconds
//! per database), so every test works on users of its own (`Backend::user`). A test that
//! counts rows across users (`purge_expired`) asks for a database of its own (`Backend::own`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use syncserver::db::sql::PoolSettings;
use syncserver::db::{
    BsoPage, BsoRef, CollectionRef, DeleteBsos, GetBsos, Info, InfoBody, InfoKind, PostBsos,
    PostResult, PutBso, SharedStorage, StorageConfig, UserId, open_storage,
};
use syncserver::error::{ApiError, ApiResult, ErrorKind};
use syncserver::protocol::post::PostItems;
use syncserver::protocol::{
    BatchRequest, Bso, BsoQuery, BsoUpdate, Limits, Precondition, SyncTimestamp,
};

use super::backends::{self, ScratchDatabase};
use super::db::{AnyConnection, Val, connect, sql_query};

/// A `StorageDb` and the database behind it.
pub struct Backend {
    pub db: SharedStorage,
    pub url: String,
    _dir: tempfile::TempDir,
    _own: Option<ScratchDatabase>,
}

/// The settings a backend applies when a test does not say otherwise: upstream's limits,
/// quota off.
pub fn config() -> StorageConfig {
    StorageConfig {
        limits: Limits::default(),
        enable_quota: false,
        enforce_quota: false,
    }
}

/// Quota on and enforced at `limit` bytes.
pub fn quota(limit: u32) -> StorageConfig {
    StorageConfig {
        limits: Limits {
            max_quota_limit: limit,
            ..Limits::default()
        },
        enable_quota: true,
        enforce_quota: true,
    }
}

static NEXT_USER: AtomicU64 = AtomicU64::new(1);

/// Migrates the shared database once, on a runtime of its own (tests' runtimes come and go).
fn migrated_shared() -> Option<&'static ScratchDatabase> {
    static MIGRATED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let shared = ScratchDatabase::shared()?;
    MIGRATED.get_or_init(|| {
        let url = shared.url.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let db = open_url(&url, config(), true).await;
                db.check().await.expect("the shared database answers");
            });
        })
        .join()
        .expect("migrate the shared database");
    });
    Some(shared)
}

async fn open_url(url: &str, config: StorageConfig, migrate: bool) -> SharedStorage {
    let pool = PoolSettings {
        run_migrations: migrate,
        ..PoolSettings::default()
    };
    let emulator = backends::spanner_emulator_host();
    open_storage(url, &pool, Some(&emulator), config)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

impl Backend {
    /// The engine under test with default settings.
    pub async fn open() -> Backend {
        Self::with(config()).await
    }

    /// The engine under test with these settings, on the re-run's shared database when there
    /// is one (a SQLite file of its own otherwise).
    pub async fn with(config: StorageConfig) -> Backend {
        match migrated_shared() {
            Some(shared) => Backend {
                db: open_url(&shared.url, config, false).await,
                url: shared.url.clone(),
                _dir: tempfile::tempdir().unwrap(),
                _own: None,
            },
            None => Self::own(config).await,
        }
    }

    /// A database of its own, whatever the engine.
    pub async fn own(config: StorageConfig) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let own = ScratchDatabase::create();
        let url = match &own {
            Some(s) => s.url.clone(),
            None => format!("sqlite:{}", dir.path().join("storage.db").display()),
        };
        Backend {
            db: open_url(&url, config, true).await,
            url,
            _dir: dir,
            _own: own,
        }
    }

    /// A user no other test touches, keyed as a token names it: the uid, and the
    /// fxa_uid/fxa_kid Spanner keys users by.
    pub fn user(&self) -> UserId {
        let uid = 1_000 + NEXT_USER.fetch_add(1, Ordering::SeqCst);
        UserId {
            fxa_uid: format!("{uid:032x}"),
            fxa_kid: "0000000001234-qqo".into(),
            ..UserId::from_uid(uid)
        }
    }

    pub fn engine(&self) -> &'static str {
        backends::engine()
    }

    /// Whether batches are the MySQL layout's (base64-ms ids) rather than UUIDs with an expiry.
    pub fn mysql_layout(&self) -> bool {
        matches!(self.engine(), "sqlite" | "mysql")
    }

    // ---- calls ----

    pub async fn try_put(&self, u: &UserId, c: &str, bso: BsoUpdate) -> ApiResult<SyncTimestamp> {
        self.db
            .put_bso(PutBso {
                target: coll(u, c),
                bso,
            })
            .await
    }

    pub async fn put(&self, u: &UserId, c: &str, bso: BsoUpdate) -> SyncTimestamp {
        self.try_put(u, c, bso).await.expect("put_bso")
    }

    /// The record, `None` when the backend says 404; any other error fails the test.
    pub async fn get(&self, u: &UserId, c: &str, id: &str) -> Option<Bso> {
        match self.db.get_bso(bso_ref(u, c, id)).await {
            Ok(b) => Some(b),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => panic!("get_bso {c}/{id}: {e:?}"),
        }
    }

    pub async fn list(&self, u: &UserId, c: &str, query: BsoQuery) -> BsoPage {
        self.db
            .get_bsos(GetBsos {
                target: coll(u, c),
                query,
            })
            .await
            .expect("get_bsos")
    }

    /// Every live id of the collection, sorted.
    pub async fn ids(&self, u: &UserId, c: &str) -> Vec<String> {
        let mut ids = page_ids(&self.list(u, c, BsoQuery::default()).await);
        ids.sort();
        ids
    }

    pub async fn try_post(
        &self,
        u: &UserId,
        c: &str,
        items: Vec<BsoUpdate>,
        batch: BatchRequest,
    ) -> ApiResult<PostResult> {
        self.db
            .post_bsos(PostBsos {
                target: coll(u, c),
                items: PostItems {
                    valid: items,
                    failed: BTreeMap::new(),
                },
                batch,
            })
            .await
    }

    pub async fn post(
        &self,
        u: &UserId,
        c: &str,
        items: Vec<BsoUpdate>,
        batch: BatchRequest,
    ) -> PostResult {
        self.try_post(u, c, items, batch).await.expect("post_bsos")
    }

    /// Opens a batch with `items`; its id.
    pub async fn start_batch(&self, u: &UserId, c: &str, items: Vec<BsoUpdate>) -> String {
        self.post(u, c, items, BatchRequest::Start)
            .await
            .batch
            .expect("a batch id")
    }

    pub async fn delete_ids(&self, u: &UserId, c: &str, ids: &[&str]) -> SyncTimestamp {
        self.db
            .delete_bsos(DeleteBsos {
                target: coll(u, c),
                ids: ids.iter().map(|s| s.to_string()).collect(),
            })
            .await
            .expect("delete_bsos")
    }

    pub async fn info(&self, u: &UserId, kind: InfoKind) -> Info {
        self.db
            .info(u, kind, Precondition::None)
            .await
            .expect("info")
    }

    pub async fn storage_ts(&self, u: &UserId) -> SyncTimestamp {
        self.info(u, InfoKind::Collections).await.storage_ts
    }

    /// `/info/collections` as a map.
    pub async fn timestamps(&self, u: &UserId) -> BTreeMap<String, SyncTimestamp> {
        match self.info(u, InfoKind::Collections).await.body {
            InfoBody::Timestamps(m) => m,
            other => panic!("collections: {other:?}"),
        }
    }

    pub async fn counts(&self, u: &UserId) -> BTreeMap<String, i64> {
        match self.info(u, InfoKind::Counts).await.body {
            InfoBody::Counts(m) => m,
            other => panic!("counts: {other:?}"),
        }
    }

    // ---- the database itself ----

    /// A connection to the database behind the backend.
    pub fn conn(&self) -> AnyConnection {
        connect(&self.url)
    }

    /// Moves a batch of `u` 2 h + 1 s into the past (expired); returns the id it now has
    /// (MySQL-layout ids are their creation time).
    pub fn expire_batch(&self, u: &UserId, id: &str) -> String {
        let mut conn = self.conn();
        let uid = u.legacy_id as i64;
        match self.engine() {
            "sqlite" | "mysql" => {
                let number = syncserver::protocol::batch_id::decode(id).unwrap();
                let old = number - syncserver::protocol::batch_id::BATCH_LIFETIME_MS - 1_000;
                for table in ["batch_uploads", "batch_upload_items"] {
                    let n = sql_query(format!(
                        "UPDATE {table} SET batch = ? WHERE batch = ? AND userid = ?"
                    ))
                    .bind(old)
                    .bind(number)
                    .bind(uid)
                    .execute(&mut conn)
                    .unwrap();
                    assert!(
                        n >= 1 || table == "batch_upload_items",
                        "batch {id} not found"
                    );
                }
                syncserver::protocol::batch_id::encode(old)
            }
            "postgres" => {
                let n = sql_query(
                    "UPDATE batches SET expiry = now() - interval '1 second' WHERE batch_id = ?::uuid",
                )
                .bind(id)
                .execute(&mut conn)
                .unwrap();
                assert_eq!(n, 1, "batch {id} not found");
                id.to_owned()
            }
            _ => {
                let AnyConnection::Spanner(c) = &conn else {
                    unreachable!()
                };
                let n = c.execute(
                    "UPDATE batches SET expiry = TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 SECOND) \
                     WHERE batch_id = ?",
                    vec![Val::Text(id.into())],
                );
                assert_eq!(n, 1, "batch {id} not found");
                id.to_owned()
            }
        }
    }
}

pub fn coll(u: &UserId, name: &str) -> CollectionRef {
    CollectionRef {
        user: u.clone(),
        collection: name.into(),
        precondition: Precondition::None,
    }
}

pub fn coll_if(u: &UserId, name: &str, precondition: Precondition) -> CollectionRef {
    CollectionRef {
        precondition,
        ..coll(u, name)
    }
}

pub fn bso_ref(u: &UserId, c: &str, id: &str) -> BsoRef {
    BsoRef {
        user: u.clone(),
        collection: c.into(),
        id: id.into(),
        precondition: Precondition::None,
    }
}

pub fn upd(id: &str, payload: Option<&str>, sortindex: Option<i32>, ttl: Option<u32>) -> BsoUpdate {
    BsoUpdate {
        id: id.into(),
        payload: payload.map(Into::into),
        sortindex,
        ttl,
    }
}

/// A record with a payload only.
pub fn rec(id: &str, payload: &str) -> BsoUpdate {
    upd(id, Some(payload), None, None)
}

pub fn page_ids(page: &BsoPage) -> Vec<String> {
    page.items.iter().map(|b| b.id.clone()).collect()
}

pub fn strs(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// The error's kind, failing the test on success.
pub fn err_kind<T: std::fmt::Debug>(r: ApiResult<T>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ApiError { kind, .. }) => kind,
    }
}

/// Long enough for a record written with `ttl: 0` (expiry = T) to be past its expiry.
pub async fn let_expire() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}
