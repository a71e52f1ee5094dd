//! Issue 3's scenarios: watched folders backed up on their own, versions and expiry, changes
//! made while the daemon was down, reload on SIGHUP, systemd notifications.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use peerstash::control::PeerState;

fn watch_table(dir: &Path, extra: &str) -> String {
    format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 2\nkeep_versions = 1\nkeep_deleted = \"0s\"\n\
         exclude = [\"*.tmp\"]\nquiet = \"300ms\"\n{extra}",
        dir.display()
    )
}

/// Versions of `path` in the home peer's state, newest last.
fn versions_of(state: &State, path: &Path) -> Vec<u32> {
    state.versions_of(path).iter().map(|f| f.version).collect()
}

fn backed_up_at_rd(c: &Cluster, path: &Path, rd: u32) -> bool {
    let s = c.peer(0).state();
    let e = s.versions_of(path);
    e.last().is_some_and(|f| f.min_rd() >= rd) && s.queue_length == 0
}

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn watched_folder_is_backed_up_versioned_and_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap().join("watched");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let c = Cluster::start_with(&["100MB", "100MB", "100MB"], &[&watch_table(&dir, "")]);

    let a = dir.join("a.txt");
    let b = dir.join("sub/b.bin");
    let t = dir.join("scratch.tmp");
    std::fs::write(&a, b"first version").unwrap();
    std::fs::write(&b, random_bytes(200_000)).unwrap();
    std::fs::write(&t, b"never backed up").unwrap();
    // A folder created after the watch started, with a file in it.
    std::fs::create_dir_all(dir.join("new/deeper")).unwrap();
    let n = dir.join("new/deeper/n.dat");
    std::fs::write(&n, random_bytes(70_000)).unwrap();
    for p in [&a, &b, &n] {
        assert!(
            wait_until(WAIT, || backed_up_at_rd(&c, p, 2)),
            "{p:?} backed up at RD 2: {}",
            c.peer(0).state()
        );
    }
    assert!(
        c.peer(0).state().versions_of(&t).is_empty(),
        "excluded file backed up"
    );

    // Modified: a new version; once it is replicated the old one is deleted (keep_versions 1).
    let old_id = c.peer(0).state().versions_of(&a)[0].file_id.clone();
    std::fs::write(&a, b"second version, longer").unwrap();
    assert!(
        wait_until(WAIT, || versions_of(&c.peer(0).state(), &a) == vec![2]),
        "only version 2 kept: {:?}",
        versions_of(&c.peer(0).state(), &a)
    );
    let old_gone = wait_until(Duration::from_secs(5), || {
        (1..3).all(|i| c.peer(i).state().stored.iter().all(|h| h.file_id != old_id))
    });
    assert!(
        old_gone,
        "the old version's chunks are deleted from the peers"
    );
    let out = c.cli_ok(0, &["versions", a.to_str().unwrap()], 0);
    assert!(out.contains(a.to_str().unwrap()), "{out}");
    // restore --version 2 works; version 1 is gone. (Restored beside it: with keep_deleted
    // 0s, removing a.txt would expire its versions as soon as the daemon saw it gone.)
    let out = tmp.path().join("a.restored");
    let to = out.to_str().unwrap();
    c.cli_ok(
        0,
        &["restore", a.to_str().unwrap(), "--version", "1", "--to", to],
        1,
    );
    c.cli_ok(
        0,
        &["restore", a.to_str().unwrap(), "--version", "2", "--to", to],
        0,
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"second version, longer");

    // Renamed: the new name is backed up, the old one expires (keep_deleted 0s).
    let b2 = dir.join("sub/b2.bin");
    std::fs::rename(&b, &b2).unwrap();
    assert!(
        wait_until(WAIT, || backed_up_at_rd(&c, &b2, 2)),
        "{}",
        c.peer(0).state()
    );
    assert!(wait_until(WAIT, || c
        .peer(0)
        .state()
        .versions_of(&b)
        .is_empty()));

    // Deleted: its versions are deleted at once (keep_deleted 0s).
    std::fs::remove_file(&n).unwrap();
    assert!(wait_until(WAIT, || c
        .peer(0)
        .state()
        .versions_of(&n)
        .is_empty()));
    drop(tmp);
}

#[test]
fn changes_made_while_stopped_are_found_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap().join("watched");
    std::fs::create_dir_all(&dir).unwrap();
    let (kept, changed, removed) = (dir.join("kept"), dir.join("changed"), dir.join("removed"));
    for p in [&kept, &changed, &removed] {
        std::fs::write(p, random_bytes(1000)).unwrap();
    }
    let mut c = Cluster::start_with(&["100MB", "100MB", "100MB"], &[&watch_table(&dir, "")]);
    for p in [&kept, &changed, &removed] {
        assert!(wait_until(WAIT, || backed_up_at_rd(&c, p, 2)), "{p:?}");
    }
    c.stop(0);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&changed, random_bytes(2000)).unwrap();
    std::fs::remove_file(&removed).unwrap();
    let added = dir.join("added");
    std::fs::write(&added, random_bytes(3000)).unwrap();
    c.spawn(0);
    c.wait_ready(0);
    assert!(
        wait_until(WAIT, || backed_up_at_rd(&c, &added, 2)),
        "{}",
        c.peer(0).state()
    );
    assert!(wait_until(WAIT, || {
        let s = c.peer(0).state();
        versions_of(&s, &changed) == vec![2] && s.versions_of(&removed).is_empty()
    }));
    assert_eq!(
        versions_of(&c.peer(0).state(), &kept),
        vec![1],
        "unchanged file not backed up again"
    );
    drop(tmp);
}

