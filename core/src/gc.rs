//! gc's rule for one chunk copy found on a node, older than the grace period: delete it only if
//! no committed file places it there and no upload or repair is writing its file.
//!
//! The rule is a state machine because the answers come from different places at different
//! times (the uploads in progress, the metadata), and commits happen between them. It asks in
//! the order that keeps it safe:
//!
//! 1. Is the file being written? A writer registers before its first copy exists and
//!    unregisters only after its metadata commit, so if no writer is seen now, any commit of
//!    this file has already happened...
//! 2. ...and the record read after that sees it. Asked the other way round, an upload that
//!    commits between the two answers is missed by both, and its copy is deleted.
//! 3. Before deleting, gc claims the copy, and only then looks at both again, with a fresh
//!    record (the caller may answer step 2 from a cache shared by the chunks of one file, and
//!    a repair may have pointed the chunk at this node since). The claim is what makes the
//!    delete safe against a repair that starts after the second look and would copy the chunk
//!    to this very node: repair registers as a writer first and then skips a node where the
//!    chunk is claimed, so of the two, at least one sees the other. The caller holds the
//!    claim from its [`Answer::Claimed`] until it has acted on the verdict (the DELETE has
//!    returned). Found by `dfs-sim`: without the claim, gc's DELETE, slow on the network, landed
//!    after a repair had copied the chunk there and recorded it.
//!
//! The caller answers each [`Ask`] with the matching [`Answer`] and acts on the [`Verdict`].

use dfs_proto::msg::push_report_line;
use dfs_proto::{ChunkId, FileId};

/// A question the machine needs answered before it can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Is an upload or a repair writing this chunk's file right now?
    Writers,
    /// Does the file's committed record place this chunk on this node? A record cached for the
    /// same file may answer.
    Record,
    /// The same, from a fresh read of the metadata (never from a cache).
    FreshRecord,
    /// Claim this copy for deletion, so that repair writes no copy of the chunk to this node
    /// while the claim is held.
    Claim,
}

/// The answer to an [`Ask`]: `Writers` to [`Ask::Writers`], `Placed` to the two record
/// questions, `Claimed(true)` once the claim is registered, `Claimed(false)` if another gc
/// pass holds it already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Writers(bool),
    Placed(bool),
    Claimed(bool),
}

/// What gc does with the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Being written: not gc's business.
    Writing,
    /// A committed file places it on this node.
    Referenced,
    /// An orphan, found on the first look; in a dry run, reported and left.
    Orphan,
    /// An orphan on both looks: delete it.
    Delete,
    /// Taken for an orphan on the first look, but the second found it written or placed, or
    /// another gc pass had claimed it.
    KeptOnSecondLook,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Ask(Ask),
    Done(Verdict),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Writers,
    Record,
    Claim,
    WritersAgain,
    RecordAgain,
    Done,
}

/// gc's decision for one copy of `chunk` on one node.
#[derive(Debug)]
pub struct OrphanCheck {
    chunk: ChunkId,
    dry_run: bool,
    step: Step,
}

impl OrphanCheck {
    /// Starts the check; the first question is returned with it.
    pub fn new(chunk: ChunkId, dry_run: bool) -> (Self, Next) {
        (OrphanCheck { chunk, dry_run, step: Step::Writers }, Next::Ask(Ask::Writers))
    }

    pub fn chunk(&self) -> ChunkId {
        self.chunk
    }

    /// Takes the answer to the last question and returns the next question or the verdict.
    pub fn answer(&mut self, answer: Answer) -> Next {
        let next = match (self.step, answer) {
            (Step::Writers, Answer::Writers(true)) => self.done(Verdict::Writing),
            (Step::Writers, Answer::Writers(false)) => self.ask(Step::Record, Ask::Record),
            (Step::Record, Answer::Placed(true)) => self.done(Verdict::Referenced),
            (Step::Record, Answer::Placed(false)) if self.dry_run => self.done(Verdict::Orphan),
            (Step::Record, Answer::Placed(false)) => self.ask(Step::Claim, Ask::Claim),
            (Step::Claim, Answer::Claimed(true)) => self.ask(Step::WritersAgain, Ask::Writers),
            (Step::Claim, Answer::Claimed(false)) => self.done(Verdict::KeptOnSecondLook),
            (Step::WritersAgain, Answer::Writers(true)) => self.done(Verdict::KeptOnSecondLook),
            (Step::WritersAgain, Answer::Writers(false)) => self.ask(Step::RecordAgain, Ask::FreshRecord),
            (Step::RecordAgain, Answer::Placed(true)) => self.done(Verdict::KeptOnSecondLook),
            (Step::RecordAgain, Answer::Placed(false)) => self.done(Verdict::Delete),
            (step, answer) => panic!("gc check of {}: answer {answer:?} does not fit step {step:?}", self.chunk),
        };
        assert!(
            !matches!(next, Next::Done(Verdict::Delete)) || (!self.dry_run && self.step == Step::Done),
            "a delete is decided only after both looks, never in a dry run"
        );
        next
    }

