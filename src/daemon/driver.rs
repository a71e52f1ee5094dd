//! The thin async layer around `engine::Peer`. One task owns the engine: the receive loops hand
//! it datagrams, the commands hand it their chunks, the disk and catalog tasks it spawned hand
//! it their results, and one timer wakes it when the engine asked. It sends what the engine
//! transmits and carries out what the engine asks; every delay and choice is the engine's.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{disk, Node};
use crate::engine::peer::{
    Action, BackupOutcome, Expect, JobId, JobKind, Owner, Peer, Put, Role, MAX_PEERS_SEEN,
};
use crate::engine::verify::{self, Sample};
use crate::net::{ChannelSocket, MAX_DATAGRAM};
use crate::protocol::auth;
use crate::protocol::{sha256_hex, ChunkId, FileId, Message, MessageKind, PeerId, Rd, Version};

/// Datagrams waiting for the engine; beyond this one is dropped and counted (the protocol's
/// resends make up for it), so a flood cannot take memory without bound.
const DATAGRAM_QUEUE: usize = 4096;
/// Who was heard lately is written to the catalog this often (`peers`, lost holders).
const HEARD_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// DELETEs looked up at once for a peer that is back (the rest at its next HELLO).
const REDELETE_BATCH: usize = 1000;

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

/// The engine task's state besides the engine: who waits for what.
struct Driver {
    node: Arc<Node>,
    engine: Peer,
    jobs: HashMap<JobId, mpsc::UnboundedSender<JobEvent>>,
    /// Where resends get their bytes, and the job that backs the chunk up (None: a re-backup).
    sources: HashMap<ChunkId, (Option<JobId>, Source)>,
    delete_waiters: Vec<(Vec<FileId>, oneshot::Sender<()>)>,
    /// Reclaim's hand-ons waiting for their outcome (bounded by reclaim's own concurrency).
    hand_ons: HashMap<ChunkId, Vec<oneshot::Sender<bool>>>,
    /// Held by each chunk write in progress, so a shutdown waits for it to end (file and row).
    alive: crate::shutdown::Shutdown,
    /// Peers heard since the last flush: when first in this batch, and the latest message
    /// (`heard::Noted`, its version the highest of the batch).
    heard: HashMap<PeerId, (Instant, super::heard::Noted)>,
}

/// Runs the engine until the inputs close (the peer stops).
pub(crate) async fn run(
    node: Arc<Node>,
    mut inputs: mpsc::UnboundedReceiver<Input>,
    mut datagrams: mpsc::Receiver<(Message, SocketAddr)>,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let mut engine = Peer::new(node.id, rand::random());
    let config = node.config();
    if config.peer.enhanced() {
        // Several HELLOs per holder_timeout: a live peer is never counted lost.
        let hello_every = crate::engine::presence::hello_every_for(config.peer.holder_timeout);
        engine.enhance(node.tcp_port, hello_every);
        engine.set_incarnation(node.incarnation);
        engine.verify_holders(config.peer.verify_every, Instant::now());
    }
    engine.start(Instant::now());
    let mut d = Driver {
        engine,
        node,
        jobs: HashMap::new(),
        sources: HashMap::new(),
        delete_waiters: Vec::new(),
        hand_ons: HashMap::new(),
        alive: shutdown.clone(),
        heard: HashMap::new(),
    };
    // What the engine says at start (HELLO) goes out now.
    d.flush().await;
    let mut flush_heard = tokio::time::interval(HEARD_FLUSH_EVERY);
    flush_heard.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = d.engine.poll_timeout();
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.recv() => break,
            Some(input) = inputs.recv() => d.input(input, Instant::now()),
            Some((msg, from)) = datagrams.recv() => {
                d.heard(&msg);
                d.engine.handle_from(msg, Some(from), Instant::now());
            }
            _ = flush_heard.tick() => {
                if let Some(write) = d.flush_heard() {
                    tokio::spawn(write);
                }
            }
            _ = timer => {}
        }
        d.engine.handle_timeout(Instant::now());
        let load = d.engine.load();
        (d.node.counters.chunks_in_flight)
            .store((load.sending + load.fetching) as u64, Ordering::Relaxed);
        d.flush().await;
    }
    // The LAN key marks taken since the last flush: without them, what was taken in the last
    // second could be replayed after the restart.
    if let Some(write) = d.flush_heard() {
        write.await;
    }
}

