//! Issue 5: kill -9 at random instants. A seeded, bounded loop kills a random peer (the home
//! peer or a holder) while files are backed up, changed, deleted, restored and space is
//! reclaimed, restarts it, and at the end checks that nothing is torn or lost:
//! every hosted chunk holds exactly the bytes of its file, the catalog matches the chunk files,
//! used bytes are the sum of chunk sizes, and every interrupted backup finished.
//! PEERSTASH_CRASH_SEED and PEERSTASH_CRASH_ITERATIONS (default 20) change the run.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use peerstash::protocol::{ChunkNo, FileId};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn kill_9_at_random_instants_loses_and_tears_nothing() {
    let seed = env_or("PEERSTASH_CRASH_SEED", 1);
    let iterations = env_or("PEERSTASH_CRASH_ITERATIONS", 20);
    eprintln!("crash loop: seed {seed}, {iterations} iterations");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap().join("watched");
    std::fs::create_dir_all(&dir).unwrap();
    let watch = format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 2\nkeep_versions = 1\nkeep_deleted = \"0s\"\nquiet = \"100ms\"\n",
        dir.display()
    );
    let mut c = Cluster::start_with(&["50MB", "50MB", "50MB", "50MB"], &[&watch]);
    let restore_to = tmp.path().canonicalize().unwrap().join("restored");
    std::fs::create_dir_all(&restore_to).unwrap();

    let mut contents: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    for i in 0..iterations {
        let action = rng.gen_range(0..5);
        let name = dir.join(format!("f{}", rng.gen_range(0..6)));
        match action {
            0 | 1 => {
                // A new file or a new version, up to ~20 chunks.
                let size = rng.gen_range(0..1_300_000);
                let bytes: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
                std::fs::write(&name, &bytes).unwrap();
                contents.insert(name.clone(), bytes);
            }
            2 => {
                if contents.remove(&name).is_some() {
                    std::fs::remove_file(&name).unwrap();
                }
            }
            3 => {
                // A restore that may be interrupted: it must leave no torn file behind.
                if contents.contains_key(&name) {
                    let _ = c.cli(
                        0,
                        &[
                            "restore",
                            name.to_str().unwrap(),
                            "--to",
                            restore_to.to_str().unwrap(),
                            "--force",
                        ],
                    );
                }
            }
            _ => {
                // A holder reclaims part of its space, then offers it again.
                let h = rng.gen_range(1..4);
                let _ = c.cli(h, &["reclaim", "1MB"]);
                let _ = c.cli(h, &["reclaim", "50MB"]);
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..600)));
        let victim = rng.gen_range(0..4);
        eprintln!(
            "iteration {i}: action {action}, kill -9 peer {}",
            victim + 1
        );
        c.kill(victim);
        c.spawn(victim);
        c.wait_ready(victim);
    }

    // Every interrupted backup finishes: each file's newest version matches the file, at RD 2.
    let settled = wait_until(Duration::from_secs(120), || {
        let s = c.peer(0).state();
        s.queue_length == 0
            && contents.iter().all(|(p, b)| {
                let e = s.versions_of(p);
                e.len() == 1 && e[0].size == b.len() as u64 && e[0].min_rd() >= 2 && e[0].complete
            })
    });
    assert!(settled, "backups did not all finish: {}", c.peer(0).state());
    std::thread::sleep(Duration::from_secs(2));

    let home = c.peer(0).state();
    let current: HashMap<String, &Vec<u8>> = contents
        .iter()
        .map(|(p, b)| (home.versions_of(p)[0].file_id.clone(), b))
        .collect();
    for i in 1..4 {
        check_store(c.peer(i), &c.peer(i).state(), &current);
    }
    // Restored bytes are right too.
    for (p, b) in &contents {
        let to = restore_to.join("check");
        c.cli_ok(
            0,
            &[
                "restore",
                p.to_str().unwrap(),
                "--to",
                to.to_str().unwrap(),
                "--force",
            ],
            0,
        );
        assert_eq!(&std::fs::read(&to).unwrap(), b, "{p:?}");
    }
    let torn: Vec<_> = std::fs::read_dir(&restore_to)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(torn.is_empty(), "temporary restore files left: {torn:?}");
    drop(tmp);
}

/// The catalog (`state`) and the chunk files agree; each chunk of a current version holds the
/// file's bytes; used bytes are the sum of the chunk sizes.
fn check_store(peer: &Peer, state: &State, current: &HashMap<String, &Vec<u8>>) {
    // Whole chunks only: a slot cut by the kill is emptied at the restart.
    let on_disk: HashMap<(String, u64), u64> = chunks_on_disk(peer)
        .into_iter()
        .map(|(id, no, size)| ((id.key(), u64::from(no.0)), size))
        .collect();
    let mut on_disk = on_disk;
    let root = peer.dir.join("state").join("chunks");
    let store = peerstash::store::ChunkStore::open(root, 0, 0).unwrap();
    let mut sum = 0;
    for h in &state.stored {
        let id = h.file_id.to_lowercase();
        let no = u64::from(h.chunk_no);
        let size = h.size;
        sum += charged(peer, size);
        assert_eq!(
            on_disk.remove(&(id.clone(), no)),
            Some(size),
            "peer {}: chunk {id}#{no}",
            peer.id
        );
        if let Some(bytes) = current.get(&id) {
            let start = (no as usize * 64_000).min(bytes.len());
            let end = (start + 64_000).min(bytes.len());
            let on = store
                .read(&FileId::parse(&id).unwrap(), ChunkNo(no as u32))
                .unwrap();
            assert_eq!(
                on,
                bytes[start..end],
                "peer {}: chunk {id}#{no} has wrong bytes",
                peer.id
            );
        }
    }
    assert!(
        on_disk.is_empty(),
        "peer {}: chunk files the catalog does not know: {on_disk:?}",
        peer.id
    );
    assert_eq!(state.used_bytes, sum, "peer {}: used bytes", peer.id);
}
