//! The file record: what the metadata keeps per file and chunk (offset, length, crc32s, placement,
//! the nodes by ID), its stored bytes (a version byte, then postcard; versions 1 and 2 still read),
//! and a change of placement, applied by compare and set.

use super::*;

/// Record format version, the first byte of every stored record: the one every record is
/// written in.
pub(crate) const RECORD_VERSION: u8 = 3;

/// The first format, without an origin: [`FileRecordV1`]. Still read, never written.
pub(crate) const RECORD_VERSION_1: u8 = 1;

/// Nodes by address only: [`FileRecordV2`]. Still read, never written.
pub(crate) const RECORD_VERSION_2: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub offset: u64,
    pub length: u64,
    pub crc32: u32,
    pub block_crcs: Vec<u32>,
    /// Indices into [`FileRecord::nodes`], one per copy.
    pub placement: Vec<u16>,
}

/// A node a record's placements point at: its ID, and the address it was at when the record
/// was last written. The ID is what names the node; the address is only where to look for it
/// when no node of the engine's has proved that ID since start-up (and all there is for a
/// record written before node IDs, until [`MetaStore::name_nodes`] finds its ID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSlot {
    pub id: Option<[u8; 16]>,
    pub addr: String,
}

/// Why a chunk's recorded placement cannot be followed: a record that breaks its own format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("chunk has no placement")]
    Empty,
    #[error("placement names an unknown node")]
    UnknownNode,
    #[error("stored node address {addr:?} is invalid: {why}")]
    BadAddress { addr: String, why: String },
}

/// Who answers at which address, as far as the engine knows: the node table (`cluster::Health`)
/// implements it; the metadata only asks.
pub trait NodeDirectory {
    /// Where the node with this ID answers now, if the engine knows.
    fn addr_of(&self, id: NodeId) -> Option<SocketAddr>;
    /// Which node answers at this address, if the engine knows.
    fn id_of(&self, addr: SocketAddr) -> Option<NodeId>;
}

impl NodeSlot {
    /// Where to reach this node: where its ID answers now, else where it last was.
    pub fn resolve(&self, nodes: &dyn NodeDirectory) -> Result<SocketAddr, PlacementError> {
        if let Some(addr) = self.id.and_then(|id| nodes.addr_of(NodeId(id))) {
            return Ok(addr);
        }
        self.addr.parse().map_err(|e: std::net::AddrParseError| PlacementError::BadAddress {
            addr: self.addr.clone(),
            why: e.to_string(),
        })
    }
}

/// A record as written today (version 3). postcard lays fields out in declaration order with no
/// names, so fields are only ever added in a new version, never changed in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub name: String,
    pub size: u64,
    pub created_unix_ms: u64,
    pub chunking: Chunking,
    pub nodes: Vec<NodeSlot>,
    pub chunks: Vec<ChunkRecord>,
    /// The uploader's [`Origin`] tag, as raw bytes; None for plain uploads and version 1 records.
    pub origin: Option<[u8; 16]>,
}

/// A version 2 record: nodes by address. Its layout must never change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecordV2 {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) created_unix_ms: u64,
    pub(crate) chunking: Chunking,
    pub(crate) nodes: Vec<String>,
    pub(crate) chunks: Vec<ChunkRecord>,
    pub(crate) origin: Option<[u8; 16]>,
}

impl From<FileRecordV2> for FileRecord {
    fn from(v2: FileRecordV2) -> FileRecord {
        let FileRecordV2 { name, size, created_unix_ms, chunking, nodes, chunks, origin } = v2;
        let nodes = nodes.into_iter().map(|addr| NodeSlot { id: None, addr }).collect();
        FileRecord { name, size, created_unix_ms, chunking, nodes, chunks, origin }
    }
}

/// A version 1 record, exactly as the engine wrote it before origins existed. Its layout must
/// never change: databases full of these records are still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecordV1 {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) created_unix_ms: u64,
    pub(crate) chunking: Chunking,
    pub(crate) nodes: Vec<String>,
    pub(crate) chunks: Vec<ChunkRecord>,
}

impl From<FileRecordV1> for FileRecord {
    fn from(v1: FileRecordV1) -> FileRecord {
        let FileRecordV1 { name, size, created_unix_ms, chunking, nodes, chunks } = v1;
        FileRecordV2 { name, size, created_unix_ms, chunking, nodes, chunks, origin: None }.into()
    }
}

impl FileRecord {
    /// Where `chunk`'s copies live, in placement order.
    pub fn copy_addrs(
        &self,
        chunk: &ChunkRecord,
        nodes: &dyn NodeDirectory,
    ) -> Result<Vec<SocketAddr>, PlacementError> {
        self.copy_slots(chunk)?.iter().map(|slot| slot.resolve(nodes)).collect()
    }

    /// The nodes `chunk`'s copies are recorded on, in placement order.
    pub fn copy_slots(&self, chunk: &ChunkRecord) -> Result<Vec<&NodeSlot>, PlacementError> {
        if chunk.placement.is_empty() {
            return Err(PlacementError::Empty);
        }
        chunk
            .placement
            .iter()
            .map(|&node_idx| self.nodes.get(node_idx as usize).ok_or(PlacementError::UnknownNode))
            .collect()
    }