    fn ask(&mut self, step: Step, ask: Ask) -> Next {
        self.step = step;
        Next::Ask(ask)
    }

    fn done(&mut self, verdict: Verdict) -> Next {
        self.step = Step::Done;
        Next::Done(verdict)
    }
}

/// One page of a node's CHUNKLIST: copies older than the grace period, in chunk ID order.
#[derive(Debug)]
pub struct Listed<T> {
    pub chunk_ids: Vec<ChunkId>,
    pub more: bool,
    /// When the node took the list, in its own terms: a DELETE carries it, and the node keeps a
    /// copy written since.
    pub at: T,
}

/// The I/O gc of one node needs: its CHUNKLIST and DELETE, the writers, the metadata's records
/// and gc's claims. The engine implements it over its sockets and metadata store
/// (`engine/src/gc.rs`), `dfs-sim` over its simulated cluster; [`collect_node`] is the one
/// procedure both run.
#[allow(async_fn_in_trait)]
pub trait GcIo {
    type Node: Copy + std::fmt::Display;
    type Record;
    type ListedAt: Copy;
    /// Held from the claim until the DELETE has returned.
    type Claim;
    type Error: std::fmt::Display;

    /// The copies on `node` older than the grace period after `after`, a page at a time.
    async fn list(&self, node: Self::Node, after: Option<ChunkId>) -> Result<Listed<Self::ListedAt>, Self::Error>;
    /// Whether an upload or a repair (on any engine) is writing the file now.
    async fn writing(&self, file_id: FileId) -> Result<bool, Self::Error>;
    /// The file's committed record, read from the metadata (None: no such file).
    async fn record(&self, file_id: FileId) -> Result<Option<Self::Record>, Self::Error>;
    /// Whether `record` places `chunk` on `node`.
    fn places(&self, record: &Self::Record, chunk: ChunkId, node: Self::Node) -> bool;
    /// Claims the copy for deletion; None if another gc pass holds the claim.
    fn claim(&self, chunk: ChunkId, node: Self::Node) -> Option<Self::Claim>;
    /// Deletes the copy if it was written before `listed_at`. Ok(false): a newer copy, kept.
    async fn delete(&self, node: Self::Node, chunk: ChunkId, listed_at: Self::ListedAt) -> Result<bool, Self::Error>;
    /// After a question is answered (the simulator lets other tasks run; the engine's
    /// failpoints pause at the steps tests name).
    async fn answered(&self, ask: Ask);
    /// Just before a DELETE goes out.
    async fn deleting(&self);
}

/// What a gc pass found and did.
#[derive(Debug, Default)]
pub struct Collected {
    pub n_scanned: u64,
    pub n_orphans: u64,
    pub n_deleted: u64,
    pub lines: Vec<String>,
}

