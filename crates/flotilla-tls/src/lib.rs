//! TLS for Flotilla's gRPC traffic, with rustls and ring (no OpenSSL).
//!
//! - [`ReplicaTls`]: a replica's certificate, key and cluster CA (`--tls-cert`, `--tls-key`,
//!   `--tls-client-ca`). It is the server side of every connection the replica accepts and the
//!   client side of the connections it opens to its peers (mutual TLS). SIGHUP re-reads the
//!   three files; connections already open keep the session they began with.
//! - [`ClientTls`]: what a client, the CLI or a worker trusts (`--ca`) and, optionally, the
//!   client certificate it presents.
//! - [`Connector`]: opens the TCP and TLS connection under a tonic `Channel`.
//!
//! **Who is a peer.** A replica answers a Raft call only over a connection whose client
//! certificate the cluster CA signed *and* that is valid for the name [`PEER_NAME`]; it checks
//! its peers' server certificates against the same name. Addresses of peers change behind
//! proxies and NAT; the name does not. A certificate issued for a user
//! (`flotilla cert issue` without `--peer`) lacks the name, so its holder can be a client but
//! never a replica.
//!
//! This crate knows nothing of Raft or the API: the replica and the client library use it at
//! their edges.

mod connector;
mod files;
pub mod issue;
mod replica;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use connector::{ClientTls, Connector};
pub use files::{certs_from_pem, key_from_pem, read_certs, read_key};
pub use replica::{is_peer_certificate, ReplicaFiles, ReplicaTls};
pub use tokio_rustls::server::TlsStream as ServerTlsStream;
pub use tokio_rustls::TlsAcceptor;

/// The name every replica certificate carries (as a DNS subject alternative name) and that
/// replicas check on each other.
pub const PEER_NAME: &str = "flotilla-peer";

/// ALPN protocol of gRPC over TLS (gRPC clients such as grpcio insist on it).
const ALPN_H2: &[u8] = b"h2";

/// Why TLS material could not be used; the message names the file and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The one crypto provider every config is built with (ring), so that nothing depends on a
/// process-wide default being installed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
