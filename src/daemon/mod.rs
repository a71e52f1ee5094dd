//! The running peer: wires the catalog, the chunk store and the channels to the engine's state
//! machines. `Node` holds what every task shares; `peer.rs` answers other peers' messages,
//! `jobs.rs` carries out the commands that arrive on the control socket (`control.rs`).

mod control;
pub(crate) mod jobs;
mod peer;

pub use control::serve as serve_control;

use nix::fcntl::{Flock, FlockArg};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, Semaphore};

use crate::config::Config;
use crate::engine::lru::LruMap;
use crate::engine::serve::{PendingReply, ReplyLimit, MIN_CHUNK_INTERVAL};
use crate::net::{ChannelSocket, Channels, MAX_DATAGRAM};
use crate::protocol::auth::{self, LanKey};
use crate::protocol::{ChunkId, Message, MessageKind, PeerId};
use crate::store::catalog::MAX_HOLDERS;
use crate::store::{Catalog, CatalogHandle, ChunkStore};

/// The random wait before STORED, CHUNK and a re-backup: uniform in 0..=400 ms.
pub const MAX_REPLY_DELAY: Duration = Duration::from_millis(400);
/// PUTCHUNKs being stored at once; beyond this a PUTCHUNK is dropped (its sender resends), so
/// a flood cannot take memory without bound.
const MAX_CONCURRENT_STORES: usize = 128;
/// Chunks remembered by each "seen lately" map (PUTCHUNKs seen, CHUNKs sent, expected CHUNK
/// bodies): the least recently written entry makes room, so a flood never stops the recording.
const MAX_SEEN_ENTRIES: usize = 8192;
/// STOREDs waiting to be recorded; beyond this a STORED is dropped and counted (its sender's
/// resends and the next STORED make up for it), so a flood cannot take memory without bound.
const STORED_QUEUE: usize = 4096;
/// Most STOREDs recorded in one catalog call.
const MAX_STORED_BATCH: usize = 1024;
/// GETCHUNKs, DELETEs and REMOVEDs being handled at once (each needs the catalog); beyond this
/// one is dropped and counted.
const MAX_DATAGRAM_TASKS: usize = 256;

pub fn random_reply_delay() -> Duration {
    Duration::from_millis(rand::random::<u64>() % (MAX_REPLY_DELAY.as_millis() as u64 + 1))
}

/// Everything the peer's tasks share.
pub struct Node {
    pub id: PeerId,
    /// The state folder's lock, held while the peer runs.
    _lock: Flock<std::fs::File>,
    /// Replaced as a whole on reload; readers take a snapshot with `config()`.
    config: std::sync::RwLock<Arc<Config>>,
    /// The LAN key (network.lan_key_file), if any: signs every datagram sent, and every
    /// datagram received must carry its tag. Replaced on reload.
    lan_key: std::sync::RwLock<Option<LanKey>>,
    pub catalog: CatalogHandle,
    pub store: Arc<ChunkStore>,
    pub net: Channels,
    transient: Mutex<Transient>,
    /// Paths the work queue is backing up right now (for `state`).
    pub in_progress: Mutex<std::collections::BTreeSet<std::path::PathBuf>>,
    /// Watched folders that are not there (missing, or their disk not mounted), and why: kept
    /// by the service's watcher, shown in `state`.
    pub unavailable: Mutex<std::collections::BTreeMap<std::path::PathBuf, String>>,
    store_permits: Arc<Semaphore>,
    datagram_permits: Arc<Semaphore>,
    /// To the task that records STOREDs in batches.
    stored_tx: mpsc::Sender<(ChunkId, PeerId)>,
    next_sub: AtomicU64,
    pub counters: Counters,
    /// Another peer of the LAN seems to use our id.
    pub duplicate_id: Mutex<DuplicateId>,
    /// Woken when a chunk of ours fell below its desired RD (REMOVED): the service re-backs up.
    pub repair: tokio::sync::Notify,
    /// The background workers and what each is doing (for `state`).
    pub workers: crate::workers::Workers,
}

