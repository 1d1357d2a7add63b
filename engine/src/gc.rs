//! Orphan collection: a chunk on a node that no committed file places there (an interrupted
//! upload, an engine killed mid-upload, a file deleted while the node was down, a copy repair
//! replaced) is deleted once it is older than the grace period. Uploads in progress are never
//! touched: their chunks are younger than any sensible grace period, and the engine also skips
//! every file ID it is uploading right now. The rule for one copy, and the order in which it
//! asks, is `dfs_core::gc::OrphanCheck`; this module answers its questions and deletes.

use crate::cluster::{self, NodeConn};
use crate::meta::{FileRecord, NodeDirectory};
use crate::state::EngineState;
use dfs_core::gc::{Answer, Ask, Next, OrphanCheck, Verdict};
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

/// Whether `record` may place chunk `chunk_idx` on the node at `addr`: by that node's ID, by
/// an address that leads there, or by a node named by address alone (a placement not yet
/// upgraded to node IDs), which is taken to be anywhere: an address says where a node was, not
/// which node holds the copy now, and gc must never delete a copy a file may need.
fn places(record: &FileRecord, chunk_idx: u32, addr: SocketAddr, nodes: &dyn NodeDirectory) -> bool {
    let Some(chunk) = record.chunks.get(chunk_idx as usize) else { return false };
    let here = nodes.id_of(addr).map(|id| id.0);
    chunk.placement.iter().filter_map(|&i| record.nodes.get(i as usize)).any(|slot| match slot.id {
        None => true,
        Some(id) => Some(id) == here || slot.resolve(nodes) == Ok(addr),
    })
}

