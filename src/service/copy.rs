//! A consistent copy of a file that is never quiet (its folder's `max_delay` ran out): content
//! the file really had, in an unnamed private file of the state folder (`O_TMPFILE`: no name,
//! so no link to follow, and nothing left behind by a crash), for a backup to read at leisure.
//! Blocking: run it away from the runtime.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Reads of the whole file before giving up on two that agree.
pub const TRIES: u32 = 3;
/// Bytes read at a time (the copy holds no more than this in memory).
const BUF: usize = 64 * 1024;

/// How the copy was taken, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// A reflink (`FICLONE`): the filesystem shares the file's blocks as they are at one
    /// instant. Needs a filesystem that has them (btrfs, XFS) and the state folder on it.
    Reflink,
    /// Read twice, and both reads agreed byte for byte with the same size.
    ReadTwice,
    /// Append-only: no two reads agreed, but the last one is, byte for byte, the start of the
    /// file read again after it (the file only grew): that prefix.
    Prefix,
}

impl Method {
    pub fn word(self) -> &'static str {
        match self {
            Method::Reflink => "a reflink",
            Method::ReadTwice => "two reads that agreed",
            Method::Prefix => "the stable prefix of an append-only file",
        }
    }
}

/// A copy of `src` in the folder `state_dir`, with `src`'s mode, owner and modification time (the
/// version records them), and how it was taken; None if no read was consistent (the file is
/// rewritten in place faster than it can be read).
pub fn consistent_copy(src: &File, state_dir: &Path) -> io::Result<Option<(File, Method)>> {
    let meta = src.metadata()?;
    // The copy shares the state folder's disk with the catalog: never past the store's margin.
    let st = nix::sys::statvfs::statvfs(state_dir)?;
    let room = crate::store::chunks::free_beyond_margin(&st);
    if meta.len() > room {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "no room in {} for a consistent copy of this never-quiet file ({} bytes, {room} free beyond the catalog's margin): free space there, or let the file be quiet for its folder's `quiet`",
                state_dir.display(),
                meta.len()
            ),
        ));
    }
    let copy = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_TMPFILE)
        .open(state_dir)?;
    let method = match reflink(src, &copy) {
        Ok(()) => Some(Method::Reflink),
        Err(_) => read_copy(src, &copy)?,
    };
    let Some(method) = method else {
        return Ok(None);
    };
    use nix::sys::stat::{fchmod, futimens, Mode};
    use nix::sys::time::TimeSpec;
    let fd = copy.as_raw_fd();
    fchmod(fd, Mode::from_bits_truncate(meta.mode() & 0o7777))?;
    // The owner as recorded; a daemon not run as root cannot give it away (its own files only).
    if nix::unistd::geteuid().is_root() {
        nix::unistd::fchown(
            fd,
            Some(nix::unistd::Uid::from_raw(meta.uid())),
            Some(nix::unistd::Gid::from_raw(meta.gid())),
        )?;
    }
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    futimens(fd, &mtime, &mtime)?;
    Ok(Some((copy, method)))
}

fn reflink(src: &File, copy: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open
    // for the duration of the call (borrowed).
    let r = unsafe { nix::libc::ioctl(copy.as_raw_fd(), nix::libc::FICLONE, src.as_raw_fd()) };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Copies `src` into `copy` up to `TRIES` times until a second read agrees (`ReadTwice`); else
/// the last copy if the file only grew after it (`Prefix`).
fn read_copy(src: &File, copy: &File) -> io::Result<Option<Method>> {
    let mut grew = false;
    for _ in 0..TRIES {
        copy.set_len(0)?;
        let len = src.metadata()?.len();
        let Some(copied) = copy_range(src, copy, len)? else {
            continue; // shorter than it was: truncated meanwhile
        };
        let same = same_bytes(src, copy, copied)?;
        let now = src.metadata()?.len();
        match (same, now == copied) {
            (true, true) => return Ok(Some(Method::ReadTwice)),
            (true, false) => grew = now > copied,
            (false, _) => grew = false,
        }
    }
    Ok(grew.then_some(Method::Prefix))
}

/// Copies `len` bytes of `src` into `copy`; None if `src` ends before.
fn copy_range(src: &File, copy: &File, len: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; BUF];
    let mut at = 0u64;
    while at < len {
        let want = (len - at).min(BUF as u64) as usize;
        let n = src.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Ok(None);
        }
        copy.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(Some(at))
}