impl Driver {
    /// Notes who spoke, for the catalog (any message counts: `peers`, lost holders) and for
    /// what it speaks (`heard::SinceStart`).
    fn heard(&mut self, msg: &Message) {
        if msg.sender == self.node.id {
            return;
        }
        if self.heard.len() >= MAX_PEERS_SEEN && !self.heard.contains_key(&msg.sender) {
            return; // a flood of forged ids: the ones heard first are kept
        }
        // On every datagram: no allocation; the version becomes text at the flush.
        let now = super::heard::Noted {
            at: Instant::now(),
            at_ms: crate::store::unix_ms(),
            version: msg.version,
            // A 2.0 peer tags most of its messages 1.0, but its STOREDs carry an INC line.
            speaks_two: msg.version.has_enhancements() || verify::incarnation_of(msg).is_some(),
        };
        let e = self.heard.entry(msg.sender).or_insert((now.at, now));
        e.1 = super::heard::Noted {
            version: super::heard::higher(e.1.version, msg.version),
            speaks_two: e.1.speaks_two || now.speaks_two,
            ..now
        };
    }

    /// The write of who was heard since the last flush (with the protocol each speaks, once
    /// known: '' keeps the catalog's), and of the LAN key marks taken (`auth::ReplayGuard`),
    /// to run beside the engine; None: nothing to write.
    fn flush_heard(&mut self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let marks = self.node.replay_guard().take_marks();
        if self.heard.is_empty() && marks.is_empty() {
            return None;
        }
        let heard: Vec<(PeerId, String, i64)> = match self.node.heard.lock() {
            Ok(mut since_start) => (self.heard.drain())
                .map(|(peer, (first, last))| {
                    let speaks = since_start.heard(peer, first, last);
                    (
                        peer,
                        speaks.map(|v| v.to_string()).unwrap_or_default(),
                        last.at_ms,
                    )
                })
                .collect(),
            Err(_) => (self.heard.drain())
                .map(|(peer, (_, last))| (peer, String::new(), last.at_ms))
                .collect(),
        };
        let node = self.node.clone();
        Some(async move {
            let r = (node.catalog)
                .call(move |c| {
                    c.heard_peers(&heard)?;
                    c.record_auth_marks(&marks)
                })
                .await;
            if let Err(e) = r {
                tracing::warn!("cannot record the peers heard: {e}");
            }
        })
    }

    fn input(&mut self, input: Input, now: Instant) {
        let e = &mut self.engine;
        match input {
            Input::StartJob { job, kind, events } => {
                self.jobs.insert(job, events);
                e.start_job(job, kind);
            }
            Input::EndJob(job) => {
                self.jobs.remove(&job);
                self.sources.retain(|_, (j, _)| *j != Some(job));
                e.end_job(job);
            }
            Input::BackupChunk {
                job,
                chunk,
                rd,
                body,
                known,
                source,
            } => {
                self.sources.insert(chunk.clone(), (Some(job), source));
                e.backup_chunk(job, chunk, rd, body, known, now);
            }
            Input::FetchChunk { job, chunk, expect } => e.fetch_chunk(job, chunk, expect, now),
            Input::SendRemoved(chunk) => e.send_removed(chunk, now),
            Input::SendDelete { file_ids, done } => {
                if let Some(done) = done {
                    self.delete_waiters.push((file_ids.clone(), done));
                }
                e.send_delete(file_ids, now);
            }
            Input::Announce(chunks) => e.announce(chunks, now),
            Input::Stored(chunk, put) => e.stored(&chunk, put, now),
            Input::Hosted(chunk, info) => e.hosted(&chunk, info, now),
            Input::Serve(chunk, body) => e.serve(chunk, body, now),
            Input::Removed(chunk, role, perceived) => e.removed(&chunk, role, perceived, now),
            Input::Rebackup(chunk, read) => {
                if let Some((wire, ..)) = &read {
                    self.sources.insert(wire.clone(), (None, Source::Hosted));
                }
                e.rebackup(&chunk, read, now);
            }
            Input::Body(chunk, body) => e.resend_body(&chunk, body, now),
            Input::FileDeleted(file_id, freed) => e.file_deleted(&file_id, freed, now),
            Input::TcpChunk(msg) => e.handle_tcp(msg),
            Input::Redelete(file_ids) => e.redelete(file_ids, now),
            Input::VerifySamples(samples) => e.verify_samples(samples, now),
            Input::Proof(chunk, nonce, body) => e.proof(chunk, nonce, body),
            Input::HandOn {
                chunk,
                rd,
                body,
                others,
                done,
            } => {
                self.sources
                    .entry(chunk.clone())
                    .or_insert((None, Source::Hosted));
                self.hand_ons.entry(chunk.clone()).or_default().push(done);
                e.hand_on(chunk, rd, body, others, now);
            }
        }
    }

