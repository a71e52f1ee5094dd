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
