//! Opening files the way a root daemon must when users may race it. A path is walked one
//! component at a time from a handle, each with `O_NOFOLLOW` (a symlink anywhere fails with
//! ELOOP), and what is checked (kind, owner) is checked on the opened handle with `fstat`,
//! never on a path looked up again. Blocking: call from a blocking thread. `Stamp` is what a
//! `stat` of a file tells the daemon, in one form for every caller.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{FileStat, Mode};

mod walk;
pub use walk::*;

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

/// The folders from `base` (a watched folder, opened as the admin wrote it) down to the folder
/// of `path` (below it), each as `fstat` finds it on its own handle, opened from its parent's
/// without following a symlink (a link on the way ends the list there: what is past it is not
/// the watched folder's). Parents first.
pub fn folders_on_the_way(base: &Path, path: &Path) -> io::Result<Vec<(PathBuf, Stamp)>> {
    let rel = path.strip_prefix(base).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not below {}", path.display(), base.display()),
        )
    })?;
    let dir: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
        .open(base)?
        .into();
    let stat = |fd: &OwnedFd| nix::sys::stat::fstat(fd.as_raw_fd()).map_err(errno);
    let mut found = vec![(base.to_path_buf(), Stamp::of_stat(&stat(&dir)?))];
    let mut here = dir;
    let mut at = base.to_path_buf();
    let parents = rel.parent().unwrap_or(Path::new(""));
    for c in parents.components() {
        let Component::Normal(name) = c else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: only plain names may follow a folder", rel.display()),
            ));
        };
        here = match open_at(&here, name, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(_) => break,
        };
        at.push(name);
        found.push((at.clone(), Stamp::of_stat(&stat(&here)?)));
    }
    Ok(found)
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

/// Whether a walk to a place to write follows the symlinks on its way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Never: a symlink anywhere on the way is refused. What root must do: a user who owns a
    /// folder on the way could otherwise point root's write at any folder (`/etc/profile.d`).
    Refuse,
    /// As the kernel does, with the caller's own rights: a user's own command, where the
    /// kernel already refuses what the user may not write.
    Follow,
}

/// Why a folder to write into could not be reached: what was found at the path it names.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("is a symlink: not followed (root never follows a link it did not make); give the real path, or remove the link")]
    Symlink(PathBuf),
    #[error("is not a folder")]
    NotAFolder(PathBuf),
    #[error("only plain names may follow a folder")]
    NotPlain(PathBuf),
    #[error("{1}")]
    Io(PathBuf, io::Error),
}

impl PlaceError {
    /// The path the error is about (shown to the caller, who named it).
    pub fn path(&self) -> &Path {
        match self {
            PlaceError::Symlink(p)
            | PlaceError::NotAFolder(p)
            | PlaceError::NotPlain(p)
            | PlaceError::Io(p, _) => p,
        }
    }
}

/// A folder `Folder::reach_noting` made: its path below the folder it was reached from, and
/// its device and inode numbers (so that one put in its place later is told apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    pub rel: PathBuf,
    pub id: (u64, u64),
}

/// A folder to write into, reached one name at a time from a trusted handle (`/`, or a folder
/// opened once): everything done in it (look, create, rename, remove) is done on this handle,
/// by a single name, so a folder on the way renamed or swapped for a symlink after the walk
/// changes nothing. Blocking: call from a blocking thread.
#[derive(Debug)]
pub struct Folder {
    dir: File,
    path: PathBuf,
}

impl Folder {
    /// `/`.
    pub fn root() -> io::Result<Folder> {
        Folder::open_trusted(Path::new("/"))
    }

