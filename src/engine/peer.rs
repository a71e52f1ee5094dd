//! One peer's side of the protocol (SPEC §2) as a single state machine, in the style of
//! quinn-proto: the driver hands it datagrams (`handle`), the results of the disk and catalog
//! work it asked for (`stored`, `hosted`, ...), the commands of running jobs (`backup_chunk`,
//! `fetch_chunk`, `send_delete`, ...) and the passing of time (`handle_timeout`); it answers with
//! messages to send (`poll_transmit`), work for the driver (`poll_action`) and the next instant
//! it wants to be woken (`poll_timeout`). Every delay, resend, suppression and window of the
//! protocol is decided here; no sockets, no tokio, no SQLite. Its random delays come from a
//! seeded generator, so a simulation replays exactly.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::backup::{self, ChunkBackup, Ended, Pace, Window};
use super::lru::LruMap;
use super::restore::{self, ChunkFetch};
use super::serve::{MdrBudget, PendingReply, ReplyLimit, MAX_CHUNK_INTERVAL, MIN_CHUNK_INTERVAL};
use super::verify::{self, Incarnations, ProofLimit, Sample, Verify, VerifyOut};
use crate::protocol::{sha256_hex, ChunkId, FileId, Message, MessageKind, PeerId, Rd, Version};
use std::net::{IpAddr, SocketAddr};

/// The random wait before STORED, CHUNK and a re-backup: uniform in 0..=400 ms.
pub const MAX_REPLY_DELAY: Duration = Duration::from_millis(400);
/// PUTCHUNKs being stored at once, and the bytes of their bodies (held until written): beyond
/// either a PUTCHUNK is dropped (its sender resends), so a flood cannot take memory without
/// bound. Many, as a 2.0 store lasts its random wait (0.2 s on average) and a small file's
/// chunk is small: 16 MB is 256 whole chunks, or 4096 chunks of 4 KB.
pub const MAX_CONCURRENT_STORES: usize = 4096;
pub const MAX_STORING_BYTES: usize = 256 * crate::protocol::CHUNK_SIZE;
/// GETCHUNKs being answered at once; beyond this one is dropped (the requester resends). A
/// pending reply holds no body (it is read when sent), and each lasts its random wait: this
/// many let a holder keep up with restores' windows (up to 512 chunks in flight each).
pub const MAX_PENDING_REPLIES: usize = 2048;
/// Chunks remembered by each "seen lately" map: the least recently written entry makes room,
/// so a flood never stops the recording.
pub const MAX_SEEN_ENTRIES: usize = 8192;
/// STOREDs remembered per chunk being written (recorded once it is written).
pub const MAX_HEARD_WHILE_STORING: usize = 64;
/// REMOVED is sent three times (0, 0.2, 0.6 s): a lost one would leave the holders believing
/// the chunk safer than it is. Receiving it twice is harmless.
pub const REMOVED_GAPS: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(400)];
/// DELETE is sent 8 times, 300 ms apart: the network loses messages and 1.0 has no reply.
pub const DELETE_SENDS: u32 = 8;
pub const DELETE_SPACING: Duration = Duration::from_millis(300);
/// Chunks re-indexed by `--rebuild-catalog` are announced with STORED, this many per
/// `ANNOUNCE_EVERY`, so the announcement does not flood the LAN.
pub const ANNOUNCE_BATCH: usize = 100;
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(100);
/// A PUTCHUNK of a file whose DELETE was heard this recently is not stored: the DELETE may have
/// overtaken it on its way (they come on different channels, on sockets read by different
/// tasks), and a home peer that means it sends it again a second later.
pub const DELETE_GRACE: Duration = Duration::from_secs(1);
/// A PUTCHUNK with our own id is looked into once a second at most.
const OWN_ID_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Our own re-backup or a deleted file explains a PUTCHUNK with our id this long after.
const OWN_ID_EXPLAINED_FOR: Duration = Duration::from_secs(60);

/// Chunks a file backup keeps in their first round (sent once, waiting for STOREDs), at least and
/// at most: within these, what the peer's pace sends in a first round (`backup::Pace::window`).
pub const BACKUP_WINDOW: (usize, usize) = (4, 1024);
/// Chunks past their first round (resending on the 1, 2, 4, 8, 16 s schedule) cost little:
/// their bytes are read again for each resend. Bounded all the same.
pub const MAX_CHUNKS_IN_BACKOFF: usize = 4096;
/// GETCHUNKs a restore keeps in flight: adapts like the backup window.
pub const RESTORE_WINDOW: (usize, usize, usize) = (64, 4, 512);

