//! What repair does with one chunk, decided from what checking its recorded copies found. The
//! rule it keeps: repair never lowers the number of copies that may be sound. Only a copy
//! proven missing or corrupt is replaced; a copy that could not be checked, or that is on a
//! node believed down, is kept.

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
    let short = replicas.saturating_sub(placement.len());
    placement.extend(down.iter().copied().filter(|d| !placement.contains(d)).take(short).collect::<Vec<_>>());
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
}
