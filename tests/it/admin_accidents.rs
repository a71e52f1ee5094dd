//! Issue 10, the machine's accidents and the admin's slips around watched folders: a disk not
//! mounted (at start, or unmounted while running), a folder missing, overlapping watches
//! removed on reload, the state folder inside a watched folder, a wall clock set ahead. Each
//! test does what the admin did on a 3-peer loopback cluster (peer 1 watches, quota 0).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(30);
const QUOTAS: [&str; 3] = ["0", "50MB", "50MB"];

fn table(dir: &Path, replication: u8, keep_deleted: &str, extra: &str) -> String {
    format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = {replication}\nkeep_deleted = \"{keep_deleted}\"\n\
         quiet = \"300ms\"\nrescan = \"1h\"\n{extra}",
        dir.display()
    )
}

/// The complete versions of `path` in peer 1's state.
fn complete(c: &Cluster, path: &Path) -> usize {
    c.peer(0)
        .state()
        .versions_of(path)
        .into_iter()
        .filter(|f| f.complete)
        .count()
}

/// Waits until `path` has a complete version of `size` bytes at RD `rd` or more.
fn wait_complete(c: &Cluster, path: &Path, size: usize, rd: u32) {
    let ok = wait_until(WAIT, || {
        c.peer(0)
            .state()
            .versions_of(path)
            .iter()
            .any(|f| f.complete && f.size == size as u64 && f.min_rd() >= rd)
    });
    assert!(
        ok,
        "{} backed up ({size} bytes, RD {rd}): {}\nlog:\n{}",
        path.display(),
        c.peer(0).state(),
        c.log(0)
    );
}

fn write(path: &Path, size: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, random_bytes(size)).unwrap();
}

/// The watched folders peer 1 reports unavailable.
fn unavailable(c: &Cluster) -> Vec<PathBuf> {
    (c.peer(0).state().unavailable.iter())
        .filter_map(|u| u.path.to_str().map(PathBuf::from))
        .collect()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .status()
        .is_ok_and(|s| s.success())
}

fn unmount(dir: &Path) {
    let d = dir.to_str().unwrap();
    // The daemon may be reading a file there: try again, then detach lazily.
    let ok = wait_until(Duration::from_secs(5), || run(&["umount", d]));
    assert!(ok || run(&["umount", "-l", d]), "cannot unmount {d}");
}

