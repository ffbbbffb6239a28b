//! Reading PEM certificates and keys, with errors that name the file and what is wrong.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// The certificates (PEM) in `path`; `what` names the setting in errors (e.g. "tls cert").
pub fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    certs_from_pem(&bytes).map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))
}

/// The private key (PEM: PKCS#8, PKCS#1 or SEC1) in `path`.
pub fn read_key(what: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(what, path)?;
    key_from_pem(&bytes).map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))
}

/// Every certificate in PEM text; at least one.
pub fn certs_from_pem(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no certificate (want PEM: -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// The first private key in PEM text.
pub fn key_from_pem(pem_bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            "holds no private key (want PEM: -----BEGIN PRIVATE KEY-----)".to_string()
        }
        e => format!("not a PEM private key: {e}"),
    })
}

/// A root store of `certs` (the CAs trusted).
pub(crate) fn roots(certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_refused_naming_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let e = read_certs("tls cert", &empty).unwrap_err().0;
        assert!(
            e.contains("tls cert") && e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = read_key("tls key", &empty).unwrap_err().0;
        assert!(e.contains("tls key") && e.contains("no private key"), "{e}");
        let e = read_certs("tls client ca", &dir.path().join("absent.pem"))
            .unwrap_err()
            .0;
        assert!(
            e.contains("tls client ca") && e.contains("absent.pem"),
            "{e}"
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(certs_from_pem(cert.pem().as_bytes()).unwrap().len(), 1);
        assert!(key_from_pem(key.serialize_pem().as_bytes()).is_ok());
        let e = key_from_pem(cert.pem().as_bytes()).unwrap_err();
        assert!(
            e.contains("no private key"),
            "a certificate is not a key: {e}"
        );
    }
}
