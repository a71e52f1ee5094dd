use super::*;

#[test]
fn hosted_keeps_wire_text_and_counts_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let upper = FileId::parse(&"A".repeat(64)).unwrap();
    let row = HostedRow {
        file_id: upper.clone(),
        chunk_no: ChunkNo(4),
        size: 64_000,
        hash: "h".into(),
        desired_rd: 2,
        sender: PeerId(1),
    };
    cat.insert_hosted(&row, &[PeerId(1)]).unwrap();
    assert_eq!(
        cat.role(&fid('a'), ChunkNo(4)).unwrap(),
        ChunkRole::Hosted { desired_rd: 2 }
    );
    let back = cat.hosted(&fid('a'), ChunkNo(4)).unwrap().unwrap();
    assert_eq!(back.file_id.as_wire(), upper.as_wire());
    assert_eq!(back.sender, PeerId(1));
    assert_eq!(cat.all_hosted().unwrap()[0].0, back);
    assert_eq!(cat.used_bytes(|s| s + 1).unwrap(), 64_001);
    assert_eq!(
        cat.delete_hosted_file(&fid('a')).unwrap(),
        vec![(ChunkNo(4), 64_000)]
    );
    assert_eq!(cat.used_bytes(|s| s + 1).unwrap(), 0);
}

#[tokio::test]
async fn handle_batches_and_isolates_failures() {
    let dir = tempfile::tempdir().unwrap();
    let handle = CatalogHandle::start(Catalog::open(&dir.path().join("c.db")).unwrap());
    let a = handle.call(|c| c.insert_file(&file('a', "/f")));
    let b = handle.call(|c| c.insert_file(&file('a', "/f"))); // duplicate fileId: fails
    let d = handle.call(|c| c.insert_file(&file('d', "/g")));
    let (a, b, d) = tokio::join!(a, b, d);
    assert_eq!(a.unwrap(), 1);
    assert!(b.is_err());
    assert_eq!(d.unwrap(), 1);
    let all = handle.call(|c| c.all_files()).await.unwrap();
    assert_eq!(all.len(), 2);
}

#[test]
fn holder_sets_are_capped_and_counted_without_recount() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.insert_file(&file('a', "/f")).unwrap();
    cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").unwrap();
    // A flood of STOREDs from forged ids, in batches as the daemon records them.
    let forged: Vec<PeerId> = (1000..201_000).map(PeerId).collect();
    for batch in forged.chunks(1024) {
        let rd = cat.add_holders(&fid('a'), ChunkNo(0), batch).unwrap();
        assert_eq!(rd, Some(MAX_HOLDERS));
    }
    assert_eq!(cat.holders(&fid('a'), ChunkNo(0)).unwrap().len(), 64);
    assert_eq!(
        cat.file_chunks(&fid('a')).unwrap()[0].perceived_rd,
        MAX_HOLDERS
    );
    // Beyond the cap a new peer is ignored; one already in the set stays counted once.
    assert_eq!(
        cat.add_holder(&fid('a'), ChunkNo(0), PeerId(7)).unwrap(),
        Some(64)
    );
    assert_eq!(
        cat.add_holder(&fid('a'), ChunkNo(0), PeerId(1000)).unwrap(),
        Some(64)
    );
    // The counts follow removals and deletes.
    assert_eq!(
        cat.remove_holder(&fid('a'), ChunkNo(0), PeerId(1000))
            .unwrap(),
        63
    );
    assert_eq!(
        cat.add_holder(&fid('a'), ChunkNo(0), PeerId(7)).unwrap(),
        Some(64)
    );
    assert_eq!(cat.min_perceived_rd(&fid('a')).unwrap(), 64);
    cat.delete_file(&fid('a'), 1_000).unwrap();
    assert_eq!(cat.perceived(&fid('a'), ChunkNo(0)).unwrap(), 0);
    let rows: i64 = cat
        .conn
        .query_row("SELECT COUNT(*) FROM holder_counts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    // STOREDs for a chunk we do not know cost nothing.
    assert_eq!(
        cat.add_holders(&fid('b'), ChunkNo(0), &forged[..10])
            .unwrap(),
        None
    );
}

#[test]
fn counts_are_built_for_a_catalog_of_an_older_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let cat = Catalog::open(&path).unwrap();
        cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").ok();
        cat.conn
            .execute_batch(
                "DROP TRIGGER holder_added; DROP TRIGGER holder_removed;
                 DROP TABLE holder_counts;
                 INSERT INTO holders VALUES (X'0101010101010101010101010101010101010101010101010101010101010101', 1, 5), (X'0101010101010101010101010101010101010101010101010101010101010101', 1, 6), (X'0202020202020202020202020202020202020202020202020202020202020202', 0, 5);",
            )
            .unwrap();
    }
    let cat = Catalog::open(&path).unwrap();
    let count = |f: u8, n: i64| -> u32 {
        cat.conn
            .query_row(
                "SELECT n FROM holder_counts WHERE file_id = ?1 AND chunk_no = ?2",
                params![FileId::from_digest(&[f; 32]), n],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!((count(1, 1), count(2, 0)), (2, 1));
}

#[test]
fn hosted_chunks_are_listed_a_page_at_a_time_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    for (c, no) in [('b', 1), ('a', 2), ('b', 0), ('a', 0), ('c', 7)] {
        cat.insert_hosted(&hosted(c, no, 10, 2), &[]).unwrap();
    }
    assert_eq!(cat.hosted_count().unwrap(), 5);
    let mut seen = Vec::new();
    let mut after: Option<ChunkId> = None;
    loop {
        let page = cat.hosted_page(after.as_ref(), Some(2)).unwrap();
        assert!(page.len() <= 2);
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.chunk_id());
        seen.extend(page.iter().map(|(r, _)| (r.file_id.key(), r.chunk_no.0)));
    }
    let key = |c: char| fid(c).key();
    let expected = [
        (key('a'), 0),
        (key('a'), 2),
        (key('b'), 0),
        (key('b'), 1),
        (key('c'), 7),
    ];
    assert_eq!(seen, expected);
}
