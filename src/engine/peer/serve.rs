//! The holder's side of GETCHUNK. A 70-byte GETCHUNK buys a 64 KB multicast CHUNK, so what a
//! holder sends on MDR is bounded three ways: per chunk (answered again only after a wait that
//! doubles, as a restorer's own resends do), per source address and in total (bytes per second,
//! `MdrBudget`). And a holder stays silent only for a CHUNK that carries the bytes it recorded,
//! so a host that answers first with junk cannot silence the real holders. `Serve` is the part
//! of `peer::Peer` that owns the replies being prepared.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::out::{Action, Timer, TimerKey, MAX_SEEN_ENTRIES};
use super::Peer;
use crate::engine::lru::LruMap;
use crate::protocol::{sha256_hex, ChunkId, Message, MessageKind, Version};

/// A chunk is answered at most once per this interval, and the interval doubles with each
/// answer that follows closely (1, 2, 4, ... s: a restorer resends at 0, 1, 3, 7 and 15 s, so
/// its every resend can still be answered), up to `MAX_CHUNK_INTERVAL`.
pub const MIN_CHUNK_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_CHUNK_INTERVAL: Duration = Duration::from_secs(32);
/// A chunk not answered for this long starts again at `MIN_CHUNK_INTERVAL`.
const INTERVAL_RESET_AFTER: Duration = Duration::from_secs(64);
/// Bodies hashed per scheduled reply: beyond this a stream of right-sized junk costs no more CPU
/// (the holder then simply answers; the rate limit bounds what that costs).
const MAX_HASHES_PER_REPLY: u32 = 4;

/// Bytes per second of CHUNK bodies a holder sends on MDR in answer to GETCHUNKs, in total (about
/// a gigabit link) and to any one source address (a GETCHUNK's source proves nothing, so the
/// total is what bounds a LAN host that forges many). A 1.0 restore from two holders or more is
/// not slowed (133 MB/s from three holders on loopback); a 2.0 restore pulls over TCP and costs
/// nothing here.
pub const MDR_BYTES_PER_SEC: u64 = 96 << 20;
pub const MDR_BYTES_PER_SEC_PER_SOURCE: u64 = 64 << 20;
/// What each bucket may spend at once after a quiet spell.
pub const MDR_BURST: u64 = 2 << 20;
/// Source addresses whose budget is remembered (a flood of forged ones evicts the oldest; the
/// total still holds).
const MAX_SOURCES: usize = 1024;

/// When this holder last sent a CHUNK for each chunk, and how many closely followed answers
/// made its interval grow (the most recent chunks: a bounded map).
#[derive(Debug)]
pub struct ReplyLimit<K> {
    sent: LruMap<K, (Instant, u32)>,
    interval: Duration,
    max: Duration,
}

impl<K: Hash + Eq + Clone> ReplyLimit<K> {
    /// At most one CHUNK per chunk per `interval`, doubling up to `max` while answers follow
    /// closely.
    pub fn new(capacity: usize, interval: Duration, max: Duration) -> ReplyLimit<K> {
        ReplyLimit {
            sent: LruMap::new(capacity),
            interval,
            max: max.max(interval),
        }
    }

    fn wait_after(&self, streak: u32) -> Duration {
        self.interval
            .saturating_mul(1 << streak.min(16))
            .min(self.max)
    }

    /// Whether a CHUNK for `key` may be sent at `now`.
    pub fn allows(&self, key: &K, now: Instant) -> bool {
        self.next_allowed(key).is_none_or(|t| now >= t)
    }

    /// The earliest instant a CHUNK for `key` may be sent (None: now).
    pub fn next_allowed(&self, key: &K) -> Option<Instant> {
        self.sent
            .get(key)
            .map(|(t, streak)| *t + self.wait_after(*streak))
    }

