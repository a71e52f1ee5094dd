//! The long reads: what `status`, `state` and the metrics see of the whole catalog, each read in
//! one read transaction on a connection of its own (`CatalogHandle::read`), so that a walk
//! over every file never holds up the catalog thread's writes.

use super::*;
use crate::control::health::{from_counts, Health};

/// What `status` and the metrics read of our files, folders, queue and peers.
pub struct Overview {
    /// The health of the newest version of each of our files, with how many of its chunks are
    /// below their desired RD.
    pub health: Vec<(PathBuf, Health, u64)>,
    /// The desired RD of each file below it.
    pub below_rds: Vec<u8>,
    /// Each folder asked, with when a backup below it last completed (unix ms).
    pub folders: Vec<(PathBuf, Option<i64>)>,
    pub queue: u64,
    /// Other peers heard, and of those counted lost.
    pub peers: (u64, u64),
}

/// What `status` reads besides the overview, in the same transaction.
pub struct StatusView {
    pub overview: Overview,
    /// The newest findable catalog snapshot, `at_rd` as its holders known now say (one that
    /// reached its RD once and lost a holder since is not at it).
    pub snapshot: Option<SnapshotRow>,
    /// A reinstalled peer with backups of its own waits for `peerstash recover`.
    pub waits_recover: bool,
    /// Peers not lost holding chunks of ours, and peers heard holding none (counted only when
    /// some file is below its RD: a walk over every holder).
    pub holding: u64,
    pub heard_none: u64,
    /// Versions this peer cannot decrypt (another master key), and the paths whose newest
    /// version is one.
    pub undecryptable: u64,
    pub unreadable: Vec<PathBuf>,
    /// Per watched folder with a change queued: (folder, oldest file queued, since unix ms).
    pub waiting: Vec<(PathBuf, PathBuf, i64)>,
}

/// What `state` reads: our versions with their chunks, the chunks hosted here, the queue and
/// the deletes owed, the newest catalog snapshot.
pub struct StateView {
    pub files: Vec<(FileRow, Vec<FileChunkRow>)>,
    /// Empty unless asked (root, no path).
    pub hosted: Vec<(HostedRow, u32)>,
    pub queue_len: u64,
    pub unacked_deletes: u64,
    pub snapshot: Option<SnapshotRow>,
    pub waits_recover: bool,
}

impl Catalog {
    /// The health of the newest version of each of our files (its newest complete one, else its
    /// newest; catalog snapshots aside; only `owner`'s files if given), with how many of its
    /// chunks are below their desired RD, and that RD; in no particular order.
    pub fn health_of_newest(
        &self,
        owner: Option<u32>,
    ) -> Result<Vec<(PathBuf, Health, u64, u8)>, StoreError> {
        Ok((self.newest_health(owner)?.into_iter())
            .map(|(path, rd, below, at_risk)| {
                (path, from_counts(below, at_risk), u64::from(below), rd)
            })
            .collect())
    }

    /// Our files' health (only `owner`'s if given), `folders`' last completed backups, the
    /// queue and the peers.
    pub fn overview(
        &self,
        owner: Option<u32>,
        folders: Vec<PathBuf>,
    ) -> Result<Overview, StoreError> {
        let mut last = Vec::new();
        for path in folders {
            let t = self.last_completed_below(&path)?;
            last.push((path, t));
        }
        let mut below_rds = Vec::new();
        let health = (self.health_of_newest(owner)?.into_iter())
            .map(|(path, h, below, rd)| {
                if h != Health::Healthy {
                    below_rds.push(rd);
                }
                (path, h, below)
            })
            .collect();
        Ok(Overview {
            health,
            below_rds,
            folders: last,
            queue: self.queue_len()?,
            peers: self.peers_heard_lost()?,
        })
    }

    /// Whether a reinstalled peer waits for `peerstash recover` while it has backups of its own
    /// that no snapshot covers (a peer that only hosts, a new one made by the packages, says
    /// nothing).
    pub fn waits_for_recover_with_backups(&self) -> Result<bool, StoreError> {
        Ok(self.waits_for_recover()? && self.own_versions()? > 0)
    }

