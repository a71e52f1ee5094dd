//! The caller's side of `backup` and `restore`. What the caller names is opened here, with the
//! caller's own rights, and sent to the daemon as a descriptor: the kernel decides what the
//! caller may read or write, and symlink tricks give it nothing it could not do already. A
//! restore is written by the daemon into a new 0600 file made here, then given its owner (when
//! the caller is root), mode, mtime and final name here.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use nix::fcntl::{openat, renameat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::{call_events, exit, shown, ClientError, ProgressEvent, Request, Restored};

type Answer = (i32, String, Option<serde_json::Value>);

/// Backs up `path` (absolute, symlinks resolved): opened here, sent as a descriptor.
pub async fn backup(
    socket: &Path,
    path: &Path,
    replication: Option<u8>,
    encrypt: bool,
    on_progress: impl FnMut(&ProgressEvent),
) -> Result<Answer, ClientError> {
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
    call_events(socket, &request, &[file.as_fd()], on_progress).await
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

/// Restores a version of `path` to `dest`: missing parent folders are made, an existing file is
/// replaced only with `force` (atomically either way), and nothing is left behind on failure.
pub async fn restore(
    socket: &Path,
    path: &Path,
    version: Option<u32>,
    dest: &Path,
    force: bool,
    on_progress: impl FnMut(&ProgressEvent),
) -> Result<Answer, ClientError> {
    let local = |what: &str, e: &dyn std::fmt::Display| {
        ClientError::Local(format!("{what} {}: {e}", shown(dest)))
    };
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(ClientError::Local(format!(
            "{}: not a file name to restore to",
            shown(dest)
        )));
    };
    if !force && std::fs::symlink_metadata(dest).is_ok() {
        let message = format!(
            "{} exists: pass --force to overwrite it, or --to another place",
            shown(dest)
        );
        return Ok((exit::FAILED, message, None));
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::create_dir_all(dir).map_err(|e| local("cannot create the folder of", &e))?;
    let dir = File::open(dir).map_err(|e| local("cannot open the folder of", &e))?;
    // A short name of its own, so that a 255-byte file name still has room.
    let tmp = restore_temp_name(rand::random());
    let flags =
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(
        Some(dir.as_raw_fd()),
        tmp.as_str(),
        flags,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| local("cannot create a file next to", &e))?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let out = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let request = Request::Restore {
        path: path.to_path_buf(),
        version,
    };
    let answer = call_events(socket, &request, &[out.as_fd()], on_progress).await;
    let finished = match answer {
        Ok((exit::OK, message, Some(data))) => serde_json::from_value::<Restored>(data)
            .map_err(|e| ClientError::BadReply(e.to_string()))
            .and_then(|r| {
                finish(&out, &r, &dir, &tmp, name, force)
                    .map_err(|e| local("cannot put the restored file in place at", &e))
            })
            .map(|()| {
                (
                    exit::OK,
                    format!("{message}; written to {}", shown(dest)),
                    None,
                )
            }),
        Ok(other) => Ok(other),
        Err(e) => Err(e),
    };
    if !matches!(finished, Ok((exit::OK, _, _))) {
        let _ = unlinkat(
            Some(dir.as_raw_fd()),
            tmp.as_str(),
            UnlinkatFlags::NoRemoveDir,
        );
    }
    finished
}

/// Owner (root only: others keep their own), then mode (after chown, which clears set-id bits),
/// mtime, sync, the final name, and a sync of the folder.
fn finish(
    out: &File,
    r: &Restored,
    dir: &File,
    tmp: &str,
    name: &std::ffi::OsStr,
    force: bool,
) -> std::io::Result<()> {
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
    let d = Some(dir.as_raw_fd());
    match force {
        true => renameat(d, tmp, d, name),
        false => renameat2(d, tmp, d, name, RenameFlags::RENAME_NOREPLACE),
    }
    .map_err(std::io::Error::from)?;
    dir.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

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
