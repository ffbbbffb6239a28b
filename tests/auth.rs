//! Tokens with roles, end to end: tokens made with `flotilla token new`, replicas started with
//! `--tokens-file`, calls from the client library, the CLI and a worker process.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_client::{Client, ClientConfig, ClientError, Code, TaskSpec, TaskState};
use flotilla_testkit::ClusterOptions;
use support::{all_tasks, bin, new_token, TestCluster};

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

    let options = ClusterOptions {
        extra_args: vec!["--tokens-file".into(), file.display().to_string()],
        client_token: Some(admin.clone()),
        ..ClusterOptions::for_tests()
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

/// Issue 14 item 4: a completion, failure (one by one or batched), checkpoint or heartbeat is
/// accepted only from the session the worker registered with, made with the token it
/// registered with. Knowing the worker's id and the attempt (both visible through `GetTask`)
/// is not enough, and each refusal changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_be_impersonated_even_knowing_the_attempt() {
    use flotilla_client::WorkerEvent;
    use flotilla_core::{Capacity, WorkerSpec};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let admin = new_token(&file, "ops", "admin", "");
    let submit = new_token(&file, "ci", "submit", "");
    let runner_a = new_token(&file, "runner-a", "worker", "");
    let runner_b = new_token(&file, "runner-b", "worker", "");
    let options = ClusterOptions {
        extra_args: vec!["--tokens-file".into(), file.display().to_string()],
        client_token: Some(admin.clone()),
        ..ClusterOptions::for_tests()
    };
    let tc = TestCluster::start_with(3, options).await;
    let addrs = tc.cluster.addrs();
    let as_ = |token: &str| {
        Client::with_config(
            addrs.clone(),
            ClientConfig {
                token: Some(token.to_string()),
                call_timeout: Duration::from_secs(20),
                ..ClientConfig::default()
            },
        )
        .unwrap()
    };
    let (ci, a, b) = (as_(&submit), as_(&runner_a), as_(&runner_b));

    let task = ci.submit(vec![spec_in("default", "t1")]).await.unwrap()[0];
    let session = "7f3c9b1e-the-worker-process-secret".to_string();
    let spec = WorkerSpec {
        id: "wa".into(),
        session: session.clone(),
        capacity: Capacity {
            slots: 1,
            cpu_millis: 1000,
            mem_mb: 1024,
        },
        labels: Default::default(),
        queues: vec![],
    };
    let mut stream = a.register_worker(&spec).await.expect("register wa");
    let attempt = match tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an assignment within 20 s")
        .unwrap()
    {
        Some(WorkerEvent::Assign(x)) if x.task_id == task => x.attempt,
        other => panic!("expected the assignment of {task}, got {other:?}"),
    };
    let t = tc.client().get(task).await.unwrap();
    assert_eq!(
        (t.state, t.attempts, t.worker.as_deref()),
        (TaskState::Running, attempt, Some("wa"))
    );

    let refused = |what: &str, r: Result<(), ClientError>, want: &str| {
        let (c, m) = code(r.expect_err(what));
        assert_eq!(c, Code::PermissionDenied, "{what}: {m}");
        assert!(m.contains(want), "{what}: {m}");
    };
    // A submit token with the worker's id, its session and the right attempt: wrong role.
    refused(
        "submit token",
        ci.complete_task("wa", &session, task, attempt, b"forged".to_vec())
            .await,
        "\"ci\" has role submit",
    );
    // Another worker's token, even with the right session: bound to the registering token.
    let another = "registered with another token";
    refused(
        "complete, runner-b",
        b.complete_task("wa", &session, task, attempt, b"forged".to_vec())
            .await,
        another,
    );
    refused(
        "fail, runner-b",
        b.fail_task("wa", &session, task, attempt, "forged".into(), false)
            .await,
        another,
    );
    refused(
        "checkpoint, runner-b",
        b.checkpoint("wa", &session, task, attempt, 900, b"forged".to_vec())
            .await,
        another,
    );
    refused(
        "batched report, runner-b",
        b.report_outcomes(
            "wa",
            &session,
            &[(
                task,
                attempt,
                flotilla_client::Outcome::Success(b"forged".to_vec()),
            )],
        )
        .await
        .map(|_| ()),
        another,
    );
    refused(
        "heartbeat, runner-b",
        b.heartbeat("wa", &session, &[]).await.map(|_| ()),
        another,
    );
    refused(
        "register as wa, runner-b",
        b.register_worker(&spec).await.map(|_| ()),
        another,
    );
    // The right token with a guessed session: bound to the session.
    refused(
        "complete, guessed session",
        a.complete_task("wa", "guess", task, attempt, b"forged".to_vec())
            .await,
        "session",
    );
    refused(
        "batched report, guessed session",
        a.report_outcomes(
            "wa",
            "guess",
            &[(
                task,
                attempt,
                flotilla_client::Outcome::Success(b"forged".to_vec()),
            )],
        )
        .await
        .map(|_| ()),
        "session",
    );
    // The session is never shown.
    let listed = tc.client().list_workers().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].spec.id, "wa");
    assert_eq!(listed[0].spec.session, "", "ListWorkers hides the session");

    // None of that changed the task.
    let t = tc.client().get(task).await.unwrap();
    assert_eq!(
        (
            t.state,
            t.attempts,
            t.worker.as_deref(),
            t.result.as_deref()
        ),
        (TaskState::Running, attempt, Some("wa"), None)
    );
    assert!(t.checkpoint.is_none(), "{t:?}");

    // The worker itself: a stale attempt is still fenced, the current one is accepted.
    let (c, m) = code(
        a.complete_task("wa", &session, task, attempt + 1, b"x".to_vec())
            .await
            .unwrap_err(),
    );
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    a.complete_task("wa", &session, task, attempt, b"ok".to_vec())
        .await
        .expect("the worker's own completion");
    let t = tc.client().get(task).await.unwrap();
    assert_eq!(
        (t.state, t.result.as_deref()),
        (TaskState::Succeeded, Some(&b"ok"[..]))
    );
}

