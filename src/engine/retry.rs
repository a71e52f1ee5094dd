//! The retransmission schedule shared by PUTCHUNK and GETCHUNK: send, wait 1 s, double the wait
//! after every send, at most `max_sends` sends. PUTCHUNK's waits are lengthened at random
//! (`poll_spread`), so the resends of chunks first sent together do not leave together again;
//! never shortened, as SPEC §2 has the initiator count STOREDs for at least 1 s.

use std::time::{Duration, Instant};

use rand::Rng;

pub const FIRST_WAIT: Duration = Duration::from_secs(1);
/// A spread wait is drawn uniformly between the schedule's (1 s, then doubling) and a quarter
/// more: the resends of a burst of chunks spread over a quarter of a wait, and none leaves
/// before the schedule says.
pub const SPREAD: f64 = 0.25;

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

    /// What to do at `now`. Returning `Send` counts the send and arms the next wait, exactly
    /// the schedule's.
    pub fn poll(&mut self, now: Instant) -> Step {
        self.step(now, || None)
    }

    /// Like `poll`, but the wait armed by a send is the schedule's times a factor drawn from
    /// `rng`, uniform in [1, 1 + SPREAD] (drawn only when a send is due, so a caller that
    /// replays its generator replays the same waits).
    pub fn poll_spread(&mut self, now: Instant, rng: &mut impl Rng) -> Step {
        self.step(now, || Some(rng.gen_range(1.0..=1.0 + SPREAD)))
    }

    fn step(&mut self, now: Instant, factor: impl FnOnce() -> Option<f64>) -> Step {
        match self.deadline {
            Some(deadline) if now < deadline => Step::WaitUntil(deadline),
            _ if self.sends >= self.max_sends => Step::GaveUp,
            _ => {
                let wait = FIRST_WAIT
                    .checked_mul(1 << self.sends.min(20))
                    .unwrap_or(Duration::MAX)
                    .min(self.max_wait);
                let wait = factor().map_or(wait, |f| wait.mul_f64(f));
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

    /// The instants of the sends, and of giving up, in seconds after the first send.
    fn spread_schedule(seed: u64) -> (Vec<f64>, f64) {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let t0 = Instant::now();
        let mut r = Retry::new(5);
        let (mut now, mut sent_at) = (t0, Vec::new());
        loop {
            match r.poll_spread(now, &mut rng) {
                Step::Send => sent_at.push((now - t0).as_secs_f64()),
                Step::WaitUntil(t) => now = t,
                Step::GaveUp => return (sent_at, (now - t0).as_secs_f64()),
            }
        }
    }

    #[test]
    fn spread_waits_are_never_shorter_than_the_schedule_and_at_most_a_quarter_longer() {
        let nominal = [0.0, 1.0, 3.0, 7.0, 15.0, 31.0];
        let runs = 2000;
        let mut sum = [0.0; 6];
        let mut distinct_first_resends = std::collections::BTreeSet::new();
        for seed in 0..runs {
            let (sent, gave_up) = spread_schedule(seed);
            assert_eq!(sent.len(), 5, "at most 5 sends, all of them");
            let at: Vec<f64> = sent.iter().copied().chain([gave_up]).collect();
            for k in 1..at.len() {
                // Each wait from the schedule's (1, 2, 4, 8, 16 s) to a quarter more.
                let wait = at[k] - at[k - 1];
                let base = (1u64 << (k - 1)) as f64;
                assert!(
                    wait >= base - 1e-6 && wait <= base * (1.0 + SPREAD) + 1e-6,
                    "seed {seed}: wait {k} is {wait} s, the schedule's is {base} s"
                );
                sum[k] += at[k];
            }
            distinct_first_resends.insert((at[1] * 1000.0) as u64);
        }
        for k in 1..6 {
            let mean = sum[k] / runs as f64;
            let expected = nominal[k] * (1.0 + SPREAD / 2.0);
            assert!(
                (mean - expected).abs() < 0.02 * nominal[k],
                "send {k}: {mean} s on average, {expected} s expected",
            );
        }
        // Chunks sent together resend apart: 2000 chunks, resent over a quarter of a second.
        assert!(
            distinct_first_resends.len() > 200,
            "{distinct_first_resends:?}"
        );
        // The same generator replays the same waits.
        assert_eq!(spread_schedule(7), spread_schedule(7));
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
