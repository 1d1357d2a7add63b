//! Orphan collection: a chunk on a node that no committed file places there (an interrupted
//! upload, an engine killed mid-upload, a file deleted while the node was down, a copy repair
//! replaced) is deleted once it is older than the grace period. Uploads in progress are never
//! touched: their chunks are younger than any sensible grace period, and the engine also skips
//! every file ID it is uploading right now.

use crate::cluster::{self, NodeConn};
use crate::meta::{FileRecord, NodeDirectory};
use crate::state::EngineState;
use dfs_proto::limits::MAX_LIST_ENTRIES;
use dfs_proto::msg::push_report_line;
use dfs_proto::{ChunkId, FileId};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct GcOutcome {
    pub n_scanned: u64,
    pub n_orphans: u64,
    pub n_deleted: u64,
    pub lines: Vec<String>,
}

/// Whether `record` places chunk `chunk_idx` on the node at `addr`: by that node's ID, or by
/// an address that leads there.
fn places(record: &FileRecord, chunk_idx: u32, addr: SocketAddr, nodes: &dyn NodeDirectory) -> bool {
    let Some(chunk) = record.chunks.get(chunk_idx as usize) else { return false };
    let here = nodes.id_of(addr).map(|id| id.0);
    chunk
        .placement
        .iter()
        .filter_map(|&i| record.nodes.get(i as usize))
        .any(|slot| (here.is_some() && slot.id == here) || slot.resolve(nodes) == Ok(addr))
}

pub async fn run(state: &EngineState, dry_run: bool, grace: Duration) -> GcOutcome {
    let mut out = GcOutcome::default();
    for &addr in &state.config.nodes {
        if let Err(e) = collect_node(state, addr, dry_run, grace, &mut out).await {
            push_report_line(&mut out.lines, format!("node {addr} skipped: {e}"));
        }
    }
    tracing::info!(
        "gc{}: {} chunk(s) older than {grace:?} scanned, {} orphan(s), {} deleted",
        if dry_run { " (dry run)" } else { "" },
        out.n_scanned,
        out.n_orphans,
        out.n_deleted
    );
    out
}

async fn collect_node(
    state: &EngineState,
    addr: SocketAddr,
    dry_run: bool,
    grace: Duration,
    out: &mut GcOutcome,
) -> Result<(), String> {
    let node = NodeConn::checkout(addr, &state.links).await.map_err(|e| e.to_string())?;
    let mut after: Option<ChunkId> = None;
    // Chunks come in file ID order: one record lookup per file.
    let mut cached: Option<(FileId, Option<FileRecord>)> = None;
    loop {
        let (chunk_ids, more) =
            cluster::chunk_list_page(&node, after, MAX_LIST_ENTRIES, grace).await.map_err(|e| e.to_string())?;
        for &chunk_id in &chunk_ids {
            out.n_scanned += 1;
            // Writers first, then the record: a copy written before its record is committed is
            // protected by the first check until the second can see it.
            if state.uploads_in_progress.contains(chunk_id.file_id) {
                continue;
            }
            if cached.as_ref().is_none_or(|(id, _)| *id != chunk_id.file_id) {
                let record = state.meta.get(chunk_id.file_id).map_err(|e| e.to_string())?;
                cached = Some((chunk_id.file_id, record));
                dfs_runtime::failpoint::pause("gc-after-record-read").await;
            }
            let referenced = match &cached {
                Some((_, Some(record))) => places(record, chunk_id.chunk_idx, addr, &*state.links.health),
                _ => false,
            };
            if referenced {
                continue;
            }
            out.n_orphans += 1;
            if dry_run {
                push_report_line(&mut out.lines, format!("{chunk_id} on {addr}"));
                continue;
            }
            // The cached record may be stale by now (a repair re-pointed the chunk here): the
            // decision to delete rests on a fresh look at both.
            let still_orphan = !state.uploads_in_progress.contains(chunk_id.file_id)
                && match state.meta.get(chunk_id.file_id).map_err(|e| e.to_string())? {
                    Some(record) => !places(&record, chunk_id.chunk_idx, addr, &*state.links.health),
                    None => true,
                };
            if !still_orphan {
                out.n_orphans -= 1;
                continue;
            }
            match cluster::delete(addr, &state.links, chunk_id).await {
                Ok(()) => {
                    out.n_deleted += 1;
                    push_report_line(&mut out.lines, format!("{chunk_id} on {addr}: deleted"));
                }
                Err(e) => push_report_line(&mut out.lines, format!("{chunk_id} on {addr}: not deleted: {e}")),
            }
        }
        match (more, chunk_ids.last()) {
            (true, Some(last)) => after = Some(*last),
            _ => break,
        }
    }
    node.checkin();
    Ok(())
}
