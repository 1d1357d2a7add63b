//! Authentication, carried in the Hello frame's `auth_method` and `auth` slot.
//!
//! - Clients present an **access key** (method 1): the engine compares it, in constant time,
//!   with each key of its `--token-file`.
//! - Engine and nodes prove to each other that they know the **cluster secret** (method 2) by
//!   challenge-response, so the secret never crosses the wire and a recorded handshake cannot be
//!   replayed: the engine's Hello carries a fresh nonce; the node answers with its own fresh
//!   nonce, its node ID and HMAC-SHA256(secret, "dfs node" | engine nonce | node nonce | node
//!   ID), so that only a holder of the secret can claim a node's identity; the engine checks
//!   it and answers with HMAC-SHA256(secret, "dfs engine" | engine nonce | node nonce); only
//!   then does the node send HelloOk.

use crate::ids::NodeId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

pub const AUTH_NONE: u8 = 0;
pub const AUTH_ACCESS_KEY: u8 = 1;
pub const AUTH_CLUSTER: u8 = 2;
/// Bytes of each side's challenge nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of an HMAC-SHA256 proof.
pub const PROOF_BYTES: usize = 32;
/// Shortest access key or cluster secret accepted: 128 bits as hex.
pub const MIN_SECRET_BYTES: usize = 32;

pub type Nonce = [u8; NONCE_BYTES];
pub type Proof = [u8; PROOF_BYTES];

const NODE_LABEL: &[u8] = b"dfs node";
const ENGINE_LABEL: &[u8] = b"dfs engine";

/// A fresh nonce from the operating system's random source.
pub fn nonce() -> std::io::Result<Nonce> {
    let mut n = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut n).map_err(std::io::Error::other)?;
    Ok(n)
}

/// A new random secret, as 64 hex digits, for a key or secret file.
pub fn new_secret_text() -> std::io::Result<String> {
    Ok(hex::encode(nonce()?))
}

/// Why a key or secret file was refused. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {what} file {}: {source}", path.display())]
    Unreadable { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} file {} is readable by other users (mode {mode:o}): chmod 600 it", path.display())]
    TooOpen { what: &'static str, path: PathBuf, mode: u32 },
    #[error("{what} {where_} is {len} bytes; at least {MIN_SECRET_BYTES} are needed")]
    TooShort { what: &'static str, where_: String, len: usize },
    #[error("{} holds no access key", path.display())]
    NoKey { path: PathBuf },
    #[error("cannot draw a secret: {0}")]
    Random(std::io::Error),
    #[error("cannot {action} {}: {source}", path.display())]
    Write { action: &'static str, path: PathBuf, source: std::io::Error },
}

/// Reads a file that must exist, be owned by us and not be readable by others.
fn read_secret_file(path: &Path, what: &'static str) -> Result<String, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |source| SecretError::Unreadable { what, path: path.to_owned(), source };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SecretError::TooOpen { what, path: path.to_owned(), mode: meta.permissions().mode() & 0o777 });
    }
    std::fs::read_to_string(path).map_err(unreadable)
}

/// The shared secret of a cluster's engine and nodes.
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    pub fn from_file(path: &Path) -> Result<ClusterSecret, SecretError> {
        let text = read_secret_file(path, "cluster secret")?;
        let secret = text.trim();
        if secret.len() < MIN_SECRET_BYTES {
            let where_ = format!("in {}", path.display());
            return Err(SecretError::TooShort { what: "cluster secret", where_, len: secret.len() });
        }
        Ok(ClusterSecret(secret.as_bytes().to_vec()))
    }

    fn mac(&self, label: &[u8], engine_nonce: &Nonce, node_nonce: &Nonce) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(engine_nonce);
        mac.update(node_nonce);
        mac
    }

    fn node_mac(&self, engine_nonce: &Nonce, node_nonce: &Nonce, node_id: &NodeId) -> Hmac<Sha256> {
        let mut mac = self.mac(NODE_LABEL, engine_nonce, node_nonce);
        mac.update(&node_id.0);
        mac
    }

    /// The node's answer to the engine's challenge, binding its ID.
    pub fn node_proof(&self, engine_nonce: &Nonce, node_nonce: &Nonce, node_id: &NodeId) -> Proof {
        self.node_mac(engine_nonce, node_nonce, node_id).finalize().into_bytes().into()
    }

    /// The engine's answer to the node's challenge.
    pub fn engine_proof(&self, engine_nonce: &Nonce, node_nonce: &Nonce) -> Proof {
        self.mac(ENGINE_LABEL, engine_nonce, node_nonce).finalize().into_bytes().into()
    }

    /// Checks, in constant time, a node's proof of the secret and of its ID.
    pub fn check_node(&self, engine_nonce: &Nonce, node_nonce: &Nonce, node_id: &NodeId, proof: &[u8]) -> bool {
        self.node_mac(engine_nonce, node_nonce, node_id).verify_slice(proof).is_ok()
    }

    /// Checks, in constant time, the engine's proof.
    pub fn check_engine(&self, engine_nonce: &Nonce, node_nonce: &Nonce, proof: &[u8]) -> bool {
        self.mac(ENGINE_LABEL, engine_nonce, node_nonce).verify_slice(proof).is_ok()
    }
}

