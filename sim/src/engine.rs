//! The engine's requests over the simulated cluster: the same decisions as the real engine
//! (`dfs_core`), driven by simulated I/O. Between two steps that the real engine takes on
//! different threads or across an await, this yields, so other requests can run in between.

use crate::exec::{self, yield_now};
use crate::world::{ChunkRec, Deleter, Node, NodeErr, Record, Unrecorded, World};
use dfs_core::gc::{Answer, Ask, Next, OrphanCheck, Verdict};
use dfs_core::placement::{ring, up_first};
use dfs_core::repair::{keep_copies_on_down_nodes, outcome, plan, retry_after, Checked, Done, Outcome, Plan};
use dfs_core::upload::{Next as UploadNext, Upload};
use dfs_proto::layout::{chunk_spans, crc32, Chunking};
use dfs_proto::{ChunkId, FileId};
use std::rc::Rc;
use std::time::Duration;

fn all_nodes(w: &World) -> Vec<Node> {
    (0..w.config.n_nodes).collect()
}

/// PUT: each chunk to R nodes in ring order, nodes believed up first; the record is committed
/// only when every chunk has R durable copies, and the file ID stays registered as being
/// written until after the commit.
pub async fn put(w: Rc<World>, data: Rc<Vec<u8>>) -> Result<FileId, String> {
    let mut id = [0u8; 16];
    exec::fill(&mut id);
    let file_id = FileId(id);
    let writing = w.begin_writing(file_id);
    let mut unrecorded = Unrecorded::new(&w);
    let spans = chunk_spans(data.len() as u64, Chunking::Equal, 0).map_err(|e| e.to_string())?;
    let replicas = w.config.replicas;
    // The copies, as dfs_core::upload keeps them for put.rs.
    let mut upload: Upload<Node, u64, NodeErr> = Upload::new(spans.len(), replicas);
    // Every copy attempted, for the clean-up of a failed upload: a copy may exist though its
    // reply was lost.
    let mut written: Vec<(ChunkId, Node)> = Vec::new();
    let crcs: Vec<u32> =
        spans.iter().map(|s| crc32(&data[s.offset as usize..(s.offset + s.length) as usize])).collect();
    for (idx, span) in spans.iter().enumerate() {
        let chunk = ChunkId { file_id, chunk_idx: idx as u32 };
        let bytes = &data[span.offset as usize..(span.offset + span.length) as usize];
        let crc = crcs[idx];
        // Each chunk goes to the first R nodes of its ring, those believed up first, at once.
        let order = up_first(&ring(&all_nodes(&w), file_id, idx as u32), |n| w.is_up(n));
        let targets: Vec<Node> = order.iter().take(replicas).copied().collect();
        for &n in &targets {
            unrecorded.add(chunk, n);
            written.push((chunk, n));
        }
        let handles: Vec<_> = targets
            .iter()
            .map(|&n| {
                let (w, bytes) = (w.clone(), bytes.to_vec());
                exec::spawn(format!("store {chunk} on {n}"), async move { (n, w.store(n, chunk, &bytes, crc).await) })
            })
            .collect();
        for (n, r) in exec::join_all(handles).await {
            match r {
                Ok(identity) => upload.acked(idx, n, identity, vec![crc]),
                Err(e) => {
                    w.note_failure(n, e);
                    upload.failed(idx, n, e);
                }
            }
        }
    }
    // A chunk a node failed is copied from an acknowledged copy, verified, to other nodes.
    let failure = loop {
        let (idx, source, exclude) = match upload.next() {
            UploadNext::Commit => break None,
            UploadNext::Lost { chunk } => break Some(format!("chunk {chunk}: no copy")),
            UploadNext::Complete { chunk, source, exclude, .. } => (chunk, source, exclude),
        };
        let chunk = ChunkId { file_id, chunk_idx: idx as u32 };
        let source_bytes = match w.fetch(source, chunk).await {
            Ok(b) if crc32(&b) == crcs[idx] => Some(b),
            Ok(_) => None,
            Err(e) => {
                w.note_failure(source, e);
                None
            }
        };
        if let Some(bytes) = source_bytes {
            for dest in up_first(&all_nodes(&w), |n| w.is_up(n)) {
                if upload.copies(idx).len() >= replicas {
                    break;
                }
                if exclude.contains(&dest) {
                    continue;
                }
                unrecorded.add(chunk, dest);
                written.push((chunk, dest));
                match w.store(dest, chunk, &bytes, crcs[idx]).await {
                    Ok(identity) => upload.acked(idx, dest, identity, vec![crcs[idx]]),
                    Err(e) => {
                        w.note_failure(dest, e);
                        upload.failed(idx, dest, e);
                    }
                }
            }
        }
        if upload.copies(idx).len() < replicas {
            break Some(format!("chunk {idx}: {} of {replicas} copies", upload.copies(idx).len()));
        }
    };
    if let Some(why) = failure {
        drop(unrecorded);
        drop(writing);
        let w2 = w.clone();
        exec::spawn("clean up a failed upload", async move {
            for (chunk, n) in written {
                let _ = w2.delete(n, chunk, None, Deleter::Owner).await;
            }
        });
        return Err(why);
    }
    let chunks: Vec<ChunkRec> = spans
        .iter()
        .enumerate()
        .map(|(idx, span)| ChunkRec {
            offset: span.offset,
            length: span.length,
            crc32: crcs[idx],
            placement: upload.copies(idx).iter().map(|k| k.node).collect(),
        })
        .collect();
    // The commit goes through the metadata writer (another thread in the engine).
    yield_now().await;
    exec::trace(|| format!("put {file_id}: committed {:?}", chunks.iter().map(|c| &c.placement).collect::<Vec<_>>()));
    w.answering.borrow_mut().insert(file_id);
    w.meta.borrow_mut().insert(file_id, Record { size: data.len() as u64, chunks });
    // A node replaced after it acknowledged a copy no longer holds it: queued, as put.rs does.
    for idx in upload.replaced_since_written(|n| w.known_identity.borrow()[n]) {
        w.queue_notes.borrow_mut().insert(ChunkId { file_id, chunk_idx: idx as u32 });
    }
    drop(unrecorded);
    yield_now().await;
    drop(writing);
    Ok(file_id)
}