    /// `status`'s read: the overview of `owner`'s files (all if None) and of `folders`, the
    /// newest snapshot checked against `snapshot_rd`, the versions `running` (the master key's
    /// fingerprint) cannot open, and what waits in the queue under `folders`.
    pub fn status_view(
        &self,
        owner: Option<u32>,
        folders: Vec<PathBuf>,
        running: Option<&str>,
        snapshot_rd: u8,
    ) -> Result<StatusView, StoreError> {
        let snapshot = match self.newest_snapshot()? {
            Some(mut s) => {
                s.at_rd = self.snapshot_at_rd_now(&s, snapshot_rd)?;
                Some(s)
            }
            None => None,
        };
        let (undecryptable, unreadable) = self.undecryptable(running, owner)?;
        let waiting = self.oldest_queued_under(&folders)?;
        let waits_recover = owner.is_none() && self.waits_for_recover_with_backups()?;
        let overview = self.overview(owner, folders)?;
        let (mut holding, mut heard_none) = (0u64, 0u64);
        if !overview.below_rds.is_empty() {
            for p in self.peers_report()? {
                match (p.lost_at_ms, p.chunks_of_ours, p.last_heard_ms) {
                    (Some(_), ..) => {}
                    (None, 1.., _) => holding += 1,
                    (None, 0, Some(_)) => heard_none += 1,
                    (None, 0, None) => {}
                }
            }
        }
        Ok(StatusView {
            overview,
            snapshot,
            waits_recover,
            holding,
            heard_none,
            undecryptable,
            unreadable,
            waiting,
        })
    }

    /// `state`'s read: `owner`'s versions (all if None) at or below `below` (whole components:
    /// `/a/b` is below `/a`, `/ab` is not), each with its chunks; the chunks hosted here only
    /// for root without a path; the snapshot and the recover wait only for root.
    pub fn state_view(
        &self,
        owner: Option<u32>,
        below: Option<&Path>,
    ) -> Result<StateView, StoreError> {
        let mut files = Vec::new();
        for f in self.all_files()? {
            if owner.is_some_and(|uid| uid != f.uid) {
                continue;
            }
            if below.is_some_and(|b| !f.path.starts_with(b)) {
                continue;
            }
            let chunks = self.file_chunks(&f.file_id)?;
            files.push((f, chunks));
        }
        let hosted = match (owner, below) {
            (None, None) => self.all_hosted()?,
            _ => Vec::new(),
        };
        let snapshot = match owner {
            None => self.newest_snapshot()?,
            Some(_) => None,
        };
        Ok(StateView {
            files,
            hosted,
            queue_len: self.queue_len()?,
            unacked_deletes: self.unacked_delete_count()?,
            snapshot,
            waits_recover: owner.is_none() && self.waits_for_recover_with_backups()?,
        })
    }
}

impl CatalogHandle {
    /// The overview for the metrics (every file, `folders`), with the paths whose newest
    /// version `running` cannot decrypt.
    pub async fn metrics_view(
        &self,
        folders: Vec<PathBuf>,
        running: Option<String>,
    ) -> Result<(Overview, Vec<PathBuf>), StoreError> {
        self.read(move |c| {
            let unreadable = c.undecryptable(running.as_deref(), None)?.1;
            Ok((c.overview(None, folders)?, unreadable))
        })
        .await
    }

    /// `Catalog::status_view`, read apart from the catalog thread.
    pub async fn status_view(
        &self,
        owner: Option<u32>,
        folders: Vec<PathBuf>,
        running: Option<String>,
        snapshot_rd: u8,
    ) -> Result<StatusView, StoreError> {
        self.read(move |c| c.status_view(owner, folders, running.as_deref(), snapshot_rd))
            .await
    }

    /// `Catalog::state_view`, read apart from the catalog thread.
    pub async fn state_view(
        &self,
        owner: Option<u32>,
        below: Option<PathBuf>,
    ) -> Result<StateView, StoreError> {
        self.read(move |c| c.state_view(owner, below.as_deref()))
            .await
    }
}
