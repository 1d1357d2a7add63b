//! The S3 front door's buckets, as an operator manages them over the native protocol: create,
//! list and delete buckets, and list a bucket's keys with the dfs file behind each (which
//! `stat` and `get` then take by ID).

use crate::{unexpected, Client, ClientError, Result};
use dfs_proto::limits::MAX_LIST_ENTRIES;
use dfs_proto::{BucketSummary, KeySummary, Msg};

impl Client {
    pub fn bucket_create(&mut self, name: &str) -> Result<()> {
        self.run(true, |c| match c.request(&Msg::BucketCreate { name: name.to_owned() }, "Ok")? {
            Msg::Ok => Ok(()),
            other => Err(unexpected(&other, "Ok")),
        })
    }

    /// Deletes an empty bucket; the engine refuses one that holds keys.
    pub fn bucket_delete(&mut self, name: &str) -> Result<()> {
        self.run(true, |c| match c.request(&Msg::BucketDelete { name: name.to_owned() }, "Ok")? {
            Msg::Ok => Ok(()),
            other => Err(unexpected(&other, "Ok")),
        })
    }

    /// Every bucket, by name, page by page.
    pub fn buckets(&mut self) -> Result<Vec<BucketSummary>> {
        let mut out: Vec<BucketSummary> = Vec::new();
        loop {
            let after = out.last().map(|b| b.name.clone());
            let msg = Msg::BucketList { after: after.clone(), limit: MAX_LIST_ENTRIES };
            let (page, more) = self.run(true, |c| match c.request(&msg, "BucketListOk")? {
                Msg::BucketListOk { buckets, more } => Ok((buckets, more)),
                other => Err(unexpected(&other, "BucketListOk")),
            })?;
            check_advances(page.iter().map(|b| b.name.as_str()), after.as_deref(), more, page.is_empty())?;
            out.extend(page);
            if !more {
                return Ok(out);
            }
        }
    }

    /// The keys of `bucket` that start with `prefix`, in byte order, each handed to `each` as
    /// its page arrives (a bucket may hold millions).
    pub fn bucket_keys(
        &mut self,
        bucket: &str,
        prefix: &str,
        mut each: impl FnMut(KeySummary) -> Result<()>,
    ) -> Result<()> {
        let mut after: Option<String> = None;
        loop {
            let msg = Msg::BucketKeys {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
                after: after.clone(),
                limit: MAX_LIST_ENTRIES,
            };
            let (page, more) = self.run(true, |c| match c.request(&msg, "BucketKeysOk")? {
                Msg::BucketKeysOk { keys, more } => Ok((keys, more)),
                other => Err(unexpected(&other, "BucketKeysOk")),
            })?;
            check_advances(page.iter().map(|k| k.key.as_str()), after.as_deref(), more, page.is_empty())?;
            let last = page.last().map(|k| k.key.clone());
            for key in page {
                each(key)?;
            }
            if !more {
                return Ok(());
            }
            after = last;
        }
    }
}

/// A page must be in increasing order after the cursor, and a page claiming more must not be
/// empty: otherwise following the cursor would loop forever.
fn check_advances<'a>(
    names: impl Iterator<Item = &'a str>,
    after: Option<&str>,
    more: bool,
    empty: bool,
) -> Result<()> {
    if more && empty {
        return Err(ClientError::Protocol("engine sent an empty page that claims more follow".into()));
    }
    let mut last = after;
    for name in names {
        if last.is_some_and(|l| name <= l) {
            return Err(ClientError::Protocol(format!("engine listed {name:?} out of order")));
        }
        last = Some(name);
    }
    Ok(())
}
