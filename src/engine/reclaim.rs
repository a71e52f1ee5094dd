//! Which hosted chunks to drop when the quota is lowered: those whose perceived RD most exceeds
//! their desired RD first, so the least harm is done to the chunks' safety; and which of them
//! must be handed on to another peer before they go.

/// A hosted chunk as reclaim sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<K> {
    pub key: K,
    pub size: u64,
    pub desired_rd: u32,
    pub perceived_rd: u32,
}

/// The chunks to drop so that `used` falls to `quota` or below (all of them for quota 0).
pub fn choose_victims<K: Clone>(mut hosted: Vec<Candidate<K>>, used: u64, quota: u64) -> Vec<K> {
    // Most surplus first; among equals, larger chunks first so fewer copies are lost.
    hosted.sort_by(|a, b| {
        let surplus = |c: &Candidate<K>| i64::from(c.perceived_rd) - i64::from(c.desired_rd);
        surplus(b).cmp(&surplus(a)).then(b.size.cmp(&a.size))
    });
    let mut remaining = used;
    let mut victims = Vec::new();
    for c in hosted {
        if remaining <= quota && quota > 0 {
            break;
        }
        remaining = remaining.saturating_sub(c.size);
        victims.push(c.key);
    }
    victims
}

/// Whether a chunk to drop may be the last copy (no holder known besides this peer, which
/// counts itself): then it is handed on first (`Peer::hand_on`), and dropped once another peer
/// stored it. The others are dropped at once: their other holders re-back them up on REMOVED.
pub fn hand_on_first<K>(c: &Candidate<K>) -> bool {
    c.perceived_rd <= 1
}

/// Hand-ons that found no taker in a row before a reclaim stops trying: no peer has room, and
/// each failure costs the five sends of the backup schedule (about 31 s). Then the rest is
/// dropped at once, so a reclaim waits one round of failures, not one per chunk.
pub const HAND_ON_FAILURES: u32 = 8;

/// Whether a reclaim still hands chunks on, by the outcomes seen so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct HandOnBudget {
    failed_in_a_row: u32,
}

impl HandOnBudget {
    pub fn may_try(&self) -> bool {
        self.failed_in_a_row < HAND_ON_FAILURES
    }

    pub fn on_result(&mut self, taken: bool) {
        self.failed_in_a_row = if taken { 0 } else { self.failed_in_a_row + 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: u32, size: u64, desired: u32, perceived: u32) -> Candidate<u32> {
        Candidate {
            key,
            size,
            desired_rd: desired,
            perceived_rd: perceived,
        }
    }

    #[test]
    fn drops_most_over_replicated_first_until_under_quota() {
        let hosted = vec![
            c(1, 100, 2, 2),
            c(2, 100, 1, 3),
            c(3, 100, 2, 3),
            c(4, 100, 3, 1),
        ];
        assert_eq!(choose_victims(hosted.clone(), 400, 250), vec![2, 3]);
        assert_eq!(choose_victims(hosted.clone(), 400, 400), Vec::<u32>::new());
        assert_eq!(choose_victims(hosted, 400, 0), vec![2, 3, 1, 4]);
    }

    #[test]
    fn only_a_chunk_that_may_be_the_last_copy_is_handed_on_first() {
        assert!(hand_on_first(&c(1, 100, 1, 1)));
        assert!(hand_on_first(&c(1, 100, 2, 1)));
        assert!(hand_on_first(&c(1, 100, 2, 0)));
        assert!(!hand_on_first(&c(1, 100, 1, 2)));
        assert!(!hand_on_first(&c(1, 100, 3, 2)));
    }

    #[test]
    fn hand_ons_stop_after_a_round_of_failures_in_a_row() {
        let mut b = HandOnBudget::default();
        for _ in 0..HAND_ON_FAILURES - 1 {
            b.on_result(false);
        }
        assert!(b.may_try());
        b.on_result(true); // a taker: the count starts again
        for _ in 0..HAND_ON_FAILURES - 1 {
            b.on_result(false);
        }
        assert!(b.may_try());
        b.on_result(false);
        assert!(!b.may_try());
    }

    #[test]
    fn zero_quota_drops_even_empty_chunks() {
        assert_eq!(choose_victims(vec![c(7, 0, 2, 2)], 0, 0), vec![7]);
    }
}
