//! Which hosted chunks to drop when the quota is lowered: those whose perceived RD most exceeds
//! their desired RD first, so the least harm is done to the chunks' safety; and which of them
//! must be handed on to another peer before they go. `Reclaim` is the part of `peer::Peer` that
//! owns the re-backups of hosted chunks a REMOVED left below their RD.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::backup::Owner;
use super::out::{Action, Timer, TimerKey, MAX_SEEN_ENTRIES};
use super::store::{Role, UNKNOWN_RD};
use super::Peer;
use crate::engine::lru::LruMap;
use crate::protocol::{ChunkId, PeerId, Rd};

/// A hosted chunk as reclaim sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<K> {
    pub key: K,
    pub size: u64,
    pub desired_rd: u32,
    pub perceived_rd: u32,
}

/// The chunks to drop so that `used` falls to `quota` or below (all of them for quota 0).
pub fn choose_victims<K: Clone>(mut hosted: Vec<Candidate<K>>, used: u64, quota: u64) -> Vec<K> {
    // Most surplus first; among equals, larger chunks first so fewer copies are lost.
    hosted.sort_by(|a, b| {
        let surplus = |c: &Candidate<K>| i64::from(c.perceived_rd) - i64::from(c.desired_rd);
        surplus(b).cmp(&surplus(a)).then(b.size.cmp(&a.size))
    });
    let mut remaining = used;
    let mut victims = Vec::new();
    for c in hosted {
        if remaining <= quota && quota > 0 {
            break;
        }
        remaining = remaining.saturating_sub(c.size);
        victims.push(c.key);
    }
    victims
}

/// Whether a chunk to drop may be the last copy (no holder known besides this peer, which
/// counts itself): then it is handed on first (`Peer::hand_on`), and dropped once another peer
/// stored it. The others are dropped at once: their other holders re-back them up on REMOVED.
pub fn hand_on_first<K>(c: &Candidate<K>) -> bool {
    c.perceived_rd <= 1
}

/// Hand-ons that found no taker in a row before a reclaim stops trying: no peer has room, and
/// each failure costs the five sends of the backup schedule (about 31 s). Then the rest is
/// dropped at once, so a reclaim waits one round of failures, not one per chunk.
pub const HAND_ON_FAILURES: u32 = 8;

/// Whether a reclaim still hands chunks on, by the outcomes seen so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct HandOnBudget {
    failed_in_a_row: u32,
}

impl HandOnBudget {
    pub fn may_try(&self) -> bool {
        self.failed_in_a_row < HAND_ON_FAILURES
    }

    pub fn on_result(&mut self, taken: bool) {
        self.failed_in_a_row = if taken { 0 } else { self.failed_in_a_row + 1 };
    }
}

// ---- re-backups after a REMOVED, and hand-ons (a part of `peer::Peer`) -------------------------

/// 2.0: a holder that left a chunk's re-backup to another holder (it saw its PUTCHUNK) looks at
/// the chunk's RD again this long after, in case that holder died midway; at most this often.
pub const RECHECK_AFTER: Duration = Duration::from_secs(20);
pub const MAX_RECHECKS: u32 = 2;

enum RebackupState {
    Waiting { timer: TimerKey, desired: u8 },
    Reading,
    Running,
}

struct Rebackup {
    since: Instant,
    state: RebackupState,
}

/// The hosted chunks this peer backs up again (below their RD after a REMOVED), those it left
/// to another holder (2.0: looked at again), and the PUTCHUNKs seen lately that tell of them.
pub(super) struct Reclaim {
    rebacking: BTreeMap<ChunkId, Rebackup>,
    /// 2.0: hosted chunks left to another holder's re-backup, and how often we looked again.
    rechecks: LruMap<ChunkId, u32>,
    putchunk_seen: LruMap<ChunkId, Instant>,
}

impl Reclaim {
    pub(super) fn new() -> Reclaim {
        Reclaim {
            rebacking: BTreeMap::new(),
            rechecks: LruMap::new(MAX_SEEN_ENTRIES),
            putchunk_seen: LruMap::new(MAX_SEEN_ENTRIES),
        }
    }

    /// Re-backups in progress.
    pub(super) fn rebacking(&self) -> usize {
        self.rebacking.len()
    }

    pub(super) fn is_rebacking(&self, chunk: &ChunkId) -> bool {
        self.rebacking.contains_key(chunk)
    }

    /// A PUTCHUNK for the chunk was seen: a re-backup waiting for its instant leaves it to
    /// its sender.
    pub(super) fn putchunk_seen(&mut self, chunk: &ChunkId, now: Instant) {
        self.putchunk_seen.insert(chunk.clone(), now);
    }

    /// A re-backup (or hand-on) ended.
    pub(super) fn ended(&mut self, chunk: &ChunkId) {
        self.rebacking.remove(chunk);
    }
}

impl Peer {
    /// The catalog took a REMOVED into account: the chunk's role here and its perceived RD now.
    /// A holder of a chunk below its RD re-backs it up after a random wait, unless someone
    /// else's PUTCHUNK for it is seen meanwhile; the home peer lets its repair look.
    pub fn removed(&mut self, chunk: &ChunkId, role: Role, perceived: u32, now: Instant) {
        // Its home's RD is unknown: the holders counted before this REMOVED (at least 2).
        let role = match role {
            Role::Hosted {
                desired_rd: UNKNOWN_RD,
            } => Role::Hosted {
                desired_rd: perceived.saturating_add(1).clamp(2, 9) as u8,
            },
            other => other,
        };
        match role {
            Role::Hosted { desired_rd } if perceived < u32::from(desired_rd) => {
                if self.reclaim.rebacking.contains_key(chunk) {
                    return;
                }
                let at = now + self.out.reply_delay();
                let timer = self.out.arm(at, Timer::Rebackup(chunk.clone()));
                self.reclaim.rebacking.insert(
                    chunk.clone(),
                    Rebackup {
                        since: now,
                        state: RebackupState::Waiting {
                            timer,
                            desired: desired_rd,
                        },
                    },
                );
            }
            Role::Own { desired_rd } if perceived < u32::from(desired_rd) => {
                self.out.actions.push_back(Action::Repair);
            }
            _ => {}
        }
    }

