//! Openraft's peer network over tonic: each RPC is openraft's message, framed with the format
//! version (see `peer_wire`), inside a `RaftMessage` tagged with the cluster name.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::raftpb::{raft_client::RaftClient, RaftMessage};
use flotilla_store::{Node, NodeId, TypeConfig};
use flotilla_tls::ReplicaTls;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::peer_auth::{stamped, PeerSecret};
use crate::peer_wire;

/// A channel to a peer, over TLS (mutual: this replica presents its certificate) when the
/// replica has it; it connects on first use.
pub(crate) fn peer_channel(
    endpoint: Endpoint,
    tls: Option<&Arc<ReplicaTls>>,
    timeout: Duration,
) -> Channel {
    let endpoint = endpoint.connect_timeout(timeout);
    match tls {
        Some(tls) => tls.peer_connector(timeout).lazy_channel(endpoint),
        None => endpoint.connect_lazy(),
    }
}

/// An error with its causes, "a: b: c" (a transport error alone says only "transport error").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    flotilla_proto::with_causes(e.to_string(), e.source())
}

/// As [`peer_channel`], connected now.
pub(crate) async fn peer_connect(
    endpoint: Endpoint,
    tls: Option<&Arc<ReplicaTls>>,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = endpoint.connect_timeout(timeout);
    match tls {
        Some(tls) => tls.peer_connector(timeout).channel(endpoint).await,
        None => endpoint.connect().await,
    }
}