/// Unmounts what a test mounted, whatever happens to the test.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// Case 1: a watched folder on a disk. The disk is a 4 MB tmpfs that keeps its files between
/// "plugs"; plugging it is a bind mount of it onto the watched folder (a new tmpfs mount would
/// be a new, empty file system: not the same disk). Backed up, then the daemon is stopped, the
/// disk unplugged, the daemon started with keep_deleted = 2s: nothing is deleted after 3x that,
/// `state` shows the folder unavailable; plugged again: rescanned, new files backed up. Then
/// unplugged and plugged again while the daemon runs (slowly, then at once): files written after
/// are backed up.
#[test]
fn an_unmounted_disk_is_unavailable_not_deleted_and_watched_again_once_mounted() {
    if !is_root() {
        skip("mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let (disk, w) = (base.join("disk"), base.join("watched"));
    std::fs::create_dir_all(&disk).unwrap();
    std::fs::create_dir_all(&w).unwrap();
    let mut mounts = Mounts(Vec::new());
    if !run(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=4m",
        "tmpfs",
        disk.to_str().unwrap(),
    ]) {
        skip("cannot mount a tmpfs here");
        return;
    }
    mounts.0.push(disk.clone());
    let plug = || {
        assert!(run(&[
            "mount",
            "--bind",
            disk.to_str().unwrap(),
            w.to_str().unwrap()
        ]));
    };
    plug();
    mounts.0.push(w.clone());
    let (a, b) = (w.join("a"), w.join("sub/b"));
    write(&a, 100_000);
    write(&b, 70_000);
    let mut c = Cluster::start_with(&QUOTAS, &[&table(&w, 1, "2s", "")]);
    wait_complete(&c, &a, 100_000, 1);
    wait_complete(&c, &b, 70_000, 1);

    // Stopped, unplugged, started: the empty mount point is not the folder.
    c.stop(0);
    unmount(&w);
    c.spawn(0);
    c.wait_ready(0);
    assert!(
        wait_until(Duration::from_secs(15), || unavailable(&c)
            == vec![w.clone()]),
        "the folder is shown unavailable: {}",
        c.peer(0).state()
    );
    std::thread::sleep(Duration::from_millis(6500));
    assert_eq!(complete(&c, &a), 1, "a kept; log:\n{}", c.log(0));
    assert_eq!(complete(&c, &b), 1, "b kept");
    assert!(!c.full_log(0).contains("was deleted locally"));
    let text = c.cli_ok(0, &["state"], 0);
    assert!(text.contains("UNAVAILABLE: "), "{text}");

    // Plugged again: watched and rescanned.
    plug();
    assert!(
        wait_until(Duration::from_secs(20), || unavailable(&c).is_empty()),
        "available again: {}",
        c.peer(0).state()
    );
    let d = w.join("d");
    write(&d, 50_000);
    wait_complete(&c, &d, 50_000, 1);

    // Unplugged and plugged while running: the kernel dropped the watch; it is made again.
    unmount(&w);
    assert!(
        wait_until(Duration::from_secs(20), || unavailable(&c)
            == vec![w.clone()]),
        "unavailable while unplugged: {}",
        c.peer(0).state()
    );
    std::thread::sleep(Duration::from_secs(5));
    for p in [&a, &b, &d] {
        assert_eq!(
            complete(&c, p),
            1,
            "{} kept; log:\n{}",
            p.display(),
            c.log(0)
        );
    }
    plug();
    assert!(wait_until(Duration::from_secs(20), || unavailable(&c).is_empty()));
    let e = w.join("sub/e");
    write(&e, 30_000);
    wait_complete(&c, &e, 30_000, 1);

    // Unplugged and plugged at once, between two of the daemon's looks at the folder: the
    // kernel's word that it dropped the watch is enough to watch it again.
    std::thread::sleep(Duration::from_secs(1));
    unmount(&w);
    plug();
    std::thread::sleep(Duration::from_secs(1));
    let g = w.join("g");
    write(&g, 30_000);
    wait_complete(&c, &g, 30_000, 1);
    assert!(!c.full_log(0).contains("was deleted locally"));
    drop(c);
}

/// Case 1, a folder missing: at start it is shown unavailable, and watched (within seconds, not
/// a minute) once created; a folder with backups moved away while the daemon was down keeps
/// them (keep_deleted = 2s) until it is back.
#[test]
fn a_missing_folder_is_unavailable_then_watched_once_there() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().canonicalize().unwrap().join("later");
    let mut c = Cluster::start_with(&QUOTAS, &[&table(&w, 1, "2s", "")]);
    assert!(
        wait_until(Duration::from_secs(10), || unavailable(&c)
            == vec![w.clone()]),
        "a missing folder is shown unavailable: {}",
        c.peer(0).state()
    );
    assert_eq!(
        (c.peer(0).state().unavailable.first()).map(|u| u.reason.clone()),
        Some("missing".to_owned())
    );
    let f = w.join("f");
    write(&f, 80_000);
    let started = Instant::now();
    wait_complete(&c, &f, 80_000, 1);
    assert!(started.elapsed() < Duration::from_secs(25));
    assert!(unavailable(&c).is_empty());

    // Moved away while the daemon was down.
    c.stop(0);
    let away = tmp.path().join("away");
    std::fs::rename(&w, &away).unwrap();
    c.spawn(0);
    c.wait_ready(0);
    assert!(wait_until(Duration::from_secs(10), || unavailable(&c)
        == vec![w.clone()]));
    std::thread::sleep(Duration::from_millis(6500));
    assert_eq!(complete(&c, &f), 1, "kept; log:\n{}", c.log(0));
    std::fs::rename(&away, &w).unwrap();
    assert!(wait_until(Duration::from_secs(20), || unavailable(&c).is_empty()));
    let g = w.join("g");
    write(&g, 10_000);
    wait_complete(&c, &g, 10_000, 1);
    assert_eq!(complete(&c, &f), 1);
    assert!(!c.full_log(0).contains("was deleted locally"));
}

fn reloads(c: &Cluster) -> usize {
    c.full_log(0).matches("config reloaded").count()
}

fn reload_with(c: &Cluster, tables: &str) {
    let before = reloads(c);
    c.rewrite_config(0, "0", tables);
    c.reload(0);
    assert!(wait_until(Duration::from_secs(10), || reloads(c) > before));
    // The keeper applies the new watches right after.
    std::thread::sleep(Duration::from_millis(500));
}

