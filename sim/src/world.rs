//! The simulated cluster: nodes with disks, the network between the engine and them, the
//! engine's metadata and node table, and the truth the invariants are checked against (what
//! every acknowledged file holds). Faults are switched on here by the chaos task.

use crate::exec;
use dfs_proto::layout::crc32;
use dfs_proto::{ChunkId, FileId};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

pub type Node = usize;

/// One chunk copy on a simulated disk: its bytes as they are now, and the length and crc32
/// its seal recorded when it was written (what EXISTS answers from, without reading the bytes).
#[derive(Clone, Debug)]
pub struct Copy {
    pub data: Vec<u8>,
    pub sealed_crc: u32,
    pub written_at: Duration,
}

impl Copy {
    fn verifies(&self) -> bool {
        crc32(&self.data) == self.sealed_crc
    }
}

#[derive(Default, Debug)]
pub struct SimNode {
    pub up: bool,
    /// Bumped by each crash: a request begun before it is cut off.
    pub generation: u64,
    /// The node's ID: a new one when its disk is replaced.
    pub identity: u64,
    /// Copies set aside since the node started (scrub, FETCH), as NODESTAT reports it.
    pub n_quarantined: u64,
    pub disk: BTreeMap<ChunkId, Copy>,
    pub capacity: u64,
    /// The node answers nothing (a hung process, a full accept queue) until this time.
    pub silent_until: Duration,
    /// The engine cannot reach the node until this time.
    pub cut_off_until: Duration,
    /// Disk I/O takes this many times longer until `slow_until`.
    pub slow_factor: u64,
    pub slow_until: Duration,
    /// Each disk operation fails with this probability until `failing_until`.
    pub failing_until: Duration,
}

impl SimNode {
    fn used(&self) -> u64 {
        self.disk.values().map(|c| c.data.len() as u64).sum()
    }
}

/// Why a request to a node failed, as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeErr {
    /// Refused, reset, or cut off: nothing is known of what the node did.
    Unreachable,
    TimedOut,
    NotFound,
    /// The node's own block check failed.
    Corrupt,
    Full,
    /// A disk error: says nothing about the copy.
    Io,
}

impl std::fmt::Display for NodeErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A committed file: per chunk, its crc32 and the nodes its copies are recorded on.
#[derive(Clone, Debug)]
pub struct Record {
    pub size: u64,
    pub chunks: Vec<ChunkRec>,
}

#[derive(Clone, Debug)]
pub struct ChunkRec {
    pub offset: u64,
    pub length: u64,
    pub crc32: u32,
    pub placement: Vec<Node>,
}

/// Who deletes a copy, for the invariant checked when the delete lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleter {
    Gc,
    /// Repair removing a copy it proved corrupt.
    Repair,
    /// `rm`, or the clean-up of an upload that failed.
    Owner,
}

pub struct Config {
    pub n_nodes: usize,
    pub replicas: usize,
    pub request_timeout: Duration,
}

#[derive(Default, Debug)]
pub struct Counts {
    pub puts_ok: u64,
    pub puts_failed: u64,
    pub gets_ok: u64,
    pub gets_failed: u64,
    pub streamed_gets: u64,
    pub deletes: u64,
    pub repairs: u64,
    pub gcs: u64,
    pub gc_deleted: u64,
    pub scrubs: u64,
    pub copies_made: u64,
    pub faults: BTreeMap<&'static str, u64>,
}

