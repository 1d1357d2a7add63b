//! The metadata writer: inserts of new files queue for one task that commits whatever has queued
//! up in one statement (group commit), each refused if its upload's registration lapsed; and the
//! settling of an insert whose answer was lost.

use super::*;

/// Inserts committed together at most.
pub(super) const MAX_BATCH: usize = 1024;

pub(super) struct Insert {
    file_id: FileId,
    /// The registration the upload ran under: the commit is refused if it lapsed.
    epoch: [u8; 16],
    record: FileRecord,
    reply: oneshot::Sender<Result<(), MetaError>>,
}

/// The writer task: takes every queued insert, commits them in one statement, answers each.
pub(super) async fn writer(pool: Pool, mut queue: mpsc::Receiver<Insert>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let result = match tokio::time::timeout(TIMEOUT, insert_batch(&pool, &batch)).await {
            Ok(r) => r,
            Err(_) => Err(MetaError::Db(format!("PostgreSQL: commit: no answer within {} s", TIMEOUT.as_secs()))),
        };
        match result {
            Ok(each) => {
                for (op, r) in batch.into_iter().zip(each) {
                    let _ = op.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!("metadata commit failed: {e}");
                for op in batch {
                    let _ = op.reply.send(Err(MetaError::Db(e.to_string())));
                }
            }
        }
    }
}

/// Commits a batch in one statement; per insert, Ok, or why it was refused (its engine
/// registration lapsed, or its upload's registration row is gone). Err: the statement failed or
/// its answer did not come; it may still commit later unless
/// [`Postgres::settle_failed_insert`] takes its registration row away first.
///
/// Each record is inserted only by claiming (deleting) its upload's `dfs_uploads` row in the
/// same statement: whoever deletes that row first, this statement or the settling after a
/// failed commit, decides whether the record can ever exist.
async fn insert_batch(pool: &Pool, batch: &[Insert]) -> Result<Vec<Result<(), MetaError>>, MetaError> {
    let c = pool.get().await.map_err(pool_err)?;
    let e = pg_err("commit");
    let stmt = c
        .prepare_cached(&format!(
            "WITH n AS (SELECT * FROM unnest($1::BYTEA[], $2::INT8[], $3::INT8[], $4::BYTEA[], $5::BYTEA[]) \
                 AS n(file_id, size, created, record, engine_id)), \
             claimed AS (DELETE FROM dfs_uploads u USING n, dfs_engines e \
                 WHERE u.file_id = n.file_id AND u.engine_id = n.engine_id \
                 AND e.engine_id = n.engine_id AND e.expires_unix_ms > {DB_NOW_MS} \
                 RETURNING u.file_id) \
             INSERT INTO dfs_files (file_id, version, size, created_unix_ms, record) \
                 SELECT n.file_id, 1, n.size, n.created, n.record FROM n JOIN claimed ON claimed.file_id = n.file_id \
                 RETURNING file_id"
        ))
        .await
        .map_err(&e)?;
    let ids: Vec<&[u8]> = batch.iter().map(|i| &i.file_id.0[..]).collect();
    let sizes: Vec<i64> = batch.iter().map(|i| i64_of(i.record.size)).collect();
    let created: Vec<i64> = batch.iter().map(|i| i64_of(i.record.created_unix_ms)).collect();
    let records: Vec<Vec<u8>> = batch.iter().map(|i| i.record.encode()).collect();
    let epochs: Vec<&[u8]> = batch.iter().map(|i| &i.epoch[..]).collect();
    let rows = c.query(&stmt, &[&ids, &sizes, &created, &records, &epochs]).await.map_err(&e)?;
    let written: std::collections::HashSet<&[u8]> = rows.iter().map(|r| r.get::<_, &[u8]>(0)).collect();
    Ok(batch
        .iter()
        .map(|i| {
            if written.contains(&i.file_id.0[..]) {
                Ok(())
            } else {
                Err(MetaError::Db(
                    "not recorded: this engine's registration in PostgreSQL lapsed while the upload ran (so gc on \
                     another engine may have collected its copies), or the upload's registration is gone; upload it \
                     again"
                        .into(),
                ))
            }
        })
        .collect())
}

impl Postgres {
    /// Queues the insert for the writer task; returns once its batch has committed.
    pub async fn insert(&self, writer: &Writer, record: FileRecord) -> Result<(), MetaError> {
        let epoch = writer.epoch.expect("a PostgreSQL upload is registered under an engine registration");
        let (reply, rx) = oneshot::channel();
        let insert = Insert { file_id: writer.file_id, epoch, record, reply };
        self.inserts.send(insert).await.map_err(|_| MetaError::WriterGone)?;
        rx.await.map_err(|_| MetaError::WriterGone)?
    }

    /// See [`super::MetaStore::settle_failed_insert`]: deletes the upload's registration row,
    /// which the insert claims in its own statement, then reads the record.
    pub async fn settle_failed_insert(&self, writer: &Writer) -> Result<Option<FileRecord>, MetaError> {
        let epoch = writer.epoch.expect("a PostgreSQL upload is registered under an engine registration");
        let file_id = writer.file_id;
        self.run("settling a failed commit", move |c| async move {
            let e = pg_err("settling a failed commit");
            c.execute("DELETE FROM dfs_uploads WHERE file_id = $1 AND engine_id = $2", &[&&file_id.0[..], &&epoch[..]])
                .await
                .map_err(&e)?;
            let row =
                c.query_opt("SELECT record FROM dfs_files WHERE file_id = $1", &[&&file_id.0[..]]).await.map_err(&e)?;
            row.map(|r| FileRecord::decode(file_id, r.get::<_, &[u8]>(0))).transpose()
        })
        .await
    }
}
