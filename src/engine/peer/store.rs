//! The holder side of PUTCHUNK and STORED. Admission (whether this peer may store a chunk) and
//! what the attempt came to are pure functions over the chunk's role here, so the daemon's disk
//! work and the simulation take the same decisions; `Holder` is the part of `peer::Peer` that
//! owns the PUTCHUNKs being stored, the STOREDs due, 2.0 write-ahead and trim, announcements.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::out::{Action, Timer, TimerKey, MAX_REPLY_DELAY, MAX_SEEN_ENTRIES};
use super::Peer;
use crate::engine::lru::LruMap;
use crate::protocol::{ChunkId, FileId, MessageKind, PeerId, Rd};

/// What became of a PUTCHUNK the driver was asked to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// A chunk of our own file, no room for it, or an error: not stored.
    Refused,
    /// Held already (the first STORED may have been lost).
    Held,
    /// Written to disk and recorded now.
    Written,
}

/// A chunk's place in this peer's catalog, as admission and REMOVED handling need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Unknown,
    Own {
        desired_rd: u8,
    },
    /// `desired_rd` is `UNKNOWN_RD` for a chunk re-indexed by `--rebuild-catalog` whose
    /// home's RD was not heard again yet.
    Hosted {
        desired_rd: u8,
    },
    /// A chunk of one of our own files that we forgot (a version deleted): never hosted, and
    /// otherwise treated as unknown.
    Forgotten,
}

/// The desired RD of a hosted chunk whose PUTCHUNK was lost with the catalog: not 1 (a REMOVED
/// would then never be made up for), not a guess. A REMOVED of such a chunk is made up for up
/// to the holders counted before it (`Peer::removed`); the next PUTCHUNK tells the real one.
pub const UNKNOWN_RD: u8 = 0;

/// Whether a PUTCHUNK may be stored here, decided on the chunk's role before any disk work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Not stored: a chunk of our own file (even of a version we deleted: a copy here would
    /// count as a holder while it dies with this disk), or only asked whether it is held.
    Refuse,
    /// Held already (one copy at most): answered as stored. `learn_rd`: its desired RD was lost
    /// with the catalog (`UNKNOWN_RD`), and the PUTCHUNK tells it: record it.
    Held { learn_rd: bool },
    /// Unknown here and to be written: reserve its bytes, write its file, record its row.
    Write,
}

/// Own file or forgotten -> `Refuse`; hosted -> `Held` (`learn_rd` when its desired RD is
/// unknown); unknown -> `Write` if `write`, else `Refuse` (2.0 may ask only whether it is held:
/// enough peers stored it already).
pub fn admit(role: Role, write: bool) -> Admit {
    match role {
        Role::Own { .. } | Role::Forgotten => Admit::Refuse,
        Role::Hosted { desired_rd } => Admit::Held {
            learn_rd: desired_rd == UNKNOWN_RD,
        },
        Role::Unknown if write => Admit::Write,
        Role::Unknown => Admit::Refuse,
    }
}

/// How far the writing of an admitted chunk got; each step runs only if the one before
/// succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hosting {
    /// No room for it within the quota.
    NoRoom,
    /// Its file could not be written and synced (a full disk, an I/O error).
    WriteFailed,
    /// Written, but its catalog row could not be recorded (the file is removed again).
    NotRecorded,
    /// On disk and in the catalog.
    Recorded,
}

/// The outcome of a PUTCHUNK that was to be written: `Written` only if the chunk is on disk and
/// in the catalog; else `Refused`, so a STORED never goes out for a chunk this peer does not
/// hold.
pub fn after_write(hosting: Hosting) -> Put {
    match hosting {
        Hosting::Recorded => Put::Written,
        Hosting::NoRoom | Hosting::WriteFailed | Hosting::NotRecorded => Put::Refused,
    }
}

// ---- the holder side of PUTCHUNK and STORED (a part of `peer::Peer`) --------------------------

