//! GETCHUNK answers: the random wait, suppression by a good copy, the bounds on what is sent.

use super::*;

#[test]
fn getchunk_is_answered_after_a_random_wait_unless_a_good_copy_is_heard() {
    let t0 = Instant::now();
    let body = vec![5u8; 100];
    let hash = sha256_hex(&body);
    let mut p = Peer::new(ME, 9);
    getchunk(&mut p, 0, t0);
    getchunk(&mut p, 0, t0); // repeated: one reply
    assert_eq!(
        actions(&mut p),
        vec![Action::LookupHosted { chunk: chunk(0) }]
    );
    p.hosted(&chunk(0), Some((100, hash.clone())), t0);
    let mut at = None;
    while let Some(t) = p.poll_timeout() {
        p.handle_timeout(t);
        at = Some(t);
    }
    assert!(at.unwrap() - t0 <= MAX_REPLY_DELAY);
    assert_eq!(
        actions(&mut p),
        vec![Action::ReadHosted { chunk: chunk(0) }]
    );
    p.serve(chunk(0), Some(body.clone()), at.unwrap());
    let sent = p.poll_transmit().unwrap();
    assert_eq!(
        sent.kind,
        MessageKind::Chunk {
            chunk: chunk(0),
            body: body.clone()
        }
    );

    // The wait is random (each holder's own), so the holders' CHUNKs do not leave together
    // and the first one heard silences the others: the chunk is read only once it is over.
    let waits: Vec<Duration> = (0..50)
        .map(|seed| {
            let mut p = Peer::new(ME, seed);
            getchunk(&mut p, 0, t0);
            actions(&mut p);
            p.hosted(&chunk(0), Some((100, hash.clone())), t0);
            assert!(actions(&mut p).is_empty(), "read before its wait");
            let mut read = None;
            while let Some(t) = p
                .poll_timeout()
                .filter(|t| *t <= t0 + Duration::from_secs(1))
            {
                p.handle_timeout(t);
                if actions(&mut p).contains(&Action::ReadHosted { chunk: chunk(0) }) {
                    read = Some(t - t0);
                    break;
                }
            }
            read.expect("read once its wait is over")
        })
        .collect();
    assert_random_waits(&waits);

    // Another holder's good copy silences us; junk of the right length does not.
    let t1 = t0 + Duration::from_secs(5);
    for (heard, silent) in [(body.clone(), true), (vec![6u8; 100], false)] {
        let mut p = Peer::new(ME, 9);
        getchunk(&mut p, 0, t1);
        p.hosted(&chunk(0), Some((100, hash.clone())), t1);
        p.handle(
            msg(
                3,
                MessageKind::Chunk {
                    chunk: chunk(0),
                    body: heard,
                },
            ),
            t1,
        );
        run(&mut p, t1, Duration::from_secs(1));
        let read = actions(&mut p).contains(&Action::ReadHosted { chunk: chunk(0) });
        assert_eq!(read, !silent);
    }
}

#[test]
fn one_chunk_per_second_per_chunk_whatever_the_getchunks() {
    let t0 = Instant::now();
    let body = vec![5u8; 10];
    let hash = sha256_hex(&body);
    let mut p = Peer::new(ME, 4);
    let mut sent = Vec::new();
    for ms in (0..3000).step_by(10) {
        let now = t0 + Duration::from_millis(ms);
        p.handle_timeout(now);
        getchunk(&mut p, 0, now);
        for a in actions(&mut p) {
            match a {
                Action::LookupHosted { chunk } => p.hosted(&chunk, Some((10, hash.clone())), now),
                Action::ReadHosted { chunk } => p.serve(chunk, Some(body.clone()), now),
                _ => {}
            }
        }
        sent.extend(std::iter::from_fn(|| p.poll_transmit()).map(|_| ms));
    }
    assert!(sent.len() <= 3, "{sent:?}");
    assert!(sent.windows(2).all(|w| w[1] - w[0] >= 1000), "{sent:?}");
}

