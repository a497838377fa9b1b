//! The records kept in the redb data file (vote, purge point, snapshot; the Raft log of older
//! versions): `[format version u32 LE][CRC-32 of the payload u32 LE][payload: bincode]`. The
//! version comes first, so a record of another format is reported as such rather than as damage;
//! the CRC reports a damaged record as damaged instead of reading it as wrong data. A record
//! without a version (written before there was one: `[CRC-32][payload]`) is version 0, refused.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// The record format this shoal writes and reads (2: snapshots carry the auth store; 3: the
/// alarms and the key rows' size).
pub const FORMAT_VERSION: u32 = 3;
const VERSION_BYTES: usize = 4;
const CRC_BYTES: usize = 4;

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// `payload` as a record of `version` (tests write other versions).
pub(super) fn seal_as(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut sealed = Vec::with_capacity(VERSION_BYTES + CRC_BYTES + payload.len());
    sealed.extend_from_slice(&version.to_le_bytes());
    sealed.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    sealed.extend_from_slice(payload);
    sealed
}

/// Whether `sealed` is a record of the format before versions: `[CRC-32][payload]`.
fn is_unversioned(sealed: &[u8]) -> bool {
    sealed.len() >= CRC_BYTES && crc32fast::hash(&sealed[CRC_BYTES..]) == le_u32(sealed)
}

/// The payload of a record of `file`; `what` names the record in a damage report.
pub fn unseal<'a>(sealed: &'a [u8], file: &Path, what: &str) -> Result<&'a [u8], StoreError> {
    if sealed.len() < VERSION_BYTES + CRC_BYTES {
        return Err(StoreError::Damaged(format!("{what} is truncated")));
    }
    let (version, rest) = sealed.split_at(VERSION_BYTES);
    let version = le_u32(version);
    if version != FORMAT_VERSION {
        return Err(StoreError::UnknownFormat {
            path: file.display().to_string(),
            found: if is_unversioned(sealed) { 0 } else { version },
            expected: FORMAT_VERSION,
        });
    }
    let (crc, payload) = rest.split_at(CRC_BYTES);
    if crc32fast::hash(payload) != le_u32(crc) {
        return Err(StoreError::Damaged(format!("{what} fails its checksum")));
    }
    Ok(payload)
}

pub fn decode<T: for<'de> Deserialize<'de>>(
    sealed: &[u8],
    file: &Path,
    what: &str,
) -> Result<T, StoreError> {
    Ok(bincode::deserialize(unseal(sealed, file, what)?)?)
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(seal_as(FORMAT_VERSION, &bincode::serialize(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/data/shoal-kv.redb";

    #[test]
    fn a_record_reads_back() {
        let sealed = encode(&(7u64, "vote".to_string())).expect("encode");
        let value: (u64, String) = decode(&sealed, Path::new(FILE), "vote").expect("decode");
        assert_eq!(value, (7, "vote".to_string()));
    }

    #[test]
    fn a_record_of_another_version_is_refused() {
        let sealed = seal_as(FORMAT_VERSION + 1, b"payload");
        let error = unseal(&sealed, Path::new(FILE), "vote").expect_err("must fail");
        assert_eq!(
            error.to_string(),
            format!(
                "data file {FILE} has format version {}, this shoal reads {FORMAT_VERSION}",
                FORMAT_VERSION + 1
            )
        );
    }

    #[test]
    fn a_record_without_a_version_is_version_0() {
        let payload = b"written before records had a version";
        let mut sealed = crc32fast::hash(payload).to_le_bytes().to_vec();
        sealed.extend_from_slice(payload);
        let error = unseal(&sealed, Path::new(FILE), "vote").expect_err("must fail");
        assert_eq!(
            error.to_string(),
            format!("data file {FILE} has format version 0, this shoal reads {FORMAT_VERSION}")
        );
    }

    #[test]
    fn a_damaged_record_fails_its_checksum() {
        let mut sealed = encode(&42u64).expect("encode");
        *sealed.last_mut().expect("byte") ^= 1;
        let error = unseal(&sealed, Path::new(FILE), "record \"vote\"").expect_err("must fail");
        assert_eq!(
            error.to_string(),
            "data file is damaged: record \"vote\" fails its checksum"
        );
    }
}
