//! The control socket's language: one JSON request line from `peerstash`, then reply lines from
//! the daemon (progress lines, then one final line with an exit code). Shared by both sides.
//! The request line may carry open descriptors (SCM_RIGHTS): the file or folder to back up, the
//! file to restore into, opened by the caller with the caller's own rights.

pub mod client;

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;

use crate::store::{health, Health};

/// Exit statuses of SPEC §5; 5 to 7 are `status`'s alone (a monitoring check reads them).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const BELOW_RD: i32 = 3;
    pub const UNREACHABLE: i32 = 4;
    /// `status`: a watched folder is unavailable (missing, or its disk not mounted).
    pub const FOLDER_UNAVAILABLE: i32 = 5;
    /// `status`: changes are queued, not yet backed up (also "nothing backed up yet").
    pub const QUEUE_NOT_DRAINED: i32 = 6;
    /// `status`: files are backed up and no catalog snapshot is at its RD.
    pub const NO_SNAPSHOT_AT_RD: i32 = 7;

    /// Whether `code` is one `status` ends with when it could tell the state: its report
    /// is shown, not an error.
    pub fn is_status(code: i32) -> bool {
        matches!(
            code,
            OK | BELOW_RD | FOLDER_UNAVAILABLE | QUEUE_NOT_DRAINED | NO_SNAPSHOT_AT_RD
        )
    }
}

/// Longest request line the daemon reads; a longer one is refused.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;
/// Descriptors one request may carry; a request with more is refused (and they are closed).
pub const MAX_FDS: usize = 1;

/// Paths on the control socket lose nothing: a JSON string when the path is UTF-8, else
/// `{"bytes_hex": "…"}` with its bytes (a file name is any bytes but `/` and NUL).
pub mod wire_path {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Text(String),
        Bytes { bytes_hex: String },
    }

    fn to_wire(path: &Path) -> Wire {
        match path.to_str() {
            Some(text) => Wire::Text(text.to_owned()),
            None => Wire::Bytes {
                bytes_hex: crate::protocol::hex(path.as_os_str().as_bytes()),
            },
        }
    }

    fn from_wire<E: serde::de::Error>(wire: Wire) -> Result<PathBuf, E> {
        match wire {
            Wire::Text(text) => Ok(PathBuf::from(text)),
            Wire::Bytes { bytes_hex } => {
                let digits = bytes_hex.as_bytes();
                if digits.len() % 2 != 0 {
                    return Err(E::custom("bytes_hex has an odd number of digits"));
                }
                let bytes = digits
                    .chunks(2)
                    .map(|pair| {
                        std::str::from_utf8(pair)
                            .ok()
                            .and_then(|p| u8::from_str_radix(p, 16).ok())
                    })
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| E::custom("bytes_hex is not hexadecimal"))?;
                Ok(PathBuf::from(OsString::from_vec(bytes)))
            }
        }
    }

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        to_wire(path).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        from_wire(Wire::deserialize(d)?)
    }

    /// The same for an optional path.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
            match path {
                Some(p) => s.serialize_some(&to_wire(p)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
            Option::<Wire>::deserialize(d)?.map(from_wire).transpose()
        }
    }

    /// The same for a list of paths.
    pub mod list {
        use super::*;

        pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(paths.iter().map(|p| to_wire(p)))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
            Vec::<Wire>::deserialize(d)?
                .into_iter()
                .map(from_wire)
                .collect()
        }
    }
}

