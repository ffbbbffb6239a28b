//! How openraft's messages are encoded in a `RaftMessage`, and how a replica reads what a
//! replica of another release sent.
//!
//! The shapes of what replicas send each other change with the format (a log entry holds
//! commands, whose shapes are `flotilla-store`'s format version). bincode carries no shape, so
//! a message must never reach a decoder that expects another shape: it would be misread, not
//! refused. Hence:
//!
//! - **Framed** (every message this release sends): `framed` holds a format version byte, then
//!   the bincode of the message in that format's shapes; `data` is empty.
//! - **Unframed** (every message of a release before framing, format 6 or earlier): the bincode
//!   in `data`. It is read in format 6's shapes (formats 2 to 5 only lacked later enum
//!   variants).
//!
//! A message of this release's format decodes as today's types. A message of an older format
//! (framed or not) decodes through that format's frozen shapes and is converted: only an
//! AppendEntries request holds commands, so only it has a conversion (`flotilla_store::format6`);
//! the other messages have kept their shapes. A framed message of a newer format is refused
//! (`FAILED_PRECONDITION`), naming both versions. A replica of a release before framing finds
//! `data` empty, cannot decode it and refuses the message: so during a rolling upgrade an
//! upgraded replica can lead only once a quorum runs the new release (its vote requests are
//! refused by the others), while a leader of the old release keeps replicating to upgraded
//! followers.
//!
//! A reply takes the form and version of its request, so the sender can always read it.

use flotilla_proto::raftpb::RaftMessage;
use flotilla_store::{format6, TypeConfig, FORMAT_VERSION};
use openraft::raft::AppendEntriesRequest;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The oldest format a framed message can have: framing began with format 6.
pub const OLDEST_FRAMED_FORMAT: u8 = 6;

/// The format unframed messages are read in.
pub const UNFRAMED_FORMAT: u8 = 6;

/// How a request came, and so how its reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Unframed,
    Framed(u8),
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Sent by a newer release, in a format this one cannot read.
    Newer(u8),
    /// Not a message of any format this release knows.
    Invalid(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Newer(v) => write!(
                f,
                "peer message of format {v}, from a newer release (this replica reads formats \
                 {OLDEST_FRAMED_FORMAT} to {FORMAT_VERSION}); upgrade this replica"
            ),
            WireError::Invalid(e) => write!(f, "invalid data: {e}"),
        }
    }
}

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Newer(_) => tonic::Status::failed_precondition(e.to_string()),
            WireError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
        }
    }
}

/// A message of the peer wire: how it reads in each older format's shapes.
pub trait WireMessage: Sized + DeserializeOwned {
    /// Decodes `bytes`, the bincode of this message in format `format`'s shapes
    /// (`format < FORMAT_VERSION`).
    fn decode_older(format: u8, bytes: &[u8]) -> Result<Self, String> {
        if format < OLDEST_FRAMED_FORMAT {
            return Err(format!("format {format} was never sent framed"));
        }
        bincode::deserialize(bytes).map_err(|e| e.to_string())
    }
}

impl WireMessage for AppendEntriesRequest<TypeConfig> {
    fn decode_older(format: u8, bytes: &[u8]) -> Result<Self, String> {
        match format {
            6 => bincode::deserialize::<AppendEntriesRequest<format6::V6>>(bytes)
                .map(format6::append_entries)
                .map_err(|e| e.to_string()),
            v => Err(format!("no shapes known for format {v}")),
        }
    }
}

// The other messages hold no commands: their shapes have not changed since format 2.
impl WireMessage for openraft::raft::VoteRequest<flotilla_store::NodeId> {}
impl WireMessage for openraft::raft::InstallSnapshotRequest<TypeConfig> {}
impl<T: DeserializeOwned, E: DeserializeOwned> WireMessage for Result<T, E> {}

/// Reads a message in whichever form and format it came.
pub fn decode<T: WireMessage>(msg: &RaftMessage) -> Result<(T, Form), WireError> {
    if msg.framed.is_empty() {
        let value = T::decode_older(UNFRAMED_FORMAT, &msg.data).map_err(WireError::Invalid)?;
        return Ok((value, Form::Unframed));
    }
    let (&version, body) = msg.framed.split_first().expect("not empty");
    let value = match version {
        v if v > FORMAT_VERSION => return Err(WireError::Newer(v)),
        FORMAT_VERSION => bincode::deserialize(body).map_err(|e| e.to_string()),
        v => T::decode_older(v, body),
    }
    .map_err(WireError::Invalid)?;
    Ok((value, Form::Framed(version)))
}

/// Puts `value` into `msg` in `form`. Only replies are ever encoded in an older form, and
/// replies have kept their shapes, so today's encoding is that form's.
pub fn encode_into<T: Serialize>(
    msg: &mut RaftMessage,
    form: Form,
    value: &T,
) -> Result<(), bincode::Error> {
    match form {
        Form::Unframed => msg.data = bincode::serialize(value)?,
        Form::Framed(version) => {
            let mut out = Vec::with_capacity(bincode::serialized_size(value)? as usize + 1);
            out.push(version);
            bincode::serialize_into(&mut out, value)?;
            msg.framed = out;
        }
    }
    Ok(())
}

/// The framed bytes of a request of this release.
pub fn framed<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    let mut msg = RaftMessage::default();
    encode_into(&mut msg, Form::Framed(FORMAT_VERSION), value)?;
    Ok(msg.framed)
}

