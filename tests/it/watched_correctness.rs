//! Issue 9: "never delete a good backup, never skip a change". Each test does what a user did
//! to a watched folder on a 4-peer loopback cluster (peer 1 watches, replication 2, quiet
//! 300 ms unless said), then checks that every version reported complete restores byte for byte
//! and that every change made was backed up.

use crate::common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use peerstash::control::FileState;

const WAIT: Duration = Duration::from_secs(30);
const QUOTAS: [&str; 4] = ["0", "300MB", "300MB", "300MB"];

struct Watch {
    keep_versions: u32,
    keep_deleted: &'static str,
    quiet: &'static str,
    replication: u8,
    rescan: &'static str,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch {
            keep_versions: 1,
            keep_deleted: "30d",
            quiet: "300ms",
            replication: 2,
            rescan: "1h",
        }
    }
}

impl Watch {
    fn table(&self, dir: &Path) -> String {
        format!(
            "\n[[watch]]\npath = \"{}\"\nreplication = {}\nkeep_versions = {}\n\
             keep_deleted = \"{}\"\nquiet = \"{}\"\nrescan = \"{}\"\n",
            dir.display(),
            self.replication,
            self.keep_versions,
            self.keep_deleted,
            self.quiet,
            self.rescan
        )
    }
}

/// A watched folder (canonical path) in a temporary folder of its own, and a cluster whose
/// peer 1 watches it.
fn setup(watch: &Watch) -> (tempfile::TempDir, PathBuf, Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap().join("watched");
    std::fs::create_dir_all(&dir).unwrap();
    let c = Cluster::start_with(&QUOTAS, &[&watch.table(&dir)]);
    (tmp, dir, c)
}

/// The complete versions of `path` in peer 1's state, oldest first.
fn complete(c: &Cluster, path: &Path) -> Vec<FileState> {
    (c.peer(0).state().versions_of(path).into_iter())
        .filter(|f| f.complete)
        .cloned()
        .collect()
}

/// Waits until `path` has a complete version of `size` bytes with every chunk at RD `rd`;
/// returns its version number.
fn wait_complete(c: &Cluster, path: &Path, size: usize, rd: u64) -> u64 {
    wait_complete_after(c, path, size, rd, 0)
}

/// Like `wait_complete`, for a version numbered above `after`.
fn wait_complete_after(c: &Cluster, path: &Path, size: usize, rd: u64, after: u64) -> u64 {
    let mut found = None;
    let ok = wait_until(WAIT, || {
        found = complete(c, path)
            .iter()
            .rev()
            .find(|f| {
                f.size == size as u64 && u64::from(f.min_rd()) >= rd && u64::from(f.version) > after
            })
            .map(|f| u64::from(f.version));
        found.is_some()
    });
    assert!(
        ok,
        "{} backed up complete ({size} bytes, RD {rd}): {}",
        path.display(),
        c.peer(0).state()
    );
    found.unwrap()
}

/// Restores version `version` of `path` into a new file outside the watched folder.
fn restored(c: &Cluster, path: &Path, version: u64) -> Vec<u8> {
    let dest = c
        .dir
        .path()
        .join(format!("restored-{}", rand::random::<u64>()));
    c.cli_ok(
        0,
        &[
            "restore",
            path.to_str().unwrap(),
            "--version",
            &version.to_string(),
            "--to",
            dest.to_str().unwrap(),
        ],
        0,
    );
    let bytes = std::fs::read(&dest).unwrap();
    std::fs::remove_file(&dest).unwrap();
    bytes
}

/// Every complete version of `path` restores byte for byte to one of `contents` (what the
/// file held at some moment it was stable); returns the restored contents, oldest first.
fn check_complete_versions(c: &Cluster, path: &Path, contents: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for f in complete(c, path) {
        let v = u64::from(f.version);
        let bytes = restored(c, path, v);
        assert!(
            contents.contains(&bytes.as_slice()),
            "version {v} of {} ({} bytes) restores to content that the file never had when stable",
            path.display(),
            bytes.len()
        );
        all.push(bytes);
    }
    all
}

fn wait_queue_empty(c: &Cluster) {
    assert!(
        wait_until(WAIT, || c.peer(0).state().queue_length == 0),
        "queue drained: {}",
        c.peer(0).state()
    );
}

