//! What happens in a run: clients putting, getting and deleting files and asking for repair,
//! gc and scrub; a chaos task striking nodes, disks and the network; and at the end, with the
//! faults stopped, repair and the final check that every file is whole again.

use crate::engine::{self, GetErr};
use crate::exec;
use crate::world::{violated, Record, World};
use dfs_proto::{ChunkId, FileId};
use std::rc::Rc;
use std::time::Duration;

fn ms(a: u64, b: u64) -> Duration {
    Duration::from_millis(exec::random_range(a..b))
}

fn pick_file(w: &World) -> Option<FileId> {
    let truth = w.truth.borrow();
    if truth.is_empty() {
        return None;
    }
    let k = exec::random_range(0..truth.len() as u64) as usize;
    truth.keys().nth(k).copied()
}

/// Every acknowledged file that is not being deleted must still be in the metadata, and every
/// file the metadata lists was acknowledged (or is being answered right now).
fn check_acknowledged_files_are_recorded(w: &World) {
    let meta = w.meta.borrow();
    let deleting = w.deleting.borrow();
    let (truth, answering) = (w.truth.borrow(), w.answering.borrow());
    if let Some(id) =
        meta.keys().find(|id| !truth.contains_key(id) && !deleting.contains(id) && !answering.contains(id))
    {
        violated(format!("file {id} is listed but was never acknowledged"));
    }
    for id in w.truth.borrow().keys() {
        if !meta.contains_key(id) && !deleting.contains(id) {
            violated(format!("acknowledged file {id} is gone from the metadata"));
        }
    }
}

pub async fn client(w: Rc<World>, n_ops: u64) {
    for _ in 0..n_ops {
        exec::sleep(ms(0, 30)).await;
        check_acknowledged_files_are_recorded(&w);
        match exec::random_range(0..100) {
            0..40 => {
                let size = match exec::random_range(0..10) {
                    0 => 0,
                    1..7 => exec::random_range(1..4097),
                    _ => exec::random_range(4097..256 << 10),
                } as usize;
                let mut data = vec![0u8; size];
                exec::fill(&mut data);
                let data = Rc::new(data);
                match engine::put(w.clone(), data.clone()).await {
                    Ok(id) => {
                        w.answering.borrow_mut().remove(&id);
                        w.truth.borrow_mut().insert(id, data.to_vec());
                        w.counts.borrow_mut().puts_ok += 1;
                    }
                    Err(e) => {
                        exec::trace(|| format!("put failed: {e}"));
                        w.counts.borrow_mut().puts_failed += 1;
                    }
                }
            }
            40..70 => {
                let Some(id) = pick_file(&w) else { continue };
                let expected = w.truth.borrow().get(&id).cloned();
                // A file over 64 KiB is streamed, as one over the engine's buffer budget is.
                if let Some(data) = expected.as_ref().filter(|d| d.len() > 64 << 10) {
                    w.counts.borrow_mut().streamed_gets += 1;
                    match crate::stream::get(w.clone(), id, data).await {
                        Ok(()) => w.counts.borrow_mut().gets_ok += 1,
                        Err(crate::stream::StreamGetErr::NotFound) if !w.deleting.borrow().contains(&id) => {
                            violated(format!("GET {id}: not found, though acknowledged and never deleted"))
                        }
                        Err(e) => {
                            exec::trace(|| format!("streamed GET {id} failed: {e}"));
                            w.counts.borrow_mut().gets_failed += 1;
                        }
                    }
                    continue;
                }
                match engine::get(w.clone(), id).await {
                    Ok(bytes) => {
                        if Some(&bytes) != expected.as_ref() {
                            violated(format!("GET {id} returned bytes other than were stored"));
                        }
                        w.counts.borrow_mut().gets_ok += 1;
                    }
                    Err(GetErr::NotFound) if !w.deleting.borrow().contains(&id) => {
                        violated(format!("GET {id}: not found, though acknowledged and never deleted"))
                    }
                    Err(_) => w.counts.borrow_mut().gets_failed += 1,
                }
            }
            70..78 => {
                let Some(id) = pick_file(&w) else { continue };
                w.deleting.borrow_mut().insert(id);
                w.truth.borrow_mut().remove(&id);
                engine::delete(w.clone(), id).await;
                w.counts.borrow_mut().deletes += 1;
            }
            78..86 => {
                let grace = [Duration::ZERO, Duration::from_millis(1), Duration::from_secs(1)]
                    [exec::random_range(0..3) as usize];
                engine::gc(w.clone(), grace).await;
                w.counts.borrow_mut().gcs += 1;
            }
            86..93 => {
                engine::repair(w.clone()).await;
                w.counts.borrow_mut().repairs += 1;
            }
            _ => {
                let node = exec::random_range(0..w.config.n_nodes as u64) as usize;
                let _ = w.scrub(node).await;
                w.counts.borrow_mut().scrubs += 1;
            }
        }
    }
}