/// A path as the command line shows it: unchanged when it is printable UTF-8; bytes that are not
/// UTF-8 as `\xNN`, control characters (a newline in a name) escaped, and `\` doubled, so the
/// line is unambiguous.
pub fn shown(path: &Path) -> String {
    use std::fmt::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Backup {
        #[serde(with = "wire_path")]
        path: PathBuf,
        replication: Option<u8>,
        /// Encrypt the chunks whatever the watched folder says (`backup --encrypt`).
        #[serde(default)]
        encrypt: bool,
    },
    /// Sent with the file to write into; where it goes and whether it may replace a file is
    /// the caller's business (it renames it, with its own rights).
    Restore {
        #[serde(with = "wire_path")]
        path: PathBuf,
        version: Option<u32>,
    },
    Versions {
        #[serde(with = "wire_path")]
        path: PathBuf,
    },
    /// The folders recorded at or below `path` (owner, group, mode, mtime, for `restore` to
    /// give back to the folders it makes), and when "before the loss" ends
    /// (`FoldersAnswer`); a user other than root hears only of folders holding its files.
    Folders {
        #[serde(with = "wire_path")]
        path: PathBuf,
    },
    /// Every folder the catalog knows was watched here (also those no longer in the config);
    /// a user other than root hears only of those that hold versions of its own.
    Watched,
    Delete {
        #[serde(with = "wire_path")]
        path: PathBuf,
    },
    Reclaim {
        quota: u64,
    },
    /// The peer's state; with `path`, only the versions at or below it (and no hosted chunks,
    /// which have no path).
    State {
        #[serde(default, with = "wire_path::option")]
        path: Option<PathBuf>,
    },
    /// A full check of the catalog (SQLite's integrity_check); root only.
    Check,
    /// Every hosted chunk checked against its hash, the damaged ones dropped (REMOVED); root
    /// only.
    Scrub,
    /// Every peer heard or holding chunks of ours (no paths: anyone may ask).
    Peers,
    /// The health of this peer's backups at a glance (a user sees its own files only).
    Status,
    /// A catalog snapshot backed up now; root only.
    Snapshot,
    /// `restore --all` restored every file in place: after a recover, `keep_deleted` applies
    /// again (`store::snapshot::EXPIRY_HOLD`); root only.
    RestoredAll,
    /// The newest catalog snapshot of this peer found on the peers and installed (the daemon
    /// restarts with it); root only.
    Recover {
        /// Days looked back for dated snapshots (default `cmd::recover::DEFAULT_DAYS`).
        #[serde(default)]
        days: Option<u32>,
        /// Replace a catalog that already lists backups.
        #[serde(default)]
        force: bool,
        /// List the snapshots found, changing nothing.
        #[serde(default)]
        list: bool,
        /// The snapshot to install ("42", or "20794:3" for a dated one), not the newest.
        #[serde(default)]
        at: Option<String>,
        /// There is no catalog to recover: a reinstalled peer takes snapshots again.
        #[serde(default)]
        none: bool,
    },
}

impl Request {
    /// Decodes one request line as the daemon receives it (any bytes: a client may send
    /// anything). Never panics.
    pub fn decode(line: &[u8]) -> Result<Request, String> {
        if line.len() > MAX_REQUEST_LINE {
            return Err(format!("request longer than {MAX_REQUEST_LINE} bytes"));
        }
        let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
        serde_json::from_str(text.trim_end()).map_err(|e| e.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Progress {
        message: String,
        /// How far the work is, when it can say (a progress bar's numbers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<Amount>,
    },
    Done {
        code: i32,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<serde_json::Value>,
    },
}

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

/// How far a long command is: `done` of `total`, counted in `unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub done: u64,
    pub total: u64,
    pub unit: Unit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Bytes,
    Chunks,
    Files,
}

impl Unit {
    /// Its name in a progress line: "bytes", "chunks", "files".
    pub fn name(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Chunks => "chunks",
            Unit::Files => "files",
        }
    }
}

/// One progress reply as a client sees it: a line to show, or an amount (or both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressEvent {
    /// Empty for an amount alone.
    pub message: String,
    pub amount: Option<Amount>,
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

impl From<crate::store::snapshot::SnapshotRow> for SnapshotInfo {
    fn from(s: crate::store::snapshot::SnapshotRow) -> SnapshotInfo {
        SnapshotInfo {
            snapshot: s.slot.to_string(),
            taken: crate::store::snapshot::taken_label(s.slot, s.taken_ms),
            at_rd: s.at_rd,
        }
    }
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

/// What `restore` wrote into the caller's file, for the caller to finish it with its own rights:
/// owner (root only), mode and mtime, then its final name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    #[serde(with = "wire_path")]
    pub path: PathBuf,
    pub version: u32,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// The newest complete version, when it was not whole on the peers and this older one was
    /// restored instead (absent from older daemons).
    #[serde(default)]
    pub not_whole: Option<u32>,
}

/// `peers --json`: every peer heard, counted lost, or holding chunks of ours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeersReport {
    /// This peer's id.
    pub peer_id: u32,
    pub peers: Vec<PeerInfo>,
}

/// One other peer as `peers` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: u32,
    /// The protocol version it speaks ("1.0", "2.0"), as heard since this daemon started;
    /// null until that is known (a 2.0 peer is known by its first 2.0 message; a 1.0 peer
    /// once it was heard for longer than a 2.0 peer goes without a HELLO).
    pub protocol: Option<String>,
    /// Unix ms of its latest message heard since this daemon started; null if none.
    pub last_heard_ms: Option<i64>,
    /// Heard since this daemon started (absent from older daemons: false).
    #[serde(default)]
    pub heard_since_start: bool,
    /// Not heard since this daemon started: unix ms of its latest message heard before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_before_start_ms: Option<i64>,
    /// Silent longer than `peer.holder_timeout`: dropped from every holder set.
    pub lost: bool,
    /// Unix ms since when it is counted lost; null while it is not.
    pub lost_at_ms: Option<i64>,
    /// Chunks of this peer's own files it holds.
    pub chunks_of_ours: u64,
    /// Bytes of its chunks this peer hosts.
    pub hosted_bytes: u64,
    /// Deleted versions of ours whose DELETE it has not acknowledged.
    pub unacked_deletes: u64,
}

