//! The jobs (one file's backup or restore) that offer chunks as the engine gives them room: each
//! job's credit, shared by the backup and restore parts of `peer::Peer`.

use super::backup::{Pace, Window};
use super::out::Action;
use super::Peer;

/// Chunks a file backup keeps in their first round (sent once, waiting for STOREDs), at least and
/// at most: within these, what the peer's pace sends in a first round (`backup::Pace::window`).
pub const BACKUP_WINDOW: (usize, usize) = (4, 1024);
/// Chunks past their first round (resending on the 1, 2, 4, 8, 16 s schedule) cost little:
/// their bytes are read again for each resend. Bounded all the same.
pub const MAX_CHUNKS_IN_BACKOFF: usize = 4096;
/// GETCHUNKs a restore keeps in flight: adapts like the backup window.
pub const RESTORE_WINDOW: (usize, usize, usize) = (64, 4, 512);

pub use super::out::JobId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Backup,
    Restore,
}

pub(super) struct Job {
    pub(super) kind: JobKind,
    /// A restore's window of GETCHUNKs (a backup follows the peer's `Pace`).
    pub(super) window: Option<Window>,
    /// Chunks offered and not yet ended.
    pub(super) in_flight: usize,
    /// Of those, chunks in their first round (backup) or all of them (restore).
    pub(super) first_round: usize,
    /// Of those, a backup's chunks waiting for their turn to be sent (`Peer::pacing`).
    pub(super) queued: usize,
    /// Room granted with `Credit` and not yet used.
    pub(super) granted: usize,
}

impl Job {
    /// Room for more chunks: a restore's window; for a backup, the window that keeps the pace
    /// up, for as many chunks ahead of their turn as the pace wants at hand (so that few bodies
    /// wait in memory), and the bound on chunks in backoff.
    pub(super) fn room(&self, pace: &Pace) -> usize {
        let busy = self.first_round + self.granted;
        match (self.kind, &self.window) {
            (JobKind::Backup, _) => {
                let window = pace.window(BACKUP_WINDOW).saturating_sub(busy);
                let ahead = pace.ahead().saturating_sub(self.queued + self.granted);
                let backoff = MAX_CHUNKS_IN_BACKOFF.saturating_sub(self.in_flight + self.granted);
                window.min(ahead).min(backoff)
            }
            (JobKind::Restore, Some(w)) => w.size().saturating_sub(busy),
            (JobKind::Restore, None) => 0,
        }
    }
}

impl Peer {
    /// A job starts: it offers chunks as `Credit` actions give it room. A backup's chunks leave
    /// at the peer's pace (`backup::Pace`), which is where the last backups left it.
    pub fn start_job(&mut self, job: JobId, kind: JobKind) {
        let window = match kind {
            JobKind::Backup => None,
            JobKind::Restore => {
                let (initial, min, max) = RESTORE_WINDOW;
                Some(Window::new(initial, min, max))
            }
        };
        self.jobs.insert(
            job,
            Job {
                kind,
                window,
                in_flight: 0,
                first_round: 0,
                queued: 0,
                granted: 0,
            },
        );
        self.grant(job);
    }

    /// A job ends (done, or given up): its chunks still in flight stop without a word.
    pub fn end_job(&mut self, job: JobId) {
        self.jobs.remove(&job);
        self.end_job_backups(job);
        self.end_job_fetches(job);
    }

    /// The room a job has now, given as `Credit` (the job keeps count of what it was given).
    pub(super) fn grant(&mut self, job: JobId) {
        let Some(j) = self.jobs.get(&job) else {
            return;
        };
        let n = j.room(self.backup_pace());
        if n > 0 {
            if let Some(j) = self.jobs.get_mut(&job) {
                j.granted += n;
            }
            self.out.actions.push_back(Action::Credit { job, n });
        }
    }
}
