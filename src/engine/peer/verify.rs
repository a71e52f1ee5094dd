//! 2.0 (peerstash): a copy counted is a copy that exists. Each chunk store has an incarnation (a
//! random id made with its state folder), announced in an `INC` line of HELLO and STORED; a home
//! peer stops counting a holder whose incarnation changed. Beyond that, now and then the home
//! asks each holder for a few random chunks of its own (PROVE, with a fresh nonce) and checks
//! the answer (PROOF: the body, which must hash as recorded at backup, or `NONE`). This module
//! holds the timing and the choices; `Peer` carries the messages and the driver the catalog.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::engine::lru::LruMap;
use crate::protocol::{sha256_hex, ChunkId, Message, PeerId};

/// The header line that carries a store's incarnation: `INC <16 hex digits>`. Other
/// implementations ignore extra lines (SPEC §2).
pub const INC_WORD: &str = "INC";
/// PROVE: the one holder asked (`HOLDER <id>`); others stay quiet.
pub const HOLDER_WORD: &str = "HOLDER";
/// PROVE and PROOF: the home's fresh nonce (`NONCE <32 hex digits>`).
pub const NONCE_WORD: &str = "NONCE";
/// PROOF: the holder does not have the chunk.
pub const NONE_LINE: &str = "NONE";

/// Chunks asked of each holder per round.
pub const CHUNKS_PER_HOLDER: usize = 3;
/// Holders asked per round (the rest are asked in later rounds: the sample is random).
pub const HOLDERS_PER_ROUND: usize = 64;
/// Proofs awaited at once; samples beyond are left for the next round.
pub const MAX_PROBES: usize = 256;
/// A PROVE unanswered is sent again after this wait, doubled each time, at most
/// `PROVE_SENDS` sends in all (at 0, 2 and 6 s; given up at 14 s).
pub const PROVE_WAIT: Duration = Duration::from_secs(2);
pub const PROVE_SENDS: u32 = 3;
/// A holder answers at most this many PROVEs per second, whoever asks: a PROOF carries a body.
pub const PROOFS_PER_SECOND: u32 = 8;
/// A home's PROVEs to one holder in a round leave this far apart (well under the holder's
/// limit, so that several homes asking at once are still answered).
pub const PROVE_SPREAD: Duration = Duration::from_millis(500);
/// A peer's incarnation is taken as changed at most once per this: a forged flood of HELLOs
/// with changing lines costs one catalog update per peer per period.
pub const INC_CHANGE_EVERY: Duration = Duration::from_secs(5);

pub fn inc_line(inc: u64) -> String {
    format!("{INC_WORD} {inc:016x}")
}

/// The incarnation a message announces, if any (a malformed line is no incarnation).
pub fn incarnation_of(msg: &Message) -> Option<u64> {
    word_value(msg, INC_WORD, 16).map(|v| v as u64)
}

pub fn holder_line(holder: PeerId) -> String {
    format!("{HOLDER_WORD} {holder}")
}

/// The holder a PROVE names.
pub fn holder_of(msg: &Message) -> Option<PeerId> {
    let line = msg.extra_lines.iter().find_map(|l| {
        let mut words = l.split(' ').filter(|w| !w.is_empty());
        match (words.next(), words.next(), words.next()) {
            (Some(HOLDER_WORD), Some(id), None) => Some(id),
            _ => None,
        }
    })?;
    (!line.is_empty() && line.len() <= 10 && line.bytes().all(|b| b.is_ascii_digit()))
        .then(|| line.parse().ok().map(PeerId))
        .flatten()
}

pub fn nonce_line(nonce: u128) -> String {
    format!("{NONCE_WORD} {nonce:032x}")
}

pub fn nonce_of(msg: &Message) -> Option<u128> {
    word_value(msg, NONCE_WORD, 32)
}

/// The value of a `<word> <hex>` line with exactly `digits` hex digits.
fn word_value(msg: &Message, word: &str, digits: usize) -> Option<u128> {
    msg.extra_lines.iter().find_map(|l| {
        let mut words = l.split(' ').filter(|w| !w.is_empty());
        match (words.next(), words.next(), words.next()) {
            (Some(w), Some(hex), None)
                if w == word
                    && hex.len() == digits
                    && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                u128::from_str_radix(hex, 16).ok()
            }
            _ => None,
        }
    })
}

/// The incarnations heard lately (a cache of the catalog's `peers.incarnation`): a peer's is
/// handed to the catalog only when it is new to us or changed.
pub struct Incarnations {
    /// Each peer's incarnation, and when it last changed (None: not since we first heard it).
    known: LruMap<PeerId, (u64, Option<Instant>)>,
}

