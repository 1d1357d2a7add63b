//! The file every benchmark request uploads: either a temporary file of pseudo-random bytes,
//! written once before the clock starts and removed when the benchmark ends, or an existing
//! file the user names. Its crc32 is computed once, so each timed download can be checked
//! against the bytes that were uploaded.
//!
//! The bytes are pseudo-random rather than zeros so that nothing on the path (a compressing
//! file system, a deduplicating store, a sparse file) can make the benchmark faster than real
//! data would be.

use super::BenchError;
use dfs_client::MappedFile;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tempfile::TempPath;

/// Bytes generated and written per step while creating the input file.
const WRITE_BLOCK_BYTES: usize = 1 << 20;

/// The file the benchmark uploads.
pub struct BenchInput {
    path: PathBuf,
    size_bytes: u64,
    crc32: u32,
    /// Removes a generated file when the input is dropped; `None` for the user's own file.
    _temp: Option<TempPath>,
}

impl BenchInput {
    /// Writes `size_bytes` pseudo-random bytes to a new file in the system's temporary
    /// directory, named `dfs-bench-*.bin` (which is also the name the objects are stored under,
    /// so they are easy to recognise in a listing).
    pub fn generate(size_bytes: u64) -> Result<BenchInput, BenchError> {
        let dir = std::env::temp_dir();
        let file =
            tempfile::Builder::new().prefix("dfs-bench-").suffix(".bin").tempfile_in(&dir).map_err(|source| {
                BenchError::File { action: "create the benchmark input file in", path: dir.clone(), source }
            })?;
        let (file, temp) = file.into_parts();
        let write_error = |source| BenchError::File { action: "write", path: temp.to_path_buf(), source };
        let crc32 = write_random(file, size_bytes, seed()).map_err(write_error)?;
        Ok(BenchInput { path: temp.to_path_buf(), size_bytes, crc32, _temp: Some(temp) })
    }

    /// Uses an existing file as it is; its size is the benchmark's object size.
    pub fn open(path: &Path) -> Result<BenchInput, BenchError> {
        let file = MappedFile::open(path)?;
        let crc32 = crc32fast::hash(&file);
        Ok(BenchInput { path: path.to_owned(), size_bytes: file.len() as u64, crc32, _temp: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The crc32 of the whole file.
    pub fn crc32(&self) -> u32 {
        self.crc32
    }
}

/// A different stream each run, so that no cache or store can recognise a previous run's
/// bytes; nothing depends on the seed being unpredictable.
fn seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// Writes `size_bytes` bytes from a SplitMix64 stream to `file` and returns their crc32.
fn write_random(file: File, size_bytes: u64, seed: u64) -> std::io::Result<u32> {
    let mut out = BufWriter::with_capacity(WRITE_BLOCK_BYTES, file);
    let mut rng = SplitMix64(seed);
    let mut hasher = crc32fast::Hasher::new();
    let mut block = vec![0u8; WRITE_BLOCK_BYTES];
    let mut left_bytes = size_bytes;
    while left_bytes > 0 {
        let n_bytes = left_bytes.min(WRITE_BLOCK_BYTES as u64) as usize;
        let block = &mut block[..n_bytes];
        rng.fill(block);
        hasher.update(block);
        out.write_all(block)?;
        left_bytes -= n_bytes as u64;
    }
    out.into_inner().map_err(|e| e.into_error())?;
    Ok(hasher.finalize())
}

/// SplitMix64 (Steele, Lea and Flood, 2014): one addition and three xor-shift-multiplies per
/// 8 bytes, fast enough to write a GiB in well under a second, and statistically good enough
/// that the output does not compress.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_stream() {
        // First outputs for seed 1234567 of the reference C implementation.
        let mut rng = SplitMix64(1_234_567);
        let outputs: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(outputs, [6_457_827_717_110_365_317, 3_203_168_211_198_807_973, 9_817_491_932_198_370_423]);
    }

    #[test]
    fn generated_input_is_not_compressible_and_has_the_right_size_and_crc() {
        let input = BenchInput::generate(3 * WRITE_BLOCK_BYTES as u64 + 5).expect("generate");
        let bytes = std::fs::read(input.path()).expect("read back");
        assert_eq!(bytes.len() as u64, input.size_bytes());
        assert_eq!(crc32fast::hash(&bytes), input.crc32());
        // Every byte value occurs about equally often, and no block repeats an earlier one.
        let mut counts = [0usize; 256];
        for &b in &bytes {
            counts[b as usize] += 1;
        }
        let expected = bytes.len() / 256;
        assert!(counts.iter().all(|&c| c > expected * 9 / 10 && c < expected * 11 / 10), "{counts:?}");
        let blocks: Vec<&[u8]> = bytes.chunks(4096).collect();
        let distinct: std::collections::HashSet<&[u8]> = blocks.iter().copied().collect();
        assert_eq!(distinct.len(), blocks.len());
    }

    #[test]
    fn generated_input_is_removed_on_drop() {
        let input = BenchInput::generate(10).expect("generate");
        let path = input.path().to_owned();
        assert!(path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("dfs-bench-")));
        drop(input);
        assert!(!path.exists());
    }

    #[test]
    fn existing_file_is_used_as_it_is() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"dfs bench").expect("write");
        let input = BenchInput::open(file.path()).expect("open");
        assert_eq!(input.size_bytes(), 9);
        assert_eq!(input.crc32(), crc32fast::hash(b"dfs bench"));
        drop(input);
        assert!(file.path().exists(), "the user's file must be left alone");
    }
}
