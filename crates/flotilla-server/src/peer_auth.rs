//! The cluster secret replicas present to each other (issue 14, item 2, without TLS).
//!
//! A replica started with `--peer-secret-file FILE` answers a call on the peer service
//! (`flotilla.raft.v1.Raft`: AppendEntries, Vote, InstallSnapshot, Hello, ElectNow, Silence)
//! only when it carries the same secret in the `x-flotilla-peer` header; any other caller gets
//! `UNAUTHENTICATED` before a byte of its message is decoded. Every replica of a cluster is
//! given the same file, and every peer call it makes carries the secret. Without the file a
//! replica accepts peer calls from anyone who can reach its port, as before (the cluster name
//! in each message only keeps two clusters apart: `ClusterStatus` hands it out).
//!
//! The file holds one line: the secret, 32 to 256 printable ASCII characters without spaces
//! (`flotilla token peer-secret FILE` writes a random one). It is compared by SHA-256 digest,
//! so the comparison takes the same time wherever the first difference is.

use std::path::Path;

use sha2::{Digest, Sha256};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

/// The header that carries the secret.
pub const HEADER: &str = "x-flotilla-peer";
/// Shortest secret accepted.
pub const MIN_LEN: usize = 32;
const MAX_LEN: usize = 256;

/// The cluster secret of this replica.
#[derive(Clone)]
pub struct PeerSecret {
    value: AsciiMetadataValue,
    digest: [u8; 32],
}

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(<hidden>)")
    }
}

impl PeerSecret {
    /// Reads the secret from a file; the error names the file and what is wrong.
    pub fn load(path: &Path) -> Result<PeerSecret, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("peer secret file {}: {e}", path.display()))?;
        PeerSecret::parse(&text).map_err(|e| format!("peer secret file {}: {e}", path.display()))
    }

    /// The secret is the text's only line (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<PeerSecret, String> {
        let secret = text.trim();
        if secret.lines().count() > 1 {
            return Err("holds more than one line; it must hold only the secret".into());
        }
        if !(MIN_LEN..=MAX_LEN).contains(&secret.len()) {
            return Err(format!(
                "the secret must be {MIN_LEN} to {MAX_LEN} characters, not {}",
                secret.len()
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the secret must be printable ASCII without spaces".into());
        }
        let value = MetadataValue::try_from(secret)
            .map_err(|_| "the secret must be printable ASCII without spaces".to_string())?;
        Ok(PeerSecret {
            value,
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Adds the secret to an outgoing peer call.
    pub fn stamp<T>(&self, request: &mut tonic::Request<T>) {
        request.metadata_mut().insert(HEADER, self.value.clone());
    }

    /// Whether an incoming call's header carries this secret.
    pub fn admits(&self, header: Option<&[u8]>) -> bool {
        header.is_some_and(|h| <[u8; 32]>::from(Sha256::digest(h)) == self.digest)
    }
}

/// A new random secret (256 bits from the OS, hex), as `flotilla token peer-secret` writes it.
pub fn new_secret() -> String {
    format!("peer_{}", random_hex())
}

/// 256 bits from the OS, as 64 hex digits (secrets and tokens).
pub fn random_hex() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `request` carrying `secret`, when there is one.
pub fn stamped<T>(secret: Option<&PeerSecret>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(s) = secret {
        s.stamp(&mut request);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_admits_only_itself() {
        let text = new_secret();
        assert!(text.len() >= MIN_LEN, "{text}");
        let s = PeerSecret::parse(&format!("{text}\n")).unwrap();
        assert!(s.admits(Some(text.as_bytes())));
        assert!(!s.admits(None));
        assert!(!s.admits(Some(b"")));
        assert!(!s.admits(Some(&text.as_bytes()[1..])));
        assert!(!s.admits(Some(new_secret().as_bytes())));
        let mut request = stamped(Some(&s), ());
        assert_eq!(
            request
                .metadata_mut()
                .get(HEADER)
                .unwrap()
                .to_str()
                .unwrap(),
            text
        );
        assert!(!format!("{s:?}").contains(&text), "Debug hides the secret");
    }

    #[test]
    fn a_bad_secret_file_is_refused_saying_why() {
        for (text, want) in [
            ("short", "32 to 256 characters, not 5"),
            (&"x".repeat(300), "not 300"),
            (
                &format!("{}\n{}", "a".repeat(40), "b".repeat(40)),
                "more than one line",
            ),
            (
                &format!("{} {}", "a".repeat(20), "b".repeat(20)),
                "printable ASCII",
            ),
            (&"é".repeat(20), "printable ASCII"),
        ] {
            let err = PeerSecret::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let err = PeerSecret::load(&dir.path().join("absent")).unwrap_err();
        assert!(
            err.contains("peer secret file") && err.contains("absent"),
            "{err}"
        );
    }
}