/// How a GET failed.
#[derive(Debug)]
pub enum GetErr {
    NotFound,
    Chunk(u32, Vec<(Node, NodeErr)>),
}

impl std::fmt::Display for GetErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetErr::NotFound => write!(f, "not found"),
            GetErr::Chunk(idx, errors) => write!(f, "chunk {idx} could not be read: {errors:?}"),
        }
    }
}

/// GET: each chunk from its copies, nodes believed up first, every byte checked against the
/// recorded crc32 before it counts.
pub async fn get(w: Rc<World>, file_id: FileId) -> Result<Vec<u8>, GetErr> {
    let record = w.meta.borrow().get(&file_id).cloned().ok_or(GetErr::NotFound)?;
    let mut out = vec![0u8; record.size as usize];
    for (idx, c) in record.chunks.iter().enumerate() {
        let chunk = ChunkId { file_id, chunk_idx: idx as u32 };
        let mut errors = Vec::new();
        let mut done = false;
        for n in up_first(&c.placement, |n| w.is_up(n)) {
            match w.fetch(n, chunk).await {
                Ok(bytes) if bytes.len() as u64 == c.length && crc32(&bytes) == c.crc32 => {
                    w.mark(n, true);
                    out[c.offset as usize..(c.offset + c.length) as usize].copy_from_slice(&bytes);
                    done = true;
                    break;
                }
                Ok(_) => {
                    w.queue_notes.borrow_mut().insert(chunk);
                    errors.push((n, NodeErr::Corrupt));
                }
                Err(e) => {
                    w.note_failure(n, e);
                    w.queue_notes.borrow_mut().insert(chunk);
                    errors.push((n, e));
                }
            }
        }
        if !done {
            return Err(GetErr::Chunk(idx as u32, errors));
        }
    }
    Ok(out)
}

/// DELETE: the record goes first, then its copies (best effort; gc gets the rest).
pub async fn delete(w: Rc<World>, file_id: FileId) -> bool {
    let Some(record) = w.meta.borrow_mut().remove(&file_id) else { return false };
    for (idx, c) in record.chunks.iter().enumerate() {
        for &n in &c.placement {
            let _ = w.delete(n, ChunkId { file_id, chunk_idx: idx as u32 }, None, Deleter::Owner).await;
        }
    }
    true
}

/// One gc pass over every node, with `dfs_core::gc::OrphanCheck` deciding each copy.
pub async fn gc(w: Rc<World>, grace: Duration) -> u64 {
    let mut deleted = 0;
    for node in all_nodes(&w) {
        let Ok((list, listed_at)) = w.chunk_list(node, grace).await else { continue };
        for chunk in list {
            let (mut check, mut next) = OrphanCheck::new(chunk, false);
            let mut claimed = false;
            let verdict = loop {
                let answer = match next {
                    Next::Done(v) => break v,
                    Next::Ask(Ask::Writers) => Answer::Writers(w.is_writing(chunk.file_id)),
                    Next::Ask(Ask::Record | Ask::FreshRecord) => Answer::Placed(w.places(chunk, node)),
                    Next::Ask(Ask::Claim) => {
                        claimed = w.gc_claims.borrow_mut().insert((chunk, node));
                        Answer::Claimed(claimed)
                    }
                };
                // The engine's threads go on between two questions.
                yield_now().await;
                next = check.answer(answer);
            };
            exec::trace(|| format!("gc: {chunk} on node {node}: {verdict:?}"));
            if verdict == Verdict::Delete && w.delete(node, chunk, Some(listed_at), Deleter::Gc).await == Ok(true) {
                deleted += 1;
            }
            if claimed {
                w.gc_claims.borrow_mut().remove(&(chunk, node));
            }
        }
    }
    w.counts.borrow_mut().gc_deleted += deleted;
    deleted
}

