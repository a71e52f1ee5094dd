//! The LAN key's datagram tags (SPEC §3, "Beyond the statement"): a keyed peer adds, as the last
//! header line of every datagram, `AUTH <unix-seconds> <hex of HMAC-SHA256(key, seconds as
//! decimal ASCII || the datagram without this line)>`, and drops what does not carry a valid one.
//! Pure: the caller gives the clock.
//!
//! What it does not stop: a datagram recorded from a keyed peer can be sent again, unchanged,
//! while its time is within `MAX_SKEW` of the receiver's clock (the protocol is idempotent
//! enough that a replayed STORED, DELETE or PUTCHUNK repeats what already happened), and anyone
//! who holds the key can forge anything.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::message::MAX_HEADER_LEN;

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
    Ok(unsigned)
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
