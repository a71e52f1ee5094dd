//! The reply lines the daemon sends for a request: progress lines, then one final line with
//! an exit code, a message and, for the requests that answer with more, a typed payload.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{wire_path, PeerState, StatusReport};

/// One reply line. `D` is what the final line carries besides its code and message: on the
/// daemon's side `Answer` (any request's), on the caller's side the type of the request it sent
/// (`control::ask`), so each side works with typed values and the line stays what it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[serde(bound(serialize = "D: Serialize", deserialize = "D: Deserialize<'de>"))]
pub enum Reply<D = Answer> {
    Progress {
        message: String,
        /// How far the work is, when it can say (a progress bar's numbers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<Amount>,
    },
    Done {
        code: i32,
        message: String,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            serialize_with = "sorted"
        )]
        data: Option<D>,
    },
}

/// Writes `data` with the keys of its objects in sorted order, as the final line has always
/// carried them (it was built as a JSON value, whose keys sort): what `--json` prints and what
/// travels on the socket stay byte for byte the same.
fn sorted<S: serde::Serializer, T: Serialize>(data: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(data)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

/// `value` as one JSON line, the keys of its objects in sorted order (see `sorted`): how the
/// command line prints a report (`state --json`) or a line it builds itself (`suggest-id`).
pub fn sorted_json<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).map_or_else(|_| String::new(), |v| v.to_string())
}

/// What a final reply carries besides its code and message, by request. On the wire it is the
/// payload alone: the caller knows what it asked, and reads the payload as that request's type
/// (`control::ask`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// `Request::State`.
    State(PeerState),
    /// `Request::Status`.
    Status(StatusReport),
    /// `Request::Peers`.
    Peers(PeersReport),
    /// `Request::Versions`.
    Versions(Vec<VersionInfo>),
    /// `Request::Folders`.
    Folders(FoldersAnswer),
    /// `Request::Watched`.
    Watched(WatchedFolders),
    /// `Request::Restore`.
    Restore(RestoreAnswer),
    /// `Request::Recover`, when a snapshot was installed.
    Recovered(Recovered),
    /// Not the daemon's: the command line's own outcome of `restore --all`.
    RestoreAll(RestoreAllSummary),
    /// Not the daemon's: the command line's own outcome of `suggest-id`.
    SuggestedId(SuggestedId),
}

/// The payload of a request whose final reply carries none (`backup`, `delete`, `reclaim`,
/// `check`, `scrub`, `snapshot`, `restored_all`): there is no value of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Nothing {}

impl Nothing {
    /// Never called: there is no `Nothing`.
    pub fn answer(self) -> Answer {
        match self {}
    }
}

/// What `restore` answers: the file written, or why it was not when the caller has to say it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RestoreAnswer {
    Restored(Restored),
    Failed(RestoreFailed),
}

/// A restore that failed for a reason the caller words itself (it knows where the file goes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestoreFailed {
    /// The disk the restore writes to is full (every other file would fail the same way).
    pub disk_full: bool,
}

/// What `recover` answers once a snapshot is installed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recovered {
    /// "42", or "20794:3" for a dated one.
    pub snapshot: String,
    pub bytes: u64,
    pub versions: u64,
}

/// `restore --all --json`: its counts, in its final line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestoreAllSummary {
    pub files: u64,
    pub restored: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Deleted before the catalog snapshot was taken (gone before the loss): not restored.
    pub deleted_not_restored: u64,
    pub folders_given: u64,
    pub folders_failed: u64,
}

/// `suggest-id --json`: the id, the address it comes from and that address's interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuggestedId {
    pub id: u32,
    pub address: String,
    pub interface: Option<String>,
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
    /// When it became complete (unix ms, by the home peer's clock then): `restore --at` takes
    /// the newest version complete by then. None: unfinished (or an older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<i64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn done(data: Answer) -> String {
        let reply: Reply = Reply::Done {
            code: 0,
            message: "m".into(),
            data: Some(data),
        };
        serde_json::to_string(&reply).unwrap()
    }

    /// The lines as they were when the payload was a JSON value (its keys sorted): the same
    /// bytes, on the socket and in `--json`.
    #[test]
    fn final_lines_keep_their_bytes_keys_sorted() {
        let restored = Restored {
            path: "/a/b".into(),
            version: 2,
            size: 10,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime_ns: -5,
            not_whole: None,
        };
        assert_eq!(
            done(Answer::Restore(RestoreAnswer::Restored(restored.clone()))),
            r#"{"type":"done","code":0,"message":"m","data":{"gid":2,"mode":420,"mtime_ns":-5,"not_whole":null,"path":"/a/b","size":10,"uid":1,"version":2}}"#
        );
        assert_eq!(
            done(Answer::Restore(RestoreAnswer::Failed(RestoreFailed {
                disk_full: true
            }))),
            r#"{"type":"done","code":0,"message":"m","data":{"disk_full":true}}"#
        );
        assert_eq!(
            done(Answer::Watched(WatchedFolders {
                folders: vec!["/srv".into()]
            })),
            r#"{"type":"done","code":0,"message":"m","data":{"folders":["/srv"]}}"#
        );
        assert_eq!(
            done(Answer::RestoreAll(RestoreAllSummary {
                files: 3,
                restored: 2,
                skipped: 0,
                failed: 1,
                deleted_not_restored: 0,
                folders_given: 4,
                folders_failed: 0,
            })),
            r#"{"type":"done","code":0,"message":"m","data":{"deleted_not_restored":0,"failed":1,"files":3,"folders_failed":0,"folders_given":4,"restored":2,"skipped":0}}"#
        );
        let suggested: Reply = Reply::Done {
            code: 0,
            message: "suggested peer.id: 258".into(),
            data: Some(Answer::SuggestedId(SuggestedId {
                id: 258,
                address: "10.0.1.2".into(),
                interface: None,
            })),
        };
        assert_eq!(
            sorted_json(&suggested),
            r#"{"code":0,"data":{"address":"10.0.1.2","id":258,"interface":null},"message":"suggested peer.id: 258","type":"done"}"#
        );
        // Without a payload, and a progress line: as before.
        let plain: Reply = Reply::Done {
            code: 1,
            message: "no".into(),
            data: None,
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"type":"done","code":1,"message":"no"}"#
        );
    }

    /// The caller reads the payload as its request's type; a request that answers with none
    /// refuses a line that carries one.
    #[test]
    fn the_caller_reads_its_own_requests_type() {
        let line = done(Answer::Restore(RestoreAnswer::Failed(RestoreFailed {
            disk_full: true,
        })));
        assert_eq!(
            serde_json::from_str::<Reply<RestoreAnswer>>(&line).unwrap(),
            Reply::Done {
                code: 0,
                message: "m".into(),
                data: Some(RestoreAnswer::Failed(RestoreFailed { disk_full: true }))
            }
        );
        assert!(serde_json::from_str::<Reply<Nothing>>(&line).is_err());
        assert!(matches!(
            serde_json::from_str::<Reply<Nothing>>(r#"{"type":"done","code":0,"message":"x"}"#),
            Ok(Reply::Done { data: None, .. })
        ));
        let progress =
            r#"{"type":"progress","message":"p","amount":{"done":1,"total":2,"unit":"files"}}"#;
        let read = serde_json::from_str::<Reply<Nothing>>(progress).unwrap();
        assert_eq!(serde_json::to_string(&read).unwrap(), progress);
    }
}
