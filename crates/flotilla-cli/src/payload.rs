//! The payload of a command task: the argv a worker runs, as JSON.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandPayload {
    pub argv: Vec<String>,
}

impl CommandPayload {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a list of strings always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Option<CommandPayload> {
        serde_json::from_slice(bytes).ok()
    }
}
