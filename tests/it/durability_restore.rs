//! Issue 24, cases 8, 9, 10 and a full disk, with real daemons on loopback: a rebuilt catalog
//! sets a damaged chunk aside and keeps the home's RD; a restore takes the newest version that
//! is whole on the peers and says so; `restore --all` brings back every folder the catalog knows
//! was watched, not only the config's; a restore onto a full disk says so and leaves nothing.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// A `[[watch]]` table for `root`, quick to notice changes.
fn watch(root: &Path, replication: u8) -> String {
    format!(
        "[[watch]]\npath = \"{}\"\nreplication = {replication}\nquiet = \"200ms\"\n",
        root.display()
    )
}

/// The versions of `path` peer `i` lists: (version, complete, lowest perceived RD).
fn versions(c: &Cluster, i: usize, path: &Path) -> Vec<(u32, bool, u32)> {
    c.peer(i)
        .try_state()
        .ok()
        .map(|s| {
            s.versions_of(path)
                .iter()
                .map(|e| (e.version, e.complete, e.min_rd()))
                .collect()
        })
        .unwrap_or_default()
}

/// Flips a byte in the body of chunk `chunk_no` of every pack of a peer's store.
fn damage_chunk(peer: &Peer, chunk_no: u32) -> usize {
    use peerstash::store::chunks::{HEADER, SLOT};
    use std::os::unix::fs::FileExt;
    let mut damaged = 0;
    for (file_id, no, _) in chunks_on_disk(peer) {
        if no.0 != chunk_no {
            continue;
        }
        let pack = (peer.dir.join("state/chunks")).join(format!("{}.pack", file_id.key()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pack)
            .unwrap();
        let at = u64::from(chunk_no) * SLOT + HEADER + 7;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
        damaged += 1;
    }
    damaged
}

/// Case 8: `--rebuild-catalog` sets a damaged chunk aside (REMOVED sent: the home peer backs it
/// up again) and the daemon starts; the rebuilt rows do not say RD 1, so when another holder
/// drops its copies while the home peer is away, the rebuilt holder backs them up again.
#[test]
fn case8_a_rebuild_sets_a_damaged_chunk_aside_and_removeds_still_count() {
    if needs_root("reclaim (root's command)") {
        return;
    }
    // Peers 2 and 3 host; peer 4 hosts nothing yet.
    let mut c = Cluster::start(&["0", "100MB", "100MB", "0"]);
    let base = c.dir.path().canonicalize().unwrap();
    let f = base.join("kept.bin");
    let bytes = random_bytes(300_000);
    std::fs::write(&f, &bytes).unwrap();
    c.cli_ok(0, &["backup", f.to_str().unwrap(), "-r", "2"], 0);
    assert_eq!(chunk_files_on_disk(c.peer(1)), 5);
    assert_eq!(chunk_files_on_disk(c.peer(2)), 5);

    // Peer 2 loses its catalog, and one of its chunks is damaged.
    c.stop(1);
    let state = c.peer(1).dir.join("state");
    std::fs::write(state.join("catalog.db"), b"").unwrap();
    for extra in ["catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(state.join(extra));
    }
    assert_eq!(damage_chunk(c.peer(1), 2), 1);
    c.spawn_with(1, &[], &["--rebuild-catalog"]);
    c.wait_ready(1);
    let log = c.full_log(1);
    assert!(
        log.contains("4 of 5 chunk files re-indexed") && log.contains("1 damaged chunks set aside"),
        "{log}"
    );
    let set_aside = std::fs::read_dir(state.join("quarantine")).unwrap().count();
    assert_eq!(set_aside, 1, "the damaged chunk is kept in the quarantine");
    let stored = c.peer(1).state().stored.clone();
    assert!(
        stored.iter().all(|s| s.desired_rd != 1),
        "no RD 1 invented: {stored:?}"
    );
    // Its REMOVED: the home peer sends the chunk again, and peer 2 holds all 5 again.
    let whole = || chunk_files_on_disk(c.peer(1)) == 5;
    assert!(
        wait_until(Duration::from_secs(30), whole),
        "the damaged chunk was never backed up again:\n{}",
        c.dump()
    );

    // The home peer is away; peer 3 drops its copies (REMOVED): peer 2 backs them up again on
    // peer 4, which now has room.
    c.rewrite_config(3, "100MB", "");
    c.reload(3);
    c.kill(0);
    c.cli_ok(2, &["reclaim", "0"], 0);
    assert_eq!(chunk_files_on_disk(c.peer(2)), 0);
    let placed = || chunk_files_on_disk(c.peer(3)) == 5;
    assert!(
        wait_until(Duration::from_secs(30), placed),
        "{} of 5 chunks backed up again on peer 4:\n{}",
        chunk_files_on_disk(c.peer(3)),
        c.dump()
    );

    // Peer 2 stopped too: the file comes back from peer 4 alone.
    c.stop(1);
    c.spawn(0);
    c.wait_ready(0);
    let out = base.join("out.bin");
    assert_eq!(restore_to(&c, 0, &f, &out), bytes);
}

/// Case 9: a file grew past the peers' quotas: its version 2 is refused (case 12), or complete
/// (every chunk sent) with some chunks at no holder. `restore` and `restore --all` take version
/// 1, whole on the peers (and say why when version 2 is there).
#[test]
fn case9_a_restore_takes_the_newest_version_that_is_whole_and_says_so() {
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap();
    let f = root.join("grows.bin");
    let v1 = random_bytes(100_000);
    std::fs::write(&f, &v1).unwrap();
    let c = Cluster::start_with(&["0", "1 MiB", "1 MiB"], &[&watch(&root, 1)]);
    let v1_held = || versions(&c, 0, &f) == vec![(1, true, 1)];
    assert!(wait_until(Duration::from_secs(30), v1_held), "{}", c.dump());
    // 3 MB cannot fit on two peers of 1 MiB: version 2 is refused as too big for the peers
    // (case 12), or, if every chunk was sent before that was seen, ends complete, not whole.
    std::fs::write(&f, random_bytes(3_000_000)).unwrap();
    let refused = || {
        versions(&c, 0, &f) == vec![(1, true, 1)]
            && output_text(&c.cli(0, &["status"])).contains("does not fit on the peers")
    };
    let v2_sent = || {
        let v = versions(&c, 0, &f);
        v.len() == 2 && v[1] == (2, true, 0)
    };
    assert!(
        wait_until(Duration::from_secs(40), || refused() || v2_sent()),
        "version 2 neither refused nor complete: {:?}\n{}",
        versions(&c, 0, &f),
        c.dump()
    );
    assert_eq!(versions(&c, 0, &f)[0], (1, true, 1), "version 1 kept");
    let not_whole = v2_sent();

    // `restore` without --version.
    let out = root.join("out.bin");
    let said = c.cli_ok(
        0,
        &[
            "restore",
            f.to_str().unwrap(),
            "--to",
            out.to_str().unwrap(),
        ],
        0,
    );
    assert!(
        !not_whole
            || said.contains(&format!(
                "restored version 1 of {}: version 2 is not whole on the peers",
                f.display()
            )),
        "{said}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), v1);

    // `restore --all`, the file lost.
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&f).unwrap();
    let said = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(said.contains("1 files: 1 restored, 0 failed"), "{said}");
    assert!(
        !not_whole || said.contains("version 2 is not whole on the peers"),
        "{said}"
    );
    assert_eq!(std::fs::read(&f).unwrap(), v1);
}

/// Case 9, the other way a version is not whole: the catalog counts every chunk of version 2
/// as held, but its only holder's copies are damaged. The restore falls back to version 1.
#[test]
fn case9_a_restore_whose_newest_version_fails_midway_takes_the_older_one() {
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap();
    let f = root.join("edited.bin");
    let v1 = random_bytes(100_000);
    std::fs::write(&f, &v1).unwrap();
    let kept = format!("{}keep_versions = 2\n", watch(&root, 1));
    let c = Cluster::start_with(&["0", "100MB"], &[&kept]);
    let held = |n: usize| {
        let v = versions(&c, 0, &f);
        v.len() == n && v.iter().all(|v| v.1 && v.2 == 1)
    };
    assert!(
        wait_until(Duration::from_secs(30), || held(1)),
        "{}",
        c.dump()
    );
    std::fs::write(&f, random_bytes(150_000)).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || held(2)),
        "{}",
        c.dump()
    );
    // Version 2's copies go bad on the holder; nobody knows yet.
    let state = c.peer(0).state();
    let v2 = state
        .versions_of(&f)
        .into_iter()
        .find(|e| e.version == 2)
        .unwrap()
        .file_id
        .to_lowercase();
    let pack = (c.peer(1).dir.join("state/chunks")).join(format!("{v2}.pack"));
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = peerstash::store::chunks::SLOT as usize + peerstash::store::chunks::HEADER as usize;
    bytes[at + 3] ^= 0xff;
    std::fs::write(&pack, &bytes).unwrap();

    let out = root.join("out.bin");
    let said = c.cli_ok(
        0,
        &[
            "restore",
            f.to_str().unwrap(),
            "--to",
            out.to_str().unwrap(),
        ],
        0,
    );
    assert!(
        said.contains(&format!(
            "restored version 1 of {}: version 2 is not whole on the peers",
            f.display()
        )),
        "{said}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), v1);
}

