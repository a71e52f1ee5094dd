//! Issue 2's scenarios with four real daemons on loopback: backup, restore, delete, reclaim and
//! re-replication, restart, hostile datagrams.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// Files of the backup scenario: 1,000,000 random bytes, empty, exactly two chunks' worth.
fn make_files(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    [
        ("random.bin", 1_000_000),
        ("empty", 0),
        ("two-chunks.bin", 128_000),
    ]
    .into_iter()
    .map(|(name, size)| {
        let path = data
            .join(name)
            .canonicalize()
            .unwrap_or(data.canonicalize().unwrap().join(name));
        let bytes = random_bytes(size);
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    })
    .collect()
}

#[test]
fn backup_restore_and_restart_keep_everything() {
    let mut c = Cluster::start(&["100MB", "100MB", "100MB", "100MB"]);
    let files = make_files(c.dir.path());
    for (path, _) in &files {
        c.cli_ok(
            0,
            &["backup", path.to_str().unwrap(), "--replication", "2"],
            0,
        );
    }

    let state = c.peer(0).state();
    for (path, bytes) in &files {
        let versions = state.file(path);
        assert_eq!(versions.versions().len(), 1, "one version of {path:?}");
        let f = versions.latest();
        assert_eq!(f.size, bytes.len() as u64);
        assert_eq!(f.desired_rd, 2);
        assert_eq!(
            f.chunks.len(),
            bytes.len() / 64_000 + 1,
            "chunk count of {path:?}"
        );
        assert!(f.min_rd() >= 2, "every chunk of {path:?} at RD ≥ 2: {f:?}");
    }
    // The 128,000-byte file ends with an empty third chunk, hosted by others as 0 bytes.
    let two_id = state.file(&files[2].0).latest().file_id.clone();
    let mut empty_last_hosted = 0;
    assert!(
        state.stored.is_empty(),
        "the home peer hosts a chunk of its own file:\n{state}"
    );
    for i in 1..4 {
        for h in c.peer(i).stored() {
            if h.file_id == two_id && h.chunk_no == 2 {
                assert_eq!(h.size, 0);
                empty_last_hosted += 1;
            }
            assert!(
                state.files.iter().any(|f| f.file_id == h.file_id),
                "unexpected hosted chunk {h:?}"
            );
        }
    }
    assert!(
        empty_last_hosted >= 2,
        "the empty last chunk is held by ≥ 2 peers"
    );

    // Originals gone: restore rebuilds each byte for byte.
    for (path, _) in &files {
        std::fs::remove_file(path).unwrap();
    }
    for (path, bytes) in &files {
        c.cli_ok(0, &["restore", path.to_str().unwrap()], 0);
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "restored {path:?}");
    }
    // Restore refuses to overwrite unless told to.
    let p = files[0].0.to_str().unwrap();
    let out = c.cli_ok(0, &["restore", p], 1);
    assert!(out.is_empty());
    c.cli_ok(0, &["restore", p, "--force"], 0);
    let to = c.dir.path().join("elsewhere.bin");
    c.cli_ok(0, &["restore", p, "--to", to.to_str().unwrap()], 0);
    assert_eq!(std::fs::read(&to).unwrap(), files[0].1);

    // A restarted daemon reports the same state: the catalog is the source of truth. (The
    // counters of dropped datagrams are since start: left out.)
    let persistent = |s: State| {
        let mut s = s.into_inner();
        (s.malformed_datagrams, s.busy_drops) = (0, 0);
        s
    };
    let before: Vec<_> = (0..4).map(|i| persistent(c.peer(i).state())).collect();
    for i in 0..4 {
        c.restart(i);
    }
    for (i, b) in before.iter().enumerate() {
        assert_eq!(
            &persistent(c.peer(i).state()),
            b,
            "state of peer {} after restart",
            i + 1
        );
    }
}

#[test]
fn delete_frees_every_peer() {
    let c = Cluster::start(&["100MB", "100MB", "100MB", "100MB"]);
    let files = make_files(c.dir.path());
    // The empty file stays backed up (its chunk costs a block on its holders).
    c.cli_ok(0, &["backup", files[1].0.to_str().unwrap(), "-r", "2"], 0);
    let (path, _) = &files[0];
    c.cli_ok(0, &["backup", path.to_str().unwrap(), "-r", "2"], 0);
    assert!((1..4).map(|i| c.peer(i).used_bytes()).sum::<u64>() >= 2_000_000);
    c.cli_ok(0, &["delete", path.to_str().unwrap()], 0);
    // What is left on each peer is the empty file's chunk, if it holds it (in 2.0 a copy too
    // many may go shortly after the backup), charged one block.
    let only_empty = |i: usize| {
        let s = c.peer(i).state();
        s.used_bytes == s.stored.len() as u64 * charged(c.peer(i), 0) && s.stored.len() <= 1
    };
    let freed = wait_until(Duration::from_secs(5), || (0..4).all(only_empty));
    assert!(freed, "only the empty file's chunk is left:\n{}", c.dump());
    // Only the empty file's chunk files remain on disk.
    for i in 1..4 {
        assert!(
            chunk_files_on_disk(c.peer(i)) <= 1,
            "peer {} still has chunk files",
            i + 1
        );
    }
    assert!(!c.peer(0).file(path).is_backed_up());
    c.cli_ok(0, &["versions", path.to_str().unwrap()], 1);
    c.cli_ok(0, &["restore", path.to_str().unwrap()], 1);
}

