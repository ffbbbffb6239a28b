//! Changing the replica set: add a replica (it joins as a learner, catches up, then votes),
//! remove one, hand leadership to another voter. Every call goes to the leader.

use std::time::Duration;

use flotilla_proto::pb;

use crate::{Client, ClientError};

/// What adding a replica did.
#[derive(Debug, Clone)]
pub struct AddedReplica {
    /// The incarnation of the replica's data dir that the membership now pins.
    pub incarnation: String,
    /// How long the replica took to catch up as a learner.
    pub catch_up: Duration,
    /// Log index of the membership that made it a voter.
    pub membership_index: u64,
}

/// What a leadership transfer did.
#[derive(Debug, Clone, Copy)]
pub struct Transferred {
    /// From the leader going quiet to the new leader being known (zero: it led already).
    pub took: Duration,
    pub term: u64,
}

impl Client {
    /// Adds replica `id`, running at `addr` (started with `--join`, its data dir empty), and
    /// answers once it is a voter. `catch_up_timeout` bounds the learner's catch-up (None: the
    /// server's default of 10 minutes). Refused, changing nothing, when `id` is a member
    /// already, `addr` does not answer, or it answers as another replica or cluster.
    pub async fn add_replica(
        &self,
        id: u64,
        addr: &str,
        catch_up_timeout: Option<Duration>,
    ) -> Result<AddedReplica, ClientError> {
        let timeout = catch_up_timeout.unwrap_or(Duration::from_secs(600));
        let req = pb::AddReplicaRequest {
            id,
            addr: addr.to_string(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let resp = self
            .call("add-replica", timeout, |mut c| {
                let req = req.clone();
                async move { c.add_replica(req).await }
            })
            .await?;
        Ok(AddedReplica {
            incarnation: resp.incarnation,
            catch_up: Duration::from_millis(resp.catch_up_ms),
            membership_index: resp.membership_index,
        })
    }

    /// Removes replica `id` from the membership (it then stops); answers with the log index of
    /// the membership without it. Refused when it would leave no voter or no quorum.
    pub async fn remove_replica(&self, id: u64) -> Result<u64, ClientError> {
        let req = pb::RemoveReplicaRequest { id };
        let resp = self
            .call(
                "remove-replica",
                Duration::from_secs(10),
                |mut c| async move { c.remove_replica(req).await },
            )
            .await?;
        Ok(resp.membership_index)
    }

    /// Hands leadership to voter `id`, which must be caught up; answers once it leads.
    pub async fn transfer_leader(&self, id: u64) -> Result<Transferred, ClientError> {
        let req = pb::TransferLeaderRequest { id };
        let resp = self
            .call(
                "transfer-leader",
                Duration::from_secs(10),
                |mut c| async move { c.transfer_leader(req).await },
            )
            .await?;
        Ok(Transferred {
            took: Duration::from_millis(resp.transfer_ms),
            term: resp.term,
        })
    }
}