/// Case 10: a folder watched after the config was copied off the machine is restored by
/// `restore --all` with the old config, and said to be missing from it.
#[test]
fn case10_restore_all_brings_back_a_folder_the_config_no_longer_names() {
    let (first, later) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = first.path().canonicalize().unwrap();
    let b = later.path().canonicalize().unwrap();
    let (fa, fb) = (a.join("old.txt"), b.join("new.txt"));
    let (ba, bb) = (random_bytes(20_000), random_bytes(30_000));
    std::fs::write(&fa, &ba).unwrap();
    std::fs::write(&fb, &bb).unwrap();
    let both = format!("{}{}", watch(&a, 2), watch(&b, 2));
    let mut c = Cluster::start_with(&["0", "30 MiB", "30 MiB"], &[&both]);
    let backed_up = || {
        [&fa, &fb]
            .iter()
            .all(|p| versions(&c, 0, p).iter().any(|v| v.1 && v.2 >= 2))
    };
    assert!(
        wait_until(Duration::from_secs(30), backed_up),
        "{}",
        c.dump()
    );
    // The computer is rebuilt with the config copied before the second folder was added.
    c.rewrite_config(0, "0", &watch(&a, 2));
    c.restart(0);
    std::fs::remove_file(&fa).unwrap();
    std::fs::remove_file(&fb).unwrap();
    let said = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(said.contains("2 files: 2 restored, 0 failed"), "{said}");
    assert!(
        said.contains(&format!(
            "the config does not name: {} (add them",
            b.display()
        )),
        "{said}"
    );
    assert_eq!(std::fs::read(&fa).unwrap(), ba);
    assert_eq!(std::fs::read(&fb).unwrap(), bb);
}

