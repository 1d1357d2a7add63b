//! What repair does with one chunk, decided from what checking its recorded copies found. The
//! rule it keeps: repair never lowers the number of copies that may be sound. Only a copy
//! proven missing or corrupt is replaced; a copy that could not be checked, or that is on a
//! node believed down, is kept.
//!
//! [`repair_chunk`] is the procedure itself, over the I/O a [`RepairIo`] supplies: the engine
//! runs it over its nodes and metadata, `dfs-sim` over simulated ones.

use dfs_proto::{ChunkId, FileId};

/// What checking one chunk's recorded copies found, node by node. Every recorded node is in
/// exactly one list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<N> {
    pub sound: Vec<N>,
    /// The node answered that it holds no such chunk.
    pub missing: Vec<N>,
    /// Proven bad: other bytes than were stored, or a copy that fails verification.
    pub corrupt: Vec<N>,
    /// The check failed for a reason that says nothing about the copy.
    pub unknown: Vec<N>,
    /// The node did not answer.
    pub down: Vec<N>,
}

impl<N: Copy + PartialEq + std::fmt::Debug> Checked<N> {
    pub fn new() -> Self {
        Checked { sound: Vec::new(), missing: Vec::new(), corrupt: Vec::new(), unknown: Vec::new(), down: Vec::new() }
    }

    fn lists(&self) -> [&Vec<N>; 5] {
        [&self.sound, &self.missing, &self.corrupt, &self.unknown, &self.down]
    }

    /// Asserts that the findings name each recorded node exactly once.
    fn assert_covers(&self, recorded: &[N]) {
        let n_found: usize = self.lists().iter().map(|l| l.len()).sum();
        assert_eq!(n_found, recorded.len(), "one finding per recorded copy: {self:?} for {recorded:?}");
        for r in recorded {
            let n = self.lists().iter().filter(|l| l.contains(r)).count();
            assert_eq!(n, 1, "recorded copy on {r:?} found {n} times: {self:?}");
        }
    }
}

impl<N: Copy + PartialEq + std::fmt::Debug> Default for Checked<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// What repair does with one chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan<N> {
    /// Every copy was proven missing or corrupt.
    Lost,
    /// No copy is known sound, but some could not be checked (unknown, or on a down node).
    Unavailable,
    /// Keep these copies (sound, or not proven bad), in their recorded order, and, while the
    /// chunk is short of R, try these destinations in order: a node that answered but lost its
    /// copy gets it back first, then other nodes (up first), and only then a node holding a
    /// corrupt copy (true: delete that copy before writing).
    Repair { keep: Vec<N>, dests: Vec<(N, bool)> },
}

/// Decides what repair does with a chunk recorded on `recorded`, given what the checks found,
/// the cluster's nodes with those believed up first, and the copies it should have. It never
/// plans to lower the number of copies that may be sound.
pub fn plan<N: Copy + PartialEq + std::fmt::Debug>(
    recorded: &[N],
    c: &Checked<N>,
    nodes_up_first: &[N],
    replicas: usize,
) -> Plan<N> {
    c.assert_covers(recorded);
    if c.sound.is_empty() {
        return if c.unknown.is_empty() && c.down.is_empty() { Plan::Lost } else { Plan::Unavailable };
    }
    let keep: Vec<N> = recorded.iter().filter(|a| c.sound.contains(a) || c.unknown.contains(a)).copied().collect();
    let dests: Vec<(N, bool)> = if keep.len() < replicas {
        let others = nodes_up_first.iter().filter(|d| !recorded.contains(d));
        c.missing
            .iter()
            .map(|&d| (d, false))
            .chain(others.map(|&d| (d, false)))
            .chain(c.corrupt.iter().map(|&d| (d, true)))
            .collect()
    } else {
        Vec::new()
    };
    assert!(keep.len() >= c.sound.len() + c.unknown.len(), "every copy that may be sound is kept");
    assert!(dests.iter().all(|(d, _)| !keep.contains(d)), "no destination already holds a kept copy");
    assert!(
        dests.iter().all(|&(d, delete_first)| !delete_first || c.corrupt.contains(&d)),
        "only a copy proven corrupt is ever deleted to make room"
    );
    Plan::Repair { keep, dests }
}