/// SIGHUP re-reads the tokens file: a token added after start is accepted, a removed one is
/// refused, and a broken file leaves the tokens in force (saying why in the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_file_is_reloaded_on_sighup() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let admin = new_token(&file, "ops", "admin", "");
    let options = ClusterOptions {
        extra_args: vec!["--tokens-file".into(), file.display().to_string()],
        client_token: Some(admin.clone()),
        ..ClusterOptions::for_tests()
    };
    let tc = TestCluster::start_with(3, options).await;
    let ids = tc.cluster.ids();
    let hangup = || {
        for id in &ids {
            let pid = tc.cluster.pid(*id).expect("running") as i32;
            kill(Pid::from_raw(pid), Signal::SIGHUP).expect("SIGHUP");
        }
    };
    // Each replica on its own: every one must have reloaded.
    let status_everywhere = |token: String| {
        let addrs = tc.cluster.addrs();
        async move {
            let mut codes = Vec::new();
            for a in addrs {
                let c = Client::with_config(
                    vec![a],
                    ClientConfig {
                        token: Some(token.clone()),
                        call_timeout: Duration::from_secs(5),
                        ..ClientConfig::default()
                    },
                )
                .unwrap();
                codes.push(match c.cluster_status().await {
                    Ok(_) => Code::Ok,
                    Err(e) => code(e).0,
                });
            }
            codes
        }
    };

    let late = new_token(&file, "late", "read", "");
    assert_eq!(
        status_everywhere(late.clone()).await,
        vec![Code::Unauthenticated; 3],
        "a token added after start is unknown until SIGHUP"
    );
    hangup();
    support::eventually(
        "every replica to accept the new token",
        Duration::from_secs(10),
        || {
            let s = status_everywhere(late.clone());
            async move { (s.await == vec![Code::Ok; 3]).then_some(()) }
        },
    )
    .await;

    // A broken file: the tokens in force stay, and each replica says why.
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{good}late admin sha256:00\n")).unwrap();
    hangup();
    for id in &ids {
        let log = tc.cluster.log_path(*id);
        support::eventually(
            "the refused reload in the log",
            Duration::from_secs(10),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                async move {
                    text.contains("not reloaded, what was in force stays")
                        .then_some(())
                }
            },
        )
        .await;
    }
    assert_eq!(status_everywhere(late.clone()).await, vec![Code::Ok; 3]);

    // Removing the line revokes the token.
    let without: String = good
        .lines()
        .filter(|l| !l.starts_with("late "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, without).unwrap();
    hangup();
    support::eventually(
        "every replica to refuse the removed token",
        Duration::from_secs(10),
        || {
            let s = status_everywhere(late.clone());
            async move { (s.await == vec![Code::Unauthenticated; 3]).then_some(()) }
        },
    )
    .await;
    tc.client()
        .cluster_status()
        .await
        .expect("the admin token still works");
}