/// Strikes a random node, disk or link every few hundred milliseconds while `w.chaos` is on.
pub async fn chaos(w: Rc<World>) {
    while w.chaos.get() {
        exec::sleep(ms(20, 400)).await;
        if !w.chaos.get() {
            break;
        }
        let node = exec::random_range(0..w.config.n_nodes as u64) as usize;
        let now = exec::now();
        match exec::random_range(0..8) {
            0 => {
                let wipe = exec::chance(0.3);
                {
                    let mut nodes = w.nodes.borrow_mut();
                    let n = &mut nodes[node];
                    if !n.up {
                        continue;
                    }
                    n.up = false;
                    n.generation += 1;
                    if wipe {
                        n.disk.clear();
                        n.identity += 1;
                    }
                    // A restarted node counts what it sets aside from zero again.
                    n.n_quarantined = 0;
                }
                w.fault(if wipe { "crash, disk replaced" } else { "crash" });
                exec::trace(|| {
                    format!("chaos: node {node} {}", if wipe { "crashes, disk replaced" } else { "crashes" })
                });
                let (w2, down_for) = (w.clone(), ms(10, 2000));
                exec::spawn(format!("restart node {node}"), async move {
                    exec::sleep(down_for).await;
                    w2.nodes.borrow_mut()[node].up = true;
                    exec::trace(|| format!("chaos: node {node} restarts"));
                });
            }
            1 => {
                let mut nodes = w.nodes.borrow_mut();
                let disk = &mut nodes[node].disk;
                let candidates: Vec<ChunkId> =
                    disk.iter().filter(|(_, c)| !c.data.is_empty()).map(|(id, _)| *id).collect();
                if let Some(&id) = candidates.get(exec::random_range(0..candidates.len().max(1) as u64) as usize) {
                    let copy = disk.get_mut(&id).expect("listed");
                    let at = exec::random_range(0..copy.data.len() as u64) as usize;
                    copy.data[at] ^= 1 << exec::random_range(0..8);
                    drop(nodes);
                    w.fault("bit rot");
                    exec::trace(|| format!("chaos: bit rot in {id} on node {node}"));
                }
            }
            2 => {
                let (w2, d) = (w.clone(), ms(100, 2000));
                let old = {
                    let mut nodes = w.nodes.borrow_mut();
                    let used: u64 = nodes[node].disk.values().map(|c| c.data.len() as u64).sum();
                    std::mem::replace(&mut nodes[node].capacity, used)
                };
                w.fault("disk full");
                exec::spawn(format!("free node {node}'s disk"), async move {
                    exec::sleep(d).await;
                    w2.nodes.borrow_mut()[node].capacity = old;
                });
            }
            3 => {
                let mut nodes = w.nodes.borrow_mut();
                nodes[node].slow_factor = exec::random_range(5..50);
                nodes[node].slow_until = now + ms(100, 3000);
                drop(nodes);
                w.fault("slow disk");
            }
            4 => {
                w.nodes.borrow_mut()[node].failing_until = now + ms(100, 2000);
                w.fault("failing disk");
            }
            5 => {
                w.nodes.borrow_mut()[node].silent_until = now + ms(100, 3000);
                w.fault("node stops answering");
            }
            _ => {
                w.nodes.borrow_mut()[node].cut_off_until = now + ms(100, 3000);
                w.fault("partition");
            }
        }
    }
}

/// With every fault stopped and every node back: a scrub of every node, then an hour (the longest back-off) of the
/// repair queue alone, after which every chunk must be back to R sound copies (what the queue
/// was not told about, it cannot repair: a gap in its feeds fails here); then a full repair
/// pass, and every acknowledged file must read back whole, and every chunk have R sound
/// copies, unless each of its copies was destroyed (counted as lost).
pub async fn final_check(w: Rc<World>) -> u64 {
    w.chaos.set(false);
    {
        let mut nodes = w.nodes.borrow_mut();
        for n in nodes.iter_mut() {
            n.up = true;
            n.silent_until = Duration::ZERO;
            n.cut_off_until = Duration::ZERO;
            n.slow_until = Duration::ZERO;
            n.failing_until = Duration::ZERO;
            n.capacity = n.capacity.max(64 << 20);
        }
    }
    // Long enough for every request begun under the faults to end.
    exec::sleep(w.config.request_timeout * 4).await;
    for node in 0..w.config.n_nodes {
        if w.scrub(node).await.is_err() {
            violated(format!("node {node} cannot be scrubbed with the faults stopped"));
        }
    }
    exec::sleep(Duration::from_secs(3700)).await;
    let replicas = w.config.replicas.min(w.config.n_nodes);
    let records: Vec<(FileId, Record)> = w.meta.borrow().iter().map(|(k, v)| (*k, v.clone())).collect();
    for (id, record) in &records {
        for (idx, c) in record.chunks.iter().enumerate() {
            let chunk = ChunkId { file_id: *id, chunk_idx: idx as u32 };
            let k = w.sound_copies(chunk, c);
            if k > 0 && k < replicas {
                let queued = w.queue.borrow().get(&chunk).copied();
                violated(format!(
                    "an hour of the repair queue with every node up left {chunk} with {k} of {replicas} sound copies \
                     (queue entry: {queued:?})"
                ));
            }
        }
    }
    if !engine::repair(w.clone()).await {
        violated("the final repair found a pass still running".into());
    }
    let files: Vec<(FileId, Vec<u8>)> = w.truth.borrow().iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut n_lost = 0;
    for (id, data) in files {
        let record = match w.meta.borrow().get(&id).cloned() {
            Some(r) => r,
            None => violated(format!("acknowledged file {id} is gone from the metadata")),
        };
        let mut lost = false;
        for (idx, c) in record.chunks.iter().enumerate() {
            let chunk = ChunkId { file_id: id, chunk_idx: idx as u32 };
            match w.sound_copies(chunk, c) {
                0 => lost = true,
                k if k < replicas => {
                    violated(format!("after repair with every node up, {chunk} has {k} of {replicas} sound copies"))
                }
                _ => {}
            }
        }
        match engine::get(w.clone(), id).await {
            Ok(bytes) if bytes == data => {}
            Ok(_) => violated(format!("GET {id} returned bytes other than were stored")),
            Err(e) if !lost => violated(format!("GET {id} failed with a sound copy of every chunk recorded: {e}")),
            Err(_) => n_lost += 1,
        }
    }
    n_lost
}
