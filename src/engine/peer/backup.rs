//! Backing up one chunk (PUTCHUNK until RD distinct peers sent STORED, at most 5 sends, resends
//! spread around the schedule), the pace at which a peer's backups send their chunks, and the
//! window of chunks a restore keeps in flight. `Backups` is the part of `peer::Peer` that owns
//! our chunks being backed up (its handlers are in `backup/sends.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::Rng;

use super::out::TimerKey;
use crate::engine::retry::{Retry, Step, FIRST_WAIT};
use crate::protocol::message::PeerId;
use crate::protocol::{ChunkId, Rd};

pub const MAX_PUTCHUNK_SENDS: u32 = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SendPutChunk,
    WaitUntil(Instant),
    /// Done: `reached` says whether the desired RD was reached.
    Done {
        reached: bool,
    },
}

/// One chunk's backup. The holder set counts distinct peers, never messages.
#[derive(Clone, Debug)]
pub struct ChunkBackup {
    desired: usize,
    holders: BTreeSet<PeerId>,
    retry: Retry,
    /// Holders counted when the first resend went out: more after that means a datagram was lost.
    holders_at_resend: Option<usize>,
    first_sent: Option<Instant>,
}

impl ChunkBackup {
    /// `known` are peers already known to hold the chunk (ourselves, when a holder re-backs up).
    pub fn new(desired_rd: u8, known: impl IntoIterator<Item = PeerId>) -> ChunkBackup {
        ChunkBackup {
            desired: desired_rd as usize,
            holders: known.into_iter().collect(),
            retry: Retry::new(MAX_PUTCHUNK_SENDS),
            holders_at_resend: None,
            first_sent: None,
        }
    }

    pub fn on_stored(&mut self, peer: PeerId) {
        self.holders.insert(peer);
    }

    /// Whether the desired RD is reached.
    pub fn reached(&self) -> bool {
        self.holders.len() >= self.desired
    }

    /// Aims at another RD (a second backup of the chunk asked for more).
    pub fn set_desired(&mut self, desired_rd: u8) {
        self.desired = desired_rd as usize;
    }

    pub fn holders(&self) -> &BTreeSet<PeerId> {
        &self.holders
    }

    pub fn sends(&self) -> u32 {
        self.retry.sends()
    }

    /// A resend brought a new holder: a PUTCHUNK or a STORED was lost (receivers overrun),
    /// not merely too few peers with room.
    pub fn recovered_by_resend(&self) -> bool {
        self.holders_at_resend
            .is_some_and(|before| self.holders.len() > before)
    }

    /// When the first PUTCHUNK went out.
    pub fn first_sent(&self) -> Option<Instant> {
        self.first_sent
    }

    /// What to do at `now`. The waits after each send are the schedule's (1 s, doubling),
    /// spread by a factor drawn from `rng` (`Retry::poll_spread`).
    pub fn poll(&mut self, now: Instant, rng: &mut impl Rng) -> Action {
        if self.holders.len() >= self.desired {
            return Action::Done { reached: true };
        }
        match self.retry.poll_spread(now, rng) {
            Step::Send => {
                match self.retry.sends() {
                    1 => self.first_sent = Some(now),
                    2 => self.holders_at_resend = Some(self.holders.len()),
                    _ => {}
                }
                Action::SendPutChunk
            }
            Step::WaitUntil(t) => Action::WaitUntil(t),
            Step::GaveUp => Action::Done { reached: false },
        }
    }
}

/// Chunks a second a peer's first backup starts at, before anything is known: 32 MB/s, one
/// chunk every 2 ms (a receiver whose buffer holds three chunks, the kernel's default, has 6 ms
/// to read each before one is lost). Where the receivers keep up, the pace is several times
/// this within a second (`SLOW_START_GROWTH`).
pub const INITIAL_RATE: f64 = 500.0;
/// The pace never falls below this (1 MB/s): enough for any receiver that reads at all.
pub const MIN_RATE: f64 = 16.0;
/// Nor grows beyond this (3.2 GB/s): well above what any LAN or disk takes, so it never caps.
pub const MAX_RATE: f64 = 50_000.0;
/// Chunks a second added by each chunk confirmed on its first send until the first loss: the
/// rate doubles in about 0.17 s (like TCP's slow start, which doubles per round trip), so a
/// healthy LAN is found fast.
pub const SLOW_START_GROWTH: f64 = 4.0;
/// The same after the first loss: the rate doubles in about 2.8 s. A loss is known only at the
/// first resend (1-1.25 s after the send, and its STORED), so growth must be slow next to
/// that for the pace to settle (it grows by a third to a half while a loss is on its way).
pub const GROWTH: f64 = 0.25;
/// What a loss leaves of the rate at which the lost chunk was sent.
pub const DECREASE: f64 = 0.5;
/// First sends saved up while the pace has nothing to send: this much time's worth (at least
/// one). The daemon's timers wake to the millisecond, so 2 ms lets a wake send what the rate
/// allows; a receiver's default buffer holds three chunks.
pub const BURST: Duration = Duration::from_millis(2);
/// Resends take their token even when there is none: at most this much time's worth of debt.
pub const MAX_DEBT: Duration = Duration::from_secs(1);
/// The pace grows only if it held a first send back this recently.
pub const HELD_BACK_FOR: Duration = Duration::from_secs(1);
/// Chunks a backup hands over ahead of their turn: this much time's worth (2 to 64), so the
/// pace always has the next ones at hand, and only a few bodies wait in memory.
pub const AHEAD: Duration = Duration::from_millis(20);
pub const MAX_AHEAD: usize = 64;

