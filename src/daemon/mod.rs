//! The running peer: `start` opens the state folder, the catalog and the store, binds the
//! control socket (`listen.rs`; `server` serves it) and joins the channels; `Node` holds what
//! the tasks share. The protocol itself is `engine::Peer`, driven by one task (`driver.rs`, told
//! what to do through `inbox.rs`); `receive.rs` hands it the datagrams; `disk.rs` does the disk
//! and catalog work it asks for; `quota.rs` is the quota in force.

pub(crate) mod disk;
pub(crate) mod driver;
pub(crate) mod heard;
pub(crate) mod inbox;
mod listen;
pub(crate) mod quota;
mod receive;
pub(crate) mod traffic;

use nix::fcntl::{Flock, FlockArg};

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, Semaphore};

use crate::config::Config;
use crate::net::Channels;
use crate::protocol::auth::LanKey;
use crate::protocol::seal::MasterKey;
use crate::protocol::PeerId;
use crate::shutdown::Trigger;
use crate::store::{Catalog, CatalogHandle, ChunkStore};

/// DELETEs and REMOVEDs being handled at once (each needs the catalog); beyond this one is
/// dropped and counted.
const MAX_DATAGRAM_TASKS: usize = 256;

/// Files of more than a read batch whose chunks are read at once, daemon-wide: each reads a few
/// batches ahead, and few of them keep the memory bounded whatever runs.
pub(crate) const LARGE_FILES_AT_ONCE: usize = 2;
/// The memory the backups of the other files hold at once, daemon-wide, in KiB: each holds
/// its bytes (read in one batch, kept for resends) and `FILE_OVERHEAD_KIB` for its state.
pub(crate) const SMALL_FILES_MEMORY_KIB: u32 = 16 * 1024;

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
    /// The LAN key's tags and times taken from each peer: a replayed datagram is refused. Its
    /// marks are kept in the catalog with who was heard (`driver::run`).
    pub(crate) replay: std::sync::Mutex<crate::protocol::auth::ReplayGuard>,
    /// The master key (`peer.master_key_file`), if any: encrypts chunks (`protocol::seal`).
    /// Settled at start (`key_at_start`); a reload never changes it.
    master_key: std::sync::RwLock<Option<MasterKey>>,
    making_master_key: Mutex<()>,
    pub catalog: CatalogHandle,
    pub store: Arc<ChunkStore>,
    writer: disk::ChunkWriter,
    /// Backups of large files under way (`LARGE_FILES_AT_ONCE`).
    pub(crate) large_backups: Semaphore,
    /// The memory that backups of the other files hold, in KiB
    /// (`SMALL_FILES_MEMORY_KIB`).
    pub(crate) small_backups: Semaphore,
    pub net: Channels,
    /// To the engine task (`driver::run`).
    inputs: mpsc::UnboundedSender<inbox::Input>,
    next_job: AtomicU64,
    /// Paths the work queue is backing up right now (for `state`).
    pub in_progress: Mutex<std::collections::BTreeSet<std::path::PathBuf>>,
    /// Watched folders that are not there (missing, or their disk not mounted), and why: kept
    /// by the service's watcher, shown in `state`.
    pub unavailable: Mutex<std::collections::BTreeMap<std::path::PathBuf, String>>,
    datagram_permits: Arc<Semaphore>,
    /// To the task that records STOREDs in batches.
    stored_tx: mpsc::Sender<disk::ToRecord>,
    pub counters: Counters,
    /// Another peer of the LAN seems to use our id.
    pub duplicate_id: Mutex<DuplicateId>,
    /// Woken when a chunk of ours fell below its desired RD (REMOVED): the service re-backs up.
    pub repair: tokio::sync::Notify,
    /// The background workers and what each is doing (for `state`).
    pub workers: crate::workers::Workers,
    /// 2.0: the port of the TCP listener restores receive chunks on.
    pub tcp_port: Option<u16>,
    /// 2.0: bounds the pulls over TCP in progress.
    pub pulls: crate::net::tcp::Pulls,
    /// When this daemon started (unix ms): a holder not heard since is given a full
    /// holder_timeout from here, so our own downtime never counts against it.
    pub started_ms: i64,
    /// When this daemon started, by the monotonic clock.
    pub started: std::time::Instant,
    /// 2.0: this chunk store's incarnation (`store::incarnation`), announced to the peers.
    pub incarnation: u64,
    /// When a scan last found each watched folder with nothing to back up (unix ms): with the
    /// last completed backup, when the folder was last known backed up (`status`, metrics).
    pub folders_checked: Mutex<std::collections::BTreeMap<std::path::PathBuf, i64>>,
    /// The multicast traffic of the last hour, for the dashboard's plots.
    pub traffic_history: Mutex<traffic::History>,
    /// One catalog snapshot at a time (`ops::snapshot`).
    pub snapshotting: tokio::sync::Mutex<()>,
    /// Woken when the daemon must stop and start again (a recovered catalog to install).
    pub restart: tokio::sync::Notify,
    /// Woken when a version reached its RD: an older one may wait for a catalog snapshot to
    /// name it (`ops::snapshot::keep_taking`).
    pub snapshot_wake: tokio::sync::Notify,
    /// Files refused because they do not fit on the peers, and the message `status` shows for
    /// each (at most `service::queue::MAX_REFUSED`); cleared on reload, when they are tried again.
    pub refused: Mutex<std::collections::BTreeMap<std::path::PathBuf, String>>,
    /// Old versions pruned to make room on full peers (`Catalog::prune_for_space`): since
    /// when (unix ms), and how many; `status` says so.
    pub space_cuts: Mutex<Option<(i64, u64)>>,
    /// Per file that found no room, the bytes (times RD) pruned for it so far: past twice
    /// what it needs, no more history goes for it (a file too big for the LAN would take all).
    pub space_freed_for: Mutex<std::collections::HashMap<std::path::PathBuf, u64>>,
    /// Per watched folder, its files changed within its guard's window (`history::Changes`).
    pub history_changes:
        Mutex<std::collections::HashMap<std::path::PathBuf, crate::history::Changes>>,
    /// The peers heard since this daemon started and the protocol each speaks (`peers`).
    pub heard: Mutex<heard::SinceStart>,
}

