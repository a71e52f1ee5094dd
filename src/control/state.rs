//! What `state` and `status` report: the peer's backed-up versions with each chunk's perceived
//! RD and health, its hosted chunks, its queue, workers and catalog snapshot.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::health::{health, Health};
use super::wire_path;

/// `state --json`: SPEC §5's keys (more may be added; these stay).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerState {
    pub peer_id: u32,
    pub protocol: String,
    pub quota_bytes: u64,
    pub used_bytes: u64,
    pub files: Vec<FileState>,
    pub stored: Vec<StoredState>,
    /// What the admin must look at first (e.g. another peer using this peer's id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Paths waiting in the backup queue.
    #[serde(default)]
    pub queue_length: u64,
    /// Paths being backed up now by the queue.
    #[serde(default, with = "wire_path::list")]
    pub in_progress: Vec<PathBuf>,
    /// Datagrams dropped since start because they were malformed (or on the wrong channel).
    #[serde(default)]
    pub malformed_datagrams: u64,
    /// PUTCHUNKs dropped since start because too many chunks were being stored at once.
    #[serde(default)]
    pub busy_drops: u64,
    /// Datagrams dropped since start because they carried no valid LAN key tag.
    #[serde(default)]
    pub unauthenticated_datagrams: u64,
    /// STOREDs, GETCHUNKs, DELETEs and REMOVEDs dropped since start because the work queued
    /// for the catalog was full (a flood).
    #[serde(default)]
    pub queue_drops: u64,
    /// Watched folders that are not there (missing, their disk not mounted): nothing in them
    /// counts as deleted until they are back. Root only.
    #[serde(default)]
    pub unavailable: Vec<UnavailableFolder>,
    /// The background workers (queue, watcher, repair, expiry, status) and what each is doing;
    /// paths for root only.
    #[serde(default)]
    pub workers: Vec<WorkerInfo>,
    /// Acknowledgements of DELETE still owed by peers (one per deleted version and holder).
    #[serde(default)]
    pub unacked_deletes: u64,
    /// The newest catalog snapshot backed up (what `recover` would find), if any; root only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_snapshot: Option<SnapshotInfo>,
}

/// `peerstash status`: whether every file is safe, at a glance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub peer_id: u32,
    /// Backed-up files (their newest version) and how many of them are at their RD.
    pub files: u64,
    pub healthy: u64,
    /// The files with a chunk below its RD, none at risk.
    #[serde(with = "wire_path::list")]
    pub degraded: Vec<PathBuf>,
    /// The files with a chunk that has one holder (or none) while more were desired.
    #[serde(with = "wire_path::list")]
    pub at_risk: Vec<PathBuf>,
    pub quota_bytes: u64,
    pub used_bytes: u64,
    pub queue_length: u64,
    /// The watched folders (root only).
    #[serde(default)]
    pub folders: Vec<FolderStatus>,
    /// Other peers heard since this one started, or known, and of those counted lost.
    pub peers_heard: u64,
    pub peers_lost: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_snapshot: Option<SnapshotInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Every condition that keeps `status` from exiting 0, most serious first (the first
    /// gives the exit status): "folder_unavailable", "below_rd", "no_snapshot_at_rd",
    /// "queue_not_drained". Empty: healthy.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Why files stay below their RD when too few other peers can hold them (only what this
    /// peer knows: the peers heard lately and which of them hold chunks of ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_rd_why: Option<String>,
}

/// One watched folder in `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderStatus {
    #[serde(with = "wire_path")]
    pub path: PathBuf,
    /// When it was last known backed up (unix ms): a backup in it completed, or a scan found
    /// nothing to back up.
    pub last_backup_ms: Option<i64>,
    /// Why it is not there, if it is not (its disk not mounted).
    pub unavailable: Option<String>,
    /// Its oldest change not backed up yet (unix ms) and the file, if one waits in the queue:
    /// a file that is never quiet shows here, whatever `last_backup_ms` says of the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since_ms: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "wire_path::option"
    )]
    pub waiting: Option<PathBuf>,
}

/// A catalog snapshot, as `state` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its number ("42"; "20794:3" for a dated one of an older version).
    pub snapshot: String,
    /// When it was taken, as `recover --list` shows it (by the clock of then: a label only).
    pub taken: String,
    /// Every chunk of it reached its desired RD: a recover finds it.
    pub at_rd: bool,
}

