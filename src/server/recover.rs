//! `peerstash recover`: on a reinstalled computer (same peer id, same master key, an empty
//! state folder), finds the newest catalog snapshot this peer backed up, fetches it, and leaves
//! it for the daemon to install when it starts again, at once (`Node::restart`).
//!
//! A snapshot's fileId comes from the peer id, the master key and its number
//! (`seal::SnapshotNo`), and its hashes were lost with the catalog: its chunks are asked for
//! with `Expect::Opens`, and only a body that decrypts under its key as its chunk is taken.
//! Numbered snapshots are found in O(log n) probes (`search_numbered`), without a clock; the
//! dated ones of older versions by the anchor of each day within `--days`, then every slot of
//! the newest days found. The newest snapshot that can be fetched whole, and whose bytes match
//! its header, wins; `--list` shows them, `--at N` picks one, `--none` says there is none.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use tokio::task::spawn_blocking;

use super::Done;
use crate::clock::unix_s as unix_now;
use crate::control::{exit, Answer, Recovered, Unit};
use crate::daemon::inbox::{Input, JobEvent};
use crate::daemon::Node;
use crate::engine::peer::{Expect, JobKind};
use crate::ops::{meter, report, Progress};
use crate::protocol::seal::{Cut, FileKey, MasterKey, Slot, SnapshotNo};
use crate::protocol::{ChunkId, ChunkNo, FileId};
use crate::store::snapshot::{self, HEADER_LEN, RECOVERED};
use crate::store::{io_disk_full, Catalog};

/// Days looked back by default.
pub const DEFAULT_DAYS: u32 = 92;
/// Days looked back at most (ten years).
pub const MAX_DAYS: u32 = 3_660;
/// Anchors probed in one go.
const ANCHORS_AT_ONCE: usize = 64;
/// Days whose snapshots are tried, newest first, before recover gives up.
const DAYS_TRIED: usize = 4;
/// Chunks of a snapshot fetched (and held) in one go: 16 MB at most.
const CHUNKS_AT_ONCE: usize = 256;
/// Rounds of asking again for a snapshot's chunks that no holder gave.
const ROUNDS: usize = 4;