#[cfg(test)]
mod tests {
    use flotilla_core::{Command, Proposal, TaskSpec};
    use openraft::raft::VoteRequest;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;

    fn request() -> AppendEntriesRequest<TypeConfig> {
        let mut spec = TaskSpec::new("q", b"payload".to_vec());
        spec.idempotency_key = Some("k".into());
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 41)),
            entries: vec![
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(3, 1), 42),
                    payload: EntryPayload::Normal(Proposal {
                        commands: vec![Command::submit(1_700_000_000_000, vec![spec])],
                    }),
                },
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(3, 1), 43),
                    payload: EntryPayload::Blank,
                },
            ],
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 40)),
        }
    }

    fn bytes_of(req: &AppendEntriesRequest<TypeConfig>) -> Vec<u8> {
        bincode::serialize(req).unwrap()
    }

    /// The bincode of [`request`] as the format 6 release sent it, unframed in `data`.
    const FORMAT_6_APPEND: &str = include_str!("../testdata/format6_append_entries.hex");

    fn hex(s: &str) -> Vec<u8> {
        let s = s.trim();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_framed_request_of_this_release_reads_back() {
        let req = request();
        let msg = RaftMessage {
            framed: framed(&req).unwrap(),
            ..Default::default()
        };
        assert!(msg.data.is_empty());
        assert_eq!(msg.framed[0], FORMAT_VERSION);
        let (back, form): (AppendEntriesRequest<TypeConfig>, _) = decode(&msg).unwrap();
        assert_eq!(form, Form::Framed(FORMAT_VERSION));
        assert_eq!(bytes_of(&back), bytes_of(&req));
    }

    #[test]
    fn an_unframed_format_6_request_is_read_through_the_frozen_shapes() {
        let msg = RaftMessage {
            data: hex(FORMAT_6_APPEND),
            ..Default::default()
        };
        let (back, form): (AppendEntriesRequest<TypeConfig>, _) = decode(&msg).unwrap();
        assert_eq!(form, Form::Unframed);
        assert_eq!(bytes_of(&back), bytes_of(&request()));
        // A framed format 6 message reads the same way.
        let mut framed = vec![6u8];
        framed.extend(hex(FORMAT_6_APPEND));
        let msg = RaftMessage {
            framed,
            ..Default::default()
        };
        let (back, form): (AppendEntriesRequest<TypeConfig>, _) = decode(&msg).unwrap();
        assert_eq!(form, Form::Framed(6));
        assert_eq!(bytes_of(&back), bytes_of(&request()));
    }

    #[test]
    fn a_release_before_framing_cannot_misread_a_framed_message() {
        // What the format 6 release did with a message: bincode of `data`, no version.
        let msg = RaftMessage {
            framed: framed(&request()).unwrap(),
            ..Default::default()
        };
        assert!(bincode::deserialize::<AppendEntriesRequest<format6::V6>>(&msg.data).is_err());
        let vote = VoteRequest::new(Vote::new(4, 2), None);
        let msg = RaftMessage {
            framed: framed(&vote).unwrap(),
            ..Default::default()
        };
        assert!(bincode::deserialize::<VoteRequest<u64>>(&msg.data).is_err());
    }

    #[test]
    fn a_newer_format_is_refused_naming_both_versions() {
        let mut bytes = framed(&request()).unwrap();
        bytes[0] = FORMAT_VERSION + 1;
        let msg = RaftMessage {
            framed: bytes,
            ..Default::default()
        };
        let err = decode::<AppendEntriesRequest<TypeConfig>>(&msg).unwrap_err();
        assert_eq!(err, WireError::Newer(FORMAT_VERSION + 1));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains(&format!(
                "format {}, from a newer release (this replica reads formats 6 to {FORMAT_VERSION})",
                FORMAT_VERSION + 1
            )),
            "{}",
            status.message()
        );
    }

    #[test]
    fn garbage_and_impossible_formats_are_invalid() {
        for framed in [
            vec![FORMAT_VERSION, 1, 2],
            vec![5, 0, 0, 0],
            vec![FORMAT_VERSION],
        ] {
            let msg = RaftMessage {
                framed,
                ..Default::default()
            };
            let err = decode::<AppendEntriesRequest<TypeConfig>>(&msg).unwrap_err();
            assert!(matches!(err, WireError::Invalid(_)), "{err:?}");
            assert_eq!(
                tonic::Status::from(err).code(),
                tonic::Code::InvalidArgument
            );
        }
        let msg = RaftMessage::default();
        assert!(decode::<VoteRequest<u64>>(&msg).is_err(), "empty message");
    }

    #[test]
    fn a_reply_takes_the_form_of_its_request() {
        let reply: Result<u64, String> = Ok(7);
        let mut msg = RaftMessage::default();
        encode_into(&mut msg, Form::Unframed, &reply).unwrap();
        assert!(msg.framed.is_empty());
        assert_eq!(
            bincode::deserialize::<Result<u64, String>>(&msg.data).unwrap(),
            reply
        );
        let mut msg = RaftMessage::default();
        encode_into(&mut msg, Form::Framed(6), &reply).unwrap();
        assert!(msg.data.is_empty());
        assert_eq!(msg.framed[0], 6);
        let (back, form): (Result<u64, String>, _) = decode(&msg).unwrap();
        assert_eq!((back, form), (reply, Form::Framed(6)));
    }
}