/// A background worker of the daemon and what it is doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    /// "idle", "busy" or "failing".
    pub state: String,
    /// Busy: what it is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    /// Failing: its last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The path it is working on, or failed on (root only).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "wire_path::option"
    )]
    pub path: Option<PathBuf>,
    /// Seconds it has been busy, or failing (since the first failure in a row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_s: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnavailableFolder {
    #[serde(with = "wire_path")]
    pub path: PathBuf,
    pub reason: String,
}

/// One backed-up version in `state`. In JSON its health is `"health"` ("healthy", "degraded"
/// or "at risk") with `"chunks_below_rd"` and `"chunks_at_risk"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "FileStateWire", into = "FileStateWire")]
pub struct FileState {
    pub path: PathBuf,
    pub file_id: String,
    pub version: u32,
    pub size: u64,
    pub desired_rd: u8,
    /// Every chunk was sent and the backup ended (some may still be below their desired RD).
    pub complete: bool,
    pub chunks: Vec<ChunkState>,
    /// From its chunks' perceived RD (`store::health`).
    pub health: Health,
    /// Chunks below the desired RD (those at risk included).
    pub chunks_below_rd: u32,
}

impl FileState {
    /// A version's state, its health worked out from its chunks.
    pub fn new(
        path: PathBuf,
        file_id: String,
        version: u32,
        size: u64,
        desired_rd: u8,
        complete: bool,
        chunks: Vec<ChunkState>,
    ) -> FileState {
        let perceived = || chunks.iter().map(|c| c.perceived_rd);
        let health = health(desired_rd, perceived());
        let chunks_below_rd = perceived().filter(|&rd| rd < u32::from(desired_rd)).count() as u32;
        FileState {
            path,
            file_id,
            version,
            size,
            desired_rd,
            complete,
            chunks,
            health,
            chunks_below_rd,
        }
    }
}

/// `FileState` as JSON: its health as a word and counts.
#[derive(Serialize, Deserialize)]
struct FileStateWire {
    #[serde(with = "wire_path")]
    path: PathBuf,
    file_id: String,
    version: u32,
    size: u64,
    desired_rd: u8,
    complete: bool,
    chunks: Vec<ChunkState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunks_below_rd: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunks_at_risk: Option<u32>,
}

impl From<FileState> for FileStateWire {
    fn from(f: FileState) -> FileStateWire {
        let at_risk = match f.health {
            Health::AtRisk { chunks } => chunks,
            Health::Healthy | Health::Degraded { .. } => 0,
        };
        FileStateWire {
            path: f.path,
            file_id: f.file_id,
            version: f.version,
            size: f.size,
            desired_rd: f.desired_rd,
            complete: f.complete,
            chunks: f.chunks,
            health: Some(f.health.word().to_owned()),
            chunks_below_rd: Some(f.chunks_below_rd),
            chunks_at_risk: Some(at_risk),
        }
    }
}