#[derive(Debug, thiserror::Error)]
enum RecoverError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(
        "the daemon stopped before the recover ended; start it and run `peerstash recover` again"
    )]
    Stopping,
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl RecoverError {
    fn is_disk_full(&self) -> bool {
        match self {
            RecoverError::Io(e) => io_disk_full(e),
            RecoverError::Store(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

/// Where a snapshot is fetched to, in the state folder, before it is checked.
const RECOVERING: &str = "catalog.recovering";

/// One chunk to fetch, and the key it must open under.
struct Want {
    chunk: ChunkId,
    key: Arc<FileKey>,
}

/// Fetches `wants` (each asked twice at most), within the engine's window; returns the
/// plaintext of each chunk that came.
async fn fetch_opened(
    node: &Arc<Node>,
    wants: Vec<Want>,
) -> Result<HashMap<ChunkId, Vec<u8>>, RecoverError> {
    let mut job = node.start_job(JobKind::Restore);
    let mut keys: HashMap<ChunkId, Arc<FileKey>> = HashMap::new();
    let mut todo = wants.into_iter();
    let mut got = HashMap::new();
    let (mut credit, mut outstanding) = (0usize, 0usize);
    loop {
        while credit > 0 {
            let Some(w) = todo.next() else { break };
            credit -= 1;
            outstanding += 1;
            keys.insert(w.chunk.clone(), w.key.clone());
            node.engine(Input::FetchChunk {
                job: job.id,
                chunk: w.chunk,
                expect: Expect::Opens(w.key),
            });
        }
        if outstanding == 0 && todo.len() == 0 {
            break;
        }
        match job.events.recv().await {
            None => return Err(RecoverError::Stopping),
            Some(JobEvent::Credit(n)) => credit += n,
            Some(JobEvent::Fetched(chunk, body)) => {
                outstanding = outstanding.saturating_sub(1);
                let (Some(body), Some(key)) = (body, keys.remove(&chunk)) else {
                    continue;
                };
                // The engine took it because it opens: this cannot fail.
                if let Ok(piece) = key.open(chunk.chunk_no, &body) {
                    got.insert(chunk, piece);
                }
            }
            Some(JobEvent::BackedUp(_)) => {}
        }
    }
    Ok(got)
}

/// The first chunk of the snapshots in `slots` that answered, by slot.
async fn probe(
    node: &Arc<Node>,
    master: &MasterKey,
    slots: &[SnapshotNo],
) -> Result<Vec<(SnapshotNo, Vec<u8>)>, RecoverError> {
    let mut ids = HashMap::new();
    let wants = slots
        .iter()
        .map(|slot| {
            let file_id = master.snapshot_no_file_id(node.id, *slot);
            ids.insert(file_id.clone(), *slot);
            Want {
                key: Arc::new(master.file_key(&file_id)),
                chunk: ChunkId {
                    file_id,
                    chunk_no: ChunkNo(0),
                },
            }
        })
        .collect();
    let got = fetch_opened(node, wants).await?;
    let mut found: Vec<(SnapshotNo, Vec<u8>)> = got
        .into_iter()
        .filter_map(|(c, piece)| ids.get(&c.file_id).map(|s| (*s, piece)))
        .collect();
    found.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    Ok(found)
}

/// Fetches the snapshot in `slot` whose first piece is `first` into `out`: the database, its
/// length and hash checked against the header. Err: why it cannot be used.
async fn fetch_snapshot(
    node: &Arc<Node>,
    master: &MasterKey,
    slot: SnapshotNo,
    first: Vec<u8>,
    out: &Path,
    progress: &Progress,
) -> Result<Result<u64, String>, RecoverError> {
    let Some((db_len, _)) = snapshot::parse_header(&first) else {
        return Ok(Err(format!(
            "its first chunk: {}",
            snapshot::no_header(&first)
        )));
    };
    let cut = Cut::Sealed;
    let total = HEADER_LEN as u64 + db_len;
    let count = cut.count(total);
    if cut.piece_len(total, 0) != Some(first.len()) || count > u64::from(u32::MAX) {
        return Ok(Err("its first chunk does not match its header".into()));
    }
    let file_id = master.snapshot_no_file_id(node.id, slot);
    let key = Arc::new(master.file_key(&file_id));
    let file = {
        let out = out.to_path_buf();
        spawn_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&out)?;
            f.set_len(db_len)?;
            Ok::<_, std::io::Error>(f)
        })
        .await??
    };
    let file = Arc::new(file);
    let header = first[..HEADER_LEN].to_vec();
    let write = |piece: Vec<u8>, at: u64, skip: usize| {
        let file = file.clone();
        spawn_blocking(move || file.write_all_at(&piece[skip..], at))
    };
    write(first, 0, HEADER_LEN).await??;
    let mut next = 1u32;
    while u64::from(next) < count {
        let end = (u64::from(next) + CHUNKS_AT_ONCE as u64).min(count) as u32;
        let mut missing: Vec<u32> = (next..end).collect();
        for _ in 0..ROUNDS {
            if missing.is_empty() {
                break;
            }
            let wants = (missing.iter())
                .map(|no| Want {
                    chunk: ChunkId {
                        file_id: file_id.clone(),
                        chunk_no: ChunkNo(*no),
                    },
                    key: key.clone(),
                })
                .collect();
            let got = fetch_opened(node, wants).await?;
            for (chunk, piece) in got {
                let no = chunk.chunk_no.0;
                if cut.piece_len(total, no) != Some(piece.len()) {
                    return Ok(Err(format!("chunk {no} has the wrong length")));
                }
                let at = cut.offset(chunk.chunk_no) - HEADER_LEN as u64;
                write(piece, at, 0).await??;
                missing.retain(|m| *m != no);
            }
        }
        if let Some(no) = missing.first() {
            return Ok(Err(format!(
                "{} of its chunks could not be fetched from any peer (first: chunk {no})",
                missing.len()
            )));
        }
        report(
            progress,
            format!("fetched {end} of {count} chunks of snapshot {slot}"),
        );
        meter(progress, u64::from(end), count, Unit::Chunks);
        next = end;
    }
    let out = out.to_path_buf();
    let checked = spawn_blocking(move || -> Result<Result<u64, String>, RecoverError> {
        file.sync_all()?;
        if let Err(e) = snapshot::check_database(&header, &out) {
            return Ok(Err(e));
        }
        Ok(snapshot::check_catalog(&out).map_err(|e| e.to_string()))
    })
    .await??;
    Ok(checked)
}

/// What `peerstash recover` is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Install the newest snapshot found that is whole, or the one given (`--at`).
    Install(Option<SnapshotNo>),
    /// List the snapshots found (`--list`), changing nothing.
    List,
    /// There is nothing to recover (`--none`): a reinstalled peer takes snapshots again.
    Nothing,
}

