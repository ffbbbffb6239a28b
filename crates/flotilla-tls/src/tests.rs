//! Handshakes over loopback between the real configs: who is a peer, who is refused.

use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::issue::{issue, new_ca, Pem, Spec};
use crate::{is_peer_certificate, ClientTls, ReplicaFiles, ReplicaTls};

const DAY: Duration = Duration::from_secs(86_400);

fn spec(name: &str, hosts: &[&str], peer: bool) -> Spec {
    Spec {
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        peer,
        valid_for: DAY,
    }
}

fn write(dir: &Path, name: &str, pem: &Pem) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &pem.cert).unwrap();
    std::fs::write(&key, &pem.key).unwrap();
    (cert, key)
}

/// A replica's files under `dir`, signed by `ca`.
fn replica(dir: &Path, ca: &Pem, name: &str) -> ReplicaFiles {
    let (ca_cert, _) = write(dir, "ca", ca);
    let (cert, key) = write(
        dir,
        name,
        &issue(ca, &spec(name, &["127.0.0.1"], true)).unwrap(),
    );
    ReplicaFiles {
        cert,
        key,
        client_ca: ca_cert,
    }
}

/// Accepts one connection with `server` and reports whether its client certificate is a peer's
/// (None: the handshake failed).
async fn serve_one(
    server: std::sync::Arc<ReplicaTls>,
) -> (u16, tokio::task::JoinHandle<Option<bool>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = server.acceptor().accept(tcp).await.ok()?;
        let conn = tls.get_ref().1;
        assert_eq!(
            conn.alpn_protocol(),
            Some(&b"h2"[..]),
            "gRPC needs h2 by ALPN"
        );
        Some(
            conn.peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(is_peer_certificate),
        )
    });
    (port, task)
}

async fn connect(mut connector: crate::Connector, port: u16) -> std::io::Result<()> {
    let uri: http::Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
    tower_service::Service::call(&mut connector, uri)
        .await
        .map(drop)
}

#[tokio::test]
async fn replicas_know_each_other_and_clients_are_not_peers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("test ca", DAY).unwrap();
    let a = ReplicaTls::load(replica(dir.path(), &ca, "a")).unwrap();
    let b = ReplicaTls::load(replica(dir.path(), &ca, "b")).unwrap();

    // A peer presents its certificate and is recognised.
    let (port, seen) = serve_one(a.clone()).await;
    connect(b.peer_connector(DAY), port).await.unwrap();
    assert_eq!(seen.await.unwrap(), Some(true));

    // A client with only the CA connects, and is no peer.
    let client = ClientTls::from_pem(ca.cert.as_bytes(), None).unwrap();
    let (port, seen) = serve_one(a.clone()).await;
    connect(client.connector(DAY), port).await.unwrap();
    assert_eq!(seen.await.unwrap(), Some(false));

    // A client certificate of the same CA, issued without --peer, is no peer either.
    let alice = issue(&ca, &spec("alice", &[], false)).unwrap();
    let client = ClientTls::from_pem(
        ca.cert.as_bytes(),
        Some((alice.cert.as_bytes(), alice.key.as_bytes())),
    )
    .unwrap();
    let (port, seen) = serve_one(a.clone()).await;
    connect(client.connector(DAY), port).await.unwrap();
    assert_eq!(seen.await.unwrap(), Some(false));
}

#[tokio::test]
async fn another_ca_is_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("ours", DAY).unwrap();
    let theirs = new_ca("theirs", DAY).unwrap();
    let a = ReplicaTls::load(replica(dir.path(), &ca, "a")).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let intruder = ReplicaTls::load(replica(other_dir.path(), &theirs, "x")).unwrap();

    // A client trusting another CA refuses the replica.
    let client = ClientTls::from_pem(theirs.cert.as_bytes(), None).unwrap();
    let (port, seen) = serve_one(a.clone()).await;
    let e = connect(client.connector(DAY), port).await.unwrap_err();
    assert!(e.to_string().contains("tls handshake"), "{e}");
    assert_eq!(seen.await.unwrap(), None);

    // A "replica" of another CA is refused by ours.
    let (port, seen) = serve_one(a.clone()).await;
    let _ = connect(intruder.peer_connector(DAY), port).await;
    assert_eq!(
        seen.await.unwrap(),
        None,
        "the handshake fails on the server"
    );

    // A client dialling a name the certificate does not carry is refused, unless told the
    // name to expect.
    let client = ClientTls::from_pem(ca.cert.as_bytes(), None).unwrap();
    let (port, _seen) = serve_one(a.clone()).await;
    let mut c = client.connector(DAY);
    let uri: http::Uri = format!("http://localhost:{port}").parse().unwrap();
    let e = tower_service::Service::call(&mut c, uri).await.unwrap_err();
    assert!(
        e.to_string().contains("not valid for name \"localhost\""),
        "{e}"
    );
    let (port, seen) = serve_one(a.clone()).await;
    let named = client.with_server_name("127.0.0.1").unwrap();
    let mut c = named.connector(DAY);
    let uri: http::Uri = format!("http://localhost:{port}").parse().unwrap();
    tower_service::Service::call(&mut c, uri).await.unwrap();
    assert_eq!(seen.await.unwrap(), Some(false));
}

