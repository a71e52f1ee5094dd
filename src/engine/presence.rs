//! Who is out there (a part of `peer::Peer`): HELLO at start and every `hello_every` (2.0), the
//! peers heard and when, a peer found back after a silence (it may have missed DELETEs), and
//! PUTCHUNKs that carry our own id (another peer may use it).

use std::time::{Duration, Instant};

use super::lru::LruMap;
use super::out::{Action, Timer};
use super::peer::Peer;
use crate::protocol::{ChunkId, MessageKind, PeerId};

/// A PUTCHUNK with our own id is looked into once a second at most.
const OWN_ID_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Our own re-backup or a deleted file explains a PUTCHUNK with our id this long after.
const OWN_ID_EXPLAINED_FOR: Duration = Duration::from_secs(60);

/// 2.0: HELLO is sent at start and this often (unless `set_hello_every` says otherwise), so the
/// peers know this one is alive and send it the DELETEs it missed.
pub const HELLO_EVERY: Duration = Duration::from_secs(60);
/// 2.0: a peer heard after this long a silence is back (it may have missed DELETEs).
pub const AWAY_AFTER: Duration = Duration::from_secs(30);
/// 2.0: a peer is found back at most this often (each time, its missed DELETEs are looked up:
/// one indexed query, so a flood of forged HELLOs costs the catalog little).
pub const BACK_EVERY: Duration = Duration::from_secs(1);
/// Peers whose last message is remembered (a flood of forged ids evicts the oldest).
pub const MAX_PEERS_SEEN: usize = 4096;

/// When a peer was last heard, and last found back.
struct Seen {
    last: Instant,
    back: Option<Instant>,
}

/// The peers heard, and our own HELLO's cadence.
pub(super) struct Presence {
    hello_every: Duration,
    seen: LruMap<PeerId, Seen>,
    /// 2.0: when we last answered a new peer's HELLO with ours.
    hello_answered: Option<Instant>,
    own_id_checked: Option<Instant>,
}

impl Presence {
    pub(super) fn new() -> Presence {
        Presence {
            hello_every: HELLO_EVERY,
            seen: LruMap::new(MAX_PEERS_SEEN),
            hello_answered: None,
            own_id_checked: None,
        }
    }

    pub(super) fn set_hello_every(&mut self, every: Duration) {
        self.hello_every = every.max(Duration::from_secs(1));
    }

    /// Peers heard (within the bound of `MAX_PEERS_SEEN`).
    pub(super) fn peers_seen(&self) -> usize {
        self.seen.len()
    }

    /// When the peer was last heard.
    pub(super) fn last_heard(&self, peer: &PeerId) -> Option<Instant> {
        self.seen.get(peer).map(|s| s.last)
    }

    /// Whether the peer is alive: heard within three HELLOs.
    pub(super) fn alive(&self, peer: &PeerId, now: Instant) -> bool {
        self.last_heard(peer)
            .is_some_and(|last| now.saturating_duration_since(last) < self.hello_every * 3)
    }
}

impl Peer {
    /// The peer starts: a 2.0 peer says HELLO now, and then every `hello_every`.
    pub fn start(&mut self, now: Instant) {
        if self.enhanced {
            self.fire_hello(now);
        }
    }

    pub(super) fn fire_hello(&mut self, now: Instant) {
        self.send_v2(MessageKind::Hello);
        self.out.arm(now + self.presence.hello_every, Timer::Hello);
    }

    /// 2.0: a peer spoke. It is back (it may have missed DELETEs) when it says HELLO, or speaks
    /// after `AWAY_AFTER` of silence, or for the first time since we started; at most once per
    /// `BACK_EVERY`.
    pub(super) fn heard(&mut self, peer: PeerId, hello: bool, now: Instant) {
        let (back, last_back) = match self.presence.seen.get(&peer) {
            None if hello => {
                // A peer that just started: it hears our HELLO too (at most one a second,
                // whatever a flood of new ids), so it knows us before our next one.
                if (self.presence.hello_answered)
                    .is_none_or(|t| now.saturating_duration_since(t) >= BACK_EVERY)
                {
                    self.presence.hello_answered = Some(now);
                    self.send_v2(MessageKind::Hello);
                }
                (true, None)
            }
            None => (true, None),
            Some(s) => (
                hello || now.saturating_duration_since(s.last) >= AWAY_AFTER,
                s.back,
            ),
        };
        let allowed = last_back.is_none_or(|t| now.saturating_duration_since(t) >= BACK_EVERY);
        let back = if back && allowed {
            self.out.actions.push_back(Action::PeerBack { peer });
            Some(now)
        } else {
            last_back
        };
        self.presence.seen.insert(peer, Seen { last: now, back });
    }

    pub(super) fn own_id_putchunk(&mut self, chunk: ChunkId, now: Instant) {
        // Our own re-backup, or a chunk of a file deleted lately, explains it.
        let recently = now.checked_sub(OWN_ID_EXPLAINED_FOR).unwrap_or(now);
        if self.backing_up(&chunk) || self.deleted_since(&chunk.file_id, recently) {
            return;
        }
        if self
            .presence
            .own_id_checked
            .is_some_and(|t| now.saturating_duration_since(t) < OWN_ID_CHECK_EVERY)
        {
            return;
        }
        self.presence.own_id_checked = Some(now);
        self.out.actions.push_back(Action::CheckOwnId { chunk });
    }
}