/// Issue 14 item 2: with `--peer-secret-file`, replicas form a cluster and replicate (their own
/// peer calls carry the secret), while a peer call without it or with another one is refused
/// with UNAUTHENTICATED before its message is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_calls_need_the_cluster_secret() {
    use flotilla_proto::raftpb::{
        raft_client::RaftClient, HelloRequest, RaftMessage, SilenceRequest,
    };

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peer-secret");
    let make = || {
        Command::new(bin())
            .args(["token", "peer-secret"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = make();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(secret.len() >= 32, "{secret}");
    // A second run leaves the existing secret alone: one line, non-zero exit.
    let out = make();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), secret);

    let options = ClusterOptions {
        extra_args: vec!["--peer-secret-file".into(), file.display().to_string()],
        ..ClusterOptions::for_tests()
    };
    let mut tc = TestCluster::start_with(3, options).await;
    let leader = tc.leader().await;
    let ids = tc
        .client()
        .submit(
            (0..20)
                .map(|i| spec_in("default", &format!("p{i}")))
                .collect(),
        )
        .await
        .expect("replicated with the secret");
    assert_eq!(ids.len(), 20);

    for id in [leader, leader % 3 + 1] {
        let addr = tc.cluster.addr(id).to_string();
        let mut peer = RaftClient::connect(format!("http://{addr}")).await.unwrap();
        let with = |secret: Option<&str>, msg: RaftMessage| {
            let mut r = tonic::Request::new(msg);
            if let Some(s) = secret {
                r.metadata_mut()
                    .insert("x-flotilla-peer", s.parse().unwrap());
            }
            r
        };
        let garbage = RaftMessage {
            cluster: tc.cluster.cluster_name().to_string(),
            data: vec![0xff; 64],
            ..Default::default()
        };
        for (who, secret) in [
            ("none", None),
            ("another", Some("peer_not-this-clusters-secret-at-all")),
        ] {
            let refused = peer
                .vote(with(secret, garbage.clone()))
                .await
                .expect_err("a vote without the secret");
            assert_eq!(
                refused.code(),
                tonic::Code::Unauthenticated,
                "{who}: {refused:?}"
            );
            assert!(refused.message().contains("secret"), "{refused:?}");
            let refused = peer
                .append_entries(with(secret, garbage.clone()))
                .await
                .expect_err("an append without the secret");
            assert_eq!(
                refused.code(),
                tonic::Code::Unauthenticated,
                "{who}: {refused:?}"
            );
        }
        let mut hello = tonic::Request::new(HelloRequest {
            cluster: tc.cluster.cluster_name().to_string(),
        });
        let refused = peer
            .hello(hello)
            .await
            .expect_err("hello without the secret");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        // With the secret the call gets through to decoding (which refuses the garbage).
        let decoded = peer
            .vote(with(Some(&secret), garbage.clone()))
            .await
            .expect_err("garbage data");
        assert_eq!(decoded.code(), tonic::Code::InvalidArgument, "{decoded:?}");
        hello = tonic::Request::new(HelloRequest {
            cluster: tc.cluster.cluster_name().to_string(),
        });
        hello
            .metadata_mut()
            .insert("x-flotilla-peer", secret.parse().unwrap());
        let me = peer.hello(hello).await.expect("hello with the secret");
        assert_eq!(me.into_inner().node_id, id);
        // The silence poll (`leader_watch`) too: refused without the secret; with it, the
        // replica says which leader it follows and that it heard one lately.
        let silence = || SilenceRequest {
            cluster: tc.cluster.cluster_name().to_string(),
            leader,
            term: 0,
            to_incarnation: String::new(),
        };
        let refused = peer
            .silence(tonic::Request::new(silence()))
            .await
            .expect_err("a silence poll without the secret");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        let mut poll = tonic::Request::new(silence());
        poll.metadata_mut()
            .insert("x-flotilla-peer", secret.parse().unwrap());
        let answer = peer
            .silence(poll)
            .await
            .expect("a silence poll with the secret")
            .into_inner();
        assert_eq!(answer.leader, leader, "{answer:?}");
        if id != leader {
            assert!(
                answer.silent_ms < 5_000,
                "a follower heard its leader lately: {answer:?}"
            );
        } else {
            assert_eq!(answer.silent_ms, 0, "the leader hears itself: {answer:?}");
        }
    }
    // Nothing refused disturbed the cluster: the same leader, every task there.
    assert_eq!(tc.leader().await, leader);
    assert_eq!(all_tasks(&tc.client()).await.len(), 20);
}

