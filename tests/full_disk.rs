//! Issue 5: a peer whose disk fills up (its chunk store and its catalog on a 3 MB tmpfs made by
//! the test) refuses what does not fit without STORED, leaves no partial file, and goes on
//! serving what it has. Needs root (to mount); skipped with a message otherwise.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_chunks_cleanly_and_keeps_serving() {
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let c0 = tempfile::tempdir().unwrap();
    let small = c0.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success();
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let _mount = Mount(small.clone());

    // Peer 2 keeps its state (chunks and catalog) on the small disk, with a quota far above it.
    let mut c = Cluster::start(&["0", "100MB", "0"]);
    c.stop(1);
    let p = &c.peers[1];
    let text = std::fs::read_to_string(&p.config).unwrap().replace(
        &p.dir.join("state").display().to_string(),
        &small.join("state").display().to_string(),
    );
    std::fs::write(&p.config, text).unwrap();
    c.spawn(1);
    c.wait_ready(1);

    let data = c.dir.path().canonicalize().unwrap();
    let small_file = data.join("small.bin");
    let small_bytes = random_bytes(300_000);
    std::fs::write(&small_file, &small_bytes).unwrap();
    c.cli_ok(0, &["backup", small_file.to_str().unwrap(), "-r", "1"], 0);

    // 6 MB cannot fit on 3 MB: some chunks are refused, and the backup says so (exit 3).
    let big = data.join("big.bin");
    std::fs::write(&big, random_bytes(6_000_000)).unwrap();
    let out = c.cli(0, &["backup", big.to_str().unwrap(), "-r", "1"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The full peer is alive, its catalog matches its chunk files, and no partial file is left.
    let s = c.state(1);
    let stored = s["stored"].as_array().unwrap();
    assert!(!stored.is_empty());
    let sum: u64 = stored
        .iter()
        .map(|h| charged_on(&small, h["size"].as_u64().unwrap()))
        .sum();
    assert_eq!(used_bytes(&s), sum);
    let files = peerstash::store::chunks::list(&small.join("state").join("chunks"))
        .unwrap()
        .len();
    assert_eq!(files, stored.len(), "catalog and chunks on disk agree");
    // What the home peer believes stored is exactly what the full peer holds.
    let home = c.state(0);
    let held: u64 = file_entries(&home, &big)[0]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| ch["perceived_rd"].as_u64().unwrap())
        .sum();
    let big_id = file_entries(&home, &big)[0]["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hosted_big = stored
        .iter()
        .filter(|h| h["file_id"] == big_id.as_str())
        .count() as u64;
    assert_eq!(held, hosted_big, "no STORED without a stored chunk");

    // It goes on serving what it has.
    std::fs::remove_file(&small_file).unwrap();
    c.cli_ok(0, &["restore", small_file.to_str().unwrap()], 0);
    assert_eq!(std::fs::read(&small_file).unwrap(), small_bytes);
    // And it recovers once space is freed: deleting the big file's chunks makes room again.
    c.cli_ok(0, &["delete", big.to_str().unwrap()], 0);
    assert!(wait_until(Duration::from_secs(5), || c.state(1)["stored"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["file_id"] != big_id.as_str())));
    let again = data.join("again.bin");
    std::fs::write(&again, random_bytes(500_000)).unwrap();
    c.cli_ok(0, &["backup", again.to_str().unwrap(), "-r", "1"], 0);
}
