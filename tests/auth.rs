//! Tokens with roles, end to end: tokens made with `flotilla token new`, replicas started with
//! `--tokens-file`, calls from the client library, the CLI and a worker process.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_cli::local_cluster::ReplicaOptions;
use flotilla_client::{Client, ClientConfig, ClientError, Code, TaskSpec, TaskState};
use support::{all_tasks, bin, TestCluster};

/// `flotilla token new`; returns the token it printed.
fn new_token(file: &Path, name: &str, role: &str, queues: &str) -> String {
    let mut cmd = Command::new(bin());
    cmd.args([
        "token",
        "new",
        "--name",
        name,
        "--role",
        role,
        "--tokens-file",
    ])
    .arg(file);
    if !queues.is_empty() {
        cmd.args(["--queues", queues]);
    }
    let out = cmd.output().expect("run flotilla token new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("flt_"), "{token}");
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        !text.contains(&token),
        "the file holds only the token's hash"
    );
    token
}

fn spec_in(queue: &str, key: &str) -> TaskSpec {
    let mut s = TaskSpec::new(
        queue,
        format!("{{\"argv\":[\"echo\",\"{key}\"]}}").into_bytes(),
    );
    s.idempotency_key = Some(key.to_string());
    s
}

fn code(e: ClientError) -> (Code, String) {
    match e {
        ClientError::Rejected(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_roles_allow_and_refuse_calls() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let admin = new_token(&file, "ops", "admin", "");
    let read = new_token(&file, "viewer", "read", "");
    let submit = new_token(&file, "ci", "submit", "builds");
    let worker = new_token(&file, "runner", "worker", "");
    // A bad role is one line and a non-zero exit, and leaves the file alone.
    let before = std::fs::read_to_string(&file).unwrap();
    let out = Command::new(bin())
        .args([
            "token",
            "new",
            "--name",
            "x",
            "--role",
            "boss",
            "--tokens-file",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown role \"boss\""), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    let options = ReplicaOptions {
        extra_args: vec!["--tokens-file".into(), file.display().to_string()],
        client_token: Some(admin.clone()),
        ..ReplicaOptions::for_tests()
    };
    let mut tc = TestCluster::start_with(3, options).await;
    let addrs = tc.cluster.addrs();
    let as_ = |token: Option<&str>| {
        Client::with_config(
            addrs.clone(),
            ClientConfig {
                token: token.map(String::from),
                call_timeout: Duration::from_secs(20),
                ..ClientConfig::default()
            },
        )
        .unwrap()
    };

    // No token, an unknown one: UNAUTHENTICATED, for reads and writes alike.
    let (c, m) = code(
        as_(None)
            .submit(vec![spec_in("builds", "k0")])
            .await
            .unwrap_err(),
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("no token"), "{m}");
    let (c, m) = code(as_(Some("flt_00")).cluster_status().await.unwrap_err());
    assert_eq!((c, m.as_str()), (Code::Unauthenticated, "unknown token"));

    // read: reads, but may not submit.
    as_(Some(&read))
        .cluster_status()
        .await
        .expect("read may see status");
    let (c, m) = code(
        as_(Some(&read))
            .submit(vec![spec_in("builds", "k1")])
            .await
            .unwrap_err(),
    );
    assert_eq!(c, Code::PermissionDenied, "{m}");
    assert!(m.contains("\"viewer\" has role read"), "{m}");

    // submit, limited to `builds`: submits and cancels there, nowhere else.
    let ci = as_(Some(&submit));
    let ids = ci
        .submit(vec![spec_in("builds", "b1"), spec_in("builds", "b2")])
        .await
        .unwrap();
    let (c, m) = code(
        ci.submit(vec![spec_in("builds", "b3"), spec_in("deploy", "d1")])
            .await
            .unwrap_err(),
    );
    assert_eq!(c, Code::PermissionDenied, "{m}");
    assert!(
        m.contains("tasks[1].queue") && m.contains("\"deploy\""),
        "{m}"
    );
    let other = tc
        .client()
        .submit(vec![spec_in("deploy", "d2")])
        .await
        .unwrap()[0];
    let (c, m) = code(ci.cancel(other).await.unwrap_err());
    assert_eq!(c, Code::PermissionDenied, "{m}");
    ci.cancel(ids[1]).await.expect("cancel in its own queue");
    let (c, _) = code(
        ci.set_queue_policy("builds", flotilla_core::QueuePolicy::Fifo, false)
            .await
            .unwrap_err(),
    );
    assert_eq!(c, Code::PermissionDenied);
    tc.client()
        .set_queue_policy("builds", flotilla_core::QueuePolicy::Fifo, false)
        .await
        .expect("admin sets queue policies");
    // The submit pipeline (one stream, many requests) is checked per request too.
    let pipe = ci.pipeline();
    let (c, _) = code(
        pipe.submit(vec![spec_in("deploy", "d3")])
            .await
            .unwrap_err(),
    );
    assert_eq!(c, Code::PermissionDenied);
    let piped = pipe.submit(vec![spec_in("builds", "b4")]).await.unwrap()[0];

    // A worker needs a worker token; with one it runs the task.
    let token_file = dir.path().join("runner.token");
    std::fs::write(&token_file, format!("{worker}\n")).unwrap();
    tc.cluster
        .start_worker(
            "w1",
            &[
                "--token-file",
                token_file.to_str().unwrap(),
                "--queue",
                "builds",
            ],
        )
        .unwrap();
    let done = tc
        .client()
        .wait(ids[0], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let (c, _) = code(
        as_(Some(&worker))
            .submit(vec![spec_in("builds", "w")])
            .await
            .unwrap_err(),
    );
    assert_eq!(c, Code::PermissionDenied);

    // The CLI: one line and a non-zero exit without a token; FLOTILLA_TOKEN works.
    let cli = |token: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.args(["submit", "--queue", "builds", "--key", "cli-1", "--cluster"])
            .arg(addrs.join(","))
            .args(["--", "true"])
            .env_remove("FLOTILLA_TOKEN")
            .env_remove("FLOTILLA_TOKEN_FILE");
        if let Some(t) = token {
            cmd.env("FLOTILLA_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = cli(None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no token"), "{err}");
    let out = cli(Some(&submit));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();

    // Refused calls changed nothing: exactly the accepted tasks exist.
    let mut got: Vec<u64> = all_tasks(&tc.client())
        .await
        .iter()
        .map(|t| t.id.0)
        .collect();
    got.sort();
    let mut want = vec![ids[0].0, ids[1].0, other.0, piped.0, cli_id];
    want.sort();
    assert_eq!(got, want);
    tc.cluster.kill_worker("w1").unwrap();
}

/// A tokens file that is missing or has a bad line stops the replica at start, with one line
/// naming the file (and the line), before its data dir is created.
#[test]
fn a_missing_or_bad_tokens_file_stops_the_replica_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tokens");
    std::fs::write(&bad, "ops admin sha256:00\n").unwrap();
    for (file, want) in [
        (
            dir.path().join("absent"),
            "absent: No such file".to_string(),
        ),
        (
            bad.clone(),
            format!("tokens file {}: line 1", bad.display()),
        ),
    ] {
        let data = dir.path().join("data");
        let out = Command::new(bin())
            .args([
                "server",
                "--id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&data)
            .args(["--peers", "1=127.0.0.1:1", "--tokens-file"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(&want), "{err}");
        assert!(!data.exists(), "nothing was opened");
    }
}
