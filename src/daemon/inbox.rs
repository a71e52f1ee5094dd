//! What the engine task is told (`Input`): commands of the running jobs and the results of the
//! work it asked for; and the handle a job holds while it runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Node;
use crate::engine::peer::{BackupOutcome, Expect, JobId, JobKind, Put, Role};
use crate::engine::verify::Sample;
use crate::protocol::{ChunkId, FileId, Message, PeerId, Rd};
use std::fs::File;

/// What the engine task is told: commands of the running jobs, and the results of the work it
/// asked for. Unbounded, because bounded by construction: a job sends chunks only within the
/// credit the engine gave it, and results answer the engine's own bounded requests.
pub(crate) enum Input {
    StartJob {
        job: JobId,
        kind: JobKind,
        events: mpsc::UnboundedSender<JobEvent>,
    },
    EndJob(JobId),
    BackupChunk {
        job: JobId,
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        known: Vec<PeerId>,
        source: Source,
    },
    FetchChunk {
        job: JobId,
        chunk: ChunkId,
        expect: Expect,
    },
    SendRemoved(ChunkId),
    SendDelete {
        file_ids: Vec<FileId>,
        done: Option<oneshot::Sender<()>>,
    },
    Announce(Vec<ChunkId>),
    Stored(ChunkId, Put),
    Hosted(ChunkId, Option<(u64, String)>),
    Serve(ChunkId, Option<Vec<u8>>),
    Removed(ChunkId, Role, u32),
    Rebackup(ChunkId, Option<(ChunkId, Rd, Vec<u8>, Vec<PeerId>)>),
    Body(ChunkId, Option<Vec<u8>>),
    /// A `DeleteFile` carried out: whether some chunk was freed.
    FileDeleted(FileId, bool),
    /// 2.0: a CHUNK delivered over TCP (parsed, LAN key checked).
    TcpChunk(Message),
    /// 2.0: DELETEs a peer that is back has not acknowledged.
    Redelete(Vec<FileId>),
    /// 2.0: the chunks of ours to prove this round (`engine::verify`).
    VerifySamples(Vec<Sample>),
    /// 2.0: a hosted chunk read for a PROVE (None: not here, or damaged).
    Proof(ChunkId, u128, Option<Vec<u8>>),
    /// Reclaim: a hosted chunk (fileId as its home wrote it) to hand on to `rd` other peers
    /// before its copy here is dropped; `done` hears whether they took it.
    HandOn {
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
        others: Vec<PeerId>,
        done: oneshot::Sender<bool>,
    },
}

/// What a job hears back from the engine.
#[derive(Debug)]
pub(crate) enum JobEvent {
    /// Room for this many more chunks.
    Credit(usize),
    BackedUp(BackupOutcome),
    /// The chunk's bytes (of the length and hash asked), or None: no peer sent them.
    Fetched(ChunkId, Option<Vec<u8>>),
}

/// Where a resend of a chunk being backed up gets its bytes again. Keeping every in-flight
/// chunk in memory would cost 64 KB per chunk of the window.
pub(crate) enum Source {
    /// `len` bytes at `offset` of the file being backed up (encrypted under `key`, if set),
    /// which must still hash to `hash`.
    File {
        file: Arc<File>,
        offset: u64,
        len: usize,
        hash: String,
        key: Option<Arc<crate::protocol::seal::FileKey>>,
    },
    /// The chunk as this peer hosts it (a re-backup).
    Hosted,
    /// The chunk's bytes as fetched from a holder (a repair from a surviving copy: one chunk
    /// at a time, so the memory stays bounded).
    Held(Arc<Vec<u8>>),
}

/// A job's end of the engine: its events, and the job ended when dropped (however the job's
/// task ends, its chunks stop).
pub(crate) struct JobHandle {
    pub id: JobId,
    pub events: mpsc::UnboundedReceiver<JobEvent>,
    node: Arc<Node>,
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.node.engine(Input::EndJob(self.id));
    }
}

impl Node {
    /// Hands an input to the engine task (gone only when the peer stops).
    pub(crate) fn engine(&self, input: Input) {
        let _ = self.inputs.send(input);
    }

    /// Starts a job: chunks are offered with `Input::BackupChunk`/`FetchChunk` within the credit
    /// its events give.
    pub(crate) fn start_job(self: &Arc<Self>, kind: JobKind) -> JobHandle {
        let id = JobId(self.next_job.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        self.engine(Input::StartJob {
            job: id,
            kind,
            events: tx,
        });
        JobHandle {
            id,
            events: rx,
            node: self.clone(),
        }
    }

    /// Sends DELETE for these files on the engine's schedule; returns once every send is out.
    pub(crate) async fn send_delete(&self, file_ids: Vec<FileId>) {
        let (tx, rx) = oneshot::channel();
        self.engine(Input::SendDelete {
            file_ids,
            done: Some(tx),
        });
        let _ = rx.await;
    }
}
