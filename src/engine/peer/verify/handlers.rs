//! Holder verification as a part of `peer::Peer` (2.0): the `INC` line on what we say, PROVE and
//! PROOF both ways, and the rounds `Verify` schedules.

use std::time::{Duration, Instant};

use rand::Rng;

use super::{Sample, Verify, VerifyOut};
use crate::engine::peer::out::Action;
use crate::engine::peer::Peer;
use crate::engine::verify;
use crate::protocol::{ChunkId, Message, MessageKind, PeerId, Version};

impl Peer {
    /// 2.0: our chunk store's incarnation, announced in HELLO and STORED (and PROOF).
    pub fn set_incarnation(&mut self, inc: u64) {
        self.verification.incarnation = Some(inc);
    }

    /// 2.0: as a home peer, asks each holder to prove a few chunks of ours every `every`.
    pub fn verify_holders(&mut self, every: Duration, now: Instant) {
        self.verification.verify = Some(Verify::new(every, now));
    }

    /// 2.0: when the next verification round is due, if no proof is awaited (None: none is
    /// due, or proofs are awaited): a simulation waits for quiet until then.
    pub fn verify_idle_until(&self) -> Option<Instant> {
        self.verification
            .verify
            .as_ref()
            .and_then(Verify::idle_until)
    }

    /// The `INC` line on what says this store holds something (STORED, PROOF) or announces it
    /// (HELLO): 2.0 only; 1.0 peers and other implementations ignore extra lines.
    pub(in crate::engine) fn with_incarnation(&self, mut msg: Message) -> Message {
        let says = matches!(
            msg.kind,
            MessageKind::Stored { .. } | MessageKind::Hello | MessageKind::Proof { .. }
        );
        if let (true, true, Some(inc)) = (self.enhanced, says, self.verification.incarnation) {
            msg.extra_lines.push(verify::inc_line(inc));
        }
        msg
    }

    pub(in crate::engine) fn on_incarnation(&mut self, peer: PeerId, inc: u64, now: Instant) {
        if self.verification.incarnations.heard(peer, inc, now) {
            self.out
                .actions
                .push_back(Action::Incarnation { peer, inc });
        }
    }

    /// PROVE (for us only if it names us) and PROOF (for us only if it answers a PROVE of ours).
    pub(in crate::engine) fn on_verify_message(&mut self, msg: Message, now: Instant) {
        let Some(nonce) = verify::nonce_of(&msg) else {
            return;
        };
        let none = msg.has_line(verify::NONE_LINE);
        let ours = verify::holder_of(&msg) == Some(self.id);
        match msg.kind {
            MessageKind::Prove { chunk } if ours && self.verification.proof_limit.take(now) => {
                self.out
                    .actions
                    .push_back(Action::ReadForProof { chunk, nonce });
            }
            MessageKind::Proof { chunk, body } => {
                let body = (!none).then_some(body.as_slice());
                let out = (self.verification.verify.as_mut())
                    .and_then(|v| v.on_proof(msg.sender, &chunk, nonce, body));
                self.verify_out(out.into_iter().collect());
            }
            _ => {}
        }
    }

    /// The hosted chunk a PROVE asked for, read and checked (None: not here): the PROOF.
    pub fn proof(&mut self, chunk: ChunkId, nonce: u128, body: Option<Vec<u8>>) {
        let none = body.is_none();
        let mut msg = Message::new(
            self.id,
            MessageKind::Proof {
                chunk,
                body: body.unwrap_or_default(),
            },
        );
        msg.version = Version::V2_0;
        msg.extra_lines.push(verify::nonce_line(nonce));
        if none {
            msg.extra_lines.push(verify::NONE_LINE.into());
        }
        let msg = self.with_incarnation(msg);
        self.out.transmits.push_back(msg);
    }

    /// The chunks of ours to prove this round.
    pub fn verify_samples(&mut self, samples: Vec<Sample>, now: Instant) {
        let Some(v) = self.verification.verify.as_mut() else {
            return;
        };
        let rng = &mut self.out.rng;
        let out = v.samples(samples, now, || rng.gen());
        self.verify_out(out);
    }

    pub(in crate::engine) fn verify_timeout(&mut self, now: Instant) {
        let Some(v) = self.verification.verify.as_mut() else {
            return;
        };
        let (presence, incs) = (&self.presence, &self.verification.incarnations);
        let out = v.on_timeout(now, |p| {
            incs.knows(p).then(|| presence.last_heard(&p)).flatten()
        });
        self.verify_out(out);
    }

    pub(in crate::engine) fn verify_out(&mut self, out: Vec<VerifyOut>) {
        for o in out {
            match o {
                VerifyOut::AskSamples => self.out.actions.push_back(Action::SampleHolders),
                VerifyOut::Prove {
                    holder,
                    chunk,
                    nonce,
                } => {
                    let mut msg = Message::new(self.id, MessageKind::Prove { chunk });
                    msg.version = Version::V2_0;
                    msg.extra_lines.push(verify::holder_line(holder));
                    msg.extra_lines.push(verify::nonce_line(nonce));
                    self.out.transmits.push_back(msg);
                }
                VerifyOut::Failed {
                    holder,
                    chunk,
                    failure,
                } => self.out.actions.push_back(Action::NotHolder {
                    peer: holder,
                    chunk,
                    failure,
                }),
            }
        }
    }
}