pub struct World {
    pub config: Config,
    pub nodes: RefCell<Vec<SimNode>>,
    /// The engine's metadata.
    pub meta: RefCell<BTreeMap<FileId, Record>>,
    /// File IDs being written by an upload or a repair, counted.
    pub writers: RefCell<HashMap<FileId, usize>>,
    /// Copies an upload or a repair has written or is writing and has not yet recorded (or
    /// given up): what gc must never delete. Kept for the invariant only; the engine knows
    /// writers by file ID.
    pub unrecorded: RefCell<HashMap<(ChunkId, Node), usize>>,
    /// Copies gc has claimed for deletion: repair writes no copy of the chunk to the node.
    pub gc_claims: RefCell<BTreeSet<(ChunkId, Node)>>,
    /// The engine's belief about each node.
    pub up: RefCell<Vec<bool>>,
    /// What each acknowledged, not deleted file holds.
    pub truth: RefCell<BTreeMap<FileId, Vec<u8>>>,
    /// Files whose delete has begun: a get may fail or succeed, never return other bytes.
    pub deleting: RefCell<BTreeSet<FileId>>,
    /// Files committed whose PUT has not yet answered its client.
    pub answering: RefCell<BTreeSet<FileId>>,
    /// Set while a full repair pass runs: one at a time, as in the engine.
    pub repair_running: std::cell::Cell<bool>,
    /// Held by a full pass or a turn of the repair queue: never two at once.
    pub repair_lock: std::cell::Cell<bool>,
    /// The repair queue: per chunk, tries so far and when to try next (ms of simulated time).
    pub queue: RefCell<BTreeMap<ChunkId, (u32, u64)>>,
    /// What the pinger learned of nodes for the queue's next turn: a node replaced (or
    /// answering for the first time), or one that set copies aside.
    pub node_news: RefCell<Vec<(Node, dfs_core::repair::Reason)>>,
    /// Chunks noted for the queue by reads and scrubs, not yet queued.
    pub queue_notes: RefCell<BTreeSet<ChunkId>>,
    /// What each node's answers said (`dfs_core::health`, as the engine's node table keeps
    /// it): the ID the engine last saw there, and its count of copies set aside as the pinger
    /// last read it.
    pub heard: RefCell<Vec<dfs_core::health::Heard<u64>>>,
    /// Since when each node is believed down.
    pub down_since: RefCell<Vec<Option<Duration>>>,
    /// Whether faults may strike now (off for the final check).
    pub chaos: std::cell::Cell<bool>,
    pub counts: RefCell<Counts>,
}

/// An invariant broke: stop the run with this message.
#[track_caller]
pub fn violated(what: String) -> ! {
    panic!("invariant broken at step {} (t = {:?}): {what}", exec::steps(), exec::now())
}

impl World {
    pub fn new(config: Config) -> World {
        let nodes = (0..config.n_nodes)
            .map(|_| SimNode { up: true, capacity: 64 << 20, slow_factor: 1, ..SimNode::default() })
            .collect();
        let n = config.n_nodes;
        World {
            config,
            nodes: RefCell::new(nodes),
            meta: RefCell::new(BTreeMap::new()),
            writers: RefCell::new(HashMap::new()),
            gc_claims: RefCell::new(BTreeSet::new()),
            unrecorded: RefCell::new(HashMap::new()),
            up: RefCell::new(vec![true; n]),
            truth: RefCell::new(BTreeMap::new()),
            deleting: RefCell::new(BTreeSet::new()),
            answering: RefCell::new(BTreeSet::new()),
            repair_running: std::cell::Cell::new(false),
            repair_lock: std::cell::Cell::new(false),
            queue: RefCell::new(BTreeMap::new()),
            queue_notes: RefCell::new(BTreeSet::new()),
            node_news: RefCell::new(Vec::new()),
            heard: RefCell::new(vec![Default::default(); n]),
            down_since: RefCell::new(vec![None; n]),
            chaos: std::cell::Cell::new(true),
            counts: RefCell::new(Counts::default()),
        }
    }

    pub fn fault(&self, kind: &'static str) {
        *self.counts.borrow_mut().faults.entry(kind).or_default() += 1;
    }

    pub fn is_up(&self, node: Node) -> bool {
        self.up.borrow()[node]
    }

    pub fn mark(&self, node: Node, up: bool) {
        let was = std::mem::replace(&mut self.up.borrow_mut()[node], up);
        if was && !up {
            self.down_since.borrow_mut()[node] = Some(exec::now());
        } else if up {
            self.down_since.borrow_mut()[node] = None;
        }
    }

    /// What a node's handshake tells the engine: its ID. True when the engine learns it: the
    /// node's first answer, or another ID than before (its disk was replaced).
    pub fn learn(&self, node: Node, identity: u64) -> bool {
        self.heard.borrow_mut()[node].proved(identity) != dfs_core::health::Proved::Known
    }

