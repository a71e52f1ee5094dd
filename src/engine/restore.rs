//! Restoring one chunk: GETCHUNK, retransmitted on a doubling timeout, until a CHUNK with the
//! right bytes arrives.

use std::time::Instant;

use super::retry::{Retry, Step};

/// GETCHUNK is cheap and a restore is what a backup is for: more tries than PUTCHUNK, with
/// waits capped at 4 s (0, 1, 3, 7, 11, 15, 19, 23 s; gives up at 27 s).
pub const MAX_GETCHUNK_SENDS: u32 = 8;
pub const MAX_GETCHUNK_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SendGetChunk,
    WaitUntil(Instant),
    GaveUp,
}

#[derive(Clone, Debug)]
pub struct ChunkFetch {
    retry: Retry,
}

impl Default for ChunkFetch {
    fn default() -> Self {
        ChunkFetch {
            retry: Retry::capped(MAX_GETCHUNK_SENDS, MAX_GETCHUNK_WAIT),
        }
    }
}

/// A probe (`peer::Expect::Opens`) is asked twice, a second apart: most probes of
/// `peerstash recover` look for snapshots that do not exist, and a holder answers within 0.4 s.
pub const PROBE_SENDS: u32 = 2;

impl ChunkFetch {
    pub fn probe() -> ChunkFetch {
        ChunkFetch {
            retry: Retry::capped(PROBE_SENDS, std::time::Duration::from_secs(1)),
        }
    }

    pub fn poll(&mut self, now: Instant) -> Action {
        match self.retry.poll(now) {
            Step::Send => Action::SendGetChunk,
            Step::WaitUntil(t) => Action::WaitUntil(t),
            Step::GaveUp => Action::GaveUp,
        }
    }

    pub fn sends(&self) -> u32 {
        self.retry.sends()
    }
}

/// Whether a CHUNK body can be chunk `chunk_no` of a file of `file_size` bytes: every chunk is
/// exactly CHUNK_SIZE bytes except the last, which is shorter (0 bytes when the size is a multiple).
pub fn expected_len(file_size: u64, chunk_no: u32) -> Option<usize> {
    crate::protocol::seal::Cut::Plain.chunk_len(file_size, chunk_no)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_follow_the_chunking_rule() {
        assert_eq!(expected_len(0, 0), Some(0));
        assert_eq!(expected_len(0, 1), None);
        assert_eq!(expected_len(128_000, 1), Some(64_000));
        assert_eq!(expected_len(128_000, 2), Some(0));
        assert_eq!(expected_len(1_000_000, 15), Some(40_000));
        assert_eq!(expected_len(1_000_000, 16), None);
    }

    #[test]
    fn fetch_gives_up_after_bounded_sends() {
        let mut f = ChunkFetch::default();
        let mut now = Instant::now();
        let mut sends = 0;
        loop {
            match f.poll(now) {
                Action::SendGetChunk => sends += 1,
                Action::WaitUntil(t) => now = t,
                Action::GaveUp => break,
            }
        }
        assert_eq!(sends, MAX_GETCHUNK_SENDS);
    }
}