/// Case 10 as the README's disaster recovery meets it: the disk is lost, the computer is
/// reinstalled with the config copied before the second folder was added, `recover` installs
/// the last catalog snapshot, and `restore --all` brings back both folders.
#[test]
fn case10_after_recover_restore_all_brings_back_a_folder_added_after_the_config_was_copied() {
    if needs_root("snapshot and recover (root's commands)") {
        return;
    }
    let (first, later) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = first.path().canonicalize().unwrap();
    let b = later.path().canonicalize().unwrap();
    let (fa, fb) = (a.join("old.txt"), b.join("sub/new.txt"));
    std::fs::create_dir_all(b.join("sub")).unwrap();
    let (ba, bb) = (random_bytes(20_000), random_bytes(30_000));
    std::fs::write(&fa, &ba).unwrap();
    std::fs::write(&fb, &bb).unwrap();
    let sealed = |root: &Path| format!("{}encrypt = true\n", watch(root, 2));
    let both = format!("{}{}", sealed(&a), sealed(&b));
    let mut c = Cluster::start_with(&["0", "30 MiB", "30 MiB"], &[&both]);
    let backed_up = || {
        [&fa, &fb]
            .iter()
            .all(|p| versions(&c, 0, p).iter().any(|v| v.1 && v.2 >= 2))
    };
    assert!(
        wait_until(Duration::from_secs(30), backed_up),
        "{}",
        c.dump()
    );
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("every chunk at its RD"), "{out}");

    // The disk dies: the state folder and both folders' files are gone; the key is kept, and
    // the config is the copy made before the second folder was added.
    c.kill(0);
    std::fs::remove_dir_all(c.peers[0].dir.join("state")).unwrap();
    std::fs::remove_file(&fa).unwrap();
    std::fs::remove_dir_all(b.join("sub")).unwrap();
    c.rewrite_config(0, "0", &sealed(&a));
    c.spawn(0);
    c.wait_ready(0);
    let out = c.cli_ok(0, &["recover"], 0);
    assert!(out.contains("recovered the catalog snapshot"), "{out}");
    let said = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(said.contains("2 files: 2 restored, 0 failed"), "{said}");
    assert!(
        said.contains(&format!("the config does not name: {}", b.display())),
        "{said}"
    );
    assert_eq!(std::fs::read(&fa).unwrap(), ba);
    assert_eq!(std::fs::read(&fb).unwrap(), bb);
}

