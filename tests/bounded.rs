//! Bounded state over real replicas: retention removes finished tasks by the replicated clock
//! and remembers keys for their own window; admission limits refuse submits naming the limit;
//! the largest valid request is replicated without an election; a data dir of the previous
//! release (format 1) is upgraded in place.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_client::{
    Client, ClientConfig, ClientError, Consistency, TaskId, TaskSpec, TaskState,
};
use flotilla_core::Limits;
use flotilla_testkit::ClusterOptions;
use support::{eventually, spec, TestCluster};
use tonic::Code;

fn options(extra: &[&str]) -> ClusterOptions {
    ClusterOptions {
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..ClusterOptions::for_tests()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_finished_tasks_and_remembers_keys_for_their_window() {
    let tc = TestCluster::start_with(
        3,
        options(&["--retention-ms", "1500", "--key-retention-ms", "5000"]),
    )
    .await;
    let client = tc.client();
    let done = client.submit(vec![spec("kept-key")]).await.unwrap()[0];
    let pending = client.submit(vec![spec("still-pending")]).await.unwrap()[0];
    client.cancel(done).await.unwrap();

    // Removed by a replicated sweep: every replica agrees, and the tombstone keeps the outcome.
    let status = eventually(
        "the cancelled task to be removed",
        Duration::from_secs(15),
        || async {
            let s = client
                .status(done, Consistency::Linearizable)
                .await
                .unwrap();
            s.removed.then_some(s)
        },
    )
    .await;
    assert_eq!(status.task.state, TaskState::Cancelled);
    assert_eq!(
        status.task.spec.idempotency_key.as_deref(),
        Some("kept-key")
    );
    for id in tc.cluster.ids() {
        let one = Client::new([tc.cluster.addr(id).to_string()]).unwrap();
        eventually(
            "every replica to apply the sweep",
            Duration::from_secs(10),
            || async {
                let s = one.status(done, Consistency::Stale).await.ok()?;
                s.removed.then_some(())
            },
        )
        .await;
    }
    // A pending task is never removed.
    assert_eq!(client.get(pending).await.unwrap().state, TaskState::Pending);
    // Within the key window, a resubmit gets the original id and creates nothing.
    assert_eq!(
        client.submit(vec![spec("kept-key")]).await.unwrap(),
        vec![done]
    );
    assert_eq!(support::all_tasks(&client).await.len(), 1);

    // After it, the key is forgotten: the id says it was removed, and the key is free.
    eventually(
        "the key to be forgotten",
        Duration::from_secs(20),
        || async {
            match client.status(done, Consistency::Linearizable).await {
                Err(ClientError::Rejected(s)) if s.code() == Code::NotFound => {
                    assert!(
                        s.message().contains("removed by retention"),
                        "{}",
                        s.message()
                    );
                    Some(())
                }
                Ok(_) => None,
                Err(e) => panic!("{e}"),
            }
        },
    )
    .await;
    let again = client.submit(vec![spec("kept-key")]).await.unwrap()[0];
    assert!(again.0 > pending.0, "a new task: {again}");
    // An id that was never allocated is simply not found.
    match client
        .status(TaskId(10_000), Consistency::Linearizable)
        .await
    {
        Err(ClientError::Rejected(s)) => {
            assert_eq!(s.code(), Code::NotFound);
            assert!(!s.message().contains("retention"), "{}", s.message());
        }
        other => panic!("{other:?}"),
    }
    // The CLI says so too.
    let out = std::process::Command::new(support::bin())
        .args([
            "status",
            &done.to_string(),
            "--cluster",
            &tc.cluster.addrs().join(","),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("removed by retention") && err.lines().count() == 1,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_limits_refuse_submits_naming_the_limit_and_apply_nothing() {
    let tc = TestCluster::start_with(
        3,
        options(&["--max-pending-per-queue", "5", "--max-pending", "8"]),
    )
    .await;
    // A short whole-call deadline: a refused submit is retried (the backlog may drain) only
    // until then.
    let client = Client::with_config(
        tc.cluster.addrs(),
        ClientConfig {
            call_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let five: Vec<TaskSpec> = (0..5).map(|i| spec(&format!("a-{i}"))).collect();
    client.submit(five).await.unwrap();
    let err = client.submit(vec![spec("a-over")]).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("max_pending_per_queue"), "{msg}");
    // Another queue still has room, up to the cluster-wide limit.
    let mut other: Vec<TaskSpec> = (0..3).map(|i| spec(&format!("b-{i}"))).collect();
    other.iter_mut().for_each(|s| s.queue = "b".into());
    client.submit(other).await.unwrap();
    let mut over = spec("b-over");
    over.queue = "b".into();
    let msg = client.submit(vec![over]).await.unwrap_err().to_string();
    assert!(msg.contains("max_pending"), "{msg}");
    assert_eq!(
        support::all_tasks(&client).await.len(),
        8,
        "nothing refused was applied"
    );
    // Cancelling frees room.
    client.cancel(TaskId(1)).await.unwrap();
    client.submit(vec![spec("a-after-cancel")]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_valid_request_is_replicated_without_an_election() {
    let mut tc = TestCluster::start(3).await;
    let client = tc.client();
    let before: BTreeMap<u64, u64> = term_of_each(&mut tc).await;
    // Exactly the batch byte limit: two 1 MiB tasks (less their queue names and keys).
    let half = Limits::MAX_BATCH_BYTES / 2;
    let big = |key: &str| {
        let mut s = TaskSpec::new("q", vec![0u8; half - 1 - key.len()]);
        s.idempotency_key = Some(key.into());
        s
    };
    for round in 0..5 {
        let keys = [format!("big-{round}-a"), format!("big-{round}-b")];
        let ids = client
            .submit(keys.iter().map(|k| big(k)).collect())
            .await
            .unwrap();
        assert_eq!(ids.len(), 2);
    }
    // One byte more is refused before it reaches the log, naming the limit.
    let mut over = vec![big("over-a"), big("over-b")];
    over[1].payload.push(0);
    match client.submit(over).await {
        Err(ClientError::Rejected(s)) => {
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(s.message().contains("max_batch_bytes"), "{}", s.message());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(support::all_tasks(&client).await.len(), 10);
    assert_eq!(
        term_of_each(&mut tc).await,
        before,
        "no replica changed term"
    );
}

async fn term_of_each(tc: &mut TestCluster) -> BTreeMap<u64, u64> {
    let client = tc.client();
    let mut terms = BTreeMap::new();
    for id in tc.cluster.ids() {
        let s = client.cluster_status_of(tc.cluster.addr(id)).await.unwrap();
        terms.insert(id, s.term);
    }
    terms
}

/// The data dir fixture written by the format 1 release (crates/flotilla-store/testdata/v1)
/// opens under this release with every task as that release listed it, and takes new work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_previous_release_is_upgraded_in_place() {
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../flotilla-store/testdata/v1");
    let tmp = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("tar")
        .arg("xzf")
        .arg(fixtures.join("datadir.tar.gz"))
        .arg("-C")
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let start = || {
        std::process::Command::new(support::bin())
            .args([
                "server",
                "--id",
                "1",
                "--listen",
                &addr,
                "--cluster-name",
                "v1fixture",
                "--check-invariants",
            ])
            .arg("--data-dir")
            .arg(tmp.path().join("node-1"))
            .args(["--peers", &format!("1={addr}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut server = KillOnDrop(start());
    let client = Client::new([addr.clone()]).unwrap();
    let tasks = eventually(
        "the upgraded replica to serve",
        Duration::from_secs(20),
        || async {
            client
                .list(&flotilla_client::ListQuery {
                    limit: 100,
                    ..Default::default()
                })
                .await
                .ok()
        },
    )
    .await
    .tasks;
    let want: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("datadir-tasks.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tasks.len(), want.len());
    for (t, w) in tasks.iter().zip(&want) {
        assert_eq!(t.id.0, w["id"].as_u64().unwrap());
        assert_eq!(
            t.state.as_str(),
            w["state"].as_str().unwrap(),
            "task {}",
            t.id
        );
        assert_eq!(t.spec.queue, w["queue"].as_str().unwrap());
        assert_eq!(
            t.spec.idempotency_key.as_deref(),
            w["idempotency_key"].as_str()
        );
        assert_eq!(
            t.result
                .as_ref()
                .map(|r| String::from_utf8_lossy(r).to_string())
                .as_deref(),
            w["result"].as_str()
        );
    }
    // The same keys still map to the same tasks, and new work gets the next id.
    let mut k1 = spec("k1");
    k1.queue = "q1".into();
    assert_eq!(client.submit(vec![k1]).await.unwrap(), vec![TaskId(1)]);
    assert_eq!(
        client.submit(vec![spec("after-upgrade")]).await.unwrap(),
        vec![TaskId(16)]
    );
    // It restarts as a format 2 dir.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    server = KillOnDrop(start());
    let t = eventually(
        "the restarted replica to serve",
        Duration::from_secs(20),
        || async { client.get(TaskId(16)).await.ok() },
    )
    .await;
    assert_eq!(t.state, TaskState::Pending);
    drop(server);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