    /// The hosted chunk to back up again, read for `ReadForRebackup` (None: unreadable, or no
    /// longer hosted), with the chunk as the home peer wrote its fileId and its known holders.
    pub fn rebackup(
        &mut self,
        chunk: &ChunkId,
        read: Option<(ChunkId, Rd, Vec<u8>, Vec<PeerId>)>,
        now: Instant,
    ) {
        let Some((wire, rd, body, known)) = read else {
            self.reclaim.rebacking.remove(chunk);
            return;
        };
        if let Some(r) = self.reclaim.rebacking.get_mut(chunk) {
            r.state = RebackupState::Running;
        }
        self.start_backup(Owner::Rebackup, wire, rd, body, known, now);
    }

    /// Reclaim: a hosted chunk that may be the last copy is handed on before it is dropped, as
    /// a PUTCHUNK of its home's fileId on the backup schedule, until `rd` peers besides those
    /// in `others` said STORED, or its sends are spent. `BackedUp` (owner `Rebackup`) says
    /// whether another peer took it; only then may the caller drop its copy.
    pub fn hand_on(
        &mut self,
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        others: Vec<PeerId>,
        now: Instant,
    ) {
        let others = others.into_iter().filter(|p| *p != self.id).collect();
        self.start_backup(Owner::Rebackup, chunk, rd, body, others, now);
    }

    /// A re-backup's random wait is over (`key`: the timer armed for it, if still current):
    /// another holder's PUTCHUNK seen meanwhile leaves it to that holder; else read it.
    pub(super) fn rebackup_timer(&mut self, chunk: ChunkId, key: TimerKey, now: Instant) {
        let Some(r) = self.reclaim.rebacking.get(&chunk) else {
            return;
        };
        let RebackupState::Waiting { timer, desired } = r.state else {
            return;
        };
        if timer != key {
            return;
        }
        let since = r.since;
        if self
            .reclaim
            .putchunk_seen
            .get(&chunk)
            .is_some_and(|t| *t >= since)
        {
            // Another holder started first. In 2.0 we look again later: it may
            // die midway.
            self.reclaim.rebacking.remove(&chunk);
            let looked = self.reclaim.rechecks.get(&chunk).copied().unwrap_or(0);
            if self.enhanced && looked < MAX_RECHECKS {
                self.reclaim.rechecks.insert(chunk.clone(), looked + 1);
                self.out.arm(now + RECHECK_AFTER, Timer::Recheck(chunk));
            }
        } else if let Some(r) = self.reclaim.rebacking.get_mut(&chunk) {
            r.state = RebackupState::Reading;
            self.out.actions.push_back(Action::ReadForRebackup {
                chunk,
                desired_rd: desired,
            });
        }
    }

    /// 2.0: time to look at a chunk left to another holder's re-backup again.
    pub(super) fn recheck_timer(&mut self, chunk: ChunkId) {
        if !self.reclaim.rebacking.contains_key(&chunk) {
            self.out.actions.push_back(Action::Recheck { chunk });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn c(key: u32, size: u64, desired: u32, perceived: u32) -> Candidate<u32> {
        Candidate {
            key,
            size,
            desired_rd: desired,
            perceived_rd: perceived,
        }
    }

    #[test]
    pub(super) fn drops_most_over_replicated_first_until_under_quota() {
        let hosted = vec![
            c(1, 100, 2, 2),
            c(2, 100, 1, 3),
            c(3, 100, 2, 3),
            c(4, 100, 3, 1),
        ];
        assert_eq!(choose_victims(hosted.clone(), 400, 250), vec![2, 3]);
        assert_eq!(choose_victims(hosted.clone(), 400, 400), Vec::<u32>::new());
        assert_eq!(choose_victims(hosted, 400, 0), vec![2, 3, 1, 4]);
    }

    #[test]
    pub(super) fn only_a_chunk_that_may_be_the_last_copy_is_handed_on_first() {
        assert!(hand_on_first(&c(1, 100, 1, 1)));
        assert!(hand_on_first(&c(1, 100, 2, 1)));
        assert!(hand_on_first(&c(1, 100, 2, 0)));
        assert!(!hand_on_first(&c(1, 100, 1, 2)));
        assert!(!hand_on_first(&c(1, 100, 3, 2)));
    }

    #[test]
    pub(super) fn hand_ons_stop_after_a_round_of_failures_in_a_row() {
        let mut b = HandOnBudget::default();
        for _ in 0..HAND_ON_FAILURES - 1 {
            b.on_result(false);
        }
        assert!(b.may_try());
        b.on_result(true); // a taker: the count starts again
        for _ in 0..HAND_ON_FAILURES - 1 {
            b.on_result(false);
        }
        assert!(b.may_try());
        b.on_result(false);
        assert!(!b.may_try());
    }

    #[test]
    pub(super) fn zero_quota_drops_even_empty_chunks() {
        assert_eq!(choose_victims(vec![c(7, 0, 2, 2)], 0, 0), vec![7]);
    }
}
