//! Issue 2's scenarios with four real daemons on loopback: backup, restore, delete, reclaim and
//! re-replication, restart, hostile datagrams.

mod common;

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

    let state = c.state(0);
    for (path, bytes) in &files {
        let entries = file_entries(&state, path);
        assert_eq!(entries.len(), 1, "one version of {path:?}");
        let f = entries[0];
        assert_eq!(f["size"].as_u64().unwrap(), bytes.len() as u64);
        assert_eq!(f["desired_rd"].as_u64().unwrap(), 2);
        let chunks = f["chunks"].as_array().unwrap();
        assert_eq!(
            chunks.len(),
            bytes.len() / 64_000 + 1,
            "chunk count of {path:?}"
        );
        assert!(min_rd(f) >= 2, "every chunk of {path:?} at RD ≥ 2: {f}");
    }
    // The 128,000-byte file ends with an empty third chunk, hosted by others as 0 bytes.
    let two = file_entries(&state, &files[2].0)[0];
    let two_id = two["file_id"].as_str().unwrap().to_owned();
    let mut empty_last_hosted = 0;
    let own_ids: Vec<String> = state["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file_id"].as_str().unwrap().to_owned())
        .collect();
    for i in 0..4 {
        let s = c.state(i);
        for h in s["stored"].as_array().unwrap() {
            let id = h["file_id"].as_str().unwrap();
            if i == 0 {
                panic!("the home peer hosts a chunk of its own file: {h}");
            }
            if id == two_id && h["chunk_no"] == 2 {
                assert_eq!(h["size"], 0);
                empty_last_hosted += 1;
            }
            assert!(
                own_ids.iter().any(|o| o == id),
                "unexpected hosted chunk {h}"
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
    let persistent = |mut s: serde_json::Value| {
        let o = s.as_object_mut().unwrap();
        o.remove("malformed_datagrams");
        o.remove("busy_drops");
        s
    };
    let before: Vec<_> = (0..4).map(|i| persistent(c.state(i))).collect();
    for i in 0..4 {
        c.restart(i);
    }
    for (i, b) in before.iter().enumerate() {
        assert_eq!(
            &persistent(c.state(i)),
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
    let before: Vec<u64> = (0..4).map(|i| used_bytes(&c.state(i))).collect();
    let (path, _) = &files[0];
    c.cli_ok(0, &["backup", path.to_str().unwrap(), "-r", "2"], 0);
    assert!((1..4).map(|i| used_bytes(&c.state(i))).sum::<u64>() >= 2_000_000);
    c.cli_ok(0, &["delete", path.to_str().unwrap()], 0);
    let freed = wait_until(Duration::from_secs(5), || {
        (0..4).all(|i| used_bytes(&c.state(i)) == before[i])
    });
    assert!(
        freed,
        "used bytes back to what they were: {:?}",
        (0..4).map(|i| used_bytes(&c.state(i))).collect::<Vec<_>>()
    );
    // Only the empty file's chunk files remain on disk.
    for i in 1..4 {
        assert!(
            chunk_files_on_disk(c.peer(i)) <= 1,
            "peer {} still has chunk files",
            i + 1
        );
    }
    assert!(file_entries(&c.state(0), path).is_empty());
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
    assert_eq!(used_bytes(&c.state(3)), 0);
    assert!(
        c.state(3)["stored"].as_array().unwrap().is_empty(),
        "quota 0 stores nothing"
    );

    c.cli_ok(3, &["reclaim", "100MB"], 0);
    assert_eq!(c.state(3)["quota_bytes"], 100_000_000);
    c.cli_ok(1, &["reclaim", "0"], 0);
    let s1 = c.state(1);
    assert_eq!(used_bytes(&s1), 0);
    assert!(s1["stored"].as_array().unwrap().is_empty());
    assert_eq!(chunk_files_on_disk(c.peer(1)), 0);

    let total_chunks: usize = files.iter().map(|(_, b)| b.len() / 64_000 + 1).sum();
    let back = wait_until(Duration::from_secs(20), || {
        let s = c.state(0);
        files
            .iter()
            .all(|(p, _)| min_rd(file_entries(&s, p)[0]) >= 2)
    });
    assert!(back, "every chunk back at RD ≥ 2: {}", c.state(0));
    let stored4 = c.state(3)["stored"].as_array().unwrap().len();
    assert_eq!(
        stored4, total_chunks,
        "the fourth peer now holds every chunk"
    );
    // The re-backups reached the home peer too: it never hosts a chunk of its own file.
    assert!(c.state(0)["stored"].as_array().unwrap().is_empty());

    // The quota set by `reclaim` survives a restart.
    let mut c = c;
    c.restart(1);
    assert_eq!(c.state(1)["quota_bytes"], 0);
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
    // A well-formed PUTCHUNK from an unknown peer is stored, as the protocol says.
    let mut ok = format!("1.0 PUTCHUNK 9 {id} 0 1\r\n\r\n").into_bytes();
    ok.extend(&body);
    c.send_raw(c.mdb, &ok);
    assert!(wait_until(Duration::from_secs(5), || (0..3)
        .all(|i| used_bytes(&c.state(i)) == charged(c.peer(i), 100))));
    for i in 0..3 {
        let stored = c.state(i)["stored"].as_array().unwrap().clone();
        assert_eq!(stored.len(), 1, "only the valid chunk is stored");
        let entries: Vec<_> = std::fs::read_dir(c.peer(i).dir.join("state").join("chunks"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from(&id)]);
    }
    // They did arrive, and were counted as malformed.
    for i in 0..3 {
        let n = c.state(i)["malformed_datagrams"].as_u64().unwrap();
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
    let s = c.state(0);
    assert_eq!(min_rd(file_entries(&s, &files[2].0)[0]), 2);
    let versions = c.cli_ok(0, &["versions", p], 0);
    assert!(versions.contains(p), "{versions}");
}

#[test]
fn restore_survives_killed_holders() {
    let mut c = Cluster::start(&["100MB", "100MB", "100MB", "100MB"]);
    let files = make_files(c.dir.path());
    let (path, bytes) = &files[0];
    c.cli_ok(0, &["backup", path.to_str().unwrap(), "-r", "2"], 0);
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
        let want = format!("1.0 STORED {peer} {id} 5\r\n\r\n");
        assert!(stored.contains(&want), "no {want:?} in {stored:?}");
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
    // Each holder answers at most once for one GETCHUNK (usually one stays quiet, having seen
    // the other's CHUNK first; both answer only when their random delays nearly coincide).
    let answers = chunks
        .iter()
        .filter(|d| d.starts_with(header.as_bytes()))
        .count();
    assert!((1..=2).contains(&answers), "{answers} CHUNKs");
}
