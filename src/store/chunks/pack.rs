//! The pack format: one file per hosted file, a 64 KiB slot per chunk (magic, length,
//! SHA-256, body), read back checked against its hash; a freed slot is a hole punched.

use super::*;

pub(super) const PACK_SUFFIX: &str = ".pack";

/// The fileId whose pack has this name.
pub(super) fn pack_name(name: &std::ffi::OsStr) -> Option<FileId> {
    let key = name.to_str()?.strip_suffix(PACK_SUFFIX)?;
    FileId::parse(key).ok()
}

/// Each chunk sits at a fixed place in its file's pack: slot `chunkNo`, 64 KiB from the last
/// (whole blocks, so an emptied slot gives its blocks back), a header then the body.
pub const SLOT: u64 = 65_536;
/// The slot's header: magic, body length (u32 LE), the body's SHA-256. A slot whose body does
/// not match its header (a write cut by a crash) holds no chunk.
pub(super) const MAGIC: &[u8; 4] = b"PSC1";
pub const HEADER: u64 = 40;
pub(super) const MAX_BODY: u64 = SLOT - HEADER;

pub(super) fn slot_offset(chunk_no: ChunkNo) -> u64 {
    u64::from(chunk_no.0) * SLOT
}

/// Writes a chunk's header and body into its slot (not synced).
pub(super) fn write_slot(pack: &File, chunk_no: ChunkNo, body: &[u8]) -> io::Result<String> {
    if body.len() as u64 > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a chunk longer than a slot",
        ));
    }
    let hash: [u8; 32] = Sha256::digest(body).into();
    let mut slot = Vec::with_capacity(HEADER as usize + body.len());
    slot.extend_from_slice(MAGIC);
    slot.extend_from_slice(&(body.len() as u32).to_le_bytes());
    slot.extend_from_slice(&hash);
    slot.extend_from_slice(body);
    pack.write_all_at(&slot, slot_offset(chunk_no))?;
    Ok(crate::protocol::hex(&hash))
}

/// What a slot holds.
pub(super) enum Slot {
    /// A whole chunk: its body matches the header's SHA-256.
    Chunk { body: Vec<u8>, hash: [u8; 32] },
    /// Bytes that are not a whole chunk (a write cut by a crash).
    Torn,
}

/// Reads a slot; `Torn` when it holds no whole chunk, NotFound past the end.
pub(super) fn read_slot(pack: &File, chunk_no: ChunkNo) -> io::Result<Slot> {
    let Some((len, hash)) = read_header(pack, chunk_no)? else {
        return Ok(Slot::Torn);
    };
    let mut body = vec![0; len as usize];
    if read_at_most(pack, &mut body, slot_offset(chunk_no) + HEADER)? < body.len()
        || Sha256::digest(&body)[..] != hash
    {
        return Ok(Slot::Torn);
    }
    Ok(Slot::Chunk { body, hash })
}

/// Reads up to `buf.len()` bytes at `offset`; how many there were.
pub(super) fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Every slot of a pack that holds data (holes skipped), with the body length its header
/// gives (None: no whole header).
pub(super) fn slot_headers(pack: &File) -> io::Result<Vec<(ChunkNo, Option<u64>)>> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(data) = next_data(pack, at)? {
        let Some(chunk_no) = u32::try_from(data / SLOT).ok().and_then(ChunkNo::new) else {
            break;
        };
        found.push((chunk_no, read_header(pack, chunk_no)?.map(|(len, _)| len)));
        at = slot_offset(chunk_no) + SLOT;
    }
    Ok(found)
}

/// A slot's header: the body's length and SHA-256 (None: no whole header there).
pub(super) fn read_header(pack: &File, chunk_no: ChunkNo) -> io::Result<Option<(u64, [u8; 32])>> {
    let mut header = [0u8; HEADER as usize];
    let n = read_at_most(pack, &mut header, slot_offset(chunk_no))?;
    if n < header.len() || &header[..4] != MAGIC {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default()) as u64;
    let hash: [u8; 32] = header[8..].try_into().unwrap_or_default();
    Ok((len <= MAX_BODY).then_some((len, hash)))
}

/// Where the next data at or after `offset` is (None: only holes after it).
pub(super) fn next_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    use nix::unistd::{lseek, Whence};
    match lseek(file.as_raw_fd(), offset as i64, Whence::SeekData) {
        Ok(at) => Ok(Some(at as u64)),
        Err(nix::errno::Errno::ENXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Empties a slot: a hole (its blocks given back), or, where the filesystem cannot punch
/// holes, a zeroed header (no chunk there any more).
pub(super) fn punch_slot(pack: &File, chunk_no: ChunkNo) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let at = slot_offset(chunk_no);
    match fallocate(pack.as_raw_fd(), flags, at as i64, SLOT as i64) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => pack.write_all_at(&[0; HEADER as usize], at),
        Err(e) => Err(e.into()),
    }
}

/// The same error again (an `io::Error` cannot be cloned), for each chunk of a batch.
pub(super) fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Sets a mode if it is not already the one (a chmod dirties the inode).
pub(super) fn make_private(path: &Path, mode: u32) -> io::Result<()> {
    if fs::symlink_metadata(path)?.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// How many more chunks the filesystem has inodes for while keeping enough free: 1% of them and at
/// least 1000 (a flood of empty chunks must not use up the inodes the system needs).
/// Filesystems without an inode limit report 0 inodes.
pub(super) fn inodes_to_spare(total: u64, available: u64) -> u64 {
    if total == 0 {
        return u64::MAX;
    }
    let margin = (total / 100).max(1000).min(total / 2);
    available.saturating_sub(margin)
}