/// A chunk left short of R keeps pointing at its copies on down nodes, up to R: they may come
/// back.
pub fn keep_copies_on_down_nodes<N: Copy + PartialEq>(placement: &mut Vec<N>, down: &[N], replicas: usize) {
    let before = placement.len();
    let short = replicas.saturating_sub(placement.len());
    placement.extend(down.iter().copied().filter(|d| !placement.contains(d)).take(short).collect::<Vec<_>>());
    assert!(placement.len() >= before && placement.len() <= before.max(replicas), "only the copies short are added");
    assert!(placement.iter().enumerate().all(|(i, n)| !placement[..i].contains(n)), "a placement names each node once");
}

/// Why a chunk was put on the repair queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// A read found a copy missing, corrupt or unreachable.
    ReadFailed,
    /// A node holding a copy has been down for longer than the engine waits.
    NodeDown,
    /// A node answered with another ID at the address of one that held a copy: its data
    /// directory was replaced.
    NodeReplaced,
    /// A scrub quarantined a copy.
    Quarantined,
    /// A full repair pass left it unsettled.
    Audit,
}

impl Reason {
    pub const ALL: [Reason; 5] =
        [Reason::ReadFailed, Reason::NodeDown, Reason::NodeReplaced, Reason::Quarantined, Reason::Audit];

    pub fn code(self) -> u8 {
        match self {
            Reason::ReadFailed => 1,
            Reason::NodeDown => 2,
            Reason::NodeReplaced => 3,
            Reason::Quarantined => 4,
            Reason::Audit => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::ReadFailed => "read failed",
            Reason::NodeDown => "node down",
            Reason::NodeReplaced => "node replaced",
            Reason::Quarantined => "quarantined",
            Reason::Audit => "left unsettled by a full pass",
        }
    }
}

/// How repairing one chunk ended, for the repair queue: whether the chunk is settled or
/// must be looked at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// R copies, all found sound: nothing was done.
    Sound,
    /// Copies were made (or placements moved) and the chunk is back to R.
    Repaired,
    /// Fewer than R copies, and no other node could take one now.
    Short,
    /// Left as it was because a copy could not be checked.
    Unchecked,
    /// No copy is known sound, but some could not be checked.
    Unavailable,
    /// Every copy is proven missing or corrupt: nothing left to copy from.
    Lost,
    /// The file was deleted meanwhile.
    Gone,
}

impl Outcome {
    /// Whether the queue can forget the chunk. A chunk short of copies, unchecked or
    /// unavailable is tried again later; a lost one stays reported by the audit pass.
    pub fn settled(self) -> bool {
        matches!(self, Outcome::Sound | Outcome::Repaired | Outcome::Lost | Outcome::Gone)
    }
}

/// What repairing one chunk did, for [`outcome`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Done {
    /// Fewer than R copies in the new placement.
    pub short: bool,
    /// A copy repair read from, taken for sound by its check, turned out missing or corrupt
    /// (the node set it aside): the placement may still name it.
    pub source_proven_bad: bool,
    /// Some copy could not be checked.
    pub unchecked: bool,
    /// Copies were made or the placement changed.
    pub changed: bool,
}

/// How repairing one chunk ended, from what it did. A chunk whose copy turned out bad while
/// repair read from it is not settled: the next try finds that copy missing and replaces it
/// (found by `dfs-sim`: settling it left the chunk a copy short, recorded where none was).
pub fn outcome(done: Done) -> Outcome {
    if done.short || done.source_proven_bad {
        Outcome::Short
    } else if done.unchecked {
        Outcome::Unchecked
    } else if done.changed {
        Outcome::Repaired
    } else {
        Outcome::Sound
    }
}