/// Whether the first `len` bytes of `src`, read again now, are those of `copy`.
fn same_bytes(src: &File, copy: &File, len: u64) -> io::Result<bool> {
    let (mut a, mut b) = (vec![0u8; BUF], vec![0u8; BUF]);
    let mut at = 0u64;
    while at < len {
        let want = (len - at).min(BUF as u64) as usize;
        let n = src.read_at(&mut a[..want], at)?;
        if n == 0 {
            return Ok(false);
        }
        copy.read_exact_at(&mut b[..n], at)?;
        if a[..n] != b[..n] {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_that_would_eat_the_catalogs_margin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let st = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        // Sparse: it costs no blocks, but a copy of it would take more than the disk has.
        let big = dir.path().join("big.log");
        let f = File::create(&big).unwrap();
        f.set_len(free + (1 << 30)).unwrap();
        let src = File::open(&big).unwrap();
        let e = consistent_copy(&src, dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        assert!(e.to_string().contains("no room in"), "{e}");
    }

    fn read_all(f: &File) -> Vec<u8> {
        let mut out = vec![0u8; f.metadata().unwrap().len() as usize];
        f.read_exact_at(&mut out, 0).unwrap();
        out
    }

    #[test]
    fn a_still_file_is_copied_whole_with_its_mode_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let src = File::open(&path).unwrap();
        let (copy, method) = consistent_copy(&src, dir.path()).unwrap().unwrap();
        assert!(matches!(method, Method::Reflink | Method::ReadTwice));
        assert_eq!(read_all(&copy), bytes);
        let (a, b) = (src.metadata().unwrap(), copy.metadata().unwrap());
        assert_eq!(b.mode() & 0o7777, 0o640);
        assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()));
        assert_ne!(a.ino(), b.ino());
        // Unnamed: nothing is left in the state folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn reads_agree_or_the_file_only_grew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"line 1\n").unwrap();
        let src = File::open(&path).unwrap();
        let copy = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_TMPFILE)
            .open(dir.path())
            .unwrap();
        assert_eq!(read_copy(&src, &copy).unwrap(), Some(Method::ReadTwice));
        assert_eq!(read_all(&copy), b"line 1\n");
        // Bytes changed under the copy: the second read disagrees.
        copy.write_all_at(b"X", 0).unwrap();
        assert!(!same_bytes(&src, &copy, 7).unwrap());
        copy.write_all_at(b"l", 0).unwrap();
        assert!(same_bytes(&src, &copy, 7).unwrap());
        // Truncated below what was to be copied: no copy of that length.
        std::fs::write(&path, b"li").unwrap();
        assert_eq!(copy_range(&src, &copy, 7).unwrap(), None);
    }

    #[test]
    fn a_copy_of_a_file_being_appended_is_a_prefix_of_what_it_becomes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"").unwrap();
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                for i in 0..3000u32 {
                    f.write_all(format!("{i:0>1000}\n").as_bytes()).unwrap();
                }
            })
        };
        let src = File::open(&path).unwrap();
        let mut copies = Vec::new();
        while !writer.is_finished() {
            if let Some((copy, _)) = consistent_copy(&src, dir.path()).unwrap() {
                copies.push(read_all(&copy));
            }
        }
        writer.join().unwrap();
        let last = std::fs::read(&path).unwrap();
        for copy in copies {
            assert!(
                last.starts_with(&copy),
                "a copy of {} bytes is no prefix",
                copy.len()
            );
        }
    }
}
