//! The LAN key's datagram tags (SPEC §3, "Beyond the statement"): a keyed peer adds, as the last
//! header line of every datagram, `AUTH <unix-seconds> <hex of HMAC-SHA256(key, seconds as
//! decimal ASCII || the datagram without this line)>`, and drops what does not carry a valid one.
//! `ReplayGuard` refuses a valid datagram taken before (its tag seen, or dated before what its
//! sender was heard at). Pure: the caller gives the clock.
//!
//! What it does not stop: anyone who holds the key can forge anything.

use std::collections::{BTreeMap, HashMap};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::message::{PeerId, MAX_HEADER_LEN};

/// A datagram whose time is further than this from the receiver's clock is refused.
pub const MAX_SKEW_SECS: u64 = 60;
/// Bytes in a LAN key file.
pub const KEY_LEN: usize = 32;

const TAG_LEN: usize = 32;
const PREFIX: &str = "AUTH";

/// The secret shared by the peers of a LAN. Its bytes never show in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct LanKey([u8; KEY_LEN]);

impl LanKey {
    pub fn new(bytes: [u8; KEY_LEN]) -> LanKey {
        LanKey(bytes)
    }

    fn mac(&self, unix_secs: u64) -> Hmac<Sha256> {
        // HMAC takes a key of any length: a 32-byte key cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of every length");
        mac.update(unix_secs.to_string().as_bytes());
        mac
    }
}

impl std::fmt::Debug for LanKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LanKey(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no end of header (CRLF CRLF)")]
    NoHeaderEnd,
    #[error("no AUTH line (the sender has no LAN key)")]
    Missing,
    #[error("malformed AUTH line")]
    Malformed,
    #[error("AUTH time {sent} is more than {MAX_SKEW_SECS} s away from ours ({now})")]
    Stale { sent: u64, now: u64 },
    #[error("AUTH tag does not match (another key, or an altered datagram)")]
    BadTag,
    #[error("replayed: this AUTH tag was already taken")]
    Replayed,
    /// A copy of a datagram taken at most a second before: what a sender's own repeats look
    /// like (DELETE is sent 8 times 300 ms apart, REMOVED 3 times within 0.6 s, each signed in
    /// the same second alike). Refused as well, but not worth counting.
    #[error("a copy of a datagram taken within the last second")]
    Repeated,
    #[error("replayed: AUTH time {sent} is before what peer {sender} was heard at ({mark})")]
    Behind {
        sender: PeerId,
        sent: u64,
        mark: u64,
    },
    #[error("the AUTH tags seen fill their cache ({MAX_SEEN_TAGS} tags, {MAX_SENDERS} senders): refused unchecked")]
    Full,
}

