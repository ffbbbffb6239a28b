//! The receiving side of the peer network: decodes openraft messages and hands them to the
//! local Raft instance.

use flotilla_proto::raftpb::{raft_server, RaftMessage};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::Raft;

pub struct RaftService {
    pub raft: Raft,
    pub cluster_name: String,
}

impl RaftService {
    fn decode<T: DeserializeOwned>(&self, msg: &RaftMessage) -> Result<T, Status> {
        if msg.cluster != self.cluster_name {
            return Err(Status::permission_denied(format!(
                "message from cluster {:?}, this replica belongs to {:?}",
                msg.cluster, self.cluster_name
            )));
        }
        bincode::deserialize(&msg.data)
            .map_err(|e| Status::invalid_argument(format!("invalid data: {e}")))
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Response<RaftMessage>, Status> {
        let data = bincode::serialize(value).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftMessage {
            cluster: self.cluster_name.clone(),
            data,
        }))
    }
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let req = self.decode(request.get_ref())?;
        let result = self.raft.append_entries(req).await;
        self.encode(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req = self.decode(request.get_ref())?;
        let result = self.raft.vote(req).await;
        self.encode(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let req = self.decode(request.get_ref())?;
        let result = self.raft.install_snapshot(req).await;
        self.encode(&result)
    }
}
