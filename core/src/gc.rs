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

use dfs_proto::ChunkId;

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
