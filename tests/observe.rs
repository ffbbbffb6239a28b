//! What an operator sees over HTTP (`--http-listen`), on real replicas: `/metrics` on every
//! replica names the leader and counts the tasks as the API lists them; the submit latency,
//! the WAL fsyncs and a rejected call are counted; `/healthz` answers ok; `/readyz` is ready
//! on every replica of a healthy cluster and not ready on one cut off from its leader.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_client::TaskSpec;
use flotilla_proto::pb::{self, flotilla_client::FlotillaClient};
use flotilla_testkit::ClusterOptions;
use support::{all_tasks, eventually, get, sample, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_tell_the_truth() {
    let mut tc = TestCluster::start_with(
        3,
        ClusterOptions {
            http: true,
            ..ClusterOptions::for_tests()
        },
    )
    .await;
    let leader = tc.leader().await;
    let client = tc.client();
    let ids = client
        .submit((0..7).map(|i| TaskSpec::new("obs", vec![i])).collect())
        .await
        .expect("submit 7 tasks");
    for id in &ids[..2] {
        client.cancel(*id).await.expect("cancel a pending task");
    }
    let mut listed: BTreeMap<&str, u64> = BTreeMap::new();
    let tasks = all_tasks(&client).await;
    for t in tasks.iter().filter(|t| t.spec.queue == "obs") {
        *listed.entry(t.state.as_str()).or_default() += 1;
    }
    assert_eq!(listed, BTreeMap::from([("cancelled", 2), ("pending", 5)]));

    // A call refused by the leader is counted under its method and code.
    let mut raw = FlotillaClient::connect(format!("http://{}", tc.cluster.addr(leader)))
        .await
        .expect("connect");
    let refused = raw
        .submit_tasks(pb::SubmitTasksRequest { tasks: vec![] })
        .await
        .expect_err("an empty batch is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    for id in tc.cluster.ids() {
        let http = tc
            .cluster
            .http_addr(id)
            .expect("replica has --http-listen")
            .to_string();
        let text = eventually(
            &format!("replica {id}'s metrics to show the leader and the tasks"),
            Duration::from_secs(10),
            || async {
                let (code, text) = get(&http, "/metrics").await.ok()?;
                assert_eq!(code, 200, "{text}");
                let agrees = sample(&text, "flotilla_raft_leader_id") == Some(leader as f64)
                    && listed.iter().all(|(state, n)| {
                        sample(
                            &text,
                            &format!("flotilla_tasks{{queue=\"obs\",state=\"{state}\"}}"),
                        ) == Some(*n as f64)
                    })
                    && sample(&text, "flotilla_tasks{queue=\"obs\",state=\"running\"}")
                        == Some(0.0);
                agrees.then_some(text)
            },
        )
        .await;
        assert_eq!(sample(&text, "flotilla_raft_voters"), Some(3.0), "{text}");
        assert!(sample(&text, "flotilla_raft_term").is_some_and(|t| t >= 1.0));
        assert!(
            sample(&text, "flotilla_wal_fsync_total").is_some_and(|n| n >= 1.0),
            "every replica fsyncs its log: {text}"
        );
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(
            sample(&text, &format!("flotilla_raft_role{{role=\"{role}\"}}")),
            Some(1.0),
            "{text}"
        );
        if id == leader {
            assert!(
                sample(&text, "flotilla_submit_latency_seconds_count").is_some_and(|n| n >= 1.0),
                "the leader timed the submit: {text}"
            );
            assert!(
                sample(&text, "flotilla_raft_committed_index").is_some_and(|n| n >= 1.0),
                "{text}"
            );
            assert_eq!(
                sample(
                    &text,
                    "flotilla_requests_rejected_total{method=\"/flotilla.v1.Flotilla/SubmitTasks\",code=\"INVALID_ARGUMENT\"}"
                ),
                Some(1.0),
                "{text}"
            );
        }
        let (code, body) = get(&http, "/healthz").await.expect("healthz");
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        let body = eventually(
            &format!("replica {id} to be ready"),
            Duration::from_secs(10),
            || async {
                let (code, body) = get(&http, "/readyz").await.ok()?;
                (code == 200).then_some(body)
            },
        )
        .await;
        assert!(body.starts_with("ready: "), "{body}");
    }

    // Cut one replica off from the leader (its two peers are gone): not ready, saying why.
    let survivor = tc.cluster.ids().into_iter().find(|i| *i != leader).unwrap();
    for id in tc.cluster.ids().into_iter().filter(|i| *i != survivor) {
        tc.cluster.kill(id).expect("kill");
    }
    let http = tc.cluster.http_addr(survivor).unwrap().to_string();
    let body = eventually(
        "the cut-off replica to say it is not ready",
        Duration::from_secs(15),
        || async {
            let (code, body) = get(&http, "/readyz").await.ok()?;
            (code == 503).then_some(body)
        },
    )
    .await;
    assert!(body.starts_with("not ready: "), "{body}");
    // Still alive and its storage writable: healthy, just not ready.
    let (code, _) = get(&http, "/healthz").await.expect("healthz");
    assert_eq!(code, 200);

    // `flotilla probe`, the health check of an image with nothing but the binary, says the same.
    let probe = |args: &[&str]| {
        std::process::Command::new(support::bin())
            .arg("probe")
            .args(args)
            .output()
            .unwrap()
    };
    let out = probe(&[&http, "--path", "/healthz"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = probe(&[&http]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/readyz: HTTP/1.1 503"), "{err}");
    tc.cluster.kill(survivor).expect("kill");
    let out = probe(&[&http, "--timeout-ms", "500"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot connect to {http}")), "{err}");
}

/// `--log-format json`: every line a replica logs is one JSON object with a level, a target
/// and a message, and fields stay fields (the replica's address on "replica serving").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let mut tc = TestCluster::start_with(
        3,
        ClusterOptions {
            extra_args: vec!["--log-format".into(), "json".into()],
            ..ClusterOptions::for_tests()
        },
    )
    .await;
    tc.leader().await;
    let log = std::fs::read_to_string(tc.cluster.log_path(1)).expect("replica 1's log");
    let mut serving = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object: {line:?}: {e}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "{key} missing in {line}");
        }
        if v["message"] == "replica serving" {
            assert_eq!(v["node_id"], 1, "{line}");
            assert_eq!(v["addr"], tc.cluster.addr(1), "{line}");
            serving += 1;
        }
    }
    assert_eq!(serving, 1, "the start is logged once:\n{log}");
}
