//! The caller's side of `backup` and `restore`. What the caller names is opened here, with the
//! caller's own rights, and sent to the daemon as a descriptor: the kernel decides what the
//! caller may read or write, and symlink tricks give it nothing it could not do already. A
//! restore is written by the daemon into a new 0600 file made here, then given its owner (when
//! the caller is root), mode, mtime and final name here, in a folder reached one name at a
//! time from a handle (`fsx::Folder`): for root, through no symlink at all. The folders a
//! restore makes get, once the files are in, the owner, mode and mtime the catalog recorded of
//! them (`give_back_folders`), reached again the same way.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use nix::fcntl::OFlag;

use super::{
    call_events, exit, shown, ClientError, FolderInfo, FoldersAnswer, Nothing, Outcome,
    ProgressEvent, Request, RestoreAnswer, RestoreFailed, Restored,
};
use crate::fsx::{Folder, Links, Made};

/// Backs up `path` (absolute, symlinks resolved): opened here, sent as a descriptor.
pub async fn backup(
    socket: &Path,
    path: &Path,
    replication: Option<u8>,
    encrypt: bool,
    on_progress: impl FnMut(&ProgressEvent),
) -> Result<Outcome, ClientError> {
    // O_NONBLOCK: a FIFO does not hang the command (no effect on files and folders).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| ClientError::Local(format!("cannot open {}: {e}", shown(path))))?;
    let request = Request::Backup {
        path: path.to_path_buf(),
        replication,
        encrypt,
    };
    let (code, message, data) =
        call_events::<Nothing>(socket, &request, &[file.as_fd()], on_progress).await?;
    Ok((code, message, data.map(Nothing::answer)))
}

/// The name of the file a restore writes before it is moved into place.
fn restore_temp_name(n: u64) -> String {
    format!(".peerstash-{n:016x}.tmp")
}

/// Whether a file name is one a restore writes before moving it into place: never backed up
/// (a restore into a watched folder would otherwise back up each file under that name too).
pub fn is_restore_temp(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.len() == restore_temp_name(0).len()
        && name.starts_with(b".peerstash-")
        && name.ends_with(b".tmp")
        && name[11..27].iter().all(u8::is_ascii_hexdigit)
}

/// Where a restore writes: `to` (into it, when it is a folder), else the file's own path.
pub fn destination(path: &Path, to: Option<&Path>) -> PathBuf {
    let dest = to.unwrap_or(path).to_path_buf();
    match path.file_name() {
        Some(name) if dest.is_dir() => dest.join(name),
        _ => dest,
    }
}

/// Where a restore writes: the folder reached for it (see `target`) and the file's name there.
#[derive(Debug)]
pub struct Target {
    pub dir: Folder,
    pub name: OsString,
}

impl Target {
    /// Its path, for messages.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }
}

/// How this caller's restores walk to where they write. Root never follows a symlink: one in
/// a folder a user owns (`~/docs` -> `/etc/profile.d`) would have root write the user's bytes,
/// owned by the user, anywhere. Another user follows them with its own rights: the kernel
/// refuses what it may not write.
pub fn links() -> Links {
    match nix::unistd::geteuid().is_root() {
        true => Links::Refuse,
        false => Links::Follow,
    }
}

/// Reaches the folder of `rel` (a path below `from`) one name at a time from `from`, making
/// the missing folders on the way (see `Folder::reach`), each added to `made` (its path below
/// `from`).
pub fn target(from: &Folder, rel: &Path, made: &mut Vec<Made>) -> Result<Target, ClientError> {
    let dest = from.path().join(rel);
    let (Some(dir), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(ClientError::Local(format!(
            "{}: not a file name to restore to",
            shown(&dest)
        )));
    };
    let dir = from.reach_noting(dir, links(), made).map_err(|e| {
        ClientError::Local(format!(
            "cannot restore to {}: {} {e}",
            shown(&dest),
            shown(e.path())
        ))
    })?;
    Ok(Target {
        dir,
        name: name.to_owned(),
    })
}

/// `/`, and `path` (absolute) below it.
fn from_root(path: &Path) -> Result<(Folder, &Path), ClientError> {
    let root = Folder::root()
        .map_err(|e| ClientError::Local(format!("cannot open the root folder: {e}")))?;
    match path.strip_prefix("/") {
        Ok(rel) => Ok((root, rel)),
        Err(_) => Err(ClientError::Local(format!(
            "{}: not an absolute path",
            shown(path)
        ))),
    }
}

/// Reaches the folder of `dest` (absolute) from `/`: see `target` (`made` gets paths below
/// `/`).
pub fn target_from_root(dest: &Path, made: &mut Vec<Made>) -> Result<Target, ClientError> {
    let (root, rel) = from_root(dest)?;
    target(&root, rel, made)
}

/// Reaches the folder `dir` (absolute) from `/`, making it if it is missing, as `target` does
/// for a file's folder.
pub fn folder_from_root(dir: &Path, made: &mut Vec<Made>) -> Result<Folder, ClientError> {
    let (root, rel) = from_root(dir)?;
    root.reach_noting(rel, links(), made).map_err(|e| {
        ClientError::Local(format!(
            "cannot restore into {}: {} {e}",
            shown(dir),
            shown(e.path())
        ))
    })
}

