//! The on-disk format of one cached block: a versioned, checksummed header, then the payload.
//!
//! ```text
//! offset  size  field (integers little-endian)
//!      0     8  magic "FETCHFSB"
//!      8     4  format version (FORMAT_VERSION)
//!     12     4  header length H in bytes, from offset 0 up to and including the header CRC
//!     16     8  block size of the cache that wrote it
//!     24     8  block index
//!     32     8  payload length
//!     40     4  CRC32C of the payload
//!     44     4  length of the source name    (S)
//!     48     4  length of the remote handle  (R)
//!     52     4  length of the validator      (V)
//!     56     S  source name   (UTF-8)
//!   56+S     R  remote handle (UTF-8)
//! 56+S+R     V  validator     (UTF-8)
//!    H-4     4  CRC32C of bytes [0, H-4)
//!      H     …  payload
//! ```
//!
//! The header carries the whole key, so a hash collision in the file name, a file renamed by
//! hand or a block written with another block size reads as a miss, never as another block's
//! bytes. The header has its own CRC so that a flipped length field is caught before it is
//! used; the payload CRC catches torn or rotted data. CRC32C runs at tens of GB/s with
//! carry-less multiplication (`crc-fast`), so verifying every read costs little next to the
//! copy out of the page cache.
//!
//! Any change to this layout must bump [`FORMAT_VERSION`]; `tests/disk_cache.rs` pins the bytes
//! of a fixed block per version so an unintended change fails the build.

use bytes::{Buf, Bytes, BytesMut};

use crate::cache::BlockKey;

/// CRC-32C (Castagnoli) of `data`, by `crc-fast` (the crate that also computes SMH's CRC-64):
/// ~50 GB/s on the bench machine with VPCLMULQDQ, against ~25 for the `crc32c` crate's SSE4.2
/// instruction. Every put and every hit checksums a whole block.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// CRC-32C of the concatenation of `parts`.
fn crc32c_parts(parts: &[&[u8]]) -> u32 {
    match parts {
        [one] => crc32c(one),
        _ => {
            let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
            for p in parts {
                d.update(p);
            }
            d.finalize() as u32
        }
    }
}

/// First bytes of every block file.
pub const MAGIC: [u8; 8] = *b"FETCHFSB";
/// Version of the layout above.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the header before the key strings.
const FIXED_LEN: usize = 56;
/// Bytes of the header CRC at its end.
const CRC_LEN: usize = 4;
/// Longest key field we store (a remote handle is a path or an ID; 64 KiB is far beyond either).
/// Bounding it keeps the header length in a u32 and a corrupt length from meaning anything huge.
pub const MAX_FIELD_LEN: usize = 64 * 1024;

/// Why a block file was not accepted. Every variant is a cache miss.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the file is shorter than its header")]
    Truncated,
    #[error("bad magic")]
    BadMagic,
    #[error("format version {0}, expected {FORMAT_VERSION}")]
    Version(u32),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("header length or field lengths are inconsistent")]
    HeaderLength,
    #[error("the header names another block")]
    KeyMismatch,
    #[error("payload length {found} does not match the header's {expected}")]
    PayloadLength { expected: u64, found: u64 },
    #[error("payload checksum mismatch")]
    PayloadChecksum,
    #[error("a key field is longer than {MAX_FIELD_LEN} bytes")]
    FieldTooLong,
}

/// Length of the header that [`encode_header`] writes for `key`.
pub fn header_len(key: &BlockKey) -> usize {
    FIXED_LEN + key.source.len() + key.remote.len() + key.validator.len() + CRC_LEN
}

/// The header for `payload` stored under `key` by a cache cutting files into `block_size` blocks.
pub fn encode_header(key: &BlockKey, block_size: u64, payload: &[u8]) -> Result<Vec<u8>, FormatError> {
    encode_header_parts(key, block_size, &[payload])
}

/// [`encode_header`] for a payload given in pieces (a block assembled from a stream's replies):
/// the header is the same as for the pieces joined.
pub fn encode_header_parts(key: &BlockKey, block_size: u64, payload: &[&[u8]]) -> Result<Vec<u8>, FormatError> {
    let fields = [key.source.as_bytes(), key.remote.as_bytes(), key.validator.as_bytes()];
    if fields.iter().any(|f| f.len() > MAX_FIELD_LEN) {
        return Err(FormatError::FieldTooLong);
    }
    let len = header_len(key);
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&block_size.to_le_bytes());
    h.extend_from_slice(&key.index.to_le_bytes());
    let payload_len: usize = payload.iter().map(|p| p.len()).sum();
    h.extend_from_slice(&(payload_len as u64).to_le_bytes());
    h.extend_from_slice(&crc32c_parts(payload).to_le_bytes());
    for f in fields {
        h.extend_from_slice(&(f.len() as u32).to_le_bytes());
    }
    for f in fields {
        h.extend_from_slice(f);
    }
    let crc = crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(h.len(), len);
    Ok(h)
}

/// Header and payload as one buffer (what a block file holds).
pub fn encode(key: &BlockKey, block_size: u64, payload: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut out = encode_header(key, block_size, payload)?;
    out.extend_from_slice(payload);
    Ok(out)
}

