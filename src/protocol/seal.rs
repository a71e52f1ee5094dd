//! Encrypted chunks (SPEC §3 "Encrypted chunks"): what the peers that host a file's chunks, and
//! every host on the LAN, see of it is ciphertext. The file is cut into plaintext pieces of
//! `PIECE` bytes; each chunk is XChaCha20-Poly1305 of its piece (ciphertext, then the 16-byte
//! tag) under the file's key, HKDF-SHA256(master key, salt = the fileId's 32 bytes, info =
//! "peerstash chunk key v1"), with nonce = chunkNo as 24 bytes little-endian and associated data
//! = the fileId's text || chunkNo in decimal ASCII. So every chunk but the last is 64000 bytes,
//! as SPEC §1 requires, and a chunk moved to another file or place fails to open.
//!
//! Never two plaintexts under one key and nonce: the key is the fileId's, and the fileId of an
//! encrypted version takes 16 random bytes per backup attempt (`MasterKey::file_id`), so an
//! attempt abandoned (the file changed while it was read) and the next one never share a key,
//! even for the same content. Within one fileId sealing is deterministic: a resend, a resume or
//! a repair reads and seals the piece again, and only a body with the hash the catalog recorded
//! for that chunk before its first PUTCHUNK is ever sent (`Catalog::record_file_chunk`).
//!
//! The fileId of an encrypted file is keyed too (`MasterKey::file_id`): a host that guesses a
//! file's path, size, mtime and content cannot confirm the guess from the fileId.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{ChunkNo, FileId, FileIdentity, CHUNK_SIZE};

/// The Poly1305 tag after each chunk's ciphertext.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk of an encrypted file.
pub const PIECE: usize = CHUNK_SIZE - TAG_LEN;
/// A master key's length: 32 random bytes.
pub const MASTER_KEY_LEN: usize = 32;
/// Random bytes in the fileId of each attempt to back up an encrypted version.
pub const ATTEMPT_LEN: usize = 16;

/// What makes one backup attempt's fileId (and so its key) its own: random, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt(pub [u8; ATTEMPT_LEN]);

const CHUNK_KEY_INFO: &[u8] = b"peerstash chunk key v1";
const FILE_ID_KEY_INFO: &[u8] = b"peerstash fileId key v1";
const SNAPSHOT_KEY_INFO: &[u8] = b"peerstash catalog snapshot key v1";

/// Where a catalog snapshot of the day-based scheme (before numbers, `SnapshotNo::Dated`) sits:
/// the UTC day it was taken, and its place in that day. The first snapshot of a day is its
/// anchor (`n = 0`), so that `peerstash recover` finds the newest day by probing one fileId per
/// day. No longer taken: only found, on the peers of a peer that took them before an upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub day: u32,
    pub n: u16,
}

impl Slot {
    /// Places in a day.
    pub const PER_DAY: u16 = 256;

    /// The day's anchor.
    pub fn anchor(day: u32) -> Slot {
        Slot { day, n: 0 }
    }

    /// A day number as its date (UTC).
    pub fn day_text(day: u32) -> String {
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = i64::from(day) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// A catalog snapshot's name among a peer's snapshots, from which its fileId (and so its key)
/// comes (`MasterKey::snapshot_no_file_id`). `Numbered`: a sequence number kept in the catalog,
/// one more per snapshot and never used twice (one key and nonce never seal two plaintexts), so
/// no clock can stop snapshots or hide them: the wall time is only a label. `Dated`: the
/// day-based scheme of older versions, still found by `recover`. Every numbered snapshot is
/// newer than every dated one (the order of the variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SnapshotNo {
    Dated(Slot),
    Numbered(u64),
}

impl SnapshotNo {
    /// The number of a numbered snapshot; None for a dated one.
    pub fn number(self) -> Option<u64> {
        match self {
            SnapshotNo::Numbered(n) => Some(n),
            SnapshotNo::Dated(_) => None,
        }
    }
}

impl std::fmt::Display for SnapshotNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotNo::Dated(s) => write!(f, "{}:{}", s.day, s.n),
            SnapshotNo::Numbered(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for SnapshotNo {
    type Err = String;

    /// "42" (a numbered snapshot) or "20794:3" (a dated one), as `recover --list` shows them.
    fn from_str(s: &str) -> Result<SnapshotNo, String> {
        let bad =
            || format!("{s:?} is not a snapshot number (`peerstash recover --list` shows them)");
        match s.split_once(':') {
            None => s.parse().map(SnapshotNo::Numbered).map_err(|_| bad()),
            Some((day, n)) => Ok(SnapshotNo::Dated(Slot {
                day: day.parse().map_err(|_| bad())?,
                n: n.parse().map_err(|_| bad())?,
            })),
        }
    }
}

/// How a file is cut into chunks: in clear (SPEC §1), or encrypted (pieces of `PIECE` bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    Plain,
    Sealed,
}

impl Cut {
    pub fn of(encrypted: bool) -> Cut {
        match encrypted {
            true => Cut::Sealed,
            false => Cut::Plain,
        }
    }