/// Case 1: `mv a.txt b.txt; rm r.txt`, then `mv b.txt a.txt` and `peerstash restore r.txt`: when
/// `keep_deleted` runs out, a.txt and r.txt are there and keep their versions (b.txt, really
/// gone, expires).
#[test]
fn a_file_that_comes_back_keeps_its_backups() {
    let (_tmp, dir, c) = setup(&Watch {
        keep_deleted: "6s",
        ..Watch::default()
    });
    let (a, b, r) = (dir.join("a.txt"), dir.join("b.txt"), dir.join("r.txt"));
    let (a_bytes, r_bytes) = (random_bytes(100_000), random_bytes(70_000));
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&r, &r_bytes).unwrap();
    let va = wait_complete(&c, &a, a_bytes.len(), 2);
    let vr = wait_complete(&c, &r, r_bytes.len(), 2);

    std::fs::rename(&a, &b).unwrap();
    std::fs::remove_file(&r).unwrap();
    wait_complete(&c, &b, a_bytes.len(), 2);
    wait_queue_empty(&c);
    // A few seconds later (within keep_deleted): the file comes back, the other is restored.
    std::fs::rename(&b, &a).unwrap();
    c.cli_ok(0, &["restore", r.to_str().unwrap()], 0);
    assert_eq!(std::fs::read(&r).unwrap(), r_bytes);

    // keep_deleted runs out: b.txt's version expires (so expiry did run) ...
    assert!(
        wait_until(WAIT, || c.peer(0).state().versions_of(&b).is_empty()),
        "b.txt, gone, expires: {}",
        c.peer(0).state()
    );
    // ... and one more expiry round passes.
    std::thread::sleep(Duration::from_secs(4));
    for (path, bytes, v) in [(&a, &a_bytes, va), (&r, &r_bytes, vr)] {
        let versions = complete(&c, path);
        assert!(
            versions.iter().any(|f| u64::from(f.version) == v),
            "{} keeps its version {v}: {}",
            path.display(),
            c.peer(0).state()
        );
        assert_eq!(std::fs::read(path).unwrap(), *bytes, "unchanged locally");
        check_complete_versions(&c, path, &[bytes]);
    }
    let listed = c.cli_ok(0, &["versions", a.to_str().unwrap()], 0);
    assert!(listed.contains(a.to_str().unwrap()), "{listed}");
}

/// Finds the descriptor by which process `pid` has `path` open, and waits until the file
/// position shows it has read part of the file but not `before` bytes yet. False on timeout.
fn wait_reading(pid: u32, path: &Path, before: u64, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    let fds = PathBuf::from(format!("/proc/{pid}/fd"));
    while Instant::now() < end {
        for entry in std::fs::read_dir(&fds).into_iter().flatten().flatten() {
            if std::fs::read_link(entry.path()).ok().as_deref() != Some(path) {
                continue;
            }
            let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            let pos = std::fs::read_to_string(info)
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("pos:").map(|p| p.trim().parse::<u64>()))
                })
                .and_then(Result::ok);
            if pos.is_some_and(|p| p > 0 && p < before) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    false
}

/// The file the daemon is caught reading: big enough that a write made once it is seen half-way
/// lands before it has read (and hashed) the rest, even with optimized hashing.
const BIG: usize = 30_000_000;

/// Overwrites the first bytes of `path` in place; returns the file's new content.
fn scribble_at_start(path: &Path, old: &[u8]) -> Vec<u8> {
    let patch = random_bytes(64_000);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&patch, 0).unwrap();
    let mut new = old.to_vec();
    new[..patch.len()].copy_from_slice(&patch);
    new
}

