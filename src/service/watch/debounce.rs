//! The watcher's debounce: a changed path is handed on once no event was seen for it during its
//! folder's quiet time, so a file being written is looked at once, after the last write; but
//! never later than its folder's `max_delay` after its first event, so that a file that is never
//! quiet (a log) is looked at all the same. Pure:
//! events and clock readings go in, ready paths and the next time to look come out; the async
//! watcher only moves them.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What became of an event.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Its path waits for its quiet time.
    Waiting,
    /// Too many paths were waiting: all were dropped. A scan of the folders must replace them.
    Overflowed,
}

/// Paths waiting for their quiet time.
#[derive(Debug)]
pub struct Debounce {
    /// When each waiting path is ready, and its first event since it was last handed on.
    ready_at: HashMap<PathBuf, (Instant, Instant)>,
    /// The same, by time: the next one ready is the first.
    by_time: BTreeSet<(Instant, PathBuf)>,
    /// Most paths waiting at once (each is memory; a scan finds the same changes).
    max_waiting: usize,
}

impl Debounce {
    pub fn new(max_waiting: usize) -> Debounce {
        Debounce {
            ready_at: HashMap::new(),
            by_time: BTreeSet::new(),
            max_waiting,
        }
    }

    /// An event about `path` at `now`: it is ready once `quiet` passed with no other event about
    /// it (each event starts its wait again), or once `max_delay` passed since its first event,
    /// whichever comes first.
    pub fn on_event(
        &mut self,
        path: PathBuf,
        quiet: Duration,
        max_delay: Duration,
        now: Instant,
    ) -> Admitted {
        let since = match self.ready_at.get(&path) {
            Some(&(before, since)) => {
                self.by_time.remove(&(before, path.clone()));
                since
            }
            None => now,
        };
        let at = (now + quiet).min(since + max_delay);
        self.ready_at.insert(path.clone(), (at, since));
        self.by_time.insert((at, path));
        if self.ready_at.len() > self.max_waiting {
            self.clear();
            return Admitted::Overflowed;
        }
        Admitted::Waiting
    }

    /// The paths ready at `now`, the longest-ready first, each with its first event; they no
    /// longer wait.
    pub fn poll(&mut self, now: Instant) -> Vec<(PathBuf, Instant)> {
        let mut ready = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            if let Some((_, path)) = self.by_time.pop_first() {
                let since = self.ready_at.remove(&path).map_or(now, |(_, since)| since);
                ready.push((path, since));
            }
        }
        ready
    }

    /// When the next path is ready (None: nothing waits).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Drops every waiting path (a scan of the folders replaces them).
    pub fn clear(&mut self) {
        self.ready_at.clear();
        self.by_time.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn p(name: &str) -> PathBuf {
        PathBuf::from(format!("/w/{name}"))
    }

    /// A max_delay longer than any test.
    const LONG: Duration = Duration::from_secs(3600);

    fn paths(ready: Vec<(PathBuf, Instant)>) -> Vec<PathBuf> {
        ready.into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn a_path_never_quiet_is_ready_max_delay_after_its_first_event() {
        // A log appended every 500 ms, quiet time 2 s, max_delay 8 s: ready at 8 s, with its
        // first event; the next wait starts at the next event (here the same instant).
        let t0 = Instant::now();
        let mut d = Debounce::new(100);
        let (quiet, max) = (ms(2000), ms(8000));
        let mut handed = Vec::new();
        for i in 0..=40 {
            let now = t0 + ms(500 * i);
            handed.extend(
                d.poll(now)
                    .into_iter()
                    .map(|(p, since)| (p, since - t0, now - t0)),
            );
            assert_eq!(d.on_event(p("log"), quiet, max, now), Admitted::Waiting);
        }
        assert_eq!(
            handed,
            vec![(p("log"), ms(0), ms(8000)), (p("log"), ms(8000), ms(16000))]
        );
        // Quiet at last (no event after 20 s): ready after its quiet time, before its
        // max_delay (16 s + 8 s).
        assert_eq!(d.next_deadline(), Some(t0 + ms(22000)));
        assert_eq!(d.poll(t0 + ms(22000)), vec![(p("log"), t0 + ms(16000))]);
    }

    #[test]
    fn a_path_is_ready_once_quiet_for_its_quiet_time() {
        let t0 = Instant::now();
        let mut d = Debounce::new(100);
        assert_eq!(d.next_deadline(), None);
        assert_eq!(d.on_event(p("a"), ms(300), LONG, t0), Admitted::Waiting);
        assert_eq!(d.next_deadline(), Some(t0 + ms(300)));
        assert!(paths(d.poll(t0 + ms(299))).is_empty());
        assert_eq!(paths(d.poll(t0 + ms(300))), vec![p("a")]);
        // Handed on once.
        assert!(paths(d.poll(t0 + ms(1000))).is_empty());
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn every_event_starts_the_wait_again() {
        // A file written every 200 ms for a second, quiet time 300 ms: looked at once, 300 ms
        // after the last write.
        let t0 = Instant::now();
        let mut d = Debounce::new(100);
        for i in 0..=5 {
            let now = t0 + ms(200 * i);
            assert!(
                paths(d.poll(now)).is_empty(),
                "ready while still written ({i})"
            );
            assert_eq!(d.on_event(p("a"), ms(300), LONG, now), Admitted::Waiting);
        }
        assert_eq!(d.next_deadline(), Some(t0 + ms(1300)));
        assert!(paths(d.poll(t0 + ms(1299))).is_empty());
        assert_eq!(paths(d.poll(t0 + ms(1300))), vec![p("a")]);
    }

    #[test]
    fn each_path_keeps_its_folders_quiet_time_and_comes_out_in_order() {
        let t0 = Instant::now();
        let mut d = Debounce::new(100);
        assert_eq!(d.on_event(p("slow"), ms(2000), LONG, t0), Admitted::Waiting);
        assert_eq!(
            d.on_event(p("fast"), ms(100), LONG, t0 + ms(50)),
            Admitted::Waiting
        );
        assert_eq!(
            d.on_event(p("mid"), ms(500), LONG, t0 + ms(10)),
            Admitted::Waiting
        );
        assert_eq!(d.next_deadline(), Some(t0 + ms(150)));
        assert_eq!(paths(d.poll(t0 + ms(150))), vec![p("fast")]);
        assert_eq!(d.next_deadline(), Some(t0 + ms(510)));
        // Both ready by then: the one ready first comes first.
        assert_eq!(paths(d.poll(t0 + ms(5000))), vec![p("mid"), p("slow")]);
    }

    #[test]
    fn too_many_waiting_paths_are_dropped_for_a_scan() {
        let t0 = Instant::now();
        let mut d = Debounce::new(3);
        for name in ["a", "b", "c"] {
            assert_eq!(d.on_event(p(name), ms(300), LONG, t0), Admitted::Waiting);
        }
        // The same path again takes no more room.
        assert_eq!(
            d.on_event(p("a"), ms(300), LONG, t0 + ms(1)),
            Admitted::Waiting
        );
        assert_eq!(d.on_event(p("d"), ms(300), LONG, t0), Admitted::Overflowed);
        assert_eq!(d.next_deadline(), None);
        assert!(paths(d.poll(t0 + ms(1000))).is_empty());
        // It takes events again after.
        assert_eq!(d.on_event(p("e"), ms(300), LONG, t0), Admitted::Waiting);
        assert_eq!(paths(d.poll(t0 + ms(300))), vec![p("e")]);
    }
}
