//! Authentication, carried in the Hello frame's `auth_method` and `auth` slot.
//!
//! - Clients prove that they hold an **access key** (method 3) by challenge-response, so the
//!   key never crosses the wire: the client's Hello carries the key's ID (a hash of the key,
//!   which names it among the engine's `--token-file` keys without revealing it) and a fresh
//!   nonce; the engine answers with its own fresh nonce and HMAC-SHA256(key, "dfs engine to
//!   client" | client nonce | engine nonce), proving that it holds the same key; the client
//!   checks that and answers with HMAC-SHA256(key, "dfs client" | client nonce | engine nonce);
//!   the engine checks it in constant time, and only then sends HelloOk.
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
/// Method 1 sent the access key itself; it is no longer spoken (protocol 7 and later).
pub const AUTH_CLUSTER: u8 = 2;
pub const AUTH_KEY_PROOF: u8 = 3;
/// Bytes of an access key's ID.
pub const KEY_ID_BYTES: usize = 16;
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
const KEY_ID_LABEL: &[u8] = b"dfs access key id";
const CLIENT_LABEL: &[u8] = b"dfs client";
const ENGINE_TO_CLIENT_LABEL: &[u8] = b"dfs engine to client";

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

/// One access key, on either side of a client's handshake.
pub struct AccessKey {
    key: Vec<u8>,
    id: [u8; KEY_ID_BYTES],
}

impl AccessKey {
    pub fn new(key: &[u8]) -> AccessKey {
        use sha2::Digest;
        let digest = Sha256::new().chain_update(KEY_ID_LABEL).chain_update(key).finalize();
        let id = digest[..KEY_ID_BYTES].try_into().expect("a SHA-256 digest is longer than a key ID");
        AccessKey { key: key.to_vec(), id }
    }

    /// The key's ID: what a client's Hello names it by.
    pub fn id(&self) -> [u8; KEY_ID_BYTES] {
        self.id
    }

    /// The Hello's auth slot: the key's ID, then the client's nonce.
    pub fn hello_auth(&self, client_nonce: &Nonce) -> Vec<u8> {
        [&self.id[..], &client_nonce[..]].concat()
    }

    /// A Hello's auth slot taken apart: the key ID and the client's nonce, if it has their
    /// length.
    pub fn parse_hello_auth(auth: &[u8]) -> Option<([u8; KEY_ID_BYTES], Nonce)> {
        if auth.len() != KEY_ID_BYTES + NONCE_BYTES {
            return None;
        }
        let (id, nonce) = auth.split_at(KEY_ID_BYTES);
        Some((id.try_into().ok()?, nonce.try_into().ok()?))
    }

    fn mac(&self, label: &[u8], client_nonce: &Nonce, engine_nonce: &Nonce) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(client_nonce);
        mac.update(engine_nonce);
        mac
    }

    /// The client's answer to the engine's challenge.
    pub fn client_proof(&self, client_nonce: &Nonce, engine_nonce: &Nonce) -> Proof {
        self.mac(CLIENT_LABEL, client_nonce, engine_nonce).finalize().into_bytes().into()
    }

    /// The engine's proof that it holds the key, sent with its challenge.
    pub fn engine_proof(&self, client_nonce: &Nonce, engine_nonce: &Nonce) -> Proof {
        self.mac(ENGINE_TO_CLIENT_LABEL, client_nonce, engine_nonce).finalize().into_bytes().into()
    }

    /// Checks, in constant time, a client's proof.
    pub fn check_client(&self, client_nonce: &Nonce, engine_nonce: &Nonce, proof: &[u8]) -> bool {
        self.mac(CLIENT_LABEL, client_nonce, engine_nonce).verify_slice(proof).is_ok()
    }

    /// Checks, in constant time, the engine's proof.
    pub fn check_engine(&self, client_nonce: &Nonce, engine_nonce: &Nonce, proof: &[u8]) -> bool {
        self.mac(ENGINE_TO_CLIENT_LABEL, client_nonce, engine_nonce).verify_slice(proof).is_ok()
    }
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKey {{ id: {} }}", hex::encode(self.id))
    }
}

/// The access keys an engine accepts from clients.
pub struct AccessKeys(Vec<AccessKey>);

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
            keys.push(AccessKey::new(key.as_bytes()));
        }
        if keys.is_empty() {
            return Err(SecretError::NoKey { path: path.to_owned() });
        }
        Ok(AccessKeys(keys))
    }

    /// Whether `presented` is one of the keys itself (HTTP's Bearer and Basic authentication
    /// carry the key; the dfs protocol never does). Every key is compared in full, in constant
    /// time, so the answer's timing says nothing about which key or how many bytes matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0u8);
        for key in &self.0 {
            ok |= key.key.as_slice().ct_eq(presented);
        }
        ok.into()
    }

    /// The key with ID `id`. (The ID is public: it names a key without revealing it.)
    pub fn by_id(&self, id: &[u8; KEY_ID_BYTES]) -> Option<&AccessKey> {
        self.0.iter().find(|k| bool::from(k.id.ct_eq(id)))
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
    fn an_access_key_is_found_by_its_id_and_proved_without_crossing_the_wire() {
        let (a, b) = (b"a".repeat(32), b"b".repeat(40));
        let keys = AccessKeys(vec![AccessKey::new(&a), AccessKey::new(&b)]);
        let client = AccessKey::new(&b);
        let (cn, en) = ([1u8; 32], [2u8; 32]);
        let auth = client.hello_auth(&cn);
        assert!(!auth.windows(b.len()).any(|w| w == b), "the key itself is not in the Hello");
        let (id, nonce) = AccessKey::parse_hello_auth(&auth).expect("a well-formed auth slot");
        assert_eq!(nonce, cn);
        let held = keys.by_id(&id).expect("the engine holds the key");
        assert!(keys.by_id(&AccessKey::new(&b"c".repeat(32)).id()).is_none(), "an unknown key has no match");
        assert!(AccessKey::parse_hello_auth(&auth[1..]).is_none());
        // Each side proves the key; a proof for other nonces (a replay) or of the other role fails.
        let engine = held.engine_proof(&cn, &en);
        assert!(client.check_engine(&cn, &en, &engine));
        assert!(!client.check_engine(&cn, &[3u8; 32], &engine));
        let proof = client.client_proof(&cn, &en);
        assert!(held.check_client(&cn, &en, &proof));
        assert!(!held.check_client(&cn, &en, &engine), "an engine proof is not a client proof");
        assert!(!held.check_client(&[3u8; 32], &en, &proof), "a proof for another client nonce fails");
        assert!(
            !keys.by_id(&AccessKey::new(&a).id()).expect("key a").check_client(&cn, &en, &proof),
            "another key fails"
        );
    }
}