/// Case 2: A big file at version 1, complete; the folder's replication is raised and the daemon
/// reloaded; the file is written just after the daemon started reading it. Version 1 stays
/// complete and restores; the new content is a new version with a new number.
#[test]
fn a_change_during_a_rebackup_keeps_the_complete_version() {
    let watch = Watch {
        keep_versions: 2,
        ..Watch::default()
    };
    let (_tmp, dir, c) = setup(&watch);
    let big = dir.join("big.bin");
    let old = random_bytes(BIG);
    std::fs::write(&big, &old).unwrap();
    let v1 = wait_complete(&c, &big, old.len(), 2);
    wait_queue_empty(&c);
    let v1_id = complete(&c, &big)[0].file_id.clone();

    c.rewrite_config(
        0,
        QUOTAS[0],
        &Watch {
            replication: 3,
            ..watch
        }
        .table(&dir),
    );
    c.reload(0);
    assert!(
        wait_reading(c.pid(0).unwrap(), &big, old.len() as u64 / 2, WAIT),
        "the daemon reads {} again after the reload: {}",
        big.display(),
        c.log(0)
    );
    let new = scribble_at_start(&big, &old);

    let v2 = wait_complete_after(&c, &big, new.len(), 3, v1);
    let kept = complete(&c, &big);
    assert!(
        kept.iter()
            .any(|f| u64::from(f.version) == v1 && f.file_id == v1_id),
        "version 1 survives, complete: {}",
        c.peer(0).state()
    );
    assert_eq!(restored(&c, &big, v1), old, "version 1 restores");
    assert_eq!(restored(&c, &big, v2), new, "the change was backed up");
    check_complete_versions(&c, &big, &[&old, &new]);
}