#[test]
fn a_replica_certificate_must_name_the_peer_and_come_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("ours", DAY).unwrap();
    let (ca_cert, _) = write(dir.path(), "ca", &ca);
    // Issued without --peer: refused at start, saying how to issue it.
    let (cert, key) = write(
        dir.path(),
        "user",
        &issue(&ca, &spec("u", &["127.0.0.1"], false)).unwrap(),
    );
    let e = ReplicaTls::load(ReplicaFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: ca_cert.clone(),
    })
    .unwrap_err()
    .0;
    assert!(
        e.contains("not a replica certificate") && e.contains("--peer"),
        "{e}"
    );
    // Signed by another CA.
    let other = new_ca("theirs", DAY).unwrap();
    let (cert, key) = write(
        dir.path(),
        "x",
        &issue(&other, &spec("x", &["h"], true)).unwrap(),
    );
    let e = ReplicaTls::load(ReplicaFiles {
        cert,
        key: key.clone(),
        client_ca: ca_cert.clone(),
    })
    .unwrap_err()
    .0;
    assert!(e.contains("not a replica certificate"), "{e}");
    // A key that is not the certificate's.
    let (cert, _) = write(
        dir.path(),
        "r",
        &issue(&ca, &spec("r", &["h"], true)).unwrap(),
    );
    let e = ReplicaTls::load(ReplicaFiles {
        cert,
        key,
        client_ca: ca_cert,
    })
    .unwrap_err()
    .0;
    assert!(e.contains("does not fit"), "{e}");
    // A peer certificate needs a host clients dial; names must be words.
    assert!(issue(&ca, &spec("r", &[], true))
        .unwrap_err()
        .0
        .contains("--host"));
    assert!(issue(&ca, &spec("a b", &["h"], true))
        .unwrap_err()
        .0
        .contains("name"));
}

/// The certificate `server` presents to a client now.
async fn served_cert(server: std::sync::Arc<ReplicaTls>, ca: &Pem) -> Vec<u8> {
    let (port, _seen) = serve_one(server).await;
    let mut c = ClientTls::from_pem(ca.cert.as_bytes(), None)
        .unwrap()
        .connector(DAY);
    let uri: http::Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
    let io = tower_service::Service::call(&mut c, uri).await.unwrap();
    io.inner().get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn reload_swaps_the_files_and_a_broken_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("ours", DAY).unwrap();
    let files = replica(dir.path(), &ca, "a");
    let tls = ReplicaTls::load(files.clone()).unwrap();
    let first = crate::read_certs("t", &files.cert).unwrap()[0].to_vec();
    assert_eq!(served_cert(tls.clone(), &ca).await, first);
    // A new certificate from the same CA is served after the reload.
    write(
        dir.path(),
        "a",
        &issue(&ca, &spec("a", &["127.0.0.1"], true)).unwrap(),
    );
    let second = crate::read_certs("t", &files.cert).unwrap()[0].to_vec();
    assert_ne!(first, second);
    assert_eq!(
        served_cert(tls.clone(), &ca).await,
        first,
        "not before the reload"
    );
    tls.reload().unwrap();
    assert_eq!(served_cert(tls.clone(), &ca).await, second);
    // A broken one is refused and the certificate in force stays.
    std::fs::write(&files.cert, "garbage").unwrap();
    let e = tls.reload().unwrap_err().0;
    assert!(
        e.contains("tls cert") && e.contains("no certificate"),
        "{e}"
    );
    assert_eq!(served_cert(tls.clone(), &ca).await, second);
}
