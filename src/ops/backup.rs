//! `peerstash backup PATH` and the watched folders' backups: a file (or every file below a
//! folder, walked through handles) scanned, recorded as a version, read chunk by chunk and
//! handed to the engine, then checked unchanged before the version counts as complete.

use std::fs::File;
use std::io::Read;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::{spawn_blocking, JoinError, JoinSet};

use super::delete::send_pending_deletes;
use super::{meter, report, Progress};
use crate::clock::unix_ms;
use crate::control::{shown, Unit};
use crate::daemon::inbox::{Input, JobEvent, Source};
use crate::daemon::Node;
use crate::daemon::SMALL_FILES_MEMORY_KIB;
use crate::engine::peer::JobKind;
use crate::fsx::{self, Stamp};
use crate::protocol::seal::{Attempt, Cut, FileKey, MasterKey};
use crate::protocol::{
    hex, sha256_hex, ChunkId, ChunkNo, FileId, FileIdentity, PeerId, Rd, CHUNK_SIZE,
};
use crate::store::{BackupId, Begun, FileRow, Forget, StoreError};

mod file;
pub(crate) use file::*;

/// Chunks read and recorded in the catalog in one go before they are sent.
const READ_BATCH: usize = 32;

/// Files handed from the walk of a folder to its backups at once.
const WALK_BATCH: usize = 64;
/// Files of one folder backed up at once at most, each with its own window of chunks: a small
/// file's backup is mostly the wait for its STOREDs (0.2-0.5 s), so it takes many at once to
/// back up thousands a second. Their memory is bounded by `SMALL_FILES_MEMORY_KIB`, and each
/// holds a descriptor (at most a quarter of the daemon's, `files_at_once`).
const FILES_AT_ONCE: usize = 2048;
const FILE_OVERHEAD_KIB: u32 = 4;

/// How many files one backup has in flight: `FILES_AT_ONCE`, or fewer if the daemon may open
/// few files (a quarter of its descriptors, the rest for its sockets, packs and catalog).
fn files_at_once() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 4).map_or(FILES_AT_ONCE, |n| n.clamp(16, FILES_AT_ONCE))
}

/// What a file's backup task returns: its name, its desired RD and how it ended.
type FileBackup = (PathBuf, u8, Result<BackupReport, BackupError>);

/// What a `backup` command asks beyond its path.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Wanted {
    /// The desired RD (default: the watched folder's, else 2).
    pub replication: Option<u8>,
    /// Encrypt whatever the watched folder says (else as it says; in clear outside them).
    pub encrypt: bool,
}

/// How one file is to be backed up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub desired: u8,
    pub encrypt: bool,
}

impl Plan {
    /// As asked, else as the watched folder holding `path` says (RD 2 and in clear outside
    /// them).
    fn asked(node: &Node, path: &Path, wanted: Wanted) -> Plan {
        let config = node.config();
        let watch = config.watch_of(path);
        Plan {
            desired: wanted
                .replication
                .unwrap_or_else(|| watch.map_or(2, |w| w.replication)),
            encrypt: wanted.encrypt || watch.is_some_and(|w| w.encrypt),
        }
    }
}