/// The pace at which a peer's backups send their chunks for the first time. One for the peer,
/// shared by all its backups (their PUTCHUNKs all land in the same receivers' buffers, and a
/// backup of many small files is many backups of one chunk each) and kept across them, so a
/// backup starts at the pace the last ones reached.
///
/// First sends leave as a token bucket allows: `rate` tokens a second, a `BURST` of them saved
/// at most, so a backup's chunks are spread over time instead of sent at once. Resends do not
/// wait (the retry schedule, spread, decides when they leave) but take a token all the same,
/// into debt if need be: the first sends make way for them.
///
/// The rate is AIMD, like TCP's congestion window:
/// - each chunk confirmed by RD peers on its first send adds a constant (`SLOW_START_GROWTH`
///   until the first loss, then `GROWTH`) while the pace is what holds the sends back (a backup
///   that its disk or its window holds back does not inflate it);
/// - a chunk that a resend brought a holder its first send did not (`recovered_by_resend`: a
///   datagram was lost, a receiver was overrun) sets it to half the rate the chunk was sent at
///   (not half of what it grew to while the loss was on its way), once per round: the loss of
///   a chunk first sent before the last decrease was answered by it. A chunk short of holders
///   because too few peers have room says nothing about congestion and changes nothing.
///
/// Always within MIN_RATE..=MAX_RATE.
#[derive(Clone, Debug)]
pub struct Pace {
    rate: f64,
    tokens: f64,
    refilled: Option<Instant>,
    /// The last decrease; None: none yet (slow start).
    decreased: Option<Instant>,
    held_back: Option<Instant>,
}

/// A chunk backup's end, as the pace learns from it.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    pub first_sent: Option<Instant>,
    /// The pace's rate when it was first sent (None: not known, the rate now counts).
    pub sent_at_rate: Option<f64>,
    pub sends: u32,
    pub reached: bool,
    pub recovered_by_resend: bool,
}

impl Default for Pace {
    fn default() -> Self {
        Pace::new(INITIAL_RATE)
    }
}

impl Pace {
    pub fn new(rate: f64) -> Pace {
        Pace {
            rate: rate.clamp(MIN_RATE, MAX_RATE),
            tokens: 0.0,
            refilled: None,
            decreased: None,
            held_back: None,
        }
    }

    /// First sends per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Chunks in their first round that keep this pace up: a first round lasts until the
    /// chunk's STOREDs, at most until its first resend, so what the pace sends in
    /// `FIRST_WAIT`, within `bounds` (min, max).
    pub fn window(&self, (min, max): (usize, usize)) -> usize {
        ((self.rate * FIRST_WAIT.as_secs_f64()) as usize).clamp(min, max)
    }

    /// Chunks a backup may hand over ahead of their turn.
    pub fn ahead(&self) -> usize {
        ((self.rate * AHEAD.as_secs_f64()).ceil() as usize).clamp(2, MAX_AHEAD)
    }

    fn burst(&self) -> f64 {
        (self.rate * BURST.as_secs_f64()).max(1.0)
    }

    fn refill(&mut self, now: Instant) {
        self.tokens = match self.refilled {
            None => self.burst(),
            Some(t) => {
                let saved = self.rate * now.saturating_duration_since(t).as_secs_f64();
                (self.tokens + saved).min(self.burst())
            }
        };
        self.refilled = Some(self.refilled.map_or(now, |t| t.max(now)));
    }

    /// Whether a first send may leave now (it takes its token).
    pub fn try_send(&mut self, now: Instant) -> bool {
        self.refill(now);
        // Float sums: a token all but whole is whole (else a timer set for it would find none).
        if self.tokens >= 1.0 - 1e-6 {
            self.tokens -= 1.0;
            true
        } else {
            self.held_back = Some(now);
            false
        }
    }