#[derive(Default)]
pub struct Counters {
    pub malformed: AtomicU64,
    pub dropped_busy: AtomicU64,
    /// Datagrams dropped because they carried no valid LAN key tag (or a stale one).
    pub unauthenticated: AtomicU64,
    /// STOREDs, GETCHUNKs, DELETEs and REMOVEDs dropped because the work queued for the catalog
    /// was full.
    pub dropped_queue: AtomicU64,
    /// Unix seconds of the last look at a PUTCHUNK carrying our own id (one a second at most).
    pub own_id_checked: AtomicU64,
}

/// What this peer knows of another peer using its id (a copied config).
#[derive(Debug, Default)]
pub struct DuplicateId {
    /// The last evidence: a PUTCHUNK with our id for a file that is not ours.
    pub evidence: Option<(Instant, crate::protocol::FileId)>,
    /// When it was last logged (at ERROR, once a minute at most).
    pub logged: Option<Instant>,
}

/// Protocol transients: who waits for which reply, what was seen lately. Never a second ledger:
/// what must survive a restart is in the catalog.
struct Transient {
    /// Backups waiting for STOREDs of a chunk.
    stored_subs: Subs<PeerId>,
    /// Restores waiting for a CHUNK body.
    chunk_subs: Subs<Vec<u8>>,
    /// Length and hash of chunks being restored (from the catalog), so that only a good copy
    /// reaches the restore: a flood of junk CHUNKs cannot crowd it out of its small queue.
    chunk_expect: LruMap<ChunkId, (u64, String)>,
    /// Chunks being written to disk.
    storing: HashMap<ChunkId, Storing>,
    /// CHUNK replies scheduled, so a repeated GETCHUNK does not schedule a second one.
    replying: HashMap<ChunkId, PendingReply>,
    /// When this peer last sent a CHUNK of each chunk (one per chunk per second).
    chunk_sent: ReplyLimit<ChunkId>,
    /// Re-backups (after a REMOVED) scheduled or running.
    rebacking: HashSet<ChunkId>,
    putchunk_seen: LruMap<ChunkId, Instant>,
    /// When a DELETE of a file was last heard: a STORED not yet sent for it is not sent.
    delete_seen: LruMap<crate::protocol::FileId, Instant>,
}

impl Default for Transient {
    fn default() -> Transient {
        Transient {
            stored_subs: Subs::default(),
            chunk_subs: Subs::default(),
            chunk_expect: LruMap::new(MAX_SEEN_ENTRIES),
            storing: HashMap::new(),
            replying: HashMap::new(),
            chunk_sent: ReplyLimit::new(MAX_SEEN_ENTRIES, MIN_CHUNK_INTERVAL),
            rebacking: HashSet::new(),
            putchunk_seen: LruMap::new(MAX_SEEN_ENTRIES),
            delete_seen: LruMap::new(MAX_SEEN_ENTRIES),
        }
    }
}

/// A chunk being written to disk.
#[derive(Default)]
struct Storing {
    /// STOREDs heard meanwhile (recorded once written), at most `MAX_HOLDERS`.
    heard: Vec<PeerId>,
    /// A DELETE of its file arrived meanwhile: remove it once written, send no STORED.
    deleted: bool,
}

impl Storing {
    fn heard(&mut self, peer: PeerId) {
        if self.heard.len() < MAX_HOLDERS as usize && !self.heard.contains(&peer) {
            self.heard.push(peer);
        }
    }
}

fn remember(map: &mut LruMap<ChunkId, Instant>, chunk: &ChunkId, now: Instant) {
    map.insert(chunk.clone(), now);
}

fn seen_since(map: &LruMap<ChunkId, Instant>, chunk: &ChunkId, since: Instant) -> bool {
    map.get(chunk).is_some_and(|t| *t >= since)
}