/// The folders recorded at or below `path` (`Request::Folders`), and when the snapshot that
/// `restore --all` takes as the loss's was taken. An older daemon records none: nothing.
pub async fn folders(socket: &Path, path: &Path) -> Result<FoldersAnswer, ClientError> {
    let request = Request::Folders {
        path: path.to_path_buf(),
    };
    match super::call::<FoldersAnswer>(socket, &request, &[], |_| {}).await? {
        (exit::OK, _, Some(answer)) => Ok(answer),
        _ => Ok(FoldersAnswer::default()),
    }
}

/// A folder a restore made, to be given what the catalog recorded of it once the files below
/// are in (`give_back_folders`).
#[derive(Debug)]
pub struct MadeFolder<'a> {
    /// The trusted handle it was reached from, and its path below it.
    pub from: &'a Folder,
    pub rel: PathBuf,
    /// Its device and inode numbers when the restore made it (None: it was there before, and
    /// `--force` gives it back too).
    pub made_as: Option<(u64, u64)>,
    /// What was recorded for it.
    pub recorded: FolderInfo,
}

/// Gives each folder in `made` its recorded owner and group (when the caller is root: others
/// keep their own), mode and mtime, deepest first (what was written into a folder moved its
/// mtime: each is set once nothing more is written into it). Each is reached again from its
/// trusted handle one name at a time, never through a symlink for root (`Folder::existing`):
/// a folder swapped for a link since the files were written is refused, one replaced by
/// another folder is left as it is, and nothing elsewhere is changed. Returns how many were
/// done, and a message for each that was not.
pub fn give_back_folders(mut made: Vec<MadeFolder<'_>>) -> (usize, Vec<String>) {
    made.sort_by_key(|m| std::cmp::Reverse(m.recorded.path.components().count()));
    let (mut done, mut failed) = (0, Vec::new());
    for m in made {
        match give_back_folder(m.from, &m.rel, m.made_as, &m.recorded, links()) {
            Ok(()) => done += 1,
            Err(e) => failed.push(e),
        }
    }
    (done, failed)
}

/// One folder of `give_back_folders`.
fn give_back_folder(
    from: &Folder,
    rel: &Path,
    made_as: Option<(u64, u64)>,
    f: &FolderInfo,
    links: Links,
) -> Result<(), String> {
    let place = from.path().join(rel);
    let dir = from.existing(rel, links).map_err(|e| {
        format!(
            "cannot give {} its owner, mode and mtime: {} {e}",
            shown(&place),
            shown(e.path())
        )
    })?;
    // Another folder put in the place of the one made (a user's own, renamed there) is not
    // given the recorded owner and mode.
    if made_as.is_some_and(|id| dir.id().ok() != Some(id)) {
        return Err(format!(
            "{} is not the folder the restore made (it was replaced): left as it is",
            shown(&place)
        ));
    }
    let owner = nix::unistd::geteuid().is_root().then_some((f.uid, f.gid));
    dir.set_meta(owner, f.mode, f.mtime_ns).map_err(|e| {
        format!(
            "cannot give {} its owner, mode and mtime: {e}",
            shown(&place)
        )
    })
}

/// Restores a version of `path` into `to`: an existing file is replaced only with `force`
/// (atomically either way), and nothing is left behind on failure. Whether it exists, the new
/// file, and its final name are all looked at and made in `to.dir`, by a single name.
pub async fn restore(
    socket: &Path,
    path: &Path,
    version: Option<u32>,
    to: &Target,
    force: bool,
    on_progress: impl FnMut(&ProgressEvent),
) -> Result<Outcome<RestoreAnswer>, ClientError> {
    let dest = to.path();
    let local = |what: &str, e: &dyn std::fmt::Display| {
        ClientError::Local(format!("{what} {}: {e}", shown(&dest)))
    };
    let exists = to
        .dir
        .has(&to.name)
        .map_err(|e| local("cannot look at", &e))?;
    if !force && exists {
        let message = format!(
            "{} exists: pass --force to overwrite it, or --to another place",
            shown(&dest)
        );
        return Ok((exit::FAILED, message, None));
    }
    // A short name of its own, so that a 255-byte file name still has room.
    let tmp = OsString::from(restore_temp_name(rand::random()));
    let out = (to.dir.create_new(&tmp)).map_err(|e| local("cannot create a file next to", &e))?;
    let request = Request::Restore {
        path: path.to_path_buf(),
        version,
    };
    let answer = call_events(socket, &request, &[out.as_fd()], on_progress).await;
    let finished = match answer {
        Ok((exit::OK, message, Some(RestoreAnswer::Restored(r)))) => {
            finish(&out, &r, to, &tmp, force)
                .map_err(|e| placed(&dest, e))
                .map(|()| {
                    (
                        exit::OK,
                        format!("{message}; written to {}", shown(&dest)),
                        Some(RestoreAnswer::Restored(r)),
                    )
                })
        }
        Ok((exit::OK, _, Some(RestoreAnswer::Failed(f)))) => Err(ClientError::BadReply(format!(
            "a restore that succeeded with {f:?} instead of the file written"
        ))),
        // The daemon does not know where the file goes: said here.
        Ok((code, _, Some(data @ RestoreAnswer::Failed(RestoreFailed { disk_full: true })))) => {
            Ok((code, disk_full(&dest), Some(data)))
        }
        Ok(other) => Ok(other),
        Err(e) => Err(e),
    };
    if !matches!(finished, Ok((exit::OK, _, _))) {
        let _ = to.dir.remove(&tmp);
    }
    finished
}