/// How long the queue waits before trying a chunk again after `attempts` unsettled tries:
/// 5 s, doubling, at most an hour.
pub fn retry_after(attempts: u32) -> std::time::Duration {
    let secs = 5u64.saturating_mul(1u64 << attempts.min(20)).min(3600);
    assert!((5..=3600).contains(&secs), "a retry waits between 5 s and an hour: {secs}");
    std::time::Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(sound: &[u16], missing: &[u16], corrupt: &[u16], unknown: &[u16], down: &[u16]) -> Checked<u16> {
        Checked {
            sound: sound.to_vec(),
            missing: missing.to_vec(),
            corrupt: corrupt.to_vec(),
            unknown: unknown.to_vec(),
            down: down.to_vec(),
        }
    }

    fn all(k: u16) -> Vec<u16> {
        (1..=k).collect()
    }

    #[test]
    fn a_chunk_with_no_sound_copy_is_lost_only_when_every_copy_is_proven_bad() {
        let recorded = [1, 2];
        assert_eq!(plan(&recorded, &checked(&[], &[1], &[2], &[], &[]), &all(5), 2), Plan::Lost);
        assert_eq!(plan(&recorded, &checked(&[], &[1], &[], &[], &[2]), &all(5), 2), Plan::Unavailable);
        assert_eq!(plan(&recorded, &checked(&[], &[], &[1], &[2], &[]), &all(5), 2), Plan::Unavailable);
    }

    #[test]
    fn a_node_that_lost_its_copy_gets_it_back_first_and_corrupt_holders_come_last() {
        // Copy on 2 missing (a replaced disk), copy on 3 corrupt, R = 3; nodes 4 and 5 are free.
        let p = plan(&[1, 2, 3], &checked(&[1], &[2], &[3], &[], &[]), &all(5), 3);
        assert_eq!(p, Plan::Repair { keep: vec![1], dests: vec![(2, false), (4, false), (5, false), (3, true)] });
    }

    #[test]
    fn copies_that_could_not_be_checked_are_kept_and_count() {
        // One sound copy and one that could not be checked: with R = 2 nothing is copied.
        let p = plan(&[1, 2], &checked(&[2], &[], &[], &[1], &[]), &all(4), 2);
        assert_eq!(p, Plan::Repair { keep: vec![1, 2], dests: vec![] });
    }

    #[test]
    fn new_copies_go_to_nodes_believed_up_first() {
        let p = plan(&[1, 2], &checked(&[1], &[], &[], &[], &[2]), &[4, 1, 2, 3], 2);
        assert_eq!(p, Plan::Repair { keep: vec![1], dests: vec![(4, false), (3, false)] });
    }

    #[test]
    #[should_panic(expected = "one finding per recorded copy")]
    fn findings_that_leave_out_a_recorded_copy_are_refused() {
        plan(&[1, 2], &checked(&[1], &[], &[], &[], &[]), &all(4), 2);
    }

    #[test]
    fn a_chunk_left_short_keeps_pointing_at_copies_on_down_nodes() {
        let mut placement = vec![1];
        keep_copies_on_down_nodes(&mut placement, &[2, 3], 2);
        assert_eq!(placement, vec![1, 2]);
        let mut full = vec![1, 4];
        keep_copies_on_down_nodes(&mut full, &[2], 2);
        assert_eq!(full, vec![1, 4]);
    }

    #[test]
    fn the_queue_backs_off_from_five_seconds_to_an_hour() {
        let secs: Vec<u64> = (0..12).map(|a| retry_after(a).as_secs()).collect();
        assert_eq!(secs[..4], [5, 10, 20, 40]);
        assert_eq!(retry_after(u32::MAX).as_secs(), 3600);
        assert!(secs.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_chunk_whose_source_copy_turned_out_bad_is_tried_again() {
        let done = Done { changed: true, source_proven_bad: true, ..Done::default() };
        assert_eq!(outcome(done), Outcome::Short);
        assert!(!outcome(done).settled());
        assert_eq!(outcome(Done { changed: true, ..Done::default() }), Outcome::Repaired);
        assert_eq!(outcome(Done::default()), Outcome::Sound);
        assert_eq!(outcome(Done { unchecked: true, changed: true, ..Done::default() }), Outcome::Unchecked);
    }

    #[test]
    fn only_chunks_that_can_still_change_stay_queued() {
        assert!(Outcome::Repaired.settled() && Outcome::Sound.settled() && Outcome::Lost.settled());
        assert!(!Outcome::Short.settled() && !Outcome::Unchecked.settled() && !Outcome::Unavailable.settled());
    }
}

/// What checking one recorded copy found (an EXISTS, its answer against the recorded length
/// and crc32), as the I/O layer reports it.
#[derive(Debug)]
pub enum Found<E> {
    Sound,
    /// The node answered that it holds no such chunk.
    Missing,
    /// Proven bad: what the node holds, against what was stored.
    Corrupt(String),
    /// The check failed for a reason that says nothing about the copy.
    Unknown(E),
    /// The node did not answer.
    Down(E),
}

/// Why a copy from one node to another failed.
#[derive(Debug)]
pub enum CopyFailed<E> {
    /// The source could not supply verified bytes; `proven_bad` when it answered that it holds
    /// no such chunk or other bytes (it has set the copy aside).
    Source { proven_bad: bool, error: E },
    /// The destination failed: no other source is tried for it.
    Destination(E),
}

/// The answer of the metadata's compare-and-set of a chunk's placement.
#[derive(Debug)]
pub enum Placed<E> {
    Set,
    /// The file was deleted meanwhile: new copies are orphans for gc.
    FileGone,
    /// Another repair moved the chunk since its record was read.
    Changed,
    Failed(E),
}

/// The I/O that repairing one chunk needs: the nodes (check a copy, copy one verified, delete
/// one), the engine's view of them, the writers and gc's claims, and the metadata's
/// compare-and-set. The engine implements it over its sockets and metadata store
/// (`engine/src/repair.rs`), `dfs-sim` over its simulated cluster; [`repair_chunk`] is the one
/// procedure both run.
#[allow(async_fn_in_trait)]
pub trait RepairIo {
    type Node: Copy + PartialEq + std::fmt::Debug + std::fmt::Display;
    /// What a node proves on the connection that wrote a copy (its ID).
    type Proof;
    /// Keeps the chunk's file registered as being written while it lives.
    type Writing;
    type Error: std::fmt::Display;

    fn replicas(&self) -> usize;
    /// Every node of the cluster, those believed up first.
    fn nodes_up_first(&self) -> Vec<Self::Node>;
    fn is_up(&self, node: Self::Node) -> bool;
    fn mark_down(&self, node: Self::Node, why: &str);
    async fn check(&self, node: Self::Node, chunk: ChunkId) -> Found<Self::Error>;
    /// Registers the file as being written (gc keeps off its copies) until the guard drops.
    async fn begin_writing(&self, file_id: FileId) -> Result<Self::Writing, Self::Error>;
    /// A copy of `chunk` is about to be written to `node` under `writing`.
    fn will_write(&self, writing: &mut Self::Writing, chunk: ChunkId, node: Self::Node);
    /// Whether gc holds a claim on the copy of `chunk` on `node` (it is deleting it).
    fn claimed_by_gc(&self, chunk: ChunkId, node: Self::Node) -> bool;
    async fn delete(&self, node: Self::Node, chunk: ChunkId) -> Result<(), Self::Error>;
    /// Copies `chunk` from `source` to `dest`, every block verified against the record on the
    /// way, durable on `dest` when it returns Ok.
    async fn copy(
        &self,
        source: Self::Node,
        dest: Self::Node,
        chunk: ChunkId,
    ) -> Result<Self::Proof, CopyFailed<Self::Error>>;
    /// A copy has landed (for pacing and counting).
    async fn copied(&self);
    /// Points the chunk at `placement` if it is still recorded on `recorded`; `made` names the
    /// new copies with what their nodes proved.
    async fn set_placement(
        &self,
        chunk: ChunkId,
        recorded: &[Self::Node],
        placement: &[Self::Node],
        made: &[(Self::Node, Self::Proof)],
    ) -> Placed<Self::Error>;
}

/// What repairing one chunk has to say, for the engine's log and the pass's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// Every copy is missing or corrupt (an error).
    Lost(String),
    /// No copy could be read now (an error).
    Unavailable(String),
    /// Fewer than R copies, and no other node could take one (a warning).
    Short(String),
    /// Left as it was, to be checked again (reported).
    Unsettled(String),
    /// The new placement is recorded (logged).
    Placed(String),
    /// A corrupt copy no longer recorded could not be deleted (a warning; gc will).
    CorruptKept(String),
}

/// What repairing one chunk did.
#[derive(Debug)]
pub struct Repaired {
    pub outcome: Outcome,
    pub copies_made: u64,
    pub said: Vec<Said>,
}

/// Brings one chunk, recorded on `recorded`, back to R sound copies without ever lowering the
/// number it has: only a copy proven missing or corrupt is replaced, a new copy is durable
/// and verified before the metadata points at it, and a corrupt copy is deleted only after
/// that (or to make room for a sound copy on the same node, when no other node can take one).
pub async fn repair_chunk<I: RepairIo>(io: &I, chunk: ChunkId, recorded: &[I::Node]) -> Repaired {
    let replicas = io.replicas();
    assert!(replicas > 0, "a chunk wants at least one copy");
    let mut said = Vec::new();
    let mut checked = Checked::new();
    let mut findings = Vec::new();
    for &node in recorded {
        if !io.is_up(node) {
            findings.push(format!("node {node} is down"));
            checked.down.push(node);
            continue;
        }
        match io.check(node, chunk).await {
            Found::Sound => checked.sound.push(node),
            Found::Missing => {
                findings.push(format!("copy on {node} is missing"));
                checked.missing.push(node);
            }
            Found::Corrupt(why) => {
                findings.push(format!("copy on {node} is corrupt: {why}"));
                checked.corrupt.push(node);
            }
            Found::Unknown(e) => {
                findings.push(format!("copy on {node} could not be checked: {e}"));
                checked.unknown.push(node);
            }
            Found::Down(e) => {
                let why = e.to_string();
                io.mark_down(node, &why);
                findings.push(format!("node {node} is down: {why}"));
                checked.down.push(node);
            }
        }
    }
    let (mut placement, dests) = match plan(recorded, &checked, &io.nodes_up_first(), replicas) {
        Plan::Repair { keep, dests } => (keep, dests),
        Plan::Lost => {
            said.push(Said::Lost(format!("{chunk}: lost, every copy is missing or corrupt ({})", findings.join("; "))));
            return Repaired { outcome: Outcome::Lost, copies_made: 0, said };
        }
        Plan::Unavailable => {
            let line = format!("{chunk}: unavailable now, no copy could be read ({})", findings.join("; "));
            said.push(Said::Unavailable(line));
            return Repaired { outcome: Outcome::Unavailable, copies_made: 0, said };
        }
    };
    let Checked { sound, mut corrupt, unknown, down, .. } = checked;
    if !unknown.is_empty() {
        said.push(Said::Unsettled(format!(
            "{chunk}: left as it is, to check again next pass ({})",
            findings.join("; ")
        )));
    }
    // A new copy is an orphan to gc until the metadata points at it.
    let mut writing = match io.begin_writing(chunk.file_id).await {
        Ok(w) => w,
        Err(e) => {
            said.push(Said::Unsettled(format!("{chunk}: not repaired now: {e}")));
            return Repaired { outcome: Outcome::Unavailable, copies_made: 0, said };
        }
    };
    // The new copies, each with what its node proved on the connection that wrote it.
    let mut made: Vec<(I::Node, I::Proof)> = Vec::new();
    let mut source_proven_bad = false;
    for (dest, holds_corrupt_copy) in dests {
        if placement.len() >= replicas {
            break;
        }
        if !io.is_up(dest) {
            continue;
        }
        // Registered as a writer above, before this look: a gc pass that claims the chunk here
        // later sees the writer and keeps off.
        if io.claimed_by_gc(chunk, dest) {
            findings.push(format!("not copied to {dest}: gc is deleting an old copy there"));
            continue;
        }
        if holds_corrupt_copy {
            if let Err(e) = io.delete(dest, chunk).await {
                findings.push(format!("corrupt copy on {dest} not removed: {e}"));
                continue;
            }
            corrupt.retain(|&n| n != dest);
        }
        io.will_write(&mut writing, chunk, dest);
        // From the first sound copy that supplies verified bytes.
        let mut why = Vec::new();
        let mut proof = None;
        for &source in &sound {
            match io.copy(source, dest, chunk).await {
                Ok(p) => {
                    proof = Some(p);
                    break;
                }
                Err(CopyFailed::Source { proven_bad, error }) => {
                    source_proven_bad |= proven_bad;
                    why.push(format!("source {source}: {error}"));
                }
                Err(CopyFailed::Destination(e)) => {
                    why.push(e.to_string());
                    break;
                }
            }
        }
        match proof {
            Some(p) => {
                io.copied().await;
                placement.push(dest);
                made.push((dest, p));
            }
            None => findings.push(format!("copy to {dest} failed: {}", why.join("; "))),
        }
    }
    let copies_made = made.len() as u64;
    let short = placement.len() < replicas;
    if short {
        said.push(Said::Short(format!(
            "{chunk}: {} of {replicas} copies, no other node could take one ({})",
            placement.len(),
            findings.join("; ")
        )));
        keep_copies_on_down_nodes(&mut placement, &down, replicas);
    }
    assert!(
        sound.iter().chain(&unknown).all(|n| placement.contains(n)),
        "every copy that may be sound stays recorded: {placement:?}"
    );
    if placement != recorded {
        match io.set_placement(chunk, recorded, &placement, &made).await {
            Placed::Set => said.push(Said::Placed(format!("{chunk} now on {placement:?} (was {recorded:?})"))),
            Placed::FileGone => return Repaired { outcome: Outcome::Gone, copies_made, said },
            Placed::Changed => {
                said.push(Said::Unsettled(format!("{chunk}: placement changed meanwhile; left to the next look")));
                return Repaired { outcome: Outcome::Short, copies_made, said };
            }
            Placed::Failed(e) => {
                said.push(Said::Unsettled(format!("{chunk}: cannot record new copies: {e}")));
                return Repaired { outcome: Outcome::Short, copies_made, said };
            }
        }
    }
    // Corrupt copies the metadata no longer points at go last.
    for node in corrupt.into_iter().filter(|n| !placement.contains(n)) {
        if let Err(e) = io.delete(node, chunk).await {
            said.push(Said::CorruptKept(format!("corrupt copy of {chunk} on {node} not removed (gc will): {e}")));
        }
    }
    let outcome = outcome(Done {
        short,
        source_proven_bad,
        unchecked: !unknown.is_empty(),
        changed: !made.is_empty() || placement != recorded,
    });
    Repaired { outcome, copies_made, said }
}

/// Chunks one turn of the repair queue tries at most.
pub const QUEUE_BATCH: usize = 256;

/// What one turn of the repair queue did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct QueueTurn {
    /// Chunks newly queued this turn.
    pub n_queued: u64,
    pub n_tried: u64,
    pub n_settled: u64,
}

