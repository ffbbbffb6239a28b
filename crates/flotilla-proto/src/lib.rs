//! Generated gRPC code for `proto/` and the conversions between wire messages and
//! `flotilla-core` types. Domain types never derive prost; they convert here, at the edge.

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("flotilla.v1");
}

#[allow(clippy::all, missing_docs)]
pub mod raftpb {
    tonic::include_proto!("flotilla.raft.v1");
}

mod convert;

pub use convert::{
    schedule_from_pb, schedule_to_pb, spec_from_pb, spec_to_pb, state_from_pb, state_to_pb,
    task_from_pb, task_to_pb, worker_spec_from_pb, worker_spec_to_pb, ConvertError,
};

/// gRPC metadata key carrying the leader hint, `ID=HOST:PORT`.
pub const LEADER_HINT_KEY: &str = "flotilla-leader";

/// Most outcomes one `Workers/ReportOutcomes` call may carry; the leader refuses more.
pub const MAX_OUTCOMES_PER_CALL: usize = 1000;

/// Requests in one SubmitStream message, at most; a larger message ends the stream with
/// INVALID_ARGUMENT.
pub const STREAM_MESSAGE_LIMIT: usize = 1024;

/// `head`, then each cause in `cause`'s chain whose text is not already there, joined by
/// ": " — so a transport error names its root (an untrusted certificate, a refused connect)
/// rather than a bare "transport error". Used by the client and the replicas alike.
pub fn with_causes(head: String, mut cause: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut out = head;
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}