    /// What the engine does with a failed request: a node that did not answer is marked down.
    pub fn note_failure(&self, node: Node, e: NodeErr) {
        if matches!(e, NodeErr::Unreachable | NodeErr::TimedOut) {
            self.mark(node, false);
        }
    }

    pub fn begin_writing(&self, file_id: FileId) -> Writing<'_> {
        *self.writers.borrow_mut().entry(file_id).or_default() += 1;
        Writing(self, file_id)
    }

    pub fn is_writing(&self, file_id: FileId) -> bool {
        self.writers.borrow().contains_key(&file_id)
    }

    /// One request to `node`: the network there, the node's work (`op`, applied at one instant
    /// after `disk_time` of I/O), the network back. Any of it can fail as the faults say; a
    /// reply can be lost after the work was done.
    ///
    /// The request is a task of its own: when the caller gives up at its timeout, a request the
    /// node has already read may still be carried out later, as over TCP.
    pub async fn call<T: 'static>(
        self: &Rc<Self>,
        node: Node,
        disk_time: Duration,
        op: impl FnOnce(&mut SimNode, &World) -> Result<T, NodeErr> + 'static,
    ) -> Result<T, NodeErr> {
        let timeout = self.config.request_timeout;
        let w = self.clone();
        let request =
            exec::spawn(format!("request to node {node}"), async move { w.call_inner(node, disk_time, op).await });
        match exec::timeout(timeout, request).await {
            Ok(r) => r,
            Err(exec::Elapsed) => Err(NodeErr::TimedOut),
        }
    }

    async fn call_inner<T>(
        &self,
        node: Node,
        disk_time: Duration,
        op: impl FnOnce(&mut SimNode, &World) -> Result<T, NodeErr>,
    ) -> Result<T, NodeErr> {
        exec::sleep(self.latency()).await;
        let (generation, silent_for) = {
            let nodes = self.nodes.borrow();
            let n = &nodes[node];
            let now = exec::now();
            if !n.up || n.cut_off_until > now {
                return Err(NodeErr::Unreachable);
            }
            (n.generation, n.silent_until.saturating_sub(now))
        };
        if self.chaos.get() && exec::chance(0.002) {
            self.fault("connection reset before the request");
            return Err(NodeErr::Unreachable);
        }
        // A silent node answers nothing until it wakes up, and then carries out what it had
        // read, long after the caller may have given up. (A crash meanwhile loses the request:
        // checked against the generation below.)
        exec::sleep(silent_for).await;
        let factor = {
            let nodes = self.nodes.borrow();
            if nodes[node].slow_until > exec::now() {
                nodes[node].slow_factor
            } else {
                1
            }
        };
        exec::sleep(disk_time * factor as u32).await;
        let result = {
            let mut nodes = self.nodes.borrow_mut();
            let n = &mut nodes[node];
            if !n.up || n.generation != generation {
                // Crashed during the work: a write is torn, nothing answered.
                return Err(NodeErr::Unreachable);
            }
            if n.failing_until > exec::now() && exec::chance(0.3) {
                Err(NodeErr::Io)
            } else {
                op(n, self)
            }
        };
        exec::sleep(self.latency()).await;
        if self.chaos.get() && exec::chance(0.002) {
            self.fault("reply lost after the work was done");
            return Err(NodeErr::Unreachable);
        }
        if self.nodes.borrow()[node].cut_off_until > exec::now() {
            return Err(NodeErr::Unreachable);
        }
        result
    }

    fn latency(&self) -> Duration {
        if self.chaos.get() && exec::chance(0.01) {
            Duration::from_millis(exec::random_range(5..200))
        } else {
            Duration::from_micros(exec::random_range(20..300))
        }
    }

    fn disk_time(bytes: usize) -> Duration {
        Duration::from_micros(50 + bytes as u64 / 500)
    }

    // The node's requests, as the engine's cluster layer makes them.

    /// STORE; answers with the node's ID, as the connection that wrote the copy proved it.
    pub async fn store(self: &Rc<Self>, node: Node, chunk: ChunkId, data: &[u8], crc: u32) -> Result<u64, NodeErr> {
        let data = data.to_vec();
        self.call(node, Self::disk_time(data.len()), move |n, _| {
            if crc32(&data) != crc {
                return Err(NodeErr::Corrupt);
            }
            let replaced = n.disk.get(&chunk).map_or(0, |c| c.data.len() as u64);
            if n.used() - replaced + data.len() as u64 > n.capacity {
                return Err(NodeErr::Full);
            }
            exec::trace(|| format!("node {node}: stored {chunk}"));
            n.disk.insert(chunk, Copy { data, sealed_crc: crc, written_at: exec::now() });
            Ok(n.identity)
        })
        .await
    }

    /// FETCH: the node checks the bytes against its seal before sending them, and sets aside
    /// a copy that fails, as scrub would.
    pub async fn fetch(self: &Rc<Self>, node: Node, chunk: ChunkId) -> Result<Vec<u8>, NodeErr> {
        let size = self.nodes.borrow()[node].disk.get(&chunk).map_or(0, |c| c.data.len());
        self.call(node, Self::disk_time(size), move |n, _| match n.disk.get(&chunk) {
            None => Err(NodeErr::NotFound),
            Some(c) if !c.verifies() => {
                exec::trace(|| format!("node {node}: FETCH sets aside {chunk}"));
                n.disk.remove(&chunk);
                n.n_quarantined += 1;
                Err(NodeErr::Corrupt)
            }
            Some(c) => Ok(c.data.clone()),
        })
        .await
    }

    /// EXISTS: length and crc32 from the copy's seal, without reading its bytes.
    pub async fn exists(self: &Rc<Self>, node: Node, chunk: ChunkId) -> Result<(u64, u32), NodeErr> {
        self.call(node, Self::disk_time(0), move |n, _| match n.disk.get(&chunk) {
            None => Err(NodeErr::NotFound),
            Some(c) => Ok((c.data.len() as u64, c.sealed_crc)),
        })
        .await
    }

    /// ChunkDelete; with `written_before`, only a copy stored before then (gc passes the time
    /// of its listing). Ok(false): a newer copy, kept.
    pub async fn delete(
        self: &Rc<Self>,
        node: Node,
        chunk: ChunkId,
        written_before: Option<Duration>,
        by: Deleter,
    ) -> Result<bool, NodeErr> {
        self.call(node, Self::disk_time(0), move |n, w| {
            let Some(copy) = n.disk.get(&chunk) else { return Ok(true) };
            if written_before.is_some_and(|t| copy.written_at >= t) {
                exec::trace(|| format!("node {node}: {by:?} delete of {chunk} finds a newer copy, kept"));
                return Ok(false);
            }
            exec::trace(|| format!("node {node}: {by:?} deletes {chunk}"));
            w.check_delete(node, chunk, copy, by);
            n.disk.remove(&chunk);
            Ok(true)
        })
        .await
    }

    /// CHUNKLIST: the copies on a node written at least `grace` ago, and the node's clock
    /// when it took the list.
    pub async fn chunk_list(self: &Rc<Self>, node: Node, grace: Duration) -> Result<(Vec<ChunkId>, Duration), NodeErr> {
        self.call(node, Self::disk_time(0), move |n, _| {
            let now = exec::now();
            Ok((n.disk.iter().filter(|(_, c)| c.written_at + grace <= now).map(|(id, _)| *id).collect(), now))
        })
        .await
    }

    /// NODESTAT as the pinger sends it: the node's ID and its count of copies set aside, if
    /// it answers.
    pub async fn ping(self: &Rc<Self>, node: Node) -> Option<(u64, u64)> {
        self.call(node, Duration::ZERO, |n, _| Ok((n.identity, n.n_quarantined))).await.ok()
    }

    /// SCRUB: the node re-reads every copy and quarantines those that fail their seal; the
    /// engine notes each for the repair queue.
    pub async fn scrub(self: &Rc<Self>, node: Node) -> Result<Vec<ChunkId>, NodeErr> {
        let bytes: usize = self.nodes.borrow()[node].disk.values().map(|c| c.data.len()).sum();
        self.call(node, Self::disk_time(bytes), move |n, _| {
            let bad: Vec<ChunkId> = n.disk.iter().filter(|(_, c)| !c.verifies()).map(|(id, _)| *id).collect();
            for id in &bad {
                exec::trace(|| format!("node {node}: scrub sets aside {id}"));
                n.disk.remove(id);
                n.n_quarantined += 1;
            }
            Ok(bad)
        })
        .await
        .inspect(|bad| self.queue_notes.borrow_mut().extend(bad.iter().copied()))
    }

    // Invariants checked where the action lands.

    /// gc never deletes a copy that a committed file places on this node or that a writer may
    /// be about to record; repair deletes only copies that are not sound.
    fn check_delete(&self, node: Node, chunk: ChunkId, copy: &Copy, by: Deleter) {
        match by {
            Deleter::Gc => {
                let placed = self.places(chunk, node);
                if placed || self.unrecorded.borrow().contains_key(&(chunk, node)) {
                    let committed = self.meta.borrow().contains_key(&chunk.file_id);
                    violated(format!(
                        "gc deleted {chunk} on node {node}, which {}",
                        match (placed, committed) {
                            (true, _) => "a committed file places there",
                            (false, true) => "a repair of its committed file wrote there and has not yet recorded",
                            (false, false) => "an upload in progress wrote there",
                        }
                    ));
                }
            }
            Deleter::Repair => {
                let sound = self
                    .meta
                    .borrow()
                    .get(&chunk.file_id)
                    .and_then(|r| r.chunks.get(chunk.chunk_idx as usize))
                    .is_some_and(|c| crc32(&copy.data) == c.crc32 && copy.data.len() as u64 == c.length);
                if sound {
                    violated(format!("repair deleted a sound copy of {chunk} on node {node}"));
                }
            }
            Deleter::Owner => {}
        }
    }

    /// Every chunk with a copy recorded on `node`: a scan of the metadata.
    pub fn chunks_on(&self, node: Node) -> Vec<ChunkId> {
        let meta = self.meta.borrow();
        let mut out = Vec::new();
        for (file_id, r) in meta.iter() {
            for (idx, c) in r.chunks.iter().enumerate() {
                if c.placement.contains(&node) {
                    out.push(ChunkId { file_id: *file_id, chunk_idx: idx as u32 });
                }
            }
        }
        out
    }

    pub fn places(&self, chunk: ChunkId, node: Node) -> bool {
        self.meta
            .borrow()
            .get(&chunk.file_id)
            .and_then(|r| r.chunks.get(chunk.chunk_idx as usize))
            .is_some_and(|c| c.placement.contains(&node))
    }

    /// Sound copies of `chunk` (recorded crc32 `crc`) on the nodes of `placement`.
    pub fn sound_copies(&self, chunk: ChunkId, c: &ChunkRec) -> usize {
        let nodes = self.nodes.borrow();
        c.placement
            .iter()
            .filter(|&&n| {
                nodes[n]
                    .disk
                    .get(&chunk)
                    .is_some_and(|copy| copy.data.len() as u64 == c.length && crc32(&copy.data) == c.crc32)
            })
            .count()
    }
}

/// Marks copies as written but not yet recorded while it lives.
pub struct Unrecorded<'a>(&'a World, Vec<(ChunkId, Node)>);

impl<'a> Unrecorded<'a> {
    pub fn new(w: &'a World) -> Self {
        Unrecorded(w, Vec::new())
    }

    pub fn add(&mut self, chunk: ChunkId, node: Node) {
        *self.0.unrecorded.borrow_mut().entry((chunk, node)).or_default() += 1;
        self.1.push((chunk, node));
    }
}

impl Drop for Unrecorded<'_> {
    fn drop(&mut self) {
        let mut map = self.0.unrecorded.borrow_mut();
        for key in &self.1 {
            let n = map.get_mut(key).expect("registered");
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}

/// Keeps a file ID registered as being written while it lives.
pub struct Writing<'a>(&'a World, FileId);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut writers = self.0.writers.borrow_mut();
        let n = writers.get_mut(&self.1).expect("a registered writer");
        *n -= 1;
        if *n == 0 {
            writers.remove(&self.1);
        }
    }
}
