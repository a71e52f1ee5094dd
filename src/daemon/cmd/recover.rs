//! `peerstash recover`: on a reinstalled computer (same peer id, same master key, an empty
//! state folder), finds the newest catalog snapshot this peer backed up, fetches it, and leaves
//! it for the daemon to install when it starts again, at once (`Node::restart`).
//!
//! A snapshot's fileId comes from the peer id, the master key and its slot (`seal::Slot`), and
//! its hashes were lost with the catalog: its chunks are asked for with `Expect::Opens`, and
//! only a body that decrypts under its key as its chunk is taken. First the anchor of each day
//! (one probe per day, newest first), then every slot of the newest day found; the newest
//! snapshot that can be fetched whole, and whose bytes match its header, wins.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use tokio::task::spawn_blocking;

use super::{meter, report, Done, Progress};
use crate::control::{exit, Unit};
use crate::daemon::driver::{Input, JobEvent};
use crate::daemon::{unix_now, Node};
use crate::engine::peer::{Expect, JobKind};
use crate::protocol::seal::{Cut, FileKey, MasterKey, Slot};
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

/// What the client is told on success.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Recovered {
    pub day: u32,
    pub n: u16,
    pub bytes: u64,
    pub versions: u64,
}

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
    slots: &[Slot],
) -> Result<Vec<(Slot, Vec<u8>)>, RecoverError> {
    let mut ids = HashMap::new();
    let wants = slots
        .iter()
        .map(|slot| {
            let file_id = master.snapshot_file_id(node.id, *slot);
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
    let mut found: Vec<(Slot, Vec<u8>)> = got
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
    slot: Slot,
    first: Vec<u8>,
    out: &Path,
    progress: &Progress,
) -> Result<Result<u64, String>, RecoverError> {
    let Some((db_len, _)) = snapshot::parse_header(&first) else {
        return Ok(Err("its first chunk has no snapshot header".into()));
    };
    let cut = Cut::Sealed;
    let total = HEADER_LEN as u64 + db_len;
    let count = cut.count(total);
    if cut.piece_len(total, 0) != Some(first.len()) || count > u64::from(u32::MAX) {
        return Ok(Err("its first chunk does not match its header".into()));
    }
    let file_id = master.snapshot_file_id(node.id, slot);
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
            format!(
                "fetched {end} of {count} chunks of snapshot {}:{}",
                slot.day, slot.n
            ),
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

/// `peerstash recover [--days N] [--force]`.
pub(crate) async fn recover(node: &Arc<Node>, days: u32, force: bool, progress: &Progress) -> Done {
    // Not beside a snapshot (which copies the catalog) nor another recover.
    let Ok(_one) = node.snapshotting.try_lock() else {
        return Done::failed(
            "a catalog snapshot or another recover is running: try again in a minute",
        );
    };
    match run(node, days.min(MAX_DAYS), force, progress).await {
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

async fn run(
    node: &Arc<Node>,
    days: u32,
    force: bool,
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
    if state_dir.join(RECOVERED).exists() {
        node.restart.notify_one();
        return Ok(Done::failed(
            "a recovered catalog is waiting to be installed: the daemon restarts now to install it",
        ));
    }
    let (own, key_made) = node
        .catalog
        .call(|c| Ok((c.own_versions()?, c.meta("master_key_made")?)))
        .await?;
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
    if own > 0 && !force {
        return Ok(Done::failed(format!(
            "this peer's catalog already lists {own} backed-up versions: recover replaces a lost catalog. Run `peerstash recover --force` to replace it anyway (it is kept as {}; what it lists stays on the peers, forgotten). Nothing was changed.",
            state_dir.join(snapshot::REPLACED).display()
        )));
    }
    let now = unix_now();
    let today = (now / 86_400) as u32;
    let floor = Slot {
        day: today,
        n: (now % 86_400 / 600) as u16,
    };
    report(
        progress,
        format!(
            "looking for catalog snapshots of peer {} over the last {days} days",
            node.id.0
        ),
    );
    let out = state_dir.join(RECOVERING);
    // Newest first: tomorrow (a clock behind the lost computer's) down to `days` ago.
    let all_days: Vec<u32> = (today.saturating_sub(days)..=today.saturating_add(1))
        .rev()
        .collect();
    let mut highest: Option<Slot> = None;
    let (mut tried, mut days_tried) = (Vec::new(), 0);
    'days: for batch in all_days.chunks(ANCHORS_AT_ONCE) {
        let anchors: Vec<Slot> = batch.iter().map(|d| Slot::anchor(*d)).collect();
        let found_days = probe(node, &master, &anchors).await?;
        for (anchor, anchor_first) in found_days {
            days_tried += 1;
            if days_tried > DAYS_TRIED {
                break 'days;
            }
            report(
                progress,
                format!(
                    "found snapshots of day {} ({}): looking for the newest",
                    anchor.day,
                    Slot::day_text(anchor.day)
                ),
            );
            let later: Vec<Slot> = (1..Slot::PER_DAY)
                .map(|n| Slot { day: anchor.day, n })
                .collect();
            let mut candidates = probe(node, &master, &later).await?;
            candidates.push((anchor, anchor_first));
            highest = highest.max(candidates.first().map(|(s, _)| *s));
            for (slot, first) in candidates {
                report(
                    progress,
                    format!("fetching snapshot {}:{}", slot.day, slot.n),
                );
                match fetch_snapshot(node, &master, slot, first, &out, progress).await? {
                    Ok(versions) => {
                        return install(
                            node,
                            &out,
                            &master,
                            slot,
                            floor.max(highest.unwrap_or(slot)),
                            versions,
                            progress,
                        )
                        .await;
                    }
                    Err(why) => {
                        tracing::warn!(
                            "catalog snapshot {}:{} cannot be used: {why}",
                            slot.day,
                            slot.n
                        );
                        tried.push(format!("{}:{} ({why})", slot.day, slot.n));
                    }
                }
            }
        }
    }
    let _ = spawn_blocking(move || std::fs::remove_file(out)).await;
    Ok(Done::failed(match tried.is_empty() {
        true => format!(
            "no catalog snapshot of peer {} was found over the last {days} days: check that the peers holding them are running, that this is the peer id ({}) and the master key the lost computer had, or look further back with `--days N`. Nothing was changed.",
            node.id.0, node.id.0
        ),
        false => format!(
            "catalog snapshots were found but none could be fetched whole: {}. Nothing was changed; start the peers that hold them and try again.",
            tried.join("; ")
        ),
    }))
}

/// Records the snapshot in the catalog found, puts it where the next start installs it, and
/// restarts the daemon.
async fn install(
    node: &Arc<Node>,
    out: &Path,
    master: &MasterKey,
    slot: Slot,
    floor: Slot,
    versions: u64,
    progress: &Progress,
) -> Result<Done, RecoverError> {
    let file_id: FileId = master.snapshot_file_id(node.id, slot);
    let recovered = node.config().peer.state_dir.join(RECOVERED);
    let bytes = {
        let (out, recovered) = (out.to_path_buf(), recovered.clone());
        spawn_blocking(move || -> Result<u64, RecoverError> {
            let cat = Catalog::open(&out)?;
            cat.adopt_snapshot(&file_id, slot, floor)?;
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
            "recovered the catalog of {} ({versions} versions): the daemon restarts with it",
            Slot::day_text(slot.day)
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
            "recovered the catalog snapshot {}:{} ({}, {versions} versions, {bytes} bytes); peerstashd restarts with it. Then run `peerstash restore --all` to bring the files back",
            slot.day,
            slot.n,
            Slot::day_text(slot.day)
        ),
        data: serde_json::to_value(Recovered {
            day: slot.day,
            n: slot.n,
            bytes,
            versions,
        })
        .ok(),
    })
}