impl Incarnations {
    pub fn new(capacity: usize) -> Incarnations {
        Incarnations {
            known: LruMap::new(capacity),
        }
    }

    /// Whether `peer` announced an incarnation since we started (a peerstash 2.0 peer that
    /// answers PROVE; one configured 1.0 since is not judged for its silence).
    pub fn knows(&self, peer: PeerId) -> bool {
        self.known.get(&peer).is_some()
    }

    /// `peer` announced `inc` at `now`: true if the catalog should be told (first heard since
    /// we started, or changed; a change at most once per `INC_CHANGE_EVERY`).
    pub fn heard(&mut self, peer: PeerId, inc: u64, now: Instant) -> bool {
        match self.known.get(&peer) {
            None => {
                self.known.insert(peer, (inc, None));
                true
            }
            Some((known, _)) if *known == inc => false,
            Some((_, Some(at))) if now.saturating_duration_since(*at) < INC_CHANGE_EVERY => false,
            Some(_) => {
                self.known.insert(peer, (inc, Some(now)));
                true
            }
        }
    }
}

/// A chunk of ours counted at a holder, to be proven: what the catalog recorded at backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub holder: PeerId,
    pub chunk: ChunkId,
    pub len: u64,
    pub hash: String,
}

/// Why a holder is no longer counted for a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It said it does not have it.
    Lacks,
    /// It sent other bytes.
    WrongBody,
    /// It was heard, but did not answer any of the PROVEs.
    NoAnswer,
}

/// What the verification wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyOut {
    /// A round is due: look up samples (`CHUNKS_PER_HOLDER` per holder) and hand them to
    /// `samples`.
    AskSamples,
    /// Send PROVE for `chunk` to `holder` with `nonce`.
    Prove {
        holder: PeerId,
        chunk: ChunkId,
        nonce: u128,
    },
    /// `holder` no longer counts as a holder of `chunk`: drop it, and wake the repair.
    Failed {
        holder: PeerId,
        chunk: ChunkId,
        failure: Failure,
    },
}

struct Probe {
    sample: Sample,
    nonce: u128,
    sends: u32,
    first_sent: Instant,
    next: Instant,
}

/// The home's side: rounds every `every`, and the PROVEs awaiting their PROOF.
pub struct Verify {
    every: Duration,
    next_round: Instant,
    asked: bool,
    probes: BTreeMap<(PeerId, ChunkId), Probe>,
}