/// Case 6: a folder and a subfolder watched with other RDs. A reload that removes the outer
/// watch leaves the inner one watched, and the reverse.
#[test]
fn removing_one_of_two_overlapping_watches_keeps_the_other_watched() {
    let tmp = tempfile::tempdir().unwrap();
    let outer = tmp.path().canonicalize().unwrap().join("outer");
    let inner = outer.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    let (o, i) = (table(&outer, 1, "30d", ""), table(&inner, 2, "30d", ""));
    let c = Cluster::start_with(&QUOTAS, &[&format!("{o}{i}")]);
    let x1 = inner.join("x1");
    write(&x1, 20_000);
    wait_complete(&c, &x1, 20_000, 2);

    reload_with(&c, &i);
    let x2 = inner.join("x2");
    write(&x2, 20_000);
    wait_complete(&c, &x2, 20_000, 2);

    reload_with(&c, &format!("{o}{i}"));
    reload_with(&c, &o);
    let x3 = inner.join("deeper/x3");
    write(&x3, 20_000);
    wait_complete(&c, &x3, 20_000, 1);
    let y = outer.join("y");
    write(&y, 20_000);
    wait_complete(&c, &y, 20_000, 1);
}

/// Case 7: the state folder (catalog, hosted chunks, lock) and the control socket inside a
/// watched folder: excluded, said in the log, never backed up; the queue empties.
#[test]
fn the_state_folder_inside_a_watched_folder_is_never_backed_up() {
    let mut c = Cluster::start(&QUOTAS);
    let dir = c.peer(0).dir.clone();
    let (state_dir, socket) = (dir.join("state"), c.peer(0).socket.clone());
    c.stop(0);
    // The log is in that folder too, and changes all the time: the admin excludes it.
    c.rewrite_config(
        0,
        "0",
        &table(&dir, 1, "30d", "exclude = [\"daemon.log\"]\n"),
    );
    c.spawn(0);
    c.wait_ready(0);
    let f = dir.join("mine.txt");
    write(&f, 30_000);
    wait_complete(&c, &f, 30_000, 1);
    // The queue empties and stays empty, although the catalog changes (STOREDs, the queue).
    let quiet = wait_until(WAIT, || {
        let s = c.peer(0).state();
        s.queue_length == 0 && s.in_progress.is_empty()
    });
    assert!(quiet, "the queue empties: {}", c.peer(0).state());
    std::thread::sleep(Duration::from_secs(3));
    let s = c.peer(0).state();
    assert_eq!(s.queue_length, 0, "{s}");
    let ours: Vec<&str> = (s.files.iter())
        .filter_map(|f| f.path.to_str())
        .filter(|p| Path::new(p).starts_with(&state_dir) || Path::new(p) == socket)
        .collect();
    assert!(
        ours.is_empty(),
        "the daemon's own files backed up: {ours:?}"
    );
    assert!(
        c.full_log(0).contains("excluded from it"),
        "said in the log:\n{}",
        c.log(0)
    );
}

/// Case 9: keep_deleted goes by the time the daemon measured (monotonic), not by the wall
/// clock. A wall clock set ahead while the daemon was down looks, to the old rule
/// (`now - deleted_at`), exactly like the daemon having been down that long; so the process
/// check is that the time the daemon was stopped is not counted as absent time (the clock jump
/// itself is checked in `presence::tests`, without `faketime`): a file deleted, the daemon
/// stopped longer than keep_deleted (10s) and started again keeps its version past the first
/// expiry check, and it expires only after keep_deleted of running.
#[test]
fn time_the_daemon_was_down_does_not_expire_a_deleted_file() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().canonicalize().unwrap().join("watched");
    std::fs::create_dir_all(&w).unwrap();
    let mut c = Cluster::start_with(&QUOTAS, &[&table(&w, 1, "10s", "")]);
    let f = w.join("f");
    write(&f, 40_000);
    wait_complete(&c, &f, 40_000, 1);
    std::fs::remove_file(&f).unwrap();
    assert!(wait_until(Duration::from_secs(15), || c
        .full_log(0)
        .contains("was deleted locally")));
    c.stop(0);
    std::thread::sleep(Duration::from_secs(12));
    c.spawn(0);
    c.wait_ready(0);
    let started = Instant::now();
    // Expiry is checked every 5 s (half of keep_deleted): look after the first check.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()));
    assert_eq!(
        complete(&c, &f),
        1,
        "the version is kept 8 s after the start; log:\n{}",
        c.log(0)
    );
    assert!(
        wait_until(Duration::from_secs(40), || complete(&c, &f) == 0),
        "expires after keep_deleted of running: {}",
        c.log(0)
    );
    assert!(started.elapsed() >= Duration::from_secs(10));
}