#[derive(Default)]
pub struct Counters {
    pub malformed: AtomicU64,
    /// PUTCHUNKs and GETCHUNKs the engine dropped because it had too many in progress.
    pub dropped_busy: AtomicU64,
    /// Datagrams dropped because they carried no valid LAN key tag (or a stale one).
    pub unauthenticated: AtomicU64,
    /// Datagrams, STOREDs, DELETEs and REMOVEDs dropped because the work queued for the engine
    /// or the catalog was full.
    pub dropped_queue: AtomicU64,
    /// PUTCHUNKs this peer sent (first sends and resends).
    pub putchunks_sent: AtomicU64,
    /// Of those, the resends.
    pub putchunks_resent: AtomicU64,
    /// 2.0: TCP connections closed at once (too many, in total or from one address) and
    /// requests refused (too long).
    pub tcp_refused: Arc<AtomicU64>,
    /// Datagrams and bytes by channel (MC, MDB, MDR) and direction (0 in, 1 out), for metrics.
    pub datagrams: [[AtomicU64; 2]; 3],
    pub bytes: [[AtomicU64; 2]; 3],
    /// Chunks the engine is sending (backups, re-backups) and fetching now.
    pub chunks_in_flight: AtomicU64,
}

impl Counters {
    /// Counts one datagram of `len` bytes on `channel`, received (`out` false) or sent.
    pub fn traffic(&self, channel: crate::protocol::Channel, out: bool, len: usize) {
        let c = match channel {
            crate::protocol::Channel::Mc => 0,
            crate::protocol::Channel::Mdb => 1,
            crate::protocol::Channel::Mdr => 2,
        };
        let d = usize::from(out);
        self.datagrams[c][d].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.bytes[c][d].fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What this peer knows of another peer using its id (a copied config).
#[derive(Debug, Default)]
pub struct DuplicateId {
    /// The last evidence: a PUTCHUNK with our id for a file that is not ours.
    pub evidence: Option<(Instant, crate::protocol::FileId)>,
    /// When it was last logged (at ERROR, once a minute at most).
    pub logged: Option<Instant>,
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

    /// The master key (`peer.master_key_file`), if this peer has one.
    pub fn master_key(&self) -> Option<MasterKey> {
        self.master_key
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The master key, made now if there is no key file at all (a backup asked to encrypt on a
    /// peer started by hand; the packages make it at install). None if it cannot be made or
    /// read (a read-only /etc): the caller says what is missing.
    pub(crate) fn master_key_or_make(&self) -> Option<MasterKey> {
        if let Some(key) = self.master_key() {
            return Some(key);
        }
        // One maker at a time: the many files of a backup ask at once, and a key half written
        // by one must not be read by another. (A 32-byte file, once per peer.)
        let _making = self
            .making_master_key
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(key) = self.master_key() {
            return Some(key);
        }
        let config = self.config();
        match crate::config::load_or_make_master_key(&config.peer, None) {
            Ok((key, made)) => {
                if made {
                    warn_new_master_key(&config.peer.master_key_file);
                    self.note_master_key(&key, true);
                }
                self.set_master_key(Some(key.clone()));
                Some(key)
            }
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    /// When the watched folder `path` was last known backed up (unix ms): its last completed
    /// backup (`completed`), or a later scan that found nothing to back up.
    pub fn last_backed_up(&self, path: &std::path::Path, completed: Option<i64>) -> Option<i64> {
        let checked = (self.folders_checked.lock())
            .ok()
            .and_then(|c| c.get(path).copied());
        completed.max(checked)
    }

    /// Notes in the catalog the master key this peer runs with (what the next start checks),
    /// and, if `made`, that this peer made it itself (so `recover` can tell that this key
    /// cannot open the snapshots of a computer that was lost before).
    pub(crate) fn note_master_key(&self, key: &MasterKey, made: bool) {
        let catalog = self.catalog.clone();
        let fp = key.fingerprint();
        let made = made.then(|| format!("{fp} {}", crate::clock::unix_ms()));
        let note = async move {
            if let Err(e) = catalog.note_master_key(fp, made).await {
                tracing::warn!("cannot note the master key in the catalog: {e}");
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(note);
        }
    }

    pub(crate) fn set_master_key(&self, key: Option<MasterKey>) {
        *self.master_key.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    pub(crate) fn set_lan_key(&self, key: Option<LanKey>) {
        *self.lan_key.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

/// A new catalog beside a master key that existed before and was not made on this computer
/// (`config::key_made_here`): the computer was reinstalled, and
/// a snapshot now would be taken of this new catalog, newer than the lost one's, and a recover
/// would find it first. None is taken until `peerstash recover` (or `--none`). Also logs what a
/// recovered catalog holds back (expiry, until `restore --all`).
fn note_recovery_state(
    catalog: &Catalog,
    new_catalog: bool,
    options: &StartOptions,
    key_file: &std::path::Path,
) -> anyhow::Result<()> {
    use crate::store::snapshot::{EXPIRY_HOLD, WAIT_RECOVER};
    if new_catalog && options.master_key.is_some() && !crate::config::key_made_here(key_file) {
        catalog.set_meta(WAIT_RECOVER, "1")?;
    }
    if catalog.meta(WAIT_RECOVER)?.is_some() {
        tracing::warn!("{}", wait_recover_warning());
    }
    if let Some(ms) = catalog
        .meta(EXPIRY_HOLD)?
        .and_then(|t| t.parse::<i64>().ok())
    {
        tracing::info!(
            "this catalog was recovered: no deleted file's versions expire (keep_deleted) until `peerstash restore --all` has run, or for {:.1} more days of running",
            ms as f64 / 86_400_000.0
        );
    }
    Ok(())
}

/// Seconds since the Unix epoch by the system clock (the LAN key's tags carry them).
/// Says that a master key was just made, and what to do about it.
pub(crate) fn warn_new_master_key(path: &std::path::Path) {
    tracing::warn!(
        "made a new master key in {}: copy it somewhere safe now (not on this computer): \
         without it, encrypted backups cannot be read",
        path.display()
    );
}

/// What status and state say while a reinstalled peer waits for `peerstash recover`.
pub(crate) fn wait_recover_warning() -> String {
    "no catalog snapshot is taken: this peer looks reinstalled (a new catalog, a master key not made on this computer). Run `peerstash recover` to install the lost computer's catalog (`peerstash recover --list` shows the snapshots found), or `peerstash recover --none` if there is none".into()
}

/// How the daemon starts: normally, or re-indexing the chunk files into a lost catalog.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// `peerstashd --rebuild-catalog`: record every chunk file of the store in the catalog
    /// (hash, size) and announce it with STORED, instead of refusing a catalog that is missing.
    pub rebuild_catalog: bool,
    /// The master key, as `config::master_key_if_present` read it (None: no key file).
    pub master_key: Option<MasterKey>,
    /// `peerstashd --new-master-key`: start with this key (made if missing) although the
    /// catalog's encrypted versions were made with another (`key_at_start`).
    pub new_master_key: bool,
}

/// What the start does about the master key (`key_at_start`).
#[derive(Debug)]
pub(crate) enum KeyAtStart {
    /// Run with this key, or none.
    Run(Option<MasterKey>),
    /// Make a key in `peer.master_key_file` and run with it.
    Make,
    /// Do not start: the one-line reason, with what to do.
    Refuse(String),
}

/// **The master key never changes behind the admin's back.** `found` is the key file's key (None:
/// no file); `facts` what the catalog's encrypted versions need; `wanted` whether a watched
/// folder encrypts; `new_key` the admin's `--new-master-key`. A missing or other key while the
/// catalog holds encrypted versions stops the start, naming the key they need, unless the admin
/// said `--new-master-key`. A peer without encrypted versions makes a key when it needs one.
pub(crate) fn key_at_start(
    found: Option<MasterKey>,
    facts: &crate::store::KeyFacts,
    wanted: bool,
    new_key: bool,
    file: &std::path::Path,
) -> KeyAtStart {
    let needed = match &facts.expected {
        Some(fp) => format!("key {fp}"),
        None => "a key whose fingerprint was not recorded".to_owned(),
    };
    let or_new = |what: &str| {
        format!("or, to start with {what} and leave those versions unreadable here, start once with `peerstashd --new-master-key`")
    };
    match found {
        Some(key) => {
            let other = (facts.expected.as_ref()).is_some_and(|fp| *fp != key.fingerprint());
            match other && facts.versions > 0 && !new_key {
                true => KeyAtStart::Refuse(format!(
                    "the master key in {} (peer.master_key_file) is key {}, but the catalog's {} encrypted versions were made with {needed}: put that key back in {} and start again; {}",
                    file.display(),
                    key.fingerprint(),
                    facts.versions,
                    file.display(),
                    or_new("this key")
                )),
                false => KeyAtStart::Run(Some(key)),
            }
        }
        None if facts.versions > 0 && !new_key => KeyAtStart::Refuse(format!(
            "the master key file {} (peer.master_key_file) is missing, but the catalog holds {} encrypted versions made with {needed}: put back the copy of that key you kept (mode 0600) and start again; {}",
            file.display(),
            facts.versions,
            or_new("a new key")
        )),
        None if wanted || new_key => KeyAtStart::Make,
        None => KeyAtStart::Run(None),
    }
}

/// Applies `key_at_start` against the catalog: the key to run with, recorded in the catalog as
/// the one this peer runs with; or the refusal.
async fn settle_master_key(
    catalog: &CatalogHandle,
    config: &Config,
    options: &StartOptions,
) -> anyhow::Result<Option<MasterKey>> {
    let facts = (catalog.key_facts().await)
        .context("cannot read from the catalog which master key its versions need")?;
    let wanted = config.watch.iter().any(|w| w.encrypt);
    let file = &config.peer.master_key_file;
    let key = match key_at_start(
        options.master_key.clone(),
        &facts,
        wanted,
        options.new_master_key,
        file,
    ) {
        KeyAtStart::Refuse(why) => anyhow::bail!(why),
        KeyAtStart::Run(key) => key,
        KeyAtStart::Make => {
            let (key, made) = crate::config::load_or_make_master_key(&config.peer, None)?;
            if made {
                warn_new_master_key(file);
                let made = format!("{} {}", key.fingerprint(), crate::clock::unix_ms());
                (catalog.set_meta(crate::store::MASTER_KEY_MADE, made).await)
                    .context("cannot note in the catalog that the master key was made")?;
            }
            Some(key)
        }
    };
    if let Some(key) = &key {
        let fp = key.fingerprint();
        if facts.expected.as_ref().is_some_and(|e| *e != fp) && facts.versions > 0 {
            tracing::warn!(
                "started with the new master key {fp} (--new-master-key): the {} encrypted versions made with key {} can no longer be restored here; encrypted files are backed up again",
                facts.versions,
                facts.expected.as_deref().unwrap_or("?")
            );
        }
        (catalog.set_meta(crate::store::MASTER_KEY_FP, fp).await)
            .context("cannot record the master key's fingerprint in the catalog")?;
    }
    Ok(key)
}

/// Takes the state folder, opens and checks the catalog and the store, binds the control socket,
/// and only then joins the channels and starts listening: every refusal comes before the peer
/// is heard on the LAN. `lan_key` is the key `config.network.lan_key_file` names, read by the
/// caller. Returns the peer and its control socket, to be served by `server::serve`. The
/// engine and receive tasks stop when `stop` is triggered.
pub async fn start(
    config: Config,
    lan_key: Option<LanKey>,
    options: StartOptions,
    stop: &Trigger,
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
    // `peerstash recover` found the catalog this peer had lost: it replaces the new one now.
    if crate::store::snapshot::install_recovered(&state_dir).with_context(|| {
        format!(
            "cannot install the recovered catalog in {}",
            state_dir.display()
        )
    })? {
        tracing::info!(
            "installed the recovered catalog (the one it replaces is kept as {})",
            state_dir.join(crate::store::snapshot::REPLACED).display()
        );
    }
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
    let incarnation = crate::store::incarnation::load_or_make(&state_dir, &catalog)
        .map_err(|e| anyhow::anyhow!("{e}: check that {} is writable", state_dir.display()))?;
    note_recovery_state(
        &catalog,
        new_catalog,
        &options,
        &config.peer.master_key_file,
    )?;
    let catalog = CatalogHandle::start(catalog);
    let master_key = settle_master_key(&catalog, &config, &options).await?;
    let quota = quota::effective(&catalog, config.storage.quota).await?;
    let store = Arc::new(
        ChunkStore::open(chunks, 0, quota)
            .with_context(|| format!("cannot open the chunk store in {}", state_dir.display()))?,
    );
    if options.rebuild_catalog {
        disk::rebuild_catalog(&catalog, &store, PeerId(config.peer.id)).await?;
    }
    let listener = listen::bind(&config.peer.control_socket).await?;
    let (stored_tx, stored_rx) = mpsc::channel(disk::STORED_QUEUE);
    tokio::spawn(disk::record_stored(
        catalog.clone(),
        stored_rx,
        stop.subscribe(),
    ));
    let net = Channels::open(
        config.network.interface,
        config.network.ttl,
        config.network.mc,
        config.network.mdb,
        config.network.mdr,
        config.network.raise_receive_buffers,
    )?;
    // 2.0: restores receive chunks over TCP, on the LAN interface, on a port of the kernel's
    // choice (each GETCHUNK names it).
    let tcp = match config.peer.enhanced() {
        true => Some(
            crate::net::tcp::bind(config.network.interface)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on TCP on {} (network.interface) for restores",
                        config.network.interface
                    )
                })?,
        ),
        false => None,
    };
    let (inputs, inputs_rx) = mpsc::unbounded_channel();
    let marks = (catalog.auth_marks().await)
        .context("cannot read the LAN key marks of the peers from the catalog")?;
    let node = Arc::new(Node {
        id: PeerId(config.peer.id),
        _lock: lock,
        config: std::sync::RwLock::new(Arc::new(config)),
        lan_key: std::sync::RwLock::new(lan_key),
        replay: std::sync::Mutex::new(crate::protocol::auth::ReplayGuard::load(
            marks,
            crate::clock::unix_s(),
        )),
        master_key: std::sync::RwLock::new(master_key),
        making_master_key: Mutex::new(()),
        catalog,
        writer: disk::ChunkWriter::start(store.clone()).context("cannot start the chunk writer")?,
        store,
        large_backups: Semaphore::new(LARGE_FILES_AT_ONCE),
        small_backups: Semaphore::new(SMALL_FILES_MEMORY_KIB as usize),
        net,
        inputs,
        next_job: AtomicU64::new(1),
        in_progress: Mutex::new(Default::default()),
        refused: Mutex::new(Default::default()),
        started: std::time::Instant::now(),
        space_freed_for: Mutex::new(Default::default()),
        space_cuts: Mutex::new(None),
        history_changes: Mutex::new(Default::default()),
        heard: Mutex::new(Default::default()),
        unavailable: Mutex::new(Default::default()),
        datagram_permits: Arc::new(Semaphore::new(MAX_DATAGRAM_TASKS)),
        stored_tx,
        counters: Counters::default(),
        duplicate_id: Mutex::new(DuplicateId::default()),
        repair: tokio::sync::Notify::new(),
        workers: Default::default(),
        tcp_port: tcp.as_ref().map(|(_, port)| *port),
        pulls: crate::net::tcp::Pulls::new(),
        started_ms: crate::clock::unix_ms(),
        incarnation,
        folders_checked: Mutex::new(Default::default()),
        traffic_history: Mutex::new(Default::default()),
        snapshotting: tokio::sync::Mutex::new(()),
        restart: tokio::sync::Notify::new(),
        snapshot_wake: tokio::sync::Notify::new(),
    });
    let lost = disk::reconcile_store(&node).await?;
    let (to_engine, datagrams) = receive::datagram_queue();
    tokio::spawn(driver::run(
        node.clone(),
        inputs_rx,
        datagrams,
        stop.subscribe(),
    ));
    if let Some((listener, _)) = tcp {
        let refused = node.counters.tcp_refused.clone();
        let holder = node.clone();
        let answer = move |request, from| receive::answer_pull(holder.clone(), request, from);
        tokio::spawn(crate::net::tcp::serve(
            listener,
            answer,
            refused,
            stop.subscribe(),
        ));
    }
    for ch in node.net.all() {
        tokio::spawn(receive::receive_loop(
            node.clone(),
            ch.clone(),
            to_engine.clone(),
            stop.subscribe(),
        ));
    }
    disk::announce_rebuilt(&node).await;
    // What the last run left unfinished: peers told of chunks lost from disk (the service
    // goes on with over-quota chunks to reclaim and DELETEs not yet sent).
    for chunk in lost {
        node.engine(inbox::Input::SendRemoved(chunk));
    }
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

#[cfg(test)]
mod tests;