/// PUTCHUNKs being stored at once, and the bytes of their bodies (held until written): beyond
/// either a PUTCHUNK is dropped (its sender resends), so a flood cannot take memory without
/// bound. Many, as a 2.0 store lasts its random wait (0.2 s on average) and a small file's
/// chunk is small: 16 MB is 256 whole chunks, or 4096 chunks of 4 KB.
pub const MAX_CONCURRENT_STORES: usize = 4096;
pub const MAX_STORING_BYTES: usize = 256 * crate::protocol::CHUNK_SIZE;
/// STOREDs remembered per chunk being written (recorded once it is written).
pub const MAX_HEARD_WHILE_STORING: usize = 64;
/// Chunks re-indexed by `--rebuild-catalog` are announced with STORED, this many per
/// `ANNOUNCE_EVERY`, so the announcement does not flood the LAN.
pub const ANNOUNCE_BATCH: usize = 100;
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(100);
/// 2.0: after writing a chunk, this peer listens this long for STOREDs of peers that wrote it at
/// the same moment (see `Trim`).
pub const TRIM_WINDOW: Duration = Duration::from_secs(2);
/// 2.0: a copy dropped as one too many is not announced again for this long, whatever finds it
/// still on disk (its removal runs beside the engine).
pub const DROP_SETTLE: Duration = Duration::from_secs(5);
/// 2.0: STOREDs heard for a chunk are remembered this long: a PUTCHUNK sent again (its sender
/// lost a STORED) finds the holders known already, and is not stored once more.
pub const STOREDS_REMEMBERED_FOR: Duration = Duration::from_secs(20);

/// A PUTCHUNK being stored by the driver (or, in 2.0, waiting for its random instant).
struct Storing {
    /// When it arrived: a DELETE heard after this cancels the STORED.
    arrived: Instant,
    /// The random instant its STORED is due.
    reply_at: Instant,
    /// STOREDs heard meanwhile, recorded once it is written.
    heard: Vec<PeerId>,
    /// A DELETE of its file arrived meanwhile: remove it once written, send no STORED.
    deleted: bool,
    /// 2.0: not handed to the driver yet; its desired RD and bytes, until `reply_at`.
    waiting: Option<(Rd, Vec<u8>, PeerId)>,
    /// 2.0: written only if fewer than this many peers stored it first.
    rd: u8,
    /// Its body's length (counted in `storing_bytes` until it is written or let go).
    bytes: usize,
}

/// A STORED that waits for its random instant.
struct StoredDue {
    arrived: Instant,
    timer: (Instant, u64),
    /// 2.0, a chunk written ahead of its random instant: its desired RD and the STOREDs heard
    /// since its PUTCHUNK (with RD of them, ours is not needed).
    ahead: Option<(u8, Vec<PeerId>)>,
}

/// 2.0: a chunk this peer wrote lately, and the holders with a lower id than ours heard since
/// the PUTCHUNK came. Peers that decide to store at the same moment (each heard fewer than RD
/// STOREDs) make a copy too many; each one that hears RD holders with a lower id drops its own.
/// The RD holders with the lowest ids never drop theirs, so the chunk never falls below RD.
struct Trim {
    rd: u8,
    until: Instant,
    lower: Vec<PeerId>,
}

/// The holder side's state: PUTCHUNKs being stored, STOREDs due, 2.0 copies written lately
/// (trim) and dropped, the STOREDs heard lately, the announcements still to send.
pub(super) struct Holder {
    storing: BTreeMap<ChunkId, Storing>,
    /// The bytes of the bodies in `storing`.
    storing_bytes: usize,
    stored_due: BTreeMap<ChunkId, StoredDue>,
    trimming: LruMap<ChunkId, Trim>,
    /// 2.0: copies this peer dropped as one too many lately, and when.
    dropped: LruMap<ChunkId, Instant>,
    /// 2.0: the peers heard saying STORED for each chunk lately, and when last.
    storeds: LruMap<ChunkId, Vec<(PeerId, Instant)>>,
    /// Chunks still to announce with STORED, and whether the next batch's timer is armed.
    announcing: VecDeque<ChunkId>,
    announce_armed: bool,
}

