//! Whole-file checksum verification of a handle that reads a file from 0 to EOF.
//!
//! Reads arrive slightly out of order (the kernel keeps several in flight), so the verifier
//! hashes a contiguous prefix: data it has not hashed yet is taken from each read, and a gap
//! (a later read served first) is filled from the block cache, where the earlier bytes are
//! anyway. When the prefix reaches the file size the digest is compared; the read that
//! completes it fails on mismatch.

use crate::provider::smh::Crc64;
use crate::source::Checksum;
use md5::Digest as _;

enum State {
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
    Crc64(Box<Crc64>),
}

/// Running hash of a contiguous prefix of one file version.
pub struct Verifier {
    want: Checksum,
    state: State,
    /// Bytes hashed so far (`[0, pos)`).
    pub pos: u64,
    pub size: u64,
}

/// Outcome once the prefix reaches EOF.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pending,
    Match,
    Mismatch { expected: String, actual: String },
}

impl Verifier {
    pub fn new(want: Checksum, size: u64) -> Verifier {
        let state = match want {
            Checksum::Sha1(_) => State::Sha1(sha1::Sha1::new()),
            Checksum::Md5(_) => State::Md5(md5::Md5::new()),
            Checksum::Crc64Xz(_) => State::Crc64(Box::default()),
        };
        Verifier {
            want,
            state,
            pos: 0,
            size,
        }
    }

    /// Feeds `data`, which holds bytes `[offset, offset + data.len())`. Bytes before `pos` are
    /// skipped; `offset` must not be beyond `pos` (fill the gap first).
    pub fn feed(&mut self, offset: u64, data: &[u8]) -> Verdict {
        debug_assert!(offset <= self.pos);
        let end = offset + data.len() as u64;
        if end > self.pos {
            let fresh = &data[(self.pos - offset) as usize..];
            match &mut self.state {
                State::Sha1(h) => h.update(fresh),
                State::Md5(h) => h.update(fresh),
                State::Crc64(h) => h.write(fresh),
            }
            self.pos = end;
        }
        if self.pos < self.size {
            return Verdict::Pending;
        }
        let state = std::mem::replace(&mut self.state, State::Crc64(Box::default()));
        let actual = match state {
            State::Sha1(h) => Checksum::Sha1(h.finalize().into()),
            State::Md5(h) => Checksum::Md5(h.finalize().into()),
            State::Crc64(h) => Checksum::Crc64Xz(h.sum64()),
        };
        if actual == self.want {
            Verdict::Match
        } else {
            Verdict::Mismatch {
                expected: self.want.display(),
                actual: actual.display(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_of_abc_in_pieces_matches() {
        let want = Checksum::sha1_hex("a9993e364706816aba3e25717850c26c9cd0d89d").unwrap();
        let mut v = Verifier::new(want, 3);
        assert_eq!(v.feed(0, b"a"), Verdict::Pending);
        assert_eq!(v.feed(0, b"ab"), Verdict::Pending, "overlap is skipped");
        assert_eq!(v.feed(2, b"c"), Verdict::Match);
    }

    #[test]
    fn crc64_xz_check_value() {
        // CRC-64/XZ check value for "123456789".
        let mut v = Verifier::new(Checksum::Crc64Xz(0x995dc9bbdf1939fa), 9);
        assert_eq!(v.feed(0, b"123456789"), Verdict::Match);
    }

    #[test]
    fn md5_mismatch_is_reported() {
        let want = Checksum::md5_hex("900150983cd24fb0d6963f7d28e17f72").unwrap(); // md5("abc")
        let mut v = Verifier::new(want, 3);
        assert!(matches!(v.feed(0, b"abd"), Verdict::Mismatch { .. }));
    }
}