/// Collects the orphans on one node: every copy it lists, older than the grace period, goes
/// through [`OrphanCheck`], and an orphan on both looks is deleted (in a dry run, reported).
/// Err: the node's list or the metadata could not be read; what was done so far is in `out`.
pub async fn collect_node<I: GcIo>(io: &I, node: I::Node, dry_run: bool, out: &mut Collected) -> Result<(), I::Error> {
    let mut after: Option<ChunkId> = None;
    // The last file's record, shared by its chunks.
    let mut cached: Option<(FileId, Option<I::Record>)> = None;
    loop {
        let Listed { chunk_ids, more, at: listed_at } = io.list(node, after).await?;
        assert!(chunk_ids.windows(2).all(|w| w[0] < w[1]), "a node lists its copies in chunk ID order");
        assert!(after.is_none_or(|a| chunk_ids.first().is_none_or(|&first| first > a)), "a page starts after the last");
        for &chunk_id in &chunk_ids {
            out.n_scanned += 1;
            let (mut check, mut next) = OrphanCheck::new(chunk_id, dry_run);
            let mut claim = None;
            let verdict = loop {
                let ask = match next {
                    Next::Done(verdict) => break verdict,
                    Next::Ask(ask) => ask,
                };
                let answer = match ask {
                    Ask::Writers => Answer::Writers(io.writing(chunk_id.file_id).await?),
                    Ask::Record => {
                        // Chunks come in file ID order: one record read per file.
                        if cached.as_ref().is_none_or(|(id, _)| *id != chunk_id.file_id) {
                            cached = Some((chunk_id.file_id, io.record(chunk_id.file_id).await?));
                        }
                        let record = cached.as_ref().and_then(|(_, r)| r.as_ref());
                        Answer::Placed(record.is_some_and(|r| io.places(r, chunk_id, node)))
                    }
                    Ask::Claim => {
                        claim = io.claim(chunk_id, node);
                        Answer::Claimed(claim.is_some())
                    }
                    Ask::FreshRecord => {
                        let record = io.record(chunk_id.file_id).await?;
                        Answer::Placed(record.is_some_and(|r| io.places(&r, chunk_id, node)))
                    }
                };
                io.answered(ask).await;
                next = check.answer(answer);
            };
            match verdict {
                Verdict::Writing | Verdict::Referenced | Verdict::KeptOnSecondLook => {}
                Verdict::Orphan => {
                    out.n_orphans += 1;
                    push_report_line(&mut out.lines, format!("{chunk_id} on {node}"));
                }
                Verdict::Delete => {
                    assert!(claim.is_some(), "a copy is deleted only under gc's claim");
                    out.n_orphans += 1;
                    io.deleting().await;
                    // Only the copy listed: if this DELETE times out (releasing the claim) and
                    // lands later, say on a node that hung, a copy a repair wrote there meanwhile
                    // is newer than the listing and the node keeps it.
                    match io.delete(node, chunk_id, listed_at).await {
                        Ok(true) => {
                            out.n_deleted += 1;
                            push_report_line(&mut out.lines, format!("{chunk_id} on {node}: deleted"));
                        }
                        Ok(false) => {
                            out.n_orphans -= 1;
                            push_report_line(
                                &mut out.lines,
                                format!("{chunk_id} on {node}: kept, written again since the listing"),
                            );
                        }
                        Err(e) => push_report_line(&mut out.lines, format!("{chunk_id} on {node}: not deleted: {e}")),
                    }
                }
            }
            drop(claim);
        }
        match (more, chunk_ids.last()) {
            (true, Some(last)) => after = Some(*last),
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_proto::FileId;

    fn chunk() -> ChunkId {
        ChunkId { file_id: FileId([3; 16]), chunk_idx: 1 }
    }

    /// Runs the check against fixed answers and returns the questions asked and the verdict.
    fn run(dry_run: bool, writing: &[bool], placed: &[bool]) -> (Vec<Ask>, Verdict) {
        let (mut writing, mut placed) = (writing.iter(), placed.iter());
        let (mut check, mut next) = OrphanCheck::new(chunk(), dry_run);
        let mut asked = Vec::new();
        loop {
            match next {
                Next::Done(v) => return (asked, v),
                Next::Ask(a) => {
                    asked.push(a);
                    next = check.answer(match a {
                        Ask::Writers => Answer::Writers(*writing.next().expect("a writers answer")),
                        Ask::Record | Ask::FreshRecord => Answer::Placed(*placed.next().expect("a record answer")),
                        Ask::Claim => Answer::Claimed(true),
                    });
                }
            }
        }
    }

    #[test]
    fn writers_are_asked_before_the_record() {
        let (asked, v) = run(false, &[true], &[]);
        assert_eq!((asked, v), (vec![Ask::Writers], Verdict::Writing));
        let (asked, v) = run(false, &[false], &[true]);
        assert_eq!((asked, v), (vec![Ask::Writers, Ask::Record], Verdict::Referenced));
    }

    #[test]
    fn a_delete_takes_two_looks_the_second_claimed_and_from_a_fresh_record() {
        let (asked, v) = run(false, &[false, false], &[false, false]);
        assert_eq!(asked, vec![Ask::Writers, Ask::Record, Ask::Claim, Ask::Writers, Ask::FreshRecord]);
        assert_eq!(v, Verdict::Delete);
        assert_eq!(run(false, &[false, true], &[false]).1, Verdict::KeptOnSecondLook);
        assert_eq!(run(false, &[false, false], &[false, true]).1, Verdict::KeptOnSecondLook);
    }

    #[test]
    fn a_dry_run_reports_after_one_look_and_never_deletes() {
        let (asked, v) = run(true, &[false], &[false]);
        assert_eq!((asked, v), (vec![Ask::Writers, Ask::Record], Verdict::Orphan));
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn an_answer_to_another_question_is_refused() {
        let (mut check, _) = OrphanCheck::new(chunk(), false);
        check.answer(Answer::Placed(false));
    }
}
