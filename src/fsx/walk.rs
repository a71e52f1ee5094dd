//! Walking a folder tree from a handle, one level open at a time, never following a link, with
//! a depth limit: what a scan of a watched folder and `restore --all` go through.

use super::*;

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
