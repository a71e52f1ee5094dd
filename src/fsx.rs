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

/// How deep below the folder it walks a `Walk` goes by default: each level open holds two
/// descriptors while it is listed, so a chain of nested folders a user made cannot take the
/// daemon's descriptors (nor, for a watched folder, its inotify watches).
pub const DEPTH_LIMIT: usize = 256;

/// Folders not entered because they were too deep, kept by path (the rest only counted).
const TOO_DEEP_KEPT: usize = 16;

/// What a walk found a name to be, as its filter is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    File,
    Dir,
}

/// A regular file found by a walk.
#[derive(Debug)]
pub struct Found {
    /// Its path below the folder walked.
    pub rel: PathBuf,
    /// The folder that holds it, as the walk opened it.
    pub dir: Arc<File>,
    /// What `fstatat` (no symlink followed) told of it when it was listed.
    pub stamp: Stamp,
}

impl Found {
    /// Opens the file from the folder the walk found it in, by its name alone: its path is
    /// never looked up again, so a folder on the way swapped for a symlink since changes
    /// nothing. Refused if the name is no longer a regular file (a symlink put in its place).
    pub fn open(&self) -> io::Result<File> {
        let name = self.rel.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a walk found no file here")
        })?;
        open_below(&self.dir, Path::new(name), Kind::File)
    }
}

/// How a walk ended.
#[derive(Debug, Default)]
pub struct Walked {
    /// What could not be read below the folder walked (a subfolder, or a name in it), and why:
    /// the files there were not handed over. A name that vanished or became a symlink while it
    /// was walked is not here: it simply is not (or no longer) a file or a folder.
    pub unreadable: Vec<(PathBuf, io::Error)>,
    /// Folders not entered because they lie deeper than `Walk::max_depth` (the first
    /// `TOO_DEEP_KEPT`, by their path below the folder walked)…
    pub too_deep: Vec<PathBuf>,
    /// …and how many there were in all.
    pub too_deep_count: u64,
}

/// How to walk a folder: through handles, one name at a time, never following a symlink and
/// never looking a path up twice (each folder is opened by name from its parent's handle, and
/// each file is stat'ed, and opened by `Found::open`, from its folder's handle). A user who
/// swaps a folder for a symlink while it is walked gains nothing: the name is refused, or the
/// walk goes on in the folder it had already opened.
pub struct Walk {
    /// Enter only the subfolders this uid owns, as their open handle says (a user's backup
    /// stays in the user's tree). The folder walked itself is the caller's to check.
    pub owner: Option<u32>,
    /// Files handed over at once (each holds its folder's handle until it is dropped).
    pub batch: usize,
    /// How many levels of folders below the one walked are entered (`DEPTH_LIMIT`, less for a
    /// walk that starts deep): the descriptors a walk holds are bounded by it.
    pub max_depth: usize,
}

/// A folder being listed: its path below the walked one, its handle, its entries.
struct Level {
    rel: PathBuf,
    dir: Arc<File>,
    entries: nix::dir::OwningIter,
}

impl Level {
    fn new(rel: PathBuf, dir: File) -> io::Result<Level> {
        // A listing of its own (a dup would share the read position with `dir`).
        let fd = open_at(&dir, OsStr::new("."), OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let entries = nix::dir::Dir::from(fd).map_err(errno)?.into_iter();
        Ok(Level {
            rel,
            dir: Arc::new(dir),
            entries,
        })
    }
}

/// What one name of a folder being listed turned out to be.
enum Step {
    /// The folder's listing ended (or failed: noted).
    Done,
    /// Nothing to walk or hand over.
    Skip,
    File(Found),
    Dir(Level),
}

/// A name that vanished, or became a symlink or another kind, since it was listed.
fn moved(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
    )
}

