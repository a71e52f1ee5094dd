//! Issue 24, cases 2, 6, 7 and 11, with real daemons on loopback: catalog snapshots and
//! `peerstash recover` after a lost disk. An edit just before the disk dies (2), a clock set a
//! year ahead then back (6), an OS disk lost with the data disk kept (7), and `keep_deleted =
//! "0s"` after a recover (11): each time the files come back.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const OFFSET: &str = "PEERSTASH_CLOCK_OFFSET_S";
const YEAR_S: i64 = 365 * 86_400;

/// A watched folder (removed when dropped), its canonical path, and its `[[watch]]` table.
fn watched(options: &str) -> (tempfile::TempDir, PathBuf, String) {
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap();
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"200ms\"\nencrypt = true\n{options}\n",
        root.display()
    );
    (folder, root, watch)
}

/// Waits until `file`'s version `version` is complete at RD 2 on peer `i`.
fn wait_version_at_rd(c: &Cluster, i: usize, file: &Path, version: u32) {
    let at_rd = || {
        c.peer(i).try_state().ok().is_some_and(|s| {
            s.versions_of(file)
                .iter()
                .any(|f| f.version == version && f.min_rd() >= 2)
        })
    };
    assert!(
        wait_until(Duration::from_secs(45), at_rd),
        "version {version} of {} at RD 2:\n{}",
        file.display(),
        c.dump()
    );
}

/// The computer dies: its state folder goes, and with it (`files_too`) the watched files.
/// Config and master key kept; the daemon starts again on an empty state folder (with `env`),
/// on what is another computer (a new machine id: `config::key_made_here`).
fn disk_lost(c: &mut Cluster, root: Option<&Path>, env: &[(&str, &str)]) {
    c.kill(0);
    std::fs::remove_dir_all(c.peers[0].dir.join("state")).unwrap();
    if let Some(root) = root {
        for entry in std::fs::read_dir(root).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                true => std::fs::remove_dir_all(path).unwrap(),
                false => std::fs::remove_file(path).unwrap(),
            }
        }
    }
    let mut env = env.to_vec();
    env.push(("PEERSTASH_MACHINE_ID", "a reinstalled computer"));
    c.spawn_env(0, &env);
    c.wait_ready(0);
}

fn restart_with(c: &mut Cluster, env: &[(&str, &str)]) {
    c.stop(0);
    c.spawn_env(0, env);
    c.wait_ready(0);
}

/// Case 6: snapshots are numbered; the wall clock is a label only. A snapshot taken under a
/// clock a year ahead stops none after the clock is corrected, nor after it is set a year back,
/// and a recover on a lost disk finds the newest with the default `--days`.
#[test]
fn a_clock_a_year_ahead_then_back_neither_stops_snapshots_nor_hides_them() {
    if needs_root("snapshot and recover (root's commands)") {
        return;
    }
    let mut c = Cluster::start(&["0", "100MB", "100MB"]);
    let file = c.dir.path().canonicalize().unwrap().join("kept.bin");
    let arg = file.to_str().unwrap().to_owned();
    let (ahead, back) = (YEAR_S.to_string(), (-YEAR_S).to_string());
    let mut contents = Vec::new();
    for offset in [ahead.as_str(), "0", back.as_str()] {
        restart_with(&mut c, &[(OFFSET, offset)]);
        let bytes = random_bytes(100_000);
        std::fs::write(&file, &bytes).unwrap();
        c.cli_ok(0, &["backup", &arg, "-r", "2", "--encrypt"], 0);
        // On main: "no snapshot slot is left today" once the clock is behind the last one.
        let out = c.cli_ok(0, &["snapshot"], 0);
        assert!(out.contains("every chunk at its RD"), "{offset}: {out}");
        contents.push(bytes);
    }
    let status = c.cli_ok(0, &["status"], 0);
    assert!(status.contains("catalog snapshot: "), "{status}");

    disk_lost(&mut c, None, &[(OFFSET, "0")]);
    let out = c.cli_ok(0, &["recover"], 0);
    assert!(out.contains("recovered the catalog snapshot"), "{out}");
    let restored = restore_to(&c, 0, &file, &c.dir.path().join("out.bin"));
    assert!(
        restored == contents[2],
        "the newest content, backed up under the clock set back"
    );
}

