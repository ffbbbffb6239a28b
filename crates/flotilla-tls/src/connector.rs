//! The client side: what a client trusts ([`ClientTls`]) and the connector that opens TCP and
//! TLS under a tonic `Channel` ([`Connector`]).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::files::{certs_from_pem, key_from_pem, read_certs, read_key, roots};
use crate::{provider, TlsError, ALPN_H2};

/// A handshake taking longer than this fails the connect.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client trusts (the CA that signed the replicas' certificates) and, optionally, the
/// certificate it presents.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// The name to check replicas' certificates against; by default the host of the address
    /// dialled.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `ca` (PEM); presents `identity` (certificate chain and
    /// key, PEM) when given.
    pub fn from_pem(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<ClientTls, TlsError> {
        let ca = certs_from_pem(ca).map_err(|e| TlsError(format!("ca: {e}")))?;
        let identity = match identity {
            Some((cert, key)) => Some((
                certs_from_pem(cert).map_err(|e| TlsError(format!("client cert: {e}")))?,
                key_from_pem(key).map_err(|e| TlsError(format!("client key: {e}")))?,
            )),
            None => None,
        };
        Self::build(ca, identity, "ca")
    }

    /// As [`ClientTls::from_pem`], from files; a certificate needs its key and the other way
    /// round.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<ClientTls, TlsError> {
        let ca_certs = read_certs("ca", ca)?;
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read_certs("client cert", c)?, read_key("client key", k)?)),
            (None, None) => None,
            (Some(_), None) => return Err(TlsError("a client cert needs its client key".into())),
            (None, Some(_)) => return Err(TlsError("a client key needs its client cert".into())),
        };
        Self::build(ca_certs, identity, &format!("ca {}", ca.display()))
    }

    fn build(
        ca: Vec<rustls_pki_types::CertificateDer<'static>>,
        identity: Option<(
            Vec<rustls_pki_types::CertificateDer<'static>>,
            rustls_pki_types::PrivateKeyDer<'static>,
        )>,
        ca_name: &str,
    ) -> Result<ClientTls, TlsError> {
        let roots = roots(ca).map_err(|e| TlsError(format!("{ca_name}: {e}")))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError(format!("client key does not fit client cert: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// Checks replicas' certificates against `name` instead of the host dialled (for replicas
    /// reached through addresses their certificates do not name).
    pub fn with_server_name(mut self, name: &str) -> Result<ClientTls, TlsError> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| TlsError(format!("tls server name {name:?}: {e}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// The connector for channels to replicas.
    pub fn connector(&self, connect_timeout: Duration) -> Connector {
        let config = self.config.clone();
        Connector::new(
            Arc::new(move || config.clone()),
            self.server_name.clone(),
            connect_timeout,
        )
    }
}

type ConfigSource = Arc<dyn Fn() -> Arc<ClientConfig> + Send + Sync>;

/// Opens TCP (with a connect timeout, without Nagle's delay) and then TLS to the URI's host,
/// for tonic's `Endpoint::connect_with_connector`. Errors are `io::Error`s: a refused connect
/// keeps its `ConnectionRefused` kind, so callers tell an unreachable replica from a failed
/// handshake.
#[derive(Clone)]
pub struct Connector {
    config: ConfigSource,
    server_name: Option<ServerName<'static>>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.server_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub(crate) fn new(
        config: ConfigSource,
        server_name: Option<ServerName<'static>>,
        connect_timeout: Duration,
    ) -> Connector {
        Connector {
            config,
            server_name,
            connect_timeout,
        }
    }

    /// A channel over TLS, connecting on first use.
    pub fn lazy_channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.clone())
    }

    /// A channel over TLS, connected now.
    pub async fn channel(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(self.clone()).await
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
                })?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::time::timeout(
                this.connect_timeout,
                TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "tcp connect error: {host}:{port} did not answer within {:?}",
                        this.connect_timeout
                    ),
                )
            })??;
            tcp.set_nodelay(true)?;
            let name = match this.server_name {
                Some(n) => n,
                None => ServerName::try_from(host.clone()).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{host} is not a name a certificate can carry: {e}"),
                    )
                })?,
            };
            let handshake = tokio_rustls::TlsConnector::from((this.config)()).connect(name, tcp);
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("tls handshake with {host}:{port} timed out"),
                    )
                })?
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("tls handshake with {host}:{port}: {e}"))
                })?;
            Ok(TokioIo::new(tls))
        })
    }
}
