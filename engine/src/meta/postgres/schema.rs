//! The schema of the `dfs_*` tables: its migrations, applied in order at start-up, each once; an
//! engine refuses a database whose schema is newer than it knows.

use super::*;

/// The newest schema this engine knows.
const SCHEMA_VERSION: i64 = 2;

/// Each migration's statements, every one safe to run twice (two engines may start at once).
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS dfs_files (
            file_id BYTEA PRIMARY KEY,
            version INT8 NOT NULL,
            size INT8 NOT NULL,
            created_unix_ms INT8 NOT NULL,
            record BYTEA NOT NULL)",
            "CREATE TABLE IF NOT EXISTS dfs_repair_queue (
            file_id BYTEA NOT NULL,
            chunk_idx INT8 NOT NULL,
            reason INT8 NOT NULL,
            queued_unix_ms INT8 NOT NULL,
            attempts INT8 NOT NULL,
            not_before_unix_ms INT8 NOT NULL,
            PRIMARY KEY (file_id, chunk_idx))",
            "CREATE INDEX IF NOT EXISTS dfs_repair_queue_due ON dfs_repair_queue (not_before_unix_ms)",
            "CREATE TABLE IF NOT EXISTS dfs_engines (
            engine_id BYTEA PRIMARY KEY,
            addr TEXT NOT NULL,
            started_unix_ms INT8 NOT NULL,
            expires_unix_ms INT8 NOT NULL)",
            "CREATE TABLE IF NOT EXISTS dfs_uploads (
            file_id BYTEA NOT NULL,
            engine_id BYTEA NOT NULL,
            registered_unix_ms INT8 NOT NULL,
            PRIMARY KEY (file_id, engine_id))",
            "CREATE TABLE IF NOT EXISTS dfs_leases (
            name TEXT PRIMARY KEY,
            holder BYTEA NOT NULL,
            expires_unix_ms INT8 NOT NULL)",
        ],
    ),
    (
        // S3: buckets, and each bucket's keys (as bytes, so that they sort as S3 lists them) with
        // the entry the embedded backend keeps too.
        2,
        &[
            "CREATE TABLE IF NOT EXISTS dfs_buckets (
            name TEXT PRIMARY KEY,
            created_unix_ms INT8 NOT NULL)",
            "CREATE TABLE IF NOT EXISTS dfs_objects (
            bucket TEXT NOT NULL,
            key BYTEA NOT NULL,
            entry BYTEA NOT NULL,
            PRIMARY KEY (bucket, key))",
        ],
    ),
];

/// Brings the database to [`SCHEMA_VERSION`]; refuses one that is newer.
pub(super) async fn migrate(pool: &Pool) -> Result<(), MetaError> {
    let c = pool.get().await.map_err(pool_err)?;
    let e = pg_err("migrating the schema");
    // Two engines starting at once may race on the same CREATE: the loser tries again and
    // finds the work done.
    let mut tries = 0;
    loop {
        tries += 1;
        let result = async {
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS dfs_schema (version INT8 PRIMARY KEY, applied_unix_ms INT8 NOT NULL)",
            )
            .await?;
            let current: Option<i64> = c.query_one("SELECT max(version) FROM dfs_schema", &[]).await?.get(0);
            Ok::<_, tokio_postgres::Error>(current.unwrap_or(0))
        }
        .await;
        let current = match result {
            Ok(v) => v,
            Err(err) if tries < 3 && err.as_db_error().is_some() => continue,
            Err(err) => return Err(e(err)),
        };
        if current > SCHEMA_VERSION {
            return Err(MetaError::NewerSchema { found: current as u64, known: SCHEMA_VERSION as u64 });
        }
        let mut failed = None;
        for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            for sql in *statements {
                if let Err(err) = c.batch_execute(sql).await {
                    failed = Some(err);
                    break;
                }
            }
            if failed.is_some() {
                break;
            }
            let insert = format!(
                "INSERT INTO dfs_schema (version, applied_unix_ms) VALUES ($1, {DB_NOW_MS}) ON CONFLICT (version) DO NOTHING"
            );
            if let Err(err) = c.execute(&insert, &[version]).await {
                failed = Some(err);
                break;
            }
            tracing::info!("PostgreSQL metadata: schema migrated to version {version}");
        }
        match failed {
            None => return Ok(()),
            Some(err) if tries < 3 && err.as_db_error().is_some() => continue,
            Some(err) => return Err(e(err)),
        }
    }
}