/// Case 7: the OS disk is lost, the data disk kept. The reinstalled daemon backs up the intact
/// folder again but takes no snapshot (status says why and what to run); `recover --list` shows
/// the lost computer's snapshot and `recover` installs it, with its older versions.
#[test]
fn a_reinstalled_peer_takes_no_snapshot_and_recovers_the_lost_catalog() {
    if needs_root("snapshot and recover (root's commands)") {
        return;
    }
    let (_folder, root, watch) = watched("keep_versions = 3");
    let mut c = Cluster::start_with(&["0", "30 MiB", "30 MiB"], &[&watch]);
    let file = root.join("notes.txt");
    let v1 = random_bytes(50_000);
    std::fs::write(&file, &v1).unwrap();
    wait_version_at_rd(&c, 0, &file, 1);
    std::fs::write(&file, random_bytes(60_000)).unwrap();
    wait_version_at_rd(&c, 0, &file, 2);
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("every chunk at its RD"), "{out}");

    // The OS disk dies; the watched folder is intact. The new daemon backs it up again.
    disk_lost(&mut c, None, &[]);
    wait_version_at_rd(&c, 0, &file, 1);
    // The snapshot worker, woken by that backup, looked (after 5 s) and took none.
    std::thread::sleep(Duration::from_secs(7));
    let snapshots = c.peers[0].dir.join("state/snapshots");
    assert!(
        std::fs::read_dir(&snapshots).map_or(true, |mut d| d.next().is_none()),
        "no snapshot file in {}",
        snapshots.display()
    );
    let out = c.cli(0, &["snapshot"]);
    let text = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "no snapshot taken: {text}");
    assert!(text.contains("peerstash recover --none"), "{text}");
    let status = c.cli(0, &["status"]);
    assert!(
        output_text(&status).contains("`peerstash recover`"),
        "{}",
        output_text(&status)
    );
    assert!(c.full_log(0).contains("no catalog snapshot is taken"));

    // "There is none" while the lost computer's snapshots are on the peers is refused: its
    // snapshot numbers would be sealed again under the same key.
    let out = c.cli(0, &["recover", "--none"]);
    let text = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "--none refused: {text}");
    assert!(text.contains("this peer had a catalog"), "{text}");

    let out = c.cli_ok(0, &["recover", "--list"], 0);
    assert!(out.contains("whole, "), "{out}");
    // "  N: taken …, whole, K versions", newest first: the lost computer's.
    let newest = (out.lines())
        .find_map(|l| l.trim().split_once(": taken").map(|(n, _)| n.to_owned()))
        .unwrap_or_else(|| panic!("no snapshot listed: {out}"));
    let out = c.cli_ok(0, &["recover", "--at", &newest], 0);
    assert!(
        out.contains(&format!("recovered the catalog snapshot {newest} ")),
        "{out}"
    );
    // The lost computer's catalog, with its older version.
    let old = c.dir.path().join("v1.txt");
    let _ = std::fs::remove_file(&old);
    c.cli_ok(
        0,
        &[
            "restore",
            file.to_str().unwrap(),
            "--version",
            "1",
            "--to",
            old.to_str().unwrap(),
        ],
        0,
    );
    assert!(std::fs::read(&old).unwrap() == v1, "version 1 restores");
    // And snapshots go on.
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("backed up"), "{out}");
}

