//! The typed state of a peer for tests: `c.peer(0).state().file(p).min_rd()`. The types and
//! their queries are the library's (`peerstash::cluster::State`, a `PeerState` with its JSON);
//! here are the steps that fail the test, with the peer's log or state, when there is nothing
//! to read.

use std::path::{Path, PathBuf};

use peerstash::cluster::{Peer, State};
use peerstash::control::{FileState, PeersReport, StoredState};
use peerstash::store::Health;
use serde_json::Value;

/// The versions one peer keeps of one path, oldest first.
#[derive(Clone, Debug)]
pub struct BackedUp {
    pub path: PathBuf,
    versions: Vec<FileState>,
    /// The snapshot they come from, for failure messages.
    json: Value,
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

    /// The newest version's health, as the daemon reported it.
    pub fn health(&self) -> Health {
        self.latest().health
    }
}

pub trait StateExt {
    /// The versions kept of `path` (none: an empty `BackedUp`).
    fn file(&self, path: &Path) -> BackedUp;
}

impl StateExt for State {
    fn file(&self, path: &Path) -> BackedUp {
        BackedUp {
            path: path.to_owned(),
            versions: self.versions_of(path).into_iter().cloned().collect(),
            json: self.json.clone(),
        }
    }
}

pub trait PeerExt {
    /// This peer's state now; panics (with the end of its log) if its daemon does not answer.
    fn state(&self) -> State;

    fn used_bytes(&self) -> u64 {
        self.state().used_bytes
    }

    fn quota_bytes(&self) -> u64 {
        self.state().quota_bytes
    }

    /// The chunks this peer hosts for others.
    fn stored(&self) -> Vec<StoredState> {
        self.state().into_inner().stored
    }

    /// The versions this peer keeps of `path`.
    fn file(&self, path: &Path) -> BackedUp {
        self.state().file(path)
    }

    /// `peers --json`: the other peers this one heard or holds chunks with; panics (with the
    /// end of its log) if its daemon does not answer.
    fn peers(&self) -> PeersReport;
}

impl PeerExt for Peer {
    fn state(&self) -> State {
        self.try_state()
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log_tail(60)))
    }

    fn peers(&self) -> PeersReport {
        let out = self
            .cli(["peers", "--json"])
            .unwrap_or_else(|e| panic!("peer {}: {e}", self.id));
        assert!(
            out.status.success(),
            "peers --json on peer {}: {}; log:\n{}",
            self.id,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(60)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "peers --json on peer {}: {e}: {}",
                self.id,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}