/// The I/O a turn of the repair queue needs: its feeds (notes from the request paths, the node
/// table's news, nodes down for long), the queue itself (kept in the engine's metadata), the
/// cluster's repair pass, and the repair of one chunk. The engine implements it over its
/// metadata and nodes (`engine/src/repair.rs`), `dfs-sim` over its simulated cluster;
/// [`queue_turn`] is the one procedure both run.
#[allow(async_fn_in_trait)]
pub trait QueueIo {
    type Node: Copy + Ord + std::fmt::Debug;
    type Error: std::fmt::Display;

    /// The queue's clock, in milliseconds.
    fn now_ms(&self) -> u64;
    /// What the request paths noted since the last turn (a read or a scrub that met a bad or
    /// missing copy).
    fn take_notes(&self) -> Vec<(ChunkId, Reason)>;
    /// What the node table learned since the last turn, as chunks to check: copies recorded
    /// under an ID their node no longer answers with, copies on a node that set copies aside.
    async fn take_news(&self) -> Result<Vec<(ChunkId, Reason)>, Self::Error>;
    /// The nodes believed down, and for how long.
    fn down_for(&self) -> Vec<(Self::Node, std::time::Duration)>;
    /// Every chunk with a copy recorded on `node` (a node down for long).
    async fn chunks_on(&self, node: Self::Node) -> Result<Vec<ChunkId>, Self::Error>;
    /// Queues `entries` (chunk, why, when noted); returns how many were not queued before.
    async fn add(&self, entries: &[(ChunkId, Reason, u64)], now_ms: u64) -> Result<u64, Self::Error>;
    /// Whether this engine may repair now: it holds the cluster's repair pass.
    fn may_repair(&self) -> bool;
    /// Up to `limit` chunks due at `now_ms`, with the tries each has had.
    async fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<(ChunkId, u32)>, Self::Error>;
    /// Asks every node believed down whether it is back, before copies are written off.
    async fn probe_down_nodes(&self);
    /// Repairs one chunk from its record as it is now ([`Outcome::Gone`] if its file is).
    async fn repair(&self, chunk: ChunkId) -> Result<Outcome, Self::Error>;
    /// Forgets `settled`; reschedules `retry` (chunk, tries so far, due again at).
    async fn settle(&self, settled: &[ChunkId], retry: &[(ChunkId, u32, u64)]) -> Result<(), Self::Error>;
}

