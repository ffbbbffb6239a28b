//! Wire-level attacks a user would try (issue 14, item 7), against a real 3-replica cluster:
//! garbage bytes, a plain HTTP/1.1 request, a message over the size limit, requests announced
//! as 60 MiB and left unfinished, and thousands of idle connections. Every replica stays alive,
//! the leader's memory stays bounded, and the cluster keeps taking submits.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_testkit::ClusterOptions;
use support::{get, sample, spec, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;
/// The bound the cluster runs with: well under what the unfinished requests would pin.
const IN_FLIGHT: usize = 96 * MIB;

fn rss_mib(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .unwrap();
    kb / 1024
}

/// What came back for one raw gRPC request: the HTTP status and the grpc-status (from the
/// headers of a trailers-only answer, or from the trailers).
#[derive(Debug)]
struct Answer {
    grpc_status: Option<String>,
    message: String,
}

/// Sends a Submit whose message announces `announced` bytes, then `send` bytes of it, and leaves
/// the request open. Returns how many bytes the replica took and, when it answered, its answer.
async fn unfinished_submit(addr: &str, announced: usize, send: usize) -> (usize, Option<Answer>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/flotilla.v1.Flotilla/SubmitTasks"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&(announced as u32).to_be_bytes());
    let mut sent = 0usize;
    let mut chunks = vec![Bytes::from(prefix)];
    let chunk = Bytes::from(vec![0x0a; MIB]);
    while sent + MIB <= send {
        chunks.push(chunk.clone());
        sent += MIB;
    }
    let mut taken = 0usize;
    for c in chunks {
        let len = c.len();
        body.reserve_capacity(len);
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            futures::future::poll_fn(|cx| body.poll_capacity(cx)),
        )
        .await;
        match got {
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
        if body.send_data(c, false).is_err() {
            break;
        }
        taken += len;
    }
    let answer = match tokio::time::timeout(Duration::from_secs(2), response).await {
        Ok(Ok(resp)) => {
            let grpc_status = resp
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string());
            let message = resp
                .headers()
                .get("grpc-message")
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            Some(Answer {
                grpc_status,
                message,
            })
        }
        _ => None,
    };
    // Keep the connection (and the unfinished request) open for the rest of the test.
    std::mem::forget(body);
    std::mem::forget(client);
    std::mem::forget(conn_task);
    (taken, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_attacks_leave_every_replica_alive_with_bounded_memory() {
    let options = ClusterOptions {
        extra_args: vec![
            "--max-request-bytes-in-flight".into(),
            IN_FLIGHT.to_string(),
        ],
        http: true,
        // mimalloc returns freed pages to the OS only at its next arena activity (10 ms purge
        // delay, applied lazily); an idle replica would keep the refused requests' freed
        // buffers resident. Purging at once makes RSS show what is live.
        env: vec![("MIMALLOC_PURGE_DELAY".into(), "0".into())],
        ..ClusterOptions::for_tests()
    };
    let mut tc = TestCluster::start_with(3, options).await;
    let leader = tc.leader().await;
    let addr = tc.cluster.addr(leader).to_string();
    let pid = tc.cluster.pid(leader).unwrap();
    let client = tc.client();
    client.submit(vec![spec("warm-up")]).await.unwrap();

    // Garbage bytes, then a plain HTTP/1.1 request: the connection is closed, nothing else.
    for junk in [
        &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0xff, 0xff][..],
        b"GET /flotilla.v1.Flotilla/ClusterStatus HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut total = 0;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "the replica closed the connection of {junk:?}"
        );
    }

    // A message over the 64 MiB limit is refused on its length prefix alone.
    let (_, answer) = unfinished_submit(&addr, 64 * MIB + 1, 0).await;
    let answer = answer.expect("an answer to an oversized message");
    assert_eq!(answer.grpc_status.as_deref(), Some("11"), "{answer:?}");

    // Eight submits announced as 60 MiB, each sent 59 MiB and left unfinished: unbounded, they
    // pinned ~450 MiB. Now what they hold is bounded, and those past the bound are refused.
    let before = rss_mib(pid);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            unfinished_submit(&addr, 60 * MIB, 59 * MIB).await
        }));
    }
    let mut refused = 0;
    let mut taken_total = 0;
    for t in tasks {
        let (taken, answer) = t.await.unwrap();
        taken_total += taken;
        if let Some(a) = answer {
            assert_eq!(a.grpc_status.as_deref(), Some("8"), "{a:?}");
            assert!(
                a.message.contains("max-request-bytes-in-flight")
                    || a.message.contains("per-connection"),
                "{a:?}"
            );
            refused += 1;
        }
    }
    // What the leader holds by its own count, and what it has resident.
    let http = tc.cluster.http_addr(leader).unwrap().to_string();
    let held = || async {
        let (code, text) = get(&http, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        sample(&text, "flotilla_request_bytes_in_flight").expect("the in-flight gauge") as usize
    };
    let held_during = held().await;
    let during = rss_mib(pid);
    println!(
        "unfinished requests: {refused} of 8 refused, {} MiB sent; leader holds {} MiB, RSS {before} -> {during} MiB",
        taken_total / MIB,
        held_during / MIB
    );
    assert!(held_during <= IN_FLIGHT, "{held_during} bytes held");
    assert!(
        held_during >= 50 * MIB,
        "the request that fit is held: {held_during}"
    );
    let bound = before + IN_FLIGHT / MIB + 64;
    assert!(
        refused >= 5,
        "at most {} MiB fit: {refused} refused",
        IN_FLIGHT / MIB
    );
    assert!(
        during < bound,
        "leader RSS grew from {before} to {during} MiB with a {} MiB bound",
        IN_FLIGHT / MIB
    );
    // The cluster still takes submits meanwhile.
    client
        .submit(vec![spec("during-unfinished")])
        .await
        .expect("a submit while unfinished requests are held");

    // A message that stops arriving is dropped after 10 s, and its bytes are free again: a
    // 40 MiB submit (over the batch limit, so refused once decoded) gets decoded. While the
    // bound is full the client is told RESOURCE_EXHAUSTED and retries, as for any limit.
    let big = {
        let mut s = spec("big");
        s.payload = vec![b'x'; 40 * MIB];
        s
    };
    let started = Instant::now();
    let big_client = flotilla_client::Client::with_config(
        tc.cluster.addrs(),
        flotilla_client::ClientConfig {
            call_timeout: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .unwrap();
    match big_client.submit(vec![big]).await {
        Err(flotilla_client::ClientError::Rejected(s)) => {
            assert_eq!(s.code(), flotilla_client::Code::InvalidArgument, "{s:?}");
            assert!(s.message().contains("exceeds limit"), "{s:?}");
        }
        other => panic!("a 40 MiB submit: {other:?}"),
    }
    println!(
        "a 40 MiB request was decoded {:?} after the unfinished ones were sent",
        started.elapsed()
    );
    assert_eq!(
        held().await,
        0,
        "the stalled request was dropped and released"
    );

    // Two thousand idle connections (or half this process's file limit).
    let soft = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1024);
    let n = 2000.min(soft / 2);
    let before_idle = rss_mib(pid);
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    client
        .submit(vec![spec("with-idle-connections")])
        .await
        .expect("a submit with thousands of idle connections open");
    let with_idle = rss_mib(pid);
    println!("{n} idle connections: leader RSS {before_idle} -> {with_idle} MiB");
    assert!(
        with_idle < before_idle + 200,
        "{n} idle connections took {} MiB",
        with_idle - before_idle
    );
    drop(idle);

    // Every replica is alive and agrees.
    for id in tc.cluster.ids() {
        assert!(tc.cluster.is_running(id), "replica {id} exited");
    }
    assert_eq!(tc.leader().await, leader, "no election was caused");
    let listed = support::all_tasks(&tc.client()).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
}