/// Where the header's empty line starts: the position of the first CRLF CRLF, looked for where
/// the message parser looks for it.
fn header_end(datagram: &[u8]) -> Option<usize> {
    let window = &datagram[..datagram.len().min(MAX_HEADER_LEN + 4)];
    window.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The datagram with an AUTH line added as its last header line. A datagram without a header
/// end is no message: it is returned unchanged (and keyed peers will drop it).
pub fn sign(key: &LanKey, datagram: &[u8], unix_secs: u64) -> Vec<u8> {
    let Some(end) = header_end(datagram) else {
        return datagram.to_vec();
    };
    let mut mac = key.mac(unix_secs);
    mac.update(datagram);
    let tag = mac.finalize().into_bytes();
    let line = format!("{PREFIX} {unix_secs} {}\r\n", super::hex(&tag));
    // After the CRLF that ends the last header line, before the empty line.
    let at = end + 2;
    let mut out = Vec::with_capacity(datagram.len() + line.len());
    out.extend_from_slice(&datagram[..at]);
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(&datagram[at..]);
    out
}

/// Checks the AUTH line of a received datagram and gives back the datagram without it, as it
/// was signed. Refuses a missing or malformed line, a time more than `MAX_SKEW_SECS` away from
/// `now_secs`, and a tag that does not match (compared in constant time). Never panics.
pub fn verify(key: &LanKey, datagram: &[u8], now_secs: u64) -> Result<Vec<u8>, AuthError> {
    verify_stamped(key, datagram, now_secs).map(|(unsigned, _)| unsigned)
}

/// `verify`, with the datagram's time and tag, for `ReplayGuard::check`.
pub fn verify_stamped(
    key: &LanKey,
    datagram: &[u8],
    now_secs: u64,
) -> Result<(Vec<u8>, Stamp), AuthError> {
    let end = header_end(datagram).ok_or(AuthError::NoHeaderEnd)?;
    // The AUTH line is the last header line, never the first (that is the message's own).
    let start = datagram[..end]
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map(|p| p + 2)
        .ok_or(AuthError::Missing)?;
    let line = std::str::from_utf8(&datagram[start..end]).map_err(|_| AuthError::Missing)?;
    let mut fields = line.split(' ').filter(|f| !f.is_empty());
    if fields.next() != Some(PREFIX) {
        return Err(AuthError::Missing);
    }
    let (Some(secs), Some(tag), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(AuthError::Malformed);
    };
    if secs.is_empty() || secs.len() > 20 || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::Malformed);
    }
    let sent: u64 = secs.parse().map_err(|_| AuthError::Malformed)?;
    // One spelling only (no leading zeros, lower-case hex): a signed datagram has no variants.
    if sent.to_string() != secs {
        return Err(AuthError::Malformed);
    }
    let tag = unhex(tag).ok_or(AuthError::Malformed)?;
    if sent.abs_diff(now_secs) > MAX_SKEW_SECS {
        return Err(AuthError::Stale {
            sent,
            now: now_secs,
        });
    }
    let mut unsigned = Vec::with_capacity(datagram.len());
    unsigned.extend_from_slice(&datagram[..start]);
    unsigned.extend_from_slice(&datagram[end + 2..]);
    let mut mac = key.mac(sent);
    mac.update(&unsigned);
    mac.verify_slice(&tag).map_err(|_| AuthError::BadTag)?;
    let mut short = [0u8; STAMP_TAG_LEN];
    short.copy_from_slice(&tag[..STAMP_TAG_LEN]);
    Ok((unsigned, Stamp { sent, tag: short }))
}

/// How far a sender's datagram may be dated behind the newest one taken from it. Datagrams are
/// signed as they go out (pacing holds messages before they are signed, and a resend is signed
/// again), so only the three channels' separate sockets and queues reorder them: by far less.
pub const REPLAY_SLACK_SECS: u64 = 10;
/// Tags remembered at most, over all senders (about 40 bytes each). Only datagrams with a valid
/// tag enter, so only keyed peers fill it; a tag stays about `REPLAY_SLACK_SECS` (at most
/// `MAX_SKEW_SECS`): this is about 12,000 datagrams a second over the whole LAN.
pub const MAX_SEEN_TAGS: usize = 1 << 17;
/// Senders whose mark is kept at most (sender ids are easily forged, but only with the key).
pub const MAX_SENDERS: usize = 4096;
/// Bytes of the tag remembered: 128 bits of an HMAC do not collide by chance.
const STAMP_TAG_LEN: usize = 16;

/// What a valid AUTH line says: when it was signed (the sender's clock), and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub sent: u64,
    tag: [u8; STAMP_TAG_LEN],
}

/// A sender's newest AUTH time taken (its clock), and when we took it (ours): kept across
/// restarts (the catalog's `peers`), so that what was taken before a restart is refused after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub sender: PeerId,
    pub mark: u64,
    pub marked_at: u64,
}