/// One repair pass over every file, with `dfs_core::repair::plan` deciding each chunk. One pass
/// at a time, as in the engine (a pass asked for while one runs is refused): two passes
/// working from records read at different times would each write their own placement.
pub async fn repair(w: Rc<World>) -> bool {
    if w.repair_running.replace(true) {
        return false;
    }
    // A turn of the queue may be running: wait for it.
    while w.repair_lock.replace(true) {
        exec::sleep(Duration::from_millis(10)).await;
    }
    repair_pass(&w).await;
    w.repair_lock.set(false);
    w.repair_running.set(false);
    true
}

/// Asks every node believed down whether it is back.
async fn probe_down_nodes(w: &Rc<World>) {
    for node in all_nodes(w) {
        if !w.is_up(node) {
            ping(w, node).await;
        }
    }
}

async fn repair_pass(w: &Rc<World>) {
    probe_down_nodes(w).await;
    let files: Vec<FileId> = w.meta.borrow().keys().copied().collect();
    for file_id in files {
        let Some(record) = w.meta.borrow().get(&file_id).cloned() else { continue };
        for (idx, c) in record.chunks.iter().enumerate() {
            let chunk = ChunkId { file_id, chunk_idx: idx as u32 };
            if !repair_chunk(w, chunk, c).await.settled() {
                w.queue_notes.borrow_mut().insert(chunk);
            }
        }
    }
}

/// How long a node must stay down before the queue re-makes its copies elsewhere.
pub const AFTER_DOWN: Duration = Duration::from_secs(5);

/// One turn of the repair queue, as `repair::run_queue` takes it: queue what reads and scrubs
/// noted and the copies of nodes replaced or down for long, then try what is due.
pub async fn queue_turn(w: &Rc<World>) {
    if w.repair_lock.replace(true) {
        return;
    }
    let now = exec::now();
    let mut new: Vec<ChunkId> = std::mem::take(&mut *w.queue_notes.borrow_mut()).into_iter().collect();
    let long_down: Vec<Node> =
        all_nodes(w).into_iter().filter(|&n| w.down_since.borrow()[n].is_some_and(|t| now >= t + AFTER_DOWN)).collect();
    for n in long_down {
        new.extend(w.chunks_on(n));
        // Queued for this down spell: not again until it has been up.
        w.down_since.borrow_mut()[n] = Some(Duration::MAX / 4);
    }
    {
        let mut queue = w.queue.borrow_mut();
        for c in new {
            let entry = queue.entry(c).or_insert((0, now));
            entry.1 = entry.1.min(now);
        }
    }
    let due: Vec<ChunkId> =
        w.queue.borrow().iter().filter(|(_, (_, at))| *at <= now).map(|(c, _)| *c).take(256).collect();
    if !due.is_empty() {
        probe_down_nodes(w).await;
    }
    for chunk in due {
        let record = w.meta.borrow().get(&chunk.file_id).cloned();
        let outcome = match record.as_ref().and_then(|r| r.chunks.get(chunk.chunk_idx as usize)) {
            Some(c) => repair_chunk(w, chunk, c).await,
            None => Outcome::Gone,
        };
        exec::trace(|| format!("repair queue: {chunk}: {outcome:?}"));
        let mut queue = w.queue.borrow_mut();
        if outcome.settled() {
            queue.remove(&chunk);
        } else if let Some(entry) = queue.get_mut(&chunk) {
            entry.0 += 1;
            entry.1 = exec::now() + retry_after(entry.0);
        }
    }
    w.repair_lock.set(false);
}

/// The queue's turns, every second.
pub async fn repair_queue(w: Rc<World>) {
    loop {
        exec::sleep(Duration::from_secs(1)).await;
        queue_turn(&w).await;
    }
}

