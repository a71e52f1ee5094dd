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
use super::{meter, report, Done, Progress};
use crate::clock::unix_ms;
use crate::control::{exit, shown, Unit};
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
/// and counted.
pub(crate) async fn backup(
    node: &Arc<Node>,
    path: PathBuf,
    root: File,
    wanted: Wanted,
    owner: Option<u32>,
    progress: &Progress,
) -> Done {
    // Nothing on proc, sysfs and the like is read: a file there may say 0 bytes and read
    // forever (`/proc/self/pagemap`), a core burnt for as long as its caller lives.
    let looked = spawn_blocking(move || {
        fsx::refuse_pseudo(&root)?;
        root.metadata().map(|m| (m.is_dir(), root))
    });
    let root = match looked.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Done::failed(format!("cannot back up {}: {e}", shown(&path))),
        Err(e) => return Done::failed(e.to_string()),
    };
    let mut tally = Tally::default();
    let root = match root {
        (true, dir) => dir,
        (false, file) => {
            tally
                .back_up(node, &path, Ok(file), wanted, owner, progress)
                .await;
            return tally.done(node, &path);
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
            let opened = match spawn_blocking(move || found.open()).await {
                Ok(opened) => opened,
                Err(e) => return Done::failed(e.to_string()),
            };
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
        Ok(Err(e)) => return Done::failed(format!("cannot read {}: {e}", shown(&path))),
        Err(e) => return Done::failed(e.to_string()),
    }
    tally.done(node, &path)
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
struct Tally {
    ok: usize,
    below: usize,
    failed: usize,
    /// Not the caller's.
    skipped: usize,
    /// The fewest peers heard by a backup that ended below its RD, and that RD: why it did.
    short: Option<(usize, u8)>,
    last_error: String,
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

    /// The command's answer: a summary line, and the exit code of the worst outcome.
    fn done(self, node: &Node, path: &Path) -> Done {
        let (ok, below, failed, skipped) = (self.ok, self.below, self.failed, self.skipped);
        if skipped > 0 && ok + below + failed == 0 {
            return Done::failed(format!(
                "you may back up only files you own, and none below {} is yours",
                shown(path)
            ));
        }
        // In the final line, which a slow client never misses (progress lines it may).
        let not_yours = match skipped {
            0 => String::new(),
            n => format!(", {n} skipped (not yours)"),
        };
        let summary = format!(
            "{} files: {ok} fully replicated, {below} below their desired RD, {failed} failed{not_yours}",
            ok + below + failed
        );
        let code = if failed > 0 {
            exit::FAILED
        } else if below > 0 {
            exit::BELOW_RD
        } else {
            exit::OK
        };
        let mut message = if failed > 0 {
            format!("{summary} (last error: {})", self.last_error)
        } else {
            summary
        };
        if let Some((heard, rd)) = self.short {
            message.push_str(&format!(
                "; only {heard} other peers confirmed chunks, and RD {rd} needs {rd} other peers running with room in their quota (see their `peerstash state`)"
            ));
            if let Some(warning) = node.duplicate_id_warning() {
                message.push_str(&format!("; {warning}"));
            }
        }
        Done {
            code,
            message,
            data: None,
        }
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

/// Whether the file stayed as it was from `before` (before reading) to `after`: same size,
/// mtime and ctime (every write moves ctime, and nobody can set it back). A ctime that moved
/// while size and mtime did not (a hard link made or renamed, a chmod — or a write followed by
/// `touch -r`) is decided by the content: `same_content` says whether the two reads of the file
/// (the scan and the chunks) agreed. Both stamps come from the handle (fstat).
fn stable(before: &Stamp, after: &Stamp, same_content: bool) -> bool {
    before.size == after.size
        && before.mtime_ns == after.mtime_ns
        && (before.ctime_ns == after.ctime_ns || same_content)
}

struct Scanned {
    /// The file as it was before it was read.
    stamp: Stamp,
    content_hash: String,
    /// Whether it was the same after it was read (and as long as it said), leaving a moved
    /// ctime to the second read (`stable`).
    stable: bool,
}

/// Reads the file once, for its content hash: at most one byte more than its size at open, so
/// that a file that reads longer than it says (one that grows, or a kernel's made-up file) is
/// found changed after a bounded read, never read without end.
fn scan_file(file: File) -> std::io::Result<(File, Scanned)> {
    let stamp = Stamp::of(&file.metadata()?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    let mut bounded = (&file).take(stamp.size.saturating_add(1));
    loop {
        let n = bounded.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let scanned = Scanned {
        stamp,
        content_hash: hex(&hasher.finalize()),
        // A moved ctime alone is left to the second read (the chunks), compared with this one.
        stable: size == stamp.size && stable(&stamp, &Stamp::of(&file.metadata()?), true),
    };
    Ok((file, scanned))
}

/// Reads piece `no` of a `size`-byte file cut as `cut` says (short only for the last one).
fn read_piece(file: &File, cut: Cut, size: u64, no: ChunkNo) -> std::io::Result<Vec<u8>> {
    let len = cut.piece_len(size, no.0).unwrap_or(0);
    let mut piece = vec![0u8; len];
    file.read_exact_at(&mut piece, cut.offset(no))?;
    Ok(piece)
}

/// Backs up the file at `path`, which the daemon opens itself (a watched file, or one it
/// repairs): below its watched folder (or `/`) no symlink is followed, so a user who owns a
/// folder there cannot swap in a link to a file it may not read.
pub(crate) async fn backup_file(
    node: &Arc<Node>,
    path: &Path,
    plan: Plan,
) -> Result<BackupReport, BackupError> {
    let base = node
        .config()
        .watch_of(path)
        .map_or(PathBuf::from("/"), |w| w.path.clone());
    let file = spawn_blocking({
        let path = path.to_path_buf();
        move || fsx::open_under(&base, &path, fsx::Kind::File)
    })
    .await??;
    backup_handle(node, path, file, plan).await
}

/// Backs up the open file `file` under the name `path`, unless it is already backed up at
/// `desired` (`standing`): then only its version is reported.
pub(crate) async fn backup_handle(
    node: &Arc<Node>,
    path: &Path,
    file: File,
    plan: Plan,
) -> Result<BackupReport, BackupError> {
    backup_handle_as(node, path, file, plan, None, None).await
}

/// `backup_handle`, under the fileId `named` if given (a catalog snapshot, whose fileId comes
/// from its slot), else the one its identity gives; with its bytes sent so far on `progress`
/// if given.
pub(crate) async fn backup_handle_as(
    node: &Arc<Node>,
    path: &Path,
    file: File,
    plan: Plan,
    named: Option<FileId>,
    progress: Option<&Progress>,
) -> Result<BackupReport, BackupError> {
    let rd = Rd::new(plan.desired).unwrap_or_else(|| Rd::new(1).expect("1 is a valid RD"));
    let master = match plan.encrypt {
        true => Some(node.master_key_or_make().ok_or(BackupError::NoMasterKey)?),
        false => None,
    };
    let cut = Cut::of(plan.encrypt);
    let (file, now) = spawn_blocking(move || {
        fsx::refuse_pseudo(&file)?;
        file.metadata().map(|m| (file, Stamp::of(&m)))
    })
    .await??;
    let standing = standing_of(node, path, now, rd.get(), plan.encrypt).await?;
    if let Standing::AtRd { version } = standing {
        tracing::debug!(
            "{} is already backed up at RD {rd} (version {version}): nothing to send",
            path.display()
        );
        return Ok(BackupReport {
            version,
            size: now.size,
            chunks: cut.count(now.size),
            below: 0,
            peers_heard: 0,
        });
    }
    tracing::debug!("reading {} to back it up", path.display());
    // Bounded memory whatever the files: large ones a few at a time, the others within a
    // budget of bytes.
    let _memory = if now.size > (READ_BATCH * CHUNK_SIZE) as u64 {
        node.large_backups.acquire().await
    } else {
        let kib = (now.size.div_ceil(1024) as u32).saturating_add(FILE_OVERHEAD_KIB);
        (node.small_backups)
            .acquire_many(kib.min(SMALL_FILES_MEMORY_KIB))
            .await
    }
    .map_err(|_| BackupError::Stopping)?;
    let (file, scanned) = spawn_blocking(move || scan_file(file)).await??;
    if !scanned.stable {
        // Being written: what was read is no version of the file. Nothing was recorded.
        return Err(BackupError::Changed);
    }
    let stamp = scanned.stamp;
    let chunks = cut.count(stamp.size);
    if chunks > u64::from(crate::protocol::message::MAX_CHUNK_NO) + 1 {
        return Err(BackupError::TooLarge);
    }
    let identity = FileIdentity {
        peer: node.id,
        path: path.as_os_str().as_bytes(),
        size: stamp.size,
        mtime_ns: stamp.mtime_ns,
        content_hash: &scanned.content_hash,
    };
    // An encrypted attempt's fileId is random (`MasterKey::file_id`): a resumable version of
    // the same content is looked up by that content instead (`Catalog::sealed_version`).
    let (sealed, snapshot) = (named.is_none() && master.is_some(), named.is_some());
    let file_id = match (named, &master) {
        (Some(named), _) => named,
        (None, Some(master)) => master.file_id(&identity, &Attempt(rand::random())),
        (None, None) => identity.file_id(),
    };
    let row = FileRow {
        file_id: file_id.clone(),
        path: path.to_path_buf(),
        version: 0,
        size: stamp.size,
        mtime_ns: stamp.mtime_ns,
        mode: stamp.mode,
        content_hash: scanned.content_hash.clone(),
        desired_rd: rd.get(),
        complete: false,
        inode: stamp.inode,
        uid: stamp.uid,
        gid: stamp.gid,
        deleted_at: None,
        ctime_ns: stamp.ctime_ns,
        encrypted: plan.encrypt,
        key_fp: master.as_ref().map(MasterKey::fingerprint),
    };
    // The same content backed up again is the same version: resume it (only chunks below
    // their RD are sent again), under the RD asked now. Either way the path exists: its
    // versions no longer expire as deleted.
    let backup = BackupId::new();
    let Begun {
        file_id,
        version,
        resumed,
        was_complete,
    } = (node.catalog)
        .begin_or_resume_version(row, sealed, backup)
        .await?;
    let key = master.map(|m| Arc::new(m.file_key(&file_id)));

    let file = Arc::new(file);
    // Reading, hashing and recording chunks runs ahead of sending them, a few batches deep.
    let (ready_tx, mut ready) = mpsc::channel::<Prepared>(2 * READ_BATCH);
    let reader = tokio::spawn(prepare_chunks(
        node.clone(),
        Reading {
            file: file.clone(),
            file_id: file_id.clone(),
            size: stamp.size,
            cut,
            key: key.clone(),
        },
        resumed,
        ready_tx,
    ));
    // Chunks go to the engine as its window gives room (`Credit`); it says how each ended.
    let mut job = node.start_job(JobKind::Backup);
    let mut heard = std::collections::HashSet::new();
    let (mut sent, mut below, mut resent, mut unplaced) = (0u64, 0u64, 0u64, 0u64);
    let (mut credit, mut outstanding, mut reading) = (0usize, 0u64, true);
    while reading || outstanding > 0 {
        tokio::select! {
            next = ready.recv(), if reading && credit > 0 => {
                let Some(p) = next else {
                    reading = false;
                    continue;
                };
                let chunk = ChunkId {
                    file_id: file_id.clone(),
                    chunk_no: p.chunk_no,
                };
                let source = Source::File {
                    file: file.clone(),
                    offset: cut.offset(p.chunk_no),
                    len: p.piece_len,
                    hash: p.hash,
                    key: key.clone(),
                };
                node.engine(Input::BackupChunk {
                    job: job.id,
                    chunk,
                    rd,
                    body: p.body,
                    known: p.known,
                    source,
                });
                credit -= 1;
                outstanding += 1;
                sent += 1;
            }
            event = job.events.recv() => match event {
                Some(JobEvent::Credit(n)) => credit += n,
                Some(JobEvent::BackedUp(o)) => {
                    outstanding -= 1;
                    if let Some(progress) = progress {
                        let done = (sent - outstanding) * cut.piece();
                        meter(progress, done.min(stamp.size), stamp.size, Unit::Bytes);
                    }
                    heard.extend(o.holders.iter().copied().filter(|p| *p != node.id));
                    resent += u64::from(o.sends.saturating_sub(1));
                    if !o.reached {
                        below += 1;
                    }
                    // No peer took it, all its sends spent (not cut short by a change).
                    if o.stopped.is_none() && o.holders.iter().all(|p| *p == node.id) {
                        unplaced += 1;
                    }
                }
                Some(JobEvent::Fetched(..)) => {}
                // The engine stopped: the daemon is stopping. The version stays unfinished and
                // is resumed (only the missing chunks) by the next backup.
                None => return Err(BackupError::Stopping),
            },
        }
    }
    drop(job);
    // The file must have stayed as it was scanned: same bytes, same size, mtime and ctime from
    // before the first read to after the last (a ctime that alone moved is judged by the bytes:
    // both reads agreed, or the rehash check fails). Otherwise it is still being written (a copy the
    // kernel makes in one call sends no event for its whole length): try again once quiet.
    let checked = match reader.await? {
        Err(e) => Err(e),
        Ok(_) if sent != chunks => Err(BackupError::Changed),
        Ok((rehash, after)) => {
            let same_content = rehash == scanned.content_hash;
            match same_content && stable(&stamp, &after, same_content) {
                true => Ok(()),
                false => Err(BackupError::Changed),
            }
        }
    };
    if let Err(e) = checked {
        // A catalog snapshot's fileId (and key) comes from its slot: its version row stays,
        // so that the slot is never given back and sealed again with other bytes
        // (`Catalog::release_snapshot`).
        if matches!(e, BackupError::Changed) {
            let resumed = resumed || snapshot;
            abandon(node, path, &file_id, version, resumed, sealed, backup).await?;
        }
        return Err(e);
    }
    // Some chunks found no peer at all while others were stored: the peers are full. An
    // unfinished version is not kept half on them (its chunks are freed for the other files)
    // and the file is refused, not sent again and again (`service::queue`).
    if unplaced > 0 && !heard.is_empty() && !snapshot && !was_complete {
        let f = file_id.clone();
        let now_ms = unix_ms();
        let forgotten = node.catalog.forget(&f, Forget::DoesNotFit, now_ms).await?;
        if forgotten {
            tracing::info!(
                "{}: {unplaced} of {chunks} chunks found no peer with room: version {version} dropped from the peers",
                shown(path)
            );
            tokio::spawn(send_pending_deletes(node.clone()));
        }
        return Err(BackupError::DoesNotFit { size: stamp.size });
    }
    let recorded = (node.catalog)
        .complete_version(&file_id, stamp.inode, stamp.ctime_ns)
        .await?;
    if !recorded {
        return Err(BackupError::Deleted);
    }
    tracing::info!(
        "backed up {} ({chunks} chunks, {resent} PUTCHUNKs resent)",
        shown(path)
    );
    Ok(BackupReport {
        version,
        size: stamp.size,
        chunks,
        below,
        peers_heard: heard.len(),
    })
}

/// A backup found the file changed while reading it. A version it resumed (complete or not) is
/// left exactly as it was; a version it inserted is forgotten (its chunks deleted from the peers)
/// — through `Catalog::forget`, which refuses anything else. An unfinished encrypted (`sealed`)
/// version it resumed is not resumed again: a chunk of it may now be recorded with the changed
/// bytes, and the next backup makes a new version under a key of its own.
async fn abandon(
    node: &Arc<Node>,
    path: &Path,
    file_id: &FileId,
    version: u32,
    resumed: bool,
    sealed: bool,
    backup: BackupId,
) -> Result<(), BackupError> {
    if resumed {
        if sealed {
            node.catalog.stop_resuming(file_id).await?;
        }
        tracing::info!(
            "{} changed while being read: its version {version} is left as it was",
            path.display()
        );
        return Ok(());
    }
    let forgotten = (node.catalog)
        .forget(file_id, Forget::Abandoned { backup }, unix_ms())
        .await?;
    if forgotten {
        tracing::info!(
            "{} changed while being read: the version {version} begun is dropped",
            path.display()
        );
        tokio::spawn(send_pending_deletes(node.clone()));
    }
    Ok(())
}

/// A chunk read, hashed and recorded in the catalog, ready to be sent.
struct Prepared {
    chunk_no: ChunkNo,
    body: Vec<u8>,
    /// The length of the file's piece it holds (its body's, unless encrypted).
    piece_len: usize,
    hash: String,
    known: Vec<PeerId>,
}

/// What `prepare_chunks` reads: the file, the version it is, and how its chunks are made.
struct Reading {
    file: Arc<File>,
    file_id: FileId,
    size: u64,
    cut: Cut,
    /// The file's key when its chunks are encrypted.
    key: Option<Arc<FileKey>>,
}

/// Reads the file chunk by chunk, records each chunk's size and hash in the catalog (before its
/// first PUTCHUNK, so every STORED finds its chunk) and hands it on. Returns the content hash of
/// what it read, to be compared with the one the fileId was made from, and the file's stamp
/// right after the last read. A chunk recorded before with other bytes (a resumed version, and
/// the file changed since) stops it with `Changed` before that chunk is recorded or sent.
async fn prepare_chunks(
    node: Arc<Node>,
    reading: Reading,
    resumed: bool,
    ready: mpsc::Sender<Prepared>,
) -> Result<(String, Stamp), BackupError> {
    let reading = Arc::new(reading);
    let chunks = reading.cut.count(reading.size);
    let mut rehash = Sha256::new();
    let mut next = 0u64;
    while next < chunks {
        let batch = (READ_BATCH as u64).min(chunks - next);
        // Read (and encrypted) away from the runtime; the content hash is of the plaintext.
        let (read, hashed) = spawn_blocking({
            let (r, first) = (reading.clone(), next);
            move || -> std::io::Result<_> {
                let mut read = Vec::with_capacity(batch as usize);
                for no in (first..first + batch).map(|no| ChunkNo(no as u32)) {
                    let piece = read_piece(&r.file, r.cut, r.size, no)?;
                    rehash.update(&piece);
                    let piece_len = piece.len();
                    let body = match &r.key {
                        Some(key) => key.seal(no, &piece),
                        None => piece,
                    };
                    let hash = sha256_hex(&body);
                    read.push((no, body, piece_len, hash));
                }
                Ok((read, rehash))
            }
        })
        .await??;
        rehash = hashed;
        let rows: Vec<(ChunkNo, u64, String)> = (read.iter())
            .map(|(no, body, _, hash)| (*no, body.len() as u64, hash.clone()))
            .collect();
        let known = (node.catalog)
            .record_chunks(&reading.file_id, rows, resumed)
            .await?;
        let same = known.len() == read.len();
        // Chunks up to the first one that differs are as recorded: they may still be sent.
        for ((chunk_no, body, piece_len, hash), known) in read.into_iter().zip(known) {
            let p = Prepared {
                chunk_no,
                body,
                piece_len,
                hash,
                known,
            };
            if ready.send(p).await.is_err() {
                return Err(BackupError::Changed);
            }
            next += 1;
        }
        if !same {
            return Err(BackupError::Changed);
        }
    }
    let file = reading.file.clone();
    let after = spawn_blocking(move || file.metadata()).await??;
    Ok((hex(&rehash.finalize()), Stamp::of(&after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file as the catalog recorded it: version 3, complete, desired RD 2.
    fn row(stamp: &Stamp) -> FileRow {
        FileRow {
            file_id: FileId::from_digest(&[7; 32]),
            path: PathBuf::from("/w/f"),
            version: 3,
            size: stamp.size,
            mtime_ns: stamp.mtime_ns,
            mode: stamp.mode,
            content_hash: "00".repeat(32),
            desired_rd: 2,
            complete: true,
            inode: stamp.inode,
            uid: stamp.uid,
            gid: stamp.gid,
            deleted_at: None,
            ctime_ns: stamp.ctime_ns,
            encrypted: false,
            key_fp: None,
        }
    }

    fn stamp() -> Stamp {
        Stamp {
            size: 1000,
            mtime_ns: 1_700_000_000_000_000_001,
            ctime_ns: 1_700_000_000_500_000_000,
            inode: 42,
            uid: 1000,
            gid: 1000,
            mode: 0o644,
            nlink: 1,
        }
    }

    #[test]
    fn the_same_file_complete_at_its_rd_is_already_backed_up() {
        let now = stamp();
        let f = row(&now);
        assert_eq!(
            standing(Some(&f), 2, &now, 2, false),
            Standing::AtRd { version: 3 }
        );
        // More holders than asked: still at RD (the surplus settles at the next reclaim).
        assert_eq!(
            standing(Some(&f), 4, &now, 2, false),
            Standing::AtRd { version: 3 }
        );
        // Owner, mode and links are no part of it (a chmod moves the ctime, which is).
        let other = Stamp {
            uid: 0,
            mode: 0o600,
            nlink: 2,
            ..now
        };
        assert_eq!(
            standing(Some(&f), 2, &other, 2, false),
            Standing::AtRd { version: 3 }
        );
    }

    #[test]
    fn a_file_not_at_the_rd_asked_is_resumed_not_read_as_new() {
        let now = stamp();
        let f = row(&now);
        // A chunk with one holder short.
        assert_eq!(
            standing(Some(&f), 1, &now, 2, false),
            Standing::BelowRd { version: 3 }
        );
        // Another RD asked, higher or lower: the version is backed up again under it.
        assert_eq!(
            standing(Some(&f), 3, &now, 3, false),
            Standing::BelowRd { version: 3 }
        );
        assert_eq!(
            standing(Some(&f), 2, &now, 1, false),
            Standing::BelowRd { version: 3 }
        );
        // No chunk recorded with a holder at all.
        assert_eq!(
            standing(Some(&f), 0, &now, 1, false),
            Standing::BelowRd { version: 3 }
        );
    }

    #[test]
    fn a_file_other_than_its_newest_version_must_be_read() {
        let now = stamp();
        let f = row(&now);
        assert_eq!(standing(None, 0, &now, 2, false), Standing::Read(Why::New));
        for changed in [
            Stamp { size: 999, ..now },
            Stamp {
                mtime_ns: now.mtime_ns + 1,
                ..now
            },
        ] {
            assert_eq!(
                standing(Some(&f), 2, &changed, 2, false),
                Standing::Read(Why::Changed)
            );
        }
        for touched in [
            Stamp {
                ctime_ns: now.ctime_ns + 1,
                ..now
            },
            Stamp { inode: 43, ..now },
        ] {
            assert_eq!(
                standing(Some(&f), 2, &touched, 2, false),
                Standing::Read(Why::Touched)
            );
        }
        let unfinished = FileRow {
            complete: false,
            ..f.clone()
        };
        assert_eq!(
            standing(Some(&unfinished), 2, &now, 2, false),
            Standing::Read(Why::Unfinished)
        );
        let deleted = FileRow {
            deleted_at: Some(1_700_000_100),
            ..f.clone()
        };
        assert_eq!(
            standing(Some(&deleted), 2, &now, 2, false),
            Standing::Read(Why::Deleted)
        );
        // Encrypted now, in clear before (or the other way round): a new version.
        assert_eq!(
            standing(Some(&f), 2, &now, 2, true),
            Standing::Read(Why::Encryption)
        );
        // The scans ask only this half: whatever the RD, the same file is unchanged.
        assert!(unchanged(Some(&f), &now).is_ok());
        assert_eq!(unchanged(Some(&deleted), &now).err(), Some(Why::Deleted));
    }

    #[test]
    fn a_file_is_read_no_further_than_its_size_at_open() {
        // /dev/zero says 0 bytes and reads forever (as /proc/PID/pagemap does): the read must
        // end, and find the file changed. On a thread, so that a read without end fails the
        // test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let zero = File::open("/dev/zero").unwrap();
            let _ = tx.send(scan_file(zero).map(|(_, s)| s.stable));
        });
        let scanned = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert!(matches!(scanned, Ok(Ok(false))), "{scanned:?}");
        // A regular file is read whole, and stable.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), vec![7u8; 3_000_000]).unwrap();
        let (_, s) = scan_file(File::open(d.path().join("f")).unwrap()).unwrap();
        assert!(s.stable);
        assert_eq!(s.content_hash, sha256_hex(&vec![7u8; 3_000_000]));
    }

    #[test]
    fn a_file_is_stable_while_read_unless_its_size_mtime_or_content_moved() {
        let before = stamp();
        assert!(stable(&before, &before, false));
        let touched = Stamp {
            ctime_ns: before.ctime_ns + 1,
            ..before
        };
        assert!(stable(&before, &touched, true), "a chmod while it was read");
        assert!(!stable(&before, &touched, false), "a write, then touch -r");
        let grown = Stamp {
            size: before.size + 1,
            ..touched
        };
        assert!(!stable(&before, &grown, true));
    }
}