    /// Sends what the engine transmits and carries out what it asks, until it has nothing left.
    async fn flush(&mut self) {
        loop {
            let mut idle = true;
            while let Some(msg) = self.engine.poll_transmit() {
                idle = false;
                self.node.send(msg).await;
            }
            while let Some(action) = self.engine.poll_action() {
                idle = false;
                self.act(action);
            }
            if idle {
                break;
            }
        }
        let c = self.engine.counters();
        let counters = &self.node.counters;
        counters
            .dropped_busy
            .store(c.busy_drops + c.reply_drops, Ordering::Relaxed);
        counters
            .putchunks_sent
            .store(c.putchunks_sent, Ordering::Relaxed);
        counters
            .putchunks_resent
            .store(c.putchunks_resent, Ordering::Relaxed);
    }

    /// Routes an event to a job; a job that is gone is ended.
    fn tell(&mut self, job: JobId, event: JobEvent) {
        let gone = self
            .jobs
            .get(&job)
            .is_some_and(|tx| tx.send(event).is_err());
        if gone {
            self.jobs.remove(&job);
            self.engine.end_job(job);
        }
    }

    fn act(&mut self, action: Action) {
        let node = self.node.clone();
        match action {
            Action::Store {
                chunk,
                rd,
                body,
                sender,
                write,
            } => {
                let alive = self.alive.clone();
                tokio::spawn(async move {
                    let put = disk::store_chunk(&node, &chunk, rd, body, sender, write).await;
                    node.engine(Input::Stored(chunk, put));
                    drop(alive);
                });
            }
            Action::RecordHolders { chunk, peers } => {
                for peer in peers {
                    if node.stored_tx.try_send((chunk.clone(), peer)).is_err() {
                        node.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Action::DropHosted { chunk } => {
                tokio::spawn(async move { disk::drop_hosted(&node, &chunk).await });
            }
            Action::LookupHosted { chunk } => {
                tokio::spawn(async move {
                    let c = chunk.clone();
                    let row = node
                        .catalog
                        .call(move |cat| cat.hosted(&c.file_id, c.chunk_no))
                        .await
                        .ok()
                        .flatten();
                    node.engine(Input::Hosted(chunk, row.map(|r| (r.size, r.hash))));
                });
            }
            Action::ReadHosted { chunk } => {
                tokio::spawn(async move {
                    // The fileId text exactly as the home peer wrote it.
                    let (wire, body) = match disk::read_hosted(&node, &chunk).await {
                        Some((row, body)) => (row.chunk_id(), Some(body)),
                        None => (chunk, None),
                    };
                    node.engine(Input::Serve(wire, body));
                });
            }
            Action::DeleteFile { file_id, sender } => {
                let Some(permit) = node.datagram_permit() else {
                    return self.engine.file_deleted(&file_id, false, Instant::now());
                };
                tokio::spawn(async move {
                    let freed = disk::delete_file(&node, &file_id, sender).await;
                    drop(permit);
                    node.engine(Input::FileDeleted(file_id, freed));
                });
            }
            Action::RemoveHolder { chunk, peer } => {
                let Some(permit) = node.datagram_permit() else {
                    return;
                };
                tokio::spawn(async move {
                    let r = disk::role_and_rd(&node, &chunk, Some(peer)).await;
                    drop(permit);
                    if let Some((role, perceived)) = r {
                        node.engine(Input::Removed(chunk, role, perceived));
                    }
                });
            }
            Action::ReadForRebackup { chunk, desired_rd } => {
                tokio::spawn(async move {
                    let read = disk::read_for_rebackup(&node, &chunk, desired_rd).await;
                    if read.is_some() {
                        tracing::info!(
                            "chunk {chunk} fell below RD {desired_rd}: backing it up again"
                        );
                    }
                    node.engine(Input::Rebackup(chunk, read));
                });
            }
            Action::Repair => node.repair.notify_one(),
            Action::ReadBody { chunk } => match self.sources.get(&chunk) {
                Some((
                    _,
                    Source::File {
                        file,
                        offset,
                        len,
                        hash,
                        key,
                    },
                )) => {
                    let (file, offset, len) = (file.clone(), *offset, *len);
                    let (hash, key, no) = (hash.clone(), key.clone(), chunk.chunk_no);
                    tokio::spawn(async move {
                        let body = tokio::task::spawn_blocking(move || {
                            let piece = reread(&file, offset, len)?;
                            let body = match key {
                                Some(key) => key.seal(no, &piece),
                                None => piece,
                            };
                            (sha256_hex(&body) == hash).then_some(body)
                        })
                        .await
                        .ok()
                        .flatten();
                        if body.is_none() {
                            tracing::warn!("chunk {chunk} changed on disk during its backup");
                        }
                        node.engine(Input::Body(chunk, body));
                    });
                }
                Some((_, Source::Held(body))) => {
                    let body = body.to_vec();
                    self.engine.resend_body(&chunk, Some(body), Instant::now());
                }
                Some((_, Source::Hosted)) => {
                    tokio::spawn(async move {
                        let body = disk::read_hosted(&node, &chunk).await.map(|(_, b)| b);
                        node.engine(Input::Body(chunk, body));
                    });
                }
                None => self.engine.resend_body(&chunk, None, Instant::now()),
            },
            Action::Credit { job, n } => self.tell(job, JobEvent::Credit(n)),
            Action::BackedUp {
                owners,
                chunk,
                outcome,
            } => {
                self.sources.remove(&chunk);
                // Handed on: another peer holds it now (whether or not its RD is reached).
                for done in self.hand_ons.remove(&chunk).unwrap_or_default() {
                    let _ = done.send(!outcome.holders.is_empty());
                }
                for owner in owners {
                    match owner {
                        Owner::Job(job) => {
                            self.tell(job, JobEvent::BackedUp(outcome.clone()))
                        }
                        Owner::Rebackup if !outcome.reached => tracing::warn!(
                            "chunk {chunk} is still below its desired RD ({} holders) after {} PUTCHUNKs",
                            outcome.holders.len(),
                            outcome.sends
                        ),
                        Owner::Rebackup => {}
                    }
                }
            }
            Action::Fetched {
                jobs, chunk, body, ..
            } => {
                for job in jobs {
                    self.tell(job, JobEvent::Fetched(chunk.clone(), body.clone()));
                }
            }
            Action::DeletesSent { file_ids } => {
                if let Some(i) = self.delete_waiters.iter().position(|(f, _)| *f == file_ids) {
                    let (_, done) = self.delete_waiters.swap_remove(i);
                    let _ = done.send(());
                }
                tokio::spawn(async move {
                    let r = node
                        .catalog
                        .call(move |c| file_ids.iter().try_for_each(|f| c.clear_pending_delete(f)))
                        .await;
                    if let Err(e) = r {
                        tracing::warn!("cannot clear the pending deletes: {e}");
                    }
                });
            }
            Action::CheckOwnId { chunk } => {
                tokio::spawn(async move { disk::check_own_id(&node, chunk).await });
            }
            Action::Announced => {
                tokio::spawn(async move { disk::announced(&node).await });
            }
            Action::Pull { from, chunk } => {
                // Bounded by the engine: a few pulls per chunk being fetched, and the fetches
                // by the restore window.
                tokio::spawn(async move {
                    match pull(&node, from, &chunk).await {
                        Ok(msg) => node.engine(Input::TcpChunk(msg)),
                        Err(e) => tracing::debug!("could not pull chunk {chunk} from {from}: {e}"),
                    }
                });
            }
            Action::DeleteAcked { file_id, peer } => {
                let Some(permit) = node.datagram_permit() else {
                    return;
                };
                tokio::spawn(async move {
                    let f = file_id.clone();
                    match node.catalog.call(move |c| c.delete_acked(&f, peer)).await {
                        Ok(true) => tracing::debug!("peer {peer} freed the chunks of {file_id}"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(
                            "cannot record DELETED of {file_id} from peer {peer}: {e}"
                        ),
                    }
                    drop(permit);
                });
            }
            Action::PeerBack { peer } => {
                let Some(permit) = node.datagram_permit() else {
                    return;
                };
                tokio::spawn(async move {
                    let r = node
                        .catalog
                        .call(move |c| c.unacked_deletes_for(peer, REDELETE_BATCH))
                        .await;
                    drop(permit);
                    match r {
                        Ok(file_ids) if file_ids.is_empty() => {}
                        Ok(file_ids) => {
                            tracing::info!(
                                "peer {peer} is back: sending again the DELETE of {} files it has not confirmed",
                                file_ids.len()
                            );
                            node.engine(Input::Redelete(file_ids));
                        }
                        Err(e) => {
                            tracing::warn!("cannot look up the deletes peer {peer} missed: {e}")
                        }
                    }
                });
            }
            Action::Incarnation { peer, inc } => {
                let Some(permit) = node.datagram_permit() else {
                    return;
                };
                tokio::spawn(async move {
                    let text = format!("{inc:016x}");
                    let r = (node.catalog)
                        .call(move |c| c.peer_incarnation(peer, &text))
                        .await;
                    drop(permit);
                    match r {
                        Ok(Some(copies)) => {
                            tracing::warn!(
                                "peer {peer} has a new chunk store (incarnation {inc:016x}): the {copies} chunk copies it held are no longer counted, and are made again"
                            );
                            node.repair.notify_one();
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!("cannot record the incarnation of peer {peer}: {e}")
                        }
                    }
                });
            }
            Action::SampleHolders => {
                tokio::spawn(async move {
                    let r = (node.catalog)
                        .call(|c| {
                            c.verify_samples(verify::CHUNKS_PER_HOLDER, verify::HOLDERS_PER_ROUND)
                        })
                        .await;
                    let samples = match r {
                        Ok(rows) => rows
                            .into_iter()
                            .map(|(holder, chunk, len, hash)| Sample {
                                holder,
                                chunk,
                                len,
                                hash,
                            })
                            .collect(),
                        Err(e) => {
                            tracing::warn!(
                                "cannot pick the chunks to verify at their holders: {e}"
                            );
                            Vec::new()
                        }
                    };
                    node.engine(Input::VerifySamples(samples));
                });
            }
            Action::ReadForProof { chunk, nonce } => {
                // Bounded by the engine: a few PROVEs answered per second.
                tokio::spawn(async move {
                    let (wire, body) = match disk::read_hosted(&node, &chunk).await {
                        Some((row, body)) => (row.chunk_id(), Some(body)),
                        None => (chunk, None),
                    };
                    node.engine(Input::Proof(wire, nonce, body));
                });
            }
            Action::NotHolder {
                peer,
                chunk,
                failure,
            } => {
                tokio::spawn(async move {
                    let c = chunk.clone();
                    let r = (node.catalog)
                        .call(move |cat| cat.remove_holder(&c.file_id, c.chunk_no, peer))
                        .await;
                    match r {
                        Ok(perceived) => {
                            tracing::warn!(
                                "peer {peer} failed to prove it holds chunk {chunk} ({failure:?}): no longer counted (perceived RD now {perceived}); repairing"
                            );
                            node.repair.notify_one();
                        }
                        Err(e) => {
                            tracing::warn!("cannot drop peer {peer} as a holder of {chunk}: {e}")
                        }
                    }
                });
            }
            Action::Recheck { chunk } => {
                tokio::spawn(async move {
                    if let Some((role, perceived)) = disk::role_and_rd(&node, &chunk, None).await {
                        node.engine(Input::Removed(chunk, role, perceived));
                    }
                });
            }
        }
    }
}

/// A piece of the file being backed up, read again for a resend (checked by its caller).
fn reread(file: &File, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut body = vec![0u8; len];
    file.read_exact_at(&mut body, offset).ok()?;
    Some(body)
}

/// Receives one channel's datagrams: checks the LAN key tag, parses, and hands well-formed
/// messages to the engine; what fails is dropped and counted.
pub(crate) async fn receive_loop(
    node: Arc<Node>,
    ch: Arc<ChannelSocket>,
    to_engine: mpsc::Sender<(Message, SocketAddr)>,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            _ = shutdown.recv() => return,
            r = ch.socket.recv_from(&mut buf) => r,
        };
        let (n, from) = match received {
            Ok(r) => {
                node.counters.traffic(ch.channel, false, r.0);
                r
            }
            Err(e) => {
                tracing::warn!("receiving on {:?}: {e}", ch.channel);
                // Not a protocol delay: keeps a persistent socket error from spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = super::unix_now();
        let (datagram, stamp) = match stamped(&node, &buf[..n], now) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%from, "dropped a datagram ({n} bytes) on {:?}: {e}", ch.channel);
                continue;
            }
        };
        let msg = match Message::parse(&datagram) {
            Ok(msg) if msg.channel() == ch.channel => msg,
            Ok(msg) => {
                node.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "dropped a {} that came on {:?}", msg.type_name(), ch.channel);
                continue;
            }
            Err(e) => {
                node.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "dropped a malformed datagram ({n} bytes) on {:?}: {e}", ch.channel);
                continue;
            }
        };
        if let Err(e) = fresh(&node, &msg, stamp, now) {
            tracing::debug!(%from, "dropped a {} on {:?}: {e}", msg.type_name(), ch.channel);
            continue;
        }
        match &node.net.faults {
            None => enqueue(&node, &to_engine, (msg, from)),
            // Fault injection (tests): the message is lost, delivered late, or twice.
            Some(faults) => {
                for delay in faults.fate().delays {
                    let (node, to_engine, msg) = (node.clone(), to_engine.clone(), msg.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        enqueue(&node, &to_engine, (msg, from));
                    });
                }
            }
        }
    }
}