/// Checks a whole block file against the key and block size it was looked up with and returns
/// its payload, sharing `file`'s allocation (no copy).
pub fn decode(mut file: BytesMut, key: &BlockKey, block_size: u64) -> Result<Bytes, FormatError> {
    let payload_at = check(&file, key, block_size)?;
    file.advance(payload_at);
    Ok(file.freeze())
}

/// Checks a whole block file (header and payload) against `key` like [`decode`], without
/// taking it; returns where its payload starts.
pub fn check(file: &[u8], key: &BlockKey, block_size: u64) -> Result<usize, FormatError> {
    if file.len() < FIXED_LEN + CRC_LEN {
        return Err(FormatError::Truncated);
    }
    if file[0..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32_at(file, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    let hlen = u32_at(file, 12) as usize;
    let lens = [
        u32_at(file, 44) as usize,
        u32_at(file, 48) as usize,
        u32_at(file, 52) as usize,
    ];
    if lens.iter().any(|&l| l > MAX_FIELD_LEN) || hlen != FIXED_LEN + lens.iter().sum::<usize>() + CRC_LEN {
        return Err(FormatError::HeaderLength);
    }
    if file.len() < hlen {
        return Err(FormatError::Truncated);
    }
    if crc32c(&file[..hlen - CRC_LEN]) != u32_at(file, hlen - CRC_LEN) {
        return Err(FormatError::HeaderChecksum);
    }
    let s = FIXED_LEN;
    let r = s + lens[0];
    let v = r + lens[1];
    let same_key = u64_at(file, 16) == block_size
        && u64_at(file, 24) == key.index
        && file[s..r] == *key.source.as_bytes()
        && file[r..v] == *key.remote.as_bytes()
        && file[v..v + lens[2]] == *key.validator.as_bytes();
    if !same_key {
        return Err(FormatError::KeyMismatch);
    }
    let expected = u64_at(file, 32);
    let found = (file.len() - hlen) as u64;
    if expected != found || found > block_size {
        return Err(FormatError::PayloadLength { expected, found });
    }
    let crc = u32_at(file, 40);
    if crc32c(&file[hlen..]) != crc {
        return Err(FormatError::PayloadChecksum);
    }
    Ok(hlen)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BlockKey {
        BlockKey::new(
            "b2",
            "4_z27c88f1d182b150646ff0b16_f1004ba650fe24e6b_d20180606_m000000_c001_v0001106_t0001",
            "etag-1",
            7,
        )
    }

    #[test]
    fn a_block_round_trips_and_shares_the_buffer() {
        let payload = vec![0xA5u8; 1000];
        let enc = encode(&key(), 4096, &payload).unwrap();
        assert_eq!(enc.len(), header_len(&key()) + payload.len());
        let out = decode(BytesMut::from(&enc[..]), &key(), 4096).unwrap();
        assert_eq!(&out[..], &payload[..]);
    }

    #[test]
    fn an_empty_payload_is_a_valid_block() {
        let enc = encode(&key(), 4096, b"").unwrap();
        assert_eq!(decode(BytesMut::from(&enc[..]), &key(), 4096).unwrap().len(), 0);
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let payload: Vec<u8> = (0..64u8).collect();
        let enc = encode(&key(), 4096, &payload).unwrap();
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x01;
            assert!(
                decode(BytesMut::from(&bad[..]), &key(), 4096).is_err(),
                "flip at byte {i} accepted"
            );
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let enc = encode(&key(), 4096, &[7u8; 100]).unwrap();
        for len in 0..enc.len() {
            assert!(
                decode(BytesMut::from(&enc[..len]), &key(), 4096).is_err(),
                "truncation to {len} accepted"
            );
        }
    }

    #[test]
    fn another_key_or_block_size_is_a_mismatch() {
        let enc = encode(&key(), 4096, b"abc").unwrap();
        let dec = |k: &BlockKey, bs| decode(BytesMut::from(&enc[..]), k, bs);
        let mut other = key();
        other.index = 8;
        assert_eq!(dec(&other, 4096), Err(FormatError::KeyMismatch));
        let mut other = key();
        other.validator = "etag-2".into();
        assert_eq!(dec(&other, 4096), Err(FormatError::KeyMismatch));
        assert_eq!(dec(&key(), 8192), Err(FormatError::KeyMismatch));
        // Same total length, different split between fields: still another key.
        let shifted = BlockKey::new("b2x", &key().remote[1..], "etag-1", 7);
        assert_eq!(
            decode(
                BytesMut::from(&encode(&shifted, 4096, b"abc").unwrap()[..]),
                &key(),
                4096
            )
            .unwrap_err(),
            FormatError::KeyMismatch
        );
    }

    #[test]
    fn an_oversized_field_is_refused() {
        let k = BlockKey::new("s", "r".repeat(MAX_FIELD_LEN + 1), "v", 0);
        assert_eq!(encode_header(&k, 4096, b""), Err(FormatError::FieldTooLong));
    }
}
