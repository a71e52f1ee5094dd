//! Issue 5: a peer whose disk fills up (its chunk store and its catalog on a 3 MB tmpfs made by
//! the test) refuses what does not fit without STORED, leaves no partial file, and goes on
//! serving what it has. Issue 14: a catalog snapshot and a recover on a full disk fail cleanly.
//! Needs root (to mount): skipped with a message otherwise, failed with CI=true.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Moves peer `i`'s state folder to `state` (in its config; the peer is restarted).
fn move_state(c: &mut Cluster, i: usize, state: &Path) {
    c.stop(i);
    let p = &c.peers[i];
    let text = std::fs::read_to_string(&p.config).unwrap().replace(
        &p.dir.join("state").display().to_string(),
        &state.display().to_string(),
    );
    std::fs::write(&p.config, text).unwrap();
    c.spawn(i);
    c.wait_ready(i);
}

#[test]
fn a_full_disk_refuses_chunks_cleanly_and_keeps_serving() {
    let Some(disk) = SmallDisk::mount("3m") else {
        return;
    };
    let small = disk.path.clone();

    // Peer 2 keeps its state (chunks and catalog) on the small disk, with a quota far above it.
    let mut c = Cluster::start(&["0", "100MB", "0"]);
    move_state(&mut c, 1, &small.join("state"));

    let data = c.dir.path().canonicalize().unwrap();
    let small_file = data.join("small.bin");
    let small_bytes = random_bytes(300_000);
    std::fs::write(&small_file, &small_bytes).unwrap();
    c.cli_ok(0, &["backup", small_file.to_str().unwrap(), "-r", "1"], 0);

    // 6 MB cannot fit on 3 MB: some chunks are refused; the file does not fit on the peers,
    // and the backup says so (issue 24 case 12), freeing what the full peer took of it.
    let big = data.join("big.bin");
    std::fs::write(&big, random_bytes(6_000_000)).unwrap();
    let out = c.cli(0, &["backup", big.to_str().unwrap(), "-r", "1"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("does not fit on the peers"), "{text}");

    // The full peer is alive, its catalog matches its chunk files, and no partial file is left;
    // the big file's chunks are freed (its unfinished version's DELETE) and the home peer
    // keeps no version of it.
    let freed = || {
        let s = c.peer(1).state();
        let stored = s.stored.clone();
        let sum: u64 = stored.iter().map(|h| charged_on(&small, h.size)).sum();
        let files = peerstash::store::chunks::list(&small.join("state").join("chunks"))
            .unwrap()
            .len();
        s.used_bytes == sum && files == stored.len() && stored.len() == 5
    };
    assert!(
        wait_until(Duration::from_secs(10), freed),
        "only the small file's 5 chunks are left on the full peer, catalog and disk agreeing:\n{}",
        c.dump()
    );
    assert!(
        c.peer(0).state().versions_of(&big).is_empty(),
        "{}",
        c.dump()
    );

    // It goes on serving what it has.
    std::fs::remove_file(&small_file).unwrap();
    c.cli_ok(0, &["restore", small_file.to_str().unwrap()], 0);
    assert_eq!(std::fs::read(&small_file).unwrap(), small_bytes);
    // And the room freed takes a new backup.
    let again = data.join("again.bin");
    std::fs::write(&again, random_bytes(500_000)).unwrap();
    c.cli_ok(0, &["backup", again.to_str().unwrap(), "-r", "1"], 0);
}

/// Writes `dir/filler` until the disk is full, then frees `leave` bytes; returns its path.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5au8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    path
}

/// The names of the files in `dir` (none when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Issue 14 on a full disk: the home peer's state folder (catalog and snapshots) is on a small
/// tmpfs filled to the last byte. A catalog snapshot and a recover then fail with a one-line
/// error that names the full disk and says what to do, leave no half-written file behind (it
/// would keep the disk full), and change nothing; once space is freed, both succeed.
#[test]
fn a_full_disk_fails_a_snapshot_and_a_recover_cleanly() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    let small = disk.path.clone();

    // Peer 1 (the home peer) keeps its state on the small disk.
    let mut c = Cluster::start(&["0", "100MB", "100MB"]);
    let state = small.join("state");
    move_state(&mut c, 0, &state);
    let data = c.dir.path().canonicalize().unwrap();
    let file = data.join("kept.bin");
    std::fs::write(&file, random_bytes(200_000)).unwrap();
    let file_arg = file.to_str().unwrap();
    c.cli_ok(0, &["backup", file_arg, "-r", "2", "--encrypt"], 0);
    let snapshots = state.join("snapshots");
    let before = names_in(&snapshots);

    // A snapshot on a disk with room for the catalog's log, not for the copy of the catalog.
    let filler = fill(&small, 32 * 1024);
    let out = c.cli(0, &["snapshot"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the disk of {} is full", state.display())),
        "{stderr}"
    );
    assert!(stderr.contains("free some space there"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert_eq!(names_in(&snapshots), before, "nothing half-written is left");
    // The daemon goes on.
    c.cli_ok(0, &["state"], 0);
    std::fs::remove_file(&filler).unwrap();
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("every chunk at its RD"), "{out}");

    // The computer is reinstalled (its state folder lost), and the disk is full when the admin
    // runs recover.
    c.kill(0);
    for name in names_in(&state) {
        let path = state.join(name);
        match path.is_dir() {
            true => std::fs::remove_dir_all(&path).unwrap(),
            false => std::fs::remove_file(&path).unwrap(),
        }
    }
    c.spawn(0);
    c.wait_ready(0);
    let filler = fill(&small, 0);
    let out = c.cli(0, &["recover"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the disk of {} is full", state.display())),
        "{stderr}"
    );
    assert!(stderr.contains("Nothing was changed"), "{stderr}");
    let left = names_in(&state);
    assert!(
        !left.iter().any(|n| n.starts_with("catalog.recover")),
        "nothing fetched is left: {left:?}"
    );
    // Space freed, the same command works, and the recovered catalog knows the file again.
    std::fs::remove_file(&filler).unwrap();
    let out = c.cli_ok(0, &["recover"], 0);
    assert!(out.contains("recovered the catalog snapshot"), "{out}");
    c.cli_ok(0, &["versions", file_arg], 0);
}
