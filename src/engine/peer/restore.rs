//! Restoring one chunk: GETCHUNK, retransmitted on a doubling timeout, until a CHUNK with the
//! right bytes arrives; `Fetches` is the part of `peer::Peer` that owns our fetches (the CHUNK
//! each expects, 2.0 pulls from holders that say they have it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::jobs::JobId;
use super::out::{self, Timer, TimerKey};
use super::Peer;
use crate::engine::retry::{Retry, Step};
use crate::protocol::{sha256_hex, ChunkId, Message, MessageKind, Version};

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

// ---- our fetches: GETCHUNK, pulls, the CHUNK taken (a part of `peer::Peer`) -------------------

/// 2.0: the first GETCHUNKs of a chunk carry `PULL`; the later ones do not, so a holder we
/// cannot reach over TCP (or a 1.0 peer that drops 2.0 messages) answers on MDR.
pub const TCP_GETCHUNK_SENDS: u32 = 2;
/// 2.0: connections a fetch opens to holders that said they have its chunk (each holder's
/// body-less CHUNK is one); beyond this it waits for the multicast answers. Bounds what a forged
/// announcement can make us do: one short request to the address it came from.
pub const MAX_PULLS_PER_FETCH: u32 = 4;
/// 2.0: the header line of a GETCHUNK that asks holders to say where the chunk can be pulled.
pub const PULL_LINE: &str = "PULL";

/// The CHUNK a fetch takes.
#[derive(Clone)]
pub enum Expect {
    /// The bytes recorded at backup: this length and SHA-256.
    Bytes { len: u64, hash: String },
    /// Any body that opens under this key as its chunk, asked at most twice (`ChunkFetch::probe`):
    /// a catalog snapshot, whose hashes were lost with the catalog, found by `peerstash recover`.
    Opens(std::sync::Arc<crate::protocol::seal::FileKey>),
}

impl Expect {
    pub fn bytes(len: u64, hash: impl Into<String>) -> Expect {
        Expect::Bytes {
            len,
            hash: hash.into(),
        }
    }