/// Snapshots `--list` fetches to say whether each is whole.
const LISTED: usize = 12;

/// `peerstash recover [--days N] [--force] [--list | --at N | --none]`.
pub(crate) async fn recover(
    node: &Arc<Node>,
    days: u32,
    force: bool,
    mode: Mode,
    progress: &Progress,
) -> Done {
    // Not beside a snapshot (which copies the catalog) nor another recover.
    let Ok(_one) = node.snapshotting.try_lock() else {
        return Done::failed(
            "a catalog snapshot or another recover is running: try again in a minute",
        );
    };
    match run(node, days.min(MAX_DAYS), force, mode, progress).await {
        Ok(done) => done,
        Err(e) => {
            let state_dir = node.config().peer.state_dir.clone();
            let (out, recovered) = (state_dir.join(RECOVERING), state_dir.join(RECOVERED));
            // What was fetched goes (on a full disk, it would keep it full).
            let installed = spawn_blocking(move || {
                let _ = std::fs::remove_file(out);
                recovered.exists()
            })
            .await
            .unwrap_or(true);
            let why = match e.is_disk_full() {
                true => format!(
                    "the disk of {} is full: free some space there and run `peerstash recover` again",
                    state_dir.display()
                ),
                false => e.to_string(),
            };
            let unchanged = if installed {
                ""
            } else {
                " Nothing was changed."
            };
            Done::failed(format!("recover failed: {why}.{unchanged}"))
        }
    }
}

/// The numbered snapshots found, newest first, with their first pieces: the powers of two first
/// (the newest of them is the top bit of the newest number: it is kept, `snapshot::superseded`),
/// then the number's lower bits, a few a round (`snapshot::search_round`: each candidate a multiple of the
/// round's step, the newest of which is kept). O(log n) probes in all, no clock.
async fn search_numbered(
    node: &Arc<Node>,
    master: &MasterKey,
    progress: &Progress,
) -> Result<Vec<(SnapshotNo, Vec<u8>)>, RecoverError> {
    let numbered =
        |nos: Vec<u64>| -> Vec<SnapshotNo> { nos.into_iter().map(SnapshotNo::Numbered).collect() };
    let mut found = probe(node, master, &numbered(snapshot::search_start())).await?;
    let Some(SnapshotNo::Numbered(mut base)) = found.first().map(|(s, _)| *s) else {
        return Ok(Vec::new());
    };
    let mut bits = base.trailing_zeros();
    while bits > 0 {
        let (probes, left) = snapshot::search_round(base, bits);
        let hits = probe(node, master, &numbered(probes)).await?;
        if let Some(SnapshotNo::Numbered(top)) = hits.first().map(|(s, _)| *s) {
            base = top;
        }
        found.extend(hits);
        bits = left;
    }
    found.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    found.dedup_by_key(|(s, _)| *s);
    report(
        progress,
        format!("found {} numbered catalog snapshots", found.len()),
    );
    Ok(found)
}