    /// A send that does not wait for its turn (a resend, a re-backup): it takes a token all
    /// the same, into debt if need be.
    pub fn charge(&mut self, now: Instant) {
        self.refill(now);
        let floor = -self.rate * MAX_DEBT.as_secs_f64();
        self.tokens = (self.tokens - 1.0).max(floor);
    }

    /// When `try_send` will find a token (now, if it would now).
    pub fn next_send(&self, now: Instant) -> Instant {
        let since = self.refilled.unwrap_or(now);
        let missing = 1.0 - self.tokens;
        if missing <= 0.0 {
            return now;
        }
        // A microsecond late rather than a hair early.
        let wait = Duration::from_secs_f64(missing / self.rate) + Duration::from_micros(1);
        (since + wait).max(now)
    }

    /// A chunk backup ended: the rate grows, falls, or stays (see `Pace`).
    pub fn on_done(&mut self, ended: Ended, now: Instant) {
        if ended.recovered_by_resend {
            let new_round = ended
                .first_sent
                .is_some_and(|t| self.decreased.is_none_or(|d| t >= d));
            if new_round {
                let sent_at = ended.sent_at_rate.unwrap_or(self.rate).min(self.rate);
                self.rate = (sent_at * DECREASE).max(MIN_RATE);
                self.tokens = self.tokens.min(self.burst());
                self.decreased = Some(now);
            }
        } else if ended.sends == 1 && ended.reached {
            let pacing = self
                .held_back
                .is_some_and(|t| now.saturating_duration_since(t) < HELD_BACK_FOR);
            if pacing {
                let growth = match self.decreased {
                    None => SLOW_START_GROWTH,
                    Some(_) => GROWTH,
                };
                self.rate = (self.rate + growth).min(MAX_RATE);
            }
        }
    }
}

/// How many chunks a restore keeps in flight. Every chunk waits up to 400 ms for its answer, so
/// throughput is window / latency: the window grows while chunks come on their first request
/// and halves when a request had to be sent again (a datagram was lost: peers were overrun).
#[derive(Clone, Debug)]
pub struct Window {
    size: f64,
    min: f64,
    max: f64,
}

impl Window {
    pub fn new(initial: usize, min: usize, max: usize) -> Window {
        Window {
            size: initial as f64,
            min: min as f64,
            max: max as f64,
        }
    }

    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// A chunk finished after `sends` PUTCHUNKs.
    pub fn on_done(&mut self, sends: u32, reached: bool, recovered_by_resend: bool) {
        if sends <= 1 && reached {
            // Roughly doubles per window's worth of clean round trips, like slow start.
            self.size = (self.size + 1.0).min(self.max);
        } else if recovered_by_resend {
            self.size = (self.size / 2.0).max(self.min);
        }
    }
}

// ---- our chunks' PUTCHUNKs: sends, pace, resends (a part of `peer::Peer`) ---------------------

pub use super::out::{BackupOutcome, Owner, Stopped};

/// A chunk this peer is backing up.
struct Sending {
    owners: Vec<Owner>,
    rd: Rd,
    backup: ChunkBackup,
    /// The bytes for the first send; resends ask the driver for them again.
    body: Option<Vec<u8>>,
    /// Still in its first round (counted by its jobs' windows).
    first_round: bool,
    /// Waiting in `pacing` for its first send.
    queued: bool,
    /// The pace's rate when it left `pacing`.
    sent_at_rate: Option<f64>,
    /// Waiting for the driver's `resend_body`.
    reading: bool,
    timer: Option<TimerKey>,
}

/// The chunks this peer backs up, and the pace their first sends keep.
pub(super) struct Backups {
    sending: BTreeMap<ChunkId, Sending>,
    /// The pace of this peer's backups, kept across them.
    pace: Pace,
    /// Chunks of backups waiting for their first send, in order (entries whose chunk ended or
    /// was sent meanwhile are skipped).
    pacing: VecDeque<ChunkId>,
    pace_timer: Option<TimerKey>,
}

impl Backups {
    pub(super) fn new() -> Backups {
        Backups {
            sending: BTreeMap::new(),
            pace: Pace::default(),
            pacing: VecDeque::new(),
            pace_timer: None,
        }
    }

    pub(super) fn pace(&self) -> &Pace {
        &self.pace
    }

    /// Chunks being backed up.
    pub(super) fn sending(&self) -> usize {
        self.sending.len()
    }

    pub(super) fn is_sending(&self, chunk: &ChunkId) -> bool {
        self.sending.contains_key(chunk)
    }
}

mod sends;

#[cfg(test)]
mod tests;