/// Refuses a datagram with a valid tag that was taken before: its tag seen within the time
/// window, or its time more than `REPLAY_SLACK_SECS` behind its sender's mark, or, after a
/// restart, not after what the sender could have sent before it. Bounded: when the tags seen
/// fill it, datagrams are refused, never taken unchecked.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: HashMap<PeerId, Sender>,
    /// Tags held over all senders.
    tags: usize,
    /// When every sender's old tags were last let go (our seconds).
    swept_at: u64,
}

#[derive(Debug, Default)]
struct Sender {
    mark: u64,
    marked_at: u64,
    /// Set when loaded after a restart: nothing dated at or before it is taken (the tags seen
    /// before were lost with the restart).
    floor: u64,
    /// Each tag taken, and when (our seconds).
    seen: BTreeMap<Stamp, u64>,
    /// The mark changed since `take_marks`.
    dirty: bool,
}

impl Sender {
    /// Below this, a tag can never be taken again (behind the mark, or stale), so it need not be
    /// remembered.
    fn oldest_kept(&self, now: u64) -> u64 {
        (self.mark.saturating_sub(REPLAY_SLACK_SECS)).max(now.saturating_sub(MAX_SKEW_SECS))
    }

    /// Lets go of the tags that can no longer be taken; how many.
    fn forget_old(&mut self, now: u64) -> usize {
        let keep = self.seen.split_off(&Stamp {
            sent: self.oldest_kept(now),
            tag: [0; STAMP_TAG_LEN],
        });
        std::mem::replace(&mut self.seen, keep).len()
    }
}

impl ReplayGuard {
    /// The guard of a peer that starts: each sender's stored mark, pushed forward by the time
    /// since it was taken (our clock), so that whatever the sender signed before now is refused;
    /// a mark from a clock set wrong is capped at `now + MAX_SKEW_SECS`, so it cannot lock a
    /// sender out for long.
    pub fn load(marks: impl IntoIterator<Item = Mark>, now: u64) -> ReplayGuard {
        let cap = now.saturating_add(MAX_SKEW_SECS);
        let senders = (marks.into_iter().take(MAX_SENDERS))
            .map(|m| {
                let mark = m.mark.min(cap);
                let since = now.saturating_sub(m.marked_at);
                let sender = Sender {
                    mark,
                    marked_at: m.marked_at.min(now),
                    floor: mark.saturating_add(since).min(cap),
                    ..Sender::default()
                };
                (m.sender, sender)
            })
            .collect();
        ReplayGuard {
            senders,
            tags: 0,
            swept_at: now,
        }
    }

    /// Takes a datagram of `sender` whose tag `verify_stamped` found valid at `now`, or refuses
    /// it: seen already, dated behind the sender's mark, or no room left to remember it.
    pub fn check(&mut self, sender: PeerId, stamp: Stamp, now: u64) -> Result<(), AuthError> {
        // `verify` refused it already; checked again because tags are let go once stale.
        if stamp.sent.abs_diff(now) > MAX_SKEW_SECS {
            return Err(AuthError::Stale {
                sent: stamp.sent,
                now,
            });
        }
        if now != self.swept_at {
            self.swept_at = now;
            let freed: usize = (self.senders.values_mut()).map(|s| s.forget_old(now)).sum();
            self.tags -= freed;
        }
        if !self.senders.contains_key(&sender) && self.senders.len() >= MAX_SENDERS {
            return Err(AuthError::Full);
        }
        let s = self.senders.entry(sender).or_default();
        // Our clock may have moved back since the mark was taken: a mark is never more than the
        // skew ahead of us.
        let cap = now.saturating_add(MAX_SKEW_SECS);
        if s.mark > cap || s.floor > cap {
            (s.mark, s.floor, s.marked_at, s.dirty) =
                (s.mark.min(cap), s.floor.min(cap), now, true);
        }
        // floor is 0 for a sender not loaded at start: the time 0 is stale anyway.
        if stamp.sent <= s.floor || stamp.sent.saturating_add(REPLAY_SLACK_SECS) < s.mark {
            return Err(AuthError::Behind {
                sender,
                sent: stamp.sent,
                mark: s.mark.max(s.floor),
            });
        }
        if let Some(taken) = s.seen.get(&stamp) {
            return Err(match now <= taken.saturating_add(1) {
                true => AuthError::Repeated,
                false => AuthError::Replayed,
            });
        }
        if self.tags >= MAX_SEEN_TAGS {
            // Not remembered, it could be taken again: refused, the sender's resends try again.
            return Err(AuthError::Full);
        }
        s.seen.insert(stamp, now);
        self.tags += 1;
        if stamp.sent > s.mark {
            (s.mark, s.marked_at, s.dirty) = (stamp.sent, now, true);
            self.tags -= s.forget_old(now);
        }
        Ok(())
    }