/// One turn of the repair queue: queues what it has heard of since the last turn (notes, the
/// node table's news, the copies of nodes down for longer than `after_down`, once per down
/// spell: `down_queued` holds the nodes queued for the spell they are in), then, if it may
/// repair, tries the chunks that are due, settling each or scheduling it again.
pub async fn queue_turn<Q: QueueIo>(
    q: &Q,
    after_down: std::time::Duration,
    down_queued: &mut std::collections::BTreeSet<Q::Node>,
) -> Result<QueueTurn, Q::Error> {
    let now = q.now_ms();
    let mut entries: Vec<(ChunkId, Reason, u64)> = q.take_notes().into_iter().map(|(c, r)| (c, r, now)).collect();
    entries.extend(q.take_news().await?.into_iter().map(|(c, r)| (c, r, now)));
    let down = q.down_for();
    // A node that came back since its copies were queued starts a new spell when it goes down.
    down_queued.retain(|n| down.iter().any(|(d, _)| d == n));
    for (node, for_how_long) in down {
        if for_how_long < after_down || down_queued.contains(&node) {
            continue;
        }
        entries.extend(q.chunks_on(node).await?.into_iter().map(|c| (c, Reason::NodeDown, now)));
        down_queued.insert(node);
    }
    let mut turn = QueueTurn { n_queued: q.add(&entries, now).await?, ..QueueTurn::default() };
    if !q.may_repair() {
        return Ok(turn);
    }
    let due = q.due(now, QUEUE_BATCH).await?;
    assert!(due.len() <= QUEUE_BATCH, "a turn takes at most a batch");
    if due.is_empty() {
        return Ok(turn);
    }
    q.probe_down_nodes().await;
    let (mut settled, mut retry) = (Vec::new(), Vec::new());
    for (chunk, attempts) in due {
        if !q.may_repair() {
            break;
        }
        turn.n_tried += 1;
        if q.repair(chunk).await?.settled() {
            settled.push(chunk);
        } else {
            let attempts = attempts.saturating_add(1);
            retry.push((chunk, attempts, q.now_ms() + retry_after(attempts).as_millis() as u64));
        }
    }
    turn.n_settled = settled.len() as u64;
    assert_eq!(settled.len() + retry.len(), turn.n_tried as usize, "every chunk tried is settled or rescheduled");
    q.settle(&settled, &retry).await?;
    Ok(turn)
}

