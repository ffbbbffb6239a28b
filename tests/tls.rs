//! TLS end to end: replicas started with `--tls-cert/--tls-key/--tls-client-ca` (and tokens),
//! the client library, the CLI and a worker process over TLS; who is refused and how; peers
//! that must present a replica certificate; certificates re-read on SIGHUP.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_client::{Client, ClientConfig, ClientTls, TaskSpec, TaskState};
use flotilla_proto::raftpb::{raft_client::RaftClient, HelloRequest};
use flotilla_testkit::ClusterOptions;
use support::{bin, eventually, new_token, TestCluster};
use tonic::transport::Endpoint;

fn echo(key: &str) -> TaskSpec {
    let mut s = TaskSpec::new("default", b"{\"argv\":[\"echo\",\"tls\"]}".to_vec());
    s.idempotency_key = Some(key.to_string());
    s
}

fn client(addrs: &[String], tls: Option<ClientTls>, token: &str) -> Client {
    Client::with_config(
        addrs.to_vec(),
        ClientConfig {
            token: Some(token.to_string()),
            tls,
            call_timeout: Duration::from_secs(4),
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

/// `flotilla cert ...`; panics with its stderr unless it succeeds.
fn cert(args: &[&str]) {
    let out = Command::new(bin()).arg("cert").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "flotilla cert {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The certificate (DER) the replica at `addr` serves now.
async fn served_cert(addr: &str, ca: &Path) -> Vec<u8> {
    let tls = flotilla_client::tls_from_files(ca, None, None, None).unwrap();
    let mut connector = tls.connector(Duration::from_secs(2));
    let uri: http::Uri = format!("http://{addr}").parse().unwrap();
    let io = tower_service::Service::call(&mut connector, uri)
        .await
        .unwrap();
    io.inner().get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_tokens_end_to_end_and_who_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let admin = new_token(&tokens, "ops", "admin", "");
    let runner = new_token(&tokens, "runner", "worker", "");
    let runner_file = dir.path().join("runner.token");
    std::fs::write(&runner_file, format!("{runner}\n")).unwrap();
    let tls_dir = dir.path().join("tls");
    let options = ClusterOptions {
        extra_args: vec!["--tokens-file".into(), tokens.display().to_string()],
        client_token: Some(admin.clone()),
        ..ClusterOptions::for_tests()
    }
    .with_tls(&tls_dir)
    .unwrap();
    let mut tc = TestCluster::start_with(3, options).await;
    let leader = tc.leader().await;
    let addrs = tc.cluster.addrs();
    let ca = tls_dir.join("ca.pem");

    // Over TLS with a token: a task is submitted, run by a worker process over TLS, and read.
    let ids = tc.client().submit(vec![echo("t1")]).await.unwrap();
    tc.cluster
        .start_worker(
            "w1",
            &[
                "--ca",
                ca.to_str().unwrap(),
                "--token-file",
                runner_file.to_str().unwrap(),
            ],
        )
        .unwrap();
    let done = tc
        .client()
        .wait(ids[0], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");

    // Plain TCP to a TLS replica gets nowhere, and changes nothing.
    let e = client(&addrs, None, &admin)
        .submit(vec![echo("plain")])
        .await
        .unwrap_err();
    assert!(
        matches!(e, flotilla_client::ClientError::Unavailable(_)),
        "{e}"
    );
    // A client trusting another CA refuses the replicas' certificates.
    let other = dir.path().join("other");
    cert(&["ca", "--out", other.to_str().unwrap()]);
    let wrong = flotilla_client::tls_from_files(&other.join("ca.pem"), None, None, None).unwrap();
    let e = client(&addrs, Some(wrong), &admin)
        .submit(vec![echo("wrong-ca")])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate"), "the error names the cause: {e}");
    // Dialled by a name the certificates do not carry, unless told the name to expect.
    let by_name: Vec<String> = addrs
        .iter()
        .map(|a| a.replace("127.0.0.1", "localhost"))
        .collect();
    let named = flotilla_client::tls_from_files(&ca, None, None, Some("localhost")).unwrap();
    client(&by_name, Some(named), &admin)
        .cluster_status()
        .await
        .expect("localhost is in the replica certificate");

    // The CLI: --ca and the token; without --ca, one line and a non-zero exit.
    let cli = |ca: Option<&Path>| {
        let mut cmd = Command::new(bin());
        cmd.args(["submit", "--key", "cli-1", "--cluster"])
            .arg(addrs.join(","))
            .env("FLOTILLA_TOKEN", &admin)
            .env_remove("FLOTILLA_CA");
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca);
        }
        cmd.args(["--", "true"]).output().unwrap()
    };
    let out = cli(Some(&ca));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(Some(&dir.path().join("absent.pem")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("ca") && err.contains("absent.pem"), "{err}");

    // Peers: a Raft call over TLS without a replica certificate is refused, with or without a
    // user's client certificate of the same CA.
    cert(&[
        "issue",
        "--ca-dir",
        tls_dir.to_str().unwrap(),
        "--name",
        "alice",
    ]);
    let alice = flotilla_client::tls_from_files(
        &ca,
        Some(&tls_dir.join("alice.pem")),
        Some(&tls_dir.join("alice.key")),
        None,
    )
    .unwrap();
    let anonymous = flotilla_client::tls_from_files(&ca, None, None, None).unwrap();
    for (who, tls) in [
        ("a user's certificate", alice.clone()),
        ("no certificate", anonymous),
    ] {
        let endpoint =
            Endpoint::from_shared(format!("http://{}", tc.cluster.addr(leader))).unwrap();
        let channel = tls
            .connector(Duration::from_secs(2))
            .channel(endpoint)
            .await
            .unwrap();
        let status = RaftClient::new(channel)
            .hello(HelloRequest {
                cluster: tc.cluster.cluster_name().to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{who}: {status:?}"
        );
        assert!(
            status.message().contains("replica certificate"),
            "{who}: {status:?}"
        );
    }
    // The user's certificate is fine for client calls (with a token).
    client(&addrs, Some(alice), &admin)
        .cluster_status()
        .await
        .unwrap();

    // Nothing refused left a trace: exactly the two accepted tasks exist.
    let all = support::all_tasks(&tc.client()).await;
    assert_eq!(all.len(), 2, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_are_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let options = ClusterOptions::for_tests().with_tls(&tls_dir).unwrap();
    let mut tc = TestCluster::start_with(3, options).await;
    tc.leader().await;
    let ca = tls_dir.join("ca.pem");
    let first = served_cert(tc.cluster.addr(1), &ca).await;

    // A new replica certificate from the same CA replaces the files; replica 1 is told.
    cert(&[
        "issue",
        "--ca-dir",
        tls_dir.to_str().unwrap(),
        "--name",
        "next",
        "--peer",
        "--host",
        "127.0.0.1",
    ]);
    std::fs::rename(tls_dir.join("next.pem"), tls_dir.join("replica.pem")).unwrap();
    std::fs::rename(tls_dir.join("next.key"), tls_dir.join("replica.key")).unwrap();
    let pid = tc.cluster.pid(1).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let addr1 = tc.cluster.addr(1).to_string();
    let second = eventually(
        "replica 1 serves the new certificate",
        Duration::from_secs(10),
        || {
            let (addr, ca, first) = (addr1.clone(), ca.clone(), first.clone());
            async move {
                let now = served_cert(&addr, &ca).await;
                (now != first).then_some(now)
            }
        },
    )
    .await;
    assert_eq!(
        second,
        flotilla_tls::read_certs("t", &tls_dir.join("replica.pem")).unwrap()[0].to_vec()
    );
    // The others serve the old one until told, and the cluster works across both.
    assert_eq!(served_cert(tc.cluster.addr(2), &ca).await, first);
    let ids = tc
        .client()
        .submit(vec![echo("after-reload")])
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);

    // A broken file on SIGHUP keeps the certificate in force, and the replica runs on.
    std::fs::write(tls_dir.join("replica.pem"), "garbage").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    eventually("the refusal is logged", Duration::from_secs(10), || {
        let log = tc.cluster.log_tail(1, 50);
        async move { log.contains("not reloaded").then_some(()) }
    })
    .await;
    assert_eq!(served_cert(&addr1, &ca).await, second);
    assert!(tc.cluster.is_running(1));
}
