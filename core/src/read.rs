//! A read of one chunk from its copies: tried in the order given (the engine puts the nodes
//! believed up first), the first copy that reads back sound wins, every byte of it checked
//! against the record by the reader; each copy that fails is reported (the engine marks a node
//! that did not answer down and notes the chunk for the repair queue) before the next is tried;
//! when none reads, the error lists every copy's failure, in the order tried. The engine's
//! buffered GET reads each chunk with it (`engine/src/get.rs`), `dfs-sim` its simulated GETs.

/// The I/O a read of one chunk needs.
#[allow(async_fn_in_trait)]
pub trait ChunkRead {
    type Node: Copy + PartialEq + std::fmt::Debug;
    /// The chunk as read and checked.
    type Got;
    /// Why a copy could not be read (it names the node).
    type Error;

    /// Reads the chunk from the copy on `node`, every byte checked against the record: Err if
    /// the node cannot serve it or what it sends is not what was stored.
    async fn read(&self, node: Self::Node) -> Result<Self::Got, Self::Error>;
    /// The copy on `node` was read, after `n_failed` copies failed.
    fn served(&self, node: Self::Node, n_failed: usize);
    /// The copy on `node` could not be read.
    fn failed(&self, node: Self::Node, e: &Self::Error);
}

/// Reads a chunk from the first of `copies` that serves it sound. Err: every copy failed, with
/// each failure in the order tried (none: the chunk has no copies).
pub async fn read_chunk<R: ChunkRead>(io: &R, copies: &[R::Node]) -> Result<R::Got, Vec<R::Error>> {
    assert!(
        copies.iter().enumerate().all(|(i, n)| !copies[..i].contains(n)),
        "each copy of a chunk is on a node of its own: {copies:?}"
    );
    let mut errors = Vec::new();
    for &node in copies {
        match io.read(node).await {
            Ok(got) => {
                io.served(node, errors.len());
                return Ok(got);
            }
            Err(e) => {
                io.failed(node, &e);
                errors.push(e);
            }
        }
    }
    assert_eq!(errors.len(), copies.len(), "a failed read reports every copy it tried");
    Err(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Copies on nodes 0..n; `bad` nodes fail; what happened is logged.
    struct Fake {
        bad: Vec<u8>,
        log: RefCell<Vec<String>>,
    }

    impl ChunkRead for Fake {
        type Node = u8;
        type Got = u8;
        type Error = String;

        async fn read(&self, node: u8) -> Result<u8, String> {
            self.log.borrow_mut().push(format!("read {node}"));
            if self.bad.contains(&node) {
                Err(format!("{node} is bad"))
            } else {
                Ok(node)
            }
        }
        fn served(&self, node: u8, n_failed: usize) {
            self.log.borrow_mut().push(format!("served {node} after {n_failed}"));
        }
        fn failed(&self, node: u8, e: &String) {
            self.log.borrow_mut().push(format!("failed {node}: {e}"));
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        // The fake never waits: one poll finishes it.
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the fake read waited"),
        }
    }

    #[test]
    fn the_first_sound_copy_wins_and_each_failure_before_it_is_reported() {
        let io = Fake { bad: vec![2, 0], log: RefCell::default() };
        assert_eq!(run(read_chunk(&io, &[2, 0, 1, 3])), Ok(1));
        assert_eq!(
            io.log.into_inner(),
            ["read 2", "failed 2: 2 is bad", "read 0", "failed 0: 0 is bad", "read 1", "served 1 after 2"]
        );
    }

    #[test]
    fn when_no_copy_reads_every_failure_is_returned_in_order() {
        let io = Fake { bad: vec![0, 1], log: RefCell::default() };
        assert_eq!(run(read_chunk(&io, &[1, 0])), Err(vec!["1 is bad".to_string(), "0 is bad".to_string()]));
        assert_eq!(run(read_chunk(&io, &[])), Err(vec![]));
    }
}
