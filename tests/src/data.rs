//! Test data and assertions on bytes and error messages.

use dfs_proto::FileId;

/// `len` pseudo-random bytes from `seed` (xorshift64*): fast, deterministic, incompressible.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    out
}

/// Asserts two byte strings are identical; on failure names `what`, both lengths and the first
/// differing offset with the bytes around it, instead of printing megabytes.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first_diff = actual.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(actual.len().min(expected.len()));
    let window = |b: &[u8]| {
        let from = first_diff.saturating_sub(8);
        let to = (first_diff + 8).min(b.len());
        if from >= to {
            String::from("(nothing)")
        } else {
            b[from..to].iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
        }
    };
    panic!(
        "{what}: bytes differ: got {} bytes, expected {} bytes; first difference at offset {first_diff}\n  got      [{}..]: {}\n  expected [{}..]: {}",
        actual.len(),
        expected.len(),
        first_diff.saturating_sub(8),
        window(actual),
        first_diff.saturating_sub(8),
        window(expected)
    );
}

/// Whether an error message names chunk `chunk_idx` of `file_id`: `chunk 2`, `chunk #2`,
/// `chunk index 2`, `chunk_idx 2`, `chunk=2`, or the chunk ID `<file id>.00000002`.
pub fn mentions_chunk(message: &str, file_id: &str, chunk_idx: u32) -> bool {
    let lower = message.to_lowercase();
    if lower.contains(&format!("{file_id}.{chunk_idx:08x}")) {
        return true;
    }
    let idx = chunk_idx.to_string();
    ["chunk ", "chunk #", "chunk index ", "chunk_idx ", "chunk_idx=", "chunk=", "chunk: ", "chunk index: "].iter().any(
        |prefix| {
            let needle = format!("{prefix}{idx}");
            lower.match_indices(&needle).any(|(at, _)| {
                let next = lower[at + needle.len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_alphanumeric())
            })
        },
    )
}

/// A fresh, well-formed file ID that no server has handed out.
pub fn random_file_id() -> String {
    FileId::random().expect("OS random source").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_chunk_matches_whole_indices_only() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(mentions_chunk("error: corrupt: chunk 2 is corrupt on node 127.0.0.1:1", id, 2));
        assert!(mentions_chunk("chunk #2 failed", id, 2));
        assert!(mentions_chunk(&format!("chunk {id}.00000002: block 0"), id, 2));
        assert!(mentions_chunk(&format!("chunk {id}.0000000a"), id, 10));
        assert!(!mentions_chunk("chunk 20 is corrupt", id, 2));
        assert!(!mentions_chunk("chunk 12 is corrupt", id, 2));
        assert!(!mentions_chunk(&format!("chunk {id}.00000003"), id, 2));
    }

    #[test]
    fn pseudo_random_bytes_are_deterministic_and_differ_by_seed() {
        assert_eq!(pseudo_random_bytes(7, 1001), pseudo_random_bytes(7, 1001));
        assert_ne!(pseudo_random_bytes(7, 64), pseudo_random_bytes(8, 64));
        assert_eq!(pseudo_random_bytes(7, 13), pseudo_random_bytes(7, 1001)[..13]);
        let data = pseudo_random_bytes(1, 1 << 16);
        let n_zero = data.iter().filter(|&&b| b == 0).count();
        assert!(n_zero < 1000, "{n_zero} zero bytes in 64 KiB: not random-looking");
    }

    #[test]
    fn assert_bytes_eq_reports_the_first_differing_offset() {
        let a = vec![1u8; 100];
        let mut b = a.clone();
        b[42] = 9;
        let err = std::panic::catch_unwind(|| assert_bytes_eq(&b, &a, "sample")).expect_err("must panic");
        let msg = err.downcast_ref::<String>().expect("a formatted panic message");
        assert!(msg.contains("first difference at offset 42"), "{msg}");
        let err = std::panic::catch_unwind(|| assert_bytes_eq(&a[..50], &a, "short")).expect_err("must panic");
        let msg = err.downcast_ref::<String>().expect("a formatted panic message");
        assert!(msg.contains("got 50 bytes, expected 100 bytes") && msg.contains("offset 50"), "{msg}");
    }
}
