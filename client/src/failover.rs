//! Failover between the engines of one cluster (`--server A,B,C`, engines sharing their
//! metadata in PostgreSQL). A connection goes to the first engine that answers. When an engine
//! fails in the middle of a request (the connection breaks, or it answers Unavailable), the
//! request moves on to the next engine:
//! - a download continues where it stopped: the next engine sends the file again, and the
//!   bytes already written are checked, not written twice ([`crate::get`]'s `Resume`);
//! - an upload is sent again whole; the copies the failed attempt wrote are orphans, which gc
//!   collects once the failed engine's registration has lapsed. (If the failed engine had
//!   committed the file just before it died, the file is stored twice, under two IDs.)
//!
//! Each engine is tried once per request; refusals (not found, bad request) are answers, not
//! failures, and end the request.

use crate::get::{PartialFile, Resume};
use crate::{Chunking, Client, ClientError, FileId, FileInfo, MappedFile, Origin, Progress, Result, Server, Status};
use std::io::Write;
use std::path::Path;

/// Whether an error says the engine, not the request, failed: the next engine may succeed.
pub fn fails_over(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect { .. }
            | ClientError::Connection { .. }
            | ClientError::Unusable
            | ClientError::Remote { status: Status::Unavailable, .. }
    )
}

/// Runs `attempt` on `conn` (connecting it first if needed), and on an engine failure again on
/// the next engine, each engine once. `note` hears of every move to another engine.
pub fn run<T>(
    conn: &mut Option<Client>,
    server: &Server,
    note: &dyn Fn(&str),
    what: &str,
    mut attempt: impl FnMut(&mut Client) -> Result<T>,
) -> Result<T> {
    let n_engines = server.engines().len();
    let mut next = conn.as_ref().map_or(0, Client::engine_idx);
    let mut n_failed = 0;
    loop {
        if conn.as_ref().is_some_and(|c| !c.is_usable()) {
            *conn = None;
        }
        let client = match conn {
            Some(c) => c,
            None => conn.insert(Client::connect_from(server, next)?),
        };
        let (engine, idx) = (client.engine_addr().to_owned(), client.engine_idx());
        match attempt(client) {
            Ok(v) => return Ok(v),
            Err(e) if fails_over(&e) && n_failed + 1 < n_engines => {
                n_failed += 1;
                next = (idx + 1) % n_engines;
                *conn = None;
                note(&format!(
                    "engine {engine} failed while {what} ({}); going on with the next engine",
                    crate::error_chain(&e)
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Uploads `file` as [`Client::put_mapped`] does, sending it again whole to the next engine if
/// one fails.
#[allow(clippy::too_many_arguments)]
pub fn put_mapped(
    conn: &mut Option<Client>,
    server: &Server,
    note: &dyn Fn(&str),
    name: &str,
    file: &MappedFile,
    chunking: Chunking,
    origin: Option<Origin>,
    progress: &mut dyn Progress,
) -> Result<(FileId, u32)> {
    run(conn, server, note, "uploading", |c| c.put_mapped(name, file, chunking, origin, progress))
}

/// Downloads a file into `out` as [`Client::get_to_writer`] does, continuing on the next engine
/// where it stopped if one fails.
pub fn get_to_writer(
    conn: &mut Option<Client>,
    server: &Server,
    note: &dyn Fn(&str),
    file_id: FileId,
    out: &mut dyn Write,
    progress: &mut dyn Progress,
) -> Result<FileInfo> {
    let (mut table, mut resume) = (None, Resume::default());
    let mut write = |data: &[u8]| out.write_all(data).map_err(ClientError::Output);
    let info = run(conn, server, note, "downloading", |c| {
        c.get_resuming(file_id, &mut table, &mut resume, &mut |_| Ok(()), &mut write, progress)
    })?;
    out.flush().map_err(ClientError::Output)?;
    Ok(info)
}

/// Downloads a file to `path` as [`Client::get_to_path`] does, continuing on the next engine
/// where it stopped if one fails.
pub fn get_to_path(
    conn: &mut Option<Client>,
    server: &Server,
    note: &dyn Fn(&str),
    file_id: FileId,
    path: &Path,
    progress: &mut dyn Progress,
) -> Result<FileInfo> {
    let partial = std::cell::RefCell::new(PartialFile::create(path)?);
    let (mut table, mut resume) = (None, Resume::default());
    let info = run(conn, server, note, "downloading", |c| {
        c.get_resuming(
            file_id,
            &mut table,
            &mut resume,
            &mut |info| partial.borrow_mut().preallocate(info.size),
            &mut |data| partial.borrow_mut().write(data),
            progress,
        )
    })?;
    partial.into_inner().persist()?;
    Ok(info)
}