impl Walk {
    /// Walks the folder `dir` depth first, in the order of its listings, and hands the regular
    /// files below it to `found`, `batch` at a time, until it has all or it returns `Break`.
    /// `keep` is asked about each file and folder (by its path below `dir`) before it is
    /// looked at further: false skips it (a folder is not entered). Symlinks, devices, FIFOs
    /// and sockets are skipped. Err: `dir` itself cannot be listed; what cannot be read below
    /// it is in `Walked::unreadable`, and the walk goes on.
    pub fn run(
        &self,
        dir: &File,
        mut keep: impl FnMut(&Path, Entry) -> bool,
        mut found: impl FnMut(Vec<Found>) -> ControlFlow<()>,
    ) -> io::Result<Walked> {
        let mut walked = Walked::default();
        refuse_pseudo(dir)?;
        let mut stack = vec![Level::new(PathBuf::new(), dir.try_clone()?)?];
        let mut batch = Vec::with_capacity(self.batch);
        loop {
            // The depth of a folder found in `level` (those of the folder walked are at 1).
            let depth = stack.len();
            let Some(level) = stack.last_mut() else {
                break;
            };
            match self.step(level, depth, &mut keep, &mut walked) {
                Step::Done => {
                    stack.pop();
                }
                Step::Skip => {}
                Step::Dir(sub) => stack.push(sub),
                Step::File(f) => {
                    batch.push(f);
                    if batch.len() >= self.batch.max(1)
                        && found(std::mem::take(&mut batch)).is_break()
                    {
                        return Ok(walked);
                    }
                }
            }
        }
        if !batch.is_empty() {
            let _ = found(batch);
        }
        Ok(walked)
    }