    /// Takes the slot for a CHUNK sent at `now`: false (and nothing recorded) if it is too soon.
    pub fn take(&mut self, key: &K, now: Instant) -> bool {
        if !self.allows(key, now) {
            return false;
        }
        let streak = match self.sent.get(key) {
            Some((t, streak)) if now.saturating_duration_since(*t) < INTERVAL_RESET_AFTER => {
                streak + 1
            }
            _ => 0,
        };
        self.sent.insert(key.clone(), (now, streak));
        true
    }
}

/// A token bucket: `rate` bytes per second, at most `depth` saved up.
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(depth: u64, now: Instant) -> Bucket {
        Bucket {
            tokens: depth as f64,
            at: now,
        }
    }

    fn refill(&mut self, rate: u64, depth: u64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate as f64).min(depth as f64);
        self.at = self.at.max(now);
    }

    /// When `n` bytes will be there (now if they are).
    fn ready_at(&self, n: u64, rate: u64) -> Instant {
        let missing = n as f64 - self.tokens;
        if missing <= 0.0 {
            return self.at;
        }
        self.at + Duration::from_secs_f64(missing / rate as f64)
    }
}

/// Bytes of CHUNK bodies sent on MDR in answer to GETCHUNKs: a bucket for all, and one per
/// source address.
#[derive(Debug)]
pub struct MdrBudget {
    rate: u64,
    per_source: u64,
    depth: u64,
    total: Option<Bucket>,
    sources: LruMap<IpAddr, Bucket>,
}

impl Default for MdrBudget {
    fn default() -> MdrBudget {
        MdrBudget::new(MDR_BYTES_PER_SEC, MDR_BYTES_PER_SEC_PER_SOURCE, MDR_BURST)
    }
}

impl MdrBudget {
    pub fn new(rate: u64, per_source: u64, depth: u64) -> MdrBudget {
        MdrBudget {
            rate: rate.max(1),
            per_source: per_source.max(1),
            // A whole chunk must fit, or a reply would wait for ever.
            depth: depth.max(crate::protocol::CHUNK_SIZE as u64),
            total: None,
            sources: LruMap::new(MAX_SOURCES),
        }
    }

