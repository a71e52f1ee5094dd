//! One peer's side of the protocol (SPEC §2) as a state machine, in the style of quinn-proto:
//! the driver hands it datagrams (`handle`), the results of the disk and catalog work it asked
//! for (`stored`, `hosted`, ...), the commands of running jobs (`backup_chunk`, `fetch_chunk`,
//! `send_delete`, ...) and the passing of time (`handle_timeout`); it answers with messages to
//! send (`poll_transmit`), work for the driver (`poll_action`) and the next instant it wants to
//! be woken (`poll_timeout`). No sockets, no tokio, no SQLite; its random delays come from a
//! seeded generator, so a simulation replays exactly.
//!
//! `Peer` is a facade: it routes each message and timer to the part that owns its state —
//! `store` (the holder side of PUTCHUNK/STORED), `serve` (GETCHUNK answers), `backup` (our
//! PUTCHUNKs), `restore` (our fetches), `delete` (DELETE, REMOVED, DELETED), `reclaim`
//! (re-backups and hand-ons), `presence` (HELLO, peers heard, our own id), `verify` (2.0 holder
//! proofs) — over the shared `out` (timers, transmits, actions) and `jobs` (credit). A part
//! reaches another only through `Peer`'s methods and the other part's own accessors.

pub mod backup;
mod delete;
mod jobs;
mod out;
pub mod presence;
pub mod reclaim;
pub mod restore;
pub mod serve;
pub mod store;
pub mod verify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::protocol::{ChunkId, FileId, Message, MessageKind, PeerId, Version};
use backup::{Backups, Pace};
use delete::Deletes;
use jobs::Job;
use out::{Out, Timer};
use presence::Presence;
use reclaim::Reclaim;
use restore::Fetches;
use serve::Serve;
use store::Holder;
use verify::Verification;

pub use backup::{BackupOutcome, Owner, Stopped};
pub use delete::{
    DELETED_EVERY, DELETE_GRACE, DELETE_SENDS, DELETE_SPACING, REDELETE_GAPS, REMOVED_GAPS,
};
pub use jobs::{JobId, JobKind, BACKUP_WINDOW, MAX_CHUNKS_IN_BACKOFF, RESTORE_WINDOW};
pub use out::{Action, Counters, MAX_REPLY_DELAY, MAX_SEEN_ENTRIES};
pub use presence::{AWAY_AFTER, BACK_EVERY, HELLO_EVERY, MAX_PEERS_SEEN};
pub use reclaim::{MAX_RECHECKS, RECHECK_AFTER};
pub use restore::{Expect, MAX_PULLS_PER_FETCH, PULL_LINE, TCP_GETCHUNK_SENDS};
pub use serve::MAX_PENDING_REPLIES;
pub use store::{
    Put, Role, ANNOUNCE_BATCH, ANNOUNCE_EVERY, DROP_SETTLE, MAX_CONCURRENT_STORES,
    MAX_HEARD_WHILE_STORING, MAX_STORING_BYTES, STOREDS_REMEMBERED_FOR, TRIM_WINDOW, UNKNOWN_RD,
};

pub struct Peer {
    id: PeerId,
    /// Runs the 2.0 enhancements (SPEC §3); false: 1.0 only.
    enhanced: bool,
    /// 2.0: the port of our TCP listener, where peers pull the chunks we host (None: no pulls,
    /// either way).
    tcp_port: Option<u16>,
    out: Out,
    jobs: BTreeMap<JobId, Job>,
    store: Holder,
    serve: Serve,
    backup: Backups,
    restore: Fetches,
    delete: Deletes,
    reclaim: Reclaim,
    presence: Presence,
    verification: Verification,
}

impl Peer {
    /// A peer with id `id` whose random delays come from `seed`.
    pub fn new(id: PeerId, seed: u64) -> Peer {
        Peer {
            id,
            enhanced: false,
            tcp_port: None,
            out: Out::new(seed),
            jobs: BTreeMap::new(),
            store: Holder::new(),
            serve: Serve::new(),
            backup: Backups::new(),
            restore: Fetches::new(),
            delete: Deletes::new(),
            reclaim: Reclaim::new(),
            presence: Presence::new(),
            verification: Verification::new(MAX_PEERS_SEEN),
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
        self.presence.set_hello_every(hello_every);
    }

    pub fn counters(&self) -> Counters {
        self.out.counters
    }

    /// The next message to send, signed and encoded by the driver.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.out.transmits.pop_front()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.actions.pop_front()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.out.next_timer();
        let verify = self.verification.poll_timeout();
        timer.into_iter().chain(verify).min()
    }

