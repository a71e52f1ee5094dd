//! The control socket's language: one JSON request line from `peerstash`, then reply lines from
//! the daemon (progress lines, then one final line with an exit code). Shared by both sides.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Exit statuses of SPEC §5.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const BELOW_RD: i32 = 3;
    pub const UNREACHABLE: i32 = 4;
}

/// Longest request line the daemon reads; a longer one is refused.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Backup {
        path: PathBuf,
        replication: Option<u8>,
    },
    Restore {
        path: PathBuf,
        version: Option<u32>,
        to: Option<PathBuf>,
        force: bool,
    },
    Versions {
        path: PathBuf,
    },
    Delete {
        path: PathBuf,
    },
    Reclaim {
        quota: u64,
    },
    State,
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
    /// Paths waiting in the backup queue.
    #[serde(default)]
    pub queue_length: u64,
    /// Paths being backed up now by the queue.
    #[serde(default)]
    pub in_progress: Vec<PathBuf>,
    /// Datagrams dropped since start because they were malformed (or on the wrong channel).
    #[serde(default)]
    pub malformed_datagrams: u64,
    /// PUTCHUNKs dropped since start because too many chunks were being stored at once.
    #[serde(default)]
    pub busy_drops: u64,
    /// STOREDs, GETCHUNKs, DELETEs and REMOVEDs dropped since start because the work queued
    /// for the catalog was full (a flood).
    #[serde(default)]
    pub queue_drops: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileState {
    pub path: PathBuf,
    pub file_id: String,
    pub version: u32,
    pub size: u64,
    pub desired_rd: u8,
    /// Every chunk was sent and the backup ended (some may still be below their desired RD).
    pub complete: bool,
    pub chunks: Vec<ChunkState>,
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

/// A version as `versions` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub path: PathBuf,
    pub version: u32,
    pub file_id: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub desired_rd: u8,
    pub complete: bool,
    pub min_perceived_rd: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the peerstash daemon at {path}: {source} (is peerstashd running? is this the right --config/--socket?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
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
}

/// Sends one request and feeds every reply line to `on_reply`; returns the final reply.
pub async fn call(
    socket: &Path,
    request: &Request,
    mut on_progress: impl FnMut(&str),
) -> Result<(i32, String, Option<serde_json::Value>), ClientError> {
    let stream = UnixStream::connect(socket).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::Denied(socket.to_path_buf())
        } else {
            ClientError::Connect {
                path: socket.to_path_buf(),
                source,
            }
        }
    })?;
    let (read, mut write) = stream.into_split();
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Progress { message }) => on_progress(&message),
            Ok(Reply::Done {
                code,
                message,
                data,
            }) => return Ok((code, message, data)),
            Err(e) => return Err(ClientError::BadReply(format!("{e}: {line}"))),
        }
    }
    Err(ClientError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json_lines() {
        let r = Request::Restore {
            path: "/a".into(),
            version: Some(2),
            to: None,
            force: false,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
        assert_eq!(
            Request::decode(b"{\"cmd\":\"state\"}\n"),
            Ok(Request::State)
        );
        assert!(Request::decode(&[0xff, 0xfe]).is_err());
        assert!(Request::decode(&vec![b' '; MAX_REQUEST_LINE + 1]).is_err());
    }
}
