//! The backup part's handlers on `Peer`: a chunk's PUTCHUNKs on its schedule, released at the
//! pace, resent with bytes read again, and its end reported to the jobs that wait for it.

use std::time::Instant;

use super::{Action, BackupOutcome, Ended, Owner, Sending, Stopped};
use crate::engine::backup::ChunkBackup;
use crate::engine::peer::jobs::{JobId, JobKind};
use crate::engine::peer::out::{self, Timer, TimerKey};
use crate::engine::peer::Peer;
use crate::protocol::{ChunkId, FileId, MessageKind, PeerId, Rd};

impl Peer {
    /// Backs up one chunk of a job: PUTCHUNK until `rd` distinct peers sent STORED, at most 5
    /// sends. `known`: peers already known to hold it (a resumed backup).
    pub fn backup_chunk(
        &mut self,
        job: JobId,
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        known: Vec<PeerId>,
        now: Instant,
    ) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.granted = j.granted.saturating_sub(1);
            j.in_flight += 1;
            j.first_round += 1;
        }
        self.start_backup(Owner::Job(job), chunk, rd, body, known, now);
    }

    pub(in crate::engine) fn start_backup(
        &mut self,
        owner: Owner,
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        known: Vec<PeerId>,
        now: Instant,
    ) {
        if let Owner::Job(_) = owner {
            // The same version backed up again just after it was deleted: the DELETEs still to
            // be sent would remove the new copies. They stop (the ones sent are taken care of
            // by the holders, which store nothing of a file while they delete it).
            self.cancel_delete(&chunk.file_id);
        }
        if let Some(s) = self.backup.sending.get_mut(&chunk) {
            // The same chunk is being backed up already: wait for the same outcome.
            s.owners.push(owner);
            if rd > s.rd {
                s.rd = rd;
                s.backup.set_desired(rd.get());
            }
            let queued = s.queued;
            if !s.first_round {
                self.leave_first_round_of(owner);
            }
            if let (true, Owner::Job(job)) = (queued, owner) {
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.queued += 1;
                }
            }
            return;
        }
        let backup = ChunkBackup::new(rd.get(), known);
        // A job's chunk waits for its turn; a chunk known to be at its RD already needs none,
        // and a re-backup (one chunk, after a random wait) goes at once, counted by the pace.
        let paced = match owner {
            Owner::Job(job) if !backup.reached() => self.jobs.get_mut(&job),
            _ => None,
        };
        let queued = paced.is_some();
        if let Some(j) = paced {
            j.queued += 1;
        }
        self.backup.sending.insert(
            chunk.clone(),
            Sending {
                owners: vec![owner],
                rd,
                backup,
                body: Some(body),
                first_round: true,
                queued,
                sent_at_rate: None,
                reading: false,
                timer: None,
            },
        );
        if queued {
            self.backup.pacing.push_back(chunk);
            self.release_paced(now);
        } else {
            self.fire_backup(&chunk, now, true);
        }
    }

    /// Sends the first PUTCHUNKs waiting in `pacing` that the pace has tokens for, and wakes
    /// when it has one for the next.
    pub(in crate::engine) fn release_paced(&mut self, now: Instant) {
        let mut released = false;
        while let Some(chunk) = self.backup.pacing.front() {
            if !self.backup.sending.get(chunk).is_some_and(|s| s.queued) {
                self.backup.pacing.pop_front(); // ended, or sent, meanwhile
                continue;
            }
            if !self.backup.pace.try_send(now) {
                break;
            }
            let Some(chunk) = self.backup.pacing.pop_front() else {
                break;
            };
            let Some(s) = self.backup.sending.get_mut(&chunk) else {
                continue;
            };
            s.queued = false;
            s.sent_at_rate = Some(self.backup.pace.rate());
            for owner in &s.owners {
                if let Owner::Job(job) = owner {
                    if let Some(j) = self.jobs.get_mut(job) {
                        j.queued = j.queued.saturating_sub(1);
                    }
                }
            }
            self.fire_backup(&chunk, now, true);
            released = true;
        }
        if !self.backup.pacing.is_empty() {
            let at = self.backup.pace.next_send(now);
            if self.backup.pace_timer.is_none_or(|(t, _)| t > at) {
                let old = self.backup.pace_timer.take();
                self.out.disarm(old);
                self.backup.pace_timer = Some(self.out.arm(at, Timer::Pace));
            }
        }
        if released {
            // Room for more chunks ahead of their turn.
            let backups: Vec<JobId> = (self.jobs.iter())
                .filter(|(_, j)| j.kind == JobKind::Backup)
                .map(|(id, _)| *id)
                .collect();
            for job in backups {
                self.grant(job);
            }
        }
    }

    pub(in crate::engine) fn leave_first_round_of(&mut self, owner: Owner) {
        if let Owner::Job(job) = owner {
            if let Some(j) = self.jobs.get_mut(&job) {
                j.first_round = j.first_round.saturating_sub(1);
            }
            self.grant(job);
        }
    }

    /// Polls a chunk backup's schedule. `send` false: only check whether it is done (a STORED
    /// arrived), without sending.
    pub(in crate::engine) fn fire_backup(&mut self, chunk: &ChunkId, now: Instant, send: bool) {
        let Some(s) = self.backup.sending.get_mut(chunk) else {
            return;
        };
        if s.reading || (s.queued && !s.backup.reached()) {
            return;
        }
        let step = match send {
            true => s.backup.poll(now, &mut self.out.rng),
            false if s.backup.reached() => Action::Done { reached: true },
            false => return,
        };
        match step {
            Action::Done { .. } => self.finish_backup(chunk, None, now),
            Action::WaitUntil(t) => {
                let old = s.timer.take();
                self.out.disarm(old);
                let timer = self.out.arm(t, Timer::Backup(chunk.clone()));
                if let Some(s) = self.backup.sending.get_mut(chunk) {
                    s.timer = Some(timer);
                }
            }
            Action::SendPutChunk => {
                let (rd, first) = (s.rd, s.body.take());
                let resend = s.backup.sends() > 1;
                if resend {
                    self.out.counters.putchunks_resent += 1;
                }
                // A first send of a job's chunk took its token from the pace already.
                let unpaced = resend || s.owners.iter().all(|o| *o == Owner::Rebackup);
                let leaving = resend && std::mem::take(&mut s.first_round);
                let owners = if leaving {
                    s.owners.clone()
                } else {
                    Vec::new()
                };
                if first.is_none() {
                    s.reading = true;
                }
                let old = s.timer.take();
                self.out.disarm(old);
                if unpaced {
                    self.backup.pace.charge(now);
                }
                for o in owners {
                    self.leave_first_round_of(o);
                }
                match first {
                    Some(body) => {
                        self.send(MessageKind::PutChunk {
                            chunk: chunk.clone(),
                            rd,
                            body,
                        });
                        // Arms the wait for STOREDs.
                        self.fire_backup(chunk, now, true);
                    }
                    // A resend: the driver reads the bytes again (`resend_body`).
                    None => self.out.actions.push_back(out::Action::ReadBody {
                        chunk: chunk.clone(),
                    }),
                }
            }
        }
    }

    pub(in crate::engine) fn finish_backup(
        &mut self,
        chunk: &ChunkId,
        stopped: Option<Stopped>,
        now: Instant,
    ) {
        let Some(s) = self.backup.sending.remove(chunk) else {
            return;
        };
        self.out.disarm(s.timer);
        let reached = s.backup.reached() && stopped.is_none();
        let outcome = BackupOutcome {
            reached,
            sends: s.backup.sends(),
            recovered_by_resend: s.backup.recovered_by_resend(),
            holders: s.backup.holders().iter().copied().collect(),
            stopped,
        };
        if stopped.is_none() {
            let ended = Ended {
                first_sent: s.backup.first_sent(),
                sent_at_rate: s.sent_at_rate,
                sends: outcome.sends,
                reached,
                recovered_by_resend: outcome.recovered_by_resend,
            };
            self.backup.pace.on_done(ended, now);
        }
        for owner in &s.owners {
            match owner {
                Owner::Job(job) => {
                    if let Some(j) = self.jobs.get_mut(job) {
                        j.in_flight = j.in_flight.saturating_sub(1);
                        if s.first_round {
                            j.first_round = j.first_round.saturating_sub(1);
                        }
                        if s.queued {
                            j.queued = j.queued.saturating_sub(1);
                        }
                    }
                    self.grant(*job);
                }
                Owner::Rebackup => {
                    self.rebackup_ended(chunk);
                }
            }
        }
        self.out.actions.push_back(out::Action::BackedUp {
            owners: s.owners,
            chunk: chunk.clone(),
            outcome,
        });
    }

    /// The bytes asked for by `ReadBody` (None: the file changed or cannot be read).
    pub fn resend_body(&mut self, chunk: &ChunkId, body: Option<Vec<u8>>, now: Instant) {
        let Some(s) = self.backup.sending.get_mut(chunk) else {
            return;
        };
        if !s.reading {
            return;
        }
        s.reading = false;
        match body {
            None => self.finish_backup(chunk, Some(Stopped::Changed), now),
            Some(body) => {
                let rd = s.rd;
                self.send(MessageKind::PutChunk {
                    chunk: chunk.clone(),
                    rd,
                    body,
                });
                self.fire_backup(chunk, now, true);
            }
        }
    }

    /// The pace of this peer's backups: first sends per second.
    pub fn backup_rate(&self) -> f64 {
        self.backup.pace.rate()
    }

    /// A STORED for a chunk we back up: done as soon as it can be, so the window moves on.
    pub(in crate::engine) fn backup_stored(
        &mut self,
        chunk: &ChunkId,
        sender: PeerId,
        now: Instant,
    ) {
        if let Some(s) = self.backup.sending.get_mut(chunk) {
            s.backup.on_stored(sender);
            self.fire_backup(chunk, now, false);
        }
    }

    /// A DELETE of the file was heard: our own re-backups of its chunks stop (a resend would
    /// put a chunk back on peers that just freed it); the chunks of our own files are ours to
    /// delete, not a peer's.
    pub(in crate::engine) fn stop_rebackups_of(&mut self, file_id: &FileId, now: Instant) {
        let stopping: Vec<ChunkId> = (self.backup.sending.iter())
            .filter(|(c, s)| {
                c.file_id == *file_id && s.owners.iter().all(|o| *o == Owner::Rebackup)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for c in stopping {
            self.finish_backup(&c, Some(Stopped::Deleted), now);
        }
    }

    /// We delete these files: their backups still running stop.
    pub(in crate::engine) fn stop_backups_of(&mut self, file_ids: &[FileId], now: Instant) {
        let stopping: Vec<ChunkId> = (self.backup.sending.keys())
            .filter(|c| file_ids.contains(&c.file_id))
            .cloned()
            .collect();
        for c in stopping {
            self.finish_backup(&c, Some(Stopped::Deleted), now);
        }
    }

    /// A job ended: its chunks no other owner waits for stop without a word.
    pub(in crate::engine) fn end_job_backups(&mut self, job: JobId) {
        let owned = |owners: &mut Vec<Owner>| {
            owners.retain(|o| *o != Owner::Job(job));
            owners.is_empty()
        };
        let sends: Vec<ChunkId> = (self.backup.sending.iter_mut())
            .filter_map(|(c, s)| owned(&mut s.owners).then(|| c.clone()))
            .collect();
        for c in sends {
            if let Some(s) = self.backup.sending.remove(&c) {
                self.out.disarm(s.timer);
            }
        }
    }

    /// A chunk backup's wait is over (`key`: the timer armed for it, if still current).
    pub(in crate::engine) fn backup_timer(&mut self, chunk: ChunkId, key: TimerKey, now: Instant) {
        let Some(s) = self.backup.sending.get_mut(&chunk) else {
            return;
        };
        if s.timer != Some(key) {
            return;
        }
        s.timer = None;
        self.fire_backup(&chunk, now, true);
    }

    /// The pace has a token for the next chunk waiting.
    pub(in crate::engine) fn pace_timer(&mut self, key: TimerKey, now: Instant) {
        if self.backup.pace_timer == Some(key) {
            self.backup.pace_timer = None;
            self.release_paced(now);
        }
    }
}