/// The dated snapshots (of a version before numbers) of the newest days found within `days`
/// (at most `DAYS_TRIED` days), newest first.
async fn search_dated(
    node: &Arc<Node>,
    master: &MasterKey,
    days: u32,
    progress: &Progress,
) -> Result<Vec<(SnapshotNo, Vec<u8>)>, RecoverError> {
    let today = (unix_now() / 86_400) as u32;
    // Newest first: tomorrow (a clock behind the lost computer's) down to `days` ago.
    let all_days: Vec<u32> = (today.saturating_sub(days)..=today.saturating_add(1))
        .rev()
        .collect();
    let mut out = Vec::new();
    let mut days_found = 0;
    for batch in all_days.chunks(ANCHORS_AT_ONCE) {
        let anchors: Vec<SnapshotNo> = (batch.iter())
            .map(|d| SnapshotNo::Dated(Slot::anchor(*d)))
            .collect();
        for (anchor, anchor_first) in probe(node, master, &anchors).await? {
            let SnapshotNo::Dated(anchor) = anchor else {
                continue;
            };
            days_found += 1;
            if days_found > DAYS_TRIED {
                return Ok(out);
            }
            report(
                progress,
                format!(
                    "found dated snapshots of day {} ({})",
                    anchor.day,
                    Slot::day_text(anchor.day)
                ),
            );
            let later: Vec<SnapshotNo> = (1..Slot::PER_DAY)
                .map(|n| SnapshotNo::Dated(Slot { day: anchor.day, n }))
                .collect();
            out.extend(probe(node, master, &later).await?);
            out.push((SnapshotNo::Dated(anchor), anchor_first));
        }
    }
    Ok(out)
}

/// A snapshot's label, as `--list` shows it: when it was taken, by the clock of then.
fn label(db: &Path, slot: SnapshotNo) -> String {
    let taken: Option<i64> = match slot {
        SnapshotNo::Numbered(n) => rusqlite::Connection::open(db).ok().and_then(|c| {
            c.query_row(
                "SELECT taken_ms FROM snapshots WHERE day = -1 AND n = ?1",
                [n as i64],
                |r| r.get(0),
            )
            .ok()
        }),
        SnapshotNo::Dated(_) => None,
    };
    snapshot::taken_label(slot, taken)
}

