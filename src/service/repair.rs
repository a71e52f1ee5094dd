//! Repair from a surviving copy: the versions the policy keeps that the queue cannot repair from
//! the local file (older versions, files deleted locally) are brought back to their RD by
//! fetching each chunk below its RD from a holder and sending it again, as stored (an encrypted
//! chunk's sealed body: nothing is sealed again), as a PUTCHUNK of that version's fileId.
//! One chunk at a time: bounded memory, and a small share of the LAN.

use std::path::PathBuf;
use std::sync::Arc;

use crate::daemon::inbox::{Input, JobEvent, JobHandle, Source};
use crate::daemon::Node;
use crate::engine::peer::{Expect, JobKind};
use crate::protocol::{ChunkId, PeerId, Rd};

/// Versions looked at per round (the newest first); the rest wait for the next round.
const VERSIONS_PER_ROUND: usize = 256;
/// Chunks that could not be sent again (no holder answered, no peer took it) before a round
/// stops: each costs up to a fetch's and a backup's schedules, and the next round tries again.
const FAILURES_PER_ROUND: usize = 8;

/// What one round did.
#[derive(Debug, Default)]
pub(crate) struct Repaired {
    pub versions: usize,
    /// Chunks sent again (with at least one new holder).
    pub chunks: usize,
    /// Chunks no holder sent, or that no peer took.
    pub failed: usize,
}

/// One round: every kept version below its RD that only the peers still hold, chunk by chunk;
/// with the newest versions of `refused` (files refused as too big: their local file is not
/// the version kept, and is not queued again by the repair).
pub(crate) async fn from_surviving_copies(
    node: &Arc<Node>,
    refused: Vec<PathBuf>,
) -> Result<Repaired, String> {
    let versions = node
        .catalog
        .versions_to_repair(refused, VERSIONS_PER_ROUND)
        .await
        .map_err(|e| format!("cannot list the versions below their RD: {e}"))?;
    let mut done = Repaired::default();
    if versions.is_empty() {
        return Ok(done);
    }
    let mut fetch = Job::start(node, JobKind::Restore);
    let mut send = Job::start(node, JobKind::Backup);
    for file_id in versions {
        if done.failed >= FAILURES_PER_ROUND {
            tracing::info!("repair from the peers' copies: {} chunks failed, the rest waits for the next round", done.failed);
            break;
        }
        done.versions += 1;
        let looked = node
            .catalog
            .chunks_to_repair(&file_id)
            .await
            .map_err(|e| format!("cannot look up {file_id}: {e}"))?;
        let Some((row, below)) = looked.filter(|(_, below)| !below.is_empty()) else {
            continue; // deleted meanwhile, or nothing left to fetch from
        };
        let Some(rd) = Rd::new(row.desired_rd) else {
            continue;
        };
        tracing::info!(
            "version {} of {} has {} chunks below RD {rd}: sending them again from a copy on the peers",
            row.version,
            row.path.display(),
            below.len()
        );
        for (c, holders) in below {
            if done.failed >= FAILURES_PER_ROUND {
                break;
            }
            let chunk = ChunkId {
                file_id: file_id.clone(),
                chunk_no: c.chunk_no,
            };
            // Still a kept version? A policy may have deleted it meanwhile: its DELETEs must
            // not be undone by our PUTCHUNK.
            let kept = node.catalog.file(&file_id).await;
            if !matches!(kept, Ok(Some(_))) {
                break;
            }
            let Some(body) = fetch
                .fetch(node, &chunk, Expect::bytes(c.size, c.hash))
                .await?
            else {
                tracing::warn!(
                    "chunk {chunk} of {} (version {}): no holder sent it",
                    row.path.display(),
                    row.version
                );
                done.failed += 1;
                continue;
            };
            // Looked at again after the fetch: a PUTCHUNK of a version deleted meanwhile would
            // stop its DELETEs.
            if !matches!(node.catalog.file(&file_id).await, Ok(Some(_))) {
                break;
            }
            match send.send(node, chunk, rd, body, holders).await? {
                true => done.chunks += 1,
                false => done.failed += 1,
            }
        }
    }
    Ok(done)
}

/// A job of the engine, used one chunk at a time.
struct Job {
    handle: JobHandle,
    credit: usize,
}

impl Job {
    fn start(node: &Arc<Node>, kind: JobKind) -> Job {
        Job {
            handle: node.start_job(kind),
            credit: 0,
        }
    }

    /// The next event for this chunk (credit is counted); Err: the daemon is stopping.
    async fn event(&mut self) -> Result<JobEvent, String> {
        loop {
            match self.handle.events.recv().await {
                None => return Err("the daemon is stopping".to_owned()),
                Some(JobEvent::Credit(n)) => self.credit += n,
                Some(e) => return Ok(e),
            }
        }
    }

    async fn wait_credit(&mut self) -> Result<(), String> {
        while self.credit == 0 {
            match self.handle.events.recv().await {
                None => return Err("the daemon is stopping".to_owned()),
                Some(JobEvent::Credit(n)) => self.credit += n,
                Some(_) => {}
            }
        }
        self.credit -= 1;
        Ok(())
    }

    /// Fetches a chunk from its holders (the bytes recorded at backup, nothing else).
    async fn fetch(
        &mut self,
        node: &Arc<Node>,
        chunk: &ChunkId,
        expect: Expect,
    ) -> Result<Option<Vec<u8>>, String> {
        self.wait_credit().await?;
        node.engine(Input::FetchChunk {
            job: self.handle.id,
            chunk: chunk.clone(),
            expect,
        });
        loop {
            if let JobEvent::Fetched(got, body) = self.event().await? {
                if got == *chunk {
                    return Ok(body);
                }
            }
        }
    }

    /// Sends a chunk again until `rd` peers hold it (those known count); whether some peer
    /// that did not hold it took it, or it is at its RD.
    async fn send(
        &mut self,
        node: &Arc<Node>,
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        known: Vec<PeerId>,
    ) -> Result<bool, String> {
        self.wait_credit().await?;
        let held = Arc::new(body.clone());
        let before = known.len();
        node.engine(Input::BackupChunk {
            job: self.handle.id,
            chunk,
            rd,
            body,
            known,
            source: Source::Held(held),
        });
        loop {
            if let JobEvent::BackedUp(o) = self.event().await? {
                return Ok(o.reached || o.holders.len() > before);
            }
        }
    }
}
