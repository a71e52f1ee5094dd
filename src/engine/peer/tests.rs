//! Unit tests of `Peer`: replayed instants, one file per part; the helpers they share.
use super::*;
use crate::engine::backup::Pace;
use crate::protocol::ChunkNo;
use crate::protocol::{sha256_hex, FileId, Rd};

const ME: PeerId = PeerId(1);

fn chunk(no: u32) -> ChunkId {
    ChunkId {
        file_id: FileId::parse(&"a".repeat(64)).unwrap(),
        chunk_no: ChunkNo(no),
    }
}

fn msg(from: u32, kind: MessageKind) -> Message {
    Message::new(PeerId(from), kind)
}

fn rd(n: u8) -> Rd {
    Rd::new(n).unwrap()
}

/// An empty PUTCHUNK of chunk `no` at RD `r`, from peer `from`.
fn put(from: u32, no: u32, r: u8) -> Message {
    let kind = MessageKind::PutChunk {
        chunk: chunk(no),
        rd: rd(r),
        body: vec![],
    };
    msg(from, kind)
}

/// A DELETE of chunk `no`'s file, from peer `from`.
fn delete(from: u32, no: u32) -> Message {
    let file_id = chunk(no).file_id;
    msg(from, MessageKind::Delete { file_id })
}

/// Runs the timers up to `until`, returning each message sent with its time since `t0`.
fn run(p: &mut Peer, t0: Instant, until: Duration) -> Vec<(Duration, Message)> {
    let mut sent: Vec<(Duration, Message)> = std::iter::from_fn(|| p.poll_transmit())
        .map(|m| (Duration::ZERO, m))
        .collect();
    while let Some(at) = p.poll_timeout().filter(|at| *at <= t0 + until) {
        p.handle_timeout(at);
        sent.extend(std::iter::from_fn(|| p.poll_transmit()).map(|m| (at - t0, m)));
    }
    sent
}

fn actions(p: &mut Peer) -> Vec<Action> {
    std::iter::from_fn(|| p.poll_action()).collect()
}

/// Waits drawn with 50 seeds are random over 0..=`MAX_REPLY_DELAY`: none longer, and spread
/// (a constant, 0 or any other, fails; so does a range much narrower than the one specified).
/// 50 uniform draws of 401 values: all three bounds fail by chance with odds below 1e-6.
fn assert_random_waits(waits: &[Duration]) {
    assert_eq!(waits.len(), 50);
    let max = *waits.iter().max().unwrap();
    let min = *waits.iter().min().unwrap();
    assert!(
        max <= MAX_REPLY_DELAY,
        "a wait longer than the range: {waits:?}"
    );
    assert!(min < MAX_REPLY_DELAY / 4, "no short wait: {waits:?}");
    assert!(max > MAX_REPLY_DELAY * 3 / 4, "no long wait: {waits:?}");
    let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
    assert!(distinct.len() >= 25, "waits not random: {waits:?}");
}

fn getchunk(p: &mut Peer, no: u32, at: Instant) {
    p.handle(msg(2, MessageKind::GetChunk { chunk: chunk(no) }), at);
}

// ---- protocol 2.0 ------------------------------------------------------------------------

/// A 2.0 peer (TCP port 7000, HELLO every minute), started at `t0`; its first HELLO taken.
fn enhanced(seed: u64, t0: Instant) -> Peer {
    let mut p = Peer::new(ME, seed);
    p.enhance(Some(7000), HELLO_EVERY);
    p.start(t0);
    let hello = p.poll_transmit().unwrap();
    assert_eq!(
        (hello.kind, hello.version),
        (MessageKind::Hello, Version::V2_0)
    );
    p
}

fn stored(from: u32, no: u32) -> Message {
    msg(from, MessageKind::Stored { chunk: chunk(no) })
}

/// The `write` flag of the `Store` among the actions.
fn store_write(a: &[Action]) -> Option<bool> {
    a.iter().find_map(|a| match a {
        Action::Store { write, .. } => Some(*write),
        _ => None,
    })
}

/// The actions asked for, but the 2.0 "a peer is back" ones.
fn work(p: &mut Peer) -> Vec<Action> {
    let mut all = actions(p);
    all.retain(|a| !matches!(a, Action::PeerBack { .. }));
    all
}

/// A 2.0 GETCHUNK for chunk `no` that asks where to pull it.
fn pull_getchunk(no: u32) -> Message {
    let mut get = msg(2, MessageKind::GetChunk { chunk: chunk(no) });
    get.version = Version::V2_0;
    get.extra_lines.push(PULL_LINE.into());
    get
}

mod serve;
mod store;
mod store_v2;
fn credit(a: &[Action]) -> usize {
    a.iter()
        .map(|a| match a {
            Action::Credit { n, .. } => *n,
            _ => 0,
        })
        .sum()
}

mod backup;
mod delete;
mod presence;
mod restore;