type Subs<T> = HashMap<ChunkId, Vec<(u64, mpsc::Sender<T>)>>;

/// A wait for replies about one chunk; unsubscribes when dropped, however the waiting task ends.
pub(crate) struct Subscription<'a, T> {
    node: &'a Node,
    chunk: ChunkId,
    id: u64,
    pub rx: mpsc::Receiver<T>,
    pick: fn(&mut Transient) -> &mut Subs<T>,
}

impl<T> Drop for Subscription<'_, T> {
    fn drop(&mut self) {
        let mut t = self.node.transient();
        let map = (self.pick)(&mut t);
        if let Some(list) = map.get_mut(&self.chunk) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.chunk);
            }
        }
    }
}

/// Hands a reply to every subscriber of the chunk; a full subscriber misses it (the protocol's
/// retransmissions make up for it).
fn publish<T: Clone>(subs: &Subs<T>, chunk: &ChunkId, value: T) {
    for (_, tx) in subs.get(chunk).into_iter().flatten() {
        let _ = tx.try_send(value.clone());
    }
}

impl Node {
    /// The evidence that another peer uses our id, if seen in the last ten minutes.
    pub fn duplicate_id_warning(&self) -> Option<String> {
        let d = self.duplicate_id.lock().unwrap_or_else(|e| e.into_inner());
        let (at, file_id) = d.evidence.as_ref()?;
        (at.elapsed() < Duration::from_secs(600)).then(|| {
            format!(
                "another peer uses this peer's id {}: a PUTCHUNK with id {} came for file {} that is not this peer's ({}s ago); give each peer its own peer.id",
                self.id,
                self.id,
                file_id,
                at.elapsed().as_secs()
            )
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    pub fn lan_key(&self) -> Option<LanKey> {
        self.lan_key
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_lan_key(&self, key: Option<LanKey>) {
        *self.lan_key.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    fn transient(&self) -> MutexGuard<'_, Transient> {
        // Every update under this lock is a single map operation: a poisoned lock is consistent.
        self.transient.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe<T>(
        &self,
        chunk: &ChunkId,
        capacity: usize,
        pick: fn(&mut Transient) -> &mut Subs<T>,
    ) -> Subscription<'_, T> {
        let (tx, rx) = mpsc::channel(capacity);
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        pick(&mut self.transient())
            .entry(chunk.clone())
            .or_default()
            .push((id, tx));
        Subscription {
            node: self,
            chunk: chunk.clone(),
            id,
            rx,
            pick,
        }
    }

    /// Waits for the STOREDs of a chunk being backed up.
    pub(crate) fn subscribe_stored(&self, chunk: &ChunkId) -> Subscription<'_, PeerId> {
        self.subscribe(chunk, 64, |t| &mut t.stored_subs)
    }

    /// Waits for the CHUNK bodies of a chunk being restored: only bodies of the `len` bytes and
    /// SHA-256 `hash` the home peer recorded are handed over (a bogus CHUNK cannot take the
    /// place of a good one).
    pub(crate) fn subscribe_chunk(
        &self,
        chunk: &ChunkId,
        len: u64,
        hash: &str,
    ) -> Subscription<'_, Vec<u8>> {
        self.transient()
            .chunk_expect
            .insert(chunk.clone(), (len, hash.to_owned()));
        self.subscribe(chunk, 4, |t| &mut t.chunk_subs)
    }

    /// A place among the tasks that handle datagrams; None (counted) when all are taken.
    fn datagram_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.datagram_permits.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    /// Encodes and sends a message on its channel. A send error is logged, not fatal: the
    /// protocol's retransmissions cover a lost datagram.
    pub async fn send(&self, kind: MessageKind) {
        let msg = Message::new(self.id, kind);
        self.send_encoded(msg.channel(), &msg.encode(), msg.type_name())
            .await;
    }

    /// Sends an encoded message, signed with the LAN key (at each send: a resent PUTCHUNK gets
    /// a fresh time).
    pub async fn send_encoded(&self, channel: crate::protocol::Channel, bytes: &[u8], what: &str) {
        let signed;
        let bytes = match self.lan_key() {
            Some(key) => {
                signed = auth::sign(&key, bytes, unix_now());
                &signed[..]
            }
            None => bytes,
        };
        if let Err(e) = self.net.send(channel, bytes).await {
            tracing::warn!("sending {what} on {channel:?} failed: {e}");
        }
    }
}

/// Seconds since the Unix epoch by the system clock (the LAN key's tags carry them).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How the daemon starts: normally, or re-indexing the chunk files into a lost catalog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// `peerstashd --rebuild-catalog`: record every chunk file of the store in the catalog
    /// (hash, size) and announce it with STORED, instead of refusing a catalog that is missing.
    pub rebuild_catalog: bool,
}

/// Takes the state folder, opens and checks the catalog and the store, binds the control socket,
/// and only then joins the channels and starts listening: every refusal comes before the peer
/// is heard on the LAN. `lan_key` is the key `config.network.lan_key_file` names, read by the
/// caller. Returns the peer and its control socket, to be served with `serve_control`.
pub async fn start(
    config: Config,
    lan_key: Option<LanKey>,
    options: StartOptions,
) -> anyhow::Result<(Arc<Node>, tokio::net::UnixListener)> {
    let state_dir = config.peer.state_dir.clone();
    std::fs::create_dir_all(&state_dir).with_context(|| {
        format!(
            "cannot create the state directory {} (peer.state_dir): check its permissions",
            state_dir.display()
        )
    })?;
    // The state folder is the daemon's alone (the group is meant for the control socket only):
    // catalog and hosted chunks are not the group's to read, delete or overwrite.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "cannot make the state directory {} private (mode 0700) as user {}: run peerstashd as root, or give it a peer.state_dir of its own",
                    state_dir.display(),
                    nix::unistd::geteuid()
                )
            },
        )?;
    }
    let lock = lock_state_dir(&state_dir)?;
    let db = state_dir.join("catalog.db");
    let chunks = state_dir.join("chunks");
    // A catalog that is missing or empty next to a store that holds chunks: it was lost, and
    // starting on an empty one would throw the chunks away. The admin decides.
    let new_catalog = std::fs::metadata(&db).map_or(true, |m| m.len() == 0);
    let holds_chunks = ChunkStore::open(chunks.clone(), 0, 0)
        .and_then(|s| s.holds_chunks())
        .with_context(|| format!("cannot read the chunk store {}", chunks.display()))?;
    if new_catalog && holds_chunks && !options.rebuild_catalog {
        anyhow::bail!(
            "the catalog {} is missing or empty, but the chunk store {} holds chunks: run `peerstashd --rebuild-catalog` once to re-index them (they are announced to their home peers), or move {} away to discard them",
            db.display(),
            chunks.display(),
            chunks.display()
        );
    }
    writable(&db)?;
    let catalog = Catalog::open(&db).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the catalog {}: {e}; if it is damaged, move it away and run `peerstashd --rebuild-catalog`",
            db.display()
        )
    })?;
    catalog.quick_check().map_err(|e| {
        anyhow::anyhow!(
            "the catalog {} is damaged ({e}): stop here, keep a copy of it, then move it away and run `peerstashd --rebuild-catalog` to re-index the hosted chunks (the list of this peer's own backups is lost with it)",
            db.display()
        )
    })?;
    let catalog = CatalogHandle::start(catalog);
    let quota = jobs::effective_quota(&catalog, config.storage.quota).await?;
    let store = Arc::new(
        ChunkStore::open(chunks, 0, quota)
            .with_context(|| format!("cannot open the chunk store in {}", state_dir.display()))?,
    );
    if options.rebuild_catalog {
        peer::rebuild_catalog(&catalog, &store, PeerId(config.peer.id)).await?;
    }
    let listener = control::bind(&config.peer.control_socket).await?;
    let (stored_tx, stored_rx) = mpsc::channel(STORED_QUEUE);
    tokio::spawn(record_stored(catalog.clone(), stored_rx));
    let net = Channels::open(
        config.network.interface,
        config.network.ttl,
        config.network.mc,
        config.network.mdb,
        config.network.mdr,
    )?;
    let node = Arc::new(Node {
        id: PeerId(config.peer.id),
        _lock: lock,
        config: std::sync::RwLock::new(Arc::new(config)),
        lan_key: std::sync::RwLock::new(lan_key),
        catalog,
        store,
        net,
        transient: Mutex::new(Transient::default()),
        in_progress: Mutex::new(Default::default()),
        unavailable: Mutex::new(Default::default()),
        store_permits: Arc::new(Semaphore::new(MAX_CONCURRENT_STORES)),
        datagram_permits: Arc::new(Semaphore::new(MAX_DATAGRAM_TASKS)),
        stored_tx,
        next_sub: AtomicU64::new(0),
        counters: Counters::default(),
        duplicate_id: Mutex::new(DuplicateId::default()),
        repair: tokio::sync::Notify::new(),
        workers: Default::default(),
    });
    let lost = peer::reconcile_store(&node).await?;
    for ch in node.net.all() {
        tokio::spawn(receive_loop(node.clone(), ch.clone()));
    }
    tokio::spawn(peer::announce_rebuilt(node.clone()));
    // What the last run left unfinished: peers told of chunks lost from disk, over-quota chunks
    // reclaimed, DELETEs not yet sent.
    for chunk in lost {
        jobs::send_removed(&node, chunk);
    }
    tokio::spawn(jobs::reclaim_to_quota(node.clone()));
    tokio::spawn(jobs::send_pending_deletes(node.clone()));
    Ok((node, listener))
}

