//! Issue 5: the network loses, duplicates and delays messages (PEERSTASH_FAULTS on every peer,
//! sending and receiving): backup, restore, delete and reclaim still end correctly.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const FAULTS: &str = "drop=0.2,dup=0.1,delay_ms=0..50";

fn lossy(quotas: &[&str]) -> Cluster {
    Cluster::start_env(quotas, &[], |i| {
        vec![(
            "PEERSTASH_FAULTS".to_owned(),
            format!("{FAULTS},seed={}", 7 + i),
        )]
    })
}

/// A backup may end with a chunk short of its RD after its 5 sends (exit 3); backing up again
/// resends only those chunks, as a user (or the queue) would.
fn backup_until_replicated(c: &Cluster, path: &str) {
    for _ in 0..5 {
        let out = c.cli(0, &["backup", path, "-r", "2"]);
        match out.status.code() {
            Some(0) => return,
            Some(3) => continue,
            other => panic!(
                "backup {path}: {other:?} {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                c.log(0)
            ),
        }
    }
    panic!("{path} still below RD after 5 backups: {}", c.state(0));
}

#[test]
fn lossy_network_backup_restore_delete_reclaim() {
    let c = lossy(&["100MB", "100MB", "100MB", "0"]);
    let data = c.dir.path().canonicalize().unwrap().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let files: Vec<(PathBuf, Vec<u8>)> = [1usize, 64_000, 300_000, 5_000_000]
        .iter()
        .map(|&n| {
            let p = data.join(format!("f{n}"));
            let b = random_bytes(n);
            std::fs::write(&p, &b).unwrap();
            (p, b)
        })
        .collect();
    for (p, _) in &files {
        backup_until_replicated(&c, p.to_str().unwrap());
    }
    // Duplicated STOREDs never inflate the perceived RD: at most the 3 peers with room.
    let s = c.state(0);
    for (p, _) in &files {
        let f = file_entries(&s, p)[0];
        assert!(min_rd(f) >= 2);
        assert!(f["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|ch| ch["perceived_rd"].as_u64().unwrap() <= 3));
    }

    for (p, b) in &files {
        std::fs::remove_file(p).unwrap();
        c.cli_ok(0, &["restore", p.to_str().unwrap()], 0);
        assert_eq!(&std::fs::read(p).unwrap(), b, "restored {p:?}");
    }

    // Reclaim: peer 4 gets room, peer 2 frees everything; RD comes back through re-backups.
    c.cli_ok(3, &["reclaim", "100MB"], 0);
    c.cli_ok(1, &["reclaim", "0"], 0);
    assert_eq!(used_bytes(&c.state(1)), 0);
    let restored = wait_until(Duration::from_secs(40), || {
        let s = c.state(0);
        files
            .iter()
            .all(|(p, _)| min_rd(file_entries(&s, p)[0]) >= 2)
    });
    if !restored {
        // REMOVED or a re-backup's STOREDs may all have been lost: a new backup repairs.
        for (p, _) in &files {
            backup_until_replicated(&c, p.to_str().unwrap());
        }
    }

    // Delete: every peer frees the space (DELETE is sent 8 times).
    let (big, _) = &files[3];
    c.cli_ok(0, &["delete", big.to_str().unwrap()], 0);
    let freed = wait_until(Duration::from_secs(10), || {
        (1..4).all(|i| used_bytes(&c.state(i)) < 5_000_000)
    });
    assert!(
        freed,
        "{:?}",
        (1..4).map(|i| used_bytes(&c.state(i))).collect::<Vec<_>>()
    );
}