async fn run(
    node: &Arc<Node>,
    days: u32,
    force: bool,
    mode: Mode,
    progress: &Progress,
) -> Result<Done, RecoverError> {
    let config = node.config();
    let state_dir = config.peer.state_dir.clone();
    let Some(master) = node.master_key() else {
        return Ok(Done::failed(format!(
            "recover needs this peer's master key, and {} is missing or unreadable: put back the copy of the key you kept there (mode 0600), restart peerstashd and run `peerstash recover` again. Nothing was changed.",
            config.peer.master_key_file.display()
        )));
    };
    if mode == Mode::Nothing {
        return nothing_to_recover(node, &master, force, progress).await;
    }
    if state_dir.join(RECOVERED).exists() && mode != Mode::List {
        node.restart.notify_one();
        return Ok(Done::failed(
            "a recovered catalog is waiting to be installed: the daemon restarts now to install it",
        ));
    }
    let (own, key_made, waiting) = node.catalog.recover_facts().await?;
    // "fingerprint unix_ms": this very key was made here.
    let made_here = key_made
        .as_deref()
        .and_then(|t| t.split_once(' '))
        .and_then(|(f, ms)| {
            (f == master.fingerprint())
                .then(|| ms.parse::<i64>().ok())
                .flatten()
        });
    if let Some(made) = made_here {
        return Ok(Done::failed(format!(
            "the master key {} was made new by this peer on {}, after its catalog was lost: it cannot open the snapshots the lost computer sealed with its own key. Put back the copy of the old key there (mode 0600), restart peerstashd and run `peerstash recover` again. Nothing was changed.",
            config.peer.master_key_file.display(),
            Slot::day_text((made / 86_400_000) as u32)
        )));
    }
    // A reinstalled peer (`WAIT_RECOVER`) took no snapshot: what its new catalog lists (the
    // intact folders it backed up again) is no reason to refuse.
    if own > 0 && !force && !waiting && mode != Mode::List {
        return Ok(Done::failed(format!(
            "this peer's catalog already lists {own} backed-up versions: recover replaces a lost catalog. `peerstash recover --list` shows the snapshots found on the peers (the newest may be one this catalog took itself); `peerstash recover --force --at N` replaces this catalog with snapshot N (`--force` alone: with the newest found), keeping this one as {}, and what it lists stays on the peers, forgotten. Nothing was changed.",
            state_dir.join(snapshot::REPLACED).display()
        )));
    }
    report(
        progress,
        format!(
            "looking for catalog snapshots of peer {} (dated ones over the last {days} days)",
            node.id.0
        ),
    );
    let out = state_dir.join(RECOVERING);
    let numbered = search_numbered(node, &master, progress).await?;
    // The highest number seen, whichever is installed: no number up to far above it is used
    // again (`Catalog::next_snapshot_no`).
    let highest = highest_number(&numbered).unwrap_or(0);
    let candidates = match mode {
        Mode::Install(Some(at)) => probe(node, &master, &[at]).await?,
        _ => {
            let mut found = numbered;
            if found.is_empty() || mode == Mode::List {
                found.extend(search_dated(node, &master, days, progress).await?);
            }
            found
        }
    };
    let (mut tried, mut listed) = (Vec::new(), Vec::new());
    for (slot, first) in candidates {
        if mode == Mode::List && listed.len() >= LISTED {
            listed.push(format!(
                "  (older ones not fetched: at most {LISTED} are listed)"
            ));
            break;
        }
        report(progress, format!("fetching snapshot {slot}"));
        match fetch_snapshot(node, &master, slot, first, &out, progress).await? {
            Ok(versions) if mode == Mode::List => {
                let o = out.clone();
                let taken = spawn_blocking(move || label(&o, slot)).await?;
                listed.push(format!("  {slot}: {taken}, whole, {versions} versions"));
            }
            Ok(versions) => {
                return install(node, &out, &master, slot, highest, versions, progress).await;
            }
            Err(why) => {
                tracing::warn!("catalog snapshot {slot} cannot be used: {why}");
                listed.push(format!("  {slot}: not whole ({why})"));
                tried.push(format!("{slot} ({why})"));
            }
        }
    }
    let _ = spawn_blocking(move || std::fs::remove_file(out)).await;
    if mode == Mode::List && !listed.is_empty() {
        return Ok(Done::ok(format!(
            "catalog snapshots of peer {} found on the peers, newest first (`peerstash recover --at N` installs one):\n{}",
            node.id.0,
            listed.join("\n")
        )));
    }
    Ok(Done::failed(match (tried.is_empty(), mode) {
        (true, Mode::Install(Some(at))) => format!(
            "catalog snapshot {at} of peer {} was not found on any peer: `peerstash recover --list` shows the ones found. Nothing was changed.",
            node.id.0
        ),
        (true, _) => format!(
            "no catalog snapshot of peer {} was found: check that the peers holding them are running, that this is the peer id ({}) and the master key the lost computer had, or look further back for dated ones with `--days N`. Nothing was changed.",
            node.id.0, node.id.0
        ),
        (false, _) => format!(
            "catalog snapshots were found but none could be fetched whole: {}. Nothing was changed; start the peers that hold them and try again.",
            tried.join("; ")
        ),
    }))
}

