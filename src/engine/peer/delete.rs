//! DELETE and REMOVED, both ways (a part of `peer::Peer`): our DELETEs sent 8 times and again to
//! a peer that is back (2.0), REMOVED sent three times; as a holder, a DELETE carried out (and
//! PUTCHUNKs of the file refused meanwhile) and answered with DELETED (2.0).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::out::{Action, Timer, MAX_SEEN_ENTRIES};
use super::Peer;
use crate::engine::lru::LruMap;
use crate::protocol::{ChunkId, FileId, MessageKind, PeerId};

/// REMOVED is sent three times (0, 0.2, 0.6 s): a lost one would leave the holders believing
/// the chunk safer than it is. Receiving it twice is harmless.
pub const REMOVED_GAPS: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(400)];
/// DELETE is sent 8 times, 300 ms apart: the network loses messages and 1.0 has no reply.
pub const DELETE_SENDS: u32 = 8;
pub const DELETE_SPACING: Duration = Duration::from_millis(300);
/// A PUTCHUNK of a file whose DELETE was heard this recently is not stored: the DELETE may have
/// overtaken it on its way (they come on different channels, on sockets read by different
/// tasks), and a home peer that means it sends it again a second later.
pub const DELETE_GRACE: Duration = Duration::from_secs(1);
/// 2.0: a DELETE sent again to a peer that is back goes out three times, this far apart.
pub const REDELETE_GAPS: [Duration; 2] = [Duration::from_millis(300), Duration::from_millis(300)];
/// 2.0: DELETED for a file at most once per this (a burst of 8 DELETEs gets one answer).
pub const DELETED_EVERY: Duration = Duration::from_secs(1);

/// A message sent several times.
struct Resend {
    msg: MessageKind,
    /// The waits before the sends still to come.
    gaps: VecDeque<Duration>,
    done: Option<Vec<FileId>>,
}

/// The DELETEs heard and carried out, the DELETEDs said, the messages being repeated.
pub(super) struct Deletes {
    delete_seen: LruMap<FileId, Instant>,
    /// Files whose DELETE the driver is carrying out, and how many times (each `DeleteFile`
    /// ends with one `file_deleted`: bounded by the driver's own limit on that work).
    deleting: BTreeMap<FileId, u32>,
    /// 2.0: files whose DELETE we answered lately, and when we last said DELETED for each.
    freed: LruMap<FileId, Option<Instant>>,
    resends: BTreeMap<u64, Resend>,
    next_resend: u64,
}

impl Deletes {
    pub(super) fn new() -> Deletes {
        Deletes {
            delete_seen: LruMap::new(MAX_SEEN_ENTRIES),
            deleting: BTreeMap::new(),
            freed: LruMap::new(MAX_SEEN_ENTRIES),
            resends: BTreeMap::new(),
            next_resend: 0,
        }
    }

    /// When the file's last DELETE was heard (or sent by us).
    pub(super) fn last_delete(&self, file_id: &FileId) -> Option<Instant> {
        self.delete_seen.get(file_id).copied()
    }

    /// Whether a PUTCHUNK of the file must not be stored now: its deletion is under way and
    /// could remove it right after it is written (and after its STORED), or its DELETE was
    /// heard within `DELETE_GRACE` and may have overtaken it.
    pub(super) fn blocks_store(&self, file_id: &FileId, now: Instant) -> bool {
        let just_deleted = (self.delete_seen.get(file_id))
            .is_some_and(|at| now.saturating_duration_since(*at) < DELETE_GRACE);
        self.deleting.contains_key(file_id) || just_deleted
    }
}

impl Peer {
    pub(super) fn on_delete(&mut self, file_id: FileId, sender: PeerId, now: Instant) {
        self.delete.delete_seen.insert(file_id.clone(), now);
        // Chunks of the file being written are removed once written (see `stored`), STOREDs
        // not yet sent are not sent; our own re-backups of its chunks stop.
        self.store_on_delete(&file_id);
        self.stop_rebackups_of(&file_id, now);
        *self.delete.deleting.entry(file_id.clone()).or_default() += 1;
        self.out
            .actions
            .push_back(Action::DeleteFile { file_id, sender });
    }

