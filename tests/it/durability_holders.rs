//! Issue 24, case 1: a copy counted is a copy that exists. A holder that comes back within
//! `holder_timeout` with an empty state folder (the README's reinstall) or a rolled-back one
//! (its state folder put back from a copy taken before it stored the chunks) sends no REMOVED;
//! the home must stop counting it anyway (its store's new incarnation, or verification) and make
//! the copies again. Checked against real 2.0 daemons: the home's perceived RD of every chunk
//! never stays above the copies really hosted, it is back at the desired RD, and the file
//! restores with the other original holder switched off.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Three 2.0 peers (holder_timeout 1 day: nobody is counted lost by silence here), each with
/// `peer_extra` in its `[peer]` table.
fn three_peers(peer_extra: &str) -> Cluster {
    three_peers_keyed(peer_extra, None)
}

/// The same, every peer with the LAN key file `key`, if any.
fn three_peers_keyed(peer_extra: &str, key: Option<PathBuf>) -> Cluster {
    let spec = PeerSpec {
        peer_extra: peer_extra.into(),
        lan_key_file: key,
        ..PeerSpec::new("100MB").protocol("2.0")
    };
    Cluster::start_specs(vec![spec; 3])
}

/// A random file of `size` bytes in the cluster's data folder, backed up by peer 1 at RD 2
/// (so on peers 2 and 3, the only other ones), once every chunk is at RD 2.
fn backed_up_at_rd2(c: &Cluster, size: usize) -> (PathBuf, Vec<u8>, Vec<(String, u32)>) {
    let data = c.root().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let path = data.join("precious.bin");
    let bytes = random_bytes(size);
    std::fs::write(&path, &bytes).unwrap();
    c.cli_ok(0, &["backup", text(&path), "--replication", "2"], 0);
    let at_2 = wait_until(Duration::from_secs(20), || {
        c.peer(0).state().file(&path).min_rd() >= 2
            && copies(c, &path).iter().all(|(_, _, hosted)| *hosted >= 2)
    });
    assert!(at_2, "every chunk at RD 2 on peers 2 and 3:\n{}", c.dump());
    let f = c.peer(0).file(&path);
    let f = f.latest();
    let chunks = (f.chunks.iter())
        .map(|ch| (f.file_id.clone(), ch.chunk_no))
        .collect();
    (path, bytes, chunks)
}

/// For each chunk of the newest version of `path`: its number, the home's perceived RD, and
/// the copies really hosted on peers 2 and 3 (their `state` "stored" lists).
fn copies(c: &Cluster, path: &Path) -> Vec<(u32, u32, usize)> {
    let home = c.peer(0).file(path);
    let f = home.latest();
    let holders: Vec<State> = (1..3).map(|i| c.peer(i).state()).collect();
    (f.chunks.iter())
        .map(|ch| {
            let hosted = (holders.iter())
                .filter(|s| s.hosts(&f.file_id, ch.chunk_no))
                .count();
            (ch.chunk_no, ch.perceived_rd, hosted)
        })
        .collect()
}

/// The chunks whose perceived RD is above the copies that exist, or below 2.
fn wrong(c: &Cluster, path: &Path) -> Vec<(u32, u32, usize)> {
    (copies(c, path).into_iter())
        .filter(|(_, rd, hosted)| *rd as usize > *hosted || *rd < 2)
        .collect()
}

/// Waits (at most `limit`) until every chunk is counted at RD 2 with 2 real copies; fails with
/// what the home counts and the holders host.
fn counted_copies_exist(c: &Cluster, path: &Path, limit: Duration, what: &str) {
    let mut bad = Vec::new();
    let ok = wait_until(limit, || {
        bad = wrong(c, path);
        bad.is_empty()
    });
    assert!(
        ok,
        "{what}: after {limit:?}, chunks (no, perceived RD at the home, copies hosted) not at \
         RD 2 with as many real copies: {bad:?}\n{}",
        c.dump()
    );
}

/// Peer 3 (the other original holder) switched off: the file still restores, from the copies
/// made again.
fn restores_without_peer_3(c: &mut Cluster, path: &Path, bytes: &[u8]) {
    c.kill(2);
    let to = c.root().join("restored.bin");
    c.cli_ok(0, &["restore", text(path), "--to", text(&to)], 0);
    assert!(
        std::fs::read(&to).unwrap() == bytes,
        "{path:?} restored with other bytes"
    );
}