/// A version as `versions` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(with = "wire_path")]
    pub path: PathBuf,
    pub version: u32,
    pub file_id: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub desired_rd: u8,
    pub complete: bool,
    pub min_perceived_rd: u32,
    /// Its chunks are encrypted under the master key (absent from older daemons: false).
    #[serde(default)]
    pub encrypted: bool,
    /// When its file was found gone (unix seconds); None while it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
}

/// A folder as recorded when the files below it were backed up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderInfo {
    #[serde(with = "wire_path")]
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub mtime_ns: i64,
}

/// The answer to `Request::Folders`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldersAnswer {
    pub folders: Vec<FolderInfo>,
    /// When the newest catalog snapshot was taken (after a recover: the one installed), unix
    /// ms: a file deleted before it was gone before the loss. None: no snapshot says.
    #[serde(default)]
    pub snapshot_ms: Option<i64>,
}

/// The answer to `Request::Watched`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedFolders {
    #[serde(with = "wire_path::list")]
    pub folders: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the peerstash daemon at {}: {source} (is peerstashd running? is this the right --config/--socket?)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a socket: is this the right --config/--socket? (peer.control_socket names the daemon's)", .0.display())]
    NotASocket(PathBuf),
    #[error("permission denied on {0}: run as root or as a member of group peerstash (adduser $USER peerstash)")]
    Denied(PathBuf),
    #[error(
        "the daemon closed the connection before answering (see its log: journalctl -u peerstash)"
    )]
    Closed,
    #[error("connection to the daemon failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent a reply this peerstash does not understand: {0}")]
    BadReply(String),
    /// A local file operation of the caller's side (opening what to back up, placing a restore).
    #[error("{0}")]
    Local(String),
}

/// Sends one request, with `fds` attached to its first byte, and feeds every progress line to
/// `on_progress` (amounts alone are dropped); returns the final reply.
pub async fn call(
    socket: &Path,
    request: &Request,
    fds: &[BorrowedFd<'_>],
    mut on_progress: impl FnMut(&str),
) -> Result<(i32, String, Option<serde_json::Value>), ClientError> {
    call_events(socket, request, fds, |e| {
        if !e.message.is_empty() {
            on_progress(&e.message)
        }
    })
    .await
}

/// `call`, feeding every progress reply, amounts included, to `on_event`.
pub async fn call_events(
    socket: &Path,
    request: &Request,
    fds: &[BorrowedFd<'_>],
    mut on_event: impl FnMut(&ProgressEvent),
) -> Result<(i32, String, Option<serde_json::Value>), ClientError> {
    let stream = UnixStream::connect(socket).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::Denied(socket.to_path_buf())
        } else if std::fs::metadata(socket).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            !m.file_type().is_socket()
        }) {
            ClientError::NotASocket(socket.to_path_buf())
        } else {
            ClientError::Connect {
                path: socket.to_path_buf(),
                source,
            }
        }
    })?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push('\n');
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let (read, mut write) = stream.into_split();
    let written = match send_with_fds(write.as_ref(), line.as_bytes(), &raw).await {
        Ok(sent) => write.write_all(&line.as_bytes()[sent..]).await,
        Err(e) => Err(e),
    };
    // A daemon that refuses a connection at once (too many from this user) says why and
    // closes before reading: the write then fails, but its one line is there to read.
    let refused = match written {
        Ok(()) => None,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Some(e)
        }
        Err(e) => return Err(e.into()),
    };
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = match lines.next_line().await {
        Ok(line) => line,
        Err(e) => return Err(refused.unwrap_or(e).into()),
    } {
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Progress { message, amount }) => on_event(&ProgressEvent { message, amount }),
            Ok(Reply::Done {
                code,
                message,
                data,
            }) => return Ok((code, message, data)),
            Err(e) => return Err(ClientError::BadReply(format!("{e}: {line}"))),
        }
    }
    Err(refused.map_or(ClientError::Closed, ClientError::from))
}

