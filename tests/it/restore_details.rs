//! Issue 9, cases 9 and 10: a restore takes the newest *complete* version by default, creates
//! missing parent folders, gives back an mtime from before 1970, and keeps a sparse file sparse.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, UNIX_EPOCH};

use common::*;

#[test]
fn a_restore_takes_the_newest_complete_version() {
    let mut c = Cluster::start(&["0", "500MB", "500MB"]);
    let base = c.dir.path().canonicalize().unwrap();
    let f = base.join("report.bin");
    let v1 = random_bytes(100_000);
    std::fs::write(&f, &v1).unwrap();
    c.cli_ok(0, &["backup", f.to_str().unwrap(), "-r", "2"], 0);
    // Version 2 is cut short: its home peer is killed during the backup (60 MB: long enough
    // to be caught in the middle).
    std::fs::write(&f, random_bytes(1_000_000).repeat(60)).unwrap();
    let mut backup = std::process::Command::new(PEERSTASH)
        .arg("--config")
        .arg(&c.peer(0).config)
        .args(["backup", f.to_str().unwrap(), "-r", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = wait_until(Duration::from_secs(30), || {
        c.peer(0).state().versions_of(&f).len() == 2
    });
    assert!(started, "version 2 was never recorded");
    c.kill(0);
    let _ = backup.wait();
    c.spawn(0);
    c.wait_ready(0);
    let versions = c
        .peer(0)
        .state()
        .versions_of(&f)
        .iter()
        .map(|e| (e.version, e.complete))
        .collect::<Vec<_>>();
    assert_eq!(
        versions,
        vec![(1, true), (2, false)],
        "the kill came too late"
    );
    let out = base.join("out.bin");
    c.cli_ok(
        0,
        &[
            "restore",
            f.to_str().unwrap(),
            "--to",
            out.to_str().unwrap(),
        ],
        0,
    );
    assert_eq!(std::fs::read(&out).unwrap(), v1);
}

#[test]
fn missing_folders_old_mtimes_and_holes_come_back() {
    let c = Cluster::start(&["0", "100MB", "100MB"]);
    let base = c.dir.path().canonicalize().unwrap();
    // 20 chunks of which only the first and the last hold data.
    let f = base.join("sparse.img");
    let size = 20 * 64_000 + 123;
    {
        let file = std::fs::File::create(&f).unwrap();
        file.set_len(size).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"head", 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"tail", size - 4).unwrap();
        let mtime = UNIX_EPOCH - Duration::from_nanos(86_400_000_000_123);
        file.set_times(std::fs::FileTimes::new().set_modified(mtime))
            .unwrap();
    }
    c.cli_ok(0, &["backup", f.to_str().unwrap(), "-r", "2"], 0);
    let before = std::fs::metadata(&f).unwrap();
    assert!(before.mtime() < 0);
    let to = base.join("a/b/c/sparse.img");
    c.cli_ok(
        0,
        &["restore", f.to_str().unwrap(), "--to", to.to_str().unwrap()],
        0,
    );
    assert_eq!(std::fs::read(&to).unwrap(), std::fs::read(&f).unwrap());
    let after = std::fs::metadata(&to).unwrap();
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec()),
        "an mtime of 1969 comes back as it was"
    );
    // Two chunks' worth of blocks at most, not twenty.
    assert!(
        after.blocks() * 512 <= 3 * 64_000,
        "{} bytes allocated for a sparse file of {size}",
        after.blocks() * 512
    );
}