/// Case 2: `keep_versions = 1`; a file is edited and the disk dies right after the new version
/// reached its RD, before any snapshot names it. The old version was not deleted from the
/// peers (it waits for a snapshot at its RD naming the new one): after `recover`, `restore
/// --all` brings a whole version back.
#[test]
fn an_edit_just_before_the_disk_dies_still_restores() {
    if needs_root("snapshot and recover (root's commands)") {
        return;
    }
    let (_folder, root, watch) = watched("keep_versions = 1");
    let mut c = Cluster::start_with(&["0", "30 MiB", "30 MiB"], &[&watch]);
    let file = root.join("report.doc");
    let v1 = random_bytes(120_000);
    std::fs::write(&file, &v1).unwrap();
    wait_version_at_rd(&c, 0, &file, 1);
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("every chunk at its RD"), "{out}");

    let v2 = random_bytes(130_000);
    std::fs::write(&file, &v2).unwrap();
    wait_version_at_rd(&c, 0, &file, 2);
    // On main, version 1 is forgotten now and its DELETE sent: give it the time to go out.
    let only_v2 = || {
        c.peer(0).try_state().ok().is_some_and(|s| {
            let e = s.versions_of(&file);
            e.len() == 1 && e[0].version == 2
        })
    };
    wait_until(Duration::from_secs(3), only_v2);
    std::thread::sleep(Duration::from_secs(2));

    disk_lost(&mut c, Some(&root), &[]);
    let out = c.cli_ok(0, &["recover"], 0);
    assert!(out.contains("recovered the catalog snapshot"), "{out}");
    let out = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(out.contains("1 files: 1 restored, 0 failed"), "{out}");
    let back = std::fs::read(&file).unwrap();
    assert!(back == v1 || back == v2, "a whole version of the file");
}

/// Case 7's other side: a new computer whose package made its key before the first start
/// (`peerstash keygen`, as postinst does) is no reinstalled one: it takes snapshots at once,
/// with no `recover --none` asked of its admin.
#[test]
fn a_new_peer_whose_key_was_made_before_its_first_start_takes_snapshots() {
    if needs_root("snapshot (root's command)") {
        return;
    }
    let (_folder, root, watch) = watched("");
    let mut c = Cluster::start_with(&["0", "30 MiB", "30 MiB"], &[&watch]);
    // The package's install on a new computer: a key made here, then the first start.
    c.kill(0);
    std::fs::remove_dir_all(c.peers[0].dir.join("state")).unwrap();
    let key = c.peers[0].dir.join("master.key");
    std::fs::remove_file(&key).unwrap();
    let _ = std::fs::remove_file(c.peers[0].dir.join("master.key.origin"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_peerstash"))
        .arg("keygen")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    c.spawn(0);
    c.wait_ready(0);

    let file = root.join("new.txt");
    std::fs::write(&file, random_bytes(30_000)).unwrap();
    wait_version_at_rd(&c, 0, &file, 1);
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("every chunk at its RD"), "{out}");
    let status = output_text(&c.cli(0, &["status"]));
    assert!(!status.contains("peerstash recover"), "{status}");
}

/// Case 11: `keep_deleted = "0s"`. After a recover the watched folder is empty, so every file
/// looks deleted; nothing expires before `restore --all` has run, which brings every file back.
#[test]
fn after_a_recover_nothing_expires_before_restore_all() {
    if needs_root("snapshot and recover (root's commands)") {
        return;
    }
    let (_folder, root, watch) = watched("keep_deleted = \"0s\"");
    let mut c = Cluster::start_with(&["0", "30 MiB", "30 MiB"], &[&watch]);
    let files: Vec<(PathBuf, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                root.join(format!("f{i}.bin")),
                random_bytes(20_000 + i * 7_000),
            )
        })
        .collect();
    for (path, bytes) in &files {
        std::fs::write(path, bytes).unwrap();
    }
    for (path, _) in &files {
        wait_version_at_rd(&c, 0, path, 1);
    }
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("every chunk at its RD"), "{out}");

    disk_lost(&mut c, Some(&root), &[]);
    let out = c.cli_ok(0, &["recover"], 0);
    assert!(out.contains("recovered the catalog snapshot"), "{out}");
    // The recovered daemon finds every file gone (on main: each expires at once).
    let all_gone = || c.full_log(0).matches("was deleted locally").count() >= 3;
    assert!(
        wait_until(Duration::from_secs(20), all_gone),
        "{}",
        c.log(0)
    );
    std::thread::sleep(Duration::from_secs(3));

    let out = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(out.contains("3 files: 3 restored, 0 failed"), "{out}");
    for (path, bytes) in &files {
        assert!(std::fs::read(path).unwrap() == *bytes, "{}", path.display());
    }
    let log = c.full_log(0);
    assert!(
        log.contains("no deleted file's versions expire"),
        "said at start"
    );
    assert!(
        log.contains("`peerstash restore --all` has run"),
        "and when it ends"
    );
}
