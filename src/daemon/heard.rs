//! The peers heard since this daemon started, and what protocol each speaks: a transient of
//! this process (the catalog keeps when each was last heard, across restarts). A 2.0 peer sends
//! most messages tagged 1.0, so the highest version heard is not what it speaks: a 2.0 peer is
//! known by its first 2.0 message (or the `INC` line of its STOREDs), a 1.0 peer by being heard
//! longer than a 2.0 peer goes without a HELLO, with no sign of 2.0.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::engine::peer::{HELLO_EVERY, MAX_PEERS_SEEN};
use crate::engine::presence::{higher, Noted};
use crate::protocol::message::{PeerId, Version};

/// Heard over longer than this with no sign of 2.0, a peer speaks 1.0: a 2.0 peer says HELLO
/// at least once per `HELLO_EVERY`; two periods, so that one lost HELLO does not make it 1.0.
pub const ONE_ZERO_AFTER: Duration = HELLO_EVERY
    .saturating_mul(2)
    .saturating_add(Duration::from_secs(5));

/// What was heard from one peer since start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    first: Instant,
    last: Instant,
    /// Unix ms of `last`, to show.
    pub last_ms: i64,
    /// The highest version tagging its messages.
    highest: Version,
    /// A 2.0 message or an `INC` line heard from it.
    speaks_two: bool,
}

impl Heard {
    /// The version it speaks, once known.
    pub fn protocol(&self) -> Option<Version> {
        if self.speaks_two {
            return Some(higher(Version::V2_0, self.highest));
        }
        (self.last.saturating_duration_since(self.first) > ONE_ZERO_AFTER).then_some(self.highest)
    }
}

/// Every peer heard since start (at most `MAX_PEERS_SEEN`: the ones heard first are kept).
#[derive(Debug, Default)]
pub struct SinceStart {
    peers: HashMap<PeerId, Heard>,
}

impl SinceStart {
    /// Notes what `peer` said (`first` and `last` of a batch: the times of its first and last
    /// message in it) and returns the protocol it is now known to speak, if known.
    pub fn heard(&mut self, peer: PeerId, first: Instant, last: Noted) -> Option<Version> {
        if self.peers.len() >= MAX_PEERS_SEEN && !self.peers.contains_key(&peer) {
            return None;
        }
        let h = self.peers.entry(peer).or_insert(Heard {
            first,
            last: last.at,
            last_ms: last.at_ms,
            highest: last.version,
            speaks_two: false,
        });
        h.first = h.first.min(first);
        if last.at >= h.last {
            h.last = last.at;
            h.last_ms = last.at_ms;
        }
        h.highest = higher(h.highest, last.version);
        h.speaks_two |= last.speaks_two || last.version.has_enhancements();
        h.protocol()
    }

    pub fn get(&self, peer: PeerId) -> Option<&Heard> {
        self.peers.get(&peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(at: Instant, version: Version, speaks_two: bool) -> Noted {
        Noted {
            at,
            at_ms: 1,
            version,
            speaks_two,
        }
    }

    #[test]
    fn a_two_zero_peer_is_known_by_its_first_sign_of_two_zero_not_by_its_one_zero_messages() {
        let t0 = Instant::now();
        let mut s = SinceStart::default();
        let p = PeerId(2);
        // Its PUTCHUNKs and REMOVEDs are tagged 1.0: nothing is known yet.
        assert_eq!(s.heard(p, t0, msg(t0, Version::V1_0, false)), None);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(s.heard(p, later, msg(later, Version::V1_0, false)), None);
        // Its HELLO (or a STORED with an INC line, tagged 1.0).
        assert_eq!(
            s.heard(p, later, msg(later, Version::V1_0, true)),
            Some(Version::V2_0)
        );
        // Stays 2.0 whatever it sends next.
        let much_later = t0 + Duration::from_secs(600);
        assert_eq!(
            s.heard(p, much_later, msg(much_later, Version::V1_0, false)),
            Some(Version::V2_0)
        );
        let q = PeerId(3);
        assert_eq!(
            s.heard(q, t0, msg(t0, Version::V2_0, false)),
            Some(Version::V2_0)
        );
    }

    #[test]
    fn a_peer_heard_longer_than_two_hello_periods_with_no_sign_of_two_zero_speaks_one_zero() {
        let t0 = Instant::now();
        let mut s = SinceStart::default();
        let p = PeerId(2);
        assert_eq!(s.heard(p, t0, msg(t0, Version::V1_0, false)), None);
        // One HELLO period and more: a 2.0 peer's HELLO may have been lost.
        let t1 = t0 + HELLO_EVERY + Duration::from_secs(10);
        assert_eq!(s.heard(p, t1, msg(t1, Version::V1_0, false)), None);
        let t2 = t0 + ONE_ZERO_AFTER;
        assert_eq!(s.heard(p, t2, msg(t2, Version::V1_0, false)), None);
        let t3 = t2 + Duration::from_millis(1);
        assert_eq!(
            s.heard(p, t3, msg(t3, Version::V1_0, false)),
            Some(Version::V1_0)
        );
        // A peer heard once, then silent, is not called 1.0 however long ago that was.
        let q = PeerId(3);
        assert_eq!(s.heard(q, t0, msg(t0, Version::V1_0, false)), None);
        assert_eq!(s.get(q).unwrap().protocol(), None);
        // Batches may come late: the first time heard is kept.
        assert_eq!(
            s.heard(
                q,
                t3,
                msg(t0 + Duration::from_secs(1), Version::V1_0, false)
            ),
            None
        );
        assert_eq!(s.get(q).unwrap().last_ms, 1);
    }

    #[test]
    fn forged_ids_beyond_the_bound_are_not_kept() {
        let t0 = Instant::now();
        let mut s = SinceStart::default();
        for id in 0..MAX_PEERS_SEEN as u32 + 10 {
            s.heard(PeerId(id), t0, msg(t0, Version::V2_0, false));
        }
        assert_eq!(s.peers.len(), MAX_PEERS_SEEN);
        assert!(s.get(PeerId(0)).is_some());
        assert!(s.get(PeerId(MAX_PEERS_SEEN as u32)).is_none());
    }
}