    /// The marks that changed since the last call, to be kept (the catalog).
    pub fn take_marks(&mut self) -> Vec<Mark> {
        (self.senders.iter_mut())
            .filter_map(|(sender, s)| std::mem::take(&mut s.dirty).then_some((sender, s)))
            .map(|(sender, s)| Mark {
                sender: *sender,
                mark: s.mark,
                marked_at: s.marked_at,
            })
            .collect()
    }

    /// Tags remembered now, over all senders.
    pub fn tags(&self) -> usize {
        self.tags
    }
}

fn unhex(text: &str) -> Option<[u8; TAG_LEN]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * TAG_LEN {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; TAG_LEN];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{ChunkId, ChunkNo, FileId, Message, MessageKind, PeerId, Rd};
    use proptest::prelude::*;

    const NOW: u64 = 1_760_000_000;

    fn key(b: u8) -> LanKey {
        LanKey::new([b; KEY_LEN])
    }

    fn putchunk(body: Vec<u8>) -> Vec<u8> {
        Message::new(
            PeerId(3),
            MessageKind::PutChunk {
                chunk: ChunkId {
                    file_id: FileId::parse(&"ab".repeat(32)).unwrap(),
                    chunk_no: ChunkNo(7),
                },
                rd: Rd::new(2).unwrap(),
                body,
            },
        )
        .encode()
    }

    #[test]
    fn a_signed_datagram_verifies_and_comes_back_unchanged() {
        let d = putchunk(b"chunk\r\n\r\nbytes".to_vec());
        let signed = sign(&key(1), &d, NOW);
        let text = String::from_utf8_lossy(&signed);
        let auth = text.lines().nth(1).unwrap();
        assert!(auth.starts_with(&format!("AUTH {NOW} ")), "{text}");
        assert_eq!(auth.len(), "AUTH ".len() + 10 + 1 + 64, "{auth:?}");
        assert_eq!(verify(&key(1), &signed, NOW), Ok(d.clone()));
        assert_eq!(verify(&key(1), &signed, NOW + 60), Ok(d.clone()));
        assert_eq!(verify(&key(1), &signed, NOW - 60), Ok(d));
    }

    #[test]
    fn the_tag_is_the_spec_s_hmac() {
        // HMAC-SHA256(key, seconds as decimal ASCII || datagram), computed independently.
        let d = b"1.0 DELETE 1 x\r\n\r\n";
        let signed = sign(&key(9), d, 42);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[9u8; 32]).unwrap();
        mac.update(b"42");
        mac.update(d);
        let want = crate::protocol::hex(&mac.finalize().into_bytes());
        let want = format!("1.0 DELETE 1 x\r\nAUTH 42 {want}\r\n\r\n");
        assert_eq!(String::from_utf8(signed).unwrap(), want);
    }

    #[test]
    fn the_auth_line_goes_after_other_extra_lines() {
        let d = b"2.0 GETCHUNK 1 x 0\r\nTCP 5000\r\n\r\n";
        let signed = String::from_utf8(sign(&key(1), d, NOW)).unwrap();
        let lines: Vec<&str> = signed.split("\r\n").collect();
        assert_eq!(lines[1], "TCP 5000");
        assert!(lines[2].starts_with("AUTH "));
        assert_eq!(lines[3], "");
        assert_eq!(verify(&key(1), signed.as_bytes(), NOW), Ok(d.to_vec()));
    }

    #[test]
    fn refusals() {
        let d = putchunk(vec![1, 2, 3]);
        let signed = sign(&key(1), &d, NOW);
        assert_eq!(verify(&key(1), &d, NOW), Err(AuthError::Missing));
        assert_eq!(verify(&key(2), &signed, NOW), Err(AuthError::BadTag));
        assert_eq!(
            verify(&key(1), &signed, NOW + 61),
            Err(AuthError::Stale {
                sent: NOW,
                now: NOW + 61
            })
        );
        assert!(matches!(
            verify(&key(1), &signed, NOW - 61),
            Err(AuthError::Stale { .. })
        ));
        assert_eq!(
            verify(&key(1), b"1.0 DELETE 1 x", NOW),
            Err(AuthError::NoHeaderEnd)
        );
        // The line alone, or an AUTH first line, is no signed message.
        assert_eq!(
            verify(&key(1), b"AUTH 1 00\r\n\r\n", NOW),
            Err(AuthError::Missing)
        );
        for bad in [
            "AUTH\r\n",
            "AUTH 5\r\n",
            "AUTH x 00\r\n",
            "AUTH -1 00\r\n",
            "AUTH 99999999999999999999999 00\r\n",
        ] {
            let d = format!("1.0 DELETE 1 x\r\n{bad}\r\n");
            assert_eq!(
                verify(&key(1), d.as_bytes(), NOW),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
        // A time moved within the window breaks the tag: the time is signed.
        let text = String::from_utf8(signed.clone()).unwrap();
        let moved = text.replacen(&format!("AUTH {NOW}"), &format!("AUTH {}", NOW + 1), 1);
        assert_eq!(
            verify(&key(1), moved.as_bytes(), NOW),
            Err(AuthError::BadTag)
        );
        // One spelling: no leading zero, no upper-case tag.
        let zero = text.replacen(&format!("AUTH {NOW}"), &format!("AUTH 0{NOW}"), 1);
        assert_eq!(
            verify(&key(1), zero.as_bytes(), NOW),
            Err(AuthError::Malformed)
        );
        let tag_line = text.lines().nth(1).unwrap();
        let upper = text.replacen(tag_line, &tag_line.to_uppercase(), 1);
        assert_eq!(
            verify(&key(1), upper.as_bytes(), NOW),
            Err(AuthError::Malformed)
        );
        // A tag moved to another datagram does not fit it.
        let other = putchunk(vec![1, 2, 4]);
        let mut forged = other.clone();
        let at = forged.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
        forged.splice(at..at, format!("{tag_line}\r\n").into_bytes());
        assert_eq!(verify(&key(1), &forged, NOW), Err(AuthError::BadTag));
    }

    #[test]
    fn a_1_0_peer_reads_a_signed_message() {
        let d = putchunk(vec![7; 1000]);
        let signed = sign(&key(1), &d, NOW);
        let plain = Message::parse(&d).unwrap();
        let read = Message::parse(&signed).unwrap();
        assert_eq!(read.kind, plain.kind);
        assert_eq!(read.sender, plain.sender);
        assert_eq!(read.extra_lines.len(), 1);
        assert!(read.extra_lines[0].starts_with("AUTH "));
    }

    // ---- replays -------------------------------------------------------------------------------

    /// The stamp of datagram `n` of a sender, signed at `sent`.
    fn stamp(n: u32, sent: u64) -> Stamp {
        let d = format!("1.0 STORED 2 {} {n}\r\n\r\n", "ab".repeat(32));
        verify_stamped(&key(1), &sign(&key(1), d.as_bytes(), sent), sent)
            .unwrap()
            .1
    }

    const P: PeerId = PeerId(2);

    #[test]
    fn a_tag_is_taken_once() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(P, stamp(0, NOW), NOW), Ok(()));
        // The same datagram again within a second of ours: refused, a copy such as the sender's
        // own repeats; 2, 4 and 60 s later: refused, a replay.
        for later in [0, 1] {
            assert_eq!(
                g.check(P, stamp(0, NOW), NOW + later),
                Err(AuthError::Repeated)
            );
        }
        for later in [2, 4, 60] {
            assert_eq!(
                g.check(P, stamp(0, NOW), NOW + later),
                Err(AuthError::Replayed),
                "{later}"
            );
        }
        // Another datagram of the same second, or the same one from another sender: taken.
        assert_eq!(g.check(P, stamp(1, NOW), NOW), Ok(()));
        assert_eq!(g.check(PeerId(3), stamp(0, NOW), NOW), Ok(()));
        // The same bytes signed at another second are another datagram (a resend).
        assert_eq!(g.check(P, stamp(0, NOW + 1), NOW + 1), Ok(()));
    }

    #[test]
    fn reordering_within_the_slack_is_taken_and_behind_it_refused() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(P, stamp(0, NOW + 10), NOW), Ok(()));
        // Up to REPLAY_SLACK_SECS behind the newest: taken (another channel, a queue).
        assert_eq!(g.check(P, stamp(1, NOW), NOW), Ok(()));
        assert_eq!(g.check(P, stamp(2, NOW + 9), NOW), Ok(()));
        // One second more: refused, though never seen and within MAX_SKEW_SECS of our clock.
        assert_eq!(
            g.check(P, stamp(3, NOW - 1), NOW),
            Err(AuthError::Behind {
                sender: P,
                sent: NOW - 1,
                mark: NOW + 10
            })
        );
        // Another sender has a mark of its own.
        assert_eq!(g.check(PeerId(3), stamp(3, NOW - 1), NOW), Ok(()));
    }

    #[test]
    fn tags_are_let_go_once_they_cannot_be_taken_anyway() {
        let mut g = ReplayGuard::default();
        for n in 0..5 {
            g.check(P, stamp(n, NOW), NOW).unwrap();
        }
        assert_eq!(g.tags(), 5);
        // The mark moves 10 s on: NOW is still within the slack, kept.
        g.check(P, stamp(9, NOW + 10), NOW + 10).unwrap();
        assert_eq!(g.tags(), 6);
        // 11 s on: the five are behind the mark, so refused without their tags.
        g.check(P, stamp(9, NOW + 11), NOW + 11).unwrap();
        assert_eq!(g.tags(), 2);
        assert!(matches!(
            g.check(P, stamp(0, NOW), NOW + 11),
            Err(AuthError::Behind { .. })
        ));
        // A silent sender's tags go once stale (our clock), at the next datagram of anyone.
        g.check(PeerId(3), stamp(0, NOW + 11), NOW + 11).unwrap();
        assert_eq!(g.tags(), 3);
        g.check(PeerId(4), stamp(0, NOW + 71), NOW + 71).unwrap();
        assert_eq!(
            g.tags(),
            3,
            "peer 2's and peer 3's (NOW + 11) stay, and peer 4's"
        );
        g.check(PeerId(4), stamp(1, NOW + 72), NOW + 72).unwrap();
        assert_eq!(g.tags(), 2, "theirs went stale; peer 4's two stay");
    }

    #[test]
    fn when_full_it_refuses_and_takes_again_once_tags_go() {
        let mut g = ReplayGuard::default();
        let many = |n: u32, sent: u64| {
            let mut t = [0u8; STAMP_TAG_LEN];
            t[..4].copy_from_slice(&n.to_be_bytes());
            Stamp { sent, tag: t }
        };
        for n in 0..MAX_SEEN_TAGS as u32 {
            g.check(P, many(n, NOW), NOW).unwrap();
        }
        assert_eq!(g.tags(), MAX_SEEN_TAGS);
        // Full: an unseen datagram is refused (never taken unchecked); a seen one is a replay.
        assert_eq!(g.check(P, stamp(0, NOW), NOW), Err(AuthError::Full));
        assert_eq!(g.check(PeerId(3), stamp(0, NOW), NOW), Err(AuthError::Full));
        assert_eq!(g.check(P, many(7, NOW), NOW + 2), Err(AuthError::Replayed));
        // Once they are stale, room again.
        assert_eq!(g.check(P, stamp(0, NOW + 61), NOW + 61), Ok(()));
        assert_eq!(g.tags(), 1);
        assert!(matches!(
            g.check(P, many(7, NOW + 50), NOW + 61),
            Err(AuthError::Behind { .. })
        ));
        // Senders are bounded too.
        let mut g = ReplayGuard::default();
        for p in 0..MAX_SENDERS as u32 {
            g.check(PeerId(p), stamp(0, NOW), NOW).unwrap();
        }
        assert_eq!(
            g.check(PeerId(MAX_SENDERS as u32), stamp(0, NOW), NOW),
            Err(AuthError::Full)
        );
        assert_eq!(g.check(PeerId(0), stamp(1, NOW), NOW), Ok(()));
    }

    #[test]
    fn after_a_restart_nothing_the_sender_sent_before_is_taken() {
        let mut before = ReplayGuard::default();
        before.check(P, stamp(0, NOW - 3), NOW).unwrap();
        before.check(P, stamp(1, NOW), NOW).unwrap();
        let marks = before.take_marks();
        assert_eq!(
            marks,
            vec![Mark {
                sender: P,
                mark: NOW,
                marked_at: NOW
            }]
        );
        assert_eq!(before.take_marks(), vec![], "given once");
        // Started again 5 s later (the tags are lost): whatever was signed up to NOW + 5 may
        // have been taken before, and is refused; what is signed after is taken.
        let mut g = ReplayGuard::load(marks, NOW + 5);
        for (n, sent) in [(0, NOW - 3), (1, NOW), (2, NOW + 2), (3, NOW + 5)] {
            assert!(
                matches!(
                    g.check(P, stamp(n, sent), NOW + 5),
                    Err(AuthError::Behind { .. })
                ),
                "{sent}"
            );
        }
        assert_eq!(g.check(P, stamp(4, NOW + 6), NOW + 6), Ok(()));
        // Still refused later; the floor does not hold another sender.
        assert!(g.check(P, stamp(0, NOW - 3), NOW + 6).is_err());
        assert_eq!(g.check(PeerId(3), stamp(0, NOW), NOW + 6), Ok(()));
        assert_eq!(g.take_marks().len(), 2);
    }

    #[test]
    fn a_mark_from_a_clock_set_wrong_is_capped() {
        // Stored while the sender's clock ran a day ahead: loaded as our now + MAX_SKEW_SECS.
        let wrong = Mark {
            sender: P,
            mark: NOW + 86_400,
            marked_at: NOW - 100,
        };
        let mut g = ReplayGuard::load([wrong], NOW);
        assert!(g.check(P, stamp(0, NOW + 60), NOW).is_err());
        // The sender, its clock right again, is refused no longer than the cap (+ the skew).
        assert!(g.check(P, stamp(1, NOW + 60), NOW + 60).is_err());
        assert_eq!(g.check(P, stamp(2, NOW + 61), NOW + 61), Ok(()));
        // Our own clock moving back caps the mark as it is updated, and it is written again.
        let mut g = ReplayGuard::default();
        g.check(P, stamp(0, NOW + 60), NOW).unwrap();
        g.take_marks();
        assert!(g.check(P, stamp(1, NOW - 1000), NOW - 1000).is_err());
        assert_eq!(
            g.take_marks(),
            vec![Mark {
                sender: P,
                mark: NOW - 940,
                marked_at: NOW - 1000
            }]
        );
        // Refused for at most MAX_SKEW_SECS - REPLAY_SLACK_SECS of the sender's clock.
        assert!(g.check(P, stamp(1, NOW - 951), NOW - 951).is_err());
        assert_eq!(g.check(P, stamp(1, NOW - 950), NOW - 950), Ok(()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        /// Whatever the order and the clock (never going back), a datagram is taken at most once,
        /// and one that was taken is never refused unless seen, behind or stale.
        #[test]
        fn a_stamp_is_never_taken_twice(
            events in proptest::collection::vec((0u32..3, 0u32..4, 0u64..30, 0u64..3), 1..200),
        ) {
            let mut g = ReplayGuard::default();
            let mut now = NOW;
            let mut taken = std::collections::HashSet::new();
            for (sender, n, sent, tick) in events {
                now += tick;
                let st = stamp(n, NOW + sent);
                let first = !taken.contains(&(sender, st));
                match g.check(PeerId(sender), st, now) {
                    Ok(()) => prop_assert!(taken.insert((sender, st)), "taken twice: {st:?}"),
                    Err(AuthError::Replayed | AuthError::Repeated) => prop_assert!(!first),
                    Err(AuthError::Behind { .. } | AuthError::Stale { .. }) => {}
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }
        }
    }

    fn any_datagram() -> impl Strategy<Value = Vec<u8>> {
        let body = proptest::collection::vec(any::<u8>(), 0..2000);
        let extra = proptest::collection::vec("[ -~]{1,30}", 0..3);
        (body, extra, 0u8..6).prop_map(|(body, extra, kind)| {
            let mut m = Message::parse(&putchunk(body)).unwrap();
            m.extra_lines = extra;
            if let (1, MessageKind::PutChunk { chunk, .. }) = (kind, &m.kind) {
                m.kind = MessageKind::Stored {
                    chunk: chunk.clone(),
                };
            }
            m.encode()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn sign_then_verify_is_identity(d in any_datagram(), secs in 0u64..u64::MAX / 2, skew in 0u64..=60, late in any::<bool>()) {
            let now = if late { secs + skew } else { secs.saturating_sub(skew) };
            let signed = sign(&key(1), &d, secs);
            prop_assert_eq!(verify(&key(1), &signed, now), Ok(d.clone()));
            let parsed = Message::parse(&signed).unwrap();
            prop_assert_eq!(parsed.kind, Message::parse(&d).unwrap().kind);
        }

        #[test]
        fn a_flipped_byte_fails(d in any_datagram(), at in any::<usize>(), bit in 0u8..8) {
            let mut signed = sign(&key(1), &d, NOW);
            let i = at % signed.len();
            signed[i] ^= 1 << bit;
            prop_assert!(verify(&key(1), &signed, NOW).is_err());
        }

        #[test]
        fn a_stale_time_fails(d in any_datagram(), off in 61u64..1_000_000_000, late in any::<bool>()) {
            let signed = sign(&key(1), &d, NOW);
            let now = if late { NOW + off } else { NOW - off };
            let stale = matches!(verify(&key(1), &signed, now), Err(AuthError::Stale { .. }));
            prop_assert!(stale);
        }

        #[test]
        fn another_key_fails(d in any_datagram(), a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            prop_assume!(a != b);
            let signed = sign(&LanKey::new(a), &d, NOW);
            prop_assert_eq!(verify(&LanKey::new(b), &signed, NOW), Err(AuthError::BadTag));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000), now in any::<u64>()) {
            let _ = verify(&key(1), &bytes, now);
            let _ = sign(&key(1), &bytes, now);
        }

        #[test]
        fn mutated_signed_datagrams_never_panic(d in any_datagram(), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>(), now in any::<u64>()) {
            let mut bytes = sign(&key(1), &d, NOW);
            let i = at % bytes.len();
            bytes[i] = byte;
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = verify(&key(1), &bytes, now);
        }
    }
}
