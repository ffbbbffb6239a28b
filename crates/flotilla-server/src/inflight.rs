//! A bound on the request bytes a replica holds before they form a whole message (issue 14,
//! item 7).
//!
//! tonic buffers each gRPC message until all of it has arrived, so a caller that announces large
//! messages and never finishes them pins memory: eight submits announced as 60 MiB and left
//! unfinished held ~450 MiB on a leader. This tower layer wraps every request body and follows
//! its gRPC framing (a 5-byte prefix with the length, then the message), counting the bytes of
//! the message being received:
//!
//! - per replica, at most `--max-request-bytes-in-flight` bytes (256 MiB), and per connection
//!   at most two of the largest requests;
//! - a frame that would take either past its bound fails its request with
//!   `RESOURCE_EXHAUSTED`, naming the bound, and what the request held is released;
//! - a message that stops arriving for [`STALL_TIMEOUT`] fails its request the same way, so
//!   bytes cannot be held by a caller that stopped sending. Between messages (an idle stream,
//!   e.g. a submit pipeline) nothing is held and no timer runs.
//!
//! The bytes of a message are released when it is complete (tonic decodes it at once) or when
//! its request ends. Peer (Raft) calls are not counted: with a peer secret they are refused
//! before their body is read, and their size is bounded by `MAX_RAFT_MESSAGE_BYTES`; refusing
//! a leader's AppendEntries because clients filled a budget would depose it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};

/// A message that receives no byte for this long fails its request.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The bytes held by unfinished messages, replica-wide and per connection.
pub struct Budget {
    limit: usize,
    per_connection: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_connection: HashMap<Option<SocketAddr>, usize>,
}

impl Budget {
    /// A replica-wide `limit`; each connection may hold up to `per_connection` of it.
    pub fn new(limit: usize, per_connection: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            per_connection: per_connection.min(limit),
            held: Mutex::new(Held::default()),
        })
    }

    /// Bytes held now, replica-wide.
    pub fn held(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `n` more bytes for `conn`, or says which bound they would cross.
    fn take(&self, conn: Option<SocketAddr>, n: usize) -> Result<(), String> {
        let mut h = self.lock();
        let mine = h.by_connection.get(&conn).copied().unwrap_or(0);
        if mine + n > self.per_connection {
            return Err(format!(
                "this connection's unfinished request messages would hold more than {} bytes (the per-connection bound)",
                self.per_connection
            ));
        }
        if h.total + n > self.limit {
            return Err(format!(
                "unfinished request messages would hold more than {} bytes on this replica (--max-request-bytes-in-flight); retry later",
                self.limit
            ));
        }
        h.total += n;
        *h.by_connection.entry(conn).or_default() += n;
        Ok(())
    }

    fn give(&self, conn: Option<SocketAddr>, n: usize) {
        if n == 0 {
            return;
        }
        let mut h = self.lock();
        h.total = h.total.saturating_sub(n);
        if let Some(mine) = h.by_connection.get_mut(&conn) {
            *mine = mine.saturating_sub(n);
            if *mine == 0 {
                h.by_connection.remove(&conn);
            }
        }
    }
}

/// Where a body's gRPC framing stands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Framing {
    /// Bytes of the current message's 5-byte prefix seen so far.
    prefix: Vec<u8>,
    /// Bytes of the current message still to come (after its prefix).
    left: usize,
    /// Bytes of the current (unfinished) message received, its prefix included.
    held: usize,
}

impl Framing {
    /// Follows `n` more bytes (`data` is their content); returns the bytes held afterwards.
    fn feed(&mut self, mut data: &[u8]) -> usize {
        while !data.is_empty() {
            if self.left == 0 && self.prefix.len() < 5 {
                let take = (5 - self.prefix.len()).min(data.len());
                self.prefix.extend_from_slice(&data[..take]);
                self.held += take;
                data = &data[take..];
                if self.prefix.len() == 5 {
                    let len = u32::from_be_bytes([
                        self.prefix[1],
                        self.prefix[2],
                        self.prefix[3],
                        self.prefix[4],
                    ]) as usize;
                    self.left = len;
                    if len == 0 {
                        self.finish();
                    }
                }
            } else {
                let take = self.left.min(data.len());
                self.left -= take;
                self.held += take;
                data = &data[take..];
                if self.left == 0 {
                    self.finish();
                }
            }
        }
        self.held
    }

    fn finish(&mut self) {
        self.prefix.clear();
        self.left = 0;
        self.held = 0;
    }

    /// Whether a message is partly received.
    fn in_message(&self) -> bool {
        self.held > 0
    }
}

/// The layer: every request body is counted against `budget`.
#[derive(Clone)]
pub struct BoundRequests(pub Arc<Budget>);

