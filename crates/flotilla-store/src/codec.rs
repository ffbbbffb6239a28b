//! Versioned encoding of everything this crate persists: one version byte, then bincode.
//! Decoding refuses an unknown version instead of misreading it; a future format adds a
//! migration arm here.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Current on-disk format version of every value written by this crate.
pub const FORMAT_VERSION: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serialize_into(&mut out, value).expect("bincode serialization into a Vec cannot fail");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => bincode::deserialize(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unsupported format version {v}")),
        None => Err("empty value".into()),
    }
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
    fn round_trip_and_refuse_unknown_version() {
        let bytes = encode(&(7u64, "x".to_string()));
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), (7, "x".into()));
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(decode::<(u64, String)>(&future)
            .unwrap_err()
            .contains("version 9"));
        assert!(decode::<u64>(&[]).is_err());
        assert_eq!(key_index(&index_key(42)).unwrap(), 42);
    }
}
