//! The holder's side of GETCHUNK. A 70-byte GETCHUNK buys a 64 KB multicast CHUNK, so a holder
//! answers each chunk at most once per `MIN_CHUNK_INTERVAL`; and it stays silent only for a
//! CHUNK that carries the bytes it recorded, so a host that answers first with junk cannot
//! silence the real holders.

use std::hash::Hash;
use std::time::{Duration, Instant};

use super::lru::LruMap;

/// At most one CHUNK per chunk per this interval from this holder.
pub const MIN_CHUNK_INTERVAL: Duration = Duration::from_secs(1);
/// Bodies hashed per scheduled reply: beyond this a stream of right-sized junk costs no more CPU
/// (the holder then simply answers; the rate limit bounds what that costs).
const MAX_HASHES_PER_REPLY: u32 = 4;

/// When this holder last sent a CHUNK for each chunk (the most recent ones: a bounded map).
#[derive(Debug)]
pub struct ReplyLimit<K> {
    sent: LruMap<K, Instant>,
    interval: Duration,
}

impl<K: Hash + Eq + Clone> ReplyLimit<K> {
    pub fn new(capacity: usize, interval: Duration) -> ReplyLimit<K> {
        ReplyLimit {
            sent: LruMap::new(capacity),
            interval,
        }
    }

    /// Whether a CHUNK for `key` may be sent at `now`.
    pub fn allows(&self, key: &K, now: Instant) -> bool {
        self.sent
            .get(key)
            .is_none_or(|t| now.saturating_duration_since(*t) >= self.interval)
    }

    /// The earliest instant a CHUNK for `key` may be sent (None: now).
    pub fn next_allowed(&self, key: &K) -> Option<Instant> {
        self.sent.get(key).map(|t| *t + self.interval)
    }

    /// Takes the slot for a CHUNK sent at `now`: false (and nothing recorded) if it is too soon.
    pub fn take(&mut self, key: &K, now: Instant) -> bool {
        if !self.allows(key, now) {
            return false;
        }
        self.sent.insert(key.clone(), now);
        true
    }
}

/// A CHUNK reply this holder has scheduled, and whether another holder's good copy was heard
/// while it waited (then it stays silent).
#[derive(Clone, Debug, Default)]
pub struct PendingReply {
    /// Length and SHA-256 of the copy this holder recorded; unknown until the catalog answered.
    expect: Option<(u64, String)>,
    hashes: u32,
    good_copy_heard: bool,
}

impl PendingReply {
    pub fn expect(&mut self, len: u64, hash: String) {
        self.expect = Some((len, hash));
    }

    /// A CHUNK of `len` bytes heard for this chunk on MDR: whether to hash its body to see if
    /// it is a good copy (then hand the hash to `hashed`). Only a body of the recorded length
    /// is worth it, and only a few per reply.
    pub fn wants_hash(&mut self, len: u64) -> bool {
        let Some((expected, _)) = &self.expect else {
            return false;
        };
        if self.good_copy_heard || len != *expected || self.hashes >= MAX_HASHES_PER_REPLY {
            return false;
        }
        self.hashes += 1;
        true
    }

    /// The hash of a body `wants_hash` asked for: a good copy silences this holder.
    pub fn hashed(&mut self, hash: &str) {
        if self.expect.as_ref().is_some_and(|(_, h)| h == hash) {
            self.good_copy_heard = true;
        }
    }

    /// 2.0: another holder delivers the chunk over TCP (it said so with a body-less CHUNK).
    pub fn silence(&mut self) {
        self.good_copy_heard = true;
    }

    pub fn suppressed(&self) -> bool {
        self.good_copy_heard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sha256_hex;

    fn heard(reply: &mut PendingReply, body: &[u8]) {
        if reply.wants_hash(body.len() as u64) {
            reply.hashed(&sha256_hex(body));
        }
    }

    #[test]
    fn one_chunk_per_second_per_chunk() {
        let mut limit = ReplyLimit::new(16, MIN_CHUNK_INTERVAL);
        let t = Instant::now();
        assert_eq!(limit.next_allowed(&"a"), None);
        assert!(limit.take(&"a", t));
        assert_eq!(limit.next_allowed(&"a"), Some(t + MIN_CHUNK_INTERVAL));
        assert!(!limit.allows(&"a", t + Duration::from_millis(999)));
        assert!(!limit.take(&"a", t + Duration::from_millis(500)));
        assert!(
            limit.take(&"b", t + Duration::from_millis(500)),
            "per chunk"
        );
        // A refused take does not push the next slot back.
        assert!(limit.take(&"a", t + Duration::from_secs(1)));
        // Under a flood of 2,000 GETCHUNKs over 2 s, at most 2 replies.
        let mut limit = ReplyLimit::new(16, MIN_CHUNK_INTERVAL);
        let sent = (0..2000)
            .filter(|i| limit.take(&"c", t + Duration::from_millis(*i)))
            .count();
        assert_eq!(sent, 2);
    }

    #[test]
    fn the_limit_survives_a_flood_of_other_chunks() {
        let mut limit = ReplyLimit::new(4, MIN_CHUNK_INTERVAL);
        let t = Instant::now();
        assert!(limit.take(&0u32, t));
        for k in 1..3u32 {
            assert!(limit.take(&k, t));
        }
        assert!(!limit.allows(&0, t), "still remembered");
        for k in 3..100u32 {
            assert!(limit.take(&k, t), "new chunks keep being recorded");
        }
        assert!(!limit.allows(&99, t));
    }

    #[test]
    fn only_a_good_copy_silences_the_holder() {
        let body = vec![7u8; 1000];
        let mut reply = PendingReply::default();
        heard(&mut reply, &body);
        assert!(!reply.suppressed(), "nothing to compare with yet");
        reply.expect(1000, sha256_hex(&body));
        heard(&mut reply, b"0123456789");
        assert!(!reply.suppressed(), "wrong length");
        let mut forged = body.clone();
        forged[0] = 8;
        heard(&mut reply, &forged);
        assert!(!reply.suppressed(), "right length, wrong bytes");
        heard(&mut reply, &body);
        assert!(reply.suppressed());
    }

    #[test]
    fn junk_of_the_right_length_is_hashed_only_a_few_times() {
        let body = vec![7u8; 100];
        let mut reply = PendingReply::default();
        reply.expect(100, sha256_hex(&body));
        for _ in 0..1000 {
            heard(&mut reply, &[0u8; 100]);
        }
        assert_eq!(reply.hashes, MAX_HASHES_PER_REPLY);
        heard(&mut reply, &body);
        assert!(
            !reply.suppressed(),
            "past the budget the holder answers anyway"
        );
    }
}
