//! Who is out there (a part of `peer::Peer`): HELLO at start and every `hello_every` (2.0), the
//! peers heard and when, a peer found back after a silence (it may have missed DELETEs), and
//! PUTCHUNKs that carry our own id (another peer may use it). And the rules the home peer's
//! service applies to what presence tells: when a silent holder is counted lost
//! (`holder_lost`, `lost_holders`, `lost_holder_looks`) and when the repair looks at our chunks
//! below their RD (`RepairSchedule`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::out::{Action, Timer};
use super::Peer;
use crate::engine::lru::LruMap;
use crate::protocol::{ChunkId, MessageKind, PeerId, Version};

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

// ---- lost holders and the repair's cadence (pure: the service calls them) --------------------

/// How often our files are checked for chunks below their desired RD.
pub const REPAIR_EVERY: Duration = Duration::from_secs(60);
/// After a REMOVED, holders get this long to re-back up before the home peer does.
pub const REPAIR_GRACE: Duration = Duration::from_secs(5);

/// 2.0: how often a peer says HELLO, given `holder_timeout`: several HELLOs per timeout, so a
/// live peer is never counted lost (at most `HELLO_EVERY`).
pub fn hello_every_for(holder_timeout: Duration) -> Duration {
    HELLO_EVERY.min(holder_timeout / 5)
}

/// 2.0: how often the home peer looks for lost holders: a few looks per `holder_timeout`, so a
/// holder is counted lost soon after its time; at least once a second, at most once per
/// `REPAIR_EVERY`.
pub fn lost_holder_looks(holder_timeout: Duration) -> Duration {
    (holder_timeout / 5).clamp(Duration::from_secs(1), REPAIR_EVERY)
}

/// 2.0: whether a holder is lost at `now` (all in ms on the same clock): not heard for longer
/// than `holder_timeout`, counted from `started` (this daemon's start) at the earliest, since a
/// peer we could not hear before we started is not silent for that time.
pub fn holder_lost(
    now: i64,
    last_heard: Option<i64>,
    started: i64,
    holder_timeout: Duration,
) -> bool {
    let silent_since = last_heard.unwrap_or(started).max(started);
    now - silent_since > holder_timeout.as_millis() as i64
}

/// A peer that holds chunks (of ours or hosted here), as the catalog knows it
/// (`Catalog::holders_heard`): what `lost_holders` decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HolderHeard {
    pub peer: PeerId,
    /// Unix ms of its latest message recorded; None if never heard.
    pub last_heard: Option<i64>,
    /// Already counted lost (and not heard since).
    pub lost: bool,
}

/// 2.0: the lost-holder look at `now` (unix ms): the holders not already counted lost that
/// `holder_lost` says are, but `me` (this peer counts itself a holder of what it hosts, and
/// never hears itself). The service's worker and the simulation both decide with this.
pub fn lost_holders(
    holders: &[HolderHeard],
    me: PeerId,
    now: i64,
    started: i64,
    holder_timeout: Duration,
) -> Vec<HolderHeard> {
    (holders.iter())
        .filter(|h| h.peer != me && !h.lost)
        .filter(|h| holder_lost(now, h.last_heard, started, holder_timeout))
        .copied()
        .collect()
}

/// When the repair looks next: every `REPAIR_EVERY`, and `REPAIR_GRACE` after a REMOVED left
/// one of our chunks below its RD (the holders get that long to re-back it up first). REMOVEDs
/// arriving meanwhile do not push the look back.
#[derive(Clone, Copy, Debug)]
pub struct RepairSchedule {
    next: Instant,
}

impl RepairSchedule {
    pub fn new(now: Instant) -> RepairSchedule {
        RepairSchedule {
            next: now + REPAIR_EVERY,
        }
    }

    pub fn next(&self) -> Instant {
        self.next
    }

    /// A REMOVED (or a lost holder) left one of our chunks below its RD.
    pub fn on_removed(&mut self, now: Instant) {
        self.next = self.next.min(now + REPAIR_GRACE);
    }

    /// The repair looked at `now`.
    pub fn ran(&mut self, now: Instant) {
        self.next = now + REPAIR_EVERY;
    }
}

// ---- who was heard, for the catalog (pure: the driver feeds it) ------------------------------

/// Who was heard is recorded in the catalog this often (`peers`, what the lost-holder look reads):
/// one write a second, not one per datagram.
pub const HEARD_RECORD_EVERY: Duration = Duration::from_secs(1);

