//! The receiving side of the peer network: decodes openraft messages and hands them to the
//! local Raft instance.

use flotilla_proto::raftpb::{raft_server, RaftMessage};
use std::sync::atomic::AtomicU64;

use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::damage::Damage;
use crate::leader_watch::Contact;
use crate::membership::{self, HandingTo, Me};
use crate::peer_wire::{self, Form, WireMessage};
use crate::Raft;

pub struct RaftService {
    pub raft: Raft,
    pub cluster_name: String,
    /// This replica's identity, for the incarnation checks of `membership`.
    pub me: Me,
    /// Entries this replica acknowledged and its log lost, until it has them again.
    pub damage: Damage,
    /// When a leader was last heard (for `leader_watch`).
    pub contact: Contact,
    /// While this replica hands leadership over: the only candidate it may vote for.
    pub handing_to: HandingTo,
}

impl RaftService {
    fn decode<T: WireMessage>(&self, msg: &RaftMessage) -> Result<(T, Form), Status> {
        if msg.cluster != self.cluster_name {
            return Err(Status::permission_denied(format!(
                "message from cluster {:?}, this replica belongs to {:?}",
                msg.cluster, self.cluster_name
            )));
        }
        membership::check_incoming(&self.raft, &self.me, msg)?;
        peer_wire::decode(msg).map_err(|e| {
            membership::warn_throttled(
                &UNREADABLE_WARNED_MS,
                &format!("refused a peer message: {e}"),
            );
            Status::from(e)
        })
    }

    /// The reply, in the form of its request (see `peer_wire`).
    fn encode<T: Serialize>(&self, form: Form, value: &T) -> Result<Response<RaftMessage>, Status> {
        let mut msg = RaftMessage {
            cluster: self.cluster_name.clone(),
            ..Default::default()
        };
        peer_wire::encode_into(&mut msg, form, value)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(msg))
    }
}

/// When an unreadable peer message was last logged.
static UNREADABLE_WARNED_MS: AtomicU64 = AtomicU64::new(0);

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let (req, form) = self.decode(request.get_ref())?;
        let received = self.contact.stamp();
        let result = self.raft.append_entries(req).await;
        if matches!(
            result,
            Ok(openraft::raft::AppendEntriesResponse::Success
                | openraft::raft::AppendEntriesResponse::PartialSuccess(_)
                | openraft::raft::AppendEntriesResponse::Conflict)
        ) {
            self.contact.touch(received);
        }
        self.encode(form, &result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let (req, form): (openraft::raft::VoteRequest<flotilla_store::NodeId>, _) =
            self.decode(request.get_ref())?;
        self.contact.saw_vote_term(req.vote.leader_id().term);
        let refusal = if let Some(target) = self
            .handing_to
            .target()
            .filter(|t| req.vote.leader_id().voted_for() != Some(*t))
        {
            tracing::info!(
                candidate = %req.vote,
                "vote refused: leadership is being handed over to replica {target}"
            );
            true
        } else if let Some(why) = self.damage.refuses_vote(req.last_log_id.as_ref()) {
            tracing::warn!(candidate = %req.vote, "vote refused: {why}");
            true
        } else {
            false
        };
        if refusal {
            let vote = self.raft.metrics().borrow().vote;
            let last = self.raft.data_metrics().borrow().last_log;
            let refused: Result<_, openraft::error::RaftError<flotilla_store::NodeId>> =
                Ok(openraft::raft::VoteResponse::new(vote, last, false));
            return self.encode(form, &refused);
        }
        let result = self.raft.vote(req).await;
        self.encode(form, &result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let (req, form) = self.decode(request.get_ref())?;
        // A leader sending a snapshot is heard, though it sends no AppendEntries meanwhile.
        self.contact.stamp();
        let result = self.raft.install_snapshot(req).await;
        self.encode(form, &result)
    }

    async fn hello(
        &self,
        _request: Request<flotilla_proto::raftpb::HelloRequest>,
    ) -> Result<Response<flotilla_proto::raftpb::HelloReply>, Status> {
        membership::hello(&self.raft, &self.me)
            .await
            .map(Response::new)
    }

    async fn elect_now(
        &self,
        request: Request<flotilla_proto::raftpb::ElectNowRequest>,
    ) -> Result<Response<flotilla_proto::raftpb::ElectNowReply>, Status> {
        membership::elect_now(&self.raft, &self.me, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn silence(
        &self,
        request: Request<flotilla_proto::raftpb::SilenceRequest>,
    ) -> Result<Response<flotilla_proto::raftpb::SilenceReply>, Status> {
        crate::leader_watch::answer_poll(&self.raft, &self.me, &self.contact, request.get_ref())
            .map(Response::new)
    }
}
