//! Shared harness of the black-box tests: a cluster of real `flotilla server` processes (the
//! binary cargo built for this test run) on loopback ephemeral ports, data in a temp dir.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flotilla_client::{Client, ListQuery, Task, TaskSpec};
use flotilla_testkit::{Cluster, ClusterOptions};

pub const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flotilla"))
}

pub struct TestCluster {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` replicas and waits for a leader.
    pub async fn start(n: usize) -> TestCluster {
        TestCluster::start_with(n, ClusterOptions::for_tests()).await
    }

    /// Starts `n` replicas with `options` and waits for a leader.
    pub async fn start_with(n: usize, options: ClusterOptions) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster::new(&bin(), n, dir.path(), options).expect("plan cluster");
        cluster.start_all().expect("start replicas");
        let mut tc = TestCluster { cluster, dir };
        tc.leader().await;
        tc
    }

    /// The current leader; panics with the replicas' logs if none appears in time.
    pub async fn leader(&mut self) -> u64 {
        match self.cluster.wait_for_leader(LEADER_TIMEOUT).await {
            Ok(l) => l,
            Err(e) => {
                let logs: Vec<String> = self
                    .cluster
                    .ids()
                    .into_iter()
                    .map(|id| format!("--- node {id}\n{}", self.cluster.log_tail(id, 30)))
                    .collect();
                panic!("{e}\n{}", logs.join("\n"));
            }
        }
    }

    pub fn client(&self) -> Client {
        self.cluster.client()
    }
}

pub fn spec(key: &str) -> TaskSpec {
    let mut s = TaskSpec::new(
        "default",
        format!("{{\"argv\":[\"echo\",\"{key}\"]}}").into_bytes(),
    );
    s.idempotency_key = Some(key.to_string());
    s
}

/// Asserts that the cluster holds exactly the acknowledged tasks (key -> id), each once.
pub async fn assert_exactly_acknowledged(
    client: &Client,
    acked: &std::collections::BTreeMap<String, flotilla_client::TaskId>,
) {
    let tasks = all_tasks(client).await;
    assert_eq!(
        tasks.len(),
        acked.len(),
        "exactly the acknowledged tasks exist"
    );
    for t in &tasks {
        let key = t
            .spec
            .idempotency_key
            .clone()
            .expect("every task has a key");
        assert_eq!(
            acked.get(&key),
            Some(&t.id),
            "task {} under key {key}",
            t.id
        );
    }
}

/// Every task, paging through ListTasks (linearizable).
pub async fn all_tasks(client: &Client) -> Vec<Task> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .list(&ListQuery {
                after,
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("list tasks");
        out.extend(page.tasks);
        match page.next_after {
            Some(a) => after = Some(a),
            None => return out,
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `path` from `addr` over HTTP/1.1: (status code, body).
pub async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no answer in 10 s"))??;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((code, body.to_string()))
}

/// The value of the sample `series` (name with its labels, as rendered) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `flotilla token new`; returns the token it printed.
pub fn new_token(file: &Path, name: &str, role: &str, queues: &str) -> String {
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
