//! `dfs-client bucket`: the S3 front door's buckets for an operator. Buckets and keys made here
//! are the ones S3 clients see, and the other way round; each key names the dfs file (or, for a
//! multipart upload, the first of the files) that holds its bytes, which `stat` and `get` take.

use crate::view::{format_unix_ms, printable};
use anyhow::{Context, Result};
use clap::Subcommand;
use dfs_client::Client;
use dfs_proto::KeySummary;
use std::io::Write;

#[derive(Subcommand)]
pub enum BucketCommand {
    /// Create a bucket (3 to 63 lower-case letters, digits, dots and hyphens)
    Create { name: String },
    /// List the buckets: name and creation time
    List {
        /// Print a JSON array instead of text
        #[arg(long)]
        json: bool,
    },
    /// Delete an empty bucket
    Rm { name: String },
    /// List a bucket's keys in key order: size, modification time, the dfs file holding the
    /// bytes (`+N` when a multipart object has N more, one per part), and the key
    Ls {
        bucket: String,
        /// Only keys that start with PREFIX
        #[arg(long, value_name = "PREFIX", default_value = "")]
        prefix: String,
        /// Print one JSON object per key and line instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(serde::Serialize)]
struct KeyView<'a> {
    key: &'a str,
    size: u64,
    modified: String,
    modified_unix_ms: u64,
    etag: &'a str,
    /// The first dfs file of the object; null for an object with no bytes and no file.
    file_id: Option<String>,
    n_files: u32,
}

fn write_key(out: &mut dyn Write, k: &KeySummary, json: bool) -> Result<()> {
    let file = k.first_file.map(|f| f.to_string());
    if json {
        let view = KeyView {
            key: &k.key,
            size: k.size,
            modified: format_unix_ms(k.modified_unix_ms),
            modified_unix_ms: k.modified_unix_ms,
            etag: &k.etag,
            file_id: file,
            n_files: k.n_files,
        };
        serde_json::to_writer(&mut *out, &view).context("cannot write to stdout")?;
        writeln!(out).context("cannot write to stdout")
    } else {
        let mut file = file.unwrap_or_else(|| "-".into());
        if k.n_files > 1 {
            file.push_str(&format!("+{}", k.n_files - 1));
        }
        let when = format_unix_ms(k.modified_unix_ms);
        writeln!(out, "{:>14}  {when}  {file}  {}", k.size, printable(&k.key)).context("cannot write to stdout")
    }
}

pub fn run(server: &dfs_client::Server, command: BucketCommand, stdout: &mut dyn Write) -> Result<()> {
    let mut client = Client::connect(server)?;
    match command {
        BucketCommand::Create { name } => client.bucket_create(&name)?,
        BucketCommand::Rm { name } => client.bucket_delete(&name)?,
        BucketCommand::List { json } => {
            let buckets = client.buckets()?;
            if json {
                serde_json::to_writer_pretty(&mut *stdout, &buckets).context("cannot write to stdout")?;
                writeln!(stdout).context("cannot write to stdout")?;
            } else {
                for b in &buckets {
                    writeln!(stdout, "{}  {}", format_unix_ms(b.created_unix_ms), b.name)
                        .context("cannot write to stdout")?;
                }
            }
        }
        BucketCommand::Ls { bucket, prefix, json } => {
            let mut failed = None;
            client.bucket_keys(&bucket, &prefix, |k| {
                if failed.is_none() {
                    failed = write_key(stdout, &k, json).err();
                }
                Ok(())
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }
    Ok(())
}
