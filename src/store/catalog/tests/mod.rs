//! Unit tests of the catalog, by table.
use super::*;

mod files;
mod hosted;
mod overview;
mod peers;
mod rules;
pub(in crate::store) mod schema;

pub(super) fn fid(c: char) -> FileId {
    FileId::parse(&c.to_string().repeat(64)).unwrap()
}

pub(in crate::store) fn file(c: char, path: &str) -> FileRow {
    FileRow {
        file_id: fid(c),
        path: PathBuf::from(path),
        version: 0,
        size: 10,
        mtime_ns: 1,
        mode: 0o644,
        content_hash: "h".into(),
        desired_rd: 2,
        complete: false,
        inode: 0,
        uid: 0,
        gid: 0,
        deleted_at: None,
        ctime_ns: 0,
        encrypted: false,
        key_fp: None,
        completed_ms: None,
        random: false,
    }
}

pub(in crate::store) fn hosted(c: char, chunk_no: u32, size: u64, sender: u32) -> HostedRow {
    HostedRow {
        file_id: fid(c),
        chunk_no: ChunkNo(chunk_no),
        size,
        hash: "h".into(),
        desired_rd: 2,
        sender: PeerId(sender),
    }
}
