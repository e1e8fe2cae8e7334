//! `migrations/spanner/`: creates the database with the schema, or adds what an existing
//! database lacks (by table and index name), then inserts the standard collections. Idempotent.

use gcloud_gax::conn::Environment;
use gcloud_googleapis::spanner::admin::database::v1::{
    CreateDatabaseRequest, GetDatabaseDdlRequest, UpdateDatabaseDdlRequest,
};
use gcloud_spanner::admin::AdminClientConfig;
use gcloud_spanner::admin::client::Client as AdminClient;
use gcloud_spanner::client::{Client, ClientConfig};
use gcloud_spanner::statement::Statement;

const SCHEMA: &str = include_str!("../../../migrations/spanner/schema.ddl");
const STANDARD_COLLECTIONS: &str =
    include_str!("../../../migrations/spanner/insert_standard_collections.sql");

/// The schema's statements, comments removed.
pub fn statements() -> Vec<String> {
    let text: String = SCHEMA
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `CREATE TABLE x` / `CREATE UNIQUE INDEX x` → `x`.
fn object_name(statement: &str) -> Option<String> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("TABLE") || w.eq_ignore_ascii_case("INDEX"))?;
    words
        .get(at + 1)
        .map(|w| w.trim_end_matches('(').to_owned())
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("spanner migrations: {what}: {e}")
}

/// Applies the schema to `database` (`projects/P/instances/I/databases/D`).
pub async fn migrate(database: &str, emulator_host: Option<String>) -> Result<(), String> {
    let mut config = AdminClientConfig::default();
    config = match &emulator_host {
        Some(host) => AdminClientConfig {
            environment: Environment::Emulator(host.clone()),
            ..config
        },
        None => config
            .with_auth()
            .await
            .map_err(|e| err("credentials", e))?,
    };
    let admin = AdminClient::new(config)
        .await
        .map_err(|e| err("connect", e))?;
    let ddl = admin
        .database()
        .get_database_ddl(
            GetDatabaseDdlRequest {
                database: database.to_owned(),
            },
            None,
        )
        .await;
    let wanted = statements();
    match ddl {
        Ok(existing) => {
            let have: Vec<String> = existing
                .into_inner()
                .statements
                .iter()
                .filter_map(|s| object_name(s))
                .map(|n| n.to_lowercase())
                .collect();
            let missing: Vec<String> = wanted
                .into_iter()
                .filter(|s| object_name(s).is_some_and(|n| !have.contains(&n.to_lowercase())))
                .collect();
            if !missing.is_empty() {
                let mut op = admin
                    .database()
                    .update_database_ddl(
                        UpdateDatabaseDdlRequest {
                            database: database.to_owned(),
                            statements: missing,
                            ..Default::default()
                        },
                        None,
                    )
                    .await
                    .map_err(|e| err("update DDL", e))?;
                op.wait(None).await.map_err(|e| err("update DDL", e))?;
            }
        }
        Err(status) if status.code() == gcloud_gax::grpc::Code::NotFound => {
            let (parent, name) = database
                .rsplit_once("/databases/")
                .ok_or_else(|| err("database path", database))?;
            let mut op = admin
                .database()
                .create_database(
                    CreateDatabaseRequest {
                        parent: parent.to_owned(),
                        create_statement: format!("CREATE DATABASE `{name}`"),
                        extra_statements: wanted,
                        ..Default::default()
                    },
                    None,
                )
                .await
                .map_err(|e| err("create database", e))?;
            op.wait(None).await.map_err(|e| err("create database", e))?;
        }
        Err(status) => return Err(err("read DDL", status)),
    }
    insert_standard_collections(database, emulator_host).await
}

/// The standard collections, unless already there.
async fn insert_standard_collections(
    database: &str,
    emulator_host: Option<String>,
) -> Result<(), String> {
    let mut config = ClientConfig::default();
    config.session_config.min_opened = 1;
    config.session_config.max_opened = 1;
    config.channel_config.num_channels = 1;
    config = match emulator_host {
        Some(host) => ClientConfig {
            environment: Environment::Emulator(host),
            ..config
        },
        None => config
            .with_auth()
            .await
            .map_err(|e| err("credentials", e))?,
    };
    let client = Client::new(database, config)
        .await
        .map_err(|e| err("connect", e))?;
    let mut tx = client
        .begin_read_write_transaction()
        .await
        .map_err(|e| err("begin", e))?;
    let result: Result<(), gcloud_spanner::client::Error> = async {
        let mut rows = tx
            .query(Statement::new(
                "SELECT COUNT(*) AS n FROM collections WHERE collection_id <= 13",
            ))
            .await?;
        let n: i64 = match rows.next().await? {
            Some(row) => row.column_by_name("n")?,
            None => 0,
        };
        drop(rows);
        if n == 0 {
            tx.update(Statement::new(STANDARD_COLLECTIONS)).await?;
        }
        Ok(())
    }
    .await;
    tx.end(result, None)
        .await
        .map_err(|e| err("standard collections", e))?;
    client.close().await;
    Ok(())
}