impl Holder {
    pub(super) fn new() -> Holder {
        Holder {
            storing: BTreeMap::new(),
            storing_bytes: 0,
            stored_due: BTreeMap::new(),
            trimming: LruMap::new(MAX_SEEN_ENTRIES),
            dropped: LruMap::new(MAX_SEEN_ENTRIES),
            storeds: LruMap::new(MAX_SEEN_ENTRIES),
            announcing: VecDeque::new(),
            announce_armed: false,
        }
    }

    /// PUTCHUNKs being stored now.
    pub(super) fn storing(&self) -> usize {
        self.storing.len()
    }

    /// Whether a PUTCHUNK of this chunk is being stored, or its STORED is due.
    pub(super) fn busy_with(&self, chunk: &ChunkId) -> bool {
        self.storing.contains_key(chunk) || self.stored_due.contains_key(chunk)
    }

    /// The peers remembered saying STORED for the chunk lately.
    #[cfg(test)]
    pub(super) fn storeds_of(&self, chunk: &ChunkId) -> Option<Vec<PeerId>> {
        (self.storeds.get(chunk)).map(|v| v.iter().map(|(p, _)| *p).collect())
    }

    /// A REMOVED: its sender no longer holds the chunk.
    pub(super) fn forget_holder(&mut self, chunk: &ChunkId, peer: PeerId) {
        if let Some(peers) = self.storeds.get(chunk) {
            let mut peers = peers.clone();
            peers.retain(|(p, _)| *p != peer);
            self.storeds.insert(chunk.clone(), peers);
        }
    }
}

impl Peer {
    pub(super) fn on_putchunk(
        &mut self,
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        sender: PeerId,
        now: Instant,
    ) {
        self.putchunk_seen(&chunk, now);
        if self.store.busy_with(&chunk) {
            return; // a resend of a chunk being written: its STORED is on its way
        }
        if self.store_blocked(&chunk.file_id, now) {
            // Its file's deletion is under way and could remove it right after it is written
            // (and after its STORED), or its DELETE overtook it: if the home peer means it, it
            // resends in a second.
            return;
        }
        if self.store.storing.len() >= MAX_CONCURRENT_STORES
            || self.store.storing_bytes + body.len() > MAX_STORING_BYTES
        {
            self.out.counters.busy_drops += 1;
            return;
        }
        self.store.storing_bytes += body.len();
        let reply_at = now + self.out.reply_delay();
        // 2.0: the holders heard lately count from the start (a PUTCHUNK sent again), if they
        // are alive: heard within three HELLOs (a repair after a holder was lost sends it
        // again too, and the lost one must not count).
        // Nor does a STORED heard before the file's last DELETE: its copy went with it.
        let alive = |p: &PeerId| self.peer_alive(p, now);
        let deleted = self.last_delete(&chunk.file_id);
        let still = |at: &Instant| {
            now.saturating_duration_since(*at) < STOREDS_REMEMBERED_FOR
                && deleted.is_none_or(|d| d < *at)
        };
        // Nor the sender's own: a holder sending its copy on (a reclaim's hand-on) is about to
        // drop it.
        let heard = match self.store.storeds.get(&chunk) {
            Some(peers) if self.enhanced => (peers.iter())
                .filter(|(p, at)| *p != sender && still(at) && alive(p))
                .map(|(p, _)| *p)
                .collect(),
            _ => Vec::new(),
        };
        let mut storing = Storing {
            arrived: now,
            reply_at,
            heard,
            deleted: false,
            waiting: None,
            rd: rd.get(),
            bytes: body.len(),
        };
        if self.enhanced && reply_at - now >= self.write_ahead_below(rd) {
            // 2.0: first the random wait, counting the STOREDs of the peers that store it.
            storing.waiting = Some((rd, body, sender));
            self.out.arm(reply_at, Timer::Store(chunk.clone()));
            self.store.storing.insert(chunk, storing);
        } else {
            // 1.0, or 2.0 with a short wait (written ahead, kept or not at its instant).
            self.store.storing.insert(chunk.clone(), storing);
            self.out.actions.push_back(Action::Store {
                chunk,
                rd,
                body,
                sender,
                write: true,
            });
        }
    }