    /// Names every node of this record whose ID `nodes` knows by its address; true if any
    /// changed.
    pub(crate) fn name_nodes(&mut self, nodes: &dyn NodeDirectory) -> bool {
        let mut changed = false;
        for slot in self.nodes.iter_mut().filter(|s| s.id.is_none()) {
            if let Some(id) = slot.addr.parse().ok().and_then(|a| nodes.id_of(a)) {
                slot.id = Some(id.0);
                changed = true;
            }
        }
        changed
    }

    pub(crate) fn all_nodes_named(&self) -> bool {
        self.nodes.iter().all(|s| s.id.is_some())
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        out.extend(postcard::to_stdvec(self).expect("a record always serializes"));
        out
    }

    pub(crate) fn decode(file_id: FileId, bytes: &[u8]) -> Result<FileRecord, MetaError> {
        let bad = |e: postcard::Error| MetaError::BadRecord(file_id, e.to_string());
        match bytes.split_first() {
            Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).map_err(bad),
            Some((&RECORD_VERSION_2, rest)) => postcard::from_bytes::<FileRecordV2>(rest).map(Into::into).map_err(bad),
            Some((&RECORD_VERSION_1, rest)) => postcard::from_bytes::<FileRecordV1>(rest).map(Into::into).map_err(bad),
            Some((v, _)) => Err(MetaError::BadRecord(file_id, format!("unknown record version {v}"))),
            None => Err(MetaError::BadRecord(file_id, "empty record".into())),
        }
    }

    pub fn info(&self, file_id: FileId, nodes: &dyn NodeDirectory) -> FileInfo {
        FileInfo {
            file_id,
            name: self.name.clone(),
            size: self.size,
            created_unix_ms: self.created_unix_ms,
            chunking: self.chunking,
            origin: self.origin.map(Origin),
            nodes: self
                .nodes
                .iter()
                .map(|slot| FileNode {
                    id: slot.id.map(NodeId),
                    addr: slot.resolve(nodes).map(|a| a.to_string()).unwrap_or_else(|_| slot.addr.clone()),
                })
                .collect(),
            chunks: self
                .chunks
                .iter()
                .enumerate()
                .map(|(i, c)| ChunkInfo {
                    chunk_idx: i as u32,
                    offset: c.offset,
                    length: c.length,
                    crc32: c.crc32,
                    placement: c.placement.clone(),
                })
                .collect(),
        }
    }

    pub fn summary(&self, file_id: FileId) -> FileSummary {
        FileSummary {
            file_id,
            name: self.name.clone(),
            size: self.size,
            created_unix_ms: self.created_unix_ms,
            chunking: self.chunking,
            n_chunks: self.chunks.len() as u32,
            origin: self.origin.map(Origin),
        }
    }
}

/// A new placement for one chunk, to be written only over the one it was decided from.
#[derive(Debug)]
pub struct PlacementChange {
    pub file_id: FileId,
    pub chunk_idx: u32,
    /// The chunk's nodes as the decision read them.
    pub expected: Vec<NodeSlot>,
    pub nodes: Vec<NodeSlot>,
}

/// What [`MetaStore::set_placement`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    Set,
    /// The file was deleted meanwhile: nothing changed.
    FileGone,
    /// The chunk's placement changed since it was read (another repair moved it): nothing
    /// changed; decide again from the new one.
    Changed,
}

/// Whether two slots name the same node: the same ID, or the same address where neither has an
/// ID.
pub(crate) fn same_node(a: &NodeSlot, b: &NodeSlot) -> bool {
    match (a.id, b.id) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a.addr == b.addr,
        _ => false,
    }
}

impl PlacementChange {
    /// Applies the change to `record` (read fresh) if its chunk's placement is still the one
    /// the change was decided from: [`Placed::Set`], or [`Placed::Changed`] and `record` as it
    /// was. The same rule for every backend.
    pub(crate) fn apply(&self, record: &mut FileRecord) -> Placed {
        let chunk_idx = self.chunk_idx as usize;
        assert!(
            chunk_idx < record.chunks.len(),
            "placement for chunk {chunk_idx} of {}, which has {}",
            self.file_id,
            record.chunks.len()
        );
        let current = &record.chunks[chunk_idx].placement;
        let unchanged = current.len() == self.expected.len()
            && current
                .iter()
                .zip(&self.expected)
                .all(|(&i, e)| record.nodes.get(i as usize).is_some_and(|n| same_node(n, e)));
        if !unchanged {
            return Placed::Changed;
        }
        let mut placement = Vec::with_capacity(self.nodes.len());
        for slot in &self.nodes {
            // The same node: the same ID, or the same address where there is no ID on either
            // side. Its address is kept current.
            let node_idx = match record.nodes.iter().position(|n| same_node(n, slot)) {
                Some(i) => {
                    record.nodes[i].addr.clone_from(&slot.addr);
                    i
                }
                None => {
                    record.nodes.push(slot.clone());
                    record.nodes.len() - 1
                }
            };
            placement.push(node_idx as u16);
        }
        record.chunks[chunk_idx].placement = placement;
        Placed::Set
    }
}
