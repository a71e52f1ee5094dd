//! Backing up one chunk (PUTCHUNK until RD distinct peers sent STORED, at most 5 sends) and the
//! window of chunks a file backup keeps in flight.

use std::collections::BTreeSet;
use std::time::Instant;

use super::retry::{Retry, Step};
use crate::protocol::message::PeerId;

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
}

impl ChunkBackup {
    /// `known` are peers already known to hold the chunk (ourselves, when a holder re-backs up).
    pub fn new(desired_rd: u8, known: impl IntoIterator<Item = PeerId>) -> ChunkBackup {
        ChunkBackup {
            desired: desired_rd as usize,
            holders: known.into_iter().collect(),
            retry: Retry::new(MAX_PUTCHUNK_SENDS),
            holders_at_resend: None,
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

    pub fn poll(&mut self, now: Instant) -> Action {
        if self.holders.len() >= self.desired {
            return Action::Done { reached: true };
        }
        match self.retry.poll(now) {
            Step::Send => {
                if self.retry.sends() == 2 {
                    self.holders_at_resend = Some(self.holders.len());
                }
                Action::SendPutChunk
            }
            Step::WaitUntil(t) => Action::WaitUntil(t),
            Step::GaveUp => Action::Done { reached: false },
        }
    }
}

/// How many chunks a backup keeps in their first round (sent once, waiting for STOREDs). Every
/// chunk waits up to 400 ms for its STOREDs, so throughput is window / latency: the window grows
/// while chunks are confirmed on their first send and halves when a resend brought a holder
/// that the first send did not (a datagram was lost: receivers were overrun). A chunk that
/// stays short of holders because too few peers have room says nothing about congestion.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stops_early_once_rd_distinct_peers_stored() {
        let t0 = Instant::now();
        let mut b = ChunkBackup::new(2, []);
        assert_eq!(b.poll(t0), Action::SendPutChunk);
        b.on_stored(PeerId(2));
        b.on_stored(PeerId(2)); // duplicated datagram
        assert!(matches!(
            b.poll(t0 + Duration::from_millis(100)),
            Action::WaitUntil(_)
        ));
        b.on_stored(PeerId(3));
        assert_eq!(
            b.poll(t0 + Duration::from_millis(200)),
            Action::Done { reached: true }
        );
        assert_eq!(b.sends(), 1);
    }

    #[test]
    fn resends_with_doubling_then_reports_below_rd() {
        let t0 = Instant::now();
        let mut b = ChunkBackup::new(3, [PeerId(9)]);
        b.on_stored(PeerId(2));
        let mut now = t0;
        let mut sends = Vec::new();
        let reached = loop {
            match b.poll(now) {
                Action::SendPutChunk => sends.push((now - t0).as_secs()),
                Action::WaitUntil(t) => now = t,
                Action::Done { reached } => break reached,
            }
        };
        assert!(!reached);
        assert_eq!(sends, vec![0, 1, 3, 7, 15]);
    }

    #[test]
    fn a_holder_gained_by_a_resend_means_loss() {
        let t0 = Instant::now();
        let mut b = ChunkBackup::new(2, []);
        assert_eq!(b.poll(t0), Action::SendPutChunk);
        b.on_stored(PeerId(2));
        assert_eq!(b.poll(t0 + Duration::from_secs(1)), Action::SendPutChunk);
        assert!(!b.recovered_by_resend());
        b.on_stored(PeerId(3));
        assert!(b.recovered_by_resend());
    }

    #[test]
    fn already_replicated_chunk_sends_nothing() {
        let mut b = ChunkBackup::new(1, [PeerId(4)]);
        assert_eq!(b.poll(Instant::now()), Action::Done { reached: true });
    }

    #[test]
    fn window_grows_on_clean_rounds_and_halves_on_resend() {
        let mut w = Window::new(16, 4, 64);
        for _ in 0..100 {
            w.on_done(1, true, false);
        }
        assert_eq!(w.size(), 64);
        w.on_done(2, true, true);
        assert_eq!(w.size(), 32);
        // Too few peers: no loss, no shrinking.
        w.on_done(5, false, false);
        assert_eq!(w.size(), 32);
        for _ in 0..10 {
            w.on_done(5, false, true);
        }
        assert_eq!(w.size(), 4);
    }
}