/// One peer call on a fresh connection to the replica at `addr`, bounded by `timeout` (the
/// connect included), carrying this replica's cluster secret; the error says what failed.
pub(crate) async fn call_once<Req, Rep, F, Fut>(
    tls: Option<&Arc<ReplicaTls>>,
    secret: Option<&PeerSecret>,
    addr: &str,
    timeout: Duration,
    request: Req,
    call: F,
) -> Result<Rep, String>
where
    F: FnOnce(RaftClient<Channel>, tonic::Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Rep>, tonic::Status>>,
{
    let attempt = async {
        let endpoint = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("not an address: {e}"))?;
        let channel = peer_connect(endpoint, tls, timeout)
            .await
            .map_err(|e| error_chain(&e))?;
        call(RaftClient::new(channel), stamped(secret, request))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Largest peer message, in either direction.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// An AppendEntries with more than one entry stops growing past this many bytes.
///
/// openraft gives an AppendEntries one heartbeat interval (100 ms) to complete and then sends
/// the same payload again. Up to `max_payload_entries` group-committed entries of a megabyte
/// each made a request that a loaded follower could not take within that time, and a lagging
/// follower was sent the same too-large request over and over: the cluster stalled for seconds
/// with idle CPUs. Bounded requests keep every retry small enough to succeed.
pub const MAX_APPEND_BYTES: usize = 2 * 1024 * 1024;

/// HTTP/2 flow-control windows of replica connections. h2's default (64 KiB) makes a large
/// AppendEntries (a group-committed entry can be megabytes) wait for a window update every
/// 64 KiB; replicas on a LAN can afford megabytes in flight.
pub(crate) const H2_STREAM_WINDOW: u32 = 4 << 20;
pub(crate) const H2_CONNECTION_WINDOW: u32 = 8 << 20;

/// Creates one connection per target replica.
pub struct Network {
    pub cluster_name: String,
    /// This replica's id and data-dir incarnation, carried in every message (see `membership`).
    pub node_id: NodeId,
    pub incarnation: String,
    /// The cluster secret every peer call carries (see `peer_auth`).
    pub peer_secret: Option<PeerSecret>,
    /// This replica's TLS: peer connections are mutual TLS when set.
    pub tls: Option<Arc<ReplicaTls>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        let client = Channel::from_shared(format!("http://{}", node.addr))
            .map(|endpoint| {
                let endpoint = endpoint
                    .tcp_nodelay(true)
                    .initial_stream_window_size(H2_STREAM_WINDOW)
                    .initial_connection_window_size(H2_CONNECTION_WINDOW);
                let channel = peer_channel(endpoint, self.tls.as_ref(), Duration::from_secs(1));
                RaftClient::new(channel)
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            })
            .map_err(|e| e.to_string());
        Connection {
            target,
            cluster_name: self.cluster_name.clone(),
            to_incarnation: node.incarnation.clone(),
            from_id: self.node_id,
            from_incarnation: self.incarnation.clone(),
            refusal_logged: false,
            peer_secret: self.peer_secret.clone(),
            client,
        }
    }
}

/// A connection to one peer.
pub struct Connection {
    target: NodeId,
    cluster_name: String,
    /// The target's incarnation as the membership records it (empty: not pinned).
    to_incarnation: String,
    from_id: NodeId,
    from_incarnation: String,
    /// Whether an incarnation refusal by the target was logged already (once per connection).
    refusal_logged: bool,
    peer_secret: Option<PeerSecret>,
    /// Err when the peer's address cannot form a URI; every RPC then reports it unreachable.
    client: Result<RaftClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

/// How many leading entries to send when a request of all of them was over
/// [`MAX_APPEND_BYTES`]: those that fit, at least one, and always fewer than all of them — the
/// hint must shrink the request, or openraft would resend the same one forever.
fn entries_that_fit(entries: &[openraft::Entry<TypeConfig>]) -> u64 {
    let mut bytes = 0u64;
    let mut n = 0u64;
    for e in entries {
        bytes += bincode::serialized_size(e).unwrap_or(u64::MAX / 2);
        if n > 0 && bytes > MAX_APPEND_BYTES as u64 {
            break;
        }
        n += 1;
    }
    n.min(entries.len().saturating_sub(1) as u64).max(1)
}

fn encode<Req: Serialize, E: std::error::Error>(
    req: &Req,
) -> Result<Vec<u8>, RPCError<NodeId, Node, RaftError<NodeId, E>>> {
    peer_wire::framed(req)
        .map_err(|e| RPCError::Network(NetworkError::new(&Message(e.to_string()))))
}

impl Connection {
    async fn call<Resp, E>(
        &mut self,
        rpc: Rpc,
        framed: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Message(e.clone())))),
        };
        let msg = RaftMessage {
            cluster: self.cluster_name.clone(),
            data: Vec::new(),
            framed,
            to_incarnation: self.to_incarnation.clone(),
            from_id: self.from_id,
            from_incarnation: self.from_incarnation.clone(),
        };
        let msg = stamped(self.peer_secret.as_ref(), msg);
        let ttl = option.hard_ttl();
        let fut = async {
            match &rpc {
                Rpc::Append => client.append_entries(msg).await,
                Rpc::Vote => client.vote(msg).await,
                Rpc::Snapshot => client.install_snapshot(msg).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action: match rpc {
                        Rpc::Append => RPCTypes::AppendEntries,
                        Rpc::Vote => RPCTypes::Vote,
                        Rpc::Snapshot => RPCTypes::InstallSnapshot,
                    },
                    id: 0,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(status)) => {
                let refused = matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition
                        | tonic::Code::Unauthenticated
                        | tonic::Code::InvalidArgument
                );
                if refused && !self.refusal_logged {
                    self.refusal_logged = true;
                    let hint = if status.code() == tonic::Code::InvalidArgument {
                        " (a replica of a release before framed peer messages cannot read them)"
                    } else {
                        ""
                    };
                    tracing::warn!(
                        target_id = self.target,
                        "peer refused: {}{hint}",
                        status.message()
                    );
                }
                let err = Message(format!("{}: {}", status.code(), status.message()));
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown => {
                        RPCError::Unreachable(Unreachable::new(&err))
                    }
                    _ => RPCError::Network(NetworkError::new(&err)),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let (result, _form): (Result<Resp, RaftError<NodeId, E>>, _) = peer_wire::decode(&reply)
            .map_err(|e| RPCError::Network(NetworkError::new(&Message(e.to_string()))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let data = encode(&rpc)?;
        if data.len() > MAX_APPEND_BYTES && rpc.entries.len() > 1 {
            // openraft retries at once with the hinted number of entries.
            let fit = entries_that_fit(&rpc.entries);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        self.call(Rpc::Append, data, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, encode(&rpc)?, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Rpc::Vote, encode(&rpc)?, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::{Command, Proposal, TaskSpec};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    fn entry(index: u64, payload_bytes: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![Command::submit(
                    1,
                    vec![TaskSpec::new("q", vec![7u8; payload_bytes])],
                )],
            }),
        }
    }

    #[test]
    fn hint_shrinks_the_request_and_keeps_at_least_one_entry() {
        let big = MAX_APPEND_BYTES * 2 / 3;
        // Three entries of 2/3 of the limit: one fits.
        let entries: Vec<_> = (1..=3).map(|i| entry(i, big)).collect();
        assert_eq!(entries_that_fit(&entries), 1);
        // One entry alone over the limit is still sent, alone.
        let huge: Vec<_> = (1..=2).map(|i| entry(i, MAX_APPEND_BYTES * 2)).collect();
        assert_eq!(entries_that_fit(&huge), 1);
        // Entries that fit on their own but not with the request around them: fewer than all.
        let half = MAX_APPEND_BYTES / 2 - 100;
        let pair: Vec<_> = (1..=2).map(|i| entry(i, half)).collect();
        assert_eq!(entries_that_fit(&pair), 1);
    }
}