/// Backs up what `root` names: a file, or every regular file below a folder (walked through
/// handles, symlinks never followed, each file opened from the handle of the folder it was
/// found in). `path` is the name the caller gave it (checked to be the same file). `owner`: a
/// non-root caller's uid; only its own files and folders are backed up, the others are skipped
/// and counted. Returns how its files ended (`server::backup` words the reply).
pub(crate) async fn backup(
    node: &Arc<Node>,
    path: PathBuf,
    root: File,
    wanted: Wanted,
    owner: Option<u32>,
    progress: &Progress,
) -> Result<Tally, Stopped> {
    // Nothing on proc, sysfs and the like is read: a file there may say 0 bytes and read
    // forever (`/proc/self/pagemap`), a core burnt for as long as its caller lives.
    let looked = spawn_blocking(move || {
        fsx::refuse_pseudo(&root)?;
        root.metadata().map(|m| (m.is_dir(), root))
    });
    let root = match looked.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(Stopped::Open(path, e)),
        Err(e) => return Err(e.into()),
    };
    let mut tally = Tally::default();
    let root = match root {
        (true, dir) => dir,
        (false, file) => {
            tally
                .back_up(node, &path, Ok(file), wanted, owner, progress)
                .await;
            return Ok(tally);
        }
    };
    // The walk runs ahead of the backups by a batch or two; a huge folder is never listed
    // whole in memory.
    let (tx, mut batches) = mpsc::channel::<Vec<fsx::Found>>(1);
    let walker = spawn_blocking(move || {
        let walk = fsx::Walk {
            owner,
            batch: WALK_BATCH,
            max_depth: fsx::DEPTH_LIMIT,
        };
        walk.run(
            &root,
            |_, _| true,
            |batch| match tx.blocking_send(batch) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            },
        )
    });
    // Many files at once: a small file's backup is mostly the wait for its STOREDs, and the
    // catalog commits what the files ask of it at the same moment in one transaction.
    let mut running = Running::default();
    let at_once = files_at_once();
    while let Some(batch) = batches.recv().await {
        for found in batch {
            while running.tasks.len() >= at_once {
                tally.ended(running.next().await, progress);
            }
            let file_path = path.join(&found.rel);
            let opened = spawn_blocking(move || found.open()).await?;
            if let Some((file, plan)) =
                tally.admit(node, &file_path, opened, wanted, owner, progress)
            {
                let node = node.clone();
                let task = running.tasks.spawn({
                    let file_path = file_path.clone();
                    async move {
                        let r = backup_handle(&node, &file_path, file, plan).await;
                        (file_path, plan.desired, r)
                    }
                });
                running.names.insert(task.id(), file_path);
            }
        }
    }
    while !running.tasks.is_empty() {
        tally.ended(running.next().await, progress);
    }
    match walker.await {
        Ok(Ok(walked)) => {
            for (rel, e) in walked.unreadable {
                tally.failed(&path.join(rel), format!("cannot read: {e}"), progress);
            }
            // Below the caller's own folder: its names are the caller's to see.
            if let Some(first) = walked.too_deep.first() {
                let error = format!(
                    "{} folders more than {} levels deep are not backed up (a backup goes no deeper)",
                    walked.too_deep_count,
                    fsx::DEPTH_LIMIT
                );
                tally.failed(&path.join(first), error, progress);
            }
        }
        Ok(Err(e)) => return Err(Stopped::Read(path, e)),
        Err(e) => return Err(e.into()),
    }
    Ok(tally)
}

/// Why a `backup` command stopped before it could count its files.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stopped {
    #[error("cannot back up {}: {1}", shown(.0))]
    Open(PathBuf, std::io::Error),
    #[error("cannot read {}: {1}", shown(.0))]
    Read(PathBuf, std::io::Error),
    #[error("{0}")]
    Join(#[from] JoinError),
}

/// The files of one `backup` command being backed up, and their names by task (so that a task
/// that panicked is reported under its file's name).
#[derive(Default)]
struct Running {
    tasks: JoinSet<FileBackup>,
    names: std::collections::HashMap<tokio::task::Id, PathBuf>,
}

impl Running {
    async fn next(&mut self) -> Option<Result<FileBackup, (PathBuf, JoinError)>> {
        Some(match self.tasks.join_next_with_id().await? {
            Ok((id, done)) => {
                self.names.remove(&id);
                Ok(done)
            }
            Err(e) => {
                let name = self.names.remove(&e.id()).unwrap_or_else(|| "?".into());
                Err((name, e))
            }
        })
    }
}

/// How the files of one `backup` command ended.
#[derive(Default)]
pub(crate) struct Tally {
    pub ok: usize,
    pub below: usize,
    pub failed: usize,
    /// Not the caller's.
    pub skipped: usize,
    /// The fewest peers heard by a backup that ended below its RD, and that RD: why it did.
    pub short: Option<(usize, u8)>,
    pub last_error: String,
    /// Files admitted so far (the walk goes on while the first ones are backed up).
    admitted: usize,
}

impl Tally {
    /// Backs up one file, `opened` under the name `file_path`, and reports how it ended.
    async fn back_up(
        &mut self,
        node: &Arc<Node>,
        file_path: &Path,
        opened: std::io::Result<File>,
        wanted: Wanted,
        owner: Option<u32>,
        progress: &Progress,
    ) {
        if let Some((file, plan)) = self.admit(node, file_path, opened, wanted, owner, progress) {
            // One file: its bytes are the progress.
            let r = backup_handle_as(node, file_path, file, plan, None, Some(progress)).await;
            self.record(file_path, plan.desired, r, progress);
        }
    }