/// What a full repair pass needs: the nodes believed down probed first, the files listed a page
/// at a time, each file's record read as it is now, the repair of one of its chunks, and where
/// a chunk the pass could not settle goes (the repair queue). The engine implements it over its
/// metadata and nodes (`engine/src/repair.rs`), `dfs-sim` over its simulated cluster;
/// [`full_pass`] is the one procedure both run.
#[allow(async_fn_in_trait)]
pub trait PassIo {
    /// A file's record.
    type Record;
    type Error;

    /// Asks every node believed down whether it is back, before the pass reads anything.
    async fn probe_down_nodes(&self);
    /// Files after `after` (all from the start with None), in order, with their chunk counts,
    /// and whether more follow.
    async fn list(&self, after: Option<FileId>) -> Result<(Vec<(FileId, u64)>, bool), Self::Error>;
    /// A file's record as it is now: None if it was deleted since it was listed.
    async fn record(&self, file_id: FileId) -> Result<Option<Self::Record>, Self::Error>;
    /// The number of chunks of `record`.
    fn n_chunks(record: &Self::Record) -> usize;
    /// Repairs chunk `chunk` of `record`; true if it settled (it has the copies it should).
    async fn repair_chunk(&self, record: &Self::Record, chunk: ChunkId) -> bool;
    /// A chunk the pass could not settle: the repair queue tries it again.
    fn note_unsettled(&self, chunk: ChunkId);
    /// Whether the pass was lost (its lease lapsed and another engine may run it): it stops.
    fn lost(&self) -> bool;
    /// The chunks done so far of the total (every chunk of every file listed).
    async fn progress(&self, n_done: u64, n_total: u64);
}