    /// The driver carried out (or gave up) a `DeleteFile`; `freed`: some chunk was removed.
    /// A 2.0 peer answers DELETED, meaning "I hold no chunk of it now", so the home peer stops
    /// sending it the DELETE (a holder that lost its copies without a word answers too): once
    /// per `DELETED_EVERY` per file, and at once when it freed chunks just now.
    pub fn file_deleted(&mut self, file_id: &FileId, freed: bool, now: Instant) {
        if let Some(n) = self.delete.deleting.get_mut(file_id) {
            *n -= 1;
            if *n == 0 {
                self.delete.deleting.remove(file_id);
            }
        }
        if !self.enhanced {
            return;
        }
        let last = self.delete.freed.get(file_id).copied().flatten();
        if !freed && last.is_some_and(|t| now.saturating_duration_since(t) < DELETED_EVERY) {
            return;
        }
        self.delete.freed.insert(file_id.clone(), Some(now));
        self.send_v2(MessageKind::Deleted {
            file_id: file_id.clone(),
        });
    }

    /// 2.0: the DELETEs a peer that is back has not acknowledged, sent again (three times each).
    pub fn redelete(&mut self, file_ids: Vec<FileId>, now: Instant) {
        for file_id in file_ids {
            let msg = MessageKind::Delete { file_id };
            self.resend(msg, REDELETE_GAPS.to_vec(), None, now);
        }
    }

    /// Tells the peers this peer dropped a chunk (REMOVED, sent three times).
    pub fn send_removed(&mut self, chunk: ChunkId, now: Instant) {
        // A STORED still due for it would tell the peers the opposite, after the REMOVED.
        self.cancel_stored(&chunk);
        self.resend(
            MessageKind::Removed { chunk },
            REMOVED_GAPS.to_vec(),
            None,
            now,
        );
    }

    /// Tells the peers to delete these files (DELETE, 8 sends 300 ms apart); `DeletesSent`
    /// follows the last.
    pub fn send_delete(&mut self, file_ids: Vec<FileId>, now: Instant) {
        // Our own PUTCHUNKs of these files may still echo back: they are explained. A backup of
        // them still running stops: its chunks are being deleted.
        for file_id in &file_ids {
            self.delete.delete_seen.insert(file_id.clone(), now);
        }
        self.stop_backups_of(&file_ids, now);
        let Some(last) = file_ids.len().checked_sub(1) else {
            return;
        };
        let gaps = vec![DELETE_SPACING; DELETE_SENDS as usize - 1];
        // One message per file, each on the same schedule; the last one reports them all.
        for (i, file_id) in file_ids.iter().enumerate() {
            let done = (i == last).then(|| file_ids.clone());
            let msg = MessageKind::Delete {
                file_id: file_id.clone(),
            };
            self.resend(msg, gaps.clone(), done, now);
        }
    }

    /// Stops the DELETE sends of a file still to come; reports them sent.
    pub(super) fn cancel_delete(&mut self, file_id: &FileId) {
        let ids: Vec<u64> = (self.delete.resends.iter())
            .filter(|(_, r)| matches!(&r.msg, MessageKind::Delete { file_id: f } if f == file_id))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            // Its armed timer finds nothing left to send.
            if let Some(Resend {
                done: Some(file_ids),
                ..
            }) = self.delete.resends.remove(&id)
            {
                self.out.actions.push_back(Action::DeletesSent { file_ids });
            }
        }
    }

    /// Sends `msg` now, then again after each of `gaps`.
    pub(super) fn resend(
        &mut self,
        msg: MessageKind,
        gaps: Vec<Duration>,
        done: Option<Vec<FileId>>,
        now: Instant,
    ) {
        let id = self.delete.next_resend;
        self.delete.next_resend += 1;
        self.delete.resends.insert(
            id,
            Resend {
                msg,
                gaps: gaps.into(),
                done,
            },
        );
        self.fire_resend(id, now);
    }

    /// Sends a repeated message and arms the wait before the next send.
    pub(super) fn fire_resend(&mut self, id: u64, now: Instant) {
        let Some(r) = self.delete.resends.get_mut(&id) else {
            return;
        };
        let msg = r.msg.clone();
        self.send(msg);
        let Some(r) = self.delete.resends.get_mut(&id) else {
            return;
        };
        match r.gaps.pop_front() {
            Some(gap) => {
                self.out.arm(now + gap, Timer::Resend(id));
            }
            None => {
                if let Some(Resend {
                    done: Some(file_ids),
                    ..
                }) = self.delete.resends.remove(&id)
                {
                    self.out.actions.push_back(Action::DeletesSent { file_ids });
                }
            }
        }
    }

    /// Whether a DELETE of the file was heard at or after `since` (a file backup that ends
    /// after it must not count the version as complete).
    pub fn deleted_since(&self, file_id: &FileId, since: Instant) -> bool {
        self.delete
            .delete_seen
            .get(file_id)
            .is_some_and(|at| *at >= since)
    }
}