/// A datagram or TCP frame as it may be read: with a LAN key, only what carries its valid tag
/// (SPEC §3), without the tag's line; what fails is counted.
fn authenticated<'a>(
    node: &Node,
    bytes: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, auth::AuthError> {
    stamped(node, bytes, super::unix_now()).map(|(bytes, _)| bytes)
}

/// `authenticated`, with the time and tag of the AUTH line (None: we have no LAN key).
fn stamped<'a>(
    node: &Node,
    bytes: &'a [u8],
    now: u64,
) -> Result<(std::borrow::Cow<'a, [u8]>, Option<auth::Stamp>), auth::AuthError> {
    let Some(key) = node.lan_key() else {
        return Ok((std::borrow::Cow::Borrowed(bytes), None));
    };
    auth::verify_stamped(&key, bytes, now)
        .map(|(bytes, stamp)| (std::borrow::Cow::Owned(bytes), Some(stamp)))
        .inspect_err(|_| {
            node.counters
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
        })
}

/// With a LAN key, a datagram already taken (replayed) is refused and counted as one without a
/// valid tag; a copy within a second of the first is refused uncounted (the sender's own
/// repeats look like that). Ours echo back from multicast and are left to the engine, which
/// ignores them.
fn fresh(
    node: &Node,
    msg: &Message,
    stamp: Option<auth::Stamp>,
    now: u64,
) -> Result<(), auth::AuthError> {
    let Some(stamp) = stamp else {
        return Ok(());
    };
    if msg.sender == node.id {
        return Ok(());
    }
    let taken = node.replay_guard().check(msg.sender, stamp, now);
    if taken
        .as_ref()
        .is_err_and(|e| *e != auth::AuthError::Repeated)
    {
        node.counters
            .unauthenticated
            .fetch_add(1, Ordering::Relaxed);
    }
    taken
}

