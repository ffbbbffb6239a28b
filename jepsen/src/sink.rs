//! The sink: where a task's side effect lands. Each task a worker runs is
//! `flotilla-jepsen sink-report --addr ADDR`, which sends one line `TASK ATTEMPT WORKER` to the
//! harness-owned sink; the sink accepts it unless it has already accepted a higher attempt of
//! that task (a fenced, stale attempt), answers `ok` or `stale`, and records a `report` event
//! in the history either way. The reporter exits 0 on `ok`, 3 on `stale`, 4 on any error.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::history::{OpType, Recorder};

/// Longest report line the sink reads.
const MAX_LINE_BYTES: usize = 256;

/// The sink's rule: accept unless a higher attempt was accepted. Returns whether it accepted.
pub fn admit(highest: &mut BTreeMap<u64, u64>, task: u64, attempt: u64) -> bool {
    let top = highest.entry(task).or_insert(0);
    if attempt < *top {
        return false;
    }
    *top = attempt;
    true
}

/// Starts the sink on an ephemeral loopback port; returns its address.
pub async fn start(rec: Recorder) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let highest = Arc::new(Mutex::new(BTreeMap::new()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (rec, highest) = (rec.clone(), highest.clone());
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(r).take_limit();
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let parts: Vec<&str> = line.split_whitespace().collect();
                let (Some(task), Some(attempt), Some(worker)) = (
                    parts.first().and_then(|t| t.parse::<u64>().ok()),
                    parts.get(1).and_then(|a| a.parse::<u64>().ok()),
                    parts.get(2),
                ) else {
                    let _ = w.write_all(b"bad\n").await;
                    return;
                };
                // Decide and record under one lock, so the history order is the sink's order.
                let accepted = {
                    let mut h = highest.lock().unwrap_or_else(|p| p.into_inner());
                    let accepted = admit(&mut h, task, attempt);
                    rec.record(
                        "sink",
                        OpType::Info,
                        "report",
                        json!({ "task": task, "attempt": attempt, "worker": worker, "accepted": accepted }),
                    );
                    accepted
                };
                let _ = w
                    .write_all(if accepted { b"ok\n" } else { b"stale\n" })
                    .await;
            });
        }
    });
    Ok(addr)
}

trait TakeLimit: Sized {
    fn take_limit(self) -> tokio::io::Take<Self>;
}

impl<R: tokio::io::AsyncRead> TakeLimit for BufReader<R> {
    fn take_limit(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, MAX_LINE_BYTES as u64)
    }
}

/// `flotilla-jepsen sink-report`: the task a worker runs. Returns the process exit code.
pub async fn report(addr: &str, work_ms: u64) -> u8 {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let (task, attempt, worker) = (
        env("FLOTILLA_TASK_ID"),
        env("FLOTILLA_ATTEMPT"),
        env("FLOTILLA_WORKER_ID"),
    );
    if task.is_empty() || attempt.is_empty() {
        eprintln!("sink-report: FLOTILLA_TASK_ID and FLOTILLA_ATTEMPT must be set");
        return 4;
    }
    let worker = if worker.is_empty() {
        "unknown".into()
    } else {
        worker
    };
    // The "work": long enough that worker faults land mid-task. Half of it comes after the
    // side effect, so a worker paused then resumed can still report an attempt whose side
    // effect happened — the window a stale completion needs.
    tokio::time::sleep(Duration::from_millis(work_ms / 2)).await;
    let answer = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("{task} {attempt} {worker}\n").as_bytes())
            .await?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await?;
        std::io::Result::Ok(line)
    };
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(l)) if l.trim() == "ok" => {
            tokio::time::sleep(Duration::from_millis(work_ms - work_ms / 2)).await;
            // Becomes the task's result: which attempt produced it.
            println!("task={task} attempt={attempt} worker={worker}");
            0
        }
        Ok(Ok(l)) if l.trim() == "stale" => {
            eprintln!("sink-report: attempt {attempt} of task {task} is stale");
            3
        }
        other => {
            eprintln!("sink-report: {other:?}");
            4
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_rejects_attempts_below_the_highest() {
        let mut h = BTreeMap::new();
        assert!(admit(&mut h, 1, 1));
        assert!(
            admit(&mut h, 1, 1),
            "a repeat of the same attempt is not stale"
        );
        assert!(admit(&mut h, 1, 3));
        assert!(!admit(&mut h, 1, 2));
        assert!(admit(&mut h, 2, 1), "tasks are independent");
    }
}
