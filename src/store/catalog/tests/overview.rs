//! `Catalog::health_of_newest` (the health of the newest version of every file, `status`'s
//! overview) against the walk it replaced.

use std::collections::BTreeMap;

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::*;
use crate::protocol::seal::SnapshotNo;
use crate::store::{health, Health};

/// The walk `Catalog::health_of_newest` replaced (one query per file): the oracle.
fn walked(c: &Catalog, owner: Option<u32>) -> Vec<(PathBuf, Health, u64, u8)> {
    let snapshots: Vec<_> = (c.snapshots().unwrap().into_iter())
        .map(|s| s.file_id.key())
        .collect();
    let mut newest: BTreeMap<PathBuf, FileRow> = BTreeMap::new();
    for f in c.all_files().unwrap() {
        if owner.is_some_and(|uid| uid != f.uid) || snapshots.contains(&f.file_id.key()) {
            continue;
        }
        match newest.get(&f.path) {
            Some(kept) if kept.complete && !f.complete => {}
            _ => {
                newest.insert(f.path.clone(), f);
            }
        }
    }
    (newest.into_iter())
        .map(|(path, f)| {
            let chunks = c.file_chunks(&f.file_id).unwrap();
            let desired = u32::from(f.desired_rd);
            let below = chunks.iter().filter(|c| c.perceived_rd < desired).count() as u64;
            (
                path,
                health(f.desired_rd, chunks.iter().map(|c| c.perceived_rd)),
                below,
                f.desired_rd,
            )
        })
        .collect()
}

#[test]
fn the_health_of_the_newest_versions_is_what_walking_them_gives() {
    let dir = tempfile::tempdir().unwrap();
    let c = Catalog::open(&dir.path().join("c.db")).unwrap();
    let mut rng = StdRng::seed_from_u64(14);
    // Names whose byte order is not their order as paths ("/d/a-b" < "/d/a/b" in bytes).
    let names = [
        "/d/a/b", "/d/a-b", "/d/a", "/d/z", "/e", "/d/a/b/c", "/f\u{e9}",
    ];
    for i in 0..400u32 {
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&i.to_be_bytes());
        let id = FileId::from_digest(&digest);
        let row = FileRow {
            file_id: id.clone(),
            path: PathBuf::from(format!("{}{}", names[i as usize % names.len()], i % 23)),
            version: 0,
            size: 1,
            mtime_ns: 0,
            mode: 0o644,
            content_hash: "h".into(),
            desired_rd: rng.gen_range(1..=4),
            complete: false,
            inode: 0,
            uid: rng.gen_range(0..2) * 1000,
            gid: 0,
            deleted_at: None,
            ctime_ns: 0,
            encrypted: false,
            key_fp: None,
            completed_ms: None,
            random: false,
        };
        c.insert_version(&row, BackupId::new()).unwrap();
        if rng.gen_bool(0.6) {
            c.set_file_complete(&id).unwrap();
        }
        for no in 0..rng.gen_range(0..4) {
            c.put_file_chunk(&id, ChunkNo(no), 1, "h").unwrap();
            let holders: Vec<PeerId> = (2..2 + rng.gen_range(0..5)).map(PeerId).collect();
            c.add_holders(&id, ChunkNo(no), &holders).unwrap();
        }
        if i % 50 == 7 {
            c.claim_snapshot(&id, SnapshotNo::Numbered(u64::from(i)), 0)
                .unwrap();
        }
    }
    for owner in [None, Some(0), Some(1000), Some(5)] {
        let mut found = c.health_of_newest(owner).unwrap();
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(found, walked(&c, owner), "owner {owner:?}");
        assert!(
            owner == Some(5) || found.len() > 50,
            "{owner:?}: {}",
            found.len()
        );
    }
    let all = c.health_of_newest(None).unwrap();
    for word in ["healthy", "degraded", "at risk"] {
        assert!(all.iter().any(|(_, h, ..)| h.word() == word), "some {word}");
    }
}