/// What a restore says when the disk it writes to is full.
fn disk_full(dest: &Path) -> String {
    format!(
        "disk full at {}: free space and run the restore again",
        shown(dest)
    )
}

/// Putting the restored file in place failed (a full disk said as such).
fn placed(dest: &Path, e: std::io::Error) -> ClientError {
    let full = [nix::libc::ENOSPC, nix::libc::EDQUOT];
    match e.raw_os_error().is_some_and(|n| full.contains(&n)) {
        true => ClientError::Local(disk_full(dest)),
        false => ClientError::Local(format!(
            "cannot put the restored file in place at {}: {e}",
            shown(dest)
        )),
    }
}

/// Owner (root only: others keep their own), then mode (after chown, which clears set-id bits),
/// mtime, sync, the final name, and a sync of the folder; all on handles.
fn finish(out: &File, r: &Restored, to: &Target, tmp: &OsStr, force: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::fchown(out, Some(r.uid), Some(r.gid))?;
    }
    out.set_permissions(std::fs::Permissions::from_mode(r.mode & 0o7777))?;
    let mtime = match r.mtime_ns {
        n if n >= 0 => UNIX_EPOCH + Duration::from_nanos(n as u64),
        n => UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs()),
    };
    out.set_times(std::fs::FileTimes::new().set_modified(mtime))?;
    out.sync_all()?;
    to.dir.rename(tmp, &to.name, force)?;
    to.dir.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_swapped_for_a_link_is_not_given_anything_and_its_target_keeps_its_own() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        std::fs::create_dir_all(victim.join("b")).unwrap();
        for v in [&victim, &victim.join("b")] {
            std::fs::set_permissions(v, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let from = Folder::open_trusted(&base).unwrap();
        let info = |path: &str| FolderInfo {
            path: PathBuf::from(path),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mode: 0o777,
            mtime_ns: 1_234_567_891,
        };
        // Before the swap, it is done, on the handle.
        give_back_folder(
            &from,
            Path::new("a/b"),
            None,
            &info("/x/a/b"),
            Links::Refuse,
        )
        .unwrap();
        let b = std::fs::metadata(base.join("a/b")).unwrap();
        assert_eq!(b.permissions().mode() & 0o7777, 0o777);
        assert_eq!(
            b.modified().unwrap(),
            UNIX_EPOCH + Duration::from_nanos(1_234_567_891)
        );
        // `a` swapped for a link: neither `a` nor anything below it is reached through it.
        std::fs::rename(base.join("a"), base.join("a.moved")).unwrap();
        std::os::unix::fs::symlink(&victim, base.join("a")).unwrap();
        for rel in ["a", "a/b"] {
            let e = give_back_folder(&from, Path::new(rel), None, &info("/x/a"), Links::Refuse)
                .unwrap_err();
            assert!(e.contains("is a symlink: not followed"), "{e}");
        }
        for v in [&victim, &victim.join("b")] {
            let mode = std::fs::metadata(v).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o700, "{}", v.display());
        }
        // A folder the restore made, replaced by another (real) folder: left as it is.
        let mut made = Vec::new();
        from.reach_noting(Path::new("c"), Links::Refuse, &mut made)
            .unwrap();
        assert_eq!(made.len(), 1);
        std::fs::rename(base.join("c"), base.join("c.moved")).unwrap();
        std::fs::create_dir(base.join("c")).unwrap();
        std::fs::set_permissions(base.join("c"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = give_back_folder(
            &from,
            Path::new("c"),
            Some(made[0].id),
            &info("/x/c"),
            Links::Refuse,
        )
        .unwrap_err();
        assert!(e.contains("is not the folder the restore made"), "{e}");
        let mode = std::fs::metadata(base.join("c"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700);
        give_back_folder(
            &from,
            Path::new("c.moved"),
            Some(made[0].id),
            &info("/x/c"),
            Links::Refuse,
        )
        .unwrap();
    }

    #[test]
    fn a_restores_own_file_names_are_recognised_and_only_they() {
        let name = restore_temp_name(0xdead_beef);
        assert!(is_restore_temp(std::ffi::OsStr::new(&name)));
        for other in [
            ".peerstash-deadbeef.tmp",
            ".peerstash-00000000deadbeeg.tmp",
            "peerstash-00000000deadbeef.tmp.",
            "notes.tmp",
        ] {
            assert!(!is_restore_temp(std::ffi::OsStr::new(other)), "{other}");
        }
    }
}
