//! The repair queue in `dfs_repair_queue`: chunks added with a reason and a due time, taken when
//! due, settled or retried later.

use super::*;

impl Postgres {
    pub async fn queue_add(&self, entries: &[(ChunkId, Reason, u64)], now_unix_ms: u64) -> Result<u64, MetaError> {
        let entries = entries.to_vec();
        self.run("queueing chunks for repair", move |mut c| async move {
            let e = pg_err("repair queue");
            let txn = c.transaction().await.map_err(&e)?;
            let ids: Vec<&[u8]> = entries.iter().map(|(c, ..)| &c.file_id.0[..]).collect();
            let idxs: Vec<i64> = entries.iter().map(|(c, ..)| c.chunk_idx as i64).collect();
            let existing: std::collections::HashSet<(Vec<u8>, i64)> = txn
                .query(
                    "SELECT q.file_id, q.chunk_idx FROM dfs_repair_queue q \
                     JOIN unnest($1::BYTEA[], $2::INT8[]) AS n(file_id, chunk_idx) \
                     ON q.file_id = n.file_id AND q.chunk_idx = n.chunk_idx",
                    &[&ids, &idxs],
                )
                .await
                .map_err(&e)?
                .iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, i64>(1)))
                .collect();
            let reasons: Vec<i64> = entries.iter().map(|(_, r, _)| r.code() as i64).collect();
            let not_before: Vec<i64> = entries.iter().map(|(.., t)| i64_of(*t)).collect();
            txn.execute(
                "INSERT INTO dfs_repair_queue (file_id, chunk_idx, reason, queued_unix_ms, attempts, not_before_unix_ms) \
                 SELECT file_id, chunk_idx, reason, $5, 0, not_before \
                 FROM unnest($1::BYTEA[], $2::INT8[], $3::INT8[], $4::INT8[]) AS n(file_id, chunk_idx, reason, not_before) \
                 ON CONFLICT (file_id, chunk_idx) DO UPDATE SET not_before_unix_ms = \
                 LEAST(dfs_repair_queue.not_before_unix_ms, excluded.not_before_unix_ms)",
                &[&ids, &idxs, &reasons, &not_before, &i64_of(now_unix_ms)],
            )
            .await
            .map_err(&e)?;
            txn.commit().await.map_err(&e)?;
            let mut new: std::collections::HashSet<(&[u8], i64)> = std::collections::HashSet::new();
            for (id, idx) in ids.iter().zip(&idxs) {
                if !existing.contains(&(id.to_vec(), *idx)) {
                    new.insert((id, *idx));
                }
            }
            Ok(new.len() as u64)
        })
        .await
    }

    pub async fn queue_due(&self, now_unix_ms: u64, limit: usize) -> Result<Vec<(ChunkId, Queued)>, MetaError> {
        self.run("reading the repair queue", move |c| async move {
            let rows = c
                .query(
                    "SELECT file_id, chunk_idx, reason, queued_unix_ms, attempts, not_before_unix_ms \
                     FROM dfs_repair_queue WHERE not_before_unix_ms <= $1 \
                     ORDER BY not_before_unix_ms, file_id, chunk_idx LIMIT $2",
                    &[&i64_of(now_unix_ms), &i64_of(limit as u64)],
                )
                .await
                .map_err(pg_err("repair queue"))?;
            rows.iter()
                .map(|r| {
                    let chunk = ChunkId { file_id: file_id_of(r.get(0))?, chunk_idx: r.get::<_, i64>(1) as u32 };
                    let q = Queued {
                        reason: r.get::<_, i64>(2) as u8,
                        queued_unix_ms: u64_of(r.get(3)),
                        attempts: r.get::<_, i64>(4) as u32,
                        not_before_unix_ms: u64_of(r.get(5)),
                    };
                    Ok((chunk, q))
                })
                .collect()
        })
        .await
    }

    pub async fn queue_settle(&self, settled: &[ChunkId], retry: &[(ChunkId, u32, u64)]) -> Result<(), MetaError> {
        let settled = settled.to_vec();
        let retry = retry.to_vec();
        self.run("settling the repair queue", move |mut c| async move {
            let e = pg_err("repair queue");
            let txn = c.transaction().await.map_err(&e)?;
            let ids: Vec<&[u8]> = settled.iter().map(|c| &c.file_id.0[..]).collect();
            let idxs: Vec<i64> = settled.iter().map(|c| c.chunk_idx as i64).collect();
            txn.execute(
                "DELETE FROM dfs_repair_queue q USING unnest($1::BYTEA[], $2::INT8[]) AS n(file_id, chunk_idx) \
                 WHERE q.file_id = n.file_id AND q.chunk_idx = n.chunk_idx",
                &[&ids, &idxs],
            )
            .await
            .map_err(&e)?;
            let ids: Vec<&[u8]> = retry.iter().map(|(c, ..)| &c.file_id.0[..]).collect();
            let idxs: Vec<i64> = retry.iter().map(|(c, ..)| c.chunk_idx as i64).collect();
            let attempts: Vec<i64> = retry.iter().map(|(_, a, _)| *a as i64).collect();
            let not_before: Vec<i64> = retry.iter().map(|(.., t)| i64_of(*t)).collect();
            txn.execute(
                "UPDATE dfs_repair_queue q SET attempts = n.attempts, not_before_unix_ms = n.not_before \
                 FROM unnest($1::BYTEA[], $2::INT8[], $3::INT8[], $4::INT8[]) AS n(file_id, chunk_idx, attempts, not_before) \
                 WHERE q.file_id = n.file_id AND q.chunk_idx = n.chunk_idx",
                &[&ids, &idxs, &attempts, &not_before],
            )
            .await
            .map_err(&e)?;
            txn.commit().await.map_err(&e)
        })
        .await
    }

    pub async fn queue_len(&self) -> Result<u64, MetaError> {
        self.run("counting the repair queue", move |c| async move {
            let row =
                c.query_one("SELECT count(*) FROM dfs_repair_queue", &[]).await.map_err(pg_err("repair queue"))?;
            Ok(u64_of(row.get(0)))
        })
        .await
    }
}