impl<S> tower_layer::Layer<S> for BoundRequests {
    type Service = Bounded<S>;

    fn layer(&self, inner: S) -> Bounded<S> {
        Bounded {
            inner,
            budget: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Bounded<S> {
    inner: S,
    budget: Arc<Budget>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Bounded<S>
where
    S: tower_service::Service<http::Request<tonic::body::BoxBody>>,
    B: Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let conn = request
            .extensions()
            .get::<crate::listener::ConnInfo>()
            .and_then(|i| i.remote);
        let peer = request.uri().path().starts_with("/flotilla.raft.v1.Raft/");
        let budget = (!peer).then(|| self.budget.clone());
        self.inner.call(request.map(|inner| {
            tonic::body::boxed(CountedBody {
                inner,
                budget,
                conn,
                framing: Framing::default(),
                stall: None,
                done: false,
            })
        }))
    }
}

/// A request body whose unfinished message is counted against the [`Budget`].
pub struct CountedBody<B> {
    inner: B,
    /// None: not counted (a peer call).
    budget: Option<Arc<Budget>>,
    conn: Option<SocketAddr>,
    framing: Framing,
    /// Runs while a message is partly received and the body waits for more.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Failed or ended: yields nothing more.
    done: bool,
}

impl<B> CountedBody<B> {
    fn fail(
        &mut self,
        message: String,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, tonic::Status>>> {
        self.done = true;
        self.stall = None;
        let held = std::mem::take(&mut self.framing).held;
        if let Some(b) = &self.budget {
            b.give(self.conn, held);
        }
        Poll::Ready(Some(Err(tonic::Status::resource_exhausted(message))))
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give(self.conn, self.framing.held);
        }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let frame = match polled {
            Poll::Pending => {
                if this.budget.is_some() && this.framing.in_message() {
                    let stall = this
                        .stall
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(STALL_TIMEOUT)));
                    if stall.as_mut().poll(cx).is_ready() {
                        return this.fail(format!(
                            "a request message stopped arriving for {} s; it was dropped",
                            STALL_TIMEOUT.as_secs()
                        ));
                    }
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                return Poll::Ready(Some(Err(tonic::Status::from_error(e.into()))));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        this.stall = None;
        let Some(budget) = &this.budget else {
            return Poll::Ready(Some(Ok(frame)));
        };
        if let Some(data) = frame.data_ref() {
            let before = this.framing.held;
            let mut after = this.framing.clone();
            let held = after.feed(data);
            if held > before {
                if let Err(why) = budget.take(this.conn, held - before) {
                    return this.fail(why);
                }
            } else {
                budget.give(this.conn, before - held);
            }
            this.framing = after;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn framing_holds_only_the_unfinished_message() {
        let mut f = Framing::default();
        let two = [message(10), message(0), message(3)].concat();
        // Fed whole: everything completes.
        assert_eq!(f.clone().feed(&two), 0);
        // Fed byte by byte: what is held grows within a message and drops at its end.
        let mut held = Vec::new();
        for b in &two {
            held.push(f.feed(std::slice::from_ref(b)));
        }
        assert_eq!(held[..5], [1, 2, 3, 4, 5]);
        assert_eq!(held[14], 0, "the first message ends at byte 15");
        assert_eq!(held[19], 0, "the empty message ends at once");
        assert_eq!(*held.last().unwrap(), 0);
        assert!(!f.in_message());
        // A message split across frames, then the next one's prefix.
        let mut f = Framing::default();
        let m = message(100);
        assert_eq!(f.feed(&m[..60]), 60);
        assert!(f.in_message());
        assert_eq!(f.feed(&[&m[60..], &message(50)[..3]].concat()), 3);
    }

    #[test]
    fn the_budget_bounds_each_connection_and_the_replica() {
        let b = Budget::new(100, 60);
        let (c1, c2, c3) = (
            Some("127.0.0.1:1".parse().unwrap()),
            Some("127.0.0.1:2".parse().unwrap()),
            Some("127.0.0.1:3".parse().unwrap()),
        );
        b.take(c1, 50).unwrap();
        let e = b.take(c1, 11).unwrap_err();
        assert!(e.contains("per-connection"), "{e}");
        b.take(c2, 50).unwrap();
        let e = b.take(c3, 1).unwrap_err();
        assert!(e.contains("--max-request-bytes-in-flight"), "{e}");
        assert_eq!(b.held(), 100);
        b.give(c1, 50);
        b.take(c3, 40).unwrap();
        b.give(c2, 50);
        b.give(c3, 40);
        assert_eq!(b.held(), 0);
        assert!(b.lock().by_connection.is_empty());
    }
}