/// One message from a peer (or the latest of a batch), as the driver notes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Noted {
    pub at: Instant,
    /// Unix ms of `at` (the driver's wall clock), to record.
    pub at_ms: i64,
    /// Its version (in a batch: the highest).
    pub version: Version,
    /// A 2.0 message or an `INC` line heard from it (in a batch: in any of its messages).
    pub speaks_two: bool,
}

/// The peers heard since the catalog last recorded them, and when it records them next: at
/// start, then `HEARD_RECORD_EVERY` after each record. A record that comes late pushes the next
/// ones back (a full period after it), never two in a row to catch up.
pub struct HeardBatch {
    me: PeerId,
    next: Instant,
    /// Per peer: when first heard in this batch, and its latest message.
    peers: BTreeMap<PeerId, (Instant, Noted)>,
}

impl HeardBatch {
    /// The batch of peer `me` (it never records itself), its first record due at `now`.
    pub fn new(me: PeerId, now: Instant) -> HeardBatch {
        HeardBatch {
            me,
            next: now,
            peers: BTreeMap::new(),
        }
    }

    /// `peer` said something. On every datagram: no allocation once the peer is in the batch.
    pub fn note(&mut self, peer: PeerId, noted: Noted) {
        if peer == self.me {
            return;
        }
        if self.peers.len() >= MAX_PEERS_SEEN && !self.peers.contains_key(&peer) {
            return; // a flood of forged ids: the ones heard first are kept
        }
        let e = self.peers.entry(peer).or_insert((noted.at, noted));
        e.1 = Noted {
            version: higher(e.1.version, noted.version),
            speaks_two: e.1.speaks_two || noted.speaks_two,
            ..noted
        };
    }

    /// When the next record is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// At `now`: None before the record is due; when it is, the peers heard since the last one
    /// (each with when it was first heard in the batch and its latest message; maybe none, the
    /// driver writes the LAN key's marks then too), and the next record is due a period later.
    pub fn due(&mut self, now: Instant) -> Option<Vec<(PeerId, Instant, Noted)>> {
        if now < self.next {
            return None;
        }
        self.next = now + HEARD_RECORD_EVERY;
        Some(self.take())
    }

    /// The peers heard since the last record, whatever the time (the last record, at stop).
    pub fn take(&mut self) -> Vec<(PeerId, Instant, Noted)> {
        (std::mem::take(&mut self.peers).into_iter())
            .map(|(peer, (first, last))| (peer, first, last))
            .collect()
    }
}