    /// Spends `n` bytes for a reply to `source` at `now`, or says when to try again (nothing
    /// spent). A reply with no known source is charged to the total only.
    pub fn spend(&mut self, source: Option<IpAddr>, n: u64, now: Instant) -> Result<(), Instant> {
        let (rate, per_source, depth) = (self.rate, self.per_source, self.depth);
        let n = n.min(depth);
        let mut total = self
            .total
            .take()
            .unwrap_or_else(|| Bucket::full(depth, now));
        total.refill(rate, depth, now);
        let mut one = source.map(|ip| {
            let mut b =
                (self.sources.get(&ip).cloned()).unwrap_or_else(|| Bucket::full(depth, now));
            b.refill(per_source, depth, now);
            (ip, b)
        });
        let ready = one.as_ref().map_or(total.ready_at(n, rate), |(_, b)| {
            b.ready_at(n, per_source).max(total.ready_at(n, rate))
        });
        let result = if ready <= now {
            total.tokens -= n as f64;
            if let Some((_, b)) = &mut one {
                b.tokens -= n as f64;
            }
            Ok(())
        } else {
            Err(ready)
        };
        self.total = Some(total);
        if let Some((ip, b)) = one {
            self.sources.insert(ip, b);
        }
        result
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

    /// The length of the body to be sent (a whole chunk while unknown).
    pub fn expected_len(&self) -> u64 {
        self.expect
            .as_ref()
            .map_or(crate::protocol::CHUNK_SIZE as u64, |(len, _)| *len)
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

// ---- the holder side of GETCHUNK (a part of `peer::Peer`) --------------------------------------

/// GETCHUNKs being answered at once; beyond this one is dropped (the requester resends). A
/// pending reply holds no body (it is read when sent), and each lasts its random wait: this
/// many let a holder keep up with restores' windows (up to 512 chunks in flight each).
pub const MAX_PENDING_REPLIES: usize = 2048;

enum ReplyState {
    /// Waiting for the driver to say whether we host the chunk.
    Lookup,
    Waiting {
        timer: TimerKey,
    },
    /// The driver is reading it.
    Reading,
}

/// A CHUNK reply this peer is preparing.
struct Reply {
    state: ReplyState,
    pending: PendingReply,
    /// 2.0: the GETCHUNK asked where to pull the chunk: the answer is a body-less CHUNK that
    /// names our TCP port, and the requester connects to us.
    pull: bool,
    /// The address of the first GETCHUNK (a later one never changes it): charged for the reply
    /// in the MDR budget.
    source: Option<IpAddr>,
}

/// The replies this holder prepares, and the bounds on what it sends.
pub(super) struct Serve {
    replying: BTreeMap<ChunkId, Reply>,
    chunk_sent: ReplyLimit<ChunkId>,
    /// 2.0: when we last said where to pull each chunk (a body-less CHUNK, once a second).
    pull_said: ReplyLimit<ChunkId>,
    /// Bytes per second of CHUNK bodies on MDR, in total and per source.
    mdr_budget: MdrBudget,
}

impl Serve {
    pub(super) fn new() -> Serve {
        Serve {
            replying: BTreeMap::new(),
            chunk_sent: ReplyLimit::new(MAX_SEEN_ENTRIES, MIN_CHUNK_INTERVAL, MAX_CHUNK_INTERVAL),
            pull_said: ReplyLimit::new(MAX_SEEN_ENTRIES, MIN_CHUNK_INTERVAL, MIN_CHUNK_INTERVAL),
            mdr_budget: MdrBudget::default(),
        }
    }

    /// Replies being prepared.
    pub(super) fn replying(&self) -> usize {
        self.replying.len()
    }

    /// 2.0: a holder said the chunk can be pulled from it: that silences our reply to a
    /// GETCHUNK that asked where to pull (not one to a GETCHUNK without the line).
    pub(super) fn silence_pull_reply(&mut self, chunk: &ChunkId) {
        if let Some(r) = self.replying.get_mut(chunk).filter(|r| r.pull) {
            r.pending.silence();
        }
    }

    /// A CHUNK heard for a reply we prepare: its SHA-256 when the reply needs it to know
    /// whether a good copy was sent (only a good copy silences it).
    pub(super) fn hash_for_reply(&mut self, chunk: &ChunkId, body: &[u8]) -> Option<String> {
        let r = self.replying.get_mut(chunk)?;
        if !r.pending.wants_hash(body.len() as u64) {
            return None;
        }
        let hash = sha256_hex(body);
        r.pending.hashed(&hash);
        Some(hash)
    }
}

impl Peer {
    pub(super) fn on_getchunk(&mut self, chunk: ChunkId, pull: bool, source: Option<IpAddr>) {
        if self.serve.replying.contains_key(&chunk) {
            // The reply keeps what the first GETCHUNK asked: a later one (forged, or replayed
            // from elsewhere) cannot turn it into something else or charge it to another.
            return;
        }
        if self.serve.replying.len() >= MAX_PENDING_REPLIES {
            self.out.counters.reply_drops += 1;
            return;
        }
        self.serve.replying.insert(
            chunk.clone(),
            Reply {
                state: ReplyState::Lookup,
                pending: PendingReply::default(),
                pull,
                source,
            },
        );
        self.out.actions.push_back(Action::LookupHosted { chunk });
    }

    /// Whether this peer hosts a chunk a GETCHUNK asked for: its recorded length and hash. The
    /// reply waits a random delay, and (a body) no less than its interval after our last CHUNK
    /// of it.
    pub fn hosted(&mut self, chunk: &ChunkId, info: Option<(u64, String)>, now: Instant) {
        let Some((len, hash)) = info else {
            self.serve.replying.remove(chunk);
            return;
        };
        let delay = self.out.reply_delay();
        let Some(pull) = self.serve.replying.get(chunk).map(|r| r.pull) else {
            return;
        };
        let limit = if pull {
            &self.serve.pull_said
        } else {
            &self.serve.chunk_sent
        };
        let at = (limit.next_allowed(chunk)).map_or(now + delay, |n| n.max(now + delay));
        let timer = self.out.arm(at, Timer::Reply(chunk.clone()));
        if let Some(r) = self.serve.replying.get_mut(chunk) {
            r.pending.expect(len, hash);
            r.state = ReplyState::Waiting { timer };
        }
    }

    /// The hosted chunk read for a reply (None: unreadable or damaged). `chunk` carries the
    /// fileId text exactly as the home peer wrote it.
    pub fn serve(&mut self, chunk: ChunkId, body: Option<Vec<u8>>, now: Instant) {
        let Some(reply) = self.serve.replying.remove(&chunk) else {
            return;
        };
        let Some(body) = body else { return };
        if reply.pending.suppressed() || !self.serve.chunk_sent.take(&chunk, now) {
            return; // another holder answered first with the right bytes, or too soon
        }
        self.send(MessageKind::Chunk { chunk, body });
    }

    /// 2.0: says on MDR, with a body-less CHUNK naming our TCP port, that the chunk can be
    /// pulled from us (once a second per chunk at most); the other holders then stay quiet.
    pub(super) fn say_pull(&mut self, chunk: ChunkId, now: Instant) {
        let Some(port) = self.tcp_port else { return };
        if !self.serve.pull_said.take(&chunk, now) {
            return;
        }
        let kind = MessageKind::Chunk {
            chunk,
            body: Vec::new(),
        };
        let mut msg = Message::new(self.id, kind);
        msg.version = Version::V2_0;
        msg.extra_lines.push(format!("TCP {port}"));
        self.out.transmits.push_back(msg);
    }

    /// A GETCHUNK's reply is due (`key`: the timer armed for it, if still current): silenced,
    /// a 2.0 "pull it from us", or the body read, within the MDR budget.
    pub(super) fn reply_timer(&mut self, chunk: ChunkId, key: TimerKey, now: Instant) {
        let Some(r) = self.serve.replying.get_mut(&chunk) else {
            return;
        };
        if !matches!(r.state, ReplyState::Waiting { timer } if timer == key) {
            return;
        }
        if r.pending.suppressed() {
            self.serve.replying.remove(&chunk);
        } else if r.pull {
            // 2.0: no body to read; the requester pulls it from our listener.
            self.serve.replying.remove(&chunk);
            self.say_pull(chunk, now);
        } else {
            let (source, len) = (r.source, r.pending.expected_len());
            match self.serve.mdr_budget.spend(source, len, now) {
                Ok(()) => {
                    r.state = ReplyState::Reading;
                    self.out.actions.push_back(Action::ReadHosted { chunk });
                }
                Err(at) => {
                    // Over the bytes per second allowed on MDR: later, not never
                    // (the number of pending replies is bounded).
                    let timer = self.out.arm(at, Timer::Reply(chunk.clone()));
                    if let Some(r) = self.serve.replying.get_mut(&chunk) {
                        r.state = ReplyState::Waiting { timer };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sha256_hex;

    pub(super) fn heard(reply: &mut PendingReply, body: &[u8]) {
        if reply.wants_hash(body.len() as u64) {
            reply.hashed(&sha256_hex(body));
        }
    }

    #[test]
    pub(super) fn one_chunk_per_second_per_chunk() {
        let mut limit = ReplyLimit::new(16, MIN_CHUNK_INTERVAL, MIN_CHUNK_INTERVAL);
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
        let mut limit = ReplyLimit::new(16, MIN_CHUNK_INTERVAL, MIN_CHUNK_INTERVAL);
        let sent = (0..2000)
            .filter(|i| limit.take(&"c", t + Duration::from_millis(*i)))
            .count();
        assert_eq!(sent, 2);
    }

    #[test]
    pub(super) fn the_limit_survives_a_flood_of_other_chunks() {
        let mut limit = ReplyLimit::new(4, MIN_CHUNK_INTERVAL, MAX_CHUNK_INTERVAL);
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
    pub(super) fn a_chunk_asked_again_and_again_waits_longer_each_time_as_a_restorer_resends() {
        let mut limit = ReplyLimit::new(16, MIN_CHUNK_INTERVAL, MAX_CHUNK_INTERVAL);
        let t = Instant::now();
        // A GETCHUNK every 100 ms for 200 s: answered at 0, 1, 3, 7, 15, 31, 63 s, then every
        // 32 s. The restorer's own resends (0, 1, 3, 7, 15 s) are each answered.
        let answered: Vec<u64> = (0..2000u64)
            .filter(|i| limit.take(&"a", t + Duration::from_millis(i * 100)))
            .map(|i| i / 10)
            .collect();
        assert_eq!(answered, vec![0, 1, 3, 7, 15, 31, 63, 95, 127, 159, 191]);
        // Left alone for INTERVAL_RESET_AFTER, the chunk is answered at once and then a second
        // later again.
        let later = t + Duration::from_secs(191) + INTERVAL_RESET_AFTER;
        assert!(limit.take(&"a", later));
        assert!(!limit.allows(&"a", later + Duration::from_millis(999)));
        assert!(limit.take(&"a", later + MIN_CHUNK_INTERVAL));
    }

    #[test]
    pub(super) fn the_mdr_budget_bounds_each_source_and_the_total() {
        const MB: u64 = 1 << 20;
        let chunk = crate::protocol::CHUNK_SIZE as u64;
        let mut budget = MdrBudget::new(4 * MB, 2 * MB, MB);
        let t = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        // Ten seconds of a source asking for a chunk every millisecond: about its rate (plus
        // the burst) is sent, never more.
        let mut sent = 0;
        let mut next = t;
        for ms in 0..10_000 {
            let now = t + Duration::from_millis(ms);
            if now < next {
                continue;
            }
            match budget.spend(Some(a), chunk, now) {
                Ok(()) => sent += chunk,
                Err(at) => {
                    assert!(at > now, "a later instant to try again");
                    next = at;
                }
            }
        }
        assert!(sent <= 10 * 2 * MB + MB, "{sent}");
        assert!(
            sent >= 10 * 2 * MB - MB,
            "the source still gets its rate: {sent}"
        );
        // Two sources at once share the total: 4 MB/s in all, 2 each.
        let mut budget = MdrBudget::new(4 * MB, 3 * MB, MB);
        let mut per = [0u64; 3];
        let c: IpAddr = "127.0.0.4".parse().unwrap();
        for ms in 0..10_000 {
            let now = t + Duration::from_millis(ms);
            for (i, ip) in [a, b, c].into_iter().enumerate() {
                if budget.spend(Some(ip), chunk, now).is_ok() {
                    per[i] += chunk;
                }
            }
        }
        let all: u64 = per.iter().sum();
        assert!(all <= 10 * 4 * MB + MB, "{per:?}");
        assert!(per.iter().all(|p| *p <= 10 * 3 * MB + MB), "{per:?}");
        // A refused spend took nothing: after a pause the full burst is there again.
        let later = t + Duration::from_secs(60);
        assert!(budget.spend(Some(a), MB, later).is_ok());
        assert!(
            budget.spend(None, chunk, later).is_err(),
            "the total is spent"
        );
    }

    #[test]
    pub(super) fn only_a_good_copy_silences_the_holder() {
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
    pub(super) fn junk_of_the_right_length_is_hashed_only_a_few_times() {
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
