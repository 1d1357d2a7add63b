//! Where a chunk's copies go. The nodes form a ring in `--node` order; chunk `i` of a file
//! starts at the node `i` places after one picked by the file ID, and its copies go to the
//! nodes that follow. So a file's chunks start on distinct nodes (its four quarters on four
//! nodes), the copies of one chunk are on distinct nodes, and files spread over the ring when
//! there are more nodes than chunks. Which of these nodes are up is health's business
//! ([`up_first`] with what the caller knows), not placement's.

use dfs_proto::FileId;

/// The order in which chunk `chunk_idx` of `file_id` tries the nodes: every node once, the
/// chunk's primary first.
pub fn ring<N: Copy>(nodes: &[N], file_id: FileId, chunk_idx: u32) -> Vec<N> {
    assert!(!nodes.is_empty(), "placement needs nodes");
    let first = file_id.0[0] as usize % nodes.len();
    (0..nodes.len()).map(|k| nodes[(first + chunk_idx as usize + k) % nodes.len()]).collect()
}

/// `nodes` with those believed up first, each group in the order given: the order in which a
/// write tries nodes and a read tries copies, moving on only when one fails.
pub fn up_first<N: Copy>(nodes: &[N], is_up: impl Fn(N) -> bool) -> Vec<N> {
    let (mut up, down): (Vec<N>, Vec<N>) = nodes.iter().partition(|&&n| is_up(n));
    up.extend(down);
    assert_eq!(up.len(), nodes.len(), "a reordering, not a selection");
    up
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;

    fn nodes(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 7701 + i))).collect()
    }

    fn file(first_byte: u8) -> FileId {
        let mut id = [7u8; 16];
        id[0] = first_byte;
        FileId(id)
    }

    #[test]
    fn every_chunk_tries_every_node_once() {
        let nodes = nodes(5);
        for chunk_idx in 0..12 {
            let ring = ring(&nodes, file(3), chunk_idx);
            assert_eq!(ring.len(), nodes.len());
            assert_eq!(ring.iter().collect::<BTreeSet<_>>(), nodes.iter().collect::<BTreeSet<_>>());
        }
    }

    #[test]
    fn the_four_quarters_start_on_four_nodes_and_copies_are_on_distinct_nodes() {
        for n in [4, 5, 7] {
            let nodes = nodes(n);
            for first_byte in [0, 1, 200, 255] {
                let primaries: BTreeSet<_> = (0..4).map(|i| ring(&nodes, file(first_byte), i)[0]).collect();
                assert_eq!(primaries.len(), 4, "{n} nodes: two quarters share a primary");
                // With R copies a chunk takes the first R nodes of its ring, all distinct.
                let r = ring(&nodes, file(first_byte), 2);
                assert_eq!(r[..3].iter().collect::<BTreeSet<_>>().len(), 3);
            }
        }
    }

    #[test]
    fn files_spread_over_the_ring() {
        let nodes = nodes(8);
        let mut primaries: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for first_byte in 0..=255u8 {
            *primaries.entry(ring(&nodes, file(first_byte), 0)[0]).or_default() += 1;
        }
        // 256 file IDs over 8 nodes: each node is the first chunk's primary 32 times.
        assert_eq!(primaries.len(), 8);
        assert!(primaries.values().all(|&k| k == 32), "{primaries:?}");
    }

    #[test]
    fn the_same_file_and_chunk_always_get_the_same_order() {
        let nodes = nodes(6);
        assert_eq!(ring(&nodes, file(9), 3), ring(&nodes, file(9), 3));
        assert_ne!(ring(&nodes, file(9), 3), ring(&nodes, file(9), 4));
    }

    #[test]
    fn nodes_believed_up_come_first_each_group_in_its_order() {
        let nodes = [1u8, 2, 3, 4, 5];
        assert_eq!(up_first(&nodes, |n| n % 2 == 0), [2, 4, 1, 3, 5]);
        assert_eq!(up_first(&nodes, |_| true), nodes);
        assert_eq!(up_first(&nodes, |_| false), nodes);
    }
}