    /// `path` (absolute) opened as it is written, symlinks of its own followed: only for a
    /// path root trusts as a whole (a watched folder of the config, as the daemon reads it).
    pub fn open_trusted(path: &Path) -> io::Result<Folder> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
            .open(path)?;
        Ok(Folder {
            dir,
            path: path.to_path_buf(),
        })
    }

    /// The path this folder was reached by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reaches `rel` (plain names only) below this folder, one name at a time, each opened from
    /// its parent's handle with `O_DIRECTORY` (and `O_NOFOLLOW` under `Links::Refuse`); a
    /// missing folder is made (`mkdirat`, mode 0755 less the umask, owned by the caller) and
    /// then opened the same way, so a symlink put in its place in between is refused too.
    /// At most two descriptors are open at once, whatever the depth.
    pub fn reach(&self, rel: &Path, links: Links) -> Result<Folder, PlaceError> {
        self.reach_noting(rel, links, &mut Vec::new())
    }

    /// `reach`, adding to `made` each folder it made (parents first).
    pub fn reach_noting(
        &self,
        rel: &Path,
        links: Links,
        made: &mut Vec<Made>,
    ) -> Result<Folder, PlaceError> {
        self.walk(rel, links, Some(made))
    }

    /// The folder `rel` below this one, reached as `reach` does but never made: a missing one
    /// is an error.
    pub fn existing(&self, rel: &Path, links: Links) -> Result<Folder, PlaceError> {
        self.walk(rel, links, None)
    }

    /// `reach` (making what is missing, noted in `made`), or `existing` when `made` is None.
    fn walk(
        &self,
        rel: &Path,
        links: Links,
        mut made: Option<&mut Vec<Made>>,
    ) -> Result<Folder, PlaceError> {
        let mut path = self.path.clone();
        let mut below = PathBuf::new();
        let mut here: Option<OwnedFd> = None;
        for c in rel.components() {
            let name = match c {
                Component::Normal(name) => name,
                Component::CurDir => continue,
                _ => return Err(PlaceError::NotPlain(self.path.join(rel))),
            };
            path.push(name);
            below.push(name);
            let parent = here
                .as_ref()
                .map_or(self.dir.as_raw_fd(), |fd| fd.as_raw_fd());
            let (fd, new) = step_into(parent, name, links, &path, made.is_some())?;
            if let (true, Some(made)) = (new, made.as_deref_mut()) {
                let st = nix::sys::stat::fstat(fd.as_raw_fd())
                    .map_err(|e| PlaceError::Io(path.clone(), errno(e)))?;
                made.push(Made {
                    rel: below.clone(),
                    id: (st.st_dev as u64, st.st_ino as u64),
                });
            }
            here = Some(fd);
        }
        // A handle that can be synced and listed (an O_PATH one cannot).
        let parent = here
            .as_ref()
            .map_or(self.dir.as_raw_fd(), |fd| fd.as_raw_fd());
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = openat(Some(parent), ".", flags, Mode::empty())
            .map_err(|e| PlaceError::Io(path.clone(), errno(e)))?;
        Ok(Folder {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            dir: File::from(unsafe { OwnedFd::from_raw_fd(fd) }),
            path,
        })
    }

    /// Whether `name` exists in this folder (a symlink, even a dangling one, counts; nothing
    /// is followed).
    pub fn has(&self, name: &OsStr) -> io::Result<bool> {
        let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        match nix::sys::stat::fstatat(Some(self.dir.as_raw_fd()), name, flags) {
            Ok(_) => Ok(true),
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno(e)),
        }
    }

    /// A new file `name` in this folder, mode 0600, opened for reading and writing: never an
    /// existing one, never through a symlink (`O_CREAT | O_EXCL | O_NOFOLLOW`).
    pub fn create_new(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlag::O_RDWR
            | OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY;
        let fd = openat(
            Some(self.dir.as_raw_fd()),
            name,
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(errno)?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Renames `from` to `to`, both in this folder; what is at `to` is replaced only with
    /// `replace` (a rename replaces the name, never writes through it: a hard link or a
    /// symlink at `to` is only unlinked).
    pub fn rename(&self, from: &OsStr, to: &OsStr, replace: bool) -> io::Result<()> {
        let d = Some(self.dir.as_raw_fd());
        match replace {
            true => nix::fcntl::renameat(d, from, d, to),
            false => {
                nix::fcntl::renameat2(d, from, d, to, nix::fcntl::RenameFlags::RENAME_NOREPLACE)
            }
        }
        .map_err(errno)
    }

    /// Removes the file `name` from this folder.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let d = Some(self.dir.as_raw_fd());
        nix::unistd::unlinkat(d, name, nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(errno)
    }

    /// Makes what was renamed or made in this folder durable.
    pub fn sync(&self) -> io::Result<()> {
        self.dir.sync_all()
    }

    /// Its device and inode numbers (`fstat` on the handle): which folder it is.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        let meta = self.dir.metadata()?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Gives this folder (on its handle) the owner and group `owner` (if given), then the
    /// permission bits `mode` (after chown, which clears set-id bits) and the mtime `mtime_ns`.
    pub fn set_meta(&self, owner: Option<(u32, u32)>, mode: u32, mtime_ns: i64) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&self.dir, Some(uid), Some(gid))?;
        }
        (self.dir).set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        let mtime = nix::sys::time::TimeSpec::new(
            mtime_ns.div_euclid(1_000_000_000),
            mtime_ns.rem_euclid(1_000_000_000),
        );
        let keep = nix::sys::time::TimeSpec::UTIME_OMIT;
        nix::sys::stat::futimens(self.dir.as_raw_fd(), &keep, &mtime).map_err(errno)
    }
}

