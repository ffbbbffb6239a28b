//! A replica's TLS: the server config for what it accepts, the client config for its peers,
//! both built from the same three files and rebuilt together on reload.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::files::{read_certs, read_key, roots};
use crate::{provider, Connector, TlsError, ALPN_H2, PEER_NAME};

/// The files a replica's TLS is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFiles {
    /// This replica's certificate chain (PEM), valid for [`PEER_NAME`] and for the names
    /// clients use to reach it.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster CA (PEM): it signed every replica's certificate and any client certificate
    /// the replica accepts.
    pub client_ca: PathBuf,
}

/// The configs built from [`ReplicaFiles`], swapped whole on reload.
#[derive(Clone)]
struct Configs {
    server: Arc<ServerConfig>,
    peer: Arc<ClientConfig>,
}

/// A replica's TLS, re-read by [`ReplicaTls::reload`] (on SIGHUP).
pub struct ReplicaTls {
    files: ReplicaFiles,
    current: RwLock<Configs>,
}

impl std::fmt::Debug for ReplicaTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ReplicaTls {
    /// Reads and checks the files: the key fits the certificate, and the certificate is one the
    /// cluster CA signed for [`PEER_NAME`] and is valid now (else peers would refuse it).
    pub fn load(files: ReplicaFiles) -> Result<Arc<ReplicaTls>, TlsError> {
        let configs = build(&files)?;
        Ok(Arc::new(ReplicaTls {
            files,
            current: RwLock::new(configs),
        }))
    }

    /// Re-reads the files. On any problem the configs in force stay and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = build(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = configs;
        Ok(())
    }

    /// The files this was read from.
    pub fn files(&self) -> &ReplicaFiles {
        &self.files
    }

    fn current(&self) -> Configs {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Accepts connections with the certificate in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current().server)
    }

    /// Connects to peers: presents this replica's certificate and checks theirs against the
    /// cluster CA and [`PEER_NAME`], with the files in force at each connect.
    pub fn peer_connector(self: &Arc<Self>, connect_timeout: Duration) -> Connector {
        let me = self.clone();
        Connector::new(
            Arc::new(move || me.current().peer),
            Some(ServerName::try_from(PEER_NAME).expect("a valid DNS name")),
            connect_timeout,
        )
    }
}

/// Whether a client certificate (already verified against the cluster CA by the handshake) is
/// a replica's: valid for [`PEER_NAME`].
pub fn is_peer_certificate(cert: &CertificateDer<'_>) -> bool {
    let Ok(parsed) = ParsedCertificate::try_from(cert) else {
        return false;
    };
    let name = ServerName::try_from(PEER_NAME).expect("a valid DNS name");
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

fn build(files: &ReplicaFiles) -> Result<Configs, TlsError> {
    let certs = read_certs("tls cert", &files.cert)?;
    let key = read_key("tls key", &files.key)?;
    let ca = read_certs("tls client ca", &files.client_ca)?;
    let ca_error =
        |e: String| TlsError(format!("tls client ca {}: {e}", files.client_ca.display()));
    let roots = Arc::new(roots(ca).map_err(ca_error)?);
    let provider = provider();

    // The certificate must pass the checks a peer will make of it.
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| ca_error(e.to_string()))?;
    let name = ServerName::try_from(PEER_NAME).expect("a valid DNS name");
    verifier
        .verify_server_cert(&certs[0], &certs[1..], &name, &[], UnixTime::now())
        .map_err(|e| {
            TlsError(format!(
                "tls cert {}: not a replica certificate of the cluster CA {} ({e}); a replica's \
                 certificate must be signed by that CA and name {PEER_NAME} \
                 (flotilla cert issue --peer)",
                files.cert.display(),
                files.client_ca.display()
            ))
        })?;

    let mismatch = |e: rustls::Error| {
        TlsError(format!(
            "tls key {} does not fit tls cert {}: {e}",
            files.key.display(),
            files.cert.display()
        ))
    };
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ca_error(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(clients)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(mismatch)?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    let mut peer = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(mismatch)?;
    peer.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Configs {
        server: Arc::new(server),
        peer: Arc::new(peer),
    })
}