impl Verify {
    /// The first round comes one period after `now` (the holders have said HELLO by then).
    pub fn new(every: Duration, now: Instant) -> Verify {
        Verify {
            every,
            next_round: now + every,
            asked: false,
            probes: BTreeMap::new(),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let probe = self.probes.values().map(|p| p.next).min();
        let round = (!self.asked).then_some(self.next_round);
        probe.into_iter().chain(round).min()
    }

    /// Time passed. `last_heard`: when a peer was last heard (any message).
    pub fn on_timeout(
        &mut self,
        now: Instant,
        last_heard: impl Fn(PeerId) -> Option<Instant>,
    ) -> Vec<VerifyOut> {
        let mut out = Vec::new();
        if !self.asked && now >= self.next_round {
            self.asked = true;
            out.push(VerifyOut::AskSamples);
        }
        let due: Vec<(PeerId, ChunkId)> = (self.probes.iter())
            .filter(|(_, p)| p.next <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(p) = self.probes.get_mut(&key) else {
                continue;
            };
            if p.sends < PROVE_SENDS {
                p.sends += 1;
                p.next = now + PROVE_WAIT * (1 << (p.sends - 1));
                out.push(VerifyOut::Prove {
                    holder: key.0,
                    chunk: key.1.clone(),
                    nonce: p.nonce,
                });
                continue;
            }
            let Some(p) = self.probes.remove(&key) else {
                continue;
            };
            // Silent all along: not ours to judge (holder_timeout counts it lost).
            if last_heard(key.0).is_some_and(|t| t > p.first_sent) {
                out.push(VerifyOut::Failed {
                    holder: key.0,
                    chunk: key.1,
                    failure: Failure::NoAnswer,
                });
            }
        }
        out
    }

    /// The samples of a round: a PROVE for each (fresh nonces from `nonce`), but none for a
    /// chunk still being proven, and at most `MAX_PROBES` awaited. Each holder's first one goes
    /// now, the next ones `PROVE_SPREAD` apart. The next round is due one period from now.
    pub fn samples(
        &mut self,
        samples: Vec<Sample>,
        now: Instant,
        mut nonce: impl FnMut() -> u128,
    ) -> Vec<VerifyOut> {
        self.asked = false;
        self.next_round = now + self.every;
        let mut per_holder: BTreeMap<PeerId, u32> = BTreeMap::new();
        for sample in samples {
            let key = (sample.holder, sample.chunk.clone());
            if self.probes.len() >= MAX_PROBES || self.probes.contains_key(&key) {
                continue;
            }
            let k = per_holder.entry(sample.holder).or_insert(0);
            let at = now + PROVE_SPREAD * *k;
            *k += 1;
            let probe = Probe {
                sample,
                nonce: nonce(),
                sends: 0,
                first_sent: at,
                next: at,
            };
            self.probes.insert(key, probe);
        }
        self.on_timeout(now, |_| None)
    }

    /// When the next round is due, if no proof is awaited and no round asked (None: busy).
    pub fn idle_until(&self) -> Option<Instant> {
        (self.probes.is_empty() && !self.asked).then_some(self.next_round)
    }

    /// A PROOF from `sender`: `body` None when it said `NONE`. Only a PROOF with the nonce of a
    /// PROVE awaited from that very peer counts; it ends the probe either way.
    pub fn on_proof(
        &mut self,
        sender: PeerId,
        chunk: &ChunkId,
        nonce: u128,
        body: Option<&[u8]>,
    ) -> Option<VerifyOut> {
        let key = (sender, chunk.clone());
        if self.probes.get(&key).is_none_or(|p| p.nonce != nonce) {
            return None;
        }
        let p = self.probes.remove(&key)?;
        let failure = match body {
            None => Failure::Lacks,
            Some(b) if b.len() as u64 == p.sample.len && sha256_hex(b) == p.sample.hash => {
                return None
            }
            Some(_) => Failure::WrongBody,
        };
        Some(VerifyOut::Failed {
            holder: sender,
            chunk: key.1,
            failure,
        })
    }

    /// Proofs awaited (for tests and `state`).
    pub fn awaited(&self) -> usize {
        self.probes.len()
    }
}

/// The holder's side: at most `PROOFS_PER_SECOND` answers in each second, whoever asks.
#[derive(Default)]
pub struct ProofLimit {
    second: Option<Instant>,
    used: u32,
}

impl ProofLimit {
    /// Takes a slot for an answer at `now`; false: too many this second (the PROVE is dropped;
    /// the home sends it again).
    pub fn take(&mut self, now: Instant) -> bool {
        match self.second {
            Some(s) if now.saturating_duration_since(s) < Duration::from_secs(1) => {}
            _ => {
                self.second = Some(now);
                self.used = 0;
            }
        }
        if self.used >= PROOFS_PER_SECOND {
            return false;
        }
        self.used += 1;
        true
    }
}

/// Holder verification's state in `peer::Peer`: our store's incarnation, the peers', the
/// proofs we await as a home and the proofs we give as a holder.
pub(super) struct Verification {
    incarnation: Option<u64>,
    incarnations: Incarnations,
    verify: Option<Verify>,
    proof_limit: ProofLimit,
}

impl Verification {
    pub(super) fn new(peers: usize) -> Verification {
        Verification {
            incarnation: None,
            incarnations: Incarnations::new(peers),
            verify: None,
            proof_limit: ProofLimit::default(),
        }
    }

    /// When the next verification instant is, if verifying.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.verify.as_ref().and_then(Verify::poll_timeout)
    }
}