/// Case 2, by hand: `peerstash backup` of a file at version 1, complete, at a higher RD, and the
/// file is written while the daemon reads it. The backup fails ("changed"), version 1 is
/// intact, and the next backup is version 2.
#[test]
fn a_change_during_a_manual_backup_keeps_the_complete_version() {
    let c = Cluster::start(&QUOTAS);
    let f = c.dir.path().canonicalize().unwrap().join("manual.bin");
    let old = random_bytes(BIG);
    std::fs::write(&f, &old).unwrap();
    let path = f.to_str().unwrap();
    c.cli_ok(0, &["backup", path, "-r", "2"], 0);
    let again = Command::new(PEERSTASH)
        .arg("--config")
        .arg(&c.peer(0).config)
        .args(["backup", path, "-r", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let caught = wait_reading(c.pid(0).unwrap(), &f, old.len() as u64 / 2, WAIT);
    let new = scribble_at_start(&f, &old);
    let out = again.wait_with_output().unwrap();
    assert!(caught, "the daemon was caught reading the file");
    assert_eq!(out.status.code(), Some(1), "the backup reports the change");

    let kept = complete(&c, &f);
    assert_eq!(kept.len(), 1, "version 1 is intact: {}", c.peer(0).state());
    assert_eq!(kept[0].version, 1);
    assert_eq!(restored(&c, &f, 1), old);
    c.cli_ok(0, &["backup", path, "-r", "3"], 0);
    assert_eq!(
        restored(&c, &f, 2),
        new,
        "the new content is version 2: {}",
        c.peer(0).state()
    );
    check_complete_versions(&c, &f, &[&old, &new]);
}

/// Bytes process `pid` has read so far (`rchar` of /proc/PID/io).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// `peerstash backup` of a file already backed up at that RD and unchanged since is decided by
/// the queue's rule (same size, mtime, ctime and inode, complete, at RD): it reports the version
/// and exits 0 without reading the file. Once its ctime moved (a chmod), it is read again, and
/// the same content is still the same version.
#[test]
fn a_manual_backup_of_a_file_already_at_its_rd_reads_nothing() {
    let c = Cluster::start(&QUOTAS);
    let f = c.dir.path().canonicalize().unwrap().join("same.bin");
    let size = 10_000_000;
    std::fs::write(&f, random_bytes(size)).unwrap();
    let path = f.to_str().unwrap();
    c.cli_ok(0, &["backup", path, "-r", "2"], 0);
    let pid = c.pid(0).unwrap();

    let before = bytes_read(pid);
    let out = c.cli_ok(0, &["backup", path, "-r", "2"], 0);
    let read = bytes_read(pid) - before;
    assert!(out.contains("(version 1,"), "{out}");
    assert!(read < size as u64 / 2, "{read} bytes read: {}", c.log(0));

    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let before = bytes_read(pid);
    let out = c.cli_ok(0, &["backup", path, "-r", "2"], 0);
    let read = bytes_read(pid) - before;
    assert!(out.contains("(version 1,"), "{out}");
    assert!(
        read >= size as u64,
        "the touched file is read: {read} bytes"
    );
    // Now recorded with its new ctime: at its RD again.
    let before = bytes_read(pid);
    c.cli_ok(0, &["backup", path, "-r", "2"], 0);
    assert!(bytes_read(pid) - before < size as u64 / 2);
    assert_eq!(complete(&c, &f).len(), 1, "{}", c.peer(0).state());
}

/// Case 3: `rm x; mkdir x; echo > x/y`: when x's `keep_deleted` runs out, only x's versions go;
/// x/y keeps its own.
#[test]
fn a_file_replaced_by_a_folder_keeps_the_files_below_it() {
    let (_tmp, dir, c) = setup(&Watch {
        keep_deleted: "3s",
        ..Watch::default()
    });
    let (x, y) = (dir.join("x"), dir.join("x/y"));
    let x_bytes = random_bytes(90_000);
    std::fs::write(&x, &x_bytes).unwrap();
    wait_complete(&c, &x, x_bytes.len(), 2);

    std::fs::remove_file(&x).unwrap();
    std::fs::create_dir(&x).unwrap();
    std::fs::write(&y, b"\n").unwrap();
    let vy = wait_complete(&c, &y, 1, 2);
    assert!(
        wait_until(WAIT, || c.peer(0).state().versions_of(&x).is_empty()),
        "the file x, gone, expires: {}",
        c.peer(0).state()
    );
    assert!(
        complete(&c, &y).iter().any(|f| u64::from(f.version) == vy),
        "x/y keeps its version: {}",
        c.peer(0).state()
    );
    assert_eq!(restored(&c, &y, vy), b"\n");
    check_complete_versions(&c, &y, &[b"\n"]);
}

fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Changes 1000 bytes in the middle of `path` as `dd conv=notrunc` does, then gives it back its
/// mtime with `touch -r`; returns the new content.
fn dd_and_touch_back(path: &Path, old: &[u8], scratch: &Path) -> Vec<u8> {
    let reference = scratch.join("reference");
    let patch_file = scratch.join("patch");
    let patch = random_bytes(1000);
    std::fs::write(&patch_file, &patch).unwrap();
    let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    let before = mtime(path);
    run(Command::new("touch").arg("-r").arg(path).arg(&reference));
    run(Command::new("dd")
        .arg(format!("if={}", patch_file.display()))
        .arg(format!("of={}", path.display()))
        .args(["bs=1000", "seek=50", "conv=notrunc", "status=none"]));
    run(Command::new("touch").arg("-r").arg(&reference).arg(path));
    assert_eq!(mtime(path), before, "same mtime");
    let mut new = old.to_vec();
    new[50_000..51_000].copy_from_slice(&patch);
    assert_eq!(std::fs::read(path).unwrap(), new, "same size, other bytes");
    new
}

/// Case 5: Content changed with the same size and mtime: backed up, live and after a restart.
#[test]
fn a_change_keeping_size_and_mtime_is_backed_up() {
    let (tmp, dir, mut c) = setup(&Watch {
        keep_versions: 3,
        ..Watch::default()
    });
    let f = dir.join("same-size.bin");
    let v1_bytes = random_bytes(200_000);
    std::fs::write(&f, &v1_bytes).unwrap();
    let v1 = wait_complete(&c, &f, v1_bytes.len(), 2);
    wait_queue_empty(&c);

    let v2_bytes = dd_and_touch_back(&f, &v1_bytes, tmp.path());
    assert!(
        wait_until(WAIT, || complete(&c, &f).len() == 2),
        "the change is backed up: {}",
        c.peer(0).state()
    );
    let v2 = wait_complete_after(&c, &f, v2_bytes.len(), 2, v1);
    assert_eq!(restored(&c, &f, v2), v2_bytes);

    // The same while the daemon is down: found at start.
    wait_queue_empty(&c);
    c.stop(0);
    let v3_bytes = dd_and_touch_back(&f, &v2_bytes, tmp.path());
    c.spawn(0);
    c.wait_ready(0);
    assert!(
        wait_until(WAIT, || complete(&c, &f).len() == 3),
        "the change made while stopped is backed up: {}",
        c.peer(0).state()
    );
    let v3 = wait_complete_after(&c, &f, v3_bytes.len(), 2, v2);
    assert_eq!(restored(&c, &f, v3), v3_bytes);
    assert_eq!(restored(&c, &f, v1), v1_bytes);
    check_complete_versions(&c, &f, &[&v1_bytes, &v2_bytes, &v3_bytes]);
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// Case 6: Two names of one file in the folder: appending through one backs up both.
#[test]
fn a_change_through_one_hard_link_backs_up_the_other_names() {
    let (_tmp, dir, c) = setup(&Watch::default());
    let (a, b) = (dir.join("a.log"), dir.join("b.log"));
    let mut bytes = random_bytes(100_000);
    std::fs::write(&a, &bytes).unwrap();
    std::fs::hard_link(&a, &b).unwrap();
    wait_complete(&c, &a, bytes.len(), 2);
    wait_complete(&c, &b, bytes.len(), 2);
    wait_queue_empty(&c);

    let more = random_bytes(30_000);
    let old = bytes.clone();
    append(&a, &more);
    bytes.extend_from_slice(&more);
    for p in [&a, &b] {
        let v = wait_complete(&c, p, bytes.len(), 2);
        assert_eq!(restored(&c, p, v), bytes, "{} backed up", p.display());
        // The old version goes once a catalog snapshot names the new one (issue 24, case 2).
        check_complete_versions(&c, p, &[&old, &bytes]);
    }
}

/// The periodic rescan finds what inotify cannot report: a write through a hard link outside
/// the watched folder.
#[test]
fn the_periodic_rescan_finds_changes_no_event_reported() {
    let (tmp, dir, c) = setup(&Watch {
        rescan: "2s",
        ..Watch::default()
    });
    let f = dir.join("linked.dat");
    let outside = tmp.path().join("outside.dat");
    let mut bytes = random_bytes(80_000);
    std::fs::write(&f, &bytes).unwrap();
    std::fs::hard_link(&f, &outside).unwrap();
    wait_complete(&c, &f, bytes.len(), 2);
    wait_queue_empty(&c);

    let more = random_bytes(50_000);
    append(&outside, &more);
    bytes.extend_from_slice(&more);
    let v = wait_complete(&c, &f, bytes.len(), 2);
    assert_eq!(restored(&c, &f, v), bytes);
}

/// Case 7: A file written for longer than `quiet` with no event telling of it (as a long
/// `copy_file_range` does; here the writes go through a hard link outside the folder): no
/// complete version of a partial size is ever recorded, and the whole file is backed up.
#[test]
fn a_file_written_without_events_is_never_recorded_half_written() {
    let (tmp, dir, c) = setup(&Watch {
        keep_versions: 100,
        quiet: "1s",
        ..Watch::default()
    });
    let f = dir.join("copy.bin");
    let outside = tmp.path().join("copy-outside.bin");
    let mut bytes = random_bytes(100_000);
    std::fs::write(&f, &bytes).unwrap();
    std::fs::hard_link(&f, &outside).unwrap();
    // 3 s of writing, a piece every 50 ms (far shorter than quiet).
    let writer = {
        let outside = outside.clone();
        std::thread::spawn(move || {
            let mut written = Vec::new();
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                let piece = random_bytes(100_000);
                append(&outside, &piece);
                written.extend_from_slice(&piece);
                std::thread::sleep(Duration::from_millis(50));
            }
            written
        })
    };
    let mut seen_complete = Vec::new();
    while !writer.is_finished() {
        for e in complete(&c, &f) {
            seen_complete.push(e.size);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bytes.extend_from_slice(&writer.join().unwrap());
    let v = wait_complete(&c, &f, bytes.len(), 2);
    wait_queue_empty(&c);
    for e in complete(&c, &f) {
        seen_complete.push(e.size);
    }
    assert!(
        seen_complete.iter().all(|s| *s == bytes.len() as u64),
        "complete versions of partial sizes were recorded: {seen_complete:?} (final {})",
        bytes.len()
    );
    assert_eq!(restored(&c, &f, v), bytes);
    check_complete_versions(&c, &f, &[&bytes]);
}
