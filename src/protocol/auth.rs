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
mod tests;