/// A ping as the pinger sends it: up or down. A node found replaced (another ID at its
/// address), or answering for the first time, has its chunks queued (the engine queues only
/// those recorded under another ID; the simulation's placements do not record IDs, so it
/// queues them all, which costs checks, not copies).
async fn ping(w: &Rc<World>, node: Node) {
    match w.ping(node).await {
        Some((identity, n_quarantined)) => {
            w.mark(node, true);
            let before = w.known_quarantined.borrow_mut()[node].replace(n_quarantined);
            let grew = before.is_some_and(|b| n_quarantined > b);
            if w.learn(node, identity) || grew {
                let chunks = w.chunks_on(node);
                let now = exec::now();
                let mut queue = w.queue.borrow_mut();
                for c in chunks {
                    queue.entry(c).or_insert((0, now));
                }
            }
        }
        None => w.mark(node, false),
    }
}

async fn repair_chunk(w: &Rc<World>, chunk: ChunkId, c: &ChunkRec) -> Outcome {
    let mut checked = Checked::new();
    for &n in &c.placement {
        if !w.is_up(n) {
            checked.down.push(n);
            continue;
        }
        match w.exists(n, chunk).await {
            Ok((len, crc)) if len == c.length && crc == c.crc32 => checked.sound.push(n),
            Ok(_) | Err(NodeErr::Corrupt) => checked.corrupt.push(n),
            Err(NodeErr::NotFound) => checked.missing.push(n),
            Err(e @ (NodeErr::Unreachable | NodeErr::TimedOut)) => {
                w.note_failure(n, e);
                checked.down.push(n);
            }
            Err(NodeErr::Io | NodeErr::Full) => checked.unknown.push(n),
        }
    }
    let others = up_first(&all_nodes(w), |n| w.is_up(n));
    let (mut placement, dests) = match plan(&c.placement, &checked, &others, w.config.replicas) {
        Plan::Repair { keep, dests } => (keep, dests),
        Plan::Lost => return Outcome::Lost,
        Plan::Unavailable => return Outcome::Unavailable,
    };
    let _writing = w.begin_writing(chunk.file_id);
    let mut unrecorded = Unrecorded::new(w);
    let mut corrupt = checked.corrupt.clone();
    let (mut source_proven_bad, mut n_made) = (false, 0);
    for (dest, holds_corrupt_copy) in dests {
        if placement.len() >= w.config.replicas {
            break;
        }
        if !w.is_up(dest) || w.gc_claims.borrow().contains(&(chunk, dest)) {
            continue;
        }
        if holds_corrupt_copy {
            if w.delete(dest, chunk, None, Deleter::Repair).await.is_err() {
                continue;
            }
            corrupt.retain(|&n| n != dest);
        }
        unrecorded.add(chunk, dest);
        // From the first sound copy that verifies, block by block, to dest.
        let mut copied = false;
        for &source in &checked.sound {
            match w.fetch(source, chunk).await {
                Ok(bytes) if bytes.len() as u64 == c.length && crc32(&bytes) == c.crc32 => {
                    match w.store(dest, chunk, &bytes, c.crc32).await {
                        Ok(_) => copied = true,
                        Err(e) => w.note_failure(dest, e),
                    }
                    break;
                }
                Ok(_) => source_proven_bad = true,
                Err(e @ (NodeErr::Corrupt | NodeErr::NotFound)) => {
                    source_proven_bad = true;
                    w.note_failure(source, e);
                }
                Err(e) => w.note_failure(source, e),
            }
        }
        if copied {
            n_made += 1;
            placement.push(dest);
            w.counts.borrow_mut().copies_made += 1;
        }
    }
    let short = placement.len() < w.config.replicas;
    if short {
        keep_copies_on_down_nodes(&mut placement, &checked.down, w.config.replicas);
    }
    if placement != c.placement {
        yield_now().await;
        let mut meta = w.meta.borrow_mut();
        // Compare and set, as MetaStore::set_placement does.
        match meta.get_mut(&chunk.file_id).map(|r| &mut r.chunks[chunk.chunk_idx as usize].placement) {
            Some(current) if *current == c.placement => {
                exec::trace(|| format!("repair: {chunk} placed on {placement:?} (was {:?})", c.placement));
                current.clone_from(&placement);
            }
            Some(_) => return Outcome::Short,
            None => return Outcome::Gone,
        }
    }
    for n in corrupt.into_iter().filter(|n| !placement.contains(n)) {
        let _ = w.delete(n, chunk, None, Deleter::Repair).await;
    }
    outcome(Done {
        short,
        source_proven_bad,
        unchecked: !checked.unknown.is_empty(),
        changed: n_made > 0 || placement != c.placement,
    })
}

/// The pinger: every node, every half second.
pub async fn pinger(w: Rc<World>) {
    loop {
        exec::sleep(Duration::from_millis(500)).await;
        for n in all_nodes(&w) {
            ping(&w, n).await;
        }
    }
}
