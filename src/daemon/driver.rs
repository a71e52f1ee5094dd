//! The thin async layer around `engine::Peer`. One task owns the engine: the receive loops hand
//! it datagrams, the commands hand it their chunks, the disk and catalog tasks it spawned hand
//! it their results, and one timer wakes it when the engine asked (its own timers, and
//! `presence::HeardBatch`'s record of who was heard). It sends what the engine transmits and
//! carries out what the engine asks; every delay and choice is the engine's.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::inbox::{Input, JobEvent, Source};
use super::receive::pull;
use super::{disk, Node};
use crate::engine::peer::{Action, JobId, Owner, Peer};
use crate::engine::presence::{HeardBatch, Noted};
use crate::engine::verify::{self, Sample};
use crate::protocol::{sha256_hex, ChunkId, FileId, Message, PeerId};

/// DELETEs looked up at once for a peer that is back (the rest at its next HELLO).
const REDELETE_BATCH: usize = 1000;

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
    /// Peers heard since the catalog last recorded them, and when it records them next.
    heard: HeardBatch,
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
    let heard = HeardBatch::new(node.id, Instant::now());
    let mut d = Driver {
        engine,
        node,
        jobs: HashMap::new(),
        sources: HashMap::new(),
        delete_waiters: Vec::new(),
        hand_ons: HashMap::new(),
        alive: shutdown.clone(),
        heard,
    };
    // What the engine says at start (HELLO) goes out now.
    d.flush().await;
    loop {
        // The engine's next timer, or the next record of who was heard, whichever is first.
        let heard_due = d.heard.poll_timeout();
        let wake = (d.engine.poll_timeout()).map_or(heard_due, |at| at.min(heard_due));
        let timer = tokio::time::sleep_until(wake.into());
        tokio::select! {
            biased;
            _ = shutdown.recv() => break,
            Some(input) = inputs.recv() => d.input(input, Instant::now()),
            Some((msg, from)) = datagrams.recv() => {
                d.heard(&msg);
                d.engine.handle_from(msg, Some(from), Instant::now());
            }
            _ = timer => {}
        }
        if let Some(heard) = d.heard.due(Instant::now()) {
            if let Some(write) = d.record_heard(heard) {
                tokio::spawn(write);
            }
        }
        d.engine.handle_timeout(Instant::now());
        let load = d.engine.load();
        (d.node.counters.chunks_in_flight)
            .store((load.sending + load.fetching) as u64, Ordering::Relaxed);
        d.flush().await;
    }
    // Who was heard and the LAN key marks taken since the last record: without the marks, what
    // was taken in the last second could be replayed after the restart.
    let heard = d.heard.take();
    if let Some(write) = d.record_heard(heard) {
        write.await;
    }
}

impl Driver {
    /// Notes who spoke, for the catalog (any message counts: `peers`, lost holders) and for
    /// what it speaks (`heard::SinceStart`).
    fn heard(&mut self, msg: &Message) {
        // On every datagram: no allocation; the version becomes text when recorded.
        self.heard.note(
            msg.sender,
            Noted {
                at: Instant::now(),
                at_ms: crate::clock::unix_ms(),
                version: msg.version,
                // A 2.0 peer tags most of its messages 1.0, but its STOREDs carry an INC line.
                speaks_two: msg.version.has_enhancements() || verify::incarnation_of(msg).is_some(),
            },
        );
    }

    /// The write of who was heard since the last record (`HeardBatch::due`; with the protocol
    /// each speaks, once known: '' keeps the catalog's), and of the LAN key marks taken
    /// (`auth::ReplayGuard`), to run beside the engine; None: nothing to write.
    fn record_heard(
        &mut self,
        batch: Vec<(PeerId, Instant, Noted)>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let marks = self.node.replay_guard().take_marks();
        if batch.is_empty() && marks.is_empty() {
            return None;
        }
        let heard: Vec<(PeerId, String, i64)> = match self.node.heard.lock() {
            Ok(mut since_start) => (batch.into_iter())
                .map(|(peer, first, last)| {
                    let speaks = since_start.heard(peer, first, last);
                    (
                        peer,
                        speaks.map(|v| v.to_string()).unwrap_or_default(),
                        last.at_ms,
                    )
                })
                .collect(),
            Err(_) => (batch.into_iter())
                .map(|(peer, _, last)| (peer, String::new(), last.at_ms))
                .collect(),
        };
        let node = self.node.clone();
        Some(async move {
            let r = node.catalog.record_heard(heard, marks).await;
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
                    if (node.stored_tx)
                        .try_send(disk::ToRecord::Stored(chunk.clone(), peer))
                        .is_err()
                    {
                        node.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Action::DropHosted { chunk } => {
                tokio::spawn(async move { disk::drop_hosted(&node, &chunk).await });
            }
            Action::LookupHosted { chunk } => {
                tokio::spawn(async move {
                    let row = node.catalog.hosted(&chunk).await.ok().flatten();
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
                    let r = node.catalog.clear_pending_deletes(file_ids).await;
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
                    match node.catalog.delete_acked(&file_id, peer).await {
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
                    let r = node.catalog.unacked_deletes_for(peer, REDELETE_BATCH).await;
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
                    let r = node.catalog.peer_incarnation(peer, text).await;
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
                        .verify_samples(verify::CHUNKS_PER_HOLDER, verify::HOLDERS_PER_ROUND)
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
                    let r = node.catalog.remove_holder(&chunk, peer).await;
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