    /// 2.0: the random waits below which a peer writes a chunk ahead of its decision: those
    /// of the peers likely to be among the first RD (with a margin of one), given the peers
    /// heard. Uniform waits: the k-th shortest of n is expected at k/(n+1) of the range.
    pub(super) fn write_ahead_below(&self, rd: Rd) -> Duration {
        // The peers that may store it: every peer heard (the sender among them stands for us).
        let n = self.peers_seen().max(1) as u32;
        let k = u32::from(rd.get()) + 1;
        (MAX_REPLY_DELAY * k / (n + 1)).min(MAX_REPLY_DELAY + Duration::from_millis(1))
    }

    pub(super) fn on_stored(&mut self, chunk: ChunkId, sender: PeerId, now: Instant) {
        if sender < self.id {
            self.trim(&chunk, sender, now);
        }
        if self.enhanced {
            let mut peers = self.store.storeds.remove(&chunk).unwrap_or_default();
            peers.retain(|(p, at)| {
                *p != sender && now.saturating_duration_since(*at) < STOREDS_REMEMBERED_FOR
            });
            if peers.len() < MAX_HEARD_WHILE_STORING {
                peers.push((sender, now));
            }
            self.store.storeds.insert(chunk.clone(), peers);
        }
        if let Some(storing) = self.store.storing.get_mut(&chunk) {
            if storing.heard.len() < MAX_HEARD_WHILE_STORING && !storing.heard.contains(&sender) {
                storing.heard.push(sender);
            }
        } else {
            let due = self.store.stored_due.get_mut(&chunk);
            if let Some((_, heard)) = due.and_then(|d| d.ahead.as_mut()) {
                if heard.len() < MAX_HEARD_WHILE_STORING && !heard.contains(&sender) {
                    heard.push(sender);
                }
            }
            // Asked to be recorded before the backup of the chunk hears that it is done: a
            // backup that waits for the recorded holders (`Node::storeds_recorded`) then finds
            // them all in the catalog.
            self.out.actions.push_back(Action::RecordHolders {
                chunk: chunk.clone(),
                peers: vec![sender],
            });
        }
        self.backup_stored(&chunk, sender, now);
    }

    /// 2.0: a holder with a lower id than ours said STORED for a chunk we wrote lately: with RD
    /// of them, our copy is one too many (`Trim`). It goes, with REMOVED (ours was counted).
    pub(super) fn trim(&mut self, chunk: &ChunkId, lower: PeerId, now: Instant) {
        let Some(t) = self.store.trimming.get(chunk) else {
            return;
        };
        if now > t.until || t.lower.contains(&lower) {
            return;
        }
        let mut t = match self.store.trimming.remove(chunk) {
            Some(t) => t,
            None => return,
        };
        t.lower.push(lower);
        if t.lower.len() < usize::from(t.rd) {
            self.store.trimming.insert(chunk.clone(), t);
            return;
        }
        self.drop_copy(chunk, now);
        self.send_removed(chunk.clone(), now);
    }

    /// 2.0: our copy is one too many: it goes. Until that is done on disk, a PUTCHUNK that
    /// finds it still there is not answered (it would be a STORED for a copy about to go).
    pub(super) fn drop_copy(&mut self, chunk: &ChunkId, now: Instant) {
        self.store.dropped.insert(chunk.clone(), now);
        self.out.actions.push_back(Action::DropHosted {
            chunk: chunk.clone(),
        });
    }