/// One gc pass over every node. Err: it could not run (another engine holds the cluster's gc
/// pass, or the metadata cannot say).
pub async fn run(state: &EngineState, dry_run: bool, grace: Duration) -> Result<GcOutcome, String> {
    let lease = match state.meta.take_pass(crate::meta::Pass::Gc).await {
        Ok(Ok(lease)) => lease,
        Ok(Err(holder)) => return Err(format!("{holder}; try again when it has finished")),
        Err(e) => return Err(format!("cannot take the gc pass: {e}")),
    };
    let mut out = GcOutcome::default();
    for &addr in &state.config.nodes {
        if lease.lost() {
            push_report_line(&mut out.lines, format!("node {addr} skipped: the gc pass was lost (its lease lapsed)"));
            continue;
        }
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
    Ok(out)
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
    // The last file's record, shared by its chunks.
    let mut cached: Option<(FileId, Option<FileRecord>)> = None;
    loop {
        let cluster::ChunkListPage { chunk_ids, more, listed_at_unix_ms } =
            cluster::chunk_list_page(&node, after, MAX_LIST_ENTRIES, grace).await.map_err(|e| e.to_string())?;
        for &chunk_id in &chunk_ids {
            out.n_scanned += 1;
            // The rule and the order of its questions are dfs_core::gc's; this answers them.
            let (mut check, mut next) = OrphanCheck::new(chunk_id, dry_run);
            // Held from the claim until the DELETE has returned.
            let mut claim = None;
            let verdict = loop {
                let answer = match next {
                    Next::Done(verdict) => break verdict,
                    Next::Ask(Ask::Writers) => Answer::Writers(
                        state.uploads_in_progress.contains(chunk_id.file_id)
                            || state.meta.writing_elsewhere(chunk_id.file_id).await.map_err(|e| e.to_string())?,
                    ),
                    Next::Ask(Ask::Record) => {
                        // Chunks come in file ID order: one record lookup per file.
                        if cached.as_ref().is_none_or(|(id, _)| *id != chunk_id.file_id) {
                            let record = state.meta.get(chunk_id.file_id).await.map_err(|e| e.to_string())?;
                            cached = Some((chunk_id.file_id, record));
                            dfs_runtime::failpoint::pause("gc-after-record-read").await;
                        }
                        let record = cached.as_ref().and_then(|(_, r)| r.as_ref());
                        Answer::Placed(
                            record.is_some_and(|r| places(r, chunk_id.chunk_idx, addr, &*state.links.health)),
                        )
                    }
                    Next::Ask(Ask::Claim) => {
                        claim = state.gc_claims.claim(chunk_id, addr);
                        Answer::Claimed(claim.is_some())
                    }
                    Next::Ask(Ask::FreshRecord) => {
                        let record = state.meta.get(chunk_id.file_id).await.map_err(|e| e.to_string())?;
                        Answer::Placed(
                            record.is_some_and(|r| places(&r, chunk_id.chunk_idx, addr, &*state.links.health)),
                        )
                    }
                };
                next = check.answer(answer);
            };
            match verdict {
                Verdict::Writing | Verdict::Referenced | Verdict::KeptOnSecondLook => {}
                Verdict::Orphan => {
                    out.n_orphans += 1;
                    push_report_line(&mut out.lines, format!("{chunk_id} on {addr}"));
                }
                Verdict::Delete => {
                    out.n_orphans += 1;
                    dfs_runtime::failpoint::pause("gc-before-delete").await;
                    // Only the copy listed: if this DELETE times out (releasing the claim) and
                    // lands later, say on a node that hung, a copy a repair wrote there meanwhile
                    // is newer than the listing and the node keeps it.
                    match cluster::delete_listed(addr, &state.links, chunk_id, listed_at_unix_ms).await {
                        Ok(true) => {
                            out.n_deleted += 1;
                            push_report_line(&mut out.lines, format!("{chunk_id} on {addr}: deleted"));
                        }
                        Ok(false) => {
                            out.n_orphans -= 1;
                            push_report_line(
                                &mut out.lines,
                                format!("{chunk_id} on {addr}: kept, written again since the listing"),
                            );
                        }
                        Err(e) => push_report_line(&mut out.lines, format!("{chunk_id} on {addr}: not deleted: {e}")),
                    }
                }
            }
            drop(claim);
        }
        match (more, chunk_ids.last()) {
            (true, Some(last)) => after = Some(*last),
            _ => break,
        }
    }
    node.checkin();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Health;
    use crate::meta::{ChunkRecord, NodeSlot};
    use dfs_proto::{Chunking, NodeId};

    /// The node table: node 1 answers at :7001 (recorded at :7101, where it was), node 2 at
    /// :7002.
    fn nodes() -> Health {
        let health = Health::new(&[addr(7001), addr(7002)]);
        health.learn(addr(7001), NodeId([1; 16])).expect("a fresh table");
        health.learn(addr(7002), NodeId([2; 16])).expect("a fresh table");
        health
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn record(nodes: Vec<NodeSlot>) -> FileRecord {
        let placement = (0..nodes.len() as u16).collect();
        FileRecord {
            name: "f".into(),
            size: 1,
            created_unix_ms: 0,
            chunking: Chunking::Equal,
            nodes,
            chunks: vec![ChunkRecord { offset: 0, length: 1, crc32: 0, block_crcs: vec![0], placement }],
            origin: None,
        }
    }

    #[test]
    fn a_copy_is_referenced_by_node_id_wherever_the_node_now_answers() {
        let moved = record(vec![NodeSlot { id: Some([1; 16]), addr: addr(7101).to_string() }]);
        let nodes = nodes();
        assert!(places(&moved, 0, addr(7001), &nodes), "node 1's copy, at its new address");
        assert!(!places(&moved, 0, addr(7002), &nodes), "node 2 holds no copy of it: an orphan there");
        assert!(!places(&moved, 1, addr(7001), &nodes), "no such chunk");
    }

    #[test]
    fn a_placement_by_address_alone_keeps_every_copy_of_its_chunk() {
        let legacy = record(vec![NodeSlot { id: None, addr: addr(7101).to_string() }]);
        let nodes = nodes();
        assert!(places(&legacy, 0, addr(7001), &nodes));
        assert!(places(&legacy, 0, addr(7002), &nodes));
    }
}
