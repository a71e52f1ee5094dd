//! Disaster recovery with real daemons on loopback: a peer's state folder is wiped entirely
//! (its config and master key kept, as on a reinstalled computer), `peerstash recover` finds its
//! newest catalog snapshot on the other peers, and `peerstash restore --all` brings back every
//! file of its watched folder. Without the key, recover says what is missing and changes nothing.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => out.extend(files_below(&path)),
            false => out.push(path),
        }
    }
    out
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn a_wiped_peer_recovers_its_catalog_and_restores_every_file() {
    if !is_root() {
        skip("snapshot and recover are root's commands (run the tests as root)");
        return;
    }
    let (mut c, _folder, root, files) = backed_up_tree(true);
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("every chunk at its RD"), "{out}");
    let state = c.cli_ok(0, &["state"], 0);
    assert!(
        state.contains("`peerstash recover` would find it"),
        "{state}"
    );
    // The holders keep it sealed: no path of ours is in any file of theirs.
    let marker = root.join("dir1/sub1").into_os_string().into_encoded_bytes();
    for holder in 1..4 {
        for file in files_below(&c.peers[holder].dir.join("state")) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "{} holds a path of peer 1 in clear",
                file.display()
            );
        }
    }

    // The computer dies: its state folder and the watched files are lost; config and key kept.
    c.kill(0);
    let state = c.peers[0].dir.join("state");
    std::fs::remove_dir_all(&state).unwrap();
    for entry in std::fs::read_dir(&root).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    c.spawn(0);
    c.wait_ready(0);
    let pid = c.pid(0);
    let out = c.cli_ok(0, &["recover"], 0);
    assert!(out.contains("recovered the catalog snapshot"), "{out}");
    assert!(out.contains("running with the recovered catalog"), "{out}");
    assert_eq!(c.pid(0), pid, "restarted in place");
    assert!(c.full_log(0).contains("installed the recovered catalog"));

    let out = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(out.contains("50 files: 50 restored, 0 failed"), "{out}");
    check_tree(&root, &files);

    // Snapshots go on under numbers of their own, far above the recovered one (a power of two
    // above it: a recover's first probes find it), each one more (the daemon may take one of
    // its own between two).
    let number = |out: String| -> u64 {
        let n = out.split_whitespace().nth(2).and_then(|n| n.parse().ok());
        n.unwrap_or_else(|| panic!("no snapshot number: {out}"))
    };
    let first = number(c.cli_ok(0, &["snapshot"], 0));
    assert!(first >= 4096, "{first}");
    let next = number(c.cli_ok(0, &["snapshot"], 0));
    assert!(next > first, "{next} after {first}");
}