/// Case 1, reinstall: holder 2's state folder is emptied while it is stopped (the README's
/// reinstall procedure) and it starts again at once, long before holder_timeout. Its store's
/// new incarnation (HELLO) makes the home stop counting it, and the repair makes the copies
/// again. On main the home keeps counting it: perceived RD 2 with one copy, and once peer 3 is
/// off the restore fails.
#[test]
fn a_holder_reinstalled_empty_is_no_longer_counted_and_copies_are_made_again() {
    // Verification far away: the incarnation alone must find it.
    let mut c = three_peers("verify_every = \"1h\"\n");
    let (path, bytes, chunks) = backed_up_at_rd2(&c, 200_000);

    c.stop(1);
    let state = c.peer(1).dir.join("state");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    c.spawn(1);
    c.wait_ready(1);

    let home_saw_it = wait_until(Duration::from_secs(20), || {
        c.full_log(0).contains("has a new chunk store")
    });
    assert!(
        home_saw_it,
        "the home never saw peer 2's new store:\n{}",
        c.dump()
    );
    counted_copies_exist(&c, &path, Duration::from_secs(40), "reinstalled holder");
    eprintln!(
        "{} chunks: holder 2 reinstalled empty, found by its incarnation, copies made again",
        chunks.len()
    );
    restores_without_peer_3(&mut c, &path, &bytes);
}

/// Case 1, rollback: holder 2's state folder is put back from a copy taken before it stored
/// the chunks (a VM snapshot, a tarball): same incarnation, so only verification can find it.
/// The home asks it for chunks of its own (verify_every 2 s), hears NONE, stops counting it and
/// makes the copies again. On main the home counts it for ever.
#[test]
fn a_rolled_back_holder_is_found_by_verification_and_copies_are_made_again() {
    rolled_back_holder(None);
}

/// The same with a LAN key: PROVE and a PROOF carrying a whole 64,000-byte body, signed,
/// pass; the home still finds the rolled-back holder.
#[test]
fn a_rolled_back_holder_is_found_by_verification_on_a_keyed_lan() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("lan.key");
    let out = std::process::Command::new(PEERSTASH)
        .arg("keygen")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    rolled_back_holder(Some(key));
}

fn rolled_back_holder(key: Option<PathBuf>) {
    let mut c = three_peers_keyed("verify_every = \"2s\"\n", key);
    // The copy of peer 2's state folder, taken while it is stopped, before the backup.
    c.stop(1);
    let state = c.peer(1).dir.join("state");
    let saved = c.root().join("peer2-state-copy");
    copy_dir(&state, &saved);
    c.spawn(1);
    c.wait_ready(1);

    let (path, bytes, chunks) = backed_up_at_rd2(&c, 200_000);
    c.stop(1);
    std::fs::remove_dir_all(&state).unwrap();
    copy_dir(&saved, &state);
    c.spawn(1);
    c.wait_ready(1);
    let back = std::time::Instant::now();

    let found = wait_until(Duration::from_secs(40), || {
        c.full_log(0).contains("failed to prove it holds chunk")
    });
    assert!(
        found,
        "the home never found that rolled-back peer 2 lacks its chunks:\n{}",
        c.dump()
    );
    assert!(
        !c.full_log(0).contains("has a new chunk store"),
        "a rolled-back store keeps its incarnation: verification, not the incarnation, must \
         find it\n{}",
        c.dump()
    );
    counted_copies_exist(&c, &path, Duration::from_secs(40), "rolled-back holder");
    // Peer 3, which kept its copies, proved them every 2 s (PROOFs with whole bodies): never
    // dropped, not even for silence (given up at 14 s).
    std::thread::sleep(Duration::from_secs(16).saturating_sub(back.elapsed()));
    assert!(
        !c.full_log(0).contains("peer 3 failed to prove"),
        "peer 3 holds its copies, yet was dropped:\n{}",
        c.dump()
    );
    eprintln!(
        "{} chunks: holder 2 rolled back, found by verification, copies made again",
        chunks.len()
    );
    restores_without_peer_3(&mut c, &path, &bytes);
}

/// A copy of a folder tree (files and folders; the daemon's state folder has nothing else).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
