//! Opening files the way a root daemon must when users may race it. A path is walked one
//! component at a time from a handle, each with `O_NOFOLLOW` (a symlink anywhere fails with
//! ELOOP), and what is checked (kind, owner) is checked on the opened handle with `fstat`,
//! never on a path looked up again. Blocking: call from a blocking thread. `Stamp` is what a
//! `stat` of a file tells the daemon, in one form for every caller.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{FileStat, Mode};

/// What a `stat` tells of a file: what shows that it changed (size, mtime, ctime, inode) and
/// what a version records of it (owner, mode). Times in nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    /// The inode change time: every write and every metadata change moves it, and nobody can
    /// set it back (unlike the mtime).
    pub ctime_ns: i64,
    pub inode: u64,
    pub uid: u32,
    pub gid: u32,
    /// The permission bits (`mode & 0o7777`), without the file type.
    pub mode: u32,
    /// How many names (hard links) the file has.
    pub nlink: u64,
}

/// Seconds and nanoseconds as nanoseconds since the epoch.
fn ns(secs: i64, nsec: i64) -> i64 {
    secs * 1_000_000_000 + nsec
}

impl Stamp {
    /// From what `std` returned (`File::metadata`, `symlink_metadata`).
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            nlink: meta.nlink(),
        }
    }

    /// From what `nix` returned (`fstat`, `fstatat`).
    // `stat`'s field types differ by architecture (`st_nlink` is a u32 on aarch64, `time_t` an
    // i32 on 32-bit targets): the conversions are no-ops only here.
    #[allow(clippy::useless_conversion)]
    pub fn of_stat(st: &FileStat) -> Stamp {
        Stamp {
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_ns: ns(i64::from(st.st_mtime), i64::from(st.st_mtime_nsec)),
            ctime_ns: ns(i64::from(st.st_ctime), i64::from(st.st_ctime_nsec)),
            inode: u64::from(st.st_ino),
            uid: st.st_uid,
            gid: st.st_gid,
            mode: u32::from(st.st_mode) & 0o7777,
            nlink: u64::from(st.st_nlink),
        }
    }
}

/// What a path must name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file, opened for reading.
    File,
    /// A folder, opened for reading its entries and opening below it.
    Dir,
    /// Either, opened for reading.
    Any,
    /// Either, opened only to be looked at (`O_PATH`: no device's open is ever run, nothing
    /// can be read through it).
    Probe,
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn open_at(dir: &impl AsRawFd, name: &OsStr, flags: OFlag) -> io::Result<OwnedFd> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let fd = openat(Some(dir.as_raw_fd()), name, flags, Mode::empty()).map_err(|e| match e {
        // What O_NOFOLLOW answers for a symlink (ENOTDIR when a folder was asked for).
        nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symlink or not a folder (symlinks are not followed)",
                name.to_string_lossy()
            ),
        ),
        e => errno(e),
    })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `rel` below the folder `dir` without following any symlink. `rel` is made of plain
/// names only: `..`, `.` and a leading `/` are refused (nothing may climb out of `dir`).
pub fn open_below(dir: &File, rel: &Path, kind: Kind) -> io::Result<File> {
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: only plain names may follow a folder", rel.display()),
                ))
            }
        }
    }
    let Some((last, parents)) = names.split_last() else {
        return check(dir.try_clone()?, kind);
    };
    let mut here: Option<OwnedFd> = None;
    for name in parents {
        let next = match &here {
            Some(fd) => open_at(fd, name, OFlag::O_PATH | OFlag::O_DIRECTORY)?,
            None => open_at(dir, name, OFlag::O_PATH | OFlag::O_DIRECTORY)?,
        };
        here = Some(next);
    }
    // O_NONBLOCK: a FIFO put where a file was must not hang the daemon (no effect on files).
    let flags = match kind {
        Kind::Dir => OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Kind::File | Kind::Any => OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        Kind::Probe => OFlag::O_PATH,
    };
    let fd = match &here {
        Some(fd) => open_at(fd, last, flags)?,
        None => open_at(dir, last, flags)?,
    };
    check(File::from(fd), kind)
}

/// Opens an absolute path without following any symlink on the way.
pub fn open_path(path: &Path, kind: Kind) -> io::Result<File> {
    let rel = path.strip_prefix("/").map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not an absolute path", path.display()),
        )
    })?;
    let root = File::open("/")?;
    open_below(&root, rel, kind)
}

/// Opens `path` below `base`: `base` itself as the admin wrote it (a watched folder's path may
/// contain symlinks of the admin's making), everything below it without following symlinks.
pub fn open_under(base: &Path, path: &Path, kind: Kind) -> io::Result<File> {
    let rel = path.strip_prefix(base).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not below {}", path.display(), base.display()),
        )
    })?;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
        .open(base)?;
    open_below(&dir, rel, kind)
}

fn check(file: File, kind: Kind) -> io::Result<File> {
    let meta = file.metadata()?;
    let ok = match kind {
        Kind::File => meta.is_file(),
        Kind::Dir => meta.is_dir(),
        Kind::Any | Kind::Probe => meta.is_file() || meta.is_dir(),
    };
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or a folder where one was expected",
        ));
    }
    Ok(file)
}

