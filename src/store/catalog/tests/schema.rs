//! The catalog's schema migrations (`catalog::schema`): a catalog written by the releases that
//! kept fileIds as text opens with every row found by the same `FileId`.

use super::*;

/// A catalog as the releases before binary fileIds left it (schema 1, text fileIds), with a
/// version of ours (2 chunks, held by peers 5 and 6), a hosted chunk whose home peer writes
/// its fileId in upper case, a forgotten version owed a DELETE, and a snapshot.
pub(in crate::store) fn older_catalog(db: &Path, extra: &str) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(include_str!("schema_v1.sql")).unwrap();
    let (a, b, s) = ("a".repeat(64), "b".repeat(64), "5".repeat(64));
    let h = "0123456789abcdef".repeat(4);
    let upper = h.to_ascii_uppercase();
    conn.execute_batch(&format!(
        "CREATE INDEX files_inode ON files (inode);
         CREATE INDEX holders_peer ON holders (peer);
         CREATE INDEX delete_acks_peer ON delete_acks (peer, since);
         INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash, desired_rd, complete)
         VALUES ('{a}', X'2F782F66', 1, 70000, 1, 420, 'h', 2, 1),
                ('{s}', X'2F73', 1, 9, 1, 384, 'h', 2, 1);
         INSERT INTO file_chunks VALUES ('{a}', 0, 64000, 'h0'), ('{a}', 1, 6000, 'h1');
         INSERT INTO holders VALUES ('{a}', 0, 5), ('{a}', 0, 6), ('{a}', 1, 5), ('{h}', 0, 7);
         INSERT INTO hosted (file_id, chunk_no, wire_id, size, hash, desired_rd, sender)
         VALUES ('{h}', 0, '{upper}', 10, 'hh', 3, 7);
         INSERT INTO pending_deletes VALUES ('{b}');
         INSERT INTO forgotten VALUES ('{b}', 100);
         INSERT INTO delete_acks VALUES ('{b}', 5, 100);
         INSERT INTO snapshots (file_id, day, n, at_rd) VALUES ('{s}', -1, 4, 1);
         {extra}
         PRAGMA user_version = 1;"
    ))
    .unwrap();
}

#[test]
fn a_catalog_with_text_file_ids_opens_with_every_row_found() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    older_catalog(&db, "");
    let cat = Catalog::open(&db).unwrap();
    let version: i64 = cat
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    let text_ids: i64 = cat
        .conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM files WHERE typeof(file_id) != 'blob')
                  + (SELECT COUNT(*) FROM holders WHERE typeof(file_id) != 'blob')
                  + (SELECT COUNT(*) FROM holder_counts WHERE typeof(file_id) != 'blob')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(text_ids, 0);

    let a = fid('a');
    let f = cat
        .file(&a)
        .unwrap()
        .expect("our version is found by its fileId");
    assert_eq!(
        (f.path, f.version, f.complete),
        (PathBuf::from("/x/f"), 1, true)
    );
    let rds: Vec<u32> = (cat.file_chunks(&a).unwrap().iter())
        .map(|c| c.perceived_rd)
        .collect();
    assert_eq!(rds, vec![2, 1], "holder counts unchanged");
    assert_eq!(
        cat.holders(&a, ChunkNo(0)).unwrap(),
        vec![PeerId(5), PeerId(6)]
    );

    // A hosted chunk: found by its fileId in any case, answered with its home peer's text.
    let h = FileId::parse(&"0123456789abcdef".repeat(4)).unwrap();
    let upper = FileId::parse(&"0123456789ABCDEF".repeat(4)).unwrap();
    let row = cat.hosted(&upper, ChunkNo(0)).unwrap().expect("hosted row");
    assert_eq!(row.file_id.as_wire(), "0123456789ABCDEF".repeat(4));
    assert_eq!((row.size, row.desired_rd, row.sender), (10, 3, PeerId(7)));
    assert_eq!(cat.perceived(&h, ChunkNo(0)).unwrap(), 1);
    assert!(matches!(
        cat.role(&h, ChunkNo(0)).unwrap(),
        ChunkRole::Hosted { .. }
    ));

    let b = fid('b');
    assert_eq!(cat.pending_deletes().unwrap(), vec![b.clone()]);
    assert!(matches!(
        cat.role(&b, ChunkNo(0)).unwrap(),
        ChunkRole::Forgotten
    ));
    assert_eq!(
        cat.unacked_deletes_for(PeerId(5), 10).unwrap(),
        vec![b.clone()]
    );
    let snaps = cat.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].file_id, fid('5'));
    assert_eq!(
        cat.own_versions().unwrap(),
        1,
        "the snapshot is still told apart"
    );

    // The triggers and the foreign key work as before.
    assert_eq!(cat.add_holder(&a, ChunkNo(1), PeerId(9)).unwrap(), Some(2));
    cat.remove_holder(&a, ChunkNo(0), PeerId(5)).unwrap();
    assert_eq!(cat.perceived(&a, ChunkNo(0)).unwrap(), 1);
    cat.conn
        .execute("DELETE FROM files WHERE file_id = ?1", [&a])
        .unwrap();
    assert!(
        cat.file_chunks(&a).unwrap().is_empty(),
        "chunks go with their version"
    );
    drop(cat);
    // Opened again: nothing more to do.
    let cat = Catalog::open(&db).unwrap();
    assert_eq!(cat.hosted_count().unwrap(), 1);
}

#[test]
fn a_catalog_that_cannot_be_migrated_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    older_catalog(&db, "INSERT INTO forgotten VALUES ('not a file id', 1);");
    let e = Catalog::open(&db)
        .err()
        .expect("a value that is not a fileId");
    let said = e.to_string();
    assert!(said.contains("left as it was"), "{said}");
    let conn = Connection::open(&db).unwrap();
    let (version, text): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version),
                    (SELECT COUNT(*) FROM files WHERE typeof(file_id) = 'text')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, text), (1, 2));
}

#[test]
fn a_catalog_of_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    drop(Catalog::open(&db).unwrap());
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA user_version = 3")
        .unwrap();
    let said = Catalog::open(&db).err().expect("refused").to_string();
    assert!(said.contains("newer peerstash"), "{said}");
}
