//! The retransmission schedule shared by PUTCHUNK and GETCHUNK: send, wait 1 s, double the wait
//! after every send, at most `max_sends` sends.

use std::time::{Duration, Instant};

pub const FIRST_WAIT: Duration = Duration::from_secs(1);

/// Where a retrying exchange stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send (again) now.
    Send,
    /// Nothing to do before this instant.
    WaitUntil(Instant),
    /// All sends spent and the last wait is over.
    GaveUp,
}

#[derive(Clone, Debug)]
pub struct Retry {
    sends: u32,
    max_sends: u32,
    max_wait: Duration,
    deadline: Option<Instant>,
}

impl Retry {
    pub fn new(max_sends: u32) -> Retry {
        Retry::capped(max_sends, Duration::MAX)
    }

    /// Like `new`, but no wait is longer than `max_wait`.
    pub fn capped(max_sends: u32, max_wait: Duration) -> Retry {
        Retry {
            sends: 0,
            max_sends,
            max_wait,
            deadline: None,
        }
    }

    pub fn sends(&self) -> u32 {
        self.sends
    }

    /// What to do at `now`. Returning `Send` counts the send and arms the next wait.
    pub fn poll(&mut self, now: Instant) -> Step {
        match self.deadline {
            Some(deadline) if now < deadline => Step::WaitUntil(deadline),
            _ if self.sends >= self.max_sends => Step::GaveUp,
            _ => {
                let wait = FIRST_WAIT
                    .checked_mul(1 << self.sends.min(20))
                    .unwrap_or(Duration::MAX)
                    .min(self.max_wait);
                self.deadline = Some(now + wait);
                self.sends += 1;
                Step::Send
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_at_0_1_3_7_15_then_gives_up_at_31() {
        let t0 = Instant::now();
        let mut r = Retry::new(5);
        let mut sent_at = Vec::new();
        let mut now = t0;
        loop {
            match r.poll(now) {
                Step::Send => sent_at.push((now - t0).as_secs()),
                Step::WaitUntil(t) => now = t,
                Step::GaveUp => break,
            }
        }
        assert_eq!(sent_at, vec![0, 1, 3, 7, 15]);
        assert_eq!((now - t0).as_secs(), 31);
    }

    #[test]
    fn capped_waits() {
        let t0 = Instant::now();
        let mut r = Retry::capped(6, Duration::from_secs(4));
        let (mut now, mut sent_at) = (t0, Vec::new());
        loop {
            match r.poll(now) {
                Step::Send => sent_at.push((now - t0).as_secs()),
                Step::WaitUntil(t) => now = t,
                Step::GaveUp => break,
            }
        }
        assert_eq!(sent_at, vec![0, 1, 3, 7, 11, 15]);
    }

    #[test]
    fn waits_until_deadline() {
        let t0 = Instant::now();
        let mut r = Retry::new(5);
        assert_eq!(r.poll(t0), Step::Send);
        assert_eq!(
            r.poll(t0 + Duration::from_millis(999)),
            Step::WaitUntil(t0 + FIRST_WAIT)
        );
        assert_eq!(r.poll(t0 + FIRST_WAIT), Step::Send);
        assert_eq!(r.sends(), 2);
    }
}