#[test]
fn without_the_key_recover_says_what_is_missing_and_changes_nothing() {
    if !is_root() {
        skip("snapshot and recover are root's commands (run the tests as root)");
        return;
    }
    let (mut c, _folder, root, _files) = backed_up_tree(true);
    c.cli_ok(0, &["snapshot"], 0);
    c.kill(0);
    let state = c.peers[0].dir.join("state");
    std::fs::remove_dir_all(&state).unwrap();
    let key = c.peers[0].dir.join("master.key");
    let kept = c.peers[0].dir.join("master.key.kept");
    std::fs::rename(&key, &kept).unwrap();

    // No key at all (no folder encrypts yet on the reinstalled computer): none is made.
    c.rewrite_config(0, "0", "");
    c.spawn(0);
    c.wait_ready(0);
    let out = c.cli(0, &["recover"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("master.key is missing"), "{stderr}");
    assert!(stderr.contains("Nothing was changed"), "{stderr}");
    assert!(
        !key.exists(),
        "no key made: a new one could not open the snapshots"
    );
    assert!(!state.join("catalog.recovered").exists());
    let out = c.cli(0, &["versions", root.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "no version known");

    // The config back, with its encrypted folder: the daemon makes a new key, and recover
    // says that this one cannot be the lost computer's.
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 2\nencrypt = true\n",
        root.display()
    );
    c.rewrite_config(0, "0", &watch);
    c.restart(0);
    assert!(key.exists());
    let out = c.cli(0, &["recover"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was made new by this peer"), "{stderr}");
    assert!(!state.join("catalog.recovered").exists());

    // The old key put back: the snapshot is found. The files the new key backed up meanwhile
    // make the catalog one that lists backups: only --force replaces it. (That catalog's
    // versions are under the new key: the start takes the old one on the admin's word.)
    c.stop(0);
    std::fs::rename(&kept, &key).unwrap();
    c.spawn_with(0, &[], &["--new-master-key"]);
    c.wait_ready(0);
    let out = c.cli(0, &["recover"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("recover --force"), "{stderr}");
    let out = c.cli_ok(0, &["recover", "--force"], 0);
    assert!(out.contains("recovered the catalog snapshot"), "{out}");
}

/// Peer 1 with one file backed up encrypted at RD 2 on peers 2 and 3.
fn one_file_backed_up() -> (Cluster, PathBuf) {
    let c = Cluster::start(&["0", "100MB", "100MB"]);
    let file = c.dir.path().canonicalize().unwrap().join("kept.bin");
    std::fs::write(&file, random_bytes(100_000)).unwrap();
    c.cli_ok(
        0,
        &["backup", file.to_str().unwrap(), "-r", "2", "--encrypt"],
        0,
    );
    (c, file)
}

/// Peer 1's computer dies (its state folder wiped); on the new one, recover finds a snapshot
/// that knows `file`.
fn wiped_then_recovered(c: &mut Cluster, file: &str) {
    c.kill(0);
    std::fs::remove_dir_all(c.peers[0].dir.join("state")).unwrap();
    c.spawn(0);
    c.wait_ready(0);
    let out = c.cli_ok(0, &["recover"], 0);
    assert!(out.contains("recovered the catalog snapshot"), "{out}");
    c.cli_ok(0, &["versions", file], 0);
}

/// The first snapshot (number 1, a power of two: a recover's first probes look for those) is
/// taken while no peer is up: no chunk of it is stored anywhere. Once the peers are back, the
/// next snapshot (or the worker, every ten minutes) sends it again, and a recover finds them.
#[test]
fn a_snapshot_no_peer_took_is_sent_again_so_that_recover_finds_it() {
    if !is_root() {
        skip("snapshot and recover are root's commands (run the tests as root)");
        return;
    }
    let (mut c, file) = one_file_backed_up();
    let file_arg = file.to_str().unwrap();

    c.stop(1);
    c.stop(2);
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("some chunks below their RD"), "{out}");
    let first = out.split_whitespace().nth(2).unwrap_or_default().to_owned();
    assert_eq!(first, "1", "the first snapshot: {out}");

    c.spawn(1);
    c.spawn(2);
    c.wait_ready(1);
    c.wait_ready(2);
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("every chunk at its RD"), "{out}");

    wiped_then_recovered(&mut c, file_arg);
}

/// A daemon killed after claiming the first snapshot number and before writing its file left
/// the number claimed with nothing sent: the next snapshot gets it back, so that the numbers
/// have no gap (a recover's search relies on it) and a recover finds it.
#[test]
fn a_number_claimed_by_a_killed_snapshot_is_given_back() {
    if !is_root() {
        skip("snapshot and recover are root's commands (run the tests as root)");
        return;
    }
    let (mut c, file) = one_file_backed_up();
    let file_arg = file.to_str().unwrap();

    c.stop(0);
    let state = c.peers[0].dir.join("state");
    let catalog = peerstash::store::Catalog::open(&state.join("catalog.db")).unwrap();
    catalog
        .claim_snapshot(
            &peerstash::protocol::FileId::from_digest(&[7; 32]),
            peerstash::protocol::seal::SnapshotNo::Numbered(1),
            0,
        )
        .unwrap();
    drop(catalog);
    c.spawn(0);
    c.wait_ready(0);
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("snapshot 1 backed up"), "{out}");
    assert!(c.full_log(0).contains("its number is free again"));

    wiped_then_recovered(&mut c, file_arg);
}
