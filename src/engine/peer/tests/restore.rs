//! Our fetches: the CHUNK taken, probes, 2.0 pulls.

use super::*;

#[test]
fn a_fetch_expecting_other_bytes_than_the_running_one_ends_at_once() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.start_job(JobId(1), JobKind::Restore);
    p.start_job(JobId(2), JobKind::Restore);
    actions(&mut p);
    p.fetch_chunk(JobId(1), chunk(0), Expect::bytes(5, "a"), t0);
    p.fetch_chunk(JobId(2), chunk(0), Expect::bytes(6, "b"), t0);
    assert!(actions(&mut p).iter().any(|a| matches!(
        a,
        Action::Fetched { jobs, body: None, .. } if *jobs == vec![JobId(2)]
    )));
    assert_eq!(p.load().fetching, 1, "the first fetch goes on");
}

/// Chunk 0 of job 1's fetch, sent first as each of `junk` (none ends the fetch), then as
/// `good` (which ends it, on its first send).
fn takes_only(p: &mut Peer, t0: Instant, junk: Vec<Vec<u8>>, good: Vec<u8>) {
    for body in junk {
        let kind = MessageKind::Chunk {
            chunk: chunk(0),
            body,
        };
        p.handle(msg(2, kind), t0);
    }
    assert!(actions(p).is_empty());
    let kind = MessageKind::Chunk {
        chunk: chunk(0),
        body: good.clone(),
    };
    p.handle(msg(2, kind), t0);
    assert!(actions(p).contains(&Action::Fetched {
        jobs: vec![JobId(1)],
        chunk: chunk(0),
        body: Some(good),
        sends: 1
    }));
}

#[test]
fn a_fetch_takes_only_the_recorded_bytes_and_gives_up_in_bounded_time() {
    let t0 = Instant::now();
    let body = vec![3u8; 50];
    let mut p = Peer::new(ME, 1);
    p.start_job(JobId(1), JobKind::Restore);
    assert_eq!(credit(&actions(&mut p)), RESTORE_WINDOW.0);
    p.fetch_chunk(JobId(1), chunk(0), Expect::bytes(50, sha256_hex(&body)), t0);
    p.fetch_chunk(JobId(1), chunk(1), Expect::bytes(50, sha256_hex(&body)), t0);
    assert_eq!(run(&mut p, t0, Duration::ZERO).len(), 2, "two GETCHUNKs");
    takes_only(&mut p, t0, vec![vec![3u8; 49], vec![4u8; 50]], body);
    let sent = run(&mut p, t0, Duration::from_secs(60));
    let secs: Vec<u64> = sent.iter().map(|(d, _)| d.as_secs()).collect();
    assert_eq!(secs, vec![1, 3, 7, 11, 15, 19, 23]);
    assert!(actions(&mut p).iter().any(|a| matches!(
        a,
        Action::Fetched {
            body: None,
            sends: 8,
            ..
        }
    )));
    assert_eq!(p.poll_timeout(), None, "nothing left");
}

#[test]
fn a_probe_takes_only_a_body_that_opens_and_is_asked_twice() {
    use crate::protocol::seal::MasterKey;
    let t0 = Instant::now();
    let master = MasterKey::new([7; 32]);
    let key = std::sync::Arc::new(master.file_key(&chunk(0).file_id));
    let good = key.seal(ChunkNo(0), b"catalog");
    let mut p = Peer::new(ME, 1);
    p.start_job(JobId(1), JobKind::Restore);
    actions(&mut p);
    p.fetch_chunk(JobId(1), chunk(0), Expect::Opens(key.clone()), t0);
    p.fetch_chunk(JobId(1), chunk(1), Expect::Opens(key.clone()), t0);
    assert_eq!(run(&mut p, t0, Duration::ZERO).len(), 2, "two GETCHUNKs");
    // Forged bytes, the right bytes for another place, another key's: not taken.
    let stranger = MasterKey::new([8; 32]).file_key(&chunk(0).file_id);
    let junk = vec![
        vec![4u8; 64_000],
        key.seal(ChunkNo(1), b"catalog"),
        stranger.seal(ChunkNo(0), b"catalog"),
    ];
    takes_only(&mut p, t0, junk, good);
    // Chunk 1 has no holder: asked again after a second, then given up.
    let sent = run(&mut p, t0, Duration::from_secs(60));
    let secs: Vec<u64> = sent.iter().map(|(d, _)| d.as_secs()).collect();
    assert_eq!(secs, vec![1]);
    assert!(actions(&mut p).iter().any(|a| matches!(
        a,
        Action::Fetched {
            body: None,
            sends: 2,
            ..
        }
    )));
    assert_eq!(p.poll_timeout(), None, "nothing left");
}

#[test]
fn v2_a_fetch_asks_to_pull_first_pulls_from_holders_that_answer_then_asks_on_multicast() {
    let t0 = Instant::now();
    let body = vec![3u8; 50];
    let mut p = enhanced(4, t0);
    p.start_job(JobId(1), JobKind::Restore);
    work(&mut p);
    p.fetch_chunk(JobId(1), chunk(0), Expect::bytes(50, sha256_hex(&body)), t0);
    let sent = run(&mut p, t0, Duration::from_secs(8));
    let pulls: Vec<bool> = sent.iter().map(|(_, m)| m.has_line(PULL_LINE)).collect();
    let mut expected = vec![true; TCP_GETCHUNK_SENDS as usize];
    expected.resize(sent.len(), false);
    assert!(sent.len() > TCP_GETCHUNK_SENDS as usize);
    assert_eq!(pulls, expected);
    // Holders say where to pull it: we connect to the address each said it from, at most
    // MAX_PULLS_PER_FETCH times whatever the number of such CHUNKs (forged ones included).
    let holder = |n: u8, port: Option<u16>| {
        let mut m = msg(
            2,
            MessageKind::Chunk {
                chunk: chunk(0),
                body: Vec::new(),
            },
        );
        m.version = Version::V2_0;
        if let Some(port) = port {
            m.extra_lines.push(format!("TCP {port}"));
        }
        (m, SocketAddr::from(([127, 0, 0, n], 4000)))
    };
    let (m, from) = holder(7, None);
    p.handle_from(m, Some(from), t0);
    assert!(
        work(&mut p).is_empty(),
        "no port named: nowhere to pull from"
    );
    let mut pulled = Vec::new();
    for n in 1..=20 {
        let (m, from) = holder(n, Some(6000 + u16::from(n)));
        p.handle_from(m, Some(from), t0);
        pulled.extend(work(&mut p));
    }
    let want: Vec<Action> = (1..=MAX_PULLS_PER_FETCH as u8)
        .map(|n| Action::Pull {
            from: SocketAddr::from(([127, 0, 0, n], 6000 + u16::from(n))),
            chunk: chunk(0),
        })
        .collect();
    assert_eq!(pulled, want);
    // Junk pulled is ignored; the right bytes end the fetch.
    let chunk_msg = |body: Vec<u8>| {
        msg(
            2,
            MessageKind::Chunk {
                chunk: chunk(0),
                body,
            },
        )
    };
    p.handle_tcp(chunk_msg(vec![4u8; 50]));
    assert!(work(&mut p).is_empty());
    p.handle_tcp(chunk_msg(body.clone()));
    assert!(work(&mut p)
        .iter()
        .any(|a| matches!(a, Action::Fetched { body: Some(b), .. } if *b == body)));
    // A chunk we do not fetch is never pulled.
    let (m, from) = holder(9, Some(6009));
    p.handle_from(m, Some(from), t0);
    assert!(work(&mut p).is_empty());
}