fn enqueue(
    node: &Node,
    to_engine: &mpsc::Sender<(Message, SocketAddr)>,
    msg: (Message, SocketAddr),
) {
    if to_engine.try_send(msg).is_err() {
        node.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) type Datagrams = (
    mpsc::Sender<(Message, SocketAddr)>,
    mpsc::Receiver<(Message, SocketAddr)>,
);

pub(crate) fn datagram_queue() -> Datagrams {
    mpsc::channel(DATAGRAM_QUEUE)
}

/// 2.0: asks the holder at `from` for a chunk over TCP (a GETCHUNK, signed with the LAN key
/// when there is one) and gives back its answer: a CHUNK of that chunk, signed likewise. Its
/// bytes are checked by the fetch, as a multicast CHUNK's are.
async fn pull(node: &Arc<Node>, from: SocketAddr, chunk: &ChunkId) -> Result<Message, String> {
    let mut ask = Message::new(
        node.id,
        MessageKind::GetChunk {
            chunk: chunk.clone(),
        },
    );
    ask.version = Version::V2_0;
    let frame = (node.pulls)
        .pull(from, &node.sign(ask.encode()))
        .await
        .map_err(|e| e.to_string())?;
    let bytes = authenticated(node, &frame).map_err(|e| e.to_string())?;
    let msg = Message::parse(&bytes).map_err(|e| {
        node.counters.malformed.fetch_add(1, Ordering::Relaxed);
        format!("a malformed answer: {e}")
    })?;
    match &msg.kind {
        MessageKind::Chunk { chunk: got, .. } if got == chunk => Ok(msg),
        _ => {
            node.counters.malformed.fetch_add(1, Ordering::Relaxed);
            Err(format!(
                "answered with a {} of another chunk",
                msg.type_name()
            ))
        }
    }
}

/// 2.0: the holder's side of a pull: a request (one GETCHUNK, signed with the LAN key when there
/// is one) is answered with the chunk if this peer hosts it, read and checked against its
/// recorded hash; anything else closes the connection. The TCP handshake proved the address,
/// so the bytes go to whoever asked, as a multicast CHUNK goes to the whole LAN.
pub(crate) async fn answer_pull(
    node: Arc<Node>,
    request: Vec<u8>,
    from: SocketAddr,
) -> Option<Vec<u8>> {
    let bytes = match authenticated(&node, &request) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(%from, "dropped a TCP request: {e}");
            return None;
        }
    };
    let chunk = match Message::parse(&bytes) {
        Ok(Message {
            kind: MessageKind::GetChunk { chunk },
            sender,
            ..
        }) if sender != node.id => chunk,
        Ok(msg) => {
            node.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "dropped a {} that came over TCP", msg.type_name());
            return None;
        }
        Err(e) => {
            node.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "dropped a malformed TCP request: {e}");
            return None;
        }
    };
    let (_, body) = disk::read_hosted(&node, &chunk).await?;
    // The fileId text exactly as the requester wrote it: the one its fetch waits for.
    let mut msg = Message::new(node.id, MessageKind::Chunk { chunk, body });
    msg.version = Version::V2_0;
    let frame = node.sign(msg.encode());
    Some(frame)
}

impl Node {
    /// The replay guard; held only for one check or one take of its marks, never across an
    /// await.
    fn replay_guard(&self) -> std::sync::MutexGuard<'_, auth::ReplayGuard> {
        // A panic while it was held left it consistent enough: at worst a tag not remembered.
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An encoded message as it goes out: with the LAN key's tag when there is a key.
    pub(crate) fn sign(&self, bytes: Vec<u8>) -> Vec<u8> {
        match self.lan_key() {
            Some(key) => auth::sign(&key, &bytes, super::unix_now()),
            None => bytes,
        }
    }

    /// Encodes, signs (LAN key) and sends a message on its channel. A send error is logged, not
    /// fatal: the protocol's retransmissions cover a lost datagram.
    pub(crate) async fn send(&self, msg: Message) {
        let (channel, what) = (msg.channel(), msg.type_name());
        let bytes = self.sign(msg.encode());
        match self.net.send(channel, &bytes).await {
            Ok(()) => self.counters.traffic(channel, true, bytes.len()),
            Err(e) => tracing::warn!("sending {what} on {channel:?} failed: {e}"),
        }
    }
}