#[test]
fn sighup_with_a_lower_quota_frees_space_and_peers_restore_rd() {
    let mut c = Cluster::start(&["100MB", "100MB", "100MB", "0"]);
    let data = c.dir.path().canonicalize().unwrap().join("f.bin");
    std::fs::write(&data, random_bytes(500_000)).unwrap();
    c.cli_ok(0, &["backup", data.to_str().unwrap(), "-r", "2"], 0);
    assert_eq!(c.peer(3).state().used_bytes, 0);

    // A bad config on reload is refused; the running one stays.
    std::fs::write(&c.peer(1).config, "[peer]\nid = \"two\"\n").unwrap();
    c.reload(1);
    assert!(wait_until(Duration::from_secs(5), || c
        .full_log(1)
        .contains("reload refused")));
    // (The CLI cannot read that config either: reach the daemon by its socket.)
    let out = std::process::Command::new(PEERSTASH)
        .arg("--socket")
        .arg(&c.peer(1).socket)
        .args(["state", "--json"])
        .output()
        .unwrap();
    let state: PeerState = parse_json(&out.stdout);
    assert_eq!(state.quota_bytes, 100_000_000);

    c.rewrite_config(3, "100MB", "");
    c.reload(3);
    assert!(wait_until(Duration::from_secs(5), || c
        .peer(3)
        .state()
        .quota_bytes
        == 100_000_000));
    c.rewrite_config(1, "0", "");
    c.reload(1);
    assert!(wait_until(Duration::from_secs(5), || c
        .peer(1)
        .state()
        .used_bytes
        == 0));
    assert_eq!(c.peer(1).state().quota_bytes, 0);
    assert!(
        wait_until(Duration::from_secs(20), || c
            .peer(0)
            .state()
            .versions_of(&data)[0]
            .min_rd()
            >= 2),
        "RD restored: {}",
        c.peer(0).state()
    );
    assert!(c.peer(3).state().used_bytes >= 500_000);
    assert_eq!(c.stop_status(1), Some(0), "SIGTERM ends cleanly");
}

#[test]
fn systemd_notifications_around_start_reload_and_stop() {
    use std::os::unix::net::UnixDatagram;
    let mut c = Cluster::start(&["1MB"]);
    c.stop(0);
    let sock_path = c.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    c.spawn_env(0, &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let next = || {
        let mut buf = vec![0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let wait_for = |what: &str| -> String {
        for _ in 0..20 {
            let m = next();
            if m.lines().any(|l| l == what) {
                return m;
            }
        }
        panic!("no {what}");
    };
    let ready = wait_for("READY=1");
    assert!(ready.contains("STATUS="), "{ready}");
    c.wait_ready(0);
    c.reload(0);
    let reloading = wait_for("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    wait_for("READY=1");
    assert_eq!(c.stop_status(0), Some(0));
    wait_for("STOPPING=1");
}

#[test]
fn reload_starts_new_watches_and_applies_a_new_rd() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap().join("later");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("report.txt");
    std::fs::write(&f, random_bytes(100_000)).unwrap();
    let c = Cluster::start(&["0", "100MB", "100MB", "100MB"]);
    let table = |rd: u8| {
        format!(
            "\n[[watch]]\npath = \"{}\"\nreplication = {rd}\nquiet = \"200ms\"\n",
            dir.display()
        )
    };
    c.rewrite_config(0, "0", &table(1));
    c.reload(0);
    assert!(
        wait_until(WAIT, || backed_up_at_rd(&c, &f, 1)),
        "{}",
        c.peer(0).state()
    );
    assert_eq!(c.peer(0).state().versions_of(&f)[0].desired_rd, 1);
    c.rewrite_config(0, "0", &table(3));
    c.reload(0);
    assert!(
        wait_until(WAIT, || {
            let s = c.peer(0).state();
            let e = s.versions_of(&f);
            e.len() == 1 && e[0].desired_rd == 3 && e[0].min_rd() >= 3
        }),
        "RD raised to 3 on the same version: {}",
        c.peer(0).state()
    );
    // A removed watch stops: new files there are not backed up (existing backups stay).
    c.rewrite_config(0, "0", "");
    c.reload(0);
    assert!(wait_until(Duration::from_secs(5), || c
        .full_log(0)
        .contains("stopped watching")));
    let g = dir.join("ignored.txt");
    std::fs::write(&g, b"not watched any more").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let s = c.peer(0).state();
    assert!(s.versions_of(&g).is_empty());
    assert_eq!(s.versions_of(&f).len(), 1);
    drop(tmp);
}
