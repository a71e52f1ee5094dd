//! A peer's `state --json` as the command line prints it: the control socket's typed
//! `PeerState` (its fields and queries through `Deref`), and the JSON it was read from, which
//! failure messages print whole and a caller may search for keys added after `PeerState`.

use std::fmt;
use std::ops::Deref;

use serde::Deserialize;
use serde_json::Value;

use crate::control::PeerState;

/// One `state --json` of one peer.
#[derive(Clone, Debug)]
pub struct State {
    state: PeerState,
    /// The whole reply, as the daemon wrote it.
    pub json: Value,
}

impl State {
    /// Reads the output of `peerstash state --json`.
    pub fn parse(bytes: &[u8]) -> Result<State, serde_json::Error> {
        let json: Value = serde_json::from_slice(bytes)?;
        let state = PeerState::deserialize(&json)?;
        Ok(State { state, json })
    }

    /// The typed state alone.
    pub fn into_inner(self) -> PeerState {
        self.state
    }
}

impl Deref for State {
    type Target = PeerState;

    fn deref(&self) -> &PeerState {
        &self.state
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string_pretty(&self.json).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Health;

    #[test]
    fn a_reply_keeps_its_json_and_reads_as_a_peer_state() {
        let reply = br#"{"peer_id": 3, "protocol": "1.0", "quota_bytes": 100, "used_bytes": 7,
            "files": [{"path": {"bytes_hex": "2f61e9"}, "file_id": "ab", "version": 1,
                       "size": 5, "desired_rd": 2, "complete": true,
                       "chunks": [{"chunk_no": 0, "perceived_rd": 2}]}],
            "stored": [], "added_later": [1, 2]}"#;
        let s = State::parse(reply).unwrap();
        assert_eq!((s.peer_id, s.used_bytes), (3, 7));
        assert_eq!(s.files[0].min_rd(), 2);
        // Without a health from the daemon (an older one), it is worked out from the chunks.
        assert_eq!(s.files[0].health, Health::Healthy);
        // A path that is not UTF-8 arrives as its bytes.
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(s.files[0].path.as_os_str().as_bytes(), b"/a\xe9");
        assert_eq!(s.json["added_later"][1], 2);
        assert!(s.to_string().contains("\"added_later\""));
        assert!(State::parse(b"{\"peer_id\": 3}").is_err());
    }

    #[test]
    fn each_file_has_the_health_the_daemon_sent() {
        let reply = br#"{"peer_id": 3, "protocol": "2.0", "quota_bytes": 0, "used_bytes": 0,
            "files": [{"path": "/a", "file_id": "ab", "version": 1, "size": 5, "desired_rd": 3,
                       "complete": true, "health": "at risk", "chunks_below_rd": 2,
                       "chunks_at_risk": 1,
                       "chunks": [{"chunk_no": 0, "perceived_rd": 1},
                                  {"chunk_no": 1, "perceived_rd": 2}]}],
            "stored": [], "unacked_deletes": 4}"#;
        let s = State::parse(reply).unwrap();
        let f = &s.files[0];
        assert_eq!(
            (f.health, f.chunks_below_rd),
            (Health::AtRisk { chunks: 1 }, 2)
        );
        assert_eq!(s.unacked_deletes, 4);
        // Written back as the daemon wrote it.
        let again = serde_json::to_value(&s.files[0]).unwrap();
        assert_eq!(again, s.json["files"][0]);
        assert!(State::parse(b"not json").is_err());
    }
}
