//! The replica's accept loop, owned here rather than left to tonic (which ends its accept loop
//! for good on the first `EMFILE`, leaving a leader that heartbeats but never takes a request).
//!
//! - Accept errors are retried with backoff (5 ms doubling to 1 s). Errors of one connection
//!   (reset or aborted before it was accepted) are skipped at once; running out of file
//!   descriptors or memory waits for some to be released. A listener that keeps failing for
//!   [`GIVE_UP_AFTER`] is reported fatal: the replica ends, and its supervisor restarts it.
//! - Open connections are bounded. One past the bound is answered with an HTTP/2 `GOAWAY`
//!   (`ENHANCE_YOUR_CALM`, "too many connections") once its first request has arrived (or
//!   after 300 ms), and closed, so the caller sees an error naming the cause instead of a
//!   hang; refusals are answered 256 at a time, the accept loop
//!   waiting for one to finish past that.
//! - With TLS (`--tls-cert`), each accepted connection's handshake runs in a task of its own
//!   (bounded by the same connection slots, [`HANDSHAKE_TIMEOUT`] at most), so a slow or silent
//!   client never holds up the accept loop. The connection's [`ConnInfo`] says whether its
//!   client certificate is a replica's (see `flotilla_tls`).
//! - Every accepted connection, when it closes, wakes the [`Closed`] signal: a leader's
//!   process that died closes its connections to its followers, and `leader_watch` looks at
//!   once rather than after a silence.
//! - [`raise_fd_limit`] raises the soft limit on open files to the hard limit at start, and the
//!   connection bound is kept well under it (RocksDB and peers need descriptors too).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use flotilla_tls::{ReplicaTls, ServerTlsStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

use crate::fatal::Fatal;

/// A listener failing this long without one successful accept ends the replica.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Refusals being answered at once, at most (each takes up to 100 ms).
const REFUSALS_IN_FLIGHT: usize = 256;
/// A TLS handshake not finished by then drops the connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Raises the soft limit on open files to the hard limit; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "cannot raise the open files limit");
            rlimit::Resource::NOFILE
                .get()
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// The connection bound for `wanted` connections under a soft file limit of `fd_limit`: at most
/// half of the descriptors, leaving the rest to RocksDB, peers and snapshots.
pub fn connection_bound(wanted: usize, fd_limit: u64) -> usize {
    let half = usize::try_from(fd_limit / 2).unwrap_or(usize::MAX);
    wanted.min(half).max(16)
}

/// What the services learn of a connection (in each request's extensions).
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// Over TLS, with a client certificate of the cluster CA that names a replica.
    pub peer: bool,
}

/// Woken whenever an accepted connection closes.
pub type Closed = Arc<Notify>;

/// An accepted connection holding its place under the bound until it closes.
#[derive(Debug)]
pub struct Accepted {
    stream: Stream,
    info: ConnInfo,
    _permit: OwnedSemaphorePermit,
    closed: Closed,
}

impl Drop for Accepted {
    fn drop(&mut self) {
        self.closed.notify_one();
    }
}

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<ServerTlsStream<TcpStream>>),
}

impl Connected for Accepted {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Forwards a call to whichever stream the connection is.
macro_rules! on_stream {
    ($self:ident, $s:ident => $call:expr) => {
        match &mut $self.stream {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $call
            }
            Stream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $call
            }
        }
    };
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Runs the TLS handshake of an accepted connection and hands it on; a failed or slow
/// handshake drops it (counted in `failed`, logged at powers of two).
async fn handshake(
    tls: Arc<ReplicaTls>,
    stream: TcpStream,
    remote: Option<SocketAddr>,
    permit: OwnedSemaphorePermit,
    tx: mpsc::Sender<Result<Accepted, io::Error>>,
    failed: Arc<std::sync::atomic::AtomicU64>,
    closed: Closed,
) {
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await;
    let error = match outcome {
        Ok(Ok(stream)) => {
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(flotilla_tls::is_peer_certificate);
            let conn = Accepted {
                stream: Stream::Tls(Box::new(stream)),
                info: ConnInfo { remote, peer },
                _permit: permit,
                closed,
            };
            let _ = tx.send(Ok(conn)).await;
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("not finished within {HANDSHAKE_TIMEOUT:?}"),
    };
    let n = failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        warn!(remote = ?remote, failed = n, error = %error, "tls handshake failed");
    } else {
        debug!(remote = ?remote, error = %error, "tls handshake failed");
    }
}

