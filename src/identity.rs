//! Who this node is and the cluster's secrets: the node id, the join token and the operator
//! token (files in the data dir, mode 0600), and the HMAC proofs of the join handshake.
//!
//! The join token never crosses the wire. A joining node proves it knows the token with
//! `HMAC(token, "join" | server nonce | node id | client nonce)`; the orchestrator answers
//! with `HMAC(token, "accept" | client nonce | node id)` so the node knows it reached its own
//! cluster. The node's broker password is derived from the token on both sides
//! ([`broker_password`]) and is never sent either.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is empty or damaged")]
    Damaged { path: PathBuf },
}

/// A fresh random secret: 32 bytes as 64 hex characters.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A short random hex string, for nonces and ids.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Whether `s` can be a node or cluster id as peers send them: `min` to 40 lowercase
/// letters, digits and `-` (safe in logs, paths and URLs).
pub fn plain_id(s: &str, min: usize) -> bool {
    (min..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Reads a secret file, creating it with `make` (mode 0600) when missing.
pub fn load_or_create(path: &Path, make: impl FnOnce() -> String) -> Result<String, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let value = text.trim().to_owned();
            if value.is_empty() {
                return Err(IdentityError::Damaged {
                    path: path.to_owned(),
                });
            }
            // tighten a file someone loosened by hand
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            Ok(value)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            write_secret(path, &value)?;
            Ok(value)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes a secret file with mode 0600, replacing any previous content.
pub fn write_secret(path: &Path, value: &str) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(format!("{value}\n").as_bytes())
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The files of one data dir.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn node_id_file(&self) -> PathBuf {
        self.0.join("node-id")
    }
    pub fn cluster_id_file(&self) -> PathBuf {
        self.0.join("cluster-id")
    }
    pub fn join_token_file(&self) -> PathBuf {
        self.0.join("cluster-token")
    }
    pub fn operator_token_file(&self) -> PathBuf {
        self.0.join("operator-token")
    }
    pub fn membership_file(&self) -> PathBuf {
        self.0.join("membership.json")
    }
    pub fn store_dir(&self) -> PathBuf {
        self.0.join("store")
    }
    pub fn broker_dir(&self) -> PathBuf {
        self.0.join("rabbitmq")
    }

    /// This node's id, made once and kept across restarts.
    pub fn node_id(&self) -> Result<String, IdentityError> {
        load_or_create(&self.node_id_file(), || format!("n{}", random_hex(5)))
    }
}

fn mac(key: &str, parts: &[&str]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).expect("hmac takes any key length");
    for part in parts {
        mac.update(part.as_bytes());
        mac.update(b"\x1f");
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Compares two hex MACs in constant time.
pub fn macs_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The joining node's proof of the token.
pub fn join_proof(token: &str, server_nonce: &str, node_id: &str, client_nonce: &str) -> String {
    mac(token, &["join", server_nonce, node_id, client_nonce])
}

/// The orchestrator's proof of the token, checked by the joining node.
pub fn accept_proof(token: &str, client_nonce: &str, node_id: &str) -> String {
    mac(token, &["accept", client_nonce, node_id])
}

/// The AMQP password of a node, derived from the token; never sent over the network.
/// The signature of a Raft RPC from `node`: an HMAC of the path and body under that node's
/// secret (itself derived from the cluster token, so every member can check any other).
pub fn rpc_signature(token: &str, node: &str, path: &str, body: &[u8]) -> String {
    let secret = mac(token, &["raft", node]);
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).expect("hmac takes any key length");
    m.update(path.as_bytes());
    m.update(b"\x1f");
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

pub fn broker_password(token: &str, node_id: &str) -> String {
    mac(token, &["amqp", node_id])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let a = load_or_create(&path, random_secret).unwrap();
        let b = load_or_create(&path, random_secret).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn proofs_depend_on_every_part() {
        let p = join_proof("tok", "s", "n1", "c");
        assert!(macs_equal(&p, &join_proof("tok", "s", "n1", "c")));
        assert!(!macs_equal(&p, &join_proof("tok2", "s", "n1", "c")));
        assert!(!macs_equal(&p, &join_proof("tok", "s", "n2", "c")));
        assert_ne!(broker_password("tok", "n1"), broker_password("tok", "n2"));
    }
}
