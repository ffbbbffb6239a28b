//! Making a cluster CA and issuing certificates from it (`flotilla cert`), so that an operator
//! needs no OpenSSL recipe: a replica certificate names [`PEER_NAME`] and the hosts clients
//! dial; a client certificate names only its holder.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{TlsError, PEER_NAME};

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The holder's name (the certificate's common name), e.g. `replica-1` or `alice`.
    pub name: String,
    /// DNS names and IP addresses the holder is reached at (for a replica: what clients dial).
    pub hosts: Vec<String>,
    /// A replica's certificate: names [`PEER_NAME`] and serves as server and client.
    pub peer: bool,
    /// Valid from now for this long.
    pub valid_for: Duration,
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + valid_for;
}

fn failed(e: rcgen::Error) -> TlsError {
    TlsError(format!("cannot make the certificate: {e}"))
}

/// A new CA named `name`, valid for `valid_for`.
pub fn new_ca(name: &str, valid_for: Duration) -> Result<Pem, TlsError> {
    let key = KeyPair::generate().map_err(failed)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, valid_for);
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for `spec`, signed by the CA `ca`.
pub fn issue(ca: &Pem, spec: &Spec) -> Result<Pem, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key)
        .map_err(|e| TlsError(format!("ca key: not a PEM private key: {e}")))?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca.cert)
        .map_err(|e| TlsError(format!("ca cert: not a PEM CA certificate: {e}")))?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| TlsError(format!("ca key does not fit the ca cert: {e}")))?;
    if spec.name.is_empty() || spec.name.chars().any(char::is_whitespace) {
        return Err(TlsError(format!(
            "name {:?}: want a word without spaces",
            spec.name
        )));
    }
    let mut sans = Vec::new();
    if spec.peer {
        sans.push(SanType::DnsName(PEER_NAME.try_into().map_err(failed)?));
    }
    for host in &spec.hosts {
        sans.push(match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|e| TlsError(format!("host {host:?}: not a DNS name or IP: {e}")))?,
            ),
        });
    }
    if spec.peer && spec.hosts.is_empty() {
        return Err(TlsError(
            "a replica certificate needs at least one --host: the name or address clients dial"
                .into(),
        ));
    }
    let key = KeyPair::generate().map_err(failed)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, &spec.name);
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if spec.peer {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    validity(&mut params, spec.valid_for);
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(failed)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}