/// Why a full pass stopped before its end.
#[derive(Debug, PartialEq, Eq)]
pub enum PassStopped<E> {
    /// The files or a record could not be read.
    Failed(E),
    /// The pass was lost ([`PassIo::lost`]).
    Lost,
}

/// What a full pass went through.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassCount {
    /// Files whose record was read (not deleted since they were listed).
    pub n_files: u64,
    pub n_chunks: u64,
    /// Chunks left to the repair queue.
    pub n_unsettled: u64,
}

/// A full repair pass: every chunk of every file listed at its start, each repaired from its
/// record as it is when the pass reaches it (a file deleted meanwhile is passed over), and
/// whatever could not be settled left to the repair queue. Stops between files once the pass
/// is lost.
pub async fn full_pass<P: PassIo>(io: &P) -> Result<PassCount, PassStopped<P::Error>> {
    io.probe_down_nodes().await;
    // The file list first, so progress has a total.
    let mut files: Vec<(FileId, u64)> = Vec::new();
    let mut after = None;
    loop {
        let (page, more) = io.list(after).await.map_err(PassStopped::Failed)?;
        assert!(
            page.windows(2).all(|w| w[0].0 < w[1].0) && after.is_none_or(|a| page.first().is_none_or(|f| f.0 > a)),
            "files are listed in order, each page after the last"
        );
        files.extend(page.iter().copied());
        match (more, page.last()) {
            (true, Some(last)) => after = Some(last.0),
            _ => break,
        }
    }
    let n_total: u64 = files.iter().map(|(_, n)| n).sum();
    let mut count = PassCount::default();
    let mut n_done = 0u64;
    for (file_id, n_listed) in files {
        if io.lost() {
            return Err(PassStopped::Lost);
        }
        let Some(record) = io.record(file_id).await.map_err(PassStopped::Failed)? else {
            n_done += n_listed;
            continue;
        };
        count.n_files += 1;
        for chunk_idx in 0..P::n_chunks(&record) {
            let chunk = ChunkId { file_id, chunk_idx: chunk_idx as u32 };
            count.n_chunks += 1;
            if !io.repair_chunk(&record, chunk).await {
                io.note_unsettled(chunk);
                count.n_unsettled += 1;
            }
            n_done += 1;
            io.progress(n_done.min(n_total), n_total).await;
        }
    }
    assert!(count.n_unsettled <= count.n_chunks, "a chunk is left unsettled at most once");
    Ok(count)
}