/// Opens the folder `name` of `parent` (an `O_PATH` handle), making it when it is missing and
/// `make`; says whether it made it.
fn step_into(
    parent: RawFd,
    name: &OsStr,
    links: Links,
    path: &Path,
    make: bool,
) -> Result<(OwnedFd, bool), PlaceError> {
    let mut flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= OFlag::O_NOFOLLOW;
    }
    let open = || openat(Some(parent), name, flags, Mode::empty());
    let mut made = false;
    let opened = match open() {
        Err(nix::errno::Errno::ENOENT) if make => {
            match nix::sys::stat::mkdirat(Some(parent), name, Mode::from_bits_truncate(0o755)) {
                Ok(()) => {
                    made = true;
                    open()
                }
                // Made by someone else meanwhile: opened (and checked) like any other.
                Err(nix::errno::Errno::EEXIST) => open(),
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    match opened {
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(fd) => Ok((unsafe { OwnedFd::from_raw_fd(fd) }, made)),
        // What O_NOFOLLOW | O_DIRECTORY answer for a symlink (O_PATH gives ENOTDIR): looked at,
        // without following it, to say which.
        Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
            let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
            match nix::sys::stat::fstatat(Some(parent), name, flags) {
                Ok(st) if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK => {
                    Err(PlaceError::Symlink(path.to_path_buf()))
                }
                _ => Err(PlaceError::NotAFolder(path.to_path_buf())),
            }
        }
        Err(e) => Err(PlaceError::Io(path.to_path_buf(), errno(e))),
    }
}

/// File systems whose files the kernel makes up as they are read (by their `statfs` magic,
/// from `linux/magic.h`): a size of 0 that reads forever (`/proc/self/pagemap`), or state that
/// is no one's data. Nothing on them is ever read for a backup.
const PSEUDO_FS: &[(u32, &str)] = &[
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x1cd1, "devpts"),
    (0x7472_6163, "tracefs"),
    (0xcafe_4a11, "bpf"),
    (0xde5e_81e4, "efivarfs"),
    (0x6265_6570, "configfs"),
    (0x6165_676c, "pstore"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x6573_5543, "fusectl"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x6e73_6673, "nsfs"),
    (0x0765_5821, "resctrl"),
    (0x1980_0202, "mqueue"),
];

/// The name of the pseudo file system (proc, sysfs…) the open `file` is on, if it is on one
/// (`fstatfs` on the handle, never on a path).
pub fn pseudo_fs(file: &File) -> io::Result<Option<&'static str>> {
    let st = nix::sys::statfs::fstatfs(file).map_err(errno)?;
    // The magic is a `long` (or `u32` on some targets): only its low 32 bits are a magic.
    #[allow(clippy::unnecessary_cast)]
    let magic = (st.filesystem_type().0 as u64 & 0xffff_ffff) as u32;
    Ok(PSEUDO_FS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name))
}

/// `Err` (a one-line reason) when the open `file` is on a pseudo file system.
pub fn refuse_pseudo(file: &File) -> io::Result<()> {
    match pseudo_fs(file)? {
        None => Ok(()),
        Some(fs) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("on the kernel's {fs} file system, whose files are not data: never backed up"),
        )),
    }
}

#[cfg(test)]
mod tests;
