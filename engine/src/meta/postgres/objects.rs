//! S3's buckets and keys (`dfs_buckets`, `dfs_objects`): a key is set, replaced or removed by one
//! statement that checks the caller's conditions (compare and set on the key's entry), so that
//! two engines serving the same bucket never lose an overwrite.

use super::*;

impl Postgres {
    pub async fn create_bucket(&self, name: String, now: u64) -> Result<bool, MetaError> {
        self.run("creating a bucket", move |c| async move {
            let n = c
                .execute(
                    "INSERT INTO dfs_buckets (name, created_unix_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    &[&name, &i64_of(now)],
                )
                .await
                .map_err(pg_err("creating a bucket"))?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn bucket(&self, name: String) -> Result<Option<u64>, MetaError> {
        self.run("reading a bucket", move |c| async move {
            let row = c
                .query_opt("SELECT created_unix_ms FROM dfs_buckets WHERE name = $1", &[&name])
                .await
                .map_err(pg_err("reading a bucket"))?;
            Ok(row.map(|r| r.get::<_, i64>(0) as u64))
        })
        .await
    }

    pub async fn buckets(&self) -> Result<Vec<(String, u64)>, MetaError> {
        self.run("listing buckets", move |c| async move {
            let rows = c
                .query("SELECT name, created_unix_ms FROM dfs_buckets ORDER BY name", &[])
                .await
                .map_err(pg_err("listing buckets"))?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect())
        })
        .await
    }

    /// Deletes the bucket only if no key is in it, in one statement.
    pub async fn delete_bucket(&self, name: String) -> Result<crate::meta::objects::BucketDeleted, MetaError> {
        use crate::meta::objects::BucketDeleted;
        self.run("deleting a bucket", move |c| async move {
            let e = pg_err("deleting a bucket");
            let n = c
                .execute(
                    "DELETE FROM dfs_buckets b WHERE b.name = $1 \
                     AND NOT EXISTS (SELECT 1 FROM dfs_objects o WHERE o.bucket = $1)",
                    &[&name],
                )
                .await
                .map_err(&e)?;
            if n == 1 {
                return Ok(BucketDeleted::Deleted);
            }
            let exists = c.query_opt("SELECT 1 FROM dfs_buckets WHERE name = $1", &[&name]).await.map_err(&e)?;
            Ok(if exists.is_some() { BucketDeleted::NotEmpty } else { BucketDeleted::NoSuchBucket })
        })
        .await
    }

    /// Sets the key's entry and returns the one it replaced, in one transaction (the old row is
    /// locked while it is read).
    pub async fn put_object(
        &self,
        bucket: String,
        key: Vec<u8>,
        entry: Vec<u8>,
        condition: crate::meta::objects::WriteCondition,
    ) -> Result<Result<Option<crate::meta::objects::ObjectEntry>, crate::meta::objects::KeyRefused>, MetaError> {
        use crate::meta::objects::{KeyRefused, ObjectEntry};
        self.run("recording an object", move |mut c| async move {
            let e = pg_err("recording an object");
            let txn = c.transaction().await.map_err(&e)?;
            if txn
                .query_opt("SELECT 1 FROM dfs_buckets WHERE name = $1 FOR SHARE", &[&bucket])
                .await
                .map_err(&e)?
                .is_none()
            {
                return Ok(Err(KeyRefused::NoSuchBucket));
            }
            // The row is locked from here to the commit: a condition checked on it holds when
            // the new entry is written. A key with no row yet is claimed by the INSERT below,
            // whose conflict with a concurrent first write fails one of them.
            let old = txn
                .query_opt("SELECT entry FROM dfs_objects WHERE bucket = $1 AND key = $2 FOR UPDATE", &[&bucket, &key])
                .await
                .map_err(&e)?;
            let old = old.map(|r| ObjectEntry::decode(r.get::<_, &[u8]>(0))).transpose()?;
            if !condition.allows(old.as_ref()) {
                return Ok(Err(KeyRefused::Precondition));
            }
            let written = if old.is_none() && condition.if_none_match.is_some() {
                // Must not exist: a row inserted meanwhile by another engine makes this write
                // lose, not overwrite it.
                txn.execute(
                    "INSERT INTO dfs_objects (bucket, key, entry) VALUES ($1, $2, $3) ON CONFLICT (bucket, key) DO NOTHING",
                    &[&bucket, &key, &entry],
                )
                .await
                .map_err(&e)?
            } else {
                txn.execute(
                    "INSERT INTO dfs_objects (bucket, key, entry) VALUES ($1, $2, $3) \
                     ON CONFLICT (bucket, key) DO UPDATE SET entry = excluded.entry",
                    &[&bucket, &key, &entry],
                )
                .await
                .map_err(&e)?
            };
            if written == 0 {
                return Ok(Err(KeyRefused::Precondition));
            }
            txn.commit().await.map_err(&e)?;
            Ok(Ok(old))
        })
        .await
    }

    pub async fn object(
        &self,
        bucket: String,
        key: Vec<u8>,
    ) -> Result<Option<crate::meta::objects::ObjectEntry>, MetaError> {
        self.run("reading an object", move |c| async move {
            let row = c
                .query_opt("SELECT entry FROM dfs_objects WHERE bucket = $1 AND key = $2", &[&bucket, &key])
                .await
                .map_err(pg_err("reading an object"))?;
            row.map(|r| crate::meta::objects::ObjectEntry::decode(r.get::<_, &[u8]>(0))).transpose()
        })
        .await
    }

    pub async fn delete_object(
        &self,
        bucket: String,
        key: Vec<u8>,
    ) -> Result<Option<crate::meta::objects::ObjectEntry>, MetaError> {
        self.run("deleting an object", move |c| async move {
            let row = c
                .query_opt("DELETE FROM dfs_objects WHERE bucket = $1 AND key = $2 RETURNING entry", &[&bucket, &key])
                .await
                .map_err(pg_err("deleting an object"))?;
            row.map(|r| crate::meta::objects::ObjectEntry::decode(r.get::<_, &[u8]>(0))).transpose()
        })
        .await
    }

    pub async fn objects(
        &self,
        bucket: String,
        from: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, crate::meta::objects::ObjectEntry)>, MetaError> {
        self.run("listing objects", move |c| async move {
            let rows = c
                .query(
                    "SELECT key, entry FROM dfs_objects WHERE bucket = $1 AND key >= $2 ORDER BY key LIMIT $3",
                    &[&bucket, &from, &i64_of(limit as u64)],
                )
                .await
                .map_err(pg_err("listing objects"))?;
            rows.iter()
                .map(|r| Ok((r.get::<_, Vec<u8>>(0), crate::meta::objects::ObjectEntry::decode(r.get::<_, &[u8]>(1))?)))
                .collect()
        })
        .await
    }
}