/// 2.0: HELLO is sent at start and this often (unless `set_hello_every` says otherwise), so the
/// peers know this one is alive and send it the DELETEs it missed.
pub const HELLO_EVERY: Duration = Duration::from_secs(60);
/// 2.0: a peer heard after this long a silence is back (it may have missed DELETEs).
pub const AWAY_AFTER: Duration = Duration::from_secs(30);
/// 2.0: a peer is found back at most this often (each time, its missed DELETEs are looked up:
/// one indexed query, so a flood of forged HELLOs costs the catalog little).
pub const BACK_EVERY: Duration = Duration::from_secs(1);
/// Peers whose last message is remembered (a flood of forged ids evicts the oldest).
pub const MAX_PEERS_SEEN: usize = 4096;
/// 2.0: a DELETE sent again to a peer that is back goes out three times, this far apart.
pub const REDELETE_GAPS: [Duration; 2] = [Duration::from_millis(300), Duration::from_millis(300)];
/// 2.0: DELETED for a file at most once per this (a burst of 8 DELETEs gets one answer).
pub const DELETED_EVERY: Duration = Duration::from_secs(1);
/// 2.0: the first GETCHUNKs of a chunk carry `PULL`; the later ones do not, so a holder we
/// cannot reach over TCP (or a 1.0 peer that drops 2.0 messages) answers on MDR.
pub const TCP_GETCHUNK_SENDS: u32 = 2;
/// 2.0: connections a fetch opens to holders that said they have its chunk (each holder's
/// body-less CHUNK is one); beyond this it waits for the multicast answers. Bounds what a forged
/// announcement can make us do: one short request to the address it came from.
pub const MAX_PULLS_PER_FETCH: u32 = 4;
/// 2.0: the header line of a GETCHUNK that asks holders to say where the chunk can be pulled.
pub const PULL_LINE: &str = "PULL";
/// 2.0: a holder that left a chunk's re-backup to another holder (it saw its PUTCHUNK) looks at
/// the chunk's RD again this long after, in case that holder died midway; at most this often.
pub const RECHECK_AFTER: Duration = Duration::from_secs(20);
pub const MAX_RECHECKS: u32 = 2;
/// 2.0: after writing a chunk, this peer listens this long for STOREDs of peers that wrote it at
/// the same moment (see `Trim`).
pub const TRIM_WINDOW: Duration = Duration::from_secs(2);
/// 2.0: a copy dropped as one too many is not announced again for this long, whatever finds it
/// still on disk (its removal runs beside the engine).
pub const DROP_SETTLE: Duration = Duration::from_secs(5);
/// 2.0: STOREDs heard for a chunk are remembered this long: a PUTCHUNK sent again (its sender
/// lost a STORED) finds the holders known already, and is not stored once more.
pub const STOREDS_REMEMBERED_FOR: Duration = Duration::from_secs(20);

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
    fn same(&self, other: &Expect) -> bool {
        match (self, other) {
            (Expect::Bytes { len, hash }, Expect::Bytes { len: l, hash: h }) => {
                len == l && hash == h
            }
            (Expect::Opens(a), Expect::Opens(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Whether `body` (SHA-256 `hash` when known) is chunk `no` as expected.
    fn takes(&self, no: crate::protocol::ChunkNo, body: &[u8], hash: Option<String>) -> bool {
        match self {
            Expect::Bytes { len, hash: want } => {
                body.len() as u64 == *len && hash.unwrap_or_else(|| sha256_hex(body)) == *want
            }
            Expect::Opens(key) => key.open(no, body).is_ok(),
        }
    }

    /// The length expected, when it is known.
    fn len(&self) -> Option<u64> {
        match self {
            Expect::Bytes { len, .. } => Some(*len),
            Expect::Opens(_) => None,
        }
    }
}

/// A job (one file's backup or restore) that offers chunks as the engine gives it room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Backup,
    Restore,
}

/// Who waits for a chunk backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Job(JobId),
    /// This peer, restoring a chunk's RD after a REMOVED (SPEC §2 "Space reclaim").
    Rebackup,
}

pub use super::store::{Put, Role, UNKNOWN_RD};

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
enum Timer {
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

/// A PUTCHUNK being stored by the driver (or, in 2.0, waiting for its random instant).
struct Storing {
    /// When it arrived: a DELETE heard after this cancels the STORED.
    arrived: Instant,
    /// The random instant its STORED is due.
    reply_at: Instant,
    /// STOREDs heard meanwhile, recorded once it is written.
    heard: Vec<PeerId>,
    /// A DELETE of its file arrived meanwhile: remove it once written, send no STORED.
    deleted: bool,
    /// 2.0: not handed to the driver yet; its desired RD and bytes, until `reply_at`.
    waiting: Option<(Rd, Vec<u8>, PeerId)>,
    /// 2.0: written only if fewer than this many peers stored it first.
    rd: u8,
    /// Its body's length (counted in `storing_bytes` until it is written or let go).
    bytes: usize,
}

/// A STORED that waits for its random instant.
struct StoredDue {
    arrived: Instant,
    timer: (Instant, u64),
    /// 2.0, a chunk written ahead of its random instant: its desired RD and the STOREDs heard
    /// since its PUTCHUNK (with RD of them, ours is not needed).
    ahead: Option<(u8, Vec<PeerId>)>,
}

enum ReplyState {
    /// Waiting for the driver to say whether we host the chunk.
    Lookup,
    Waiting {
        timer: (Instant, u64),
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

enum RebackupState {
    Waiting { timer: (Instant, u64), desired: u8 },
    Reading,
    Running,
}

struct Rebackup {
    since: Instant,
    state: RebackupState,
}

/// 2.0: a chunk this peer wrote lately, and the holders with a lower id than ours heard since
/// the PUTCHUNK came. Peers that decide to store at the same moment (each heard fewer than RD
/// STOREDs) make a copy too many; each one that hears RD holders with a lower id drops its own.
/// The RD holders with the lowest ids never drop theirs, so the chunk never falls below RD.
struct Trim {
    rd: u8,
    until: Instant,
    lower: Vec<PeerId>,
}

/// When a peer was last heard, and last found back.
struct Seen {
    last: Instant,
    back: Option<Instant>,
}

/// A chunk this peer is backing up.
struct Sending {
    owners: Vec<Owner>,
    rd: Rd,
    backup: ChunkBackup,
    /// The bytes for the first send; resends ask the driver for them again.
    body: Option<Vec<u8>>,
    /// Still in its first round (counted by its jobs' windows).
    first_round: bool,
    /// Waiting in `pacing` for its first send.
    queued: bool,
    /// The pace's rate when it left `pacing`.
    sent_at_rate: Option<f64>,
    /// Waiting for the driver's `resend_body`.
    reading: bool,
    timer: Option<(Instant, u64)>,
}

/// A chunk this peer is fetching.
struct Fetching {
    jobs: Vec<JobId>,
    expect: Expect,
    fetch: ChunkFetch,
    timer: Option<(Instant, u64)>,
    /// 2.0: connections opened to holders for this chunk (at most `MAX_PULLS_PER_FETCH`).
    pulls: u32,
}

/// A message sent several times.
struct Resend {
    msg: MessageKind,
    /// The waits before the sends still to come.
    gaps: VecDeque<Duration>,
    done: Option<Vec<FileId>>,
}

struct Job {
    kind: JobKind,
    /// A restore's window of GETCHUNKs (a backup follows the peer's `Pace`).
    window: Option<Window>,
    /// Chunks offered and not yet ended.
    in_flight: usize,
    /// Of those, chunks in their first round (backup) or all of them (restore).
    first_round: usize,
    /// Of those, a backup's chunks waiting for their turn to be sent (`Peer::pacing`).
    queued: usize,
    /// Room granted with `Credit` and not yet used.
    granted: usize,
}

impl Job {
    /// Room for more chunks: a restore's window; for a backup, the window that keeps the pace
    /// up, for as many chunks ahead of their turn as the pace wants at hand (so that few bodies
    /// wait in memory), and the bound on chunks in backoff.
    fn room(&self, pace: &Pace) -> usize {
        let busy = self.first_round + self.granted;
        match (self.kind, &self.window) {
            (JobKind::Backup, _) => {
                let window = pace.window(BACKUP_WINDOW).saturating_sub(busy);
                let ahead = pace.ahead().saturating_sub(self.queued + self.granted);
                let backoff = MAX_CHUNKS_IN_BACKOFF.saturating_sub(self.in_flight + self.granted);
                window.min(ahead).min(backoff)
            }
            (JobKind::Restore, Some(w)) => w.size().saturating_sub(busy),
            (JobKind::Restore, None) => 0,
        }
    }
}

pub struct Peer {
    id: PeerId,
    /// Runs the 2.0 enhancements (SPEC §3); false: 1.0 only.
    enhanced: bool,
    /// 2.0: the port of our TCP listener, where peers pull the chunks we host (None: no pulls,
    /// either way).
    tcp_port: Option<u16>,
    hello_every: Duration,
    seen: LruMap<PeerId, Seen>,
    /// 2.0: files whose DELETE we answered lately, and when we last said DELETED for each.
    freed: LruMap<FileId, Option<Instant>>,
    /// 2.0: hosted chunks left to another holder's re-backup, and how often we looked again.
    rechecks: LruMap<ChunkId, u32>,
    trimming: LruMap<ChunkId, Trim>,
    /// 2.0: copies this peer dropped as one too many lately, and when.
    dropped: LruMap<ChunkId, Instant>,
    /// 2.0: when we last answered a new peer's HELLO with ours.
    hello_answered: Option<Instant>,
    /// 2.0: the peers heard saying STORED for each chunk lately, and when last.
    storeds: LruMap<ChunkId, Vec<(PeerId, Instant)>>,
    rng: StdRng,
    timers: BTreeMap<(Instant, u64), Timer>,
    next_timer: u64,
    storing: BTreeMap<ChunkId, Storing>,
    /// The bytes of the bodies in `storing`.
    storing_bytes: usize,
    stored_due: BTreeMap<ChunkId, StoredDue>,
    replying: BTreeMap<ChunkId, Reply>,
    chunk_sent: ReplyLimit<ChunkId>,
    /// 2.0: when we last said where to pull each chunk (a body-less CHUNK, once a second).
    pull_said: ReplyLimit<ChunkId>,
    /// Bytes per second of CHUNK bodies on MDR, in total and per source.
    mdr_budget: MdrBudget,
    rebacking: BTreeMap<ChunkId, Rebackup>,
    putchunk_seen: LruMap<ChunkId, Instant>,
    delete_seen: LruMap<FileId, Instant>,
    /// Files whose DELETE the driver is carrying out, and how many times (each `DeleteFile`
    /// ends with one `file_deleted`: bounded by the driver's own limit on that work).
    deleting: BTreeMap<FileId, u32>,
    sending: BTreeMap<ChunkId, Sending>,
    fetching: BTreeMap<ChunkId, Fetching>,
    resends: BTreeMap<u64, Resend>,
    next_resend: u64,
    jobs: BTreeMap<JobId, Job>,
    /// The pace of this peer's backups, kept across them.
    pace: Pace,
    /// Chunks of backups waiting for their first send, in order (entries whose chunk ended or
    /// was sent meanwhile are skipped).
    pacing: VecDeque<ChunkId>,
    pace_timer: Option<(Instant, u64)>,
    own_id_checked: Option<Instant>,
    /// Chunks still to announce with STORED, and whether the next batch's timer is armed.
    announcing: VecDeque<ChunkId>,
    announce_armed: bool,
    transmits: VecDeque<Message>,
    actions: VecDeque<Action>,
    counters: Counters,
    /// 2.0: holder verification (`verify`): our store's incarnation, the peers', the proofs we
    /// await as a home and the proofs we give as a holder.
    incarnation: Option<u64>,
    incarnations: Incarnations,
    verify: Option<Verify>,
    proof_limit: ProofLimit,
}

impl Peer {
    /// A peer with id `id` whose random delays come from `seed`.
    pub fn new(id: PeerId, seed: u64) -> Peer {
        Peer {
            id,
            enhanced: false,
            tcp_port: None,
            hello_every: HELLO_EVERY,
            seen: LruMap::new(MAX_PEERS_SEEN),
            freed: LruMap::new(MAX_SEEN_ENTRIES),
            rechecks: LruMap::new(MAX_SEEN_ENTRIES),
            trimming: LruMap::new(MAX_SEEN_ENTRIES),
            hello_answered: None,
            dropped: LruMap::new(MAX_SEEN_ENTRIES),
            storeds: LruMap::new(MAX_SEEN_ENTRIES),
            rng: StdRng::seed_from_u64(seed),
            timers: BTreeMap::new(),
            next_timer: 0,
            storing: BTreeMap::new(),
            storing_bytes: 0,
            stored_due: BTreeMap::new(),
            replying: BTreeMap::new(),
            chunk_sent: ReplyLimit::new(MAX_SEEN_ENTRIES, MIN_CHUNK_INTERVAL, MAX_CHUNK_INTERVAL),
            pull_said: ReplyLimit::new(MAX_SEEN_ENTRIES, MIN_CHUNK_INTERVAL, MIN_CHUNK_INTERVAL),
            mdr_budget: MdrBudget::default(),
            rebacking: BTreeMap::new(),
            putchunk_seen: LruMap::new(MAX_SEEN_ENTRIES),
            delete_seen: LruMap::new(MAX_SEEN_ENTRIES),
            deleting: BTreeMap::new(),
            sending: BTreeMap::new(),
            fetching: BTreeMap::new(),
            resends: BTreeMap::new(),
            next_resend: 0,
            jobs: BTreeMap::new(),
            pace: Pace::default(),
            pacing: VecDeque::new(),
            pace_timer: None,
            own_id_checked: None,
            announcing: VecDeque::new(),
            announce_armed: false,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            counters: Counters::default(),
            incarnation: None,
            incarnations: Incarnations::new(MAX_PEERS_SEEN),
            verify: None,
            proof_limit: ProofLimit::default(),
        }
    }

    pub fn id(&self) -> PeerId {
        self.id
    }

    /// Runs the 2.0 enhancements (SPEC §3): stores a chunk only if fewer than RD peers did
    /// first; pulls chunks it restores over TCP and lets peers pull what it hosts from
    /// `tcp_port`; answers DELETE with
    /// DELETED; says HELLO every `hello_every`; finishes re-backups a holder left midway.
    pub fn enhance(&mut self, tcp_port: Option<u16>, hello_every: Duration) {
        self.enhanced = true;
        self.tcp_port = tcp_port;
        self.hello_every = hello_every.max(Duration::from_secs(1));
    }

    /// The peer starts: a 2.0 peer says HELLO now, and then every `hello_every`.
    pub fn start(&mut self, now: Instant) {
        if self.enhanced {
            self.fire_hello(now);
        }
    }

    fn fire_hello(&mut self, now: Instant) {
        self.send_v2(MessageKind::Hello);
        self.arm(now + self.hello_every, Timer::Hello);
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The pace of this peer's backups: first sends per second.
    pub fn backup_rate(&self) -> f64 {
        self.pace.rate()
    }

    /// The next message to send, signed and encoded by the driver.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmits.pop_front()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.keys().next().map(|(at, _)| *at);
        let verify = self.verify.as_ref().and_then(Verify::poll_timeout);
        timer.into_iter().chain(verify).min()
    }

    /// Whether a DELETE of the file was heard at or after `since` (a file backup that ends
    /// after it must not count the version as complete).
    pub fn deleted_since(&self, file_id: &FileId, since: Instant) -> bool {
        self.delete_seen.get(file_id).is_some_and(|at| *at >= since)
    }

    fn reply_delay(&mut self) -> Duration {
        Duration::from_millis(self.rng.gen_range(0..=MAX_REPLY_DELAY.as_millis() as u64))
    }

    fn arm(&mut self, at: Instant, timer: Timer) -> (Instant, u64) {
        let key = (at, self.next_timer);
        self.next_timer += 1;
        self.timers.insert(key, timer);
        key
    }

    fn disarm(&mut self, key: Option<(Instant, u64)>) {
        if let Some(key) = key {
            self.timers.remove(&key);
        }
    }

    fn send(&mut self, kind: MessageKind) {
        match &kind {
            MessageKind::PutChunk { .. } => self.counters.putchunks_sent += 1,
            MessageKind::Chunk { .. } => self.counters.chunks_sent += 1,
            MessageKind::GetChunk { .. } => self.counters.getchunks_sent += 1,
            _ => {}
        }
        let msg = self.with_incarnation(Message::new(self.id, kind));
        self.transmits.push_back(msg);
    }

    /// A message of the 2.0 enhancements (1.0 peers ignore it, or take it as 1.0 would).
    fn send_v2(&mut self, kind: MessageKind) {
        let mut msg = Message::new(self.id, kind);
        msg.version = Version::V2_0;
        let msg = self.with_incarnation(msg);
        self.transmits.push_back(msg);
    }

    // ---- datagrams ---------------------------------------------------------------------------

    /// A well-formed message from the LAN (parsed, and its LAN key tag checked, by the driver).
    pub fn handle(&mut self, msg: Message, now: Instant) {
        self.handle_from(msg, None, now);
    }

    /// The same, with the address it came from: a GETCHUNK's reply is charged to it, and a 2.0
    /// holder that says where to pull a chunk we fetch is at its IP (and the port it names).
    pub fn handle_from(&mut self, msg: Message, from: Option<SocketAddr>, now: Instant) {
        let sender = msg.sender;
        if sender == self.id {
            // Ours echo back (multicast loops to this host); only a PUTCHUNK can tell of a
            // copied config.
            if let MessageKind::PutChunk { chunk, .. } = msg.kind {
                self.own_id_putchunk(chunk, now);
            }
            return;
        }
        if self.enhanced {
            self.heard(sender, matches!(msg.kind, MessageKind::Hello), now);
            if let Some(inc) = verify::incarnation_of(&msg) {
                self.on_incarnation(sender, inc, now);
            }
            if matches!(
                msg.kind,
                MessageKind::Prove { .. } | MessageKind::Proof { .. }
            ) {
                return self.on_verify_message(msg, now);
            }
        }
        let (version, tcp_port, pull) = (msg.version, msg.tcp_port(), msg.has_line(PULL_LINE));
        match msg.kind {
            MessageKind::PutChunk { chunk, rd, body } => {
                self.on_putchunk(chunk, rd, body, sender, now)
            }
            MessageKind::Stored { chunk } => self.on_stored(chunk, sender, now),
            MessageKind::GetChunk { chunk } => {
                // A GETCHUNK never makes us connect anywhere: one that asks for TCP the old way
                // (`TCP <port>`, "deliver it there") gets a multicast CHUNK like a 1.0 one.
                let pull = self.enhanced && pull && self.tcp_port.is_some();
                self.on_getchunk(chunk, pull, from.map(|a| a.ip()))
            }
            MessageKind::Chunk { chunk, body } => {
                let pull_from = match (tcp_port, from) {
                    (Some(port), Some(from)) => Some(SocketAddr::new(from.ip(), port)),
                    _ => None,
                };
                self.on_chunk(&chunk, body, version, pull_from)
            }
            MessageKind::Delete { file_id } => self.on_delete(file_id, sender, now),
            MessageKind::Removed { chunk } => {
                if let Some(peers) = self.storeds.get(&chunk) {
                    // It no longer holds it.
                    let mut peers = peers.clone();
                    peers.retain(|(p, _)| *p != sender);
                    self.storeds.insert(chunk.clone(), peers);
                }
                self.actions.push_back(Action::RemoveHolder {
                    chunk,
                    peer: sender,
                });
            }
            MessageKind::Deleted { file_id } => {
                if self.enhanced {
                    let peer = sender;
                    self.actions
                        .push_back(Action::DeleteAcked { file_id, peer });
                }
            }
            MessageKind::Hello | MessageKind::Prove { .. } | MessageKind::Proof { .. } => {}
        }
    }

    /// A CHUNK delivered over TCP (2.0): it can only end a fetch of ours.
    pub fn handle_tcp(&mut self, msg: Message) {
        if let MessageKind::Chunk { chunk, body } = msg.kind {
            self.chunk_for_fetch(&chunk, body, None);
        }
    }

    /// 2.0: a peer spoke. It is back (it may have missed DELETEs) when it says HELLO, or speaks
    /// after `AWAY_AFTER` of silence, or for the first time since we started; at most once per
    /// `BACK_EVERY`.
    fn heard(&mut self, peer: PeerId, hello: bool, now: Instant) {
        let (back, last_back) = match self.seen.get(&peer) {
            None if hello => {
                // A peer that just started: it hears our HELLO too (at most one a second,
                // whatever a flood of new ids), so it knows us before our next one.
                if (self.hello_answered)
                    .is_none_or(|t| now.saturating_duration_since(t) >= BACK_EVERY)
                {
                    self.hello_answered = Some(now);
                    self.send_v2(MessageKind::Hello);
                }
                (true, None)
            }
            None => (true, None),
            Some(s) => (
                hello || now.saturating_duration_since(s.last) >= AWAY_AFTER,
                s.back,
            ),
        };
        let allowed = last_back.is_none_or(|t| now.saturating_duration_since(t) >= BACK_EVERY);
        let back = if back && allowed {
            self.actions.push_back(Action::PeerBack { peer });
            Some(now)
        } else {
            last_back
        };
        self.seen.insert(peer, Seen { last: now, back });
    }

    fn on_putchunk(&mut self, chunk: ChunkId, rd: Rd, body: Vec<u8>, sender: PeerId, now: Instant) {
        self.putchunk_seen.insert(chunk.clone(), now);
        if self.storing.contains_key(&chunk) || self.stored_due.contains_key(&chunk) {
            return; // a resend of a chunk being written: its STORED is on its way
        }
        let just_deleted = (self.delete_seen.get(&chunk.file_id))
            .is_some_and(|at| now.saturating_duration_since(*at) < DELETE_GRACE);
        if self.deleting.contains_key(&chunk.file_id) || just_deleted {
            // Its file's deletion is under way and could remove it right after it is written
            // (and after its STORED), or its DELETE overtook it: if the home peer means it, it
            // resends in a second.
            return;
        }
        if self.storing.len() >= MAX_CONCURRENT_STORES
            || self.storing_bytes + body.len() > MAX_STORING_BYTES
        {
            self.counters.busy_drops += 1;
            return;
        }
        self.storing_bytes += body.len();
        let reply_at = now + self.reply_delay();
        // 2.0: the holders heard lately count from the start (a PUTCHUNK sent again), if they
        // are alive: heard within three HELLOs (a repair after a holder was lost sends it
        // again too, and the lost one must not count).
        // Nor does a STORED heard before the file's last DELETE: its copy went with it.
        let alive = |p: &PeerId| {
            (self.seen.get(p))
                .is_some_and(|s| now.saturating_duration_since(s.last) < self.hello_every * 3)
        };
        let deleted = self.delete_seen.get(&chunk.file_id).copied();
        let still = |at: &Instant| {
            now.saturating_duration_since(*at) < STOREDS_REMEMBERED_FOR
                && deleted.is_none_or(|d| d < *at)
        };
        // Nor the sender's own: a holder sending its copy on (a reclaim's hand-on) is about to
        // drop it.
        let heard = match self.storeds.get(&chunk) {
            Some(peers) if self.enhanced => (peers.iter())
                .filter(|(p, at)| *p != sender && still(at) && alive(p))
                .map(|(p, _)| *p)
                .collect(),
            _ => Vec::new(),
        };
        let mut storing = Storing {
            arrived: now,
            reply_at,
            heard,
            deleted: false,
            waiting: None,
            rd: rd.get(),
            bytes: body.len(),
        };
        if self.enhanced && reply_at - now >= self.write_ahead_below(rd) {
            // 2.0: first the random wait, counting the STOREDs of the peers that store it.
            storing.waiting = Some((rd, body, sender));
            self.arm(reply_at, Timer::Store(chunk.clone()));
            self.storing.insert(chunk, storing);
        } else {
            // 1.0, or 2.0 with a short wait (written ahead, kept or not at its instant).
            self.storing.insert(chunk.clone(), storing);
            self.actions.push_back(Action::Store {
                chunk,
                rd,
                body,
                sender,
                write: true,
            });
        }
    }

    /// 2.0: the random waits below which a peer writes a chunk ahead of its decision: those
    /// of the peers likely to be among the first RD (with a margin of one), given the peers
    /// heard. Uniform waits: the k-th shortest of n is expected at k/(n+1) of the range.
    fn write_ahead_below(&self, rd: Rd) -> Duration {
        // The peers that may store it: every peer heard (the sender among them stands for us).
        let n = self.seen.len().max(1) as u32;
        let k = u32::from(rd.get()) + 1;
        (MAX_REPLY_DELAY * k / (n + 1)).min(MAX_REPLY_DELAY + Duration::from_millis(1))
    }

    fn on_stored(&mut self, chunk: ChunkId, sender: PeerId, now: Instant) {
        if sender < self.id {
            self.trim(&chunk, sender, now);
        }
        if self.enhanced {
            let mut peers = self.storeds.remove(&chunk).unwrap_or_default();
            peers.retain(|(p, at)| {
                *p != sender && now.saturating_duration_since(*at) < STOREDS_REMEMBERED_FOR
            });
            if peers.len() < MAX_HEARD_WHILE_STORING {
                peers.push((sender, now));
            }
            self.storeds.insert(chunk.clone(), peers);
        }
        if let Some(s) = self.sending.get_mut(&chunk) {
            s.backup.on_stored(sender);
            // Done as soon as it can be: the window moves on.
            self.fire_backup(&chunk, now, false);
        }
        if let Some(storing) = self.storing.get_mut(&chunk) {
            if storing.heard.len() < MAX_HEARD_WHILE_STORING && !storing.heard.contains(&sender) {
                storing.heard.push(sender);
            }
            return;
        }
        let due = self.stored_due.get_mut(&chunk);
        if let Some((_, heard)) = due.and_then(|d| d.ahead.as_mut()) {
            if heard.len() < MAX_HEARD_WHILE_STORING && !heard.contains(&sender) {
                heard.push(sender);
            }
        }
        self.actions.push_back(Action::RecordHolders {
            chunk,
            peers: vec![sender],
        });
    }

    /// 2.0: a holder with a lower id than ours said STORED for a chunk we wrote lately: with RD
    /// of them, our copy is one too many (`Trim`). It goes, with REMOVED (ours was counted).
    fn trim(&mut self, chunk: &ChunkId, lower: PeerId, now: Instant) {
        let Some(t) = self.trimming.get(chunk) else {
            return;
        };
        if now > t.until || t.lower.contains(&lower) {
            return;
        }
        let mut t = match self.trimming.remove(chunk) {
            Some(t) => t,
            None => return,
        };
        t.lower.push(lower);
        if t.lower.len() < usize::from(t.rd) {
            self.trimming.insert(chunk.clone(), t);
            return;
        }
        self.drop_copy(chunk, now);
        self.send_removed(chunk.clone(), now);
    }

    /// 2.0: our copy is one too many: it goes. Until that is done on disk, a PUTCHUNK that
    /// finds it still there is not answered (it would be a STORED for a copy about to go).
    fn drop_copy(&mut self, chunk: &ChunkId, now: Instant) {
        self.dropped.insert(chunk.clone(), now);
        self.actions.push_back(Action::DropHosted {
            chunk: chunk.clone(),
        });
    }

    fn on_getchunk(&mut self, chunk: ChunkId, pull: bool, source: Option<IpAddr>) {
        if self.replying.contains_key(&chunk) {
            // The reply keeps what the first GETCHUNK asked: a later one (forged, or replayed
            // from elsewhere) cannot turn it into something else or charge it to another.
            return;
        }
        if self.replying.len() >= MAX_PENDING_REPLIES {
            self.counters.reply_drops += 1;
            return;
        }
        self.replying.insert(
            chunk.clone(),
            Reply {
                state: ReplyState::Lookup,
                pending: PendingReply::default(),
                pull,
                source,
            },
        );
        self.actions.push_back(Action::LookupHosted { chunk });
    }

    /// A CHUNK heard on MDR. Its body is hashed only where a good copy matters: a reply this
    /// peer is about to send (only a good copy silences it), and a fetch of ours (only the
    /// length and hash it expects end it).
    fn on_chunk(
        &mut self,
        chunk: &ChunkId,
        body: Vec<u8>,
        version: Version,
        pull_from: Option<SocketAddr>,
    ) {
        if version.has_enhancements() && body.is_empty() {
            // 2.0: a holder says the chunk can be pulled from it. That silences the replies to
            // a GETCHUNK that asked where to pull; a GETCHUNK without the line is answered
            // unless a good copy is seen (a forged body-less CHUNK cannot stop a restore that
            // fell back to multicast).
            if let Some(r) = self.replying.get_mut(chunk).filter(|r| r.pull) {
                r.pending.silence();
            }
            if let (true, Some(from)) = (self.enhanced && self.tcp_port.is_some(), pull_from) {
                if let Some(f) = self.fetching.get_mut(chunk) {
                    if f.pulls < MAX_PULLS_PER_FETCH {
                        f.pulls += 1;
                        let chunk = chunk.clone();
                        self.actions.push_back(Action::Pull { from, chunk });
                    }
                }
            }
            if self
                .fetching
                .get(chunk)
                .is_none_or(|f| f.expect.len() != Some(0))
            {
                return;
            }
        }
        let len = body.len() as u64;
        let for_reply = self
            .replying
            .get_mut(chunk)
            .is_some_and(|r| r.pending.wants_hash(len));
        let hash = for_reply.then(|| sha256_hex(&body));
        if let (Some(hash), Some(r)) = (&hash, self.replying.get_mut(chunk)) {
            r.pending.hashed(hash);
        }
        self.chunk_for_fetch(chunk, body, hash);
    }

    /// A CHUNK's body, for a fetch of ours: it ends the fetch if it has the length and hash
    /// asked for. `hash`: its SHA-256 if known already.
    fn chunk_for_fetch(&mut self, chunk: &ChunkId, body: Vec<u8>, hash: Option<String>) {
        let len = body.len() as u64;
        if self
            .fetching
            .get(chunk)
            .is_none_or(|f| f.expect.len().is_some_and(|l| l != len))
        {
            return;
        }
        if (self.fetching.get(chunk)).is_some_and(|f| f.expect.takes(chunk.chunk_no, &body, hash)) {
            if let Some(f) = self.fetching.remove(chunk) {
                self.disarm(f.timer);
                self.end_fetch(chunk.clone(), f, Some(body));
            }
        }
    }

    fn on_delete(&mut self, file_id: FileId, sender: PeerId, now: Instant) {
        self.delete_seen.insert(file_id.clone(), now);
        // Chunks of the file being written are removed once written (see `stored`).
        for (c, storing) in self.storing.iter_mut() {
            if c.file_id == file_id {
                storing.deleted = true;
            }
        }
        // STOREDs not yet sent are not sent; our own re-backups of its chunks stop (a resend
        // would put a chunk back on peers that just freed it).
        let due: Vec<ChunkId> = (self.stored_due.keys())
            .filter(|c| c.file_id == file_id)
            .cloned()
            .collect();
        for c in due {
            if let Some(d) = self.stored_due.remove(&c) {
                self.disarm(Some(d.timer));
            }
        }
        let stopping: Vec<ChunkId> = (self.sending.iter())
            // Only re-backups: the chunks of our own files are ours to delete, not a peer's.
            .filter(|(c, s)| c.file_id == file_id && s.owners.iter().all(|o| *o == Owner::Rebackup))
            .map(|(c, _)| c.clone())
            .collect();
        for c in stopping {
            self.finish_backup(&c, Some(Stopped::Deleted), now);
        }
        *self.deleting.entry(file_id.clone()).or_default() += 1;
        self.actions
            .push_back(Action::DeleteFile { file_id, sender });
    }

    /// The driver carried out (or gave up) a `DeleteFile`; `freed`: some chunk was removed.
    /// A 2.0 peer answers DELETED, meaning "I hold no chunk of it now", so the home peer stops
    /// sending it the DELETE (a holder that lost its copies without a word answers too): once
    /// per `DELETED_EVERY` per file, and at once when it freed chunks just now.
    pub fn file_deleted(&mut self, file_id: &FileId, freed: bool, now: Instant) {
        if let Some(n) = self.deleting.get_mut(file_id) {
            *n -= 1;
            if *n == 0 {
                self.deleting.remove(file_id);
            }
        }
        if !self.enhanced {
            return;
        }
        let last = self.freed.get(file_id).copied().flatten();
        if !freed && last.is_some_and(|t| now.saturating_duration_since(t) < DELETED_EVERY) {
            return;
        }
        self.freed.insert(file_id.clone(), Some(now));
        self.send_v2(MessageKind::Deleted {
            file_id: file_id.clone(),
        });
    }

    /// 2.0: the DELETEs a peer that is back has not acknowledged, sent again (three times each).
    pub fn redelete(&mut self, file_ids: Vec<FileId>, now: Instant) {
        for file_id in file_ids {
            let msg = MessageKind::Delete { file_id };
            self.resend(msg, REDELETE_GAPS.to_vec(), None, now);
        }
    }

    fn own_id_putchunk(&mut self, chunk: ChunkId, now: Instant) {
        // Our own re-backup, or a chunk of a file deleted lately, explains it.
        let recently = now.checked_sub(OWN_ID_EXPLAINED_FOR).unwrap_or(now);
        if self.rebacking.contains_key(&chunk)
            || self.sending.contains_key(&chunk)
            || self.deleted_since(&chunk.file_id, recently)
        {
            return;
        }
        if self
            .own_id_checked
            .is_some_and(|t| now.saturating_duration_since(t) < OWN_ID_CHECK_EVERY)
        {
            return;
        }
        self.own_id_checked = Some(now);
        self.actions.push_back(Action::CheckOwnId { chunk });
    }

    // ---- results of the driver's work ---------------------------------------------------------

    /// What became of a `Store`. A held chunk gets its STORED at the random instant drawn when
    /// the PUTCHUNK arrived (now, if that passed while it was written).
    pub fn stored(&mut self, chunk: &ChunkId, put: Put, now: Instant) {
        let Some(storing) = self.storing.remove(chunk) else {
            return;
        };
        self.storing_bytes -= storing.bytes;
        match put {
            Put::Refused => return,
            Put::Written if storing.deleted => {
                self.actions.push_back(Action::DropHosted {
                    chunk: chunk.clone(),
                });
                return;
            }
            Put::Held if storing.deleted => return,
            Put::Held
                if (self.dropped.get(chunk))
                    .is_some_and(|t| now.saturating_duration_since(*t) < DROP_SETTLE) =>
            {
                return; // held only until our own drop of it is done
            }
            Put::Written if self.enhanced => {
                if !storing.heard.is_empty() {
                    self.actions.push_back(Action::RecordHolders {
                        chunk: chunk.clone(),
                        peers: storing.heard.clone(),
                    });
                }
                if storing.reply_at > now {
                    // Written ahead: kept or not at its random instant.
                    let timer = self.arm(storing.reply_at, Timer::Stored(chunk.clone()));
                    let due = StoredDue {
                        arrived: storing.arrived,
                        timer,
                        ahead: Some((storing.rd, storing.heard)),
                    };
                    self.stored_due.insert(chunk.clone(), due);
                    return;
                }
                if !self.announce_written(chunk, storing.rd, &storing.heard, now) {
                    return;
                }
            }
            Put::Written | Put::Held if !storing.heard.is_empty() => {
                self.actions.push_back(Action::RecordHolders {
                    chunk: chunk.clone(),
                    peers: storing.heard,
                });
            }
            Put::Written | Put::Held => {}
        }
        if storing.reply_at <= now {
            self.send(MessageKind::Stored {
                chunk: chunk.clone(),
            });
        } else {
            let timer = self.arm(storing.reply_at, Timer::Stored(chunk.clone()));
            self.stored_due.insert(
                chunk.clone(),
                StoredDue {
                    arrived: storing.arrived,
                    timer,
                    ahead: None,
                },
            );
        }
    }

    /// 2.0: a chunk this peer wrote, at the instant its STORED would go: if RD peers said
    /// STORED since its PUTCHUNK, ours is not needed and goes without a word (nobody counted
    /// it; of the copies announced with STORED, which alone count, the RD with the lowest ids
    /// are never dropped, see `Trim`). Else we listen a while for the peers that wrote it at
    /// the same moment. Whether to send STORED.
    fn announce_written(
        &mut self,
        chunk: &ChunkId,
        rd: u8,
        heard: &[PeerId],
        now: Instant,
    ) -> bool {
        if heard.len() >= usize::from(rd) {
            self.drop_copy(chunk, now);
            return false;
        }
        let me = self.id;
        let lower = heard.iter().filter(|p| **p < me).copied().collect();
        let trim = Trim {
            rd,
            until: now + TRIM_WINDOW,
            lower,
        };
        self.trimming.insert(chunk.clone(), trim);
        true
    }

    /// Whether this peer hosts a chunk a GETCHUNK asked for: its recorded length and hash. The
    /// reply waits a random delay, and (a body) no less than its interval after our last CHUNK
    /// of it.
    pub fn hosted(&mut self, chunk: &ChunkId, info: Option<(u64, String)>, now: Instant) {
        let Some((len, hash)) = info else {
            self.replying.remove(chunk);
            return;
        };
        let delay = self.reply_delay();
        let Some(pull) = self.replying.get(chunk).map(|r| r.pull) else {
            return;
        };
        let limit = if pull {
            &self.pull_said
        } else {
            &self.chunk_sent
        };
        let at = (limit.next_allowed(chunk)).map_or(now + delay, |n| n.max(now + delay));
        let timer = self.arm(at, Timer::Reply(chunk.clone()));
        if let Some(r) = self.replying.get_mut(chunk) {
            r.pending.expect(len, hash);
            r.state = ReplyState::Waiting { timer };
        }
    }

    /// The hosted chunk read for a reply (None: unreadable or damaged). `chunk` carries the
    /// fileId text exactly as the home peer wrote it.
    pub fn serve(&mut self, chunk: ChunkId, body: Option<Vec<u8>>, now: Instant) {
        let Some(reply) = self.replying.remove(&chunk) else {
            return;
        };
        let Some(body) = body else { return };
        if reply.pending.suppressed() || !self.chunk_sent.take(&chunk, now) {
            return; // another holder answered first with the right bytes, or too soon
        }
        self.send(MessageKind::Chunk { chunk, body });
    }

    /// 2.0: says on MDR, with a body-less CHUNK naming our TCP port, that the chunk can be
    /// pulled from us (once a second per chunk at most); the other holders then stay quiet.
    fn say_pull(&mut self, chunk: ChunkId, now: Instant) {
        let Some(port) = self.tcp_port else { return };
        if !self.pull_said.take(&chunk, now) {
            return;
        }
        let kind = MessageKind::Chunk {
            chunk,
            body: Vec::new(),
        };
        let mut msg = Message::new(self.id, kind);
        msg.version = Version::V2_0;
        msg.extra_lines.push(format!("TCP {port}"));
        self.transmits.push_back(msg);
    }

    /// The catalog took a REMOVED into account: the chunk's role here and its perceived RD now.
    /// A holder of a chunk below its RD re-backs it up after a random wait, unless someone
    /// else's PUTCHUNK for it is seen meanwhile; the home peer lets its repair look.
    pub fn removed(&mut self, chunk: &ChunkId, role: Role, perceived: u32, now: Instant) {
        // Its home's RD is unknown: the holders counted before this REMOVED (at least 2).
        let role = match role {
            Role::Hosted {
                desired_rd: UNKNOWN_RD,
            } => Role::Hosted {
                desired_rd: perceived.saturating_add(1).clamp(2, 9) as u8,
            },
            other => other,
        };
        match role {
            Role::Hosted { desired_rd } if perceived < u32::from(desired_rd) => {
                if self.rebacking.contains_key(chunk) {
                    return;
                }
                let at = now + self.reply_delay();
                let timer = self.arm(at, Timer::Rebackup(chunk.clone()));
                self.rebacking.insert(
                    chunk.clone(),
                    Rebackup {
                        since: now,
                        state: RebackupState::Waiting {
                            timer,
                            desired: desired_rd,
                        },
                    },
                );
            }
            Role::Own { desired_rd } if perceived < u32::from(desired_rd) => {
                self.actions.push_back(Action::Repair);
            }
            _ => {}
        }
    }

    /// The hosted chunk to back up again, read for `ReadForRebackup` (None: unreadable, or no
    /// longer hosted), with the chunk as the home peer wrote its fileId and its known holders.
    pub fn rebackup(
        &mut self,
        chunk: &ChunkId,
        read: Option<(ChunkId, Rd, Vec<u8>, Vec<PeerId>)>,
        now: Instant,
    ) {
        let Some((wire, rd, body, known)) = read else {
            self.rebacking.remove(chunk);
            return;
        };
        if let Some(r) = self.rebacking.get_mut(chunk) {
            r.state = RebackupState::Running;
        }
        self.start_backup(Owner::Rebackup, wire, rd, body, known, now);
    }

    /// Reclaim: a hosted chunk that may be the last copy is handed on before it is dropped, as
    /// a PUTCHUNK of its home's fileId on the backup schedule, until `rd` peers besides those
    /// in `others` said STORED, or its sends are spent. `BackedUp` (owner `Rebackup`) says
    /// whether another peer took it; only then may the caller drop its copy.
    pub fn hand_on(
        &mut self,
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        others: Vec<PeerId>,
        now: Instant,
    ) {
        let others = others.into_iter().filter(|p| *p != self.id).collect();
        self.start_backup(Owner::Rebackup, chunk, rd, body, others, now);
    }

    /// The bytes asked for by `ReadBody` (None: the file changed or cannot be read).
    pub fn resend_body(&mut self, chunk: &ChunkId, body: Option<Vec<u8>>, now: Instant) {
        let Some(s) = self.sending.get_mut(chunk) else {
            return;
        };
        if !s.reading {
            return;
        }
        s.reading = false;
        match body {
            None => self.finish_backup(chunk, Some(Stopped::Changed), now),
            Some(body) => {
                let rd = s.rd;
                self.send(MessageKind::PutChunk {
                    chunk: chunk.clone(),
                    rd,
                    body,
                });
                self.fire_backup(chunk, now, true);
            }
        }
    }

    // ---- commands ---------------------------------------------------------------------------

    /// A job starts: it offers chunks as `Credit` actions give it room. A backup's chunks leave
    /// at the peer's pace (`backup::Pace`), which is where the last backups left it.
    pub fn start_job(&mut self, job: JobId, kind: JobKind) {
        let window = match kind {
            JobKind::Backup => None,
            JobKind::Restore => {
                let (initial, min, max) = RESTORE_WINDOW;
                Some(Window::new(initial, min, max))
            }
        };
        self.jobs.insert(
            job,
            Job {
                kind,
                window,
                in_flight: 0,
                first_round: 0,
                queued: 0,
                granted: 0,
            },
        );
        self.grant(job);
    }

    /// A job ends (done, or given up): its chunks still in flight stop without a word.
    pub fn end_job(&mut self, job: JobId) {
        self.jobs.remove(&job);
        let owned = |owners: &mut Vec<Owner>| {
            owners.retain(|o| *o != Owner::Job(job));
            owners.is_empty()
        };
        let sends: Vec<ChunkId> = (self.sending.iter_mut())
            .filter_map(|(c, s)| owned(&mut s.owners).then(|| c.clone()))
            .collect();
        for c in sends {
            if let Some(s) = self.sending.remove(&c) {
                self.disarm(s.timer);
            }
        }
        let fetches: Vec<ChunkId> = (self.fetching.iter_mut())
            .filter_map(|(c, f)| {
                f.jobs.retain(|j| *j != job);
                f.jobs.is_empty().then(|| c.clone())
            })
            .collect();
        for c in fetches {
            if let Some(f) = self.fetching.remove(&c) {
                self.disarm(f.timer);
            }
        }
    }

    /// The room a job has now, given as `Credit` (the job keeps count of what it was given).
    fn grant(&mut self, job: JobId) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        let n = j.room(&self.pace);
        if n > 0 {
            j.granted += n;
            self.actions.push_back(Action::Credit { job, n });
        }
    }

    /// Backs up one chunk of a job: PUTCHUNK until `rd` distinct peers sent STORED, at most 5
    /// sends. `known`: peers already known to hold it (a resumed backup).
    pub fn backup_chunk(
        &mut self,
        job: JobId,
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        known: Vec<PeerId>,
        now: Instant,
    ) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.granted = j.granted.saturating_sub(1);
            j.in_flight += 1;
            j.first_round += 1;
        }
        self.start_backup(Owner::Job(job), chunk, rd, body, known, now);
    }

    fn start_backup(
        &mut self,
        owner: Owner,
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        known: Vec<PeerId>,
        now: Instant,
    ) {
        if let Owner::Job(_) = owner {
            // The same version backed up again just after it was deleted: the DELETEs still to
            // be sent would remove the new copies. They stop (the ones sent are taken care of
            // by the holders, which store nothing of a file while they delete it).
            self.cancel_delete(&chunk.file_id);
        }
        if let Some(s) = self.sending.get_mut(&chunk) {
            // The same chunk is being backed up already: wait for the same outcome.
            s.owners.push(owner);
            if rd > s.rd {
                s.rd = rd;
                s.backup.set_desired(rd.get());
            }
            let queued = s.queued;
            if !s.first_round {
                self.leave_first_round_of(owner);
            }
            if let (true, Owner::Job(job)) = (queued, owner) {
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.queued += 1;
                }
            }
            return;
        }
        let backup = ChunkBackup::new(rd.get(), known);
        // A job's chunk waits for its turn; a chunk known to be at its RD already needs none,
        // and a re-backup (one chunk, after a random wait) goes at once, counted by the pace.
        let paced = match owner {
            Owner::Job(job) if !backup.reached() => self.jobs.get_mut(&job),
            _ => None,
        };
        let queued = paced.is_some();
        if let Some(j) = paced {
            j.queued += 1;
        }
        self.sending.insert(
            chunk.clone(),
            Sending {
                owners: vec![owner],
                rd,
                backup,
                body: Some(body),
                first_round: true,
                queued,
                sent_at_rate: None,
                reading: false,
                timer: None,
            },
        );
        if queued {
            self.pacing.push_back(chunk);
            self.release_paced(now);
        } else {
            self.fire_backup(&chunk, now, true);
        }
    }

    /// Sends the first PUTCHUNKs waiting in `pacing` that the pace has tokens for, and wakes
    /// when it has one for the next.
    fn release_paced(&mut self, now: Instant) {
        let mut released = false;
        while let Some(chunk) = self.pacing.front() {
            if !self.sending.get(chunk).is_some_and(|s| s.queued) {
                self.pacing.pop_front(); // ended, or sent, meanwhile
                continue;
            }
            if !self.pace.try_send(now) {
                break;
            }
            let Some(chunk) = self.pacing.pop_front() else {
                break;
            };
            let Some(s) = self.sending.get_mut(&chunk) else {
                continue;
            };
            s.queued = false;
            s.sent_at_rate = Some(self.pace.rate());
            for owner in &s.owners {
                if let Owner::Job(job) = owner {
                    if let Some(j) = self.jobs.get_mut(job) {
                        j.queued = j.queued.saturating_sub(1);
                    }
                }
            }
            self.fire_backup(&chunk, now, true);
            released = true;
        }
        if !self.pacing.is_empty() {
            let at = self.pace.next_send(now);
            if self.pace_timer.is_none_or(|(t, _)| t > at) {
                let old = self.pace_timer.take();
                self.disarm(old);
                self.pace_timer = Some(self.arm(at, Timer::Pace));
            }
        }
        if released {
            // Room for more chunks ahead of their turn.
            let backups: Vec<JobId> = (self.jobs.iter())
                .filter(|(_, j)| j.kind == JobKind::Backup)
                .map(|(id, _)| *id)
                .collect();
            for job in backups {
                self.grant(job);
            }
        }
    }

    fn leave_first_round_of(&mut self, owner: Owner) {
        if let Owner::Job(job) = owner {
            if let Some(j) = self.jobs.get_mut(&job) {
                j.first_round = j.first_round.saturating_sub(1);
            }
            self.grant(job);
        }
    }

    /// Polls a chunk backup's schedule. `send` false: only check whether it is done (a STORED
    /// arrived), without sending.
    fn fire_backup(&mut self, chunk: &ChunkId, now: Instant, send: bool) {
        let Some(s) = self.sending.get_mut(chunk) else {
            return;
        };
        if s.reading || (s.queued && !s.backup.reached()) {
            return;
        }
        let step = match send {
            true => s.backup.poll(now, &mut self.rng),
            false if s.backup.reached() => backup::Action::Done { reached: true },
            false => return,
        };
        match step {
            backup::Action::Done { .. } => self.finish_backup(chunk, None, now),
            backup::Action::WaitUntil(t) => {
                let old = s.timer.take();
                self.disarm(old);
                let timer = self.arm(t, Timer::Backup(chunk.clone()));
                if let Some(s) = self.sending.get_mut(chunk) {
                    s.timer = Some(timer);
                }
            }
            backup::Action::SendPutChunk => {
                let (rd, first) = (s.rd, s.body.take());
                let resend = s.backup.sends() > 1;
                if resend {
                    self.counters.putchunks_resent += 1;
                }
                // A first send of a job's chunk took its token from the pace already.
                let unpaced = resend || s.owners.iter().all(|o| *o == Owner::Rebackup);
                let leaving = resend && std::mem::take(&mut s.first_round);
                let owners = if leaving {
                    s.owners.clone()
                } else {
                    Vec::new()
                };
                if first.is_none() {
                    s.reading = true;
                }
                let old = s.timer.take();
                self.disarm(old);
                if unpaced {
                    self.pace.charge(now);
                }
                for o in owners {
                    self.leave_first_round_of(o);
                }
                match first {
                    Some(body) => {
                        self.send(MessageKind::PutChunk {
                            chunk: chunk.clone(),
                            rd,
                            body,
                        });
                        // Arms the wait for STOREDs.
                        self.fire_backup(chunk, now, true);
                    }
                    // A resend: the driver reads the bytes again (`resend_body`).
                    None => self.actions.push_back(Action::ReadBody {
                        chunk: chunk.clone(),
                    }),
                }
            }
        }
    }

    fn finish_backup(&mut self, chunk: &ChunkId, stopped: Option<Stopped>, now: Instant) {
        let Some(s) = self.sending.remove(chunk) else {
            return;
        };
        self.disarm(s.timer);
        let reached = s.backup.reached() && stopped.is_none();
        let outcome = BackupOutcome {
            reached,
            sends: s.backup.sends(),
            recovered_by_resend: s.backup.recovered_by_resend(),
            holders: s.backup.holders().iter().copied().collect(),
            stopped,
        };
        if stopped.is_none() {
            let ended = Ended {
                first_sent: s.backup.first_sent(),
                sent_at_rate: s.sent_at_rate,
                sends: outcome.sends,
                reached,
                recovered_by_resend: outcome.recovered_by_resend,
            };
            self.pace.on_done(ended, now);
        }
        for owner in &s.owners {
            match owner {
                Owner::Job(job) => {
                    if let Some(j) = self.jobs.get_mut(job) {
                        j.in_flight = j.in_flight.saturating_sub(1);
                        if s.first_round {
                            j.first_round = j.first_round.saturating_sub(1);
                        }
                        if s.queued {
                            j.queued = j.queued.saturating_sub(1);
                        }
                    }
                    self.grant(*job);
                }
                Owner::Rebackup => {
                    self.rebacking.remove(chunk);
                }
            }
        }
        self.actions.push_back(Action::BackedUp {
            owners: s.owners,
            chunk: chunk.clone(),
            outcome,
        });
    }

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
        if let Some(f) = self.fetching.get_mut(&chunk) {
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
        self.fetching.insert(
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

    fn fire_fetch(&mut self, chunk: &ChunkId, now: Instant) {
        let Some(f) = self.fetching.get_mut(chunk) else {
            return;
        };
        match f.fetch.poll(now) {
            restore::Action::SendGetChunk => {
                let kind = MessageKind::GetChunk {
                    chunk: chunk.clone(),
                };
                if self.enhanced && self.tcp_port.is_some() && f.fetch.sends() <= TCP_GETCHUNK_SENDS
                {
                    let mut msg = Message::new(self.id, kind);
                    msg.version = Version::V2_0;
                    msg.extra_lines.push(PULL_LINE.into());
                    self.counters.getchunks_sent += 1;
                    self.transmits.push_back(msg);
                } else {
                    self.send(kind);
                }
                // Arms the wait for the CHUNK.
                self.fire_fetch(chunk, now);
            }
            restore::Action::WaitUntil(t) => {
                let old = f.timer.take();
                self.disarm(old);
                let timer = self.arm(t, Timer::Fetch(chunk.clone()));
                if let Some(f) = self.fetching.get_mut(chunk) {
                    f.timer = Some(timer);
                }
            }
            restore::Action::GaveUp => {
                if let Some(f) = self.fetching.remove(chunk) {
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
        self.actions.push_back(Action::Fetched {
            jobs: f.jobs,
            chunk,
            body,
            sends,
        });
    }

    /// Tells the peers this peer dropped a chunk (REMOVED, sent three times).
    pub fn send_removed(&mut self, chunk: ChunkId, now: Instant) {
        // A STORED still due for it would tell the peers the opposite, after the REMOVED.
        if let Some(due) = self.stored_due.remove(&chunk) {
            self.disarm(Some(due.timer));
        }
        self.resend(
            MessageKind::Removed { chunk },
            REMOVED_GAPS.to_vec(),
            None,
            now,
        );
    }

    /// Tells the peers to delete these files (DELETE, 8 sends 300 ms apart); `DeletesSent`
    /// follows the last.
    pub fn send_delete(&mut self, file_ids: Vec<FileId>, now: Instant) {
        // Our own PUTCHUNKs of these files may still echo back: they are explained. A backup of
        // them still running stops: its chunks are being deleted.
        for file_id in &file_ids {
            self.delete_seen.insert(file_id.clone(), now);
        }
        let stopping: Vec<ChunkId> = (self.sending.keys())
            .filter(|c| file_ids.contains(&c.file_id))
            .cloned()
            .collect();
        for c in stopping {
            self.finish_backup(&c, Some(Stopped::Deleted), now);
        }
        let Some(last) = file_ids.len().checked_sub(1) else {
            return;
        };
        let gaps = vec![DELETE_SPACING; DELETE_SENDS as usize - 1];
        // One message per file, each on the same schedule; the last one reports them all.
        for (i, file_id) in file_ids.iter().enumerate() {
            let done = (i == last).then(|| file_ids.clone());
            let msg = MessageKind::Delete {
                file_id: file_id.clone(),
            };
            self.resend(msg, gaps.clone(), done, now);
        }
    }

    /// Stops the DELETE sends of a file still to come; reports them sent.
    fn cancel_delete(&mut self, file_id: &FileId) {
        let ids: Vec<u64> = (self.resends.iter())
            .filter(|(_, r)| matches!(&r.msg, MessageKind::Delete { file_id: f } if f == file_id))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            // Its armed timer finds nothing left to send.
            if let Some(Resend {
                done: Some(file_ids),
                ..
            }) = self.resends.remove(&id)
            {
                self.actions.push_back(Action::DeletesSent { file_ids });
            }
        }
    }

    /// Sends `msg` now, then again after each of `gaps`.
    fn resend(
        &mut self,
        msg: MessageKind,
        gaps: Vec<Duration>,
        done: Option<Vec<FileId>>,
        now: Instant,
    ) {
        let id = self.next_resend;
        self.next_resend += 1;
        self.resends.insert(
            id,
            Resend {
                msg,
                gaps: gaps.into(),
                done,
            },
        );
        self.fire_resend(id, now);
    }

    /// Sends a repeated message and arms the wait before the next send.
    fn fire_resend(&mut self, id: u64, now: Instant) {
        let Some(r) = self.resends.get_mut(&id) else {
            return;
        };
        let msg = r.msg.clone();
        self.send(msg);
        let Some(r) = self.resends.get_mut(&id) else {
            return;
        };
        match r.gaps.pop_front() {
            Some(gap) => {
                self.arm(now + gap, Timer::Resend(id));
            }
            None => {
                if let Some(Resend {
                    done: Some(file_ids),
                    ..
                }) = self.resends.remove(&id)
                {
                    self.actions.push_back(Action::DeletesSent { file_ids });
                }
            }
        }
    }

    /// Announces hosted chunks with one STORED each, paced (`ANNOUNCE_BATCH` per
    /// `ANNOUNCE_EVERY`), so their home peers count this peer as a holder again.
    pub fn announce(&mut self, chunks: Vec<ChunkId>, now: Instant) {
        self.announcing.extend(chunks);
        if !self.announce_armed {
            self.fire_announce(now);
        }
    }

    fn fire_announce(&mut self, now: Instant) {
        let n = self.announcing.len().min(ANNOUNCE_BATCH);
        for chunk in self.announcing.drain(..n).collect::<Vec<_>>() {
            self.send(MessageKind::Stored { chunk });
        }
        if self.announcing.is_empty() {
            self.actions.push_back(Action::Announced);
        } else {
            self.announce_armed = true;
            self.arm(now + ANNOUNCE_EVERY, Timer::Announce);
        }
    }

    // ---- time -------------------------------------------------------------------------------

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.verify_timeout(now);
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = *entry.key();
            let timer = entry.remove();
            match timer {
                Timer::Stored(chunk) => {
                    if self.stored_due.get(&chunk).is_some_and(|d| d.timer == key) {
                        let Some(due) = self.stored_due.remove(&chunk) else {
                            continue;
                        };
                        if self.deleted_since(&chunk.file_id, due.arrived) {
                            continue;
                        }
                        if let Some((rd, heard)) = &due.ahead {
                            if !self.announce_written(&chunk, *rd, heard, now) {
                                continue;
                            }
                        }
                        self.send(MessageKind::Stored { chunk });
                    }
                }
                Timer::Reply(chunk) => {
                    let Some(r) = self.replying.get_mut(&chunk) else {
                        continue;
                    };
                    if !matches!(r.state, ReplyState::Waiting { timer } if timer == key) {
                        continue;
                    }
                    if r.pending.suppressed() {
                        self.replying.remove(&chunk);
                    } else if r.pull {
                        // 2.0: no body to read; the requester pulls it from our listener.
                        self.replying.remove(&chunk);
                        self.say_pull(chunk, now);
                    } else {
                        let (source, len) = (r.source, r.pending.expected_len());
                        match self.mdr_budget.spend(source, len, now) {
                            Ok(()) => {
                                r.state = ReplyState::Reading;
                                self.actions.push_back(Action::ReadHosted { chunk });
                            }
                            Err(at) => {
                                // Over the bytes per second allowed on MDR: later, not never
                                // (the number of pending replies is bounded).
                                let timer = self.arm(at, Timer::Reply(chunk.clone()));
                                if let Some(r) = self.replying.get_mut(&chunk) {
                                    r.state = ReplyState::Waiting { timer };
                                }
                            }
                        }
                    }
                }
                Timer::Rebackup(chunk) => {
                    let Some(r) = self.rebacking.get(&chunk) else {
                        continue;
                    };
                    let RebackupState::Waiting { timer, desired } = r.state else {
                        continue;
                    };
                    if timer != key {
                        continue;
                    }
                    let since = r.since;
                    if self.putchunk_seen.get(&chunk).is_some_and(|t| *t >= since) {
                        // Another holder started first. In 2.0 we look again later: it may
                        // die midway.
                        self.rebacking.remove(&chunk);
                        let looked = self.rechecks.get(&chunk).copied().unwrap_or(0);
                        if self.enhanced && looked < MAX_RECHECKS {
                            self.rechecks.insert(chunk.clone(), looked + 1);
                            self.arm(now + RECHECK_AFTER, Timer::Recheck(chunk));
                        }
                    } else if let Some(r) = self.rebacking.get_mut(&chunk) {
                        r.state = RebackupState::Reading;
                        self.actions.push_back(Action::ReadForRebackup {
                            chunk,
                            desired_rd: desired,
                        });
                    }
                }
                Timer::Backup(chunk) => {
                    if self
                        .sending
                        .get(&chunk)
                        .is_some_and(|s| s.timer == Some(key))
                    {
                        if let Some(s) = self.sending.get_mut(&chunk) {
                            s.timer = None;
                        }
                        self.fire_backup(&chunk, now, true);
                    }
                }
                Timer::Fetch(chunk) => {
                    if self
                        .fetching
                        .get(&chunk)
                        .is_some_and(|f| f.timer == Some(key))
                    {
                        if let Some(f) = self.fetching.get_mut(&chunk) {
                            f.timer = None;
                        }
                        self.fire_fetch(&chunk, now);
                    }
                }
                Timer::Resend(id) => self.fire_resend(id, now),
                Timer::Announce => {
                    self.announce_armed = false;
                    self.fire_announce(now);
                }
                Timer::Store(chunk) => {
                    let Some(st) = self.storing.get_mut(&chunk) else {
                        continue;
                    };
                    let Some((rd, body, sender)) = st.waiting.take() else {
                        continue;
                    };
                    // Fewer than RD peers said STORED meanwhile: store it. Else only say
                    // STORED if we hold it already (the initiator may have lost ours).
                    let write = st.heard.len() < usize::from(rd.get()) && !st.deleted;
                    self.actions.push_back(Action::Store {
                        chunk,
                        rd,
                        body,
                        sender,
                        write,
                    });
                }
                Timer::Hello => self.fire_hello(now),
                Timer::Recheck(chunk) => {
                    if !self.rebacking.contains_key(&chunk) {
                        self.actions.push_back(Action::Recheck { chunk });
                    }
                }
                Timer::Pace => {
                    if self.pace_timer == Some(key) {
                        self.pace_timer = None;
                        self.release_paced(now);
                    }
                }
            }
        }
    }

    /// What is in progress, for tests and `state`.
    pub fn load(&self) -> Load {
        Load {
            storing: self.storing.len(),
            replying: self.replying.len(),
            sending: self.sending.len(),
            fetching: self.fetching.len(),
            rebacking: self.rebacking.len(),
            timers: self.timers.len(),
        }
    }
}

/// How much the engine has in progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub storing: usize,
    pub replying: usize,
    pub sending: usize,
    pub fetching: usize,
    pub rebacking: usize,
    pub timers: usize,
}

// ---- 2.0: holder verification (`verify`) ------------------------------------------------------
impl Peer {
    /// 2.0: our chunk store's incarnation, announced in HELLO and STORED (and PROOF).
    pub fn set_incarnation(&mut self, inc: u64) {
        self.incarnation = Some(inc);
    }

    /// 2.0: as a home peer, asks each holder to prove a few chunks of ours every `every`.
    pub fn verify_holders(&mut self, every: Duration, now: Instant) {
        self.verify = Some(Verify::new(every, now));
    }

    /// 2.0: when the next verification round is due, if no proof is awaited (None: none is
    /// due, or proofs are awaited): a simulation waits for quiet until then.
    pub fn verify_idle_until(&self) -> Option<Instant> {
        self.verify.as_ref().and_then(Verify::idle_until)
    }

    /// The `INC` line on what says this store holds something (STORED, PROOF) or announces it
    /// (HELLO): 2.0 only; 1.0 peers and other implementations ignore extra lines.
    fn with_incarnation(&self, mut msg: Message) -> Message {
        let says = matches!(
            msg.kind,
            MessageKind::Stored { .. } | MessageKind::Hello | MessageKind::Proof { .. }
        );
        if let (true, true, Some(inc)) = (self.enhanced, says, self.incarnation) {
            msg.extra_lines.push(verify::inc_line(inc));
        }
        msg
    }

    fn on_incarnation(&mut self, peer: PeerId, inc: u64, now: Instant) {
        if self.incarnations.heard(peer, inc, now) {
            self.actions.push_back(Action::Incarnation { peer, inc });
        }
    }

    /// PROVE (for us only if it names us) and PROOF (for us only if it answers a PROVE of ours).
    fn on_verify_message(&mut self, msg: Message, now: Instant) {
        let Some(nonce) = verify::nonce_of(&msg) else {
            return;
        };
        let none = msg.has_line(verify::NONE_LINE);
        let ours = verify::holder_of(&msg) == Some(self.id);
        match msg.kind {
            MessageKind::Prove { chunk } if ours && self.proof_limit.take(now) => {
                self.actions
                    .push_back(Action::ReadForProof { chunk, nonce });
            }
            MessageKind::Proof { chunk, body } => {
                let body = (!none).then_some(body.as_slice());
                let out = (self.verify.as_mut())
                    .and_then(|v| v.on_proof(msg.sender, &chunk, nonce, body));
                self.verify_out(out.into_iter().collect());
            }
            _ => {}
        }
    }

    /// The hosted chunk a PROVE asked for, read and checked (None: not here): the PROOF.
    pub fn proof(&mut self, chunk: ChunkId, nonce: u128, body: Option<Vec<u8>>) {
        let none = body.is_none();
        let mut msg = Message::new(
            self.id,
            MessageKind::Proof {
                chunk,
                body: body.unwrap_or_default(),
            },
        );
        msg.version = Version::V2_0;
        msg.extra_lines.push(verify::nonce_line(nonce));
        if none {
            msg.extra_lines.push(verify::NONE_LINE.into());
        }
        let msg = self.with_incarnation(msg);
        self.transmits.push_back(msg);
    }

    /// The chunks of ours to prove this round.
    pub fn verify_samples(&mut self, samples: Vec<Sample>, now: Instant) {
        let Some(v) = self.verify.as_mut() else {
            return;
        };
        let rng = &mut self.rng;
        let out = v.samples(samples, now, || rng.gen());
        self.verify_out(out);
    }

    fn verify_timeout(&mut self, now: Instant) {
        let Some(v) = self.verify.as_mut() else {
            return;
        };
        let (seen, incs) = (&self.seen, &self.incarnations);
        let out = v.on_timeout(now, |p| {
            incs.knows(p)
                .then(|| seen.get(&p).map(|s| s.last))
                .flatten()
        });
        self.verify_out(out);
    }

    fn verify_out(&mut self, out: Vec<VerifyOut>) {
        for o in out {
            match o {
                VerifyOut::AskSamples => self.actions.push_back(Action::SampleHolders),
                VerifyOut::Prove {
                    holder,
                    chunk,
                    nonce,
                } => {
                    let mut msg = Message::new(self.id, MessageKind::Prove { chunk });
                    msg.version = Version::V2_0;
                    msg.extra_lines.push(verify::holder_line(holder));
                    msg.extra_lines.push(verify::nonce_line(nonce));
                    self.transmits.push_back(msg);
                }
                VerifyOut::Failed {
                    holder,
                    chunk,
                    failure,
                } => self.actions.push_back(Action::NotHolder {
                    peer: holder,
                    chunk,
                    failure,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChunkNo;

    const ME: PeerId = PeerId(1);

    fn chunk(no: u32) -> ChunkId {
        ChunkId {
            file_id: FileId::parse(&"a".repeat(64)).unwrap(),
            chunk_no: ChunkNo(no),
        }
    }

    fn msg(from: u32, kind: MessageKind) -> Message {
        Message::new(PeerId(from), kind)
    }

    fn rd(n: u8) -> Rd {
        Rd::new(n).unwrap()
    }

    /// An empty PUTCHUNK of chunk `no` at RD `r`, from peer `from`.
    fn put(from: u32, no: u32, r: u8) -> Message {
        let kind = MessageKind::PutChunk {
            chunk: chunk(no),
            rd: rd(r),
            body: vec![],
        };
        msg(from, kind)
    }

    /// A DELETE of chunk `no`'s file, from peer `from`.
    fn delete(from: u32, no: u32) -> Message {
        let file_id = chunk(no).file_id;
        msg(from, MessageKind::Delete { file_id })
    }

    /// Runs the timers up to `until`, returning each message sent with its time since `t0`.
    fn run(p: &mut Peer, t0: Instant, until: Duration) -> Vec<(Duration, Message)> {
        let mut sent: Vec<(Duration, Message)> = std::iter::from_fn(|| p.poll_transmit())
            .map(|m| (Duration::ZERO, m))
            .collect();
        while let Some(at) = p.poll_timeout().filter(|at| *at <= t0 + until) {
            p.handle_timeout(at);
            sent.extend(std::iter::from_fn(|| p.poll_transmit()).map(|m| (at - t0, m)));
        }
        sent
    }

    fn actions(p: &mut Peer) -> Vec<Action> {
        std::iter::from_fn(|| p.poll_action()).collect()
    }

    #[test]
    fn stored_goes_out_at_the_random_instant_once_the_chunk_is_written() {
        let t0 = Instant::now();
        for seed in 0..50 {
            let mut p = Peer::new(ME, seed);
            let put = MessageKind::PutChunk {
                chunk: chunk(0),
                rd: rd(2),
                body: vec![1; 10],
            };
            p.handle(msg(2, put.clone()), t0);
            p.handle(msg(2, put), t0); // a duplicate while it is written: one store
            let a = actions(&mut p);
            assert_eq!(a.len(), 1);
            assert!(matches!(a[0], Action::Store { .. }));
            assert!(
                p.poll_transmit().is_none(),
                "no STORED before the chunk is on disk"
            );
            p.stored(&chunk(0), Put::Written, t0);
            let sent = run(&mut p, t0, Duration::from_secs(1));
            assert_eq!(sent.len(), 1);
            assert!(sent[0].0 <= MAX_REPLY_DELAY);
            assert_eq!(sent[0].1.kind, MessageKind::Stored { chunk: chunk(0) });
        }
    }

    #[test]
    fn a_slow_write_sends_stored_as_soon_as_it_is_done() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 3);
        let body = vec![1; 10];
        let put = MessageKind::PutChunk {
            chunk: chunk(0),
            rd: rd(2),
            body,
        };
        p.handle(msg(2, put), t0);
        p.stored(&chunk(0), Put::Held, t0 + Duration::from_secs(2));
        assert!(matches!(
            p.poll_transmit().map(|m| m.kind),
            Some(MessageKind::Stored { .. })
        ));
    }

    #[test]
    fn a_delete_while_writing_drops_the_chunk_and_its_stored() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.handle(put(2, 0, 1), t0);
        p.handle(delete(2, 0), t0);
        p.stored(&chunk(0), Put::Written, t0);
        let a = actions(&mut p);
        assert!(a.contains(&Action::DropHosted { chunk: chunk(0) }), "{a:?}");
        assert!(run(&mut p, t0, Duration::from_secs(1)).is_empty());
        // Stored earlier, DELETE during the random wait: no STORED either.
        let mut p = Peer::new(ME, 1);
        p.handle(put(2, 1, 1), t0);
        p.stored(&chunk(1), Put::Written, t0);
        p.handle(delete(3, 1), t0);
        assert!(run(&mut p, t0, Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn a_putchunk_is_not_stored_while_its_files_deletion_runs() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.handle(delete(2, 0), t0);
        p.handle(delete(2, 0), t0);
        actions(&mut p);
        p.handle(put(2, 0, 1), t0);
        assert!(actions(&mut p).is_empty(), "not while deleting");
        p.file_deleted(&chunk(0).file_id, true, t0);
        p.handle(put(2, 0, 1), t0);
        assert!(actions(&mut p).is_empty(), "the second DELETE still runs");
        p.file_deleted(&chunk(0).file_id, false, t0);
        p.handle(put(2, 0, 1), t0);
        assert!(
            actions(&mut p).is_empty(),
            "the DELETE may have overtaken it"
        );
        p.handle(put(2, 0, 1), t0 + DELETE_GRACE);
        assert!(matches!(actions(&mut p)[..], [Action::Store { .. }]));
    }

    #[test]
    fn storeds_heard_while_writing_are_recorded_once_written() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.handle(put(2, 0, 1), t0);
        for from in [3, 3, 4] {
            p.handle(msg(from, MessageKind::Stored { chunk: chunk(0) }), t0);
        }
        actions(&mut p);
        p.stored(&chunk(0), Put::Written, t0);
        assert_eq!(
            actions(&mut p),
            vec![Action::RecordHolders {
                chunk: chunk(0),
                peers: vec![PeerId(3), PeerId(4)]
            }]
        );
    }

    #[test]
    fn storeds_heard_while_checking_a_held_chunk_are_recorded_too() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.handle(put(2, 0, 1), t0);
        p.handle(msg(3, MessageKind::Stored { chunk: chunk(0) }), t0);
        actions(&mut p);
        p.stored(&chunk(0), Put::Held, t0);
        assert_eq!(
            actions(&mut p),
            vec![Action::RecordHolders {
                chunk: chunk(0),
                peers: vec![PeerId(3)]
            }]
        );
    }

    #[test]
    fn a_fetch_expecting_other_bytes_than_the_running_one_ends_at_once() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.start_job(JobId(1), JobKind::Restore);
        p.start_job(JobId(2), JobKind::Restore);
        actions(&mut p);
        p.fetch_chunk(JobId(1), chunk(0), Expect::bytes(5, "a"), t0);
        p.fetch_chunk(JobId(2), chunk(0), Expect::bytes(6, "b"), t0);
        assert!(actions(&mut p).iter().any(|a| matches!(
            a,
            Action::Fetched { jobs, body: None, .. } if *jobs == vec![JobId(2)]
        )));
        assert_eq!(p.load().fetching, 1, "the first fetch goes on");
    }

    #[test]
    fn a_flood_of_putchunks_is_bounded() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        let sent = MAX_CONCURRENT_STORES as u32 + 1000;
        for no in 0..sent {
            let put = MessageKind::PutChunk {
                chunk: chunk(no),
                rd: rd(1),
                body: vec![],
            };
            p.handle(msg(2, put), t0);
        }
        assert_eq!(actions(&mut p).len(), MAX_CONCURRENT_STORES);
        assert_eq!(p.counters().busy_drops, 1000);
    }

    #[test]
    fn a_flood_of_whole_chunks_is_bounded_by_their_bytes() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        let body = vec![1u8; crate::protocol::CHUNK_SIZE];
        for no in 0..1000 {
            let put = MessageKind::PutChunk {
                chunk: chunk(no),
                rd: rd(1),
                body: body.clone(),
            };
            p.handle(msg(2, put), t0);
        }
        let held = MAX_STORING_BYTES / body.len();
        assert_eq!(actions(&mut p).len(), held);
        assert_eq!(p.counters().busy_drops, 1000 - held as u64);
        // Written: their room is given back.
        p.stored(&chunk(0), Put::Written, t0);
        let put = MessageKind::PutChunk {
            chunk: chunk(5000),
            rd: rd(1),
            body,
        };
        p.handle(msg(2, put), t0);
        assert!(actions(&mut p)
            .iter()
            .any(|a| matches!(a, Action::Store { .. })));
    }

    fn getchunk(p: &mut Peer, no: u32, at: Instant) {
        p.handle(msg(2, MessageKind::GetChunk { chunk: chunk(no) }), at);
    }

    #[test]
    fn getchunk_is_answered_after_a_random_wait_unless_a_good_copy_is_heard() {
        let t0 = Instant::now();
        let body = vec![5u8; 100];
        let hash = sha256_hex(&body);
        let mut p = Peer::new(ME, 9);
        getchunk(&mut p, 0, t0);
        getchunk(&mut p, 0, t0); // repeated: one reply
        assert_eq!(
            actions(&mut p),
            vec![Action::LookupHosted { chunk: chunk(0) }]
        );
        p.hosted(&chunk(0), Some((100, hash.clone())), t0);
        let mut at = None;
        while let Some(t) = p.poll_timeout() {
            p.handle_timeout(t);
            at = Some(t);
        }
        assert!(at.unwrap() - t0 <= MAX_REPLY_DELAY);
        assert_eq!(
            actions(&mut p),
            vec![Action::ReadHosted { chunk: chunk(0) }]
        );
        p.serve(chunk(0), Some(body.clone()), at.unwrap());
        let sent = p.poll_transmit().unwrap();
        assert_eq!(
            sent.kind,
            MessageKind::Chunk {
                chunk: chunk(0),
                body: body.clone()
            }
        );

        // Another holder's good copy silences us; junk of the right length does not.
        let t1 = t0 + Duration::from_secs(5);
        for (heard, silent) in [(body.clone(), true), (vec![6u8; 100], false)] {
            let mut p = Peer::new(ME, 9);
            getchunk(&mut p, 0, t1);
            p.hosted(&chunk(0), Some((100, hash.clone())), t1);
            p.handle(
                msg(
                    3,
                    MessageKind::Chunk {
                        chunk: chunk(0),
                        body: heard,
                    },
                ),
                t1,
            );
            run(&mut p, t1, Duration::from_secs(1));
            let read = actions(&mut p).contains(&Action::ReadHosted { chunk: chunk(0) });
            assert_eq!(read, !silent);
        }
    }

    #[test]
    fn one_chunk_per_second_per_chunk_whatever_the_getchunks() {
        let t0 = Instant::now();
        let body = vec![5u8; 10];
        let hash = sha256_hex(&body);
        let mut p = Peer::new(ME, 4);
        let mut sent = Vec::new();
        for ms in (0..3000).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            p.handle_timeout(now);
            getchunk(&mut p, 0, now);
            for a in actions(&mut p) {
                match a {
                    Action::LookupHosted { chunk } => {
                        p.hosted(&chunk, Some((10, hash.clone())), now)
                    }
                    Action::ReadHosted { chunk } => p.serve(chunk, Some(body.clone()), now),
                    _ => {}
                }
            }
            sent.extend(std::iter::from_fn(|| p.poll_transmit()).map(|_| ms));
        }
        assert!(sent.len() <= 3, "{sent:?}");
        assert!(sent.windows(2).all(|w| w[1] - w[0] >= 1000), "{sent:?}");
    }

    #[test]
    fn a_hosted_chunk_below_rd_is_backed_up_again_unless_another_holder_starts() {
        let t0 = Instant::now();
        for other_starts in [false, true] {
            let mut p = Peer::new(ME, 2);
            p.handle(msg(3, MessageKind::Removed { chunk: chunk(0) }), t0);
            assert_eq!(
                actions(&mut p),
                vec![Action::RemoveHolder {
                    chunk: chunk(0),
                    peer: PeerId(3)
                }]
            );
            p.removed(&chunk(0), Role::Hosted { desired_rd: 2 }, 1, t0);
            if other_starts {
                let put = MessageKind::PutChunk {
                    chunk: chunk(0),
                    rd: rd(2),
                    body: vec![],
                };
                p.handle(msg(4, put), t0 + Duration::from_millis(1));
                actions(&mut p);
            }
            run(&mut p, t0, Duration::from_secs(1));
            let read = actions(&mut p).contains(&Action::ReadForRebackup {
                chunk: chunk(0),
                desired_rd: 2,
            });
            assert_eq!(read, !other_starts);
        }
        // Re-indexed by --rebuild-catalog, its RD unknown: made up for to the count before
        // the REMOVED (2 holders known: 1 left is below; at least 2 when none other is known).
        for (perceived, desired) in [(1, 2), (2, 3), (0, 2)] {
            let mut p = Peer::new(ME, 2);
            let role = Role::Hosted {
                desired_rd: UNKNOWN_RD,
            };
            p.removed(&chunk(0), role, perceived, t0);
            run(&mut p, t0, Duration::from_secs(1));
            assert_eq!(
                actions(&mut p),
                vec![Action::ReadForRebackup {
                    chunk: chunk(0),
                    desired_rd: desired,
                }],
                "{perceived} holders left"
            );
        }
        // At its RD: nothing; ours below RD: the home peer's repair.
        let mut p = Peer::new(ME, 2);
        p.removed(&chunk(0), Role::Hosted { desired_rd: 2 }, 2, t0);
        p.removed(&chunk(1), Role::Own { desired_rd: 3 }, 2, t0);
        run(&mut p, t0, Duration::from_secs(1));
        assert_eq!(actions(&mut p), vec![Action::Repair]);
    }

    #[test]
    fn a_rebackup_stops_when_its_file_is_deleted_but_our_own_backups_do_not() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 2);
        p.rebackup(&chunk(0), Some((chunk(0), rd(3), vec![1], vec![ME])), t0);
        p.start_job(JobId(1), JobKind::Backup);
        let other = ChunkId {
            file_id: FileId::parse(&"b".repeat(64)).unwrap(),
            chunk_no: ChunkNo(0),
        };
        p.backup_chunk(JobId(1), other.clone(), rd(3), vec![1], vec![], t0);
        actions(&mut p);
        for file_id in [chunk(0).file_id, other.file_id.clone()] {
            p.handle(msg(4, MessageKind::Delete { file_id }), t0);
        }
        let ended: Vec<ChunkId> = actions(&mut p)
            .into_iter()
            .filter_map(|a| match a {
                Action::BackedUp { chunk, outcome, .. } => {
                    assert_eq!(outcome.stopped, Some(Stopped::Deleted));
                    Some(chunk)
                }
                _ => None,
            })
            .collect();
        assert_eq!(ended, vec![chunk(0)]);
    }

    /// Drives a chunk backup, answering `ReadBody` with the bytes, until it ends.
    fn drive_backup(
        p: &mut Peer,
        t0: Instant,
        storers: &[(u32, Duration)],
    ) -> (Vec<Duration>, BackupOutcome) {
        let mut sends = Vec::new();
        let mut now = t0;
        loop {
            for a in actions(p) {
                match a {
                    Action::ReadBody { chunk } => p.resend_body(&chunk, Some(vec![1]), now),
                    Action::BackedUp { outcome, .. } => return (sends, outcome),
                    _ => {}
                }
            }
            for m in std::iter::from_fn(|| p.poll_transmit()) {
                if matches!(m.kind, MessageKind::PutChunk { .. }) {
                    sends.push(now - t0);
                }
            }
            let next_stored = storers
                .iter()
                .filter(|(_, at)| t0 + *at > now)
                .map(|(_, at)| t0 + *at)
                .min();
            let next = [p.poll_timeout(), next_stored]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            now = next;
            for (peer, at) in storers {
                if t0 + *at == now {
                    p.handle(msg(*peer, MessageKind::Stored { chunk: chunk(0) }), now);
                }
            }
            p.handle_timeout(now);
        }
    }

    /// Whether the sends of a chunk, in seconds, keep the schedule (0, 1, 3, 7, 15 s) within
    /// its spread: each wait from the schedule's to a quarter more.
    fn on_spread_schedule(sends: &[Duration]) -> bool {
        sends.windows(2).enumerate().all(|(k, pair)| {
            let (wait, base) = ((pair[1] - pair[0]).as_secs_f64(), f64::from(1u32 << k));
            (base..=1.25 * base).contains(&wait)
        })
    }

    #[test]
    fn putchunk_is_resent_on_the_spread_schedule_and_counts_distinct_peers() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.start_job(JobId(1), JobKind::Backup);
        p.backup_chunk(JobId(1), chunk(0), rd(3), vec![1], vec![], t0);
        let ms = Duration::from_millis;
        let (sends, outcome) = drive_backup(&mut p, t0, &[(2, ms(10)), (2, ms(20)), (3, ms(30))]);
        assert_eq!(sends.len(), 5);
        assert!(on_spread_schedule(&sends), "{sends:?}");
        assert!(!outcome.reached);
        assert_eq!(outcome.holders, vec![PeerId(2), PeerId(3)]);

        let mut p = Peer::new(ME, 1);
        p.start_job(JobId(1), JobKind::Backup);
        p.backup_chunk(JobId(1), chunk(0), rd(2), vec![1], vec![], t0);
        let (sends, outcome) = drive_backup(&mut p, t0, &[(2, ms(10)), (3, ms(1500))]);
        assert_eq!(sends.len(), 2, "stops once RD peers confirmed: {sends:?}");
        assert!(on_spread_schedule(&sends), "{sends:?}");
        assert!(outcome.reached);
        assert!(outcome.recovered_by_resend);
        assert_eq!(p.counters().putchunks_sent, 2);
        assert_eq!(
            p.counters().putchunks_resent,
            1,
            "the second send is a resend"
        );
    }

    #[test]
    fn a_chunk_handed_on_is_done_once_another_peer_stored_it_and_not_before() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Another peer stores it: done at its STORED, after one send; our own copy is no holder.
        let mut p = Peer::new(ME, 1);
        p.hand_on(chunk(0), rd(1), vec![1], vec![ME], t0);
        let (sends, outcome) = drive_backup(&mut p, t0, &[(3, ms(150))]);
        assert_eq!(sends, vec![Duration::ZERO]);
        assert!(outcome.reached);
        assert_eq!(outcome.holders, vec![PeerId(3)]);
        // Nobody has room: five sends on the schedule, then not reached (the copy stays).
        let mut p = Peer::new(ME, 1);
        p.hand_on(chunk(0), rd(1), vec![1], vec![ME], t0);
        let (sends, outcome) = drive_backup(&mut p, t0, &[]);
        assert_eq!(sends.len(), 5);
        assert!(on_spread_schedule(&sends), "{sends:?}");
        assert!(!outcome.reached);
        assert!(*sends.last().unwrap() < Duration::from_secs(20));
        // Enough other holders already: nothing is sent.
        let mut p = Peer::new(ME, 1);
        p.hand_on(chunk(0), rd(1), vec![1], vec![ME, PeerId(4)], t0);
        let (sends, outcome) = drive_backup(&mut p, t0, &[]);
        assert!(sends.is_empty() && outcome.reached, "{sends:?}");
    }

    fn credit(a: &[Action]) -> usize {
        a.iter()
            .map(|a| match a {
                Action::Credit { n, .. } => *n,
                _ => 0,
            })
            .sum()
    }

    fn putchunks(p: &mut Peer) -> usize {
        std::iter::from_fn(|| p.poll_transmit())
            .filter(|m| matches!(m.kind, MessageKind::PutChunk { .. }))
            .count()
    }

    #[test]
    fn a_backup_hands_over_a_few_chunks_ahead_of_their_turn() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.start_job(JobId(7), JobKind::Backup);
        let first = credit(&actions(&mut p));
        assert_eq!(first, Pace::default().ahead());
        for no in 0..first as u32 {
            p.backup_chunk(JobId(7), chunk(no), rd(1), vec![1], vec![], t0);
        }
        // A burst's worth leaves now (2 ms at 500/s: one); as many may be handed over again.
        assert_eq!(putchunks(&mut p), 1);
        assert_eq!(credit(&actions(&mut p)), 1);
        for no in first as u32..first as u32 + 1 {
            p.backup_chunk(JobId(7), chunk(no), rd(1), vec![1], vec![], t0);
        }
        assert_eq!(credit(&actions(&mut p)), 0, "enough at hand");
        // The next one leaves when the pace has a token for it, 2 ms later.
        let next = p.poll_timeout().unwrap();
        assert!(next > t0 && next <= t0 + Duration::from_micros(2002));
        p.handle_timeout(next);
        assert_eq!(putchunks(&mut p), 1);
        assert_eq!(credit(&actions(&mut p)), 1);
        // A chunk confirmed on its first send ends; the others leave their first round at their
        // resend. A chunk whose file changed meanwhile ends, not reached.
        p.handle(msg(2, MessageKind::Stored { chunk: chunk(0) }), next);
        assert!(actions(&mut p)
            .iter()
            .any(|a| matches!(a, Action::BackedUp { chunk: c, .. } if *c == chunk(0))));
        let later = t0 + Duration::from_millis(1300);
        while let Some(at) = p.poll_timeout().filter(|at| *at <= later) {
            p.handle_timeout(at);
        }
        let reads: Vec<ChunkId> = actions(&mut p)
            .into_iter()
            .filter_map(|a| match a {
                Action::ReadBody { chunk } => Some(chunk),
                _ => None,
            })
            .collect();
        assert!(reads.contains(&chunk(1)), "{reads:?}");
        p.resend_body(&reads[0], None, later);
        assert!(actions(&mut p).iter().any(|a| matches!(
            a,
            Action::BackedUp {
                outcome: BackupOutcome {
                    stopped: Some(Stopped::Changed),
                    reached: false,
                    ..
                },
                ..
            }
        )));
    }

    /// What `drive_job` saw: every PUTCHUNK (when, after the job's start; chunk number; its
    /// send number, 1 for a first send), the outcomes, and when the last chunk ended.
    struct Driven {
        putchunks: Vec<(Duration, u32, u32)>,
        outcomes: Vec<BackupOutcome>,
        end: Instant,
    }

    impl Driven {
        fn first_sends(&self) -> Vec<Duration> {
            (self.putchunks.iter())
                .filter(|(_, _, k)| *k == 1)
                .map(|(t, _, _)| *t)
                .collect()
        }

        fn resends(&self) -> usize {
            self.putchunks.iter().filter(|(_, _, k)| *k > 1).count()
        }
    }

    /// Drives a backup job of chunks 0..n at RD 1 from `t0`, as the daemon does: a chunk handed
    /// over for each credit, the bytes of each resend read at once. Peer 2 answers STORED 100 ms
    /// after each PUTCHUNK that `lost(chunk number, send number)` does not drop.
    fn drive_job(
        p: &mut Peer,
        job: JobId,
        n: u32,
        t0: Instant,
        lost: impl Fn(u32, u32) -> bool,
    ) -> Driven {
        p.start_job(job, JobKind::Backup);
        let (mut now, mut next, mut credit) = (t0, 0, 0);
        let mut sends: BTreeMap<u32, u32> = BTreeMap::new();
        let mut storeds: BTreeMap<(Instant, u32), ()> = BTreeMap::new();
        let mut driven = Driven {
            putchunks: Vec::new(),
            outcomes: Vec::new(),
            end: t0,
        };
        loop {
            let mut idle = false;
            while !idle {
                idle = true;
                for a in actions(p) {
                    idle = false;
                    match a {
                        Action::Credit { n, .. } => credit += n,
                        Action::ReadBody { chunk } => p.resend_body(&chunk, Some(vec![1]), now),
                        Action::BackedUp { outcome, .. } => driven.outcomes.push(outcome),
                        _ => {}
                    }
                }
                while credit > 0 && next < n {
                    idle = false;
                    p.backup_chunk(job, chunk(next), rd(1), vec![1], vec![], now);
                    (next, credit) = (next + 1, credit - 1);
                }
                for m in std::iter::from_fn(|| p.poll_transmit()) {
                    idle = false;
                    if let MessageKind::PutChunk { chunk, .. } = m.kind {
                        let no = chunk.chunk_no.0;
                        let k = sends.entry(no).or_default();
                        *k += 1;
                        driven.putchunks.push((now - t0, no, *k));
                        if !lost(no, *k) {
                            storeds.insert((now + Duration::from_millis(100), no), ());
                        }
                    }
                }
            }
            if driven.outcomes.len() == n as usize {
                p.end_job(job);
                driven.end = now;
                return driven;
            }
            let stored = storeds.keys().next().map(|(at, _)| *at);
            now = [p.poll_timeout(), stored]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            while let Some((&(at, no), _)) = storeds.first_key_value().filter(|(k, _)| k.0 <= now) {
                storeds.remove(&(at, no));
                p.handle(msg(2, MessageKind::Stored { chunk: chunk(no) }), now);
            }
            p.handle_timeout(now);
        }
    }

    #[test]
    fn a_backup_sends_its_chunks_at_the_pace_not_at_once() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        let d = drive_job(&mut p, JobId(1), 32, t0, |_, _| false);
        let first = d.first_sends();
        assert_eq!(first.len(), 32);
        assert_eq!(d.resends(), 0);
        assert!(d.outcomes.iter().all(|o| o.reached && o.sends == 1));
        // One at a time (a burst is 2 ms' worth, one at 500 chunks a second), 2 ms apart.
        assert_eq!(first.iter().filter(|t| t.is_zero()).count(), 1, "{first:?}");
        for pair in first.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_micros(1999),
                "{first:?}"
            );
        }
        assert!(first[31] < Duration::from_millis(70), "{first:?}");
        // Every chunk was confirmed on its first send while the pace held sends back.
        assert!(p.backup_rate() > backup::INITIAL_RATE);
    }

    #[test]
    fn the_pace_is_kept_across_backups_grows_while_confirmed_and_halves_on_loss() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        drive_job(&mut p, JobId(1), 500, t0, |_, _| false);
        let grown = p.backup_rate();
        assert!(grown > backup::INITIAL_RATE * 4.0, "{grown}");
        // The next backup starts where the last one left the pace.
        let t1 = t0 + Duration::from_secs(60);
        let d = drive_job(&mut p, JobId(2), 200, t1, |no, k| no % 4 == 0 && k == 1);
        assert!(d.outcomes.iter().all(|o| o.reached), "lost chunks resent");
        assert_eq!(d.resends(), 50);
        let first = d.first_sends();
        let span = (first[99] - first[0]).as_secs_f64();
        assert!(
            span < 100.0 / grown * 1.1,
            "{span} s for 100 first sends at {grown}/s"
        );
        // Losses halved the pace, once per round: the 50 lost chunks of one round, once.
        let lowered = p.backup_rate();
        assert!(
            lowered < grown * 0.6 && lowered > grown * 0.4,
            "{grown} -> {lowered}"
        );
        // And the next backup starts from there.
        let t2 = t1 + Duration::from_secs(60);
        let d = drive_job(&mut p, JobId(3), 100, t2, |_, _| false);
        let first = d.first_sends();
        let span = (first[99] - first[0]).as_secs_f64();
        let expected = 100.0 / lowered;
        assert!(span > expected * 0.8 && span < expected * 1.1, "{span} s");
    }

    #[test]
    fn the_resends_of_a_burst_do_not_leave_together() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        // Every first send lost: all 32 resend, each on its own spread schedule.
        let d = drive_job(&mut p, JobId(1), 32, t0, |_, k| k == 1);
        assert!(d.outcomes.iter().all(|o| o.reached && o.sends == 2));
        let resent: BTreeMap<u32, Duration> = (d.putchunks.iter())
            .filter(|(_, _, k)| *k == 2)
            .map(|(t, no, _)| (*no, *t))
            .collect();
        let first: BTreeMap<u32, Duration> = (d.putchunks.iter())
            .filter(|(_, _, k)| *k == 1)
            .map(|(t, no, _)| (*no, *t))
            .collect();
        for (no, at) in &resent {
            let wait = (*at - first[no]).as_secs_f64();
            assert!(
                (1.0..=1.25).contains(&wait),
                "chunk {no} resent after {wait} s"
            );
        }
        let mut at: Vec<Duration> = resent.values().copied().collect();
        at.sort();
        assert!(at[31] - at[0] > Duration::from_millis(200), "{at:?}");
        let together = at
            .windows(2)
            .filter(|w| w[1] - w[0] < Duration::from_millis(1));
        assert!(together.count() < 8, "{at:?}");
    }

    #[test]
    fn chunks_short_of_holders_for_want_of_room_do_not_slow_the_pace() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        let d = drive_job(&mut p, JobId(1), 8, t0, |_, _| true);
        assert!(d.outcomes.iter().all(|o| !o.reached && o.sends == 5));
        assert_eq!(p.backup_rate(), backup::INITIAL_RATE);
        // Given up in bounded time: the last wait ends within a quarter of 31 s.
        assert!(d.end - t0 < Duration::from_secs(39));
    }

    /// Chunk 0 of job 1's fetch, sent first as each of `junk` (none ends the fetch), then as
    /// `good` (which ends it, on its first send).
    fn takes_only(p: &mut Peer, t0: Instant, junk: Vec<Vec<u8>>, good: Vec<u8>) {
        for body in junk {
            let kind = MessageKind::Chunk {
                chunk: chunk(0),
                body,
            };
            p.handle(msg(2, kind), t0);
        }
        assert!(actions(p).is_empty());
        let kind = MessageKind::Chunk {
            chunk: chunk(0),
            body: good.clone(),
        };
        p.handle(msg(2, kind), t0);
        assert!(actions(p).contains(&Action::Fetched {
            jobs: vec![JobId(1)],
            chunk: chunk(0),
            body: Some(good),
            sends: 1
        }));
    }

    #[test]
    fn a_fetch_takes_only_the_recorded_bytes_and_gives_up_in_bounded_time() {
        let t0 = Instant::now();
        let body = vec![3u8; 50];
        let mut p = Peer::new(ME, 1);
        p.start_job(JobId(1), JobKind::Restore);
        assert_eq!(credit(&actions(&mut p)), RESTORE_WINDOW.0);
        p.fetch_chunk(JobId(1), chunk(0), Expect::bytes(50, sha256_hex(&body)), t0);
        p.fetch_chunk(JobId(1), chunk(1), Expect::bytes(50, sha256_hex(&body)), t0);
        assert_eq!(run(&mut p, t0, Duration::ZERO).len(), 2, "two GETCHUNKs");
        takes_only(&mut p, t0, vec![vec![3u8; 49], vec![4u8; 50]], body);
        let sent = run(&mut p, t0, Duration::from_secs(60));
        let secs: Vec<u64> = sent.iter().map(|(d, _)| d.as_secs()).collect();
        assert_eq!(secs, vec![1, 3, 7, 11, 15, 19, 23]);
        assert!(actions(&mut p).iter().any(|a| matches!(
            a,
            Action::Fetched {
                body: None,
                sends: 8,
                ..
            }
        )));
        assert_eq!(p.poll_timeout(), None, "nothing left");
    }

    #[test]
    fn a_probe_takes_only_a_body_that_opens_and_is_asked_twice() {
        use crate::protocol::seal::MasterKey;
        let t0 = Instant::now();
        let master = MasterKey::new([7; 32]);
        let key = std::sync::Arc::new(master.file_key(&chunk(0).file_id));
        let good = key.seal(ChunkNo(0), b"catalog");
        let mut p = Peer::new(ME, 1);
        p.start_job(JobId(1), JobKind::Restore);
        actions(&mut p);
        p.fetch_chunk(JobId(1), chunk(0), Expect::Opens(key.clone()), t0);
        p.fetch_chunk(JobId(1), chunk(1), Expect::Opens(key.clone()), t0);
        assert_eq!(run(&mut p, t0, Duration::ZERO).len(), 2, "two GETCHUNKs");
        // Forged bytes, the right bytes for another place, another key's: not taken.
        let stranger = MasterKey::new([8; 32]).file_key(&chunk(0).file_id);
        let junk = vec![
            vec![4u8; 64_000],
            key.seal(ChunkNo(1), b"catalog"),
            stranger.seal(ChunkNo(0), b"catalog"),
        ];
        takes_only(&mut p, t0, junk, good);
        // Chunk 1 has no holder: asked again after a second, then given up.
        let sent = run(&mut p, t0, Duration::from_secs(60));
        let secs: Vec<u64> = sent.iter().map(|(d, _)| d.as_secs()).collect();
        assert_eq!(secs, vec![1]);
        assert!(actions(&mut p).iter().any(|a| matches!(
            a,
            Action::Fetched {
                body: None,
                sends: 2,
                ..
            }
        )));
        assert_eq!(p.poll_timeout(), None, "nothing left");
    }

    #[test]
    fn delete_and_removed_are_repeated_on_their_schedule() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.send_delete(vec![chunk(0).file_id, chunk(1).file_id], t0);
        let sent = run(&mut p, t0, Duration::from_secs(10));
        let at: Vec<u128> = sent.iter().map(|(d, _)| d.as_millis()).collect();
        let expected: Vec<u128> = (0..DELETE_SENDS as u128)
            .flat_map(|i| [i * 300, i * 300])
            .collect();
        assert_eq!(at, expected);
        assert_eq!(
            actions(&mut p),
            vec![Action::DeletesSent {
                file_ids: vec![chunk(0).file_id, chunk(1).file_id]
            }]
        );
        p.send_removed(chunk(0), t0);
        let at: Vec<u128> = run(&mut p, t0, Duration::from_secs(10))
            .iter()
            .map(|(d, _)| d.as_millis())
            .collect();
        assert_eq!(at, vec![0, 200, 600]);
    }

    #[test]
    fn own_id_putchunks_are_looked_into_once_a_second_unless_explained() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        let put = |no| MessageKind::PutChunk {
            chunk: chunk(no),
            rd: rd(1),
            body: vec![],
        };
        for ms in 0..2000u64 {
            p.handle(msg(1, put(ms as u32)), t0 + Duration::from_millis(ms));
        }
        assert_eq!(actions(&mut p).len(), 2);
        // Our own backup echoing back is no evidence.
        p.start_job(JobId(1), JobKind::Backup);
        p.backup_chunk(JobId(1), chunk(5000), rd(1), vec![], vec![], t0);
        actions(&mut p);
        p.handle(msg(1, put(5000)), t0 + Duration::from_secs(10));
        assert!(actions(&mut p).is_empty());
    }

    #[test]
    fn a_chunk_dropped_before_its_stored_went_out_gets_no_stored() {
        let t0 = Instant::now();
        for seed in 0..20 {
            let mut p = Peer::new(ME, seed);
            let put = MessageKind::PutChunk {
                chunk: chunk(0),
                rd: rd(1),
                body: vec![],
            };
            p.handle(msg(2, put), t0);
            p.stored(&chunk(0), Put::Written, t0);
            p.send_removed(chunk(0), t0);
            let kinds: Vec<&'static str> = run(&mut p, t0, Duration::from_secs(2))
                .iter()
                .map(|(_, m)| m.type_name())
                .collect();
            assert!(kinds.iter().all(|k| *k == "REMOVED"), "{kinds:?}");
        }
    }

    #[test]
    fn our_own_putchunks_of_a_file_we_deleted_are_no_evidence() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.send_delete(vec![chunk(0).file_id], t0);
        actions(&mut p);
        p.handle(put(1, 0, 1), t0 + Duration::from_secs(1));
        assert!(!actions(&mut p)
            .iter()
            .any(|a| matches!(a, Action::CheckOwnId { .. })));
    }

    #[test]
    fn deleting_a_file_stops_its_backup_and_backing_it_up_again_stops_the_deletes() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.start_job(JobId(1), JobKind::Backup);
        p.backup_chunk(JobId(1), chunk(0), rd(2), vec![1], vec![], t0);
        actions(&mut p);
        p.send_delete(vec![chunk(0).file_id], t0);
        assert!(actions(&mut p).iter().any(|a| matches!(
            a,
            Action::BackedUp {
                outcome: BackupOutcome {
                    stopped: Some(Stopped::Deleted),
                    ..
                },
                ..
            }
        )));
        // Backed up again 300 ms later: the 6 DELETEs still to come are not sent.
        let t1 = t0 + Duration::from_millis(300);
        let sent = run(&mut p, t0, Duration::from_millis(300));
        assert_eq!(
            sent.iter()
                .filter(|(_, m)| m.type_name() == "DELETE")
                .count(),
            2
        );
        p.backup_chunk(JobId(1), chunk(0), rd(2), vec![1], vec![], t1);
        let later: Vec<&str> = run(&mut p, t1, Duration::from_secs(5))
            .iter()
            .map(|(_, m)| m.type_name())
            .collect();
        assert!(!later.contains(&"DELETE"), "{later:?}");
        assert!(actions(&mut p)
            .iter()
            .any(|a| matches!(a, Action::DeletesSent { .. })));
    }

    #[test]
    fn announcements_are_paced() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.announce((0..250).map(chunk).collect(), t0);
        let sent = run(&mut p, t0, Duration::from_secs(5));
        let per_tick: Vec<usize> = [0, 100, 200]
            .iter()
            .map(|ms| sent.iter().filter(|(d, _)| d.as_millis() == *ms).count())
            .collect();
        assert_eq!(per_tick, vec![100, 100, 50]);
        assert_eq!(actions(&mut p), vec![Action::Announced]);
    }

    #[test]
    fn ending_a_job_stops_its_chunks() {
        let t0 = Instant::now();
        let mut p = Peer::new(ME, 1);
        p.start_job(JobId(1), JobKind::Backup);
        p.backup_chunk(JobId(1), chunk(0), rd(1), vec![], vec![], t0);
        p.start_job(JobId(2), JobKind::Restore);
        p.fetch_chunk(JobId(2), chunk(1), Expect::bytes(0, sha256_hex(&[])), t0);
        p.end_job(JobId(1));
        p.end_job(JobId(2));
        assert_eq!(p.load().sending + p.load().fetching, 0);
        assert_eq!(p.poll_timeout(), None);
    }

    // ---- protocol 2.0 ------------------------------------------------------------------------

    /// A 2.0 peer (TCP port 7000, HELLO every minute), started at `t0`; its first HELLO taken.
    fn enhanced(seed: u64, t0: Instant) -> Peer {
        let mut p = Peer::new(ME, seed);
        p.enhance(Some(7000), HELLO_EVERY);
        p.start(t0);
        let hello = p.poll_transmit().unwrap();
        assert_eq!(
            (hello.kind, hello.version),
            (MessageKind::Hello, Version::V2_0)
        );
        p
    }

    fn stored(from: u32, no: u32) -> Message {
        msg(from, MessageKind::Stored { chunk: chunk(no) })
    }

    /// The `write` flag of the `Store` among the actions.
    fn store_write(a: &[Action]) -> Option<bool> {
        a.iter().find_map(|a| match a {
            Action::Store { write, .. } => Some(*write),
            _ => None,
        })
    }

    #[test]
    fn v2_stores_only_if_fewer_than_rd_peers_stored_during_its_wait() {
        let t0 = Instant::now();
        let (mut ahead, mut waited) = (0, 0);
        for seed in 0..40 {
            for storeds in 0..4u32 {
                let mut p = enhanced(seed, t0);
                // 9 peers heard: those with waits below 3/10 of the range write ahead.
                for id in 30..38 {
                    p.handle(msg(id, MessageKind::Hello), t0);
                }
                p.handle(put(20, 0, 2), t0);
                // A short wait writes at once (like 1.0); a long one waits first.
                let early = actions(&mut p);
                let wrote_ahead = store_write(&early).is_some();
                for from in 2..2 + storeds {
                    p.handle(stored(from, 0), t0);
                    p.handle(stored(from, 0), t0); // duplicates count once
                }
                run(&mut p, t0, MAX_REPLY_DELAY);
                let late: Vec<Action> = actions(&mut p)
                    .into_iter()
                    .filter(|a| matches!(a, Action::Store { .. }))
                    .collect();
                let write = match wrote_ahead {
                    true => {
                        ahead += 1;
                        assert!(late.is_empty());
                        true
                    }
                    false => {
                        waited += 1;
                        store_write(&late).unwrap()
                    }
                };
                assert_eq!(write, wrote_ahead || storeds < 2, "{storeds} STOREDs heard");
                // Kept and announced only if fewer than RD peers said STORED; a chunk held
                // already (the initiator lost our STORED) is announced whatever they said.
                let now = t0 + MAX_REPLY_DELAY;
                let put = if write { Put::Written } else { Put::Held };
                p.stored(&chunk(0), put, now);
                let sent = run(&mut p, now, MAX_REPLY_DELAY);
                let announced = sent
                    .iter()
                    .any(|(_, m)| matches!(m.kind, MessageKind::Stored { .. }));
                let dropped = actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) });
                assert_eq!(announced, !write || storeds < 2, "seed {seed}, {storeds}");
                assert_eq!(dropped, write && storeds >= 2, "seed {seed}, {storeds}");
            }
        }
        assert!(
            ahead > 0 && waited > 0,
            "both ways: {ahead} ahead, {waited} waited"
        );
    }

    #[test]
    fn v2_the_fewer_peers_heard_the_more_write_ahead_and_a_resent_putchunk_counts_known_holders() {
        let t0 = Instant::now();
        let mut p = enhanced(1, t0);
        // One peer heard: every wait writes ahead.
        p.handle(msg(30, MessageKind::Hello), t0);
        assert!(p.write_ahead_below(rd(2)) > MAX_REPLY_DELAY);
        for id in 31..40 {
            p.handle(msg(id, MessageKind::Hello), t0);
        }
        // 10 peers: the 3 shortest of 10 waits are expected below 3/11 of the range.
        assert_eq!(p.write_ahead_below(rd(2)), MAX_REPLY_DELAY * 3 / 11);
        // Peers 2 and 3 stored chunk 0 (the sender lost their STOREDs and sends it again).
        p.handle(stored(2, 0), t0);
        p.handle(stored(3, 0), t0);
        let t1 = t0 + Duration::from_secs(1);
        p.handle(put(20, 0, 2), t1);
        run(&mut p, t1, MAX_REPLY_DELAY);
        match store_write(&actions(&mut p)) {
            Some(true) => {
                // Written ahead: dropped at its instant.
                p.stored(&chunk(0), Put::Written, t1);
                run(&mut p, t1, MAX_REPLY_DELAY);
                assert!(actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) }));
            }
            other => assert_eq!(other, Some(false), "not written"),
        }
        // A REMOVED takes the peer out of what is remembered.
        let removed = MessageKind::Removed { chunk: chunk(1) };
        p.handle(stored(2, 1), t1);
        p.handle(stored(3, 1), t1);
        p.handle(msg(3, removed), t1);
        let known = p
            .storeds
            .get(&chunk(1))
            .map(|v| v.iter().map(|(p, _)| *p).collect());
        assert_eq!(known, Some(vec![PeerId(2)]));

        // Nor one heard before the file's DELETE (its copy went with it): the same version
        // backed up again right after is stored anew.
        let mut q = enhanced(1, t0);
        q.handle(stored(2, 0), t0);
        q.handle(stored(3, 0), t0);
        q.handle(delete(9, 0), t0 + Duration::from_millis(10));
        q.file_deleted(&chunk(0).file_id, false, t0 + Duration::from_millis(10));
        let t2 = t0 + Duration::from_secs(2);
        q.handle(put(9, 0, 2), t2);
        run(&mut q, t2, MAX_REPLY_DELAY);
        assert_eq!(store_write(&actions(&mut q)), Some(true));
        q.stored(&chunk(0), Put::Written, t2 + MAX_REPLY_DELAY);
        run(&mut q, t2, MAX_REPLY_DELAY * 2);
        assert!(!actions(&mut q).contains(&Action::DropHosted { chunk: chunk(0) }));

        // A holder not heard for three HELLOs (a lost one) is not counted.
        let mut p = Peer::new(ME, 1);
        p.enhance(Some(7000), Duration::from_secs(1));
        p.handle(stored(2, 0), t0);
        p.handle(stored(3, 0), t0);
        let t1 = t0 + Duration::from_millis(3500);
        p.handle(msg(3, MessageKind::Hello), t1 - Duration::from_secs(1));
        p.handle(put(20, 0, 2), t1);
        run(&mut p, t1, MAX_REPLY_DELAY);
        assert_eq!(store_write(&actions(&mut p)), Some(true));
        p.stored(&chunk(0), Put::Written, t1 + MAX_REPLY_DELAY);
        run(&mut p, t1, MAX_REPLY_DELAY * 2);
        assert!(!actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) }));
    }

    #[test]
    fn v2_a_copy_written_ahead_is_kept_or_dropped_at_its_random_instant() {
        let t0 = Instant::now();
        let seed = (0..100)
            .find(|s| {
                let mut p = enhanced(*s, t0);
                p.handle(put(20, 0, 2), t0);
                store_write(&actions(&mut p)).is_some()
            })
            .unwrap();
        for storeds in [1, 2] {
            let mut p = enhanced(seed, t0);
            p.handle(put(20, 0, 2), t0);
            actions(&mut p);
            // Written at once, before its instant: nothing said yet.
            p.stored(&chunk(0), Put::Written, t0);
            assert!(run(&mut p, t0, Duration::ZERO).is_empty());
            for from in 2..2 + storeds {
                p.handle(stored(from, 0), t0 + Duration::from_millis(1));
            }
            let sent = run(&mut p, t0, MAX_REPLY_DELAY);
            let dropped = actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) });
            assert_eq!(
                (sent.len(), dropped),
                if storeds < 2 { (1, false) } else { (0, true) }
            );
        }
    }

    /// A 2.0 peer with id `id` that decided to write chunk 0 (RD 2) at `t0 + MAX_REPLY_DELAY`.
    fn writing(id: u32, t0: Instant) -> Peer {
        let mut p = Peer::new(PeerId(id), 1);
        p.enhance(Some(7000), HELLO_EVERY);
        p.handle(put(20, 0, 2), t0);
        run(&mut p, t0, MAX_REPLY_DELAY);
        let a = actions(&mut p);
        assert!(a
            .iter()
            .any(|a| matches!(a, Action::Store { write: true, .. })));
        p
    }

    #[test]
    fn v2_a_copy_written_while_rd_peers_announced_theirs_goes_without_a_word() {
        let t0 = Instant::now();
        let now = t0 + MAX_REPLY_DELAY;
        // Peers 3 and 4 announce theirs while ours is written: ours is not needed (peer 4
        // heard only peer 3: it keeps its own).
        for (me, dropped) in [(9, true), (2, true), (4, false)] {
            let mut p = writing(me, t0);
            p.handle(stored(3, 0), now);
            p.handle(stored(4, 0), now);
            p.stored(&chunk(0), Put::Written, now);
            let a = actions(&mut p);
            assert_eq!(a.contains(&Action::DropHosted { chunk: chunk(0) }), dropped);
            let sent = run(&mut p, now, Duration::from_secs(1));
            assert_eq!(sent.is_empty(), dropped, "STORED only for a kept copy");
        }
        // At 1.0 the same peer keeps it.
        let mut p = Peer::new(PeerId(9), 1);
        p.handle(put(2, 0, 2), t0);
        p.handle(stored(3, 0), t0);
        p.handle(stored(4, 0), t0);
        p.stored(&chunk(0), Put::Written, t0);
        assert!(!actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) }));
        assert_eq!(run(&mut p, t0, MAX_REPLY_DELAY).len(), 1, "STORED");
    }

    #[test]
    fn v2_a_copy_announced_at_the_same_moment_as_rd_lower_ids_goes_with_removed() {
        let t0 = Instant::now();
        let now = t0 + MAX_REPLY_DELAY;
        let removeds = |sent: &[(Duration, Message)]| {
            sent.iter()
                .filter(|(_, m)| matches!(m.kind, MessageKind::Removed { .. }))
                .count()
        };
        let mut p = writing(9, t0);
        p.stored(&chunk(0), Put::Written, now);
        assert_eq!(run(&mut p, now, Duration::ZERO).len(), 1, "STORED");
        p.handle(stored(3, 0), now);
        p.handle(stored(12, 0), now); // a higher id does not count
        p.handle(stored(3, 0), now); // nor a duplicate
        assert!(actions(&mut p)
            .iter()
            .all(|a| !matches!(a, Action::DropHosted { .. })));
        p.handle(stored(4, 0), now + Duration::from_millis(50));
        assert!(actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) }));
        let sent = run(&mut p, now, Duration::from_secs(1));
        assert_eq!(removeds(&sent), 1 + REMOVED_GAPS.len());
        // Too late: the copy stays.
        let mut p = writing(9, t0);
        p.stored(&chunk(0), Put::Written, now);
        let later = now + TRIM_WINDOW + Duration::from_millis(1);
        p.handle(stored(3, 0), later);
        p.handle(stored(4, 0), later);
        assert!(actions(&mut p)
            .iter()
            .all(|a| !matches!(a, Action::DropHosted { .. })));
    }

    /// The actions asked for, but the 2.0 "a peer is back" ones.
    fn work(p: &mut Peer) -> Vec<Action> {
        let mut all = actions(p);
        all.retain(|a| !matches!(a, Action::PeerBack { .. }));
        all
    }

    /// A 2.0 GETCHUNK for chunk `no` that asks where to pull it.
    fn pull_getchunk(no: u32) -> Message {
        let mut get = msg(2, MessageKind::GetChunk { chunk: chunk(no) });
        get.version = Version::V2_0;
        get.extra_lines.push(PULL_LINE.into());
        get
    }

    #[test]
    fn v2_a_getchunk_never_makes_a_holder_connect_anywhere() {
        let t0 = Instant::now();
        let body = vec![5u8; 100];
        let hash = sha256_hex(&body);
        let from: SocketAddr = "127.0.0.9:4701".parse().unwrap();
        // Asked where to pull it: a body-less 2.0 CHUNK on MDR naming our port (7000), nothing
        // read, no connection.
        let mut p = enhanced(2, t0);
        p.handle_from(pull_getchunk(0), Some(from), t0);
        assert_eq!(work(&mut p), [Action::LookupHosted { chunk: chunk(0) }]);
        p.hosted(&chunk(0), Some((100, hash.clone())), t0);
        let sent = run(&mut p, t0, MAX_REPLY_DELAY);
        assert!(
            work(&mut p).is_empty(),
            "nothing to read, nowhere to connect"
        );
        match &sent[..] {
            [(_, m)] => {
                assert_eq!(m.version, Version::V2_0);
                assert_eq!(m.tcp_port(), Some(7000));
                let bodyless = MessageKind::Chunk {
                    chunk: chunk(0),
                    body: Vec::new(),
                };
                assert_eq!(m.kind, bodyless);
            }
            other => panic!("{other:?}"),
        }
        // The first 2.0 design's GETCHUNK ("deliver it to my TCP port"), forged or not, gets a
        // multicast CHUNK like a 1.0 one: never a connection to the port it names.
        let mut get = msg(2, MessageKind::GetChunk { chunk: chunk(1) });
        get.version = Version::V2_0;
        get.extra_lines.push("TCP 5000".into());
        let mut p = enhanced(2, t0);
        p.handle_from(get, Some(from), t0);
        p.hosted(&chunk(1), Some((100, hash.clone())), t0);
        run(&mut p, t0, MAX_REPLY_DELAY);
        assert_eq!(
            work(&mut p),
            [
                Action::LookupHosted { chunk: chunk(1) },
                Action::ReadHosted { chunk: chunk(1) }
            ]
        );
        p.serve(chunk(1), Some(body.clone()), t0 + MAX_REPLY_DELAY);
        assert!(work(&mut p).is_empty());
        let sent = p.poll_transmit().unwrap();
        assert_eq!(sent.version, Version::V1_0);
        assert_eq!(
            sent.kind,
            MessageKind::Chunk {
                chunk: chunk(1),
                body: body.clone()
            }
        );

        // A 1.0 peer answers a pull GETCHUNK on MDR as any other.
        let mut p = Peer::new(ME, 2);
        p.handle_from(pull_getchunk(0), Some(from), t0);
        p.hosted(&chunk(0), Some((100, hash)), t0);
        run(&mut p, t0, MAX_REPLY_DELAY);
        p.serve(chunk(0), Some(body), t0 + MAX_REPLY_DELAY);
        assert_eq!(p.poll_transmit().unwrap().version, Version::V1_0);
    }

    #[test]
    fn v2_a_reply_keeps_what_its_first_getchunk_asked() {
        let t0 = Instant::now();
        let hash = sha256_hex(&[5u8; 100]);
        let first: SocketAddr = "127.0.0.9:4701".parse().unwrap();
        let attacker: SocketAddr = "127.0.0.66:4701".parse().unwrap();
        // A pull asked first: a plain GETCHUNK after it (from anyone) does not turn the reply
        // into a multicast body.
        let mut p = enhanced(2, t0);
        p.handle_from(pull_getchunk(0), Some(first), t0);
        p.handle_from(
            msg(3, MessageKind::GetChunk { chunk: chunk(0) }),
            Some(attacker),
            t0,
        );
        p.hosted(&chunk(0), Some((100, hash.clone())), t0);
        let sent = run(&mut p, t0, MAX_REPLY_DELAY);
        assert_eq!(work(&mut p), [Action::LookupHosted { chunk: chunk(0) }]);
        assert!(matches!(&sent[..], [(_, m)] if m.tcp_port() == Some(7000)));
        // A plain one first: a later pull request does not silence it for the first requester.
        let mut p = enhanced(2, t0);
        p.handle_from(
            msg(3, MessageKind::GetChunk { chunk: chunk(0) }),
            Some(first),
            t0,
        );
        p.handle_from(pull_getchunk(0), Some(attacker), t0);
        p.hosted(&chunk(0), Some((100, hash)), t0);
        let mut bodyless = msg(
            4,
            MessageKind::Chunk {
                chunk: chunk(0),
                body: Vec::new(),
            },
        );
        bodyless.version = Version::V2_0;
        p.handle(bodyless, t0);
        run(&mut p, t0, MAX_REPLY_DELAY);
        assert!(work(&mut p).contains(&Action::ReadHosted { chunk: chunk(0) }));
    }

    #[test]
    fn v2_a_bodyless_chunk_silences_only_the_replies_to_a_pull_getchunk() {
        let t0 = Instant::now();
        let hash = sha256_hex(&[5u8; 100]);
        let from: SocketAddr = "127.0.0.9:4701".parse().unwrap();
        for pull in [true, false] {
            let mut p = enhanced(3, t0);
            let get = match pull {
                true => pull_getchunk(0),
                false => msg(2, MessageKind::GetChunk { chunk: chunk(0) }),
            };
            p.handle_from(get, Some(from), t0);
            p.hosted(&chunk(0), Some((100, hash.clone())), t0);
            let mut bodyless = msg(
                3,
                MessageKind::Chunk {
                    chunk: chunk(0),
                    body: Vec::new(),
                },
            );
            bodyless.version = Version::V2_0;
            bodyless.extra_lines.push("TCP 6000".into());
            p.handle_from(bodyless, Some(from), t0);
            let sent = run(&mut p, t0, MAX_REPLY_DELAY);
            let read = work(&mut p).contains(&Action::ReadHosted { chunk: chunk(0) });
            assert_eq!(read, !pull, "silent only for a pull getchunk");
            assert!(sent.is_empty(), "{sent:?}");
        }
    }

    #[test]
    fn v2_a_fetch_asks_to_pull_first_pulls_from_holders_that_answer_then_asks_on_multicast() {
        let t0 = Instant::now();
        let body = vec![3u8; 50];
        let mut p = enhanced(4, t0);
        p.start_job(JobId(1), JobKind::Restore);
        work(&mut p);
        p.fetch_chunk(JobId(1), chunk(0), Expect::bytes(50, sha256_hex(&body)), t0);
        let sent = run(&mut p, t0, Duration::from_secs(8));
        let pulls: Vec<bool> = sent.iter().map(|(_, m)| m.has_line(PULL_LINE)).collect();
        let mut expected = vec![true; TCP_GETCHUNK_SENDS as usize];
        expected.resize(sent.len(), false);
        assert!(sent.len() > TCP_GETCHUNK_SENDS as usize);
        assert_eq!(pulls, expected);
        // Holders say where to pull it: we connect to the address each said it from, at most
        // MAX_PULLS_PER_FETCH times whatever the number of such CHUNKs (forged ones included).
        let holder = |n: u8, port: Option<u16>| {
            let mut m = msg(
                2,
                MessageKind::Chunk {
                    chunk: chunk(0),
                    body: Vec::new(),
                },
            );
            m.version = Version::V2_0;
            if let Some(port) = port {
                m.extra_lines.push(format!("TCP {port}"));
            }
            (m, SocketAddr::from(([127, 0, 0, n], 4000)))
        };
        let (m, from) = holder(7, None);
        p.handle_from(m, Some(from), t0);
        assert!(
            work(&mut p).is_empty(),
            "no port named: nowhere to pull from"
        );
        let mut pulled = Vec::new();
        for n in 1..=20 {
            let (m, from) = holder(n, Some(6000 + u16::from(n)));
            p.handle_from(m, Some(from), t0);
            pulled.extend(work(&mut p));
        }
        let want: Vec<Action> = (1..=MAX_PULLS_PER_FETCH as u8)
            .map(|n| Action::Pull {
                from: SocketAddr::from(([127, 0, 0, n], 6000 + u16::from(n))),
                chunk: chunk(0),
            })
            .collect();
        assert_eq!(pulled, want);
        // Junk pulled is ignored; the right bytes end the fetch.
        let chunk_msg = |body: Vec<u8>| {
            msg(
                2,
                MessageKind::Chunk {
                    chunk: chunk(0),
                    body,
                },
            )
        };
        p.handle_tcp(chunk_msg(vec![4u8; 50]));
        assert!(work(&mut p).is_empty());
        p.handle_tcp(chunk_msg(body.clone()));
        assert!(work(&mut p)
            .iter()
            .any(|a| matches!(a, Action::Fetched { body: Some(b), .. } if *b == body)));
        // A chunk we do not fetch is never pulled.
        let (m, from) = holder(9, Some(6009));
        p.handle_from(m, Some(from), t0);
        assert!(work(&mut p).is_empty());
    }

    #[test]
    fn a_getchunk_flood_is_answered_less_and_less_and_within_the_mdr_budget() {
        // A LAN host learned 301 chunk ids and asks for each every second for 60 s (the
        // attack: 209 KB asked, 115 MB sent on MDR in 6 s, before the backoff and the budget).
        let t0 = Instant::now();
        let body = vec![5u8; crate::protocol::CHUNK_SIZE];
        let hash = sha256_hex(&body);
        let from: SocketAddr = "127.0.0.66:4000".parse().unwrap();
        let mut p = Peer::new(ME, 4);
        let mut sent_at: Vec<Duration> = Vec::new();
        for ms in (0..60_000u64).step_by(50) {
            let now = t0 + Duration::from_millis(ms);
            p.handle_timeout(now);
            if ms % 1000 == 0 {
                for no in 0..301 {
                    p.handle_from(
                        msg(3, MessageKind::GetChunk { chunk: chunk(no) }),
                        Some(from),
                        now,
                    );
                }
            }
            for a in actions(&mut p) {
                match a {
                    Action::LookupHosted { chunk } => {
                        p.hosted(&chunk, Some((body.len() as u64, hash.clone())), now)
                    }
                    Action::ReadHosted { chunk } => p.serve(chunk, Some(body.clone()), now),
                    _ => {}
                }
            }
            sent_at.extend(std::iter::from_fn(|| p.poll_transmit()).map(|_| now - t0));
        }
        let bytes_between = |a: u64, b: u64| {
            let n = sent_at
                .iter()
                .filter(|t| t.as_secs() >= a && t.as_secs() < b)
                .count();
            (n * body.len()) as u64
        };
        let per_source = super::super::serve::MDR_BYTES_PER_SEC_PER_SOURCE;
        // Never more than the per-source rate (plus one burst) in any 10 s.
        for a in (0..60).step_by(10) {
            assert!(bytes_between(a, a + 10) <= 10 * per_source + super::super::serve::MDR_BURST);
        }
        // Once the backoff has grown, a small fraction of the ~1.2 GB asked for each minute.
        let total = bytes_between(0, 60);
        assert!(total < 301 * 12 * body.len() as u64, "{total}");
        assert!(
            bytes_between(40, 60) < 301 * 2 * body.len() as u64,
            "{}",
            bytes_between(40, 60)
        );
        // Yet every chunk was answered at least once.
        assert!(sent_at.len() >= 301);
    }

    #[test]
    fn v2_deleted_answers_a_burst_of_deletes_once_a_second() {
        let t0 = Instant::now();
        let mut p = enhanced(5, t0);
        let file_id = chunk(0).file_id;
        let deleteds = |p: &mut Peer, now| {
            run(p, now, Duration::ZERO)
                .into_iter()
                .filter(|(_, m)| matches!(m.kind, MessageKind::Deleted { .. }))
                .count()
        };
        // Holding nothing of it: DELETED (it holds nothing now), once a second at most.
        p.handle(delete(2, 0), t0);
        p.file_deleted(&file_id, false, t0);
        assert_eq!(deleteds(&mut p, t0), 1);
        p.file_deleted(&file_id, false, t0);
        assert_eq!(deleteds(&mut p, t0), 0);
        // A holder that just freed chunks answers at once.
        p.file_deleted(&file_id, true, t0);
        assert_eq!(deleteds(&mut p, t0), 1);
        let t1 = t0 + Duration::from_millis(300);
        p.file_deleted(&file_id, false, t1);
        assert_eq!(deleteds(&mut p, t1), 0);
        let t2 = t0 + DELETED_EVERY;
        p.file_deleted(&file_id, false, t2);
        assert_eq!(
            deleteds(&mut p, t2),
            1,
            "the home peer may have lost the first"
        );
        // At 1.0: never.
        let mut p = Peer::new(ME, 5);
        p.file_deleted(&file_id, true, t0);
        assert_eq!(deleteds(&mut p, t0), 0);
    }

    #[test]
    fn v2_a_peer_is_back_at_its_hello_its_first_word_or_after_a_silence() {
        let t0 = Instant::now();
        let mut p = enhanced(6, t0);
        let backs = |p: &mut Peer| {
            actions(p)
                .into_iter()
                .filter(|a| matches!(a, Action::PeerBack { peer: PeerId(2) }))
                .count()
        };
        p.handle(stored(2, 0), t0);
        assert_eq!(backs(&mut p), 1, "first heard since we started");
        p.handle(stored(2, 1), t0 + BACK_EVERY / 4);
        assert_eq!(backs(&mut p), 0);
        let hello = msg(2, MessageKind::Hello);
        p.handle(hello.clone(), t0 + BACK_EVERY / 2);
        assert_eq!(backs(&mut p), 0, "at most once per BACK_EVERY");
        p.handle(hello, t0 + BACK_EVERY);
        assert_eq!(backs(&mut p), 1);
        let later = t0 + BACK_EVERY + AWAY_AFTER;
        p.handle(stored(2, 2), later);
        assert_eq!(backs(&mut p), 1, "after a silence");
        // HELLO goes out periodically.
        let hellos = run(&mut p, t0, HELLO_EVERY * 3)
            .into_iter()
            .filter(|(_, m)| m.kind == MessageKind::Hello)
            .count();
        assert_eq!(hellos, 3);
        // A DELETED is an acknowledgement for the catalog; the DELETEs it missed go again.
        let file_id = chunk(0).file_id;
        let deleted = MessageKind::Deleted {
            file_id: file_id.clone(),
        };
        p.handle(msg(2, deleted), later);
        assert!(actions(&mut p).contains(&Action::DeleteAcked {
            file_id: file_id.clone(),
            peer: PeerId(2)
        }));
        p.redelete(vec![file_id], later);
        let sent = run(&mut p, later, Duration::from_secs(1));
        let deletes = sent
            .iter()
            .filter(|(_, m)| matches!(m.kind, MessageKind::Delete { .. }))
            .count();
        assert_eq!(deletes, 1 + REDELETE_GAPS.len());
    }

    #[test]
    fn v2_a_rebackup_left_to_another_holder_is_looked_at_again() {
        let t0 = Instant::now();
        let mut p = enhanced(7, t0);
        let role = Role::Hosted { desired_rd: 3 };
        p.removed(&chunk(0), role, 2, t0);
        // Another holder starts first (then dies midway).
        p.handle(put(3, 0, 3), t0);
        run(&mut p, t0, RECHECK_AFTER + MAX_REPLY_DELAY * 2);
        let a = actions(&mut p);
        assert!(!a
            .iter()
            .any(|a| matches!(a, Action::ReadForRebackup { .. })));
        assert!(a.contains(&Action::Recheck { chunk: chunk(0) }));
        // Looked at again: still below, so this holder backs it up now.
        let now = t0 + RECHECK_AFTER + MAX_REPLY_DELAY * 2;
        p.removed(&chunk(0), role, 2, now);
        run(&mut p, now, MAX_REPLY_DELAY);
        assert!(actions(&mut p)
            .iter()
            .any(|a| matches!(a, Action::ReadForRebackup { .. })));
        // At 1.0 nobody looks again.
        let mut p = Peer::new(ME, 7);
        p.removed(&chunk(0), role, 2, t0);
        p.handle(put(3, 0, 3), t0);
        run(&mut p, t0, RECHECK_AFTER * 2);
        assert!(!actions(&mut p).contains(&Action::Recheck { chunk: chunk(0) }));
    }

    #[test]
    fn v2_a_new_peers_hello_is_answered_with_ours_once_a_second_at_most() {
        let t0 = Instant::now();
        let mut p = enhanced(8, t0);
        let hellos = |p: &mut Peer, now| {
            run(p, now, Duration::ZERO)
                .into_iter()
                .filter(|(_, m)| m.kind == MessageKind::Hello)
                .count()
        };
        p.handle(msg(2, MessageKind::Hello), t0);
        assert_eq!(hellos(&mut p, t0), 1);
        p.handle(msg(3, MessageKind::Hello), t0);
        p.handle(msg(2, MessageKind::Hello), t0 + BACK_EVERY);
        assert_eq!(hellos(&mut p, t0), 0, "a flood of new ids: one a second");
        p.handle(msg(4, MessageKind::Hello), t0 + BACK_EVERY);
        assert_eq!(hellos(&mut p, t0 + BACK_EVERY), 1);
        // A 1.0 peer says nothing.
        let mut p = Peer::new(ME, 8);
        p.handle(msg(2, MessageKind::Hello), t0);
        assert_eq!(hellos(&mut p, t0), 0);
    }
}
