//! The reply lines the daemon sends for a request: progress lines, then one final line with
//! an exit code, a message and, for the requests that answer with more, a typed payload.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::wire_path;

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
