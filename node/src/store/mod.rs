//! Where a node keeps its chunks (`--store`): two stores, a folder each. `files` keeps one file
//! per chunk copy under `chunks/` (the layout before segments); `segments`, the default, appends
//! records to segment files under `segments/`. [`Stores`] is the choice a node made at start-up.

pub mod files;
pub mod segments;

use std::sync::Arc;

/// Where a node keeps its chunks (`--store`): chunk files or segments.
#[derive(Clone)]
pub enum Stores {
    /// One file per chunk copy under `chunks/`.
    Files(Arc<files::ChunkStore>),
    /// Records appended to segment files under `segments/`.
    Segments(Arc<segments::SegmentStore>),
}