#[test]
fn reclaim_drops_chunks_and_holders_rereplicate() {
    let c = Cluster::start(&["100MB", "100MB", "100MB", "0"]);
    let files = make_files(c.dir.path());
    for (path, _) in &files {
        c.cli_ok(0, &["backup", path.to_str().unwrap(), "-r", "2"], 0);
    }
    let s4 = c.peer(3).state();
    assert_eq!(
        (s4.used_bytes, s4.stored.len()),
        (0, 0),
        "quota 0 stores nothing"
    );

    c.cli_ok(3, &["reclaim", "100MB"], 0);
    assert_eq!(c.peer(3).quota_bytes(), 100_000_000);
    let mdb = Listener::join(c.mdb).record();
    c.cli_ok(1, &["reclaim", "0"], 0);
    let s2 = c.peer(1).state();
    assert_eq!((s2.used_bytes, s2.stored.len()), (0, 0), "peer 2:\n{s2}");
    assert_eq!(chunk_files_on_disk(c.peer(1)), 0);

    let total_chunks: usize = files.iter().map(|(_, b)| b.len() / 64_000 + 1).sum();
    let paths = || files.iter().map(|(p, _)| p.as_path());
    let back = wait_until(Duration::from_secs(20), || {
        c.peer(0).state().min_rd_of(paths()) >= 2
    });
    assert!(back, "every chunk back at RD ≥ 2:\n{}", c.dump());
    assert_eq!(
        c.peer(3).stored().len(),
        total_chunks,
        "the fourth peer now holds every chunk"
    );
    // The re-backups reached the home peer too: it never hosts a chunk of its own file.
    assert!(c.peer(0).stored().is_empty());
    // SPEC §2: peer 3, the other holder, re-backed up each chunk itself after the REMOVED (the
    // home peer's repair would have done it too, but only 5 s later: peer 3 waits 0-400 ms).
    let puts: Vec<Vec<String>> = mdb.stop().iter().map(|d| header_fields(d)).collect();
    let home = c.peer(0).state();
    for (path, _) in &files {
        let f = home.file(path);
        let f = f.latest();
        for ch in &f.chunks {
            let by_peer_3 = puts.iter().any(|h| {
                h.len() >= 5 && h[1..5] == ["PUTCHUNK", "3", &f.file_id, &ch.chunk_no.to_string()]
            });
            assert!(
                by_peer_3,
                "no PUTCHUNK from peer 3 for {path:?}#{} after the REMOVED",
                ch.chunk_no
            );
        }
    }

    // The quota set by `reclaim` survives a restart.
    let mut c = c;
    c.restart(1);
    assert_eq!(c.peer(1).quota_bytes(), 0);
}