/// Sends the first bytes of `bytes` with `fds` attached; returns how many bytes went.
async fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(bytes)];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Reads one request line (up to MAX_REQUEST_LINE bytes and its newline) and the descriptors
/// sent with it. Descriptors are counted as they arrive, at every `recvmsg`: once there are more
/// than MAX_FDS, all of them are closed at once and the request is an error, so a caller that
/// sends a line a byte at a time, each byte with descriptors, is refused at its first byte.
/// The caller bounds the time it waits for the newline.
pub async fn read_request(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 8192];
    while !line.contains(&b'\n') && line.len() <= MAX_REQUEST_LINE {
        stream.readable().await?;
        let got = stream.try_io(Interest::READABLE, || {
            recv_with_fds(stream.as_raw_fd(), &mut buf)
        });
        let (n, received, cut) = match got {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => r?,
        };
        fds.extend(received);
        if cut || fds.len() > MAX_FDS {
            // Dropping them closes them now, before anything else is read.
            drop(fds);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("more than {MAX_FDS} descriptor sent with one request: the connection is closed"),
            ));
        }
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
    }
    if let Some(end) = line.iter().position(|b| *b == b'\n') {
        line.truncate(end + 1);
    }
    Ok((line, fds))
}

/// One `recvmsg` into `buf`: the bytes read, the descriptors received (owned: closed when
/// dropped), and whether the kernel had more descriptors than room for them. The room is for
/// MAX_FDS + 1: the kernel installs only what fits and discards the rest without installing
/// them, so one call never gives this process more than that. (nix's `recvmsg` hands back no
/// descriptor of a message that did not fit, though the kernel installed some: they could not
/// be closed.)
fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>, bool)> {
    use nix::libc;
    const ROOM: u32 = (MAX_FDS + 1) as u32 * std::mem::size_of::<RawFd>() as u32;
    // u64 words: aligned for a cmsghdr; 64 bytes hold CMSG_SPACE(ROOM) (24 on Linux).
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a length.
    let space = unsafe { libc::CMSG_SPACE(ROOM) } as usize;
    let space = space.min(std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at iov (over buf) and control, both alive for the call and at least as
    // long as the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel wrote msg_controllen bytes of control messages into control; the
    // CMSG_* macros walk only within them. Each SCM_RIGHTS entry is a descriptor just
    // installed in this process and owned by nothing else: OwnedFd takes it at once.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, fds, msg.msg_flags & libc::MSG_CTRUNC != 0))
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

    #[test]
    fn a_message_with_too_many_descriptors_gives_us_at_most_two() {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let send = |n: usize| {
            let fds = vec![null.as_raw_fd(); n];
            let rights = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                a.as_raw_fd(),
                &[IoSlice::new(b"{")],
                &rights,
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        };
        let mut buf = [0u8; 16];
        send(1);
        let (n, fds, cut) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((n, fds.len(), cut), (1, 1, false));
        // SCM_MAX_FD of them: the kernel installs two here and discards the rest.
        send(253);
        let (n, fds, cut) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((n, fds.len(), cut), (1, MAX_FDS + 1, true));
        // What was received is a real descriptor, and ours to close.
        assert!(fds
            .iter()
            .all(|f| nix::sys::stat::fstat(f.as_raw_fd()).is_ok()));
    }

    #[test]
    fn paths_are_shown_unambiguously() {
        use std::os::unix::ffi::OsStrExt;
        let p = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
        assert_eq!(shown(&p(b"/a/caf\xc3\xa9")), "/a/café");
        assert_eq!(shown(&p(b"/a/caf\xe9")), "/a/caf\\xe9");
        assert_eq!(shown(&p(b"/a/x\ny")), "/a/x\\ny");
        assert_eq!(shown(&p(b"/a/b\\xe9")), "/a/b\\\\xe9");
    }

    #[test]
    fn requests_round_trip_as_json_lines() {
        let r = Request::Restore {
            path: "/a".into(),
            version: Some(2),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
        assert_eq!(
            Request::decode(b"{\"cmd\":\"state\"}\n"),
            Ok(Request::State { path: None })
        );
        let below = Request::State {
            path: Some("/srv/data".into()),
        };
        let text = serde_json::to_string(&below).unwrap();
        assert_eq!(Request::decode(text.as_bytes()), Ok(below));
        assert!(Request::decode(&[0xff, 0xfe]).is_err());
        // A name that is not UTF-8 (Latin-1 "café") and one with a newline survive the trip.
        use std::os::unix::ffi::OsStrExt;
        for name in [&b"/home/caf\xe9"[..], b"/home/a\nb", b"/plain"] {
            let r = Request::Versions {
                path: PathBuf::from(std::ffi::OsStr::from_bytes(name)),
            };
            let text = serde_json::to_string(&r).unwrap();
            assert!(!text.contains('\n'), "{text}");
            assert_eq!(Request::decode(text.as_bytes()), Ok(r));
        }
        assert!(Request::decode(br#"{"cmd":"versions","path":{"bytes_hex":"6"}}"#).is_err());
        assert!(Request::decode(br#"{"cmd":"versions","path":{"bytes_hex":"zz"}}"#).is_err());
        assert!(Request::decode(&vec![b' '; MAX_REQUEST_LINE + 1]).is_err());
    }
}