    /// What became of a `Store`. A held chunk gets its STORED at the random instant drawn when
    /// the PUTCHUNK arrived (now, if that passed while it was written).
    pub fn stored(&mut self, chunk: &ChunkId, put: Put, now: Instant) {
        let Some(storing) = self.store.storing.remove(chunk) else {
            return;
        };
        self.store.storing_bytes -= storing.bytes;
        match put {
            Put::Refused => return,
            Put::Written if storing.deleted => {
                self.out.actions.push_back(Action::DropHosted {
                    chunk: chunk.clone(),
                });
                return;
            }
            Put::Held if storing.deleted => return,
            Put::Held
                if (self.store.dropped.get(chunk))
                    .is_some_and(|t| now.saturating_duration_since(*t) < DROP_SETTLE) =>
            {
                return; // held only until our own drop of it is done
            }
            Put::Written if self.enhanced => {
                if !storing.heard.is_empty() {
                    self.out.actions.push_back(Action::RecordHolders {
                        chunk: chunk.clone(),
                        peers: storing.heard.clone(),
                    });
                }
                if storing.reply_at > now {
                    // Written ahead: kept or not at its random instant.
                    let timer = self.out.arm(storing.reply_at, Timer::Stored(chunk.clone()));
                    let due = StoredDue {
                        arrived: storing.arrived,
                        timer,
                        ahead: Some((storing.rd, storing.heard)),
                    };
                    self.store.stored_due.insert(chunk.clone(), due);
                    return;
                }
                if !self.announce_written(chunk, storing.rd, &storing.heard, now) {
                    return;
                }
            }
            Put::Written | Put::Held if !storing.heard.is_empty() => {
                self.out.actions.push_back(Action::RecordHolders {
                    chunk: chunk.clone(),
                    peers: storing.heard,
                });
            }
            Put::Written | Put::Held => {}
        }
        if storing.reply_at <= now {
            self.send(MessageKind::Stored {
                chunk: chunk.clone(),
            });
        } else {
            let timer = self.out.arm(storing.reply_at, Timer::Stored(chunk.clone()));
            self.store.stored_due.insert(
                chunk.clone(),
                StoredDue {
                    arrived: storing.arrived,
                    timer,
                    ahead: None,
                },
            );
        }
    }

    /// 2.0: a chunk this peer wrote, at the instant its STORED would go: if RD peers said
    /// STORED since its PUTCHUNK, ours is not needed and goes without a word (nobody counted
    /// it; of the copies announced with STORED, which alone count, the RD with the lowest ids
    /// are never dropped, see `Trim`). Else we listen a while for the peers that wrote it at
    /// the same moment. Whether to send STORED.
    pub(super) fn announce_written(
        &mut self,
        chunk: &ChunkId,
        rd: u8,
        heard: &[PeerId],
        now: Instant,
    ) -> bool {
        if heard.len() >= usize::from(rd) {
            self.drop_copy(chunk, now);
            return false;
        }
        let me = self.id;
        let lower = heard.iter().filter(|p| **p < me).copied().collect();
        let trim = Trim {
            rd,
            until: now + TRIM_WINDOW,
            lower,
        };
        self.store.trimming.insert(chunk.clone(), trim);
        true
    }

    /// Announces hosted chunks with one STORED each, paced (`ANNOUNCE_BATCH` per
    /// `ANNOUNCE_EVERY`), so their home peers count this peer as a holder again.
    pub fn announce(&mut self, chunks: Vec<ChunkId>, now: Instant) {
        self.store.announcing.extend(chunks);
        if !self.store.announce_armed {
            self.fire_announce(now);
        }
    }

    pub(super) fn fire_announce(&mut self, now: Instant) {
        let n = self.store.announcing.len().min(ANNOUNCE_BATCH);
        for chunk in self.store.announcing.drain(..n).collect::<Vec<_>>() {
            self.send(MessageKind::Stored { chunk });
        }
        if self.store.announcing.is_empty() {
            self.out.actions.push_back(Action::Announced);
        } else {
            self.store.announce_armed = true;
            self.out.arm(now + ANNOUNCE_EVERY, Timer::Announce);
        }
    }