    /// Looks at the next name of `level`.
    fn step(
        &self,
        level: &mut Level,
        depth: usize,
        keep: &mut impl FnMut(&Path, Entry) -> bool,
        walked: &mut Walked,
    ) -> Step {
        let entry = match level.entries.next() {
            None => return Step::Done,
            Some(Ok(entry)) => entry,
            Some(Err(e)) => {
                walked.unreadable.push((level.rel.clone(), errno(e)));
                return Step::Done;
            }
        };
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            return Step::Skip;
        }
        let rel = level.rel.join(name);
        let stat_here = || {
            let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
            nix::sys::stat::fstatat(Some(level.dir.as_raw_fd()), name, flags).map_err(errno)
        };
        let kind_of = |st: &FileStat| match st.st_mode & nix::libc::S_IFMT {
            nix::libc::S_IFREG => Some(Entry::File),
            nix::libc::S_IFDIR => Some(Entry::Dir),
            _ => None,
        };
        // The listing's type when it gives one (no lookup); else the file's own.
        let mut stat = None;
        let kind = match entry.file_type() {
            Some(nix::dir::Type::File) => Entry::File,
            Some(nix::dir::Type::Directory) => Entry::Dir,
            Some(_) => return Step::Skip,
            None => match stat_here() {
                Ok(st) => {
                    let Some(kind) = kind_of(&st) else {
                        return Step::Skip;
                    };
                    stat = Some(st);
                    kind
                }
                Err(e) if moved(&e) => return Step::Skip,
                Err(e) => {
                    walked.unreadable.push((rel, e));
                    return Step::Skip;
                }
            },
        };
        if !keep(&rel, kind) {
            return Step::Skip;
        }
        match kind {
            Entry::File => {
                let st = match stat.map_or_else(stat_here, Ok) {
                    Ok(st) => st,
                    Err(e) if moved(&e) => return Step::Skip,
                    Err(e) => {
                        walked.unreadable.push((rel, e));
                        return Step::Skip;
                    }
                };
                // Listed as a file, something else now: not handed over.
                if kind_of(&st) != Some(Entry::File) {
                    return Step::Skip;
                }
                Step::File(Found {
                    rel,
                    dir: level.dir.clone(),
                    stamp: Stamp::of_stat(&st),
                })
            }
            Entry::Dir if depth > self.max_depth => {
                walked.too_deep_count += 1;
                if walked.too_deep.len() < TOO_DEEP_KEPT {
                    walked.too_deep.push(rel);
                }
                Step::Skip
            }
            Entry::Dir => {
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
                let opened = open_at(&*level.dir, name, flags).map(File::from);
                let owned = |sub: &File| match self.owner {
                    None => Ok(true),
                    Some(uid) => sub.metadata().map(|m| m.uid() == uid),
                };
                // A bind mount of proc (say) below the folder: never read.
                let entered = opened.and_then(|sub| match owned(&sub)? {
                    true => {
                        refuse_pseudo(&sub).and_then(|()| Level::new(rel.clone(), sub).map(Some))
                    }
                    false => Ok(None),
                });
                match entered {
                    Ok(Some(sub)) => Step::Dir(sub),
                    Ok(None) => Step::Skip,
                    Err(e) if moved(&e) => Step::Skip,
                    Err(e) => {
                        walked.unreadable.push((rel, e));
                        Step::Skip
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
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
    fn a_folder_to_write_into_is_reached_through_no_symlink() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        let outside = base.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        symlink(&outside, base.join("real/link")).unwrap();
        let top = Folder::open_trusted(&base).unwrap();
        // Missing folders are made; a symlink anywhere is refused, and named.
        let made = top
            .reach(Path::new("real/new/deeper"), Links::Refuse)
            .unwrap();
        assert_eq!(made.path(), base.join("real/new/deeper"));
        assert!(base.join("real/new/deeper").is_dir());
        for bad in ["real/link", "real/link/sub"] {
            match top.reach(Path::new(bad), Links::Refuse) {
                Err(PlaceError::Symlink(p)) => assert_eq!(p, base.join("real/link")),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing made there"
        );
        assert!(matches!(
            top.reach(Path::new("../x"), Links::Refuse),
            Err(PlaceError::NotPlain(_))
        ));
        std::fs::write(base.join("real/file"), b"x").unwrap();
        assert!(matches!(
            top.reach(Path::new("real/file/x"), Links::Refuse),
            Err(PlaceError::NotAFolder(_))
        ));
        // Followed only when asked (a user's own restore).
        let followed = top
            .reach(Path::new("real/link/sub"), Links::Follow)
            .unwrap();
        assert!(outside.join("sub").is_dir());
        drop(followed);

        // Looked at, made and renamed in the handle: a dangling symlink exists; no file is
        // made through one, nor over an existing name.
        let dir = top.reach(Path::new("real"), Links::Refuse).unwrap();
        symlink(outside.join("target"), base.join("real/dangling")).unwrap();
        assert!(dir.has(OsStr::new("dangling")).unwrap());
        assert!(!dir.has(OsStr::new("nothing")).unwrap());
        assert!(dir.create_new(OsStr::new("dangling")).is_err());
        assert!(!outside.join("target").exists());
        assert!(dir.create_new(OsStr::new("file")).is_err());
        dir.create_new(OsStr::new("tmp")).unwrap();
        assert!(dir
            .rename(OsStr::new("tmp"), OsStr::new("file"), false)
            .is_err());
        dir.rename(OsStr::new("tmp"), OsStr::new("file"), true)
            .unwrap();
        assert_eq!(std::fs::read(base.join("real/file")).unwrap(), b"");

        // The folder swapped for a symlink after it was reached: what is done in the handle
        // lands in the folder reached (moved away), never where the symlink points.
        std::fs::rename(base.join("real"), base.join("moved")).unwrap();
        symlink(&outside, base.join("real")).unwrap();
        dir.create_new(OsStr::new("late")).unwrap();
        assert!(base.join("moved/late").exists());
        assert!(!outside.join("late").exists());
        dir.remove(OsStr::new("late")).unwrap();
        assert!(!base.join("moved/late").exists());
    }

    /// Every file a walk hands over, by path, with the sizes of the batches.
    fn walk_all(
        dir: &File,
        owner: Option<u32>,
        batch: usize,
        mut keep: impl FnMut(&Path, Entry) -> bool,
    ) -> (Vec<Found>, Vec<usize>) {
        let (mut files, mut sizes) = (Vec::new(), Vec::new());
        let walk = Walk {
            owner,
            batch,
            max_depth: DEPTH_LIMIT,
        };
        let walked = walk
            .run(dir, &mut keep, |b| {
                sizes.push(b.len());
                files.extend(b);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(walked.unreadable.is_empty(), "{:?}", walked.unreadable);
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        (files, sizes)
    }

    fn rels(files: &[Found]) -> Vec<PathBuf> {
        files.iter().map(|f| f.rel.clone()).collect()
    }

    #[test]
    fn a_walk_skips_symlinks_and_keeps_names_as_bytes() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        std::fs::write(base.join("a/b/f"), b"x").unwrap();
        let odd = OsStr::from_bytes(b"caf\xe9");
        std::fs::write(base.join(odd), b"yy").unwrap();
        symlink("/etc/passwd", base.join("a/p")).unwrap();
        symlink(base.join("a"), base.join("loop")).unwrap();
        nix::unistd::mkfifo(&base.join("a/fifo"), Mode::S_IRWXU).unwrap();
        let dir = open_path(&base, Kind::Dir).unwrap();
        let (files, _) = walk_all(&dir, None, 100, |_, _| true);
        assert_eq!(
            rels(&files),
            vec![PathBuf::from("a/b/f"), PathBuf::from(odd)]
        );
        // The stamp is the file's, and the file opens from the folder it was found in.
        for f in &files {
            let meta = std::fs::symlink_metadata(base.join(&f.rel)).unwrap();
            assert_eq!(f.stamp, Stamp::of(&meta));
            let opened = f.open().unwrap();
            assert!(same_file(&opened, &File::open(base.join(&f.rel)).unwrap()).unwrap());
        }
        // Walked again from the same handle: the same files (the listing has its own position).
        assert_eq!(
            rels(&walk_all(&dir, None, 100, |_, _| true).0),
            rels(&files)
        );
        // Only the folders the owner owns are entered (the walked one is the caller's).
        let (mine, _) = walk_all(&dir, Some(54321), 100, |_, _| true);
        assert_eq!(rels(&mine), vec![PathBuf::from(odd)]);
        std::os::unix::fs::chown(base.join("a"), Some(54321), None).unwrap();
        let (mine, _) = walk_all(&dir, Some(54321), 100, |_, _| true);
        assert_eq!(rels(&mine), vec![PathBuf::from(odd)], "a/b is not 54321's");
        std::os::unix::fs::chown(base.join("a/b"), Some(54321), None).unwrap();
        let (mine, _) = walk_all(&dir, Some(54321), 100, |_, _| true);
        assert_eq!(rels(&mine), rels(&files));
    }

    #[test]
    fn a_walk_asks_before_it_enters_or_hands_over_and_hands_over_in_batches() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("keep/own")).unwrap();
        std::fs::create_dir_all(base.join("skip")).unwrap();
        for f in ["keep/1", "keep/2.tmp", "keep/own/3", "skip/4", "5", "6"] {
            std::fs::write(base.join(f), f).unwrap();
        }
        let dir = open_path(&base, Kind::Dir).unwrap();
        let mut asked = Vec::new();
        let (files, sizes) = walk_all(&dir, None, 2, |rel, entry| {
            asked.push((rel.to_path_buf(), entry));
            !(rel.ends_with("own") || rel.starts_with("skip") || rel.ends_with("2.tmp"))
        });
        assert_eq!(
            rels(&files),
            ["5", "6", "keep/1"].map(PathBuf::from).to_vec()
        );
        assert_eq!(sizes, vec![2, 1]);
        asked.sort_by(|a, b| a.0.cmp(&b.0));
        let expected = [
            ("5", Entry::File),
            ("6", Entry::File),
            ("keep", Entry::Dir),
            ("keep/1", Entry::File),
            ("keep/2.tmp", Entry::File),
            ("keep/own", Entry::Dir),
            ("skip", Entry::Dir),
        ]
        .map(|(p, e)| (PathBuf::from(p), e));
        assert_eq!(asked, expected.to_vec(), "nothing below a skipped folder");
        // Break ends the walk at the batch that said so.
        let mut calls = 0;
        let walk = Walk {
            owner: None,
            batch: 1,
            max_depth: DEPTH_LIMIT,
        };
        walk.run(
            &dir,
            |_, _| true,
            |_| {
                calls += 1;
                ControlFlow::Break(())
            },
        )
        .unwrap();
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_walk_goes_no_deeper_than_its_limit_and_says_where_it_stopped() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        // A chain d/d/d/… ten deep with a file `f` in every folder, and a folder beside it.
        let mut here = base.clone();
        for _ in 0..10 {
            std::fs::write(here.join("f"), b"x").unwrap();
            here = here.join("d");
            std::fs::create_dir(&here).unwrap();
        }
        std::fs::create_dir(base.join("side")).unwrap();
        std::fs::write(base.join("side/g"), b"y").unwrap();
        let dir = open_path(&base, Kind::Dir).unwrap();
        let walk = Walk {
            owner: None,
            batch: 100,
            max_depth: 3,
        };
        let mut files = Vec::new();
        let walked = walk
            .run(
                &dir,
                |_, _| true,
                |b| {
                    files.extend(b.into_iter().map(|f| f.rel));
                    ControlFlow::Continue(())
                },
            )
            .unwrap();
        files.sort();
        let expected = ["d/d/d/f", "d/d/f", "d/f", "f", "side/g"].map(PathBuf::from);
        assert_eq!(files, expected.to_vec(), "three levels of folders entered");
        assert_eq!(walked.too_deep, vec![PathBuf::from("d/d/d/d")]);
        assert_eq!(walked.too_deep_count, 1);
        assert!(walked.unreadable.is_empty());
        // At the default limit, the whole chain.
        let (all, _) = walk_all(&dir, None, 100, |_, _| true);
        assert_eq!(all.len(), 11);
    }

    #[test]
    fn pseudo_file_systems_are_known_by_their_magic_and_never_walked() {
        let proc_file = File::open("/proc/self/stat").unwrap();
        assert_eq!(pseudo_fs(&proc_file).unwrap(), Some("proc"));
        let e = refuse_pseudo(&proc_file).unwrap_err();
        assert!(e.to_string().contains("proc file system"), "{e}");
        if let Ok(sys) = File::open("/sys/kernel") {
            assert_eq!(pseudo_fs(&sys).unwrap(), Some("sysfs"));
        }
        let d = tempfile::tempdir().unwrap();
        let here = File::open(d.path()).unwrap();
        assert_eq!(pseudo_fs(&here).unwrap(), None);
        // A walk of /proc itself is refused before anything is listed.
        let walk = Walk {
            owner: None,
            batch: 10,
            max_depth: DEPTH_LIMIT,
        };
        let proc_dir = File::open("/proc").unwrap();
        let mut handed = 0;
        let e = walk
            .run(
                &proc_dir,
                |_, _| true,
                |b| {
                    handed += b.len();
                    ControlFlow::Continue(())
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("proc file system"), "{e}");
        assert_eq!(handed, 0);
    }

    #[test]
    fn a_folder_swapped_for_a_symlink_during_a_walk_leaks_nothing() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        let secret = base.join("secret");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("f"), b"SECRET").unwrap();
        let w = base.join("w");
        std::fs::create_dir_all(w.join("u")).unwrap();
        std::fs::create_dir_all(w.join("v")).unwrap();
        std::fs::write(w.join("u/f"), b"user's").unwrap();
        std::fs::write(w.join("v/f"), b"user's").unwrap();
        let dir = open_path(&w, Kind::Dir).unwrap();
        // `u` is swapped just before the walk opens it: the symlink is refused, not followed.
        // `v` is swapped after the walk listed its file: the file still opens from the folder
        // the walk had opened, never through the symlink now at its path.
        let swap = |name: &str| {
            std::fs::rename(w.join(name), w.join(format!("{name}.old"))).unwrap();
            symlink(&secret, w.join(name)).unwrap();
        };
        let (files, _) = walk_all(&dir, None, 100, |rel, entry| {
            if rel == Path::new("u") && entry == Entry::Dir {
                swap("u");
            }
            rel != Path::new("u.old") && rel != Path::new("v.old")
        });
        assert_eq!(rels(&files), vec![PathBuf::from("v/f")]);
        swap("v");
        let mut read = String::new();
        files[0].open().unwrap().read_to_string(&mut read).unwrap();
        assert_eq!(read, "user's");
        // Where the symlink is, a path-based look would have found the secret.
        assert_eq!(std::fs::read(w.join("v/f")).unwrap(), b"SECRET");
    }
}