/// The higher of two versions ("2.0" above "1.9").
pub fn higher(a: Version, b: Version) -> Version {
    match (b.major, b.minor) > (a.major, a.minor) {
        true => b,
        false => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_looks_every_minute_and_five_seconds_after_a_removed() {
        let t0 = Instant::now();
        let mut r = RepairSchedule::new(t0);
        assert_eq!(r.next() - t0, REPAIR_EVERY);
        r.on_removed(t0 + Duration::from_secs(10));
        assert_eq!(r.next() - t0, Duration::from_secs(15));
        // A flood of REMOVEDs does not push the look back.
        for s in 11..15 {
            r.on_removed(t0 + Duration::from_secs(s));
        }
        assert_eq!(r.next() - t0, Duration::from_secs(15));
        r.ran(t0 + Duration::from_secs(15));
        assert_eq!(r.next() - t0, Duration::from_secs(75));
        // Close to the periodic look, a REMOVED does not delay it either.
        r.on_removed(t0 + Duration::from_secs(73));
        assert_eq!(r.next() - t0, Duration::from_secs(75));
    }

    #[test]
    fn a_holder_is_lost_once_silent_past_the_timeout_counted_from_our_start() {
        let timeout = Duration::from_secs(10);
        // Heard at 1 s, we started at 0: lost after 11 s, not at 11 s exactly.
        assert!(!holder_lost(11_000, Some(1_000), 0, timeout));
        assert!(holder_lost(11_001, Some(1_000), 0, timeout));
        // Last heard before our start (an old row): the silence counts from our start.
        assert!(!holder_lost(14_000, Some(1_000), 5_000, timeout));
        assert!(holder_lost(15_001, Some(1_000), 5_000, timeout));
        // Never heard: likewise from our start.
        assert!(!holder_lost(15_000, None, 5_000, timeout));
        assert!(holder_lost(15_001, None, 5_000, timeout));
        // Heard lately: never lost.
        assert!(!holder_lost(20_000, Some(19_000), 0, timeout));
    }

    #[test]
    fn the_look_counts_lost_the_silent_holders_but_itself_and_those_already_lost() {
        let holder = |peer, last_heard, lost| HolderHeard {
            peer: PeerId(peer),
            last_heard,
            lost,
        };
        let holders = [
            holder(1, None, false),        // this peer: a holder of what it hosts
            holder(2, Some(1_000), false), // heard before our start at 5 s
            holder(3, Some(9_000), false), // heard since
            holder(4, None, false),        // never heard
            holder(5, Some(1_000), true),  // already counted lost
        ];
        let (timeout, started, me) = (Duration::from_secs(10), 5_000, PeerId(1));
        let peers = |now| -> Vec<u32> {
            (lost_holders(&holders, me, now, started, timeout).iter())
                .map(|h| h.peer.0)
                .collect()
        };
        assert_eq!(peers(15_000), Vec::<u32>::new());
        assert_eq!(peers(15_001), vec![2, 4]);
        assert_eq!(peers(19_001), vec![2, 3, 4]);
        // After a restart at 30 s, every holder gets a full timeout again.
        let after_restart = lost_holders(&holders, me, 40_000, 30_000, timeout);
        assert!(after_restart.is_empty(), "{after_restart:?}");
        // What is decided on is handed back as it was read.
        assert_eq!(
            lost_holders(&holders, me, 15_001, started, timeout)[0],
            holders[1]
        );
    }

    fn noted(at: Instant, at_ms: i64, version: Version, speaks_two: bool) -> Noted {
        Noted {
            at,
            at_ms,
            version,
            speaks_two,
        }
    }

    #[test]
    fn who_was_heard_is_recorded_at_start_then_once_a_second() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut b = HeardBatch::new(PeerId(1), t0);
        // Due at once (nothing heard yet: the driver still writes the LAN key's marks).
        assert_eq!(b.poll_timeout(), t0);
        assert_eq!(b.due(t0), Some(vec![]));
        assert_eq!(b.poll_timeout(), s(1_000));
        b.note(PeerId(2), noted(s(100), 100, Version::V1_0, false));
        b.note(PeerId(1), noted(s(150), 150, Version::V2_0, false)); // itself: never
        b.note(PeerId(3), noted(s(200), 200, Version::V2_0, false));
        b.note(PeerId(2), noted(s(300), 300, Version::V2_0, false));
        b.note(PeerId(2), noted(s(400), 400, Version::V1_0, true));
        assert_eq!(b.due(s(999)), None);
        // One row per peer: first heard in the batch, its latest message, the highest version,
        // and a sign of 2.0 in any of its messages.
        assert_eq!(
            b.due(s(1_000)),
            Some(vec![
                (PeerId(2), s(100), noted(s(400), 400, Version::V2_0, true)),
                (PeerId(3), s(200), noted(s(200), 200, Version::V2_0, false)),
            ])
        );
        assert_eq!(b.poll_timeout(), s(2_000));
        // A record that comes late pushes the next back, never two in a row to catch up.
        b.note(PeerId(3), noted(s(1_500), 1_500, Version::V1_0, false));
        let late = b.due(s(3_400)).unwrap();
        assert_eq!(
            late,
            vec![(
                PeerId(3),
                s(1_500),
                noted(s(1_500), 1_500, Version::V1_0, false)
            )]
        );
        assert_eq!(b.due(s(3_401)), None);
        assert_eq!(b.poll_timeout(), s(4_400));
        // At stop, what is left whatever the time.
        b.note(PeerId(4), noted(s(3_500), 3_500, Version::V1_0, false));
        assert_eq!(b.take().len(), 1);
        assert_eq!(b.due(s(4_400)), Some(vec![]));
    }

    #[test]
    fn forged_ids_beyond_the_bound_are_not_batched() {
        let t0 = Instant::now();
        let mut b = HeardBatch::new(PeerId(u32::MAX), t0);
        for id in 0..MAX_PEERS_SEEN as u32 + 10 {
            b.note(PeerId(id), noted(t0, 0, Version::V2_0, false));
        }
        let batch = b.take();
        assert_eq!(batch.len(), MAX_PEERS_SEEN);
        assert_eq!(batch.last().unwrap().0, PeerId(MAX_PEERS_SEEN as u32 - 1));
    }

    #[test]
    fn several_hellos_and_looks_per_holder_timeout() {
        let day = Duration::from_secs(86_400);
        assert_eq!(hello_every_for(day), HELLO_EVERY);
        assert_eq!(
            hello_every_for(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(lost_holder_looks(day), REPAIR_EVERY);
        assert_eq!(
            lost_holder_looks(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            lost_holder_looks(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
    }
}
