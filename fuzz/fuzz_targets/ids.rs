//! File and chunk IDs typed by a user or found as file names on a node: parsing any string must
//! not panic, and an accepted ID must print as text that parses back to the same ID.
#![no_main]

use dfs_proto::{ChunkId, FileId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(id) = text.parse::<FileId>() {
        assert_eq!(id.to_string().parse::<FileId>(), Ok(id));
    }
    if let Ok(id) = text.parse::<ChunkId>() {
        assert_eq!(id.to_string().parse::<ChunkId>(), Ok(id));
        assert_eq!(id.file_name().parse::<ChunkId>(), Ok(id));
    }
});
