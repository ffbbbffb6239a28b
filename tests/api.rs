//! The client API over real replicas: follower hints, stale reads, bad input, waits, and the
//! CLI's commands and JSON output.

mod support;

use std::process::Command;

use flotilla_client::{Client, Consistency, TaskId, TaskState};
use flotilla_proto::pb::{self, flotilla_client::FlotillaClient};
use flotilla_proto::{LEADER_HINT_KEY, STREAM_MESSAGE_LIMIT};
use support::{all_tasks, bin, spec, TestCluster};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_follower_hints_leader_and_serves_stale_reads() {
    let mut tc = TestCluster::start(3).await;
    let leader = tc.leader().await;
    let follower = tc
        .cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let client = tc.client();
    let id = client.submit(vec![spec("hinted")]).await.unwrap()[0];

    let mut raw = FlotillaClient::connect(format!("http://{}", tc.cluster.addr(follower)))
        .await
        .unwrap();
    // A write on a follower: UNAVAILABLE with the leader's id and address.
    let err = raw
        .submit_tasks(pb::SubmitTasksRequest {
            tasks: vec![pb::TaskSpec {
                queue: "q".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let hint = err
        .metadata()
        .get(LEADER_HINT_KEY)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(hint, format!("{leader}={}", tc.cluster.addr(leader)));
    // A linearizable read on a follower: the same hint.
    let err = raw
        .get_task(pb::GetTaskRequest {
            id: id.0,
            consistency: 0,
            explain: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.metadata().get(LEADER_HINT_KEY).is_some());

    // The client library, given only the follower, follows the hint.
    let via_follower = Client::new([tc.cluster.addr(follower).to_string()]).unwrap();
    let id2 = via_follower
        .submit(vec![spec("via-follower")])
        .await
        .unwrap()[0];
    assert_eq!(id2.0, id.0 + 1);

    // A stale read on the follower is served locally once it has applied the task.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = raw
            .get_task(pb::GetTaskRequest {
                id: id2.0,
                consistency: pb::ReadConsistency::Stale as i32,
                explain: false,
            })
            .await;
        match got {
            Ok(resp) => {
                assert_eq!(resp.into_inner().task.unwrap().id, id2.0);
                break;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::NotFound);
                assert!(
                    std::time::Instant::now() < deadline,
                    "follower never applied"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    // ClusterStatus is answered by the replica asked.
    let st = client
        .cluster_status_of(tc.cluster.addr(follower))
        .await
        .unwrap();
    assert_eq!(
        (st.node_id, st.role.as_str(), st.leader_id),
        (follower, "follower", Some(leader))
    );
    assert_eq!(st.members.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bad_input_is_rejected_naming_the_field_and_applies_nothing() {
    let tc = TestCluster::start(1).await;
    let client = tc.client();
    let ok = client.submit(vec![spec("ok")]).await.unwrap()[0];

    let big = {
        let mut s = spec("big");
        s.payload = vec![0; flotilla_core::Limits::MAX_PAYLOAD_BYTES + 1];
        s
    };
    let bad_priority = {
        let mut s = spec("prio");
        s.priority = 5000;
        s
    };
    let unknown_dep = {
        let mut s = spec("dep");
        s.depends_on = vec![TaskId(999)];
        s
    };
    let long_queue = {
        let mut s = spec("queue");
        s.queue = "q".repeat(200);
        s
    };
    // A schedule's tick key: a task under it would stand in for the tick's task.
    let tick_key = {
        let mut s = spec("tick");
        s.idempotency_key = Some("schedule:nightly:1764288000000".into());
        s
    };
    let cases = vec![
        (vec![spec("a"), long_queue], "tasks[1].queue"),
        (vec![tick_key], "tasks[0].idempotency_key"),
        (vec![big], "tasks[0].payload"),
        (vec![spec("b"), bad_priority], "tasks[1].priority"),
        (vec![spec("c"), unknown_dep], "tasks[1].depends_on"),
        (
            (0..1001).map(|i| spec(&format!("many-{i}"))).collect(),
            "tasks:",
        ),
    ];
    // The same through a pipeline: the stream carries the rejection, nothing is retried.
    let pipeline = client.pipeline();
    for (batch, field) in cases {
        let err = client.submit(batch.clone()).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{field}: {err}");
        assert!(err.to_string().contains(field), "{err} should name {field}");
        let err = pipeline.submit(batch).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{field}: {err}");
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }
    // Raw SubmitStream: requests sharing one message are answered each on its own (the bad one
    // fails alone); a message over the limit ends the stream naming `requests`, applying nothing.
    let mut raw = FlotillaClient::connect(format!("http://{}", tc.cluster.addr(1)))
        .await
        .unwrap();
    let request = |seq: u64, queue: String| pb::SubmitStreamRequest {
        seq,
        tasks: vec![pb::TaskSpec {
            queue,
            idempotency_key: format!("raw-{seq}"),
            ..Default::default()
        }],
    };
    let message = pb::SubmitStreamRequests {
        requests: vec![request(1, "q".repeat(200)), request(2, "q".into())],
    };
    let mut replies = raw
        .submit_stream(futures::stream::iter(vec![message]))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = replies.message().await.unwrap() {
        got.extend(m.replies);
    }
    got.sort_by_key(|r| r.seq);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].code, Code::InvalidArgument as i32);
    assert!(
        got[0].message.contains("tasks[0].queue"),
        "{}",
        got[0].message
    );
    assert_eq!(got[1].code, Code::Ok as i32, "{}", got[1].message);
    let streamed = TaskId(got[1].ids[0]);
    let oversize = pb::SubmitStreamRequests {
        requests: (10..11 + STREAM_MESSAGE_LIMIT as u64)
            .map(|i| request(i, "q".into()))
            .collect(),
    };
    let mut replies = raw
        .submit_stream(futures::stream::iter(vec![oversize]))
        .await
        .unwrap()
        .into_inner();
    let err = replies.message().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("requests"), "{}", err.message());

    let tasks = all_tasks(&client).await;
    assert_eq!(tasks.len(), 2, "nothing of a rejected batch was applied");
    assert_eq!(tasks[0].id, ok);
    assert_eq!(tasks[1].id, streamed);

    // Unknown ids and finished tasks.
    assert_eq!(
        client.get(TaskId(4242)).await.unwrap_err().code(),
        Some(Code::NotFound)
    );
    assert_eq!(
        client.cancel(TaskId(4242)).await.unwrap_err().code(),
        Some(Code::NotFound)
    );
    let mut child = spec("child-of-ok");
    child.depends_on = vec![ok];
    let child = client.submit(vec![child]).await.unwrap()[0];
    assert_eq!(client.cancel(ok).await.unwrap(), TaskState::Pending);
    // Cancel is idempotent (a retry after a lost reply succeeds) ...
    assert_eq!(client.cancel(ok).await.unwrap(), TaskState::Cancelled);
    // ... but a task that finished otherwise (here: failed, upstream_failed) cannot be cancelled.
    assert_eq!(
        client.cancel(child).await.unwrap_err().code(),
        Some(Code::FailedPrecondition)
    );
    // A wait on a finished task returns at once; on a live one it times out with the task.
    let done = client
        .wait(ok, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Cancelled);
    let live = client.submit(vec![spec("live")]).await.unwrap()[0];
    let t = client
        .wait(live, std::time::Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Pending);
    let stale = client.get_with(live, Consistency::Stale).await.unwrap();
    assert_eq!(stale.id, live);
}

fn flotilla(cluster: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .env("FLOTILLA_CLUSTER", cluster)
        .args(args)
        .output()
        .unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cli_commands_and_json() {
    let tc = TestCluster::start(3).await;
    let cluster = tc.cluster.addrs().join(",");

    let out = flotilla(
        &cluster,
        &[
            "submit", "--queue", "cli", "--key", "k1", "--", "echo", "hello",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // Same key, same id.
    let again = flotilla(
        &cluster,
        &[
            "submit", "--queue", "cli", "--key", "k1", "--", "echo", "hello",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        id.to_string()
    );

    let out = flotilla(&cluster, &["status", &id.to_string(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], id);
    assert_eq!(v["state"], "pending");
    assert_eq!(v["queue"], "cli");
    assert_eq!(v["attempts"], 0);
    assert_eq!(v["command"], serde_json::json!(["echo", "hello"]));

    let child = flotilla(
        &cluster,
        &["submit", "--after", &id.to_string(), "--", "true"],
    );
    let child_id = String::from_utf8_lossy(&child.stdout).trim().to_string();
    let out = flotilla(&cluster, &["list", "--json", "--state", "waiting"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["id"].to_string(), child_id);

    // A delayed task waits until its time: an hour from the submit, by this machine's clock.
    let before_ms = now_ms();
    let out = flotilla(&cluster, &["submit", "--delay", "1h", "--", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after_ms = now_ms();
    let delayed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = flotilla(&cluster, &["status", &delayed, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "waiting", "{v}");
    let not_before = v["not_before_ms"].as_u64().unwrap();
    assert!(
        (before_ms + 3_600_000..=after_ms + 3_600_000).contains(&not_before),
        "not_before_ms {not_before} is an hour after {before_ms}..{after_ms}"
    );
    // One at a time already past runs at once (it is pending: no worker here).
    let out = flotilla(
        &cluster,
        &["submit", "--at", "2020-01-01T00:00:00Z", "--", "true"],
    );
    let past = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = flotilla(&cluster, &["status", &past, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "pending", "{v}");
    assert_eq!(v["not_before_ms"], 1_577_836_800_000u64);
    let out = flotilla(&cluster, &["cancel", &delayed]);
    assert!(out.status.success());

    let out = flotilla(&cluster, &["cluster", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "node_id",
        "role",
        "applied_index",
        "leader",
        "term",
        "commit_index",
    ] {
        assert!(!v[field].is_null(), "cluster status has {field}: {v}");
    }
    assert_eq!(v["members"].as_array().unwrap().len(), 3);
    assert!(v["members"][0]["addr"].is_string());

    // wait exits 2 on timeout, 1 when the task ended without success.
    let out = flotilla(&cluster, &["wait", &child_id, "--timeout", "0.2"]);
    assert_eq!(out.status.code(), Some(2));
    let out = flotilla(&cluster, &["cancel", &id.to_string()]);
    assert!(out.status.success());
    let out = flotilla(&cluster, &["wait", &child_id, "--timeout", "5", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "failed");
    assert_eq!(v["reason"], "upstream_failed");

    // Bad input: one line on stderr, non-zero exit.
    for args in [
        vec!["list", "--state", "sleeping"],
        vec!["submit", "--priority", "9999", "--", "x"],
        vec!["status", "987654"],
        vec!["submit", "--delay", "soon", "--", "x"],
        vec!["submit", "--at", "tomorrow", "--", "x"],
    ] {
        let out = flotilla(&cluster, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let out = flotilla(&cluster, &["submit", "--priority", "9999", "--", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("priority"));

    // A reader that went away (`flotilla list | head -0`) is not an error, and never a panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin())
        .env("FLOTILLA_CLUSTER", &cluster)
        .args(["list", "--json"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "closed stdout: {err}");
    assert!(!err.contains("panicked"), "closed stdout: {err}");
}

#[test]
fn api_bad_server_config_exits_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let data = data.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--id",
                "1",
                "--listen",
                "nonsense",
                "--data-dir",
                data,
                "--peers",
                "1=127.0.0.1:1",
            ],
            "listen",
        ),
        (
            vec![
                "--id",
                "4",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data,
                "--peers",
                "1=127.0.0.1:1",
            ],
            "missing from peers",
        ),
        (
            vec![
                "--id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                "/proc/flotilla",
                "--peers",
                "1=127.0.0.1:1",
            ],
            "/proc/flotilla",
        ),
        (
            vec![
                "--id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data,
                "--peers",
                "1:127.0.0.1:1",
            ],
            "peers",
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new(bin())
            .arg("server")
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.trim().lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
    }
}