    fn send(&mut self, kind: MessageKind) {
        match &kind {
            MessageKind::PutChunk { .. } => self.out.counters.putchunks_sent += 1,
            MessageKind::Chunk { .. } => self.out.counters.chunks_sent += 1,
            MessageKind::GetChunk { .. } => self.out.counters.getchunks_sent += 1,
            _ => {}
        }
        let msg = self.with_incarnation(Message::new(self.id, kind));
        self.out.transmits.push_back(msg);
    }

    /// A message of the 2.0 enhancements (1.0 peers ignore it, or take it as 1.0 would).
    fn send_v2(&mut self, kind: MessageKind) {
        let mut msg = Message::new(self.id, kind);
        msg.version = Version::V2_0;
        let msg = self.with_incarnation(msg);
        self.out.transmits.push_back(msg);
    }

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
                // It no longer holds it.
                self.store.forget_holder(&chunk, sender);
                self.out.actions.push_back(Action::RemoveHolder {
                    chunk,
                    peer: sender,
                });
            }
            MessageKind::Deleted { file_id } => {
                if self.enhanced {
                    let peer = sender;
                    self.out
                        .actions
                        .push_back(Action::DeleteAcked { file_id, peer });
                }
            }
            MessageKind::Hello | MessageKind::Prove { .. } | MessageKind::Proof { .. } => {}
        }
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
            self.serve.silence_pull_reply(chunk);
            if let (true, Some(from)) = (self.enhanced && self.tcp_port.is_some(), pull_from) {
                self.pull_offered(chunk, from);
            }
            if !self.restore.expects_empty(chunk) {
                return;
            }
        }
        let hash = self.serve.hash_for_reply(chunk, &body);
        self.chunk_for_fetch(chunk, body, hash);
    }

    // ---- time -------------------------------------------------------------------------------

    /// Runs every timer due at `now`, each handed to the part that armed it.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.verify_timeout(now);
        while let Some((key, timer)) = self.out.pop_due(now) {
            match timer {
                Timer::Stored(chunk) => self.stored_timer(chunk, key, now),
                Timer::Reply(chunk) => self.reply_timer(chunk, key, now),
                Timer::Rebackup(chunk) => self.rebackup_timer(chunk, key, now),
                Timer::Backup(chunk) => self.backup_timer(chunk, key, now),
                Timer::Fetch(chunk) => self.fetch_timer(chunk, key, now),
                Timer::Resend(id) => self.fire_resend(id, now),
                Timer::Announce => self.announce_timer(now),
                Timer::Store(chunk) => self.store_timer(chunk),
                Timer::Hello => self.fire_hello(now),
                Timer::Recheck(chunk) => self.recheck_timer(chunk),
                Timer::Pace => self.pace_timer(key, now),
            }
        }
    }

    // ---- what a part asks of another (parts never reach into each other) -------------------

    /// Whether this peer backs up the chunk itself now (a re-backup, a hand-on, or our own).
    fn backing_up(&self, chunk: &ChunkId) -> bool {
        self.reclaim.is_rebacking(chunk) || self.backup.is_sending(chunk)
    }

    /// The pace of our backups (a backup job's room follows it).
    fn backup_pace(&self) -> &Pace {
        self.backup.pace()
    }

    /// Whether a PUTCHUNK of the file must not be stored now: its DELETE is being carried out,
    /// or was heard just now.
    fn store_blocked(&self, file_id: &FileId, now: Instant) -> bool {
        self.delete.blocks_store(file_id, now)
    }

    /// When the file's last DELETE was heard (or sent by us).
    fn last_delete(&self, file_id: &FileId) -> Option<Instant> {
        self.delete.last_delete(file_id)
    }

    /// A PUTCHUNK for the chunk was seen: a re-backup waiting for its instant leaves the chunk
    /// to its sender.
    fn putchunk_seen(&mut self, chunk: &ChunkId, now: Instant) {
        self.reclaim.putchunk_seen(chunk, now);
    }

    /// A re-backup (or hand-on) ended.
    fn rebackup_ended(&mut self, chunk: &ChunkId) {
        self.reclaim.ended(chunk);
    }

    /// Whether the peer is alive: heard within three HELLOs.
    fn peer_alive(&self, peer: &PeerId, now: Instant) -> bool {
        self.presence.alive(peer, now)
    }

    /// Peers heard lately.
    fn peers_seen(&self) -> usize {
        self.presence.peers_seen()
    }

    /// What is in progress, for tests and `state`.
    pub fn load(&self) -> Load {
        Load {
            storing: self.store.storing(),
            replying: self.serve.replying(),
            sending: self.backup.sending(),
            fetching: self.restore.fetching(),
            rebacking: self.reclaim.rebacking(),
            timers: self.out.timer_count(),
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

#[cfg(test)]
mod tests;
