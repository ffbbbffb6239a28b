//! Versioned encoding of everything this crate persists: one version byte, then bincode.
//!
//! Every value written by this release carries [`FORMAT_VERSION`]. [`decode`] accepts only that
//! version; values of an older release are converted once, when a data dir is opened, by
//! `migrate` (which reads them with [`decode_version`]). A value of a newer release is refused
//! with a message naming both versions, never misread.
//!
//! | version | release | what changed |
//! |---|---|---|
//! | 1 | up to 6fc034c | first format |
//! | 2 | up to 009e425 | members carry their data dir incarnation; the data dir identity too |
//! | 3 | up to c0eddae | queue flow limits: `QueueSetting` variants and the image's `Flow` record, appended (a version 2 value decodes unchanged) |
//! | 4 | up to 362b24b | workflows: `Command::SubmitWorkflow`/`CancelWorkflow` and the image's `Workflow` record, appended (a version 2 or 3 value decodes unchanged) |
//! | 5 | up to d7c11dc | schedules: `Command::AddSchedule`/`PauseSchedule`/`DeleteSchedule`/`FireSchedule` and the image's `Schedule` record, appended (a version 2, 3 or 4 value decodes unchanged) |
//! | 6 | up to 787ce3b | attempt history: the image's `Attempts` record, appended (state image version 6; a version 2 to 5 value decodes unchanged) |
//! | 7 | this one | per-key concurrency: `TaskSpec::concurrency_key` (a field: the `Task` and `Schedule` records and every command holding a spec change shape), `FlowLimits::max_per_key` (the `Flow` record), `QueueSetting::MaxPerKey` (appended); state image version 7. A version 2 to 6 value decodes through the frozen format 6 shapes (`flotilla_core::compat::{v6, v6_image}`, `crate::format6`) |

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Current on-disk format version of every value written by this crate.
pub const FORMAT_VERSION: u8 = 7;
/// The oldest snapshot file version read (versions 2 to 6 through the frozen format 6 image
/// records, see `format6`).
pub const OLDEST_SNAPSHOT_VERSION: u8 = 2;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serialize_into(&mut out, value).expect("bincode serialization into a Vec cannot fail");
    out
}

/// Decodes a value of the current format version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode_version(FORMAT_VERSION, bytes)
}

/// Decodes a value written in format `version` (for migrations of older formats).
pub fn decode_version<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&v, rest)) if v == version => bincode::deserialize(rest).map_err(|e| e.to_string()),
        Some((v, _)) if *v > FORMAT_VERSION => Err(format!(
            "format version {v} was written by a newer release (this one reads up to {FORMAT_VERSION})"
        )),
        Some((v, _)) => Err(format!(
            "format version {v} where version {version} was expected"
        )),
        None => Err("empty value".into()),
    }
}

/// The version byte of an encoded value.
pub fn version_of(bytes: &[u8]) -> Option<u8> {
    bytes.first().copied()
}

pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn key_index(key: &[u8]) -> Result<u64, String> {
    let arr: [u8; 8] = key
        .try_into()
        .map_err(|_| format!("bad key length {}", key.len()))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refuse_other_versions() {
        let bytes = encode(&(7u64, "x".to_string()));
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), (7, "x".into()));
        let mut future = bytes.clone();
        future[0] = 9;
        let err = decode::<(u64, String)>(&future).unwrap_err();
        assert!(
            err.contains("version 9") && err.contains("newer release"),
            "{err}"
        );
        let mut old = bytes.clone();
        old[0] = 1;
        let err = decode::<(u64, String)>(&old).unwrap_err();
        assert!(err.contains("version 1 where version 7"), "{err}");
        assert_eq!(
            decode_version::<(u64, String)>(1, &old).unwrap(),
            (7, "x".into())
        );
        assert!(decode::<u64>(&[]).is_err());
        assert_eq!(key_index(&index_key(42)).unwrap(), 42);
    }
}
