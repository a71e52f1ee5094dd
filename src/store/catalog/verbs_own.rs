//! The named verbs of `CatalogHandle` on our own files: versions and their chunks, folders and
//! deleted paths, the queue, catalog snapshots and `meta`. Each runs one `Catalog` method (its
//! rule is there) on the catalog thread and returns once it is committed.

use super::*;
use crate::clock::unix_ms;
use crate::protocol::seal::SnapshotNo;

impl CatalogHandle {
    // ---- versions ----------------------------------------------------------------------

    /// The version `file_id`, if still kept.
    pub async fn file(&self, file_id: &FileId) -> Result<Option<FileRow>, StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.file(&f)).await
    }

    /// The versions of exactly `path` (`Catalog::versions`).
    pub async fn versions(&self, path: &Path) -> Result<Vec<FileRow>, StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.versions(&p)).await
    }

    /// The versions of `path`, oldest first (`Catalog::versions_of`).
    pub async fn versions_of(&self, path: &Path) -> Result<Vec<FileRow>, StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.versions_of(&p)).await
    }

    /// The versions of `path` (only `owner`'s if given), each with its lowest perceived RD.
    pub async fn versions_with_rd(
        &self,
        path: &Path,
        owner: Option<u32>,
    ) -> Result<Vec<(FileRow, u32)>, StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.versions_with_rd(&p, owner)).await
    }

    /// The newest version of `path` and the lowest perceived RD of its chunks.
    pub async fn latest_with_rd(&self, path: &Path) -> Result<Option<(FileRow, u32)>, StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.latest_with_rd(&p)).await
    }

    /// The newest version of each of `paths`, in their order, read together.
    pub async fn latest_of(&self, paths: Vec<PathBuf>) -> Result<Vec<Option<FileRow>>, StoreError> {
        self.call(move |c| paths.iter().map(|p| c.latest(p)).collect())
            .await
    }

    /// The paths whose newest version has inode `inode` (its other hard-linked names).
    pub async fn latest_paths_with_inode(&self, inode: u64) -> Result<Vec<PathBuf>, StoreError> {
        self.call(move |c| c.latest_paths_with_inode(inode)).await
    }

    /// Resume or insert a version (`Catalog::begin_or_resume_version`).
    pub async fn begin_or_resume_version(
        &self,
        row: FileRow,
        sealed: bool,
        backup: BackupId,
    ) -> Result<Begun, StoreError> {
        self.call(move |c| c.begin_or_resume_version(&row, sealed, backup))
            .await
    }

    /// Records a batch of chunks read (`Catalog::record_chunks`); returns the holders known of
    /// each recorded one.
    pub async fn record_chunks(
        &self,
        file_id: &FileId,
        rows: Vec<(ChunkNo, u64, String)>,
        resumed: bool,
    ) -> Result<Vec<Vec<PeerId>>, StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.record_chunks(&f, &rows, resumed))
            .await
    }

    /// Every chunk sent: the version becomes complete (`Catalog::complete_version`).
    pub async fn complete_version(
        &self,
        file_id: &FileId,
        inode: u64,
        ctime_ns: i64,
    ) -> Result<bool, StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.complete_version(&f, inode, ctime_ns))
            .await
    }

    /// An unfinished encrypted version is never resumed again (`Catalog::stop_resuming`).
    pub async fn stop_resuming(&self, file_id: &FileId) -> Result<(), StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.stop_resuming(&f)).await
    }

    /// Forgets one version for `why`, if its rule allows (`Catalog::forget`).
    pub async fn forget(
        &self,
        file_id: &FileId,
        why: Forget,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.forget(&f, why, now_ms)).await
    }

    /// Forget only by policy (`Catalog::forget_by_policy`), now.
    pub async fn forget_by_policy(&self, path: &Path, policy: Policy) -> Result<usize, StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.forget_by_policy(&p, policy, unix_ms()))
            .await
    }

    /// The paths at or below `root` with more than one version (`Catalog::paths_with_history`).
    pub async fn paths_with_history(&self, root: &Path) -> Result<Vec<PathBuf>, StoreError> {
        let r = root.to_path_buf();
        self.read(move |c| c.paths_with_history(&r)).await
    }

    /// The peers are full: the oldest history goes (`Catalog::prune_for_space`), now.
    pub async fn prune_for_space(&self, needed: u64) -> Result<(usize, u64), StoreError> {
        self.call(move |c| c.prune_for_space(needed, unix_ms()))
            .await
    }

    /// How many paths at or below `root` have a version (`Catalog::paths_below`).
    pub async fn paths_below(&self, root: &Path) -> Result<u64, StoreError> {
        let r = root.to_path_buf();
        self.read(move |c| c.paths_below(&r)).await
    }

    /// The folders whose history is held (`Catalog::history_holds`).
    pub async fn history_holds(&self) -> Result<Vec<HistoryHold>, StoreError> {
        self.read(|c| c.history_holds()).await
    }

    /// The guard tripped on `root` (`Catalog::hold_history`), now; true if it was not held.
    pub async fn hold_history(&self, root: &Path, why: String) -> Result<bool, StoreError> {
        let r = root.to_path_buf();
        self.call(move |c| c.hold_history(&r, unix_ms(), &why))
            .await
    }

    /// Pruning goes on at and below `root` (`Catalog::resume_history`).
    pub async fn resume_history(&self, root: &Path) -> Result<bool, StoreError> {
        let r = root.to_path_buf();
        self.call(move |c| c.resume_history(&r)).await
    }

    /// The daemon ran `ms` more (`Catalog::advance_run_clock`).
    pub async fn advance_run_clock(&self, ms: i64) -> Result<(), StoreError> {
        self.call(move |c| c.advance_run_clock(ms)).await
    }

    /// `peerstash delete PATH`: every version of it forgotten (`Catalog::forget_path`), now.
    pub async fn forget_path(&self, path: &Path) -> Result<usize, StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.forget_path(&p, unix_ms())).await
    }

    /// The chunks recorded for `file_id`, each with its perceived RD.
    pub async fn file_chunks(&self, file_id: &FileId) -> Result<Vec<FileChunkRow>, StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.file_chunks(&f)).await
    }

    /// The paths whose newest version has a chunk below its RD.
    pub async fn paths_below_rd(&self) -> Result<Vec<PathBuf>, StoreError> {
        self.call(|c| c.paths_below_rd()).await
    }

    /// The versions the repair looks at (`Catalog::versions_to_repair`).
    pub async fn versions_to_repair(
        &self,
        refused: Vec<PathBuf>,
        limit: usize,
    ) -> Result<Vec<FileId>, StoreError> {
        self.call(move |c| c.versions_to_repair(&refused, limit))
            .await
    }

    /// A version to repair and its chunks below their RD (`Catalog::chunks_to_repair`).
    #[allow(clippy::type_complexity)]
    pub async fn chunks_to_repair(
        &self,
        file_id: &FileId,
    ) -> Result<Option<(FileRow, Vec<(FileChunkRow, Vec<PeerId>)>)>, StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.chunks_to_repair(&f)).await
    }

    /// The versions forgotten whose DELETE is still to be sent.
    pub async fn pending_deletes(&self) -> Result<Vec<FileId>, StoreError> {
        self.call(|c| c.pending_deletes()).await
    }

    /// The DELETEs of `file_ids` were sent.
    pub async fn clear_pending_deletes(&self, file_ids: Vec<FileId>) -> Result<(), StoreError> {
        self.call(move |c| c.clear_pending_deletes(&file_ids)).await
    }

    // ---- folders and deleted paths -------------------------------------------------------

    /// The folders above a file backed up, as seen (`Catalog::note_folders`).
    pub async fn note_folders(&self, rows: Vec<FolderRow>) -> Result<(), StoreError> {
        self.call(move |c| c.note_folders(&rows)).await
    }

    /// The watched folders as loaded (`Catalog::note_watched`).
    pub async fn note_watched(&self, roots: Vec<PathBuf>) -> Result<(), StoreError> {
        self.call(move |c| c.note_watched(&roots)).await
    }

    /// The folders ever watched, only `owner`'s if given (`Catalog::watched_folders_of`).
    pub async fn watched_folders_of(&self, owner: Option<u32>) -> Result<Vec<PathBuf>, StoreError> {
        self.call(move |c| c.watched_folders_of(owner)).await
    }

    /// The folders below `path` and the restore cutoff (`Catalog::folders_for_restore`).
    pub async fn folders_for_restore(
        &self,
        path: &Path,
        owner: Option<u32>,
    ) -> Result<(Vec<FolderRow>, Option<i64>), StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.folders_for_restore(&p, owner)).await
    }

    /// `path` was found gone at `now` (unix seconds); returns how many versions were marked.
    pub async fn mark_deleted(&self, path: &Path, now: i64) -> Result<usize, StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.mark_deleted(&p, now)).await
    }

    /// `paths` are there again: no longer marked deleted.
    pub async fn unmark_deleted(&self, paths: Vec<PathBuf>) -> Result<(), StoreError> {
        self.call(move |c| paths.iter().try_for_each(|p| c.unmark_deleted(p).map(drop)))
            .await
    }

    /// `ms` more counted absent for each of `paths` (their folder was available).
    pub async fn add_absent(&self, paths: Vec<PathBuf>, ms: i64) -> Result<(), StoreError> {
        self.call(move |c| paths.iter().try_for_each(|p| c.add_absent(p, ms)))
            .await
    }

    /// The paths marked deleted.
    pub async fn deleted_paths(&self) -> Result<Vec<DeletedPath>, StoreError> {
        self.call(|c| c.deleted_paths()).await
    }

    /// The paths with a live version below `root`.
    pub async fn live_paths_under(&self, root: &Path) -> Result<Vec<PathBuf>, StoreError> {
        let r = root.to_path_buf();
        self.call(move |c| c.live_paths_under(&r)).await
    }

    /// The device recorded for a watched folder, or a sample of paths to look for
    /// (`Catalog::recorded_dev_or_sample`).
    pub async fn recorded_dev_or_sample(
        &self,
        dev_key: String,
        dev: u64,
        root: &Path,
        sample: usize,
    ) -> Result<(Option<u64>, Vec<PathBuf>), StoreError> {
        let r = root.to_path_buf();
        self.call(move |c| c.recorded_dev_or_sample(&dev_key, dev, &r, sample))
            .await
    }

    // ---- the queue ---------------------------------------------------------------------

    /// Queues each of `paths` due at `now_ms`, changed since its own time.
    pub async fn enqueue_since(
        &self,
        paths: Vec<(PathBuf, i64)>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            (paths.iter()).try_for_each(|(p, since)| c.enqueue_since(p, now_ms, *since))
        })
        .await
    }

    /// At most `limit` queued paths due at `now_ms`: (path, generation, attempts).
    pub async fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(PathBuf, i64, u32)>, StoreError> {
        self.call(move |c| c.due(now_ms, limit)).await
    }

    /// When the next queued path is due.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.call(|c| c.next_due()).await
    }

    /// How many paths are queued.
    pub async fn queue_len(&self) -> Result<u64, StoreError> {
        self.call(|c| c.queue_len()).await
    }

    /// Since when `path` has been queued (changed), if it is.
    pub async fn queued_since(&self, path: &Path) -> Result<Option<i64>, StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.queued_since(&p)).await
    }

    /// `path` (queued as `gen`) is looked at again at `due_ms`.
    pub async fn retry_later(&self, path: &Path, gen: i64, due_ms: i64) -> Result<(), StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.retry_later(&p, gen, due_ms)).await
    }

    /// `path` (queued as `gen`) is done, unless queued again meanwhile.
    pub async fn dequeue(&self, path: &Path, gen: i64) -> Result<(), StoreError> {
        let p = path.to_path_buf();
        self.call(move |c| c.dequeue(&p, gen)).await
    }

    // ---- meta and the master key ---------------------------------------------------------

    /// The `meta` value of `key`.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let k = key.to_owned();
        self.call(move |c| c.meta(&k)).await
    }

    /// The `meta` values of `keys`, in their order, read together.
    pub async fn metas(&self, keys: &[&str]) -> Result<Vec<Option<String>>, StoreError> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.call(move |c| keys.iter().map(|k| c.meta(k)).collect())
            .await
    }

    /// Sets the `meta` value of `key`.
    pub async fn set_meta(&self, key: &str, value: String) -> Result<(), StoreError> {
        let k = key.to_owned();
        self.call(move |c| c.set_meta(&k, &value)).await
    }

    /// Sets several `meta` values, in one transaction.
    pub async fn set_metas(&self, values: Vec<(&str, String)>) -> Result<(), StoreError> {
        let values: Vec<(String, String)> = (values.into_iter())
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        self.call(move |c| values.iter().try_for_each(|(k, v)| c.set_meta(k, v)))
            .await
    }

    /// What the catalog says of the master key its encrypted versions need.
    pub async fn key_facts(&self) -> Result<KeyFacts, StoreError> {
        self.call(|c| c.key_facts()).await
    }

    /// The master key run with, and whether it was just made (`Catalog::note_master_key`).
    pub async fn note_master_key(
        &self,
        fp: String,
        made: Option<String>,
    ) -> Result<(), StoreError> {
        self.call(move |c| c.note_master_key(&fp, made.as_deref()))
            .await
    }

    /// SQLite's full integrity check.
    pub async fn integrity_check(&self) -> Result<(), StoreError> {
        self.call(|c| c.integrity_check()).await
    }

    // ---- catalog snapshots ---------------------------------------------------------------

    /// Our snapshots below `desired` (`Catalog::snapshots_below_rd`).
    pub async fn snapshots_below_rd(&self, desired: u8) -> Result<Vec<SnapshotRow>, StoreError> {
        self.call(move |c| c.snapshots_below_rd(desired)).await
    }

    /// Gives back a snapshot's number if nothing of it was sent (`Catalog::release_snapshot`).
    pub async fn release_snapshot(&self, file_id: &FileId) -> Result<bool, StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.release_snapshot(&f)).await
    }

    /// A snapshot reached its RD.
    pub async fn set_snapshot_at_rd(&self, file_id: &FileId) -> Result<(), StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.set_snapshot_at_rd(&f)).await
    }

    /// Takes number `slot` for snapshot `file_id` (`Catalog::claim_snapshot`).
    pub async fn claim_snapshot(
        &self,
        file_id: &FileId,
        slot: SnapshotNo,
        taken_ms: i64,
    ) -> Result<(), StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.claim_snapshot(&f, slot, taken_ms))
            .await
    }

    /// Forgets the superseded snapshots (`Catalog::forget_superseded_snapshots`).
    pub async fn forget_superseded_snapshots(
        &self,
        now_ms: i64,
    ) -> Result<Vec<SnapshotNo>, StoreError> {
        self.call(move |c| c.forget_superseded_snapshots(now_ms))
            .await
    }

    /// The paths a snapshot now names, and the mark (`Catalog::held_since_pruned`).
    pub async fn held_since_pruned(&self) -> Result<(Vec<PathBuf>, i64), StoreError> {
        self.call(|c| c.held_since_pruned()).await
    }

    /// The held versions up to `to` were looked at (`Catalog::note_pruned`).
    pub async fn note_pruned(&self, to: i64) -> Result<(), StoreError> {
        self.call(move |c| c.note_pruned(to)).await
    }

    /// Whether this peer waits for `peerstash recover` before taking snapshots.
    pub async fn waits_for_recover(&self) -> Result<bool, StoreError> {
        self.call(|c| c.waits_for_recover()).await
    }

    /// The next snapshot's number and what our versions are now (`Catalog::next_snapshot`).
    pub async fn next_snapshot(&self) -> Result<(u64, String), StoreError> {
        self.call(|c| c.next_snapshot()).await
    }

    /// A snapshot was sent (`Catalog::snapshot_sent`).
    pub async fn snapshot_sent(
        &self,
        file_id: &FileId,
        at_rd: bool,
        changes: String,
        now_ms: i64,
        size: u64,
    ) -> Result<(), StoreError> {
        let f = file_id.clone();
        self.call(move |c| c.snapshot_sent(&f, at_rd, &changes, now_ms, size))
            .await
    }

    /// What the snapshot worker looks at (`Catalog::snapshot_look`).
    pub async fn snapshot_look(&self) -> Result<SnapshotLook, StoreError> {
        self.call(|c| c.snapshot_look()).await
    }

    /// Our snapshots below `desired` and the peers heard (`Catalog::resend_situation`).
    pub async fn resend_situation(&self, desired: u8) -> Result<(Vec<String>, u64), StoreError> {
        self.call(move |c| c.resend_situation(desired)).await
    }

    /// What `peerstash recover` looks at first (`Catalog::recover_facts`).
    pub async fn recover_facts(&self) -> Result<(u64, Option<String>, bool), StoreError> {
        self.call(|c| c.recover_facts()).await
    }

    /// `peerstash recover --none` (`Catalog::recover_none`).
    pub async fn recover_none(&self, highest: Option<u64>) -> Result<bool, StoreError> {
        self.call(move |c| c.recover_none(highest)).await
    }

    /// `restore --all` has run (`Catalog::lift_expiry_hold`).
    pub async fn lift_expiry_hold(&self) -> Result<bool, StoreError> {
        self.call(|c| c.lift_expiry_hold()).await
    }

    /// Counts running time off a recover's expiry hold (`Catalog::count_down_expiry_hold`).
    pub async fn count_down_expiry_hold(&self, passed_ms: i64) -> Result<Option<bool>, StoreError> {
        self.call(move |c| c.count_down_expiry_hold(passed_ms))
            .await
    }
}