/// The highest snapshot number among those `found` (dated ones have none).
fn highest_number(found: &[(SnapshotNo, Vec<u8>)]) -> Option<u64> {
    found.iter().filter_map(|(s, _)| s.number()).max()
}

/// `recover --none`: the admin says there is no lost catalog, and a reinstalled peer takes
/// snapshots again. Its numbers must never be ones the lost computer sealed other bytes under
/// (same key, same fileId, same nonces): the peers are searched first; snapshots found refuse
/// the `--none` (unless `--force`), and the next number is taken far above the highest seen.
async fn nothing_to_recover(
    node: &Arc<Node>,
    master: &MasterKey,
    force: bool,
    progress: &Progress,
) -> Result<Done, RecoverError> {
    report(
        progress,
        format!("looking for catalog snapshots of peer {}", node.id.0),
    );
    let found = search_numbered(node, master, progress).await?;
    let highest = highest_number(&found);
    if let (Some(n), false) = (highest, force) {
        return Ok(Done::failed(format!(
            "catalog snapshots of peer {} are on the peers (the newest is {n}): this peer had a catalog. `peerstash recover` installs it (`--list` shows them); `peerstash recover --none --force` starts without it. Nothing was changed.",
            node.id.0
        )));
    }
    let waited = node.catalog.recover_none(highest).await?;
    if waited {
        tracing::info!("`peerstash recover --none`: catalog snapshots are taken from now on");
    }
    Ok(Done::ok(match waited {
        true => "no catalog to recover: this peer takes catalog snapshots from now on",
        false => "this peer was not waiting for a recover: nothing else was changed",
    }))
}

/// `restore --all` restored every file in place: the expiry a recover held back
/// (`EXPIRY_HOLD`) applies again.
pub(crate) async fn restored_all(node: &Arc<Node>) -> Done {
    let held = node.catalog.lift_expiry_hold().await;
    match held {
        Ok(true) => {
            tracing::info!(
                "`peerstash restore --all` has run: deleted files expire again as keep_deleted says"
            );
            Done::ok("restore --all has run: deleted files expire again as keep_deleted says")
        }
        Ok(false) => Done::ok("nothing was held back"),
        Err(e) => Done::failed(format!("cannot note that restore --all has run: {e}")),
    }
}

/// Records the snapshot in the catalog found, puts it where the next start installs it, and
/// restarts the daemon.
async fn install(
    node: &Arc<Node>,
    out: &Path,
    master: &MasterKey,
    slot: SnapshotNo,
    found: u64,
    versions: u64,
    progress: &Progress,
) -> Result<Done, RecoverError> {
    let file_id: FileId = master.snapshot_no_file_id(node.id, slot);
    let recovered = node.config().peer.state_dir.join(RECOVERED);
    let bytes = {
        let (out, recovered) = (out.to_path_buf(), recovered.clone());
        spawn_blocking(move || -> Result<u64, RecoverError> {
            let cat = Catalog::open(&out)?;
            cat.adopt_snapshot(&file_id, slot, found)?;
            drop(cat);
            let bytes = std::fs::metadata(&out)?.len();
            std::fs::File::open(&out)?.sync_all()?;
            std::fs::rename(&out, &recovered)?;
            if let Some(dir) = recovered.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(bytes)
        })
        .await??
    };
    report(
        progress,
        format!(
            "recovered catalog snapshot {slot} ({versions} versions): the daemon restarts with it"
        ),
    );
    // After this reply is out.
    let n = node.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        n.restart.notify_one();
    });
    Ok(Done {
        code: exit::OK,
        message: format!(
            "recovered the catalog snapshot {slot} ({versions} versions, {bytes} bytes); peerstashd restarts with it. Then run `peerstash restore --all` to bring the files back (nothing expires until it has run, or for 7 days)"
        ),
        data: Some(Answer::Recovered(Recovered {
            snapshot: slot.to_string(),
            bytes,
            versions,
        })),
    })
}