mod handlers;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChunkNo, FileId, MessageKind};

    fn chunk(no: u32) -> ChunkId {
        ChunkId {
            file_id: FileId::parse(&"ab".repeat(32)).unwrap(),
            chunk_no: ChunkNo(no),
        }
    }

    fn sample(holder: u32, no: u32, body: &[u8]) -> Sample {
        Sample {
            holder: PeerId(holder),
            chunk: chunk(no),
            len: body.len() as u64,
            hash: sha256_hex(body),
        }
    }

    #[test]
    fn lines_round_trip_and_malformed_ones_are_nothing() {
        let mut m = Message::new(PeerId(2), MessageKind::Prove { chunk: chunk(0) });
        m.extra_lines = vec![inc_line(0xdead), holder_line(PeerId(7)), nonce_line(42)];
        let m = Message::parse(&m.encode()).unwrap();
        assert_eq!(incarnation_of(&m), Some(0xdead));
        assert_eq!(holder_of(&m), Some(PeerId(7)));
        assert_eq!(nonce_of(&m), Some(42));
        for bad in [
            "INC 12",
            "INC zz00000000000000",
            "INC 0000000000000000 x",
            "HOLDER -1",
        ] {
            let mut m = Message::new(PeerId(2), MessageKind::Hello);
            m.extra_lines = vec![bad.into()];
            assert_eq!((incarnation_of(&m), holder_of(&m)), (None, None), "{bad}");
        }
    }

    #[test]
    fn an_incarnation_is_told_when_new_or_changed_at_most_once_per_period() {
        let t0 = Instant::now();
        let mut inc = Incarnations::new(4);
        assert!(inc.heard(PeerId(2), 1, t0));
        assert!(!inc.heard(PeerId(2), 1, t0 + Duration::from_secs(1)));
        // A store wiped and back within a second of the first HELLO: told at once.
        assert!(inc.heard(PeerId(3), 1, t0));
        assert!(inc.heard(PeerId(3), 2, t0 + Duration::from_millis(500)));
        assert!(inc.heard(PeerId(2), 2, t0 + Duration::from_secs(60)));
        // A flood of changes right after: ignored until the period is over.
        assert!(!inc.heard(PeerId(2), 3, t0 + Duration::from_secs(61)));
        assert!(!inc.heard(PeerId(2), 1, t0 + Duration::from_secs(64)));
        assert!(inc.heard(PeerId(2), 3, t0 + Duration::from_secs(65)));
    }

    #[test]
    fn a_round_every_period_and_proves_resent_at_0_2_6_then_judged() {
        let t0 = Instant::now();
        let every = Duration::from_secs(600);
        let mut v = Verify::new(every, t0);
        assert_eq!(v.poll_timeout(), Some(t0 + every));
        assert!(v
            .on_timeout(t0 + every - Duration::from_millis(1), |_| None)
            .is_empty());
        let t1 = t0 + every;
        assert_eq!(v.on_timeout(t1, |_| None), vec![VerifyOut::AskSamples]);
        // No second ask while the first is unanswered.
        assert!(v
            .on_timeout(t1 + Duration::from_secs(1), |_| None)
            .is_empty());
        let out = v.samples(vec![sample(2, 0, b"a"), sample(3, 0, b"a")], t1, || 7);
        assert_eq!(out.len(), 2);
        assert_eq!(v.idle_until(), None);
        let mut sends = vec![0u64];
        let heard = |p: PeerId| (p == PeerId(2)).then_some(t1 + Duration::from_secs(1));
        let mut failed = Vec::new();
        while let Some(next) = v.poll_timeout().filter(|n| *n < t1 + every) {
            let t = next;
            for o in v.on_timeout(t, heard) {
                match o {
                    VerifyOut::Prove {
                        holder: PeerId(2), ..
                    } => sends.push((t - t1).as_secs()),
                    VerifyOut::Failed {
                        holder, failure, ..
                    } => failed.push((holder, failure, (t - t1).as_secs())),
                    _ => {}
                }
            }
        }
        assert_eq!(sends, vec![0, 2, 6]);
        // Peer 2 was heard and never answered; peer 3 was silent: not judged here.
        assert_eq!(failed, vec![(PeerId(2), Failure::NoAnswer, 14)]);
        assert_eq!(v.awaited(), 0);
        assert_eq!(v.poll_timeout(), Some(t1 + every));
        assert_eq!(v.idle_until(), Some(t1 + every));
    }

    #[test]
    fn proves_to_one_holder_leave_half_a_second_apart() {
        let t0 = Instant::now();
        let mut v = Verify::new(Duration::from_secs(60), t0);
        let s = (0..3)
            .map(|n| sample(2, n, b"x"))
            .chain([sample(3, 0, b"x")]);
        let first = v.samples(s.collect(), t0, || 1);
        assert_eq!(first.len(), 2, "one to each holder now: {first:?}");
        assert_eq!(v.on_timeout(t0 + PROVE_SPREAD, |_| None).len(), 1);
        assert_eq!(v.on_timeout(t0 + PROVE_SPREAD * 2, |_| None).len(), 1);
    }

    #[test]
    fn a_proof_counts_only_from_the_holder_asked_with_its_nonce() {
        let t0 = Instant::now();
        let mut v = Verify::new(Duration::from_secs(1), t0);
        let s = vec![
            sample(2, 0, b"body"),
            sample(2, 1, b"more"),
            sample(3, 0, b"body"),
        ];
        let mut n = 0;
        v.samples(s, t0, || {
            n += 1;
            n
        });
        // Wrong nonce, wrong sender: nothing.
        assert_eq!(v.on_proof(PeerId(2), &chunk(0), 99, None), None);
        assert_eq!(v.on_proof(PeerId(4), &chunk(0), 1, None), None);
        assert_eq!(v.awaited(), 3);
        // The right body: holds.
        assert_eq!(v.on_proof(PeerId(2), &chunk(0), 1, Some(b"body")), None);
        // Other bytes, and NONE: failed.
        assert_eq!(
            v.on_proof(PeerId(2), &chunk(1), 2, Some(b"mork")),
            Some(VerifyOut::Failed {
                holder: PeerId(2),
                chunk: chunk(1),
                failure: Failure::WrongBody
            })
        );
        assert_eq!(
            v.on_proof(PeerId(3), &chunk(0), 3, None),
            Some(VerifyOut::Failed {
                holder: PeerId(3),
                chunk: chunk(0),
                failure: Failure::Lacks
            })
        );
        // A replay of an answered PROOF: nothing.
        assert_eq!(v.on_proof(PeerId(3), &chunk(0), 3, None), None);
        assert_eq!(v.awaited(), 0);
    }

    #[test]
    fn probes_are_bounded_and_not_doubled() {
        let t0 = Instant::now();
        let mut v = Verify::new(Duration::from_secs(1), t0);
        let many: Vec<Sample> = (0..MAX_PROBES as u32 + 10)
            .map(|i| sample(2, i, b"x"))
            .collect();
        v.samples(many.clone(), t0, || 1);
        assert_eq!(v.awaited(), MAX_PROBES);
        assert!(v.samples(many, t0, || 1).is_empty());
        assert_eq!(v.awaited(), MAX_PROBES);
    }

    /// The engine's side, through `Peer`: a 2.0 peer's HELLO and STORED carry its incarnation;
    /// a PROVE is answered only by the holder it names; a changed incarnation is told once.
    #[test]
    fn a_peer_announces_its_incarnation_and_answers_only_proves_naming_it() {
        use crate::engine::peer::{Action, Peer};
        use crate::protocol::Version;
        let t0 = Instant::now();
        let mut p = Peer::new(PeerId(5), 1);
        p.enhance(None, Duration::from_secs(60));
        p.set_incarnation(0xabc);
        p.start(t0);
        let hello = p.poll_transmit().unwrap();
        assert_eq!(incarnation_of(&hello), Some(0xabc));
        let from = |kind, lines: Vec<String>| {
            let mut m = Message::new(PeerId(2), kind);
            m.version = Version::V2_0;
            m.extra_lines = lines;
            m
        };
        let prove = |holder| {
            from(
                MessageKind::Prove { chunk: chunk(1) },
                vec![holder_line(PeerId(holder)), nonce_line(77)],
            )
        };
        p.handle(prove(6), t0);
        p.handle(prove(5), t0);
        let actions: Vec<Action> = std::iter::from_fn(|| p.poll_action()).collect();
        assert!(
            actions.contains(&Action::ReadForProof {
                chunk: chunk(1),
                nonce: 77
            }),
            "{actions:?}"
        );
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::ReadForProof { .. }))
                .count(),
            1
        );
        p.proof(chunk(1), 77, None);
        let proof = std::iter::from_fn(|| p.poll_transmit())
            .find(|m| matches!(m.kind, MessageKind::Proof { .. }))
            .unwrap();
        assert!(proof.has_line(NONE_LINE) && nonce_of(&proof) == Some(77));
        assert_eq!(incarnation_of(&proof), Some(0xabc));
        // Peer 2's incarnation: told when first heard and when changed, not when repeated.
        let hello2 = |inc| from(MessageKind::Hello, vec![inc_line(inc)]);
        let told = |p: &mut Peer| {
            std::iter::from_fn(|| p.poll_action())
                .filter(|a| matches!(a, Action::Incarnation { .. }))
                .count()
        };
        p.handle(hello2(1), t0);
        assert_eq!(told(&mut p), 1);
        p.handle(hello2(1), t0 + Duration::from_secs(1));
        assert_eq!(told(&mut p), 0);
        p.handle(hello2(2), t0 + Duration::from_secs(2));
        assert_eq!(told(&mut p), 1);
    }

    #[test]
    fn a_holder_answers_at_most_eight_proves_a_second() {
        let t0 = Instant::now();
        let mut l = ProofLimit::default();
        let taken = (0..10).filter(|_| l.take(t0)).count();
        assert_eq!(taken, PROOFS_PER_SECOND as usize);
        assert!(!l.take(t0 + Duration::from_millis(999)));
        assert!(l.take(t0 + Duration::from_secs(1)));
    }
}
