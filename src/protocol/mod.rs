//! The protocol's data: messages and their codec, and how a file becomes a fileId and chunks.
//! Pure: no I/O.
pub mod auth;
pub mod message;
pub mod seal;

use sha2::{Digest, Sha256};

pub use message::{
    Channel, ChunkId, ChunkNo, FileId, Message, MessageKind, PeerId, Rd, Version, CHUNK_SIZE,
};

/// Number of chunks of a file in clear: a file whose size is a multiple of CHUNK_SIZE (the empty
/// file too) ends with a 0-byte chunk (`seal::Cut::Plain`).
pub fn chunk_count(size: u64) -> u64 {
    seal::Cut::Plain.count(size)
}

/// Lower-case hex of a SHA-256 digest.
pub fn hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// What makes a version of a file unique: its home peer, its path, and its size, mtime and
/// content. Two peers' identical files differ by peer id; a modified file by size/mtime/content.
pub struct FileIdentity<'a> {
    pub peer: PeerId,
    /// The path's bytes (a name need not be UTF-8).
    pub path: &'a [u8],
    pub size: u64,
    pub mtime_ns: i64,
    pub content_hash: &'a str,
}

impl FileIdentity<'_> {
    /// The fileId of a version in clear (`seal::MasterKey::file_id` for an encrypted one).
    pub fn file_id(&self) -> FileId {
        let mut h = Sha256::new();
        h.update(b"peerstash fileId v1\0");
        self.feed(|bytes| h.update(bytes));
        FileId::from_digest(&h.finalize().into())
    }

    /// The identity's bit string, in pieces. NUL separators: a path cannot contain NUL, so no
    /// two identities share a bit string.
    fn feed(&self, mut update: impl FnMut(&[u8])) {
        update(self.peer.0.to_string().as_bytes());
        update(b"\0");
        update(self.path);
        update(b"\0");
        update(self.size.to_string().as_bytes());
        update(b"\0");
        update(self.mtime_ns.to_string().as_bytes());
        update(b"\0");
        update(self.content_hash.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(peer: u32, path: &str, mtime_ns: i64) -> FileId {
        FileIdentity {
            peer: PeerId(peer),
            path: path.as_bytes(),
            size: 5,
            mtime_ns,
            content_hash: "abc",
        }
        .file_id()
    }

    #[test]
    fn file_ids_differ_by_peer_path_and_version() {
        let a = ident(1, "/a", 1);
        assert_eq!(a, ident(1, "/a", 1));
        assert_ne!(a, ident(2, "/a", 1));
        assert_ne!(a, ident(1, "/b", 1));
        assert_ne!(a, ident(1, "/a", 2));
        assert_eq!(a.as_wire(), a.as_wire().to_lowercase());
    }

    #[test]
    fn chunk_counts() {
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(64_000), 2);
        assert_eq!(chunk_count(128_000), 3);
        assert_eq!(chunk_count(1_000_000), 16);
    }
}