#[test]
fn malformed_datagrams_are_dropped_and_peers_keep_working() {
    let c = Cluster::start(&["100MB", "100MB", "100MB"]);
    let id = "ab".repeat(32);
    let body = vec![7u8; 100];
    let mut hostile: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        b"1.0 PUTCHUNK 9 ".to_vec(),
        b"1.0 PUTCHUNK 9 abc 0 2\r\n".to_vec(),
        format!("1.0 PUTCHUNK 9 ../../etc/{} 0 2\r\n\r\nX", &id[..54]).into_bytes(),
        format!("1.0 PUTCHUNK 9 {id} 9999999 2\r\n\r\nX").into_bytes(),
        format!("1.0 PUTCHUNK 9 {id} 0 0\r\n\r\nX").into_bytes(),
        b"1.0 DELETE 9 ../../../../etc\r\n\r\n".to_vec(),
        format!("1.0 GETCHUNK 9 {id} -1\r\n\r\n").into_bytes(),
        vec![0xff; 70],
    ];
    let mut big = format!("1.0 PUTCHUNK 9 {id} 0 2\r\n\r\n").into_bytes();
    big.extend(vec![1u8; 65_000]);
    hostile.push(big);
    for _ in 0..3 {
        for h in &hostile {
            c.send_raw(c.mdb, h);
            c.send_raw(c.mc, h);
            c.send_raw(c.mdr, h);
        }
    }
    // A well-formed PUTCHUNK from an unknown peer is stored, as the protocol says (at RD 3,
    // by each of the three).
    let mut ok = format!("1.0 PUTCHUNK 9 {id} 0 3\r\n\r\n").into_bytes();
    ok.extend(&body);
    c.send_raw(c.mdb, &ok);
    assert!(wait_until(Duration::from_secs(5), || (0..3)
        .all(|i| c.peer(i).used_bytes() == charged(c.peer(i), 100))));
    for i in 0..3 {
        let stored = c.peer(i).stored();
        assert_eq!(
            stored.len(),
            1,
            "only the valid chunk is stored: {stored:?}"
        );
        let entries: Vec<_> = std::fs::read_dir(c.peer(i).dir.join("state").join("chunks"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            entries,
            vec![std::ffi::OsString::from(format!("{id}.pack"))]
        );
    }
    // They did arrive, and were counted as malformed.
    for i in 0..3 {
        let n = c.peer(i).state().malformed_datagrams;
        assert!(
            n >= 3 * 9,
            "peer {}: {n} malformed datagrams counted",
            i + 1
        );
    }
    // Nothing escaped the state folder.
    assert!(!c.dir.path().join("etc").exists());
    // And the peers still back up and restore.
    let files = make_files(c.dir.path());
    c.cli_ok(0, &["backup", files[0].0.to_str().unwrap(), "-r", "2"], 0);
    std::fs::remove_file(&files[0].0).unwrap();
    c.cli_ok(0, &["restore", files[0].0.to_str().unwrap()], 0);
    assert_eq!(std::fs::read(&files[0].0).unwrap(), files[0].1);
}

#[test]
fn too_few_peers_for_the_rd_exits_3_and_says_so() {
    let c = Cluster::start(&["100MB", "100MB", "100MB"]);
    let files = make_files(c.dir.path());
    let p = files[2].0.to_str().unwrap();
    let out = c.cli_ok(0, &["backup", p, "--replication", "3"], 3);
    assert!(out.contains("below"), "{out}");
    assert_eq!(c.peer(0).file(&files[2].0).min_rd(), 2);
    let versions = c.cli_ok(0, &["versions", p], 0);
    assert!(versions.contains(p), "{versions}");
}

