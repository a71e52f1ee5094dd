//! The request line a caller sends on the control socket: one JSON object, `cmd` naming the
//! request; decoded by the daemon from whatever bytes arrive.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::wire_path;

/// Longest request line the daemon reads; a longer one is refused.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

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
    /// `peerstash history resume DIR`: the guard held DIR's history (too many files changed at
    /// once); pruning goes on there; root only.
    HistoryResume {
        #[serde(with = "wire_path")]
        path: PathBuf,
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
        /// Days looked back for dated snapshots (default `server::recover::DEFAULT_DAYS`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