/// A tokens file (or peer secret file) that is missing or bad stops the replica at start, with one line
/// naming the file (and the line), before its data dir is created.
#[test]
fn a_missing_or_bad_tokens_secret_or_tls_file_stops_the_replica_at_start() {
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
        starts(&data, &["--tokens-file", file.to_str().unwrap()], &want);
    }
    // So does a peer secret file with a secret too short.
    let short = dir.path().join("peer-secret");
    std::fs::write(&short, "hunter2\n").unwrap();
    starts(
        &dir.path().join("data"),
        &["--peer-secret-file", short.to_str().unwrap()],
        &format!(
            "peer secret file {}: the secret must be 32 to 256",
            short.display()
        ),
    );
    // TLS: the three files go together; a certificate issued for a user (no --peer) is not a
    // replica's; a key that is not the certificate's does not fit it.
    let tls = dir.path().join("tls");
    let d = tls.to_str().unwrap();
    for args in [
        &["ca", "--out", d][..],
        &[
            "issue",
            "--ca-dir",
            d,
            "--name",
            "alice",
            "--host",
            "127.0.0.1",
        ][..],
        &[
            "issue",
            "--ca-dir",
            d,
            "--name",
            "r1",
            "--peer",
            "--host",
            "127.0.0.1",
        ][..],
    ] {
        let out = Command::new(bin()).arg("cert").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let f = |name: &str| tls.join(name).display().to_string();
    let (ca, alice, alice_key, r1) = (f("ca.pem"), f("alice.pem"), f("alice.key"), f("r1.pem"));
    let data = dir.path().join("data");
    starts(&data, &["--tls-cert", &r1], "give all three or none");
    let with = |cert: &str, key: &str| {
        ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", &ca].map(String::from)
    };
    let args = with(&alice, &alice_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    starts(&data, &args, "not a replica certificate");
    let args = with(&r1, &alice_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    starts(&data, &args, "does not fit");
}

/// Starts a replica with `flags` and checks it stops at start with one error line holding
/// `want`, before its data dir is created.
fn starts(data: &Path, flags: &[&str], want: &str) {
    let out = Command::new(bin())
        .args([
            "server",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .args(["--peers", "1=127.0.0.1:1"])
        .args(flags)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(want), "{err}");
    assert!(!data.exists(), "nothing was opened");
}