/// True for errors of one incoming connection, after which the next accept may succeed at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Accepts on `listener` until `shutdown`, yielding at most `max_connections` open connections
/// at a time; a listener that cannot be restored is reported to `fatal`.
pub fn incoming(
    listener: TcpListener,
    max_connections: usize,
    tls: Option<Arc<ReplicaTls>>,
    fatal: Fatal,
    closed: Closed,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<Accepted, io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let failed_handshakes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        let mut failing_since: Option<Instant> = None;
        let mut refused: u64 = 0;
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, remote)) => {
                    if let Some(since) = failing_since.take() {
                        info!(after = ?since.elapsed(), "accepting connections again");
                    }
                    backoff = BACKOFF_MIN;
                    // Nagle's algorithm would hold small replies back for tens of milliseconds.
                    let _ = stream.set_nodelay(true);
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => match &tls {
                            Some(tls) => {
                                tokio::spawn(handshake(
                                    tls.clone(),
                                    stream,
                                    Some(remote),
                                    permit,
                                    tx.clone(),
                                    failed_handshakes.clone(),
                                    closed.clone(),
                                ));
                            }
                            None => {
                                let conn = Accepted {
                                    stream: Stream::Plain(stream),
                                    info: ConnInfo {
                                        remote: Some(remote),
                                        peer: false,
                                    },
                                    _permit: permit,
                                    closed: closed.clone(),
                                };
                                if tx.send(Ok(conn)).await.is_err() {
                                    return;
                                }
                            }
                        },
                        Err(_) => {
                            refused += 1;
                            if refused.is_power_of_two() {
                                warn!(
                                    limit = max_connections,
                                    refused, "connection refused: too many connections"
                                );
                            }
                            // At most REFUSALS_IN_FLIGHT at once: past that the accept loop
                            // waits (the kernel's backlog holds the rest) rather than
                            // closing connections without a word.
                            let Ok(permit) = refusals.clone().acquire_owned().await else {
                                return;
                            };
                            let tls = tls.as_ref().map(|t| t.acceptor());
                            tokio::spawn(async move {
                                match tls {
                                    None => refuse(stream, max_connections, permit).await,
                                    // Over TLS the refusal is sent once the handshake is done
                                    // (a second at most), so the client can read it.
                                    Some(acceptor) => {
                                        let accepted = tokio::time::timeout(
                                            Duration::from_secs(1),
                                            acceptor.accept(stream),
                                        )
                                        .await;
                                        if let Ok(Ok(stream)) = accepted {
                                            refuse(stream, max_connections, permit).await;
                                        }
                                    }
                                }
                            });
                        }
                    }
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= GIVE_UP_AFTER {
                        fatal.fail(format!(
                            "the listener failed for {} s and could not be restored: {e}",
                            GIVE_UP_AFTER.as_secs()
                        ));
                        return;
                    }
                    warn!(error = %e, retry_in = ?backoff, "accept failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The HTTP/2 frames that refuse a connection: the server's (empty) SETTINGS, then GOAWAY with
/// ENHANCE_YOUR_CALM and a reason.
fn refusal_frames(limit: usize) -> Vec<u8> {
    let reason = format!("too many connections to this replica (limit {limit})");
    let mut out = vec![0, 0, 0, 4, 0, 0, 0, 0, 0]; // SETTINGS, empty, stream 0
    let len = 8 + reason.len();
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[7, 0, 0, 0, 0, 0]); // GOAWAY, no flags, stream 0
    out.extend_from_slice(&0u32.to_be_bytes()); // last stream id
    out.extend_from_slice(&0xbu32.to_be_bytes()); // ENHANCE_YOUR_CALM
    out.extend_from_slice(reason.as_bytes());
    out
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    limit: usize,
    _permit: OwnedSemaphorePermit,
) {
    // Wait (up to 300 ms) for the caller's first request before refusing: an HTTP/2 client
    // that reads the GOAWAY before it has sent its request reports only "connection closed",
    // while a request already in flight fails with the GOAWAY's reason. A caller that sends
    // nothing gets the refusal after the wait.
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        let mut buf = [0u8; 4096];
        while !has_request(&seen) {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                _ => break,
            }
            if seen.len() > 64 * 1024 {
                break;
            }
        }
    })
    .await;
    let _ = stream.write_all(&refusal_frames(limit)).await;
    let _ = stream.shutdown().await;
    // Let the caller read the refusal before the connection closes: drain what it sends until
    // it closes, for up to 300 ms (closing with unread input would reset the connection and
    // lose the GOAWAY). Refusals in progress are bounded by their own permits.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Whether `bytes` (what a client sent on a new connection: the HTTP/2 preface, then frames)