/// One daemon per state folder: an exclusive lock on `<state_dir>/lock`, held as long as the
/// daemon runs. The kernel drops it when the process ends, even by `kill -9`: never stale.
fn lock_state_dir(state_dir: &std::path::Path) -> anyhow::Result<Flock<std::fs::File>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            // Who holds it, for the message another start gives.
            lock.set_len(0)?;
            writeln!(&*lock, "{}", std::process::id())?;
            Ok(lock)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "another peerstashd (pid {}) is already running on {} (peer.state_dir): stop it, or give this one a state_dir and control_socket of its own",
                pid.trim(),
                state_dir.display()
            )
        }
        Err((_, e)) => anyhow::bail!("cannot lock {}: {e}", path.display()),
    }
}

/// Fails with the cause (read-only filesystem, permission denied) when the catalog cannot be
/// opened for writing: SQLite itself only says "unable to open database file".
fn writable(db: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)
        .map(drop)
        .map_err(|e| {
            let why = match e.raw_os_error() {
                Some(nix::libc::EROFS) => "the filesystem is read-only; peer.state_dir must be on a writable disk".to_owned(),
                Some(nix::libc::EACCES) | Some(nix::libc::EPERM) => format!(
                    "permission denied for user {}; run peerstashd as root (or give it the state folder)",
                    nix::unistd::geteuid()
                ),
                _ => "check peer.state_dir".to_owned(),
            };
            anyhow::anyhow!("cannot open the catalog {} for writing: {e}: {why}", db.display())
        })
}

