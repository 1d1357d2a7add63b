//! What a node's answers tell the repair queue, per node: the ID it proved (a first answer, or
//! another ID at its address, means its copies may be gone) and the count of copies it reports
//! set aside (growth means a scrub or a FETCH found a corrupt copy there). The engine's node
//! table keeps one [`Heard`] per node (`engine/src/cluster/health.rs`), fed by handshakes and
//! the pinger; `dfs-sim` keeps the same per simulated node.

/// What an answer's ID means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proved<I> {
    /// The ID that answered before: nothing new.
    Known,
    /// The node's first answer since the engine started (it may have been replaced while no
    /// one looked).
    First,
    /// Another ID than before: the node's data directory was replaced, and the copies
    /// `previous` held are gone.
    Replaced { previous: I },
}

/// What one node's answers have said so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard<I> {
    id: Option<I>,
    set_aside: Option<u64>,
}

impl<I> Default for Heard<I> {
    fn default() -> Self {
        Heard { id: None, set_aside: None }
    }
}

impl<I: Copy + PartialEq> Heard<I> {
    /// The ID the node last proved, once it has answered.
    pub fn id(&self) -> Option<I> {
        self.id
    }

    /// The node proved `id`.
    pub fn proved(&mut self, id: I) -> Proved<I> {
        let proved = match self.id.replace(id) {
            None => Proved::First,
            Some(previous) if previous != id => Proved::Replaced { previous },
            Some(_) => Proved::Known,
        };
        assert!(self.id == Some(id), "the ID proved last is the one kept");
        proved
    }

    /// The ID has moved to another address (the node answers there now): this one has not
    /// answered since.
    pub fn forget_id(&mut self) {
        self.id = None;
    }

    /// The node reports `n` copies set aside. True when that is more than its last report:
    /// news for the repair queue. The first report is where counting starts, and a restarted
    /// node counts from zero again, so only growth over the last report counts.
    pub fn set_aside(&mut self, n: u64) -> bool {
        let grew = self.set_aside.replace(n).is_some_and(|before| n > before);
        assert!(self.set_aside == Some(n), "the last report is the one kept");
        grew
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_answers_and_replaced_ids_are_news_and_a_known_id_is_not() {
        let mut h: Heard<u8> = Heard::default();
        assert_eq!(h.proved(1), Proved::First);
        assert_eq!(h.proved(1), Proved::Known);
        assert_eq!(h.proved(2), Proved::Replaced { previous: 1 });
        h.forget_id();
        assert_eq!((h.id(), h.proved(2)), (None, Proved::First));
    }

    #[test]
    fn only_growth_over_the_last_count_of_copies_set_aside_is_news() {
        let mut h: Heard<u8> = Heard::default();
        assert!(!h.set_aside(3), "the first count is where counting starts");
        assert!(!h.set_aside(3));
        assert!(!h.set_aside(0), "a restarted node counts from zero");
        assert!(h.set_aside(1));
    }
}
