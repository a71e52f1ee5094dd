//! What the engine's parts share: the timers they arm, the messages and driver work they queue,
//! the counters of what was sent or dropped, and the seeded randomness of their waits. The
//! facade (`peer::Peer`) drains these through `poll_transmit`, `poll_action`, `poll_timeout`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::protocol::{ChunkId, FileId, Message, PeerId, Rd};

/// The random wait before STORED, CHUNK and a re-backup: uniform in 0..=400 ms.
pub const MAX_REPLY_DELAY: Duration = Duration::from_millis(400);
/// Chunks remembered by each "seen lately" map: the least recently written entry makes room,
/// so a flood never stops the recording.
pub const MAX_SEEN_ENTRIES: usize = 8192;

/// Work for the driver: disk, catalog, and the jobs waiting for replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Store this chunk if this peer may (not a chunk of its own file, not held already, fits
    /// the quota), then report with `stored`. `write` false (2.0: enough peers stored it
    /// meanwhile): only say whether it is held already, write nothing.
    Store {
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        sender: PeerId,
        write: bool,
    },
    /// Record these peers as holders of the chunk (STOREDs heard).
    RecordHolders { chunk: ChunkId, peers: Vec<PeerId> },
    /// A chunk written after its file's DELETE was heard: remove it, no STORED is sent.
    DropHosted { chunk: ChunkId },
    /// A GETCHUNK: report with `hosted` whether this peer hosts the chunk (length, hash).
    LookupHosted { chunk: ChunkId },
    /// Time to answer a GETCHUNK: read the hosted chunk (checked) and hand it to `serve`.
    ReadHosted { chunk: ChunkId },
    /// DELETE heard: delete every hosted chunk of the file, then report with `file_deleted`
    /// (PUTCHUNKs of the file are not stored meanwhile: the deletion could overtake the write).
    DeleteFile { file_id: FileId, sender: PeerId },
    /// REMOVED heard: remove `peer` from the chunk's holders, then report with `removed`.
    RemoveHolder { chunk: ChunkId, peer: PeerId },
    /// No PUTCHUNK was seen for a hosted chunk below its RD: read it and its holders and
    /// hand them to `rebackup`.
    ReadForRebackup { chunk: ChunkId, desired_rd: u8 },
    /// A chunk of our own fell below its desired RD: the home peer's repair should look.
    Repair,
    /// The bytes of a chunk being backed up, for a resend: hand them to `resend_body`.
    ReadBody { chunk: ChunkId },
    /// Room for `n` more chunks in a job's window.
    Credit { job: JobId, n: usize },
    /// A chunk backup ended.
    BackedUp {
        owners: Vec<Owner>,
        chunk: ChunkId,
        outcome: BackupOutcome,
    },
    /// A chunk fetch ended: the body has the length and hash asked for, or None (gave up).
    Fetched {
        jobs: Vec<JobId>,
        chunk: ChunkId,
        body: Option<Vec<u8>>,
        sends: u32,
    },
    /// Every DELETE of these files was sent: they are no longer pending.
    DeletesSent { file_ids: Vec<FileId> },
    /// A PUTCHUNK with our id: if the chunk is not ours, another peer uses our id.
    CheckOwnId { chunk: ChunkId },
    /// Every chunk given to `announce` was announced.
    Announced,
    /// 2.0: pull a chunk we are fetching from the holder at `from` (its TCP listener), which
    /// said it has it; a CHUNK that comes back goes to `handle_tcp`.
    Pull { from: SocketAddr, chunk: ChunkId },
    /// 2.0: a peer acknowledged the DELETE of one of our files.
    DeleteAcked { file_id: FileId, peer: PeerId },
    /// 2.0: a peer is back (HELLO, or heard after a silence): look up the DELETEs it has not
    /// acknowledged and hand them to `redelete`.
    PeerBack { peer: PeerId },
    /// 2.0: look at a hosted chunk's RD again (report with `removed`, as after a REMOVED).
    Recheck { chunk: ChunkId },
    /// 2.0: a peer announced its store's incarnation (new to us, or changed): record it; if it
    /// changed, the peer holds nothing it held (`verify`).
    Incarnation { peer: PeerId, inc: u64 },
    /// 2.0: a verification round: pick chunks of ours to prove, hand them to `verify_samples`.
    SampleHolders,
    /// 2.0: a home asked us to prove we hold `chunk`: read it (checked), hand it to `proof`.
    ReadForProof { chunk: ChunkId, nonce: u128 },
    /// 2.0: `peer` failed to prove it holds a chunk of ours: it is no longer counted for it.
    NotHolder {
        peer: PeerId,
        chunk: ChunkId,
        failure: super::verify::Failure,
    },
}

