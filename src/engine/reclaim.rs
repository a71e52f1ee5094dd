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
    fn zero_quota_drops_even_empty_chunks() {
        assert_eq!(choose_victims(vec![c(7, 0, 2, 2)], 0, 0), vec![7]);
    }
}
