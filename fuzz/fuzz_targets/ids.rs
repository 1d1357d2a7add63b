//! File and chunk IDs, as a user types them and as a node finds them as file names, and origins
//! as a manifest header holds them. Parsing any text must not panic, an accepted ID must be the
//! one spelling its Display prints, and every ID (built from the input's first 20 bytes) must
//! print as text that parses back to it.
#![no_main]

use dfs_proto::{ChunkId, FileId, Origin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(id) = text.parse::<FileId>() {
            assert_eq!(id.to_string(), text, "a file ID has a second spelling");
        }
        if let Ok(origin) = text.parse::<Origin>() {
            assert_eq!(origin.to_string(), text, "an origin has a second spelling");
        }
        if let Ok(id) = text.parse::<ChunkId>() {
            assert_eq!(id.to_string(), text, "a chunk ID has a second spelling");
            assert_eq!(id.file_name(), text);
        }
    }
    if let Some(raw) = bytes.first_chunk::<20>() {
        let file_id = FileId(raw[..16].try_into().expect("16 bytes"));
        let chunk_id = ChunkId { file_id, chunk_idx: u32::from_be_bytes(raw[16..].try_into().expect("4 bytes")) };
        assert_eq!(file_id.to_string().parse::<FileId>(), Ok(file_id));
        assert_eq!(Origin(file_id.0).to_string().parse::<Origin>(), Ok(Origin(file_id.0)));
        assert_eq!(chunk_id.to_string().parse::<ChunkId>(), Ok(chunk_id));
        assert_eq!(chunk_id.fanout_dir(), file_id.to_string()[..2]);
    }
});