#[test]
fn v2_a_getchunk_never_makes_a_holder_connect_anywhere() {
    let t0 = Instant::now();
    let body = vec![5u8; 100];
    let hash = sha256_hex(&body);
    let from: SocketAddr = "127.0.0.9:4701".parse().unwrap();
    // Asked where to pull it: a body-less 2.0 CHUNK on MDR naming our port (7000), nothing
    // read, no connection.
    let mut p = enhanced(2, t0);
    p.handle_from(pull_getchunk(0), Some(from), t0);
    assert_eq!(work(&mut p), [Action::LookupHosted { chunk: chunk(0) }]);
    p.hosted(&chunk(0), Some((100, hash.clone())), t0);
    let sent = run(&mut p, t0, MAX_REPLY_DELAY);
    assert!(
        work(&mut p).is_empty(),
        "nothing to read, nowhere to connect"
    );
    match &sent[..] {
        [(_, m)] => {
            assert_eq!(m.version, Version::V2_0);
            assert_eq!(m.tcp_port(), Some(7000));
            let bodyless = MessageKind::Chunk {
                chunk: chunk(0),
                body: Vec::new(),
            };
            assert_eq!(m.kind, bodyless);
        }
        other => panic!("{other:?}"),
    }
    // The first 2.0 design's GETCHUNK ("deliver it to my TCP port"), forged or not, gets a
    // multicast CHUNK like a 1.0 one: never a connection to the port it names.
    let mut get = msg(2, MessageKind::GetChunk { chunk: chunk(1) });
    get.version = Version::V2_0;
    get.extra_lines.push("TCP 5000".into());
    let mut p = enhanced(2, t0);
    p.handle_from(get, Some(from), t0);
    p.hosted(&chunk(1), Some((100, hash.clone())), t0);
    run(&mut p, t0, MAX_REPLY_DELAY);
    assert_eq!(
        work(&mut p),
        [
            Action::LookupHosted { chunk: chunk(1) },
            Action::ReadHosted { chunk: chunk(1) }
        ]
    );
    p.serve(chunk(1), Some(body.clone()), t0 + MAX_REPLY_DELAY);
    assert!(work(&mut p).is_empty());
    let sent = p.poll_transmit().unwrap();
    assert_eq!(sent.version, Version::V1_0);
    assert_eq!(
        sent.kind,
        MessageKind::Chunk {
            chunk: chunk(1),
            body: body.clone()
        }
    );

    // A 1.0 peer answers a pull GETCHUNK on MDR as any other.
    let mut p = Peer::new(ME, 2);
    p.handle_from(pull_getchunk(0), Some(from), t0);
    p.hosted(&chunk(0), Some((100, hash)), t0);
    run(&mut p, t0, MAX_REPLY_DELAY);
    p.serve(chunk(0), Some(body), t0 + MAX_REPLY_DELAY);
    assert_eq!(p.poll_transmit().unwrap().version, Version::V1_0);
}

#[test]
fn v2_a_reply_keeps_what_its_first_getchunk_asked() {
    let t0 = Instant::now();
    let hash = sha256_hex(&[5u8; 100]);
    let first: SocketAddr = "127.0.0.9:4701".parse().unwrap();
    let attacker: SocketAddr = "127.0.0.66:4701".parse().unwrap();
    // A pull asked first: a plain GETCHUNK after it (from anyone) does not turn the reply
    // into a multicast body.
    let mut p = enhanced(2, t0);
    p.handle_from(pull_getchunk(0), Some(first), t0);
    p.handle_from(
        msg(3, MessageKind::GetChunk { chunk: chunk(0) }),
        Some(attacker),
        t0,
    );
    p.hosted(&chunk(0), Some((100, hash.clone())), t0);
    let sent = run(&mut p, t0, MAX_REPLY_DELAY);
    assert_eq!(work(&mut p), [Action::LookupHosted { chunk: chunk(0) }]);
    assert!(matches!(&sent[..], [(_, m)] if m.tcp_port() == Some(7000)));
    // A plain one first: a later pull request does not silence it for the first requester.
    let mut p = enhanced(2, t0);
    p.handle_from(
        msg(3, MessageKind::GetChunk { chunk: chunk(0) }),
        Some(first),
        t0,
    );
    p.handle_from(pull_getchunk(0), Some(attacker), t0);
    p.hosted(&chunk(0), Some((100, hash)), t0);
    let mut bodyless = msg(
        4,
        MessageKind::Chunk {
            chunk: chunk(0),
            body: Vec::new(),
        },
    );
    bodyless.version = Version::V2_0;
    p.handle(bodyless, t0);
    run(&mut p, t0, MAX_REPLY_DELAY);
    assert!(work(&mut p).contains(&Action::ReadHosted { chunk: chunk(0) }));
}