/// Records the STOREDs heard, many per catalog call: what a burst costs is one call per batch,
/// not one per datagram.
async fn record_stored(catalog: CatalogHandle, mut rx: mpsc::Receiver<(ChunkId, PeerId)>) {
    let mut batch = Vec::with_capacity(MAX_STORED_BATCH);
    while rx.recv_many(&mut batch, MAX_STORED_BATCH).await > 0 {
        let mut by_chunk: HashMap<ChunkId, Storing> = HashMap::new();
        for (chunk, peer) in batch.drain(..) {
            by_chunk.entry(chunk).or_default().heard(peer);
        }
        let r = catalog
            .call(move |cat| {
                for (c, peers) in by_chunk {
                    if let Err(e) = cat.add_holders(&c.file_id, c.chunk_no, &peers.heard) {
                        tracing::warn!("could not record the STOREDs of {c}: {e}");
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!("could not record STOREDs: {e}");
        }
    }
}

async fn receive_loop(node: Arc<Node>, ch: Arc<ChannelSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match ch.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("receiving on {:?}: {e}", ch.channel);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // With a LAN key, only what carries its tag is read at all (SPEC §3).
        let verified;
        let datagram = match node.lan_key() {
            None => &buf[..n],
            Some(key) => match auth::verify(&key, &buf[..n], unix_now()) {
                Ok(d) => {
                    verified = d;
                    &verified[..]
                }
                Err(e) => {
                    node.counters
                        .unauthenticated
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%from, "dropped a datagram ({n} bytes) on {:?}: {e}", ch.channel);
                    continue;
                }
            },
        };
        match Message::parse(datagram) {
            Ok(msg) if msg.channel() != ch.channel => {
                node.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "dropped a {} that came on {:?}", msg.type_name(), ch.channel);
            }
            Ok(msg) if msg.sender == node.id => {
                if let MessageKind::PutChunk { chunk, .. } = msg.kind {
                    peer::own_id_putchunk(&node, chunk);
                }
            }
            Ok(msg) => match &node.net.faults {
                None => peer::handle(&node, msg),
                Some(faults) => {
                    for delay in faults.fate().delays {
                        let (node, msg) = (node.clone(), msg.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            peer::handle(&node, msg);
                        });
                    }
                }
            },
            Err(e) => {
                node.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "dropped a malformed datagram ({n} bytes) on {:?}: {e}", ch.channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChunkNo, FileId};

    fn chunk(no: u32) -> ChunkId {
        ChunkId {
            file_id: FileId::parse(&"e".repeat(64)).unwrap(),
            chunk_no: ChunkNo(no),
        }
    }

    #[test]
    fn a_putchunk_seen_after_the_wait_began_counts() {
        let mut seen = LruMap::new(MAX_SEEN_ENTRIES);
        let asked = Instant::now();
        assert!(!seen_since(&seen, &chunk(1), asked));
        remember(&mut seen, &chunk(1), asked - Duration::from_millis(10));
        assert!(
            !seen_since(&seen, &chunk(1), asked),
            "an older PUTCHUNK does not count"
        );
        remember(&mut seen, &chunk(1), asked + Duration::from_millis(10));
        assert!(seen_since(&seen, &chunk(1), asked));
        // Upper-case and lower-case fileIds are the same chunk.
        let upper = ChunkId {
            file_id: FileId::parse(&"E".repeat(64)).unwrap(),
            chunk_no: ChunkNo(1),
        };
        assert!(seen_since(&seen, &upper, asked));
    }

    #[test]
    fn the_seen_memory_is_bounded_and_keeps_recording() {
        let mut seen = LruMap::new(MAX_SEEN_ENTRIES);
        let t = Instant::now();
        for i in 0..(MAX_SEEN_ENTRIES as u32 + 100) {
            remember(&mut seen, &chunk(i % 999_999), t);
        }
        assert!(seen.len() <= MAX_SEEN_ENTRIES);
        // After a flood of fresh entries, a new one is still recorded.
        remember(&mut seen, &chunk(999_998), t);
        assert!(seen_since(&seen, &chunk(999_998), t));
    }

    #[test]
    fn stored_heard_while_writing_is_capped() {
        let mut s = Storing::default();
        for p in 0..10_000 {
            s.heard(PeerId(p % 5000));
        }
        assert_eq!(s.heard.len(), MAX_HOLDERS as usize);
    }

    #[test]
    fn reply_delays_stay_within_400_ms() {
        assert!((0..1000).all(|_| random_reply_delay() <= MAX_REPLY_DELAY));
    }
}