    /// A DELETE of the file was heard: its chunks being written are removed once written (see
    /// `stored`), and the STOREDs not yet sent are not sent.
    pub(super) fn store_on_delete(&mut self, file_id: &FileId) {
        for (c, storing) in self.store.storing.iter_mut() {
            if c.file_id == *file_id {
                storing.deleted = true;
            }
        }
        let due: Vec<ChunkId> = (self.store.stored_due.keys())
            .filter(|c| c.file_id == *file_id)
            .cloned()
            .collect();
        for c in due {
            if let Some(d) = self.store.stored_due.remove(&c) {
                self.out.disarm(Some(d.timer));
            }
        }
    }

    /// A STORED still due for a chunk we drop would tell the peers the opposite of our REMOVED.
    pub(super) fn cancel_stored(&mut self, chunk: &ChunkId) {
        if let Some(due) = self.store.stored_due.remove(chunk) {
            self.out.disarm(Some(due.timer));
        }
    }

    /// A STORED's random instant came (`key`: the timer armed for it, if still current).
    pub(super) fn stored_timer(&mut self, chunk: ChunkId, key: TimerKey, now: Instant) {
        if self.store.stored_due.get(&chunk).map(|d| d.timer) != Some(key) {
            return;
        }
        let Some(due) = self.store.stored_due.remove(&chunk) else {
            return;
        };
        if self.deleted_since(&chunk.file_id, due.arrived) {
            return;
        }
        if let Some((rd, heard)) = &due.ahead {
            if !self.announce_written(&chunk, *rd, heard, now) {
                return;
            }
        }
        self.send(MessageKind::Stored { chunk });
    }

    /// 2.0: a PUTCHUNK's random wait is over: store it unless RD peers did.
    pub(super) fn store_timer(&mut self, chunk: ChunkId) {
        let Some(st) = self.store.storing.get_mut(&chunk) else {
            return;
        };
        let Some((rd, body, sender)) = st.waiting.take() else {
            return;
        };
        // Fewer than RD peers said STORED meanwhile: store it. Else only say
        // STORED if we hold it already (the initiator may have lost ours).
        let write = st.heard.len() < usize::from(rd.get()) && !st.deleted;
        self.out.actions.push_back(Action::Store {
            chunk,
            rd,
            body,
            sender,
            write,
        });
    }

    /// The next batch of announcements is due.
    pub(super) fn announce_timer(&mut self, now: Instant) {
        self.store.announce_armed = false;
        self.fire_announce(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_chunk_of_our_own_file_is_never_stored_even_once_forgotten() {
        for write in [true, false] {
            assert_eq!(admit(Role::Own { desired_rd: 2 }, write), Admit::Refuse);
            assert_eq!(admit(Role::Forgotten, write), Admit::Refuse);
        }
    }

    #[test]
    pub(super) fn a_hosted_chunk_is_held_not_written_again() {
        for write in [true, false] {
            let held = admit(Role::Hosted { desired_rd: 3 }, write);
            assert_eq!(held, Admit::Held { learn_rd: false });
        }
    }

    #[test]
    pub(super) fn a_hosted_chunk_whose_rd_was_lost_learns_it() {
        let role = Role::Hosted {
            desired_rd: UNKNOWN_RD,
        };
        assert_eq!(admit(role, true), Admit::Held { learn_rd: true });
        assert_eq!(admit(role, false), Admit::Held { learn_rd: true });
    }

    #[test]
    pub(super) fn an_unknown_chunk_is_written_only_when_asked_to_write() {
        assert_eq!(admit(Role::Unknown, true), Admit::Write);
        assert_eq!(admit(Role::Unknown, false), Admit::Refuse);
    }

    #[test]
    pub(super) fn written_only_within_the_quota_on_disk_and_recorded() {
        assert_eq!(after_write(Hosting::Recorded), Put::Written);
        for h in [Hosting::NoRoom, Hosting::WriteFailed, Hosting::NotRecorded] {
            assert_eq!(after_write(h), Put::Refused, "{h:?}");
        }
    }
}