    /// A file to back up, with how, unless it could not be opened or is not the caller's
    /// (counted here).
    fn admit(
        &mut self,
        node: &Node,
        file_path: &Path,
        opened: std::io::Result<File>,
        wanted: Wanted,
        owner: Option<u32>,
        progress: &Progress,
    ) -> Option<(File, Plan)> {
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                self.failed(file_path, e.to_string(), progress);
                return None;
            }
        };
        // The owner as the handle says, never as a path looked up again.
        if owner.is_some_and(|uid| file.metadata().map(|m| m.uid()).ok() != Some(uid)) {
            self.skipped += 1;
            return None;
        }
        self.admitted += 1;
        Some((file, Plan::asked(node, file_path, wanted)))
    }

    /// A file's backup task ended (a task that panicked, with its file's name).
    fn ended(
        &mut self,
        ended: Option<Result<FileBackup, (PathBuf, JoinError)>>,
        progress: &Progress,
    ) {
        match ended {
            Some(Ok((file_path, desired, r))) => self.record(&file_path, desired, r, progress),
            Some(Err((file_path, e))) => {
                self.failed(&file_path, format!("internal error: {e}"), progress)
            }
            None => {}
        }
    }

    fn record(
        &mut self,
        file_path: &Path,
        desired: u8,
        r: Result<BackupReport, BackupError>,
        progress: &Progress,
    ) {
        let ended = self.ok + self.below + self.failed + 1;
        if self.admitted > 1 {
            meter(progress, ended as u64, self.admitted as u64, Unit::Files);
        }
        match r {
            Ok(r) => {
                let state = if r.below == 0 {
                    self.ok += 1;
                    format!("every chunk at RD ≥ {desired}")
                } else {
                    self.below += 1;
                    self.short = Some(
                        self.short
                            .map_or((r.peers_heard, desired), |(n, d)| (n.min(r.peers_heard), d)),
                    );
                    format!("{} of {} chunks below RD {desired}", r.below, r.chunks)
                };
                report(
                    progress,
                    format!(
                        "backed up {} (version {}, {} bytes, {} chunks): {state}",
                        shown(file_path),
                        r.version,
                        r.size,
                        r.chunks
                    ),
                );
            }
            Err(e) => self.failed(file_path, e.to_string(), progress),
        }
    }

    fn failed(&mut self, file_path: &Path, error: String, progress: &Progress) {
        self.failed += 1;
        self.last_error = format!("{}: {error}", shown(file_path));
        report(progress, format!("failed {}", self.last_error));
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BackupError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the file changed while it was being backed up; back it up again once it is stable")]
    Changed,
    #[error("encryption is asked but this peer has no master key: set peer.master_key_file to it (or make one with `peerstash keygen PATH`) and restart peerstashd")]
    NoMasterKey,
    #[error("the file is larger than the protocol's 64 GB limit")]
    TooLarge,
    #[error("this version was deleted (`peerstash delete`?) while it was being backed up")]
    Deleted,
    #[error("the daemon stopped before this request ended; run it again once the daemon is back (only the chunks still missing are sent)")]
    Stopping,
    #[error("does not fit on the peers ({size} bytes, peers full): not backed up; free space or lower RD")]
    DoesNotFit { size: u64 },
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub(crate) struct BackupReport {
    pub version: u32,
    pub size: u64,
    pub chunks: u64,
    pub below: u64,
    /// Distinct peers that confirmed at least one chunk of this backup (none when the file was
    /// already backed up at its RD: nothing was sent).
    pub peers_heard: usize,
    /// A new version of a path that had one: its content changed (what the history's guard
    /// counts).
    pub changed: bool,
    /// That new version looks like ciphertext where the one before did not (`history`).
    pub turned_random: bool,
}

/// Why a file must be read (again) to be backed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// The path has no version yet.
    New,
    /// Its size or mtime is not its newest version's: other content.
    Changed,
    /// Same size and mtime, but another ctime or inode: a chmod, a new hard link, a copy that
    /// kept the times renamed over it — or a write followed by `touch -r`. Only the content can
    /// tell: the same content is the same fileId, and that version is resumed.
    Touched,
    /// Its newest version is this file, but was never completed (a backup cut short): resumed.
    Unfinished,
    /// Its newest version is this file, but was marked deleted (the file was found gone): it is
    /// back, and the backup says so.
    Deleted,
    /// Its newest version is this file, encrypted where it is now to be in clear or the other
    /// way round: a new version (an encrypted version's fileId is not the clear one's).
    Encryption,
}