impl From<FileStateWire> for FileState {
    /// The health the daemon sent; worked out from the chunks when it sent none (an older
    /// daemon) or a word this build does not know.
    fn from(w: FileStateWire) -> FileState {
        let mut f = FileState::new(
            w.path,
            w.file_id,
            w.version,
            w.size,
            w.desired_rd,
            w.complete,
            w.chunks,
        );
        let below = w.chunks_below_rd.unwrap_or(f.chunks_below_rd);
        let sent = match w.health.as_deref() {
            Some("healthy") => Some(Health::Healthy),
            Some("degraded") => Some(Health::Degraded { below }),
            Some("at risk") => w.chunks_at_risk.map(|chunks| Health::AtRisk { chunks }),
            _ => None,
        };
        if let Some(health) = sent {
            (f.health, f.chunks_below_rd) = (health, below);
        }
        f
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkState {
    pub chunk_no: u32,
    pub perceived_rd: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredState {
    pub file_id: String,
    pub chunk_no: u32,
    pub size: u64,
    pub desired_rd: u8,
    pub perceived_rd: u32,
}

impl PeerState {
    /// The versions kept of `path`, oldest first.
    pub fn versions_of(&self, path: &Path) -> Vec<&FileState> {
        let mut versions: Vec<&FileState> = self.files.iter().filter(|f| f.path == path).collect();
        versions.sort_by_key(|f| f.version);
        versions
    }

    /// Whether this peer hosts chunk `chunk_no` of `file_id` (fileIds compare ignoring case).
    pub fn hosts(&self, file_id: &str, chunk_no: u32) -> bool {
        self.stored
            .iter()
            .any(|s| s.chunk_no == chunk_no && s.file_id.eq_ignore_ascii_case(file_id))
    }

    /// The chunks this peer hosts of one file.
    pub fn stored_of(&self, file_id: &str) -> Vec<&StoredState> {
        self.stored
            .iter()
            .filter(|s| s.file_id.eq_ignore_ascii_case(file_id))
            .collect()
    }

    /// The lowest perceived RD of the newest version of each of `paths` (0 for a path with no
    /// version or no chunk).
    pub fn min_rd_of<'a>(&self, paths: impl IntoIterator<Item = &'a Path>) -> u32 {
        paths
            .into_iter()
            .map(|p| self.versions_of(p).last().map_or(0, |f| f.min_rd()))
            .min()
            .unwrap_or(0)
    }
}

impl FileState {
    /// The lowest perceived RD over the version's chunks (0 without chunks).
    pub fn min_rd(&self) -> u32 {
        self.chunks
            .iter()
            .map(|c| c.perceived_rd)
            .min()
            .unwrap_or(0)
    }

    /// The highest perceived RD over the version's chunks (0 without chunks).
    pub fn max_rd(&self) -> u32 {
        self.chunks
            .iter()
            .map(|c| c.perceived_rd)
            .max()
            .unwrap_or(0)
    }

    /// The perceived RD of one chunk.
    pub fn rd_of(&self, chunk_no: u32) -> Option<u32> {
        self.chunks
            .iter()
            .find(|c| c.chunk_no == chunk_no)
            .map(|c| c.perceived_rd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_accessors_read_versions_rds_and_hosted_chunks() {
        let file = |path: &str, version: u32, rds: &[u32]| {
            FileState::new(
                path.into(),
                format!("{version:064x}"),
                version,
                0,
                2,
                true,
                rds.iter()
                    .enumerate()
                    .map(|(n, &perceived_rd)| ChunkState {
                        chunk_no: n as u32,
                        perceived_rd,
                    })
                    .collect(),
            )
        };
        let state = PeerState {
            peer_id: 1,
            protocol: "1.0".into(),
            quota_bytes: 0,
            used_bytes: 0,
            files: vec![
                file("/a", 2, &[3, 1, 2]),
                file("/a", 1, &[2]),
                file("/e", 1, &[]),
            ],
            stored: vec![StoredState {
                file_id: "AB".repeat(32),
                chunk_no: 4,
                size: 10,
                desired_rd: 2,
                perceived_rd: 2,
            }],
            warnings: Vec::new(),
            queue_length: 0,
            in_progress: Vec::new(),
            malformed_datagrams: 0,
            busy_drops: 0,
            unauthenticated_datagrams: 0,
            queue_drops: 0,
            unavailable: Vec::new(),
            workers: Vec::new(),
            unacked_deletes: 0,
            catalog_snapshot: None,
        };
        let a = state.versions_of(Path::new("/a"));
        assert_eq!(a.iter().map(|f| f.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            (a[1].min_rd(), a[1].max_rd(), a[1].rd_of(2)),
            (1, 3, Some(2))
        );
        assert_eq!(a[1].rd_of(3), None);
        // Health: a chunk with one holder at RD 2 puts the version at risk.
        assert_eq!(
            (a[1].health, a[1].chunks_below_rd),
            (Health::AtRisk { chunks: 1 }, 1)
        );
        assert_eq!((a[0].health, a[0].chunks_below_rd), (Health::Healthy, 0));
        let json = serde_json::to_value(a[1]).unwrap();
        assert_eq!(
            (
                &json["health"],
                &json["chunks_below_rd"],
                &json["chunks_at_risk"]
            ),
            (&"at risk".into(), &1.into(), &1.into())
        );
        // A version without chunks, and a path never backed up, count as RD 0.
        assert_eq!(state.min_rd_of([Path::new("/a")]), 1);
        assert_eq!(state.min_rd_of([Path::new("/a"), Path::new("/e")]), 0);
        assert_eq!(state.min_rd_of([Path::new("/a"), Path::new("/x")]), 0);
        assert!(state.hosts(&"ab".repeat(32), 4));
        assert!(!state.hosts(&"ab".repeat(32), 3));
        assert_eq!(state.stored_of(&"Ab".repeat(32)).len(), 1);
        assert!(state.stored_of(&"cd".repeat(32)).is_empty());
    }
}