/// hold a HEADERS frame, i.e. its first request.
fn has_request(bytes: &[u8]) -> bool {
    const PREFACE: usize = 24;
    let mut at = PREFACE;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        if bytes[at + 3] == 1 {
            return true;
        }
        at += 9 + len;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[test]
    fn the_bound_leaves_half_the_descriptors() {
        assert_eq!(connection_bound(4096, 1024), 512);
        assert_eq!(connection_bound(4096, 1 << 20), 4096);
        assert_eq!(connection_bound(4096, 10), 16);
    }

    #[test]
    fn a_request_is_found_after_the_preface_and_settings() {
        let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        b.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]); // SETTINGS
        assert!(!has_request(&b));
        b.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0]); // WINDOW_UPDATE header only
        assert!(!has_request(&b));
        b.extend_from_slice(&[0, 0, 1, 1, 4, 0, 0, 0, 1, 0x82]); // HEADERS, stream 1
        assert!(has_request(&b));
        assert!(!has_request(b"PRI"));
    }

    #[test]
    fn refusal_is_settings_then_goaway_with_the_reason() {
        let f = refusal_frames(7);
        assert_eq!(&f[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let len = u32::from_be_bytes([0, f[9], f[10], f[11]]) as usize;
        assert_eq!(f[12], 7, "GOAWAY");
        assert_eq!(f.len(), 18 + len);
        assert_eq!(&f[22..26], &0xbu32.to_be_bytes());
        assert!(String::from_utf8_lossy(&f[26..]).contains("limit 7"));
    }

    /// Past the bound, a connection gets the refusal; once one closes (waking the `Closed`
    /// signal), the next is accepted.
    #[tokio::test]
    async fn connections_past_the_bound_are_refused_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let fatal = Fatal::new(shutdown.clone());
        let closed = Closed::default();
        let mut conns = incoming(
            listener,
            2,
            None,
            fatal.clone(),
            closed.clone(),
            shutdown.clone(),
        );
        let _a = TcpStream::connect(addr).await.unwrap();
        let first = conns.next().await.unwrap().unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _second = conns.next().await.unwrap().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, refusal_frames(2));
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), closed.notified())
            .await
            .expect("a closed connection wakes the Closed signal");
        let _d = TcpStream::connect(addr).await.unwrap();
        let fourth = tokio::time::timeout(Duration::from_secs(5), conns.next()).await;
        assert!(
            matches!(fourth, Ok(Some(Ok(_)))),
            "accepted after a slot freed"
        );
        assert!(fatal.reason().is_none());
        shutdown.cancel();
    }
}