    /// Plaintext bytes per chunk.
    pub fn piece(self) -> u64 {
        match self {
            Cut::Plain => CHUNK_SIZE as u64,
            Cut::Sealed => PIECE as u64,
        }
    }

    /// Chunks of a file of `size` bytes: a file whose size is a multiple of the piece (the
    /// empty file too) ends with an empty piece.
    pub fn count(self, size: u64) -> u64 {
        size / self.piece() + 1
    }

    /// Where piece `no` starts in the file.
    pub fn offset(self, no: ChunkNo) -> u64 {
        u64::from(no.0) * self.piece()
    }

    /// The plaintext length of piece `no` of a file of `size` bytes (None: no such chunk).
    pub fn piece_len(self, size: u64, no: u32) -> Option<usize> {
        let count = self.count(size);
        let no = u64::from(no);
        (no < count).then(|| match no + 1 < count {
            true => self.piece() as usize,
            false => (size % self.piece()) as usize,
        })
    }

    /// Chunk `no`'s length on the wire (None: no such chunk).
    pub fn chunk_len(self, size: u64, no: u32) -> Option<usize> {
        let len = self.piece_len(size, no)?;
        Some(match self {
            Cut::Plain => len,
            Cut::Sealed => len + TAG_LEN,
        })
    }
}

/// A peer's master key (`peer.master_key_file`). Never printed.
#[derive(Clone)]
pub struct MasterKey([u8; MASTER_KEY_LEN]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    pub fn new(bytes: [u8; MASTER_KEY_LEN]) -> MasterKey {
        MasterKey(bytes)
    }

    fn derive(&self, salt: &[u8], info: &[u8]) -> [u8; 32] {
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(Some(salt), &self.0)
            .expand(info, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    }

    /// The key of one file's chunks.
    pub fn file_key(&self, file_id: &FileId) -> FileKey {
        let key = self.derive(&file_id.digest(), CHUNK_KEY_INFO);
        FileKey {
            cipher: XChaCha20Poly1305::new(&key.into()),
            file_id: file_id.as_wire().to_string(),
        }
    }

    /// The fileId of an encrypted version: HMAC-SHA256 under a key derived from the master key,
    /// of the same bit string as a clear version's (`FileIdentity::file_id`), then the
    /// attempt's random bytes. Random rather than derived from the content alone: a backup that
    /// found the file changed has already sealed and sent pieces of the changed bytes, and the
    /// next attempt at the same content must not seal other bytes under that key and nonce
    /// (C1 xor C2 = P1 xor P2). A fresh fileId also keeps the holders apart: they never hold
    /// an old attempt's body under a chunk id that a new attempt uses.
    pub fn file_id(&self, identity: &FileIdentity<'_>, attempt: &Attempt) -> FileId {
        let key = self.derive(b"", FILE_ID_KEY_INFO);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(b"peerstash sealed fileId v2\0");
        identity.feed(|bytes| mac.update(bytes));
        mac.update(b"\0");
        mac.update(&attempt.0);
        FileId::from_digest(&mac.finalize().into_bytes().into())
    }

    /// A one-way name of this key (it tells two keys apart, and reveals nothing of either).
    pub fn fingerprint(&self) -> String {
        crate::protocol::hex(&self.derive(b"", b"peerstash key fingerprint v1")[..8])
    }

    /// The fileId of this peer's catalog snapshot in `slot`: from the peer id and the master
    /// key alone, so that a reinstalled peer finds its snapshots again (`peerstash recover`).
    pub fn snapshot_file_id(&self, peer: super::PeerId, slot: Slot) -> FileId {
        let key = self.derive(b"", SNAPSHOT_KEY_INFO);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(b"peerstash catalog snapshot v1\0");
        mac.update(&peer.0.to_be_bytes());
        mac.update(&slot.day.to_be_bytes());
        mac.update(&slot.n.to_be_bytes());
        FileId::from_digest(&mac.finalize().into_bytes().into())
    }

    /// The fileId of this peer's numbered catalog snapshot `no` (a domain of its own: never
    /// the fileId of a dated one).
    pub fn numbered_snapshot_file_id(&self, peer: super::PeerId, no: u64) -> FileId {
        let key = self.derive(b"", SNAPSHOT_KEY_INFO);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(b"peerstash numbered catalog snapshot v2\0");
        mac.update(&peer.0.to_be_bytes());
        mac.update(&no.to_be_bytes());
        FileId::from_digest(&mac.finalize().into_bytes().into())
    }

    /// The fileId of this peer's catalog snapshot `no`, of either scheme.
    pub fn snapshot_no_file_id(&self, peer: super::PeerId, no: SnapshotNo) -> FileId {
        match no {
            SnapshotNo::Dated(slot) => self.snapshot_file_id(peer, slot),
            SnapshotNo::Numbered(n) => self.numbered_snapshot_file_id(peer, n),
        }
    }
}

/// The cipher of one file's chunks.
pub struct FileKey {
    cipher: XChaCha20Poly1305,
    /// The fileId's text as the home peer writes it (the associated data).
    file_id: String,
}

/// A chunk that does not open: tampered with, of another file or place, or under another key.
#[derive(Debug, thiserror::Error)]
#[error("chunk {0} does not decrypt: damaged, or encrypted under another master key")]
pub struct Unsealed(pub u32);

impl FileKey {
    fn nonce(no: ChunkNo) -> XNonce {
        let mut nonce = [0u8; 24];
        nonce[..4].copy_from_slice(&no.0.to_le_bytes());
        nonce.into()
    }

    fn aad(&self, no: ChunkNo) -> Vec<u8> {
        format!("{}{}", self.file_id, no.0).into_bytes()
    }

    /// Chunk `no`'s body: `piece` encrypted, then its tag.
    pub fn seal(&self, no: ChunkNo, piece: &[u8]) -> Vec<u8> {
        let aad = self.aad(no);
        self.cipher
            .encrypt(
                &Self::nonce(no),
                Payload {
                    msg: piece,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any piece shorter than 256 GiB")
    }

    /// The piece in chunk `no`'s body, if the body is that chunk's under this key.
    pub fn open(&self, no: ChunkNo, body: &[u8]) -> Result<Vec<u8>, Unsealed> {
        let aad = self.aad(no);
        self.cipher
            .decrypt(
                &Self::nonce(no),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| Unsealed(no.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(content_hash: &str) -> FileIdentity<'_> {
        FileIdentity {
            peer: crate::protocol::PeerId(1),
            path: b"/w/f",
            size: 5,
            mtime_ns: 7,
            content_hash,
        }
    }

    #[test]
    fn chunks_are_64000_bytes_but_the_last() {
        let cut = Cut::Sealed;
        let size = 2 * PIECE as u64 + 10;
        assert_eq!(cut.count(size), 3);
        assert_eq!(cut.chunk_len(size, 0), Some(CHUNK_SIZE));
        assert_eq!(cut.chunk_len(size, 1), Some(CHUNK_SIZE));
        assert_eq!(cut.chunk_len(size, 2), Some(10 + TAG_LEN));
        assert_eq!(cut.chunk_len(size, 3), None);
        // A multiple of the piece, the empty file too, ends with a 16-byte chunk.
        assert_eq!(cut.count(0), 1);
        assert_eq!(cut.chunk_len(0, 0), Some(TAG_LEN));
        assert_eq!(cut.chunk_len(PIECE as u64, 1), Some(TAG_LEN));
        assert_eq!(cut.offset(ChunkNo(2)), 2 * PIECE as u64);
        assert_eq!(Cut::Plain.chunk_len(64_000, 1), Some(0));
        assert_eq!(Cut::Plain.count(128_001), 3);
    }

    const ONE: Attempt = Attempt([1; ATTEMPT_LEN]);

    #[test]
    fn a_sealed_chunk_opens_only_as_itself_under_its_key() {
        let master = MasterKey::new([9; 32]);
        let id = master.file_id(&identity("abc"), &ONE);
        let key = master.file_key(&id);
        let piece = vec![b'x'; PIECE];
        let body = key.seal(ChunkNo(3), &piece);
        assert_eq!(body.len(), CHUNK_SIZE);
        assert!(!body.windows(32).any(|w| w == &piece[..32]), "no plaintext");
        assert_eq!(key.seal(ChunkNo(3), &piece), body, "deterministic");
        assert_eq!(key.open(ChunkNo(3), &body).unwrap(), piece);
        // Another place, another file, another master key, a flipped byte: refused.
        assert!(key.open(ChunkNo(4), &body).is_err());
        let other = master.file_id(&identity("abd"), &ONE);
        assert!(master.file_key(&other).open(ChunkNo(3), &body).is_err());
        let stranger = MasterKey::new([8; 32]).file_key(&id);
        assert!(stranger.open(ChunkNo(3), &body).is_err());
        let mut flipped = body.clone();
        flipped[100] ^= 1;
        assert!(key.open(ChunkNo(3), &flipped).is_err());
    }

    #[test]
    fn an_encrypted_files_id_depends_on_the_master_key() {
        let a = MasterKey::new([1; 32]).file_id(&identity("abc"), &ONE);
        let b = MasterKey::new([2; 32]).file_id(&identity("abc"), &ONE);
        assert_ne!(a, b);
        assert_ne!(a, identity("abc").file_id(), "not the clear version's");
        assert_eq!(a, MasterKey::new([1; 32]).file_id(&identity("abc"), &ONE));
    }

    /// Issue 23, case 6: an attempt sealed the last piece as it was while being rewritten,
    /// and was abandoned; the next attempt, at the same content (the same identity), seals the
    /// piece as it is again. Under one key and nonce the two bodies would give away
    /// C1 xor C2 = P1 xor P2; each attempt's own fileId gives each its own key.
    #[test]
    fn an_abandoned_and_a_repeated_attempt_never_share_a_key() {
        let master = MasterKey::new([5; 32]);
        let same = identity("abc");
        let (first, again) = (Attempt([1; ATTEMPT_LEN]), Attempt([2; ATTEMPT_LEN]));
        let (id1, id2) = (master.file_id(&same, &first), master.file_id(&same, &again));
        assert_ne!(id1, id2, "each attempt its own fileId");
        let no = ChunkNo(625);
        let rewritten = vec![b'B'; 1_000];
        let original = vec![b'A'; 1_000];
        let c1 = master.file_key(&id1).seal(no, &rewritten);
        let c2 = master.file_key(&id2).seal(no, &original);
        let xor = |a: &[u8], b: &[u8]| -> Vec<u8> { a.iter().zip(b).map(|(x, y)| x ^ y).collect() };
        assert_ne!(
            xor(&c1[..1_000], &c2[..1_000]),
            xor(&rewritten, &original),
            "one keystream"
        );
        // Each opens only under its own attempt's key.
        assert_eq!(master.file_key(&id2).open(no, &c2).unwrap(), original);
        assert!(master.file_key(&id2).open(no, &c1).is_err());
    }

    #[test]
    fn days_are_shown_as_dates() {
        assert_eq!(Slot::day_text(0), "1970-01-01");
        assert_eq!(Slot::day_text(20_000), "2024-10-04");
        assert_eq!(Slot::day_text(20_785), "2026-11-28");
    }

    #[test]
    fn each_snapshot_name_has_its_own_file_id_and_reads_back_as_shown() {
        let a = Slot::anchor(20_000);
        let five = Slot { day: 20_000, n: 5 };
        // Each slot, number, peer and key its own fileId.
        let m = MasterKey::new([3; 32]);
        let p = crate::protocol::PeerId(4);
        assert_ne!(m.snapshot_file_id(p, a), m.snapshot_file_id(p, five));
        assert_ne!(
            m.snapshot_file_id(p, a),
            m.snapshot_file_id(crate::protocol::PeerId(5), a)
        );
        assert_ne!(
            m.snapshot_file_id(p, a),
            MasterKey::new([4; 32]).snapshot_file_id(p, a)
        );
        assert_eq!(m.snapshot_file_id(p, a), m.snapshot_file_id(p, a));
        assert_ne!(
            m.numbered_snapshot_file_id(p, 1),
            m.numbered_snapshot_file_id(p, 2)
        );
        // Day 0, place 1 and number 1 are not one name.
        let dated = m.snapshot_no_file_id(p, SnapshotNo::Dated(Slot { day: 0, n: 1 }));
        assert_ne!(dated, m.snapshot_no_file_id(p, SnapshotNo::Numbered(1)));
        // Every numbered snapshot is newer than every dated one.
        assert!(
            SnapshotNo::Numbered(1)
                > SnapshotNo::Dated(Slot {
                    day: u32::MAX,
                    n: 9
                })
        );
        for no in [SnapshotNo::Numbered(42), SnapshotNo::Dated(five)] {
            assert_eq!(no.to_string().parse::<SnapshotNo>(), Ok(no));
        }
        assert!("x".parse::<SnapshotNo>().is_err());
        assert!("1:".parse::<SnapshotNo>().is_err());
    }

    /// Known answer: the chunk key and a sealed chunk's tag, fixed by SPEC §3, so that a change
    /// of derivation, nonce or associated data cannot pass unnoticed (old backups would no
    /// longer open).
    #[test]
    fn the_construction_is_the_one_the_spec_fixes() {
        let file_id = FileId::from_digest(&[0x11; 32]);
        let master = MasterKey::new([0x22; 32]);
        let mut expected_key = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&[0x11; 32]), &[0x22; 32])
            .expand(b"peerstash chunk key v1", &mut expected_key)
            .unwrap();
        let cipher = XChaCha20Poly1305::new(&expected_key.into());
        let mut nonce = [0u8; 24];
        nonce[0] = 5;
        let aad = format!("{}5", "11".repeat(32));
        let expected = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: b"hello",
                    aad: aad.as_bytes(),
                },
            )
            .unwrap();
        assert_eq!(
            master.file_key(&file_id).seal(ChunkNo(5), b"hello"),
            expected
        );
    }
}
