//! Backup and restore through the `flotilla` binary: `snapshot export` from a running cluster,
//! `restore` of three new data dirs, and a new cluster started on them that carries on with
//! every task exactly as it was; bad input to `restore` is refused in one line.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use flotilla_client::{Consistency, TaskSpec, TaskState};
use flotilla_core::QueuePolicy;
use flotilla_testkit::{Cluster, ClusterOptions};
use flotilla_worker::CommandPayload;
use support::{all_tasks, bin, TestCluster, LEADER_TIMEOUT};

fn sh(queue: &str, script: &str) -> TaskSpec {
    TaskSpec::new(
        queue,
        CommandPayload::new(vec!["sh".into(), "-c".into(), script.into()]).encode(),
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run flotilla")
}

fn restore(backup: &Path, dir: &Path, id: u64, cluster: &Cluster) -> Output {
    run(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--id",
        &id.to_string(),
        "--cluster-name",
        cluster.cluster_name(),
        "--peers",
        &cluster.peers_flag(),
    ])
}

/// A refused command: non-zero exit and one line on stderr naming the problem.
fn refused(out: &Output, naming: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for n in naming {
        assert!(stderr.contains(n), "{stderr:?} does not name {n:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restored_as_a_new_cluster_carries_on_with_every_task() {
    let mut tc = TestCluster::start(3).await;
    let client = tc.client();

    // Finished tasks (with results, a failure after two attempts, a cancellation), one of
    // them under an idempotency key, and a queue with a non-default policy.
    let aging = QueuePolicy::Priority { aging_ms: 1234 };
    client.set_queue_policy("later", aging, true).await.unwrap();
    let mut keyed = sh("now", "echo keyed");
    keyed.idempotency_key = Some("backup-key".into());
    let mut failing = sh("now", "exit 3");
    failing.max_attempts = 2;
    let done = client
        .submit(vec![keyed.clone(), sh("now", "echo two"), failing])
        .await
        .unwrap();
    tc.cluster
        .start_worker("w1", &["--heartbeat-ms", "300"])
        .unwrap();
    for (id, want) in done.iter().zip([
        TaskState::Succeeded,
        TaskState::Succeeded,
        TaskState::Failed,
    ]) {
        let t = client.wait(*id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(t.state, want, "task {id}: {t:?}");
    }
    tc.cluster.kill_worker("w1").unwrap();
    // Pending tasks: no worker runs them before the backup.
    let mut pending = Vec::new();
    for i in 0..3 {
        let mut spec = sh("later", &format!("echo later-{i}"));
        spec.priority = i;
        pending.extend(client.submit(vec![spec]).await.unwrap());
    }
    let cancelled = client.submit(vec![sh("later", "true")]).await.unwrap()[0];
    client.cancel(cancelled).await.unwrap();
    let before = all_tasks(&client).await;
    assert_eq!(before.len(), 7);
    assert_eq!(before[0].attempts, 1);
    assert_eq!(before[2].attempts, 2);
    assert!(before[0].result.is_some());

    // Backup through the binary.
    let backup = tc.dir.path().join("backup.snap");
    let out = run(&[
        "--cluster",
        &tc.cluster.addrs().join(","),
        "--json",
        "snapshot",
        "export",
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    let exported: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(
        exported["bytes"].as_u64(),
        Some(std::fs::metadata(&backup).unwrap().len())
    );
    assert_eq!(exported["tasks"].as_u64(), Some(7), "{exported}");
    assert!(exported["index"].as_u64().unwrap() > 0);
    assert!(exported["records"].as_u64().unwrap() >= 7);
    assert!(!tc.dir.path().join("backup.snap.tmp").exists());
    let old_term = exported["term"].as_u64().unwrap();
    tc.cluster.shutdown();

    // A new cluster (other ports, another name) restored from it.
    let base = tempfile::tempdir().unwrap();
    let options = ClusterOptions {
        cluster_name: Some("restored".into()),
        ..ClusterOptions::for_tests()
    };
    let mut nc = Cluster::new(&bin(), 3, base.path(), options).unwrap();
    for id in nc.ids() {
        let out = restore(&backup, &nc.data_dir(id), id, &nc);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    nc.start_all().unwrap();
    nc.wait_for_leader(LEADER_TIMEOUT).await.unwrap();
    let client = nc.client();
    let status = client.cluster_status().await.unwrap();
    assert!(status.term > old_term, "{status:?}");

    // Every task exactly as it was: state, result, attempts, reason, spec, times.
    let after = all_tasks(&client).await;
    assert_eq!(after, before);
    let queues = client.list_queues(Consistency::Linearizable).await.unwrap();
    let later = queues.queues.iter().find(|q| q.name == "later").unwrap();
    assert_eq!(later.policy, aging);
    // The key still names its task; new ids continue after the old ones.
    let again = client.submit(vec![keyed]).await.unwrap();
    assert_eq!(again, vec![done[0]]);
    let new = client.submit(vec![sh("now", "echo new")]).await.unwrap()[0];
    let max_old = before.iter().map(|t| t.id).max().unwrap();
    assert!(new > max_old, "{new} after {max_old}");

    // The pending tasks run on a worker of the new cluster.
    nc.start_worker("w2", &["--heartbeat-ms", "300"]).unwrap();
    for id in pending.iter().copied().chain([new]) {
        let t = client.wait(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(t.state, TaskState::Succeeded, "task {id}: {t:?}");
        assert_eq!(t.attempts, 1);
    }
    assert_eq!(
        client.get(cancelled).await.unwrap().state,
        TaskState::Cancelled
    );

    // Bad input is refused in one line naming the problem, and writes nothing.
    let fresh = base.path().join("fresh");
    let missing = base.path().join("missing.snap");
    refused(
        &restore(&missing, &fresh, 1, &nc),
        &["missing.snap", "cannot open"],
    );
    let mut bytes = std::fs::read(&backup).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    let corrupted = base.path().join("corrupted.snap");
    std::fs::write(&corrupted, bytes).unwrap();
    refused(
        &restore(&corrupted, &fresh, 1, &nc),
        &["corrupted.snap", "checksum mismatch"],
    );
    assert!(!fresh.exists(), "nothing written");
    let in_use = nc.data_dir(1);
    refused(
        &restore(&backup, &in_use, 1, &nc),
        &[in_use.to_str().unwrap(), "not empty"],
    );
}