#[test]
fn v2_a_bodyless_chunk_silences_only_the_replies_to_a_pull_getchunk() {
    let t0 = Instant::now();
    let hash = sha256_hex(&[5u8; 100]);
    let from: SocketAddr = "127.0.0.9:4701".parse().unwrap();
    for pull in [true, false] {
        let mut p = enhanced(3, t0);
        let get = match pull {
            true => pull_getchunk(0),
            false => msg(2, MessageKind::GetChunk { chunk: chunk(0) }),
        };
        p.handle_from(get, Some(from), t0);
        p.hosted(&chunk(0), Some((100, hash.clone())), t0);
        let mut bodyless = msg(
            3,
            MessageKind::Chunk {
                chunk: chunk(0),
                body: Vec::new(),
            },
        );
        bodyless.version = Version::V2_0;
        bodyless.extra_lines.push("TCP 6000".into());
        p.handle_from(bodyless, Some(from), t0);
        let sent = run(&mut p, t0, MAX_REPLY_DELAY);
        let read = work(&mut p).contains(&Action::ReadHosted { chunk: chunk(0) });
        assert_eq!(read, !pull, "silent only for a pull getchunk");
        assert!(sent.is_empty(), "{sent:?}");
    }
}

#[test]
fn a_getchunk_flood_is_answered_less_and_less_and_within_the_mdr_budget() {
    // A LAN host learned 301 chunk ids and asks for each every second for 60 s (the
    // attack: 209 KB asked, 115 MB sent on MDR in 6 s, before the backoff and the budget).
    let t0 = Instant::now();
    let body = vec![5u8; crate::protocol::CHUNK_SIZE];
    let hash = sha256_hex(&body);
    let from: SocketAddr = "127.0.0.66:4000".parse().unwrap();
    let mut p = Peer::new(ME, 4);
    let mut sent_at: Vec<Duration> = Vec::new();
    for ms in (0..60_000u64).step_by(50) {
        let now = t0 + Duration::from_millis(ms);
        p.handle_timeout(now);
        if ms % 1000 == 0 {
            for no in 0..301 {
                p.handle_from(
                    msg(3, MessageKind::GetChunk { chunk: chunk(no) }),
                    Some(from),
                    now,
                );
            }
        }
        for a in actions(&mut p) {
            match a {
                Action::LookupHosted { chunk } => {
                    p.hosted(&chunk, Some((body.len() as u64, hash.clone())), now)
                }
                Action::ReadHosted { chunk } => p.serve(chunk, Some(body.clone()), now),
                _ => {}
            }
        }
        sent_at.extend(std::iter::from_fn(|| p.poll_transmit()).map(|_| now - t0));
    }
    let bytes_between = |a: u64, b: u64| {
        let n = sent_at
            .iter()
            .filter(|t| t.as_secs() >= a && t.as_secs() < b)
            .count();
        (n * body.len()) as u64
    };
    let per_source = crate::engine::serve::MDR_BYTES_PER_SEC_PER_SOURCE;
    // Never more than the per-source rate (plus one burst) in any 10 s.
    for a in (0..60).step_by(10) {
        assert!(bytes_between(a, a + 10) <= 10 * per_source + crate::engine::serve::MDR_BURST);
    }
    // Once the backoff has grown, a small fraction of the ~1.2 GB asked for each minute.
    let total = bytes_between(0, 60);
    assert!(total < 301 * 12 * body.len() as u64, "{total}");
    assert!(
        bytes_between(40, 60) < 301 * 2 * body.len() as u64,
        "{}",
        bytes_between(40, 60)
    );
    // Yet every chunk was answered at least once.
    assert!(sent_at.len() >= 301);
}