/// Counters of what the engine dropped or sent, for `state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// PUTCHUNKs dropped because `MAX_CONCURRENT_STORES` were being stored.
    pub busy_drops: u64,
    /// GETCHUNKs dropped because `MAX_PENDING_REPLIES` were pending.
    pub reply_drops: u64,
    pub putchunks_sent: u64,
    /// Of those, the resends (a chunk short of STOREDs after its wait: datagrams lost, or
    /// holders too slow to answer).
    pub putchunks_resent: u64,
    pub chunks_sent: u64,
    pub getchunks_sent: u64,
}

/// A timer: what to look at when it fires. Stale ones (their state moved on) do nothing.
#[derive(Clone, Debug)]
pub(super) enum Timer {
    Stored(ChunkId),
    Reply(ChunkId),
    Rebackup(ChunkId),
    Backup(ChunkId),
    Fetch(ChunkId),
    Resend(u64),
    Announce,
    /// 2.0: a PUTCHUNK's random wait is over: store it unless RD peers did.
    Store(ChunkId),
    Hello,
    Recheck(ChunkId),
    /// The pace has a token for the next chunk waiting in `pacing`.
    Pace,
}

/// An armed timer's key: its instant, and a sequence number that tells apart timers armed for
/// the same instant (a part keeps it to know whether a timer that fires is still its own).
pub(super) type TimerKey = (Instant, u64);

/// The queues and timers every part writes to.
pub(super) struct Out {
    pub(super) rng: StdRng,
    timers: BTreeMap<TimerKey, Timer>,
    next_timer: u64,
    pub(super) transmits: VecDeque<Message>,
    pub(super) actions: VecDeque<Action>,
    pub(super) counters: Counters,
}

impl Out {
    pub(super) fn new(seed: u64) -> Out {
        Out {
            rng: StdRng::seed_from_u64(seed),
            timers: BTreeMap::new(),
            next_timer: 0,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// The random wait before STORED, CHUNK and a re-backup.
    pub(super) fn reply_delay(&mut self) -> Duration {
        Duration::from_millis(self.rng.gen_range(0..=MAX_REPLY_DELAY.as_millis() as u64))
    }

    pub(super) fn arm(&mut self, at: Instant, timer: Timer) -> TimerKey {
        let key = (at, self.next_timer);
        self.next_timer += 1;
        self.timers.insert(key, timer);
        key
    }

    pub(super) fn disarm(&mut self, key: Option<TimerKey>) {
        if let Some(key) = key {
            self.timers.remove(&key);
        }
    }

    /// The earliest armed timer's instant.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// The earliest timer due at `now`, disarmed.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(TimerKey, Timer)> {
        let entry = self.timers.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let key = *entry.key();
        Some((key, entry.remove()))
    }

    pub(super) fn timer_count(&self) -> usize {
        self.timers.len()
    }
}

// ---- what the parts and the daemon share: jobs, and how a chunk backup ended ----------------

/// A job (one file's backup or restore) that offers chunks as the engine gives it room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// Who waits for a chunk backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Job(JobId),
    /// This peer, restoring a chunk's RD after a REMOVED (SPEC §2 "Space reclaim").
    Rebackup,
}

/// How a chunk backup ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupOutcome {
    pub reached: bool,
    pub sends: u32,
    pub recovered_by_resend: bool,
    /// Distinct peers known to hold the chunk (ourselves included for a re-backup).
    pub holders: Vec<PeerId>,
    /// Why it stopped short: its bytes changed on disk, or its file was deleted meanwhile.
    pub stopped: Option<Stopped>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    Changed,
    Deleted,
    Cancelled,
}