#[test]
fn restore_survives_killed_holders() {
    let mut c = Cluster::start(&["100MB", "100MB", "100MB", "100MB"]);
    let files = make_files(c.dir.path());
    let (path, bytes) = &files[0];
    // RD 3 of 4 peers: every other peer holds a copy (in 2.0 as in 1.0), two of them die.
    c.cli_ok(0, &["backup", path.to_str().unwrap(), "-r", "3"], 0);
    c.kill(1);
    c.kill(2);
    std::fs::remove_file(path).unwrap();
    c.cli_ok(0, &["restore", path.to_str().unwrap()], 0);
    assert_eq!(&std::fs::read(path).unwrap(), bytes);
    // With every holder gone, restore fails cleanly and writes nothing.
    c.kill(3);
    std::fs::remove_file(path).unwrap();
    let out = c.cli(0, &["restore", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not be fetched"), "{err}");
    assert!(!path.exists());
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("peerstash"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary restore files left: {leftovers:?}"
    );
}

/// Another implementation writes its fileIds in upper case and sends from an ephemeral port:
/// our peers store its chunks, and answer STORED and CHUNK with its exact fileId text.
#[test]
fn foreign_upper_case_file_ids_are_answered_verbatim() {
    let c = Cluster::start(&["100MB", "100MB"]);
    let mc = Listener::join(c.mc);
    let mdr = Listener::join(c.mdr);
    let id = "C0FFEE".repeat(10) + "ABCD";
    let body = random_bytes(64_000);
    let mut put = format!("1.0 PUTCHUNK 77 {id} 5 2 \r\nX-Extra: ignored\r\n\r\n").into_bytes();
    put.extend(&body);
    c.send_raw(c.mdb, &put);
    let heard = mc.collect(Duration::from_millis(1500));
    let stored: Vec<String> = heard
        .iter()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .filter(|t| t.contains("STORED"))
        .collect();
    for peer in [1, 2] {
        // Its first line exactly (a 2.0 peer adds its `INC` line, which 1.0 peers ignore).
        let want = format!("1.0 STORED {peer} {id} 5\r\n");
        assert!(
            stored
                .iter()
                .any(|s| s.starts_with(&want) && s.ends_with("\r\n\r\n")),
            "no {want:?} in {stored:?}"
        );
    }
    c.send_raw(
        c.mc,
        format!("1.0 GETCHUNK 77 {} 5\r\n\r\n", id.to_lowercase()).as_bytes(),
    );
    let chunks = mdr.collect(Duration::from_millis(1000));
    let header = "1.0 CHUNK ";
    let answer = chunks
        .iter()
        .find(|d| d.starts_with(header.as_bytes()))
        .expect("a CHUNK");
    let text = String::from_utf8_lossy(&answer[..100]);
    assert!(
        text.contains(&id),
        "CHUNK uses the home peer's text: {text}"
    );
    assert_eq!(&answer[answer.len() - 64_000..], &body[..]);
    // Each holder answers at most once (whether the other stays quiet is for the next test).
    let mut senders: Vec<String> = chunks
        .iter()
        .map(|d| header_fields(d))
        .filter(|f| f.get(1).is_some_and(|t| t == "CHUNK"))
        .map(|f| f[2].clone())
        .collect();
    let answers = senders.len();
    senders.sort();
    senders.dedup();
    assert_eq!(
        senders.len(),
        answers,
        "a holder answered twice: {senders:?}"
    );
}

/// SPEC §2 Restore: a holder waits a random 0-400 ms and stays silent if it heard another
/// holder's CHUNK meanwhile. Four peers hold each of 40 chunks of a foreign file; each chunk is
/// asked for once (so the holders' limit of one CHUNK per chunk per second plays no part), and
/// the CHUNKs on MDR are counted. Without suppression every holder answers: 4 per chunk. With it
/// another holder answers too only when its delay ends less than δ after the first one's (δ: the
/// time for a CHUNK to reach it and be checked, a few ms on loopback): with 4 holders about
/// 3·δ/400 extra per chunk, ~4% for δ = 5 ms, and still about 0.75 for δ = 100 ms on a machine
/// busy with builds. The bound, 2 per chunk on average, is far from both.
#[test]
fn one_holder_answers_each_getchunk() {
    const HOLDERS: usize = 4;
    const CHUNKS: usize = 40;
    let c = Cluster::start(&["100MB"; HOLDERS]);
    let id = "5eed".repeat(16);
    let bodies: Vec<Vec<u8>> = (0..CHUNKS).map(|_| random_bytes(4_000)).collect();
    // Every peer stores every chunk (PUTCHUNKs from a foreign home peer, resent to fill gaps).
    let all_hold = || (0..HOLDERS).all(|i| c.peer(i).stored().len() == CHUNKS);
    let mut stored = false;
    for _ in 0..5 {
        let states: Vec<State> = (0..HOLDERS).map(|i| c.peer(i).state()).collect();
        for (n, body) in bodies.iter().enumerate() {
            if !states.iter().all(|s| s.hosts(&id, n as u32)) {
                let mut put = format!("1.0 PUTCHUNK 77 {id} {n} {HOLDERS}\r\n\r\n").into_bytes();
                put.extend(body);
                c.send_raw(c.mdb, &put);
            }
        }
        if wait_until(Duration::from_secs(3), all_hold) {
            stored = true;
            break;
        }
    }
    assert!(stored, "every peer holds every chunk:\n{}", c.dump());

    let mdr = Listener::join(c.mdr).record();
    for n in 0..CHUNKS {
        c.send_raw(c.mc, format!("1.0 GETCHUNK 77 {id} {n}\r\n\r\n").as_bytes());
        std::thread::sleep(Duration::from_millis(30));
    }
    // The last replies come within 400 ms.
    std::thread::sleep(Duration::from_secs(2));
    let heard = mdr.stop();
    // chunkNo → the holders that sent a CHUNK for it.
    let mut answers: Vec<Vec<u32>> = vec![Vec::new(); CHUNKS];
    for d in &heard {
        let f = header_fields(d);
        if f.len() < 5 || f[1] != "CHUNK" || f[3] != id {
            continue;
        }
        let n: usize = f[4].parse().unwrap();
        assert!(d.ends_with(&bodies[n]), "CHUNK {n} carries other bytes");
        answers[n].push(f[2].parse().unwrap());
    }
    for (n, senders) in answers.iter().enumerate() {
        assert!(!senders.is_empty(), "no CHUNK for chunk {n}: {answers:?}");
        let mut distinct = senders.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), senders.len(), "chunk {n}: {senders:?}");
    }
    let total: usize = answers.iter().map(Vec::len).sum();
    assert!(
        total <= 2 * CHUNKS,
        "{total} CHUNKs for {CHUNKS} GETCHUNKs to {HOLDERS} holders each (the holders per \
         chunk: {answers:?}): holders that heard a CHUNK still answer"
    );
    eprintln!("{total} CHUNKs for {CHUNKS} GETCHUNKs");
}