/// Whether two handles name the same file (device and inode).
pub fn same_file(a: &File, b: &File) -> io::Result<bool> {
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// The regular files below the folder `dir`, as paths relative to it, sorted; symlinks and
/// anything else are skipped, subfolders are entered through handles (never by path).
/// `owner`: enter only the subfolders that uid owns (a user's backup stays in the user's tree).
pub fn list_files(dir: &File, owner: Option<u32>) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut todo: Vec<(PathBuf, File)> = vec![(PathBuf::new(), dir.try_clone()?)];
    while let Some((rel, handle)) = todo.pop() {
        // Dir takes its own descriptor: hand it a duplicate.
        let dup = nix::unistd::dup(handle.as_raw_fd()).map_err(errno)?;
        let mut entries = nix::dir::Dir::from_fd(dup).map_err(|e| {
            let _ = nix::unistd::close(dup);
            errno(e)
        })?;
        for entry in entries.iter() {
            let entry = entry.map_err(errno)?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                Some(t) => t,
                None => {
                    let st = nix::sys::stat::fstatat(
                        Some(handle.as_raw_fd()),
                        name,
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(errno)?;
                    match st.st_mode & nix::libc::S_IFMT {
                        nix::libc::S_IFDIR => nix::dir::Type::Directory,
                        nix::libc::S_IFREG => nix::dir::Type::File,
                        _ => continue,
                    }
                }
            };
            match kind {
                nix::dir::Type::File => files.push(rel.join(name)),
                nix::dir::Type::Directory => {
                    match open_at(&handle, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
                        Ok(fd) => {
                            let sub = File::from(fd);
                            if owner.is_none_or(|uid| sub.metadata().is_ok_and(|m| m.uid() == uid))
                            {
                                todo.push((rel.join(name), sub));
                            }
                        }
                        // Replaced by a symlink since it was listed, or gone: skip it.
                        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                _ => {}
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlink_anywhere_on_the_path_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        std::fs::write(base.join("real/f"), b"x").unwrap();
        symlink(base.join("real"), base.join("link")).unwrap();
        symlink(base.join("real/f"), base.join("real/flink")).unwrap();
        assert!(open_path(&base.join("real/f"), Kind::File).is_ok());
        for bad in ["link/f", "real/flink", "link"] {
            let e = open_path(&base.join(bad), Kind::Any).unwrap_err();
            assert!(e.to_string().contains("symlink"), "{bad}: {e}");
        }
        assert!(open_path(&base.join("real"), Kind::File).is_err());
        assert!(open_path(&base.join("real/f"), Kind::Dir).is_err());
        assert!(open_path(Path::new("relative"), Kind::Any).is_err());
        // Looked at, not opened: a device is refused without its open being run.
        let probe = open_path(&base.join("real/f"), Kind::Probe).unwrap();
        assert!(same_file(&probe, &File::open(base.join("real/f")).unwrap()).unwrap());
        assert!(open_path(Path::new("/dev/null"), Kind::Probe).is_err());
        // The admin's own symlink above a watched folder is followed; none below it.
        assert!(open_under(&base.join("link"), &base.join("link/f"), Kind::File).is_ok());
        let e = open_under(&base, &base.join("link/f"), Kind::File).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn a_stamp_reads_the_same_from_std_and_from_nix() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        std::fs::hard_link(&f, d.path().join("g")).unwrap();
        let meta = std::fs::symlink_metadata(&f).unwrap();
        let stamp = Stamp::of(&meta);
        let st = nix::sys::stat::stat(&f).unwrap();
        assert_eq!(Stamp::of_stat(&st), stamp);
        assert_eq!((stamp.size, stamp.nlink, stamp.inode), (5, 2, meta.ino()));
        assert_eq!(
            stamp.mtime_ns,
            meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
        );
        assert_eq!(
            stamp.ctime_ns,
            meta.ctime() * 1_000_000_000 + meta.ctime_nsec()
        );
        assert_eq!(stamp.mode, meta.mode() & 0o7777);
    }

    #[test]
    fn nothing_climbs_out_of_a_folder() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("in")).unwrap();
        std::fs::write(d.path().join("secret"), b"x").unwrap();
        let dir = open_path(&d.path().canonicalize().unwrap().join("in"), Kind::Dir).unwrap();
        assert!(open_below(&dir, Path::new("../secret"), Kind::File).is_err());
        assert!(open_below(&dir, Path::new("/etc/passwd"), Kind::File).is_err());
    }

    #[test]
    fn listing_skips_symlinks_and_keeps_names_as_bytes() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        std::fs::write(base.join("a/b/f"), b"x").unwrap();
        let odd = OsStr::from_bytes(b"caf\xe9");
        std::fs::write(base.join(odd), b"y").unwrap();
        symlink("/etc/passwd", base.join("a/p")).unwrap();
        symlink(base.join("a"), base.join("loop")).unwrap();
        let dir = open_path(&base, Kind::Dir).unwrap();
        let files = list_files(&dir, None).unwrap();
        assert_eq!(
            list_files(&dir, Some(54321)).unwrap(),
            vec![PathBuf::from(odd)]
        );
        assert_eq!(files, vec![PathBuf::from("a/b/f"), PathBuf::from(odd)]);
        let f = open_below(&dir, &files[1], Kind::File).unwrap();
        assert!(same_file(&f, &File::open(base.join(odd)).unwrap()).unwrap());
    }
}