/// The access keys an engine accepts from clients.
pub struct AccessKeys(Vec<Vec<u8>>);

impl AccessKeys {
    /// One key per line; blank lines and lines starting with `#` are ignored.
    pub fn from_file(path: &Path) -> Result<AccessKeys, SecretError> {
        let text = read_secret_file(path, "access key")?;
        let mut keys = Vec::new();
        for (line_idx, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            if key.len() < MIN_SECRET_BYTES {
                let where_ = format!("on line {} of {}", line_idx + 1, path.display());
                return Err(SecretError::TooShort { what: "access key", where_, len: key.len() });
            }
            keys.push(key.as_bytes().to_vec());
        }
        if keys.is_empty() {
            return Err(SecretError::NoKey { path: path.to_owned() });
        }
        Ok(AccessKeys(keys))
    }

    /// Whether `presented` is one of the keys. Every key is compared in full, in constant time,
    /// so the answer's timing says nothing about which key or how many bytes matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0u8);
        for key in &self.0 {
            ok |= key.as_slice().ct_eq(presented);
        }
        ok.into()
    }
}

/// Reads the access key a client presents from a file (its first non-comment line).
pub fn read_client_key(path: &Path) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
        what: "access key",
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .ok_or_else(|| SecretError::NoKey { path: path.to_owned() })
}

/// Writes a new random secret to `path` (mode 600) unless the file exists; returns the path.
pub fn ensure_secret_file(path: &Path) -> Result<(), SecretError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |action| move |source| SecretError::Write { action, path: path.to_owned(), source };
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut f) => {
            let text = new_secret_text().map_err(SecretError::Random)?;
            writeln!(f, "{text}").and_then(|_| f.sync_all()).map_err(failed("write"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(failed("create")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_both_nonces_the_node_id_and_the_role() {
        let s = ClusterSecret(b"0123456789abcdef0123456789abcdef".to_vec());
        let other = ClusterSecret(b"0123456789abcdef0123456789abcdeF".to_vec());
        let (e, n, id) = ([1u8; 32], [2u8; 32], NodeId([7; 16]));
        let p = s.node_proof(&e, &n, &id);
        assert!(s.check_node(&e, &n, &id, &p));
        assert!(!s.check_engine(&e, &n, &p), "a node proof is not an engine proof");
        assert!(!s.check_node(&e, &[3u8; 32], &id, &p), "a proof for another node nonce (a replay) fails");
        assert!(!s.check_node(&[3u8; 32], &n, &id, &p), "a proof for another engine nonce fails");
        assert!(!s.check_node(&e, &n, &NodeId([8; 16]), &p), "a proof for another node ID fails");
        assert!(!other.check_node(&e, &n, &id, &p), "another secret fails");
        assert!(!s.check_node(&e, &n, &id, &p[..31]), "a short proof fails");
    }

    #[test]
    fn access_keys_accept_exactly_their_keys() {
        let keys = AccessKeys(vec![b"a".repeat(32), b"b".repeat(40)]);
        assert!(keys.accepts(&b"a".repeat(32)));
        assert!(keys.accepts(&b"b".repeat(40)));
        assert!(!keys.accepts(&b"a".repeat(31)));
        assert!(!keys.accepts(b""));
        assert!(!keys.accepts(&b"c".repeat(32)));
    }
}