    /// Whether a fetch expecting `self` can share a CHUNK with one expecting `other`.
    pub(super) fn same(&self, other: &Expect) -> bool {
        match (self, other) {
            (Expect::Bytes { len, hash }, Expect::Bytes { len: l, hash: h }) => {
                len == l && hash == h
            }
            (Expect::Opens(a), Expect::Opens(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Whether `body` (SHA-256 `hash` when known) is chunk `no` as expected.
    pub(super) fn takes(
        &self,
        no: crate::protocol::ChunkNo,
        body: &[u8],
        hash: Option<String>,
    ) -> bool {
        match self {
            Expect::Bytes { len, hash: want } => {
                body.len() as u64 == *len && hash.unwrap_or_else(|| sha256_hex(body)) == *want
            }
            Expect::Opens(key) => key.open(no, body).is_ok(),
        }
    }

    /// The length expected, when it is known.
    pub(super) fn len(&self) -> Option<u64> {
        match self {
            Expect::Bytes { len, .. } => Some(*len),
            Expect::Opens(_) => None,
        }
    }
}

/// A chunk this peer is fetching.
struct Fetching {
    jobs: Vec<JobId>,
    expect: Expect,
    fetch: ChunkFetch,
    timer: Option<TimerKey>,
    /// 2.0: connections opened to holders for this chunk (at most `MAX_PULLS_PER_FETCH`).
    pulls: u32,
}

/// The chunks this peer fetches.
pub(super) struct Fetches {
    fetching: BTreeMap<ChunkId, Fetching>,
}

impl Fetches {
    pub(super) fn new() -> Fetches {
        Fetches {
            fetching: BTreeMap::new(),
        }
    }

    /// Chunks being fetched.
    pub(super) fn fetching(&self) -> usize {
        self.fetching.len()
    }

    /// Whether a fetch of the chunk expects an empty body (a body-less CHUNK may end it).
    pub(super) fn expects_empty(&self, chunk: &ChunkId) -> bool {
        self.fetching
            .get(chunk)
            .is_some_and(|f| f.expect.len() == Some(0))
    }
}

impl Peer {
    /// Fetches one chunk of a restore job: GETCHUNK on the engine's schedule until a CHUNK as
    /// `expect`ed arrives.
    pub fn fetch_chunk(&mut self, job: JobId, chunk: ChunkId, expect: Expect, now: Instant) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.granted = j.granted.saturating_sub(1);
            j.in_flight += 1;
            j.first_round += 1;
        }
        let fetch = match expect {
            Expect::Bytes { .. } => ChunkFetch::default(),
            Expect::Opens(_) => ChunkFetch::probe(),
        };
        if let Some(f) = self.restore.fetching.get_mut(&chunk) {
            if f.expect.same(&expect) {
                f.jobs.push(job);
            } else {
                // The same chunk expected with other bytes: no CHUNK can satisfy both, and
                // the fetch already running keeps its own.
                let f = Fetching {
                    jobs: vec![job],
                    expect,
                    fetch,
                    timer: None,
                    pulls: 0,
                };
                self.end_fetch(chunk, f, None);
            }
            return;
        }
        self.restore.fetching.insert(
            chunk.clone(),
            Fetching {
                jobs: vec![job],
                expect,
                fetch,
                timer: None,
                pulls: 0,
            },
        );
        self.fire_fetch(&chunk, now);
    }

    pub(super) fn fire_fetch(&mut self, chunk: &ChunkId, now: Instant) {
        let Some(f) = self.restore.fetching.get_mut(chunk) else {
            return;
        };
        match f.fetch.poll(now) {
            Action::SendGetChunk => {
                let kind = MessageKind::GetChunk {
                    chunk: chunk.clone(),
                };
                if self.enhanced && self.tcp_port.is_some() && f.fetch.sends() <= TCP_GETCHUNK_SENDS
                {
                    let mut msg = Message::new(self.id, kind);
                    msg.version = Version::V2_0;
                    msg.extra_lines.push(PULL_LINE.into());
                    self.out.counters.getchunks_sent += 1;
                    self.out.transmits.push_back(msg);
                } else {
                    self.send(kind);
                }
                // Arms the wait for the CHUNK.
                self.fire_fetch(chunk, now);
            }
            Action::WaitUntil(t) => {
                let old = f.timer.take();
                self.out.disarm(old);
                let timer = self.out.arm(t, Timer::Fetch(chunk.clone()));
                if let Some(f) = self.restore.fetching.get_mut(chunk) {
                    f.timer = Some(timer);
                }
            }
            Action::GaveUp => {
                if let Some(f) = self.restore.fetching.remove(chunk) {
                    self.end_fetch(chunk.clone(), f, None);
                }
            }
        }
    }

    fn end_fetch(&mut self, chunk: ChunkId, f: Fetching, body: Option<Vec<u8>>) {
        let sends = f.fetch.sends();
        for job in &f.jobs {
            if let Some(j) = self.jobs.get_mut(job) {
                j.in_flight = j.in_flight.saturating_sub(1);
                j.first_round = j.first_round.saturating_sub(1);
                if let (Some(w), true) = (j.window.as_mut(), body.is_some()) {
                    w.on_done(sends, true, sends > 1);
                }
            }
            self.grant(*job);
        }
        self.out.actions.push_back(out::Action::Fetched {
            jobs: f.jobs,
            chunk,
            body,
            sends,
        });
    }

    /// A CHUNK's body, for a fetch of ours: it ends the fetch if it has the length and hash
    /// asked for. `hash`: its SHA-256 if known already.
    pub(super) fn chunk_for_fetch(&mut self, chunk: &ChunkId, body: Vec<u8>, hash: Option<String>) {
        let len = body.len() as u64;
        if self
            .restore
            .fetching
            .get(chunk)
            .is_none_or(|f| f.expect.len().is_some_and(|l| l != len))
        {
            return;
        }
        if (self.restore.fetching.get(chunk))
            .is_some_and(|f| f.expect.takes(chunk.chunk_no, &body, hash))
        {
            if let Some(f) = self.restore.fetching.remove(chunk) {
                self.out.disarm(f.timer);
                self.end_fetch(chunk.clone(), f, Some(body));
            }
        }
    }

    /// A CHUNK delivered over TCP (2.0): it can only end a fetch of ours.
    pub fn handle_tcp(&mut self, msg: Message) {
        if let MessageKind::Chunk { chunk, body } = msg.kind {
            self.chunk_for_fetch(&chunk, body, None);
        }
    }

    /// 2.0: a holder said (with a body-less CHUNK from `from`) that a chunk we fetch can be
    /// pulled from it: we connect, at most `MAX_PULLS_PER_FETCH` times per fetch.
    pub(super) fn pull_offered(&mut self, chunk: &ChunkId, from: SocketAddr) {
        if let Some(f) = self.restore.fetching.get_mut(chunk) {
            if f.pulls < MAX_PULLS_PER_FETCH {
                f.pulls += 1;
                let chunk = chunk.clone();
                self.out
                    .actions
                    .push_back(out::Action::Pull { from, chunk });
            }
        }
    }

    /// A job ended: its fetches no other job waits for stop without a word.
    pub(super) fn end_job_fetches(&mut self, job: JobId) {
        let fetches: Vec<ChunkId> = (self.restore.fetching.iter_mut())
            .filter_map(|(c, f)| {
                f.jobs.retain(|j| *j != job);
                f.jobs.is_empty().then(|| c.clone())
            })
            .collect();
        for c in fetches {
            if let Some(f) = self.restore.fetching.remove(&c) {
                self.out.disarm(f.timer);
            }
        }
    }

    /// A fetch's wait for its CHUNK is over (`key`: the timer armed for it, if still current).
    pub(super) fn fetch_timer(&mut self, chunk: ChunkId, key: TimerKey, now: Instant) {
        let Some(f) = self.restore.fetching.get_mut(&chunk) else {
            return;
        };
        if f.timer != Some(key) {
            return;
        }
        f.timer = None;
        self.fire_fetch(&chunk, now);
    }
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