/// A restore onto a full disk says "disk full at <path>", not "are the holders running?", and
/// leaves no file, under the final name or a temporary one.
#[test]
fn a_restore_onto_a_full_disk_says_so_and_leaves_nothing() {
    let Some(disk) = SmallDisk::mount("1m") else {
        return;
    };
    let c = Cluster::start(&["0", "30 MiB", "30 MiB"]);
    let base = c.dir.path().canonicalize().unwrap();
    let f = base.join("big.bin");
    let bytes = random_bytes(3_000_000);
    std::fs::write(&f, &bytes).unwrap();
    c.cli_ok(0, &["backup", f.to_str().unwrap(), "-r", "1"], 0);

    let out = disk.path.join("big.bin");
    let o = c.cli(
        0,
        &[
            "restore",
            f.to_str().unwrap(),
            "--to",
            out.to_str().unwrap(),
        ],
    );
    let said = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "disk full at {}: free space and run the restore again",
            out.display()
        )),
        "{said}"
    );
    assert!(!said.contains("holders running"), "{said}");
    let left: Vec<_> = std::fs::read_dir(&disk.path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left on the full disk: {left:?}");

    // Room made (elsewhere): the same restore works.
    let out = base.join("back.bin");
    assert_eq!(restore_to(&c, 0, &f, &out), bytes);
}

/// `restore --all DEST` onto a disk that fills up: the file that did not fit says "disk full",
/// nothing is left of it, and the files after it are not tried.
#[test]
fn restore_all_onto_a_full_disk_stops_and_says_so() {
    let Some(disk) = SmallDisk::mount("1m") else {
        return;
    };
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap();
    let names = ["a.bin", "b.bin", "c.bin"];
    for n in names {
        std::fs::write(root.join(n), random_bytes(600_000)).unwrap();
    }
    let c = Cluster::start_with(&["0", "30 MiB", "30 MiB"], &[&watch(&root, 1)]);
    let backed_up = || {
        (names.iter()).all(|n| {
            versions(&c, 0, &root.join(n))
                .iter()
                .any(|v| v.1 && v.2 >= 1)
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), backed_up),
        "{}",
        c.dump()
    );
    let o = c.cli(0, &["restore", "--all", disk.path.to_str().unwrap()]);
    let said = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{said}");
    let b = disk
        .path
        .join(root.strip_prefix("/").unwrap())
        .join("b.bin");
    assert!(
        said.contains(&format!(
            "disk full at {}: free space and run the restore again",
            b.display()
        )),
        "{said}"
    );
    assert!(
        said.contains("3 files: 1 restored, 1 failed, 1 not tried: the disk is full"),
        "{said}"
    );
    let below = disk.path.join(root.strip_prefix("/").unwrap());
    let mut left: Vec<_> = std::fs::read_dir(&below)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["a.bin"], "only the file that fitted");
}