/// Where a file stands for a backup at some RD (`standing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Already backed up at this RD: nothing to read nor send.
    AtRd { version: u32 },
    /// This very file is its newest version, complete, but not at this RD: backed up under
    /// another desired RD, or a chunk has fewer holders. A backup reads it again (the same
    /// content is the same fileId), resumes the version, and sends only chunks below the RD.
    BelowRd { version: u32 },
    /// It must be read, and is a new version unless its content is that of the newest.
    Read(Why),
}

/// **Is this file already backed up at this RD?** The one rule, for the watched folders' queue
/// and for `peerstash backup` (and, its first half `unchanged`, for the scans). `latest` is the
/// path's newest version in the catalog and `min_perceived_rd` the fewest holders any of its
/// chunks has; `stamp` is the file as a `stat` shows it now; `rd` the desired RD asked.
///
/// Yes when the newest version is this very file — same size and mtime (the content), same
/// ctime (which every write moves and nobody can set back) and same inode (not another file
/// with the same times) — complete, not marked deleted, backed up under this desired RD, and
/// every chunk held by at least `rd` peers. Then a backup would read the whole file to send
/// nothing.
pub(crate) fn standing(
    latest: Option<&FileRow>,
    min_perceived_rd: u32,
    stamp: &Stamp,
    rd: u8,
    encrypt: bool,
) -> Standing {
    match unchanged(latest, stamp) {
        Err(why) => Standing::Read(why),
        Ok(f) if f.encrypted != encrypt => Standing::Read(Why::Encryption),
        Ok(f) if f.desired_rd == rd && min_perceived_rd >= u32::from(rd) => {
            Standing::AtRd { version: f.version }
        }
        Ok(f) => Standing::BelowRd { version: f.version },
    }
}

/// The first half of `standing`, whatever the RD: the newest version if it is this very file
/// (same size, mtime, ctime and inode), complete and not marked deleted; else why not. A scan
/// queues the files that are not; the queue then asks the whole rule.
pub(crate) fn unchanged<'a>(
    latest: Option<&'a FileRow>,
    stamp: &Stamp,
) -> Result<&'a FileRow, Why> {
    let f = latest.ok_or(Why::New)?;
    if f.size != stamp.size || f.mtime_ns != stamp.mtime_ns {
        Err(Why::Changed)
    } else if f.ctime_ns != stamp.ctime_ns || f.inode != stamp.inode {
        Err(Why::Touched)
    } else if !f.complete {
        Err(Why::Unfinished)
    } else if f.deleted_at.is_some() {
        Err(Why::Deleted)
    } else {
        Ok(f)
    }
}

/// `standing` of the file at `path` (as `stamp` shows it) against the catalog.
pub(crate) async fn standing_of(
    node: &Arc<Node>,
    path: &Path,
    stamp: Stamp,
    rd: u8,
    encrypt: bool,
) -> Result<Standing, StoreError> {
    let running = node.master_key().map(|k| k.fingerprint());
    let (latest, min) = match node.catalog.latest_with_rd(path).await? {
        Some((f, min)) => (Some(f), min),
        None => (None, 0),
    };
    // Encrypted under another master key (`peerstashd --new-master-key`): this peer
    // can no longer restore it, so the file is backed up again under its own key.
    if let Some(f) = latest.as_ref().filter(|f| other_key(f, running.as_deref())) {
        if encrypt && unchanged(Some(f), &stamp).is_ok() {
            return Ok(Standing::Read(Why::Encryption));
        }
    }
    Ok(standing(latest.as_ref(), min, &stamp, rd, encrypt))
}

/// Whether `f` is encrypted under a master key other than the running one (fingerprint
/// `running`). A version recorded before fingerprints were kept counts as the running key's.
pub(crate) fn other_key(f: &FileRow, running: Option<&str>) -> bool {
    f.encrypted && f.key_fp.is_some() && f.key_fp.as_deref() != running
}

#[cfg(test)]
mod tests;
