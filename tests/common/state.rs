//! `peerstash state --json` read into types (SPEC §5), so tests say `c.peer(0).file(p).min_rd()`
//! instead of digging through JSON. Each snapshot keeps its JSON too: failure messages print it
//! whole, and a test may compare keys added after these types were written.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use super::{Peer, PEERSTASH};

/// One `state --json` of one peer.
#[derive(Clone, Debug)]
pub struct State {
    pub peer_id: u32,
    pub protocol: String,
    pub quota_bytes: u64,
    pub used_bytes: u64,
    /// One entry per backed-up version still kept.
    pub files: Vec<FileState>,
    /// The chunks this peer hosts for others.
    pub stored: Vec<StoredChunk>,
    pub malformed_datagrams: u64,
    /// The whole reply, as the daemon wrote it.
    pub json: Value,
}

/// One backed-up version of a file of this peer's.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct FileState {
    #[serde(deserialize_with = "wire_path")]
    pub path: PathBuf,
    pub file_id: String,
    pub version: u32,
    pub size: u64,
    pub desired_rd: u8,
    pub chunks: Vec<ChunkState>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ChunkState {
    pub chunk_no: u32,
    pub perceived_rd: u32,
}

/// One chunk this peer hosts for another.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct StoredChunk {
    pub file_id: String,
    pub chunk_no: u32,
    pub size: u64,
    pub desired_rd: u8,
    pub perceived_rd: u32,
}

/// The versions one peer keeps of one path, oldest first.
#[derive(Clone, Debug)]
pub struct BackedUp {
    pub path: PathBuf,
    versions: Vec<FileState>,
    /// The snapshot they come from, for failure messages.
    json: Value,
}

#[derive(Deserialize)]
struct Fields {
    peer_id: u32,
    protocol: String,
    quota_bytes: u64,
    used_bytes: u64,
    files: Vec<FileState>,
    stored: Vec<StoredChunk>,
    #[serde(default)]
    malformed_datagrams: u64,
}

/// A path on the control socket: a string, or `{"bytes_hex": …}` when it is not UTF-8.
fn wire_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Text(String),
        Bytes { bytes_hex: String },
    }
    match Wire::deserialize(d)? {
        Wire::Text(text) => Ok(PathBuf::from(text)),
        Wire::Bytes { bytes_hex } => {
            let bytes = (0..bytes_hex.len())
                .step_by(2)
                .map(|i| {
                    bytes_hex
                        .get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| serde::de::Error::custom("bytes_hex is not hexadecimal"))?;
            Ok(PathBuf::from(OsString::from_vec(bytes)))
        }
    }
}

impl State {
    /// Reads a `state --json` reply; None if it is not one.
    pub fn parse(bytes: &[u8]) -> Option<State> {
        let json: Value = serde_json::from_slice(bytes).ok()?;
        let f: Fields = serde_json::from_value(json.clone()).ok()?;
        Some(State {
            peer_id: f.peer_id,
            protocol: f.protocol,
            quota_bytes: f.quota_bytes,
            used_bytes: f.used_bytes,
            files: f.files,
            stored: f.stored,
            malformed_datagrams: f.malformed_datagrams,
            json,
        })
    }

    /// The versions kept of `path` (none: an empty `BackedUp`).
    pub fn file(&self, path: &Path) -> BackedUp {
        let mut versions: Vec<FileState> = self
            .files
            .iter()
            .filter(|f| f.path == path)
            .cloned()
            .collect();
        versions.sort_by_key(|f| f.version);
        BackedUp {
            path: path.to_owned(),
            versions,
            json: self.json.clone(),
        }
    }

    /// The lowest perceived RD of the newest version of each of `paths` (0 for a path with no
    /// version or no chunk).
    pub fn min_rd_of<'a>(&self, paths: impl IntoIterator<Item = &'a Path>) -> u32 {
        paths
            .into_iter()
            .map(|p| self.file(p).versions.last().map_or(0, FileState::min_rd))
            .min()
            .unwrap_or(0)
    }

    /// Whether this peer hosts chunk `chunk_no` of `file_id` (fileIds compare ignoring case).
    pub fn hosts(&self, file_id: &str, chunk_no: u32) -> bool {
        self.stored
            .iter()
            .any(|s| s.chunk_no == chunk_no && s.file_id.eq_ignore_ascii_case(file_id))
    }

    /// The chunks this peer hosts of one file.
    pub fn stored_of(&self, file_id: &str) -> Vec<&StoredChunk> {
        self.stored
            .iter()
            .filter(|s| s.file_id.eq_ignore_ascii_case(file_id))
            .collect()
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string_pretty(&self.json).map_err(|_| fmt::Error)?;
        f.write_str(&text)
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

    /// The highest perceived RD over the version's chunks.
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

impl BackedUp {
    /// Every version kept, oldest first.
    pub fn versions(&self) -> &[FileState] {
        &self.versions
    }

    pub fn is_backed_up(&self) -> bool {
        !self.versions.is_empty()
    }

    /// The newest version; panics (printing the peer's state) if the path has none.
    pub fn latest(&self) -> &FileState {
        self.versions.last().unwrap_or_else(|| {
            panic!(
                "no backed-up version of {:?} in state:\n{:#}",
                self.path, self.json
            )
        })
    }

    /// The lowest perceived RD of the newest version's chunks.
    pub fn min_rd(&self) -> u32 {
        self.latest().min_rd()
    }
}

impl Peer {
    /// This peer's state now; None if its daemon does not answer.
    pub fn try_state(&self) -> Option<State> {
        let out = Command::new(PEERSTASH)
            .arg("--config")
            .arg(&self.config)
            .args(["state", "--json"])
            .output()
            .expect("running peerstash");
        if !out.status.success() {
            return None;
        }
        State::parse(&out.stdout)
    }

    /// This peer's state now; panics (with the end of its log) if its daemon does not answer.
    pub fn state(&self) -> State {
        self.try_state().unwrap_or_else(|| {
            panic!(
                "state of peer {} failed; log:\n{}",
                self.id,
                self.log_tail()
            )
        })
    }

    /// The last 60 lines of this peer's daemon log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub fn used_bytes(&self) -> u64 {
        self.state().used_bytes
    }

    pub fn quota_bytes(&self) -> u64 {
        self.state().quota_bytes
    }

    /// The chunks this peer hosts for others.
    pub fn stored(&self) -> Vec<StoredChunk> {
        self.state().stored
    }

    /// The versions this peer keeps of `path`.
    pub fn file(&self, path: &Path) -> BackedUp {
        self.state().file(path)
    }
}
