use super::*;
use proptest::prelude::*;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn chunk(no: u32) -> ChunkId {
    ChunkId {
        file_id: FileId::parse(ID).unwrap(),
        chunk_no: ChunkNo(no),
    }
}

#[test]
fn every_type_round_trips() {
    let kinds = vec![
        MessageKind::PutChunk {
            chunk: chunk(3),
            rd: Rd(2),
            body: vec![1, 2, 3],
        },
        MessageKind::Stored { chunk: chunk(0) },
        MessageKind::GetChunk {
            chunk: chunk(999_999),
        },
        MessageKind::Chunk {
            chunk: chunk(1),
            body: Vec::new(),
        },
        MessageKind::Delete {
            file_id: FileId::parse(ID).unwrap(),
        },
        MessageKind::Removed { chunk: chunk(7) },
        MessageKind::Deleted {
            file_id: FileId::parse(ID).unwrap(),
        },
        MessageKind::Hello,
        MessageKind::Prove { chunk: chunk(5) },
        MessageKind::Proof {
            chunk: chunk(6),
            body: vec![9; 10],
        },
    ];
    for kind in kinds {
        let m = Message::new(PeerId(42), kind);
        assert_eq!(Message::parse(&m.encode()).unwrap(), m);
    }
}

#[test]
fn exact_encoding() {
    let m = Message::new(
        PeerId(3),
        MessageKind::PutChunk {
            chunk: chunk(12),
            rd: Rd(2),
            body: b"xy".to_vec(),
        },
    );
    assert_eq!(
        m.encode(),
        format!("1.0 PUTCHUNK 3 {ID} 12 2\r\n\r\nxy").into_bytes()
    );
    let d = Message::new(
        PeerId(3),
        MessageKind::Delete {
            file_id: FileId::parse(ID).unwrap(),
        },
    );
    assert_eq!(
        d.encode(),
        format!("1.0 DELETE 3 {ID}\r\n\r\n").into_bytes()
    );
    let mut h = Message::new(PeerId(3), MessageKind::Hello);
    h.version = Version::V2_0;
    assert_eq!(h.encode(), b"2.0 HELLO 3\r\n\r\n".to_vec());
    let mut d = Message::new(
        PeerId(3),
        MessageKind::Deleted {
            file_id: FileId::parse(ID).unwrap(),
        },
    );
    d.version = Version::V2_0;
    assert_eq!(
        d.encode(),
        format!("2.0 DELETED 3 {ID}\r\n\r\n").into_bytes()
    );
}

#[test]
fn the_tcp_line_of_a_getchunk() {
    let parse = |extra: &str| {
        Message::parse(format!("2.0 GETCHUNK 4 {ID} 0 \r\n{extra}\r\n\r\n").as_bytes())
            .unwrap()
            .tcp_port()
    };
    assert_eq!(parse("TCP 5000"), Some(5000));
    assert_eq!(parse("TCP  5000 "), Some(5000));
    for bad in [
        "TCP",
        "TCP 0",
        "TCP 65536",
        "TCP 5000 6000",
        "TCP x",
        "UDP 5000",
        "TCP -1",
    ] {
        assert_eq!(parse(bad), None, "{bad}");
    }
    let plain = Message::parse(format!("1.0 GETCHUNK 4 {ID} 0\r\n\r\n").as_bytes());
    assert_eq!(plain.unwrap().tcp_port(), None);
}

#[test]
fn upper_case_file_ids_keep_their_text_and_compare_equal() {
    let upper = ID.to_uppercase();
    let m = Message::parse(format!("1.0 STORED 5 {upper} 1\r\n\r\n").as_bytes()).unwrap();
    assert_eq!(m.file_id().unwrap().as_wire(), upper);
    assert_eq!(m.file_id(), Some(&FileId::parse(ID).unwrap()));
    assert_eq!(m.chunk().unwrap(), &chunk(1));
    assert!(String::from_utf8(m.encode()).unwrap().contains(&upper));
    assert_eq!(m.file_id().unwrap().key(), ID);
}

#[test]
fn lenient_on_spaces_extra_lines_and_versions() {
    let text = format!("2.0  GETCHUNK   9 {ID}  4   \r\nTCP 5000\r\nX-Other: y\r\n\r\n");
    let m = Message::parse(text.as_bytes()).unwrap();
    assert_eq!(m.version, Version { major: 2, minor: 0 });
    assert_eq!(m.extra_lines, vec!["TCP 5000", "X-Other: y"]);
    assert_eq!(m.kind, MessageKind::GetChunk { chunk: chunk(4) });
    // A body on a body-less message is ignored.
    assert!(Message::parse(format!("1.0 STORED 9 {ID} 4\r\n\r\nzz").as_bytes()).is_ok());
}

#[test]
fn strict_on_fields() {
    type Check = fn(&ParseError) -> bool;
    let bad: Vec<(String, Check)> = vec![
        ("garbage".into(), |e| *e == ParseError::NoHeaderEnd),
        ("1.0 PUTCHUNK 9 ".into(), |e| *e == ParseError::NoHeaderEnd),
        (format!("1.0 STORED 9 {ID} 4\r\n"), |e| {
            *e == ParseError::NoHeaderEnd
        }),
        (
            format!("1.0 STORED 9 ../../etc{} 4\r\n\r\n", &ID[..55]),
            |e| matches!(e, ParseError::BadFileId(_)),
        ),
        (format!("1.0 STORED 9 {} 4\r\n\r\n", &ID[..63]), |e| {
            matches!(e, ParseError::BadFileId(_))
        }),
        (format!("1.0 STORED 9 {ID}g 4\r\n\r\n"), |e| {
            matches!(e, ParseError::BadFileId(_))
        }),
        (format!("1.0 STORED 9 {ID} 9999999\r\n\r\n"), |e| {
            matches!(e, ParseError::BadChunkNo(_))
        }),
        (format!("1.0 STORED 9 {ID} -1\r\n\r\n"), |e| {
            matches!(e, ParseError::BadChunkNo(_))
        }),
        (format!("1.0 PUTCHUNK 9 {ID} 1 0\r\n\r\n"), |e| {
            matches!(e, ParseError::BadRd(_))
        }),
        (format!("1.0 PUTCHUNK 9 {ID} 1 10\r\n\r\n"), |e| {
            matches!(e, ParseError::BadRd(_))
        }),
        (format!("1.0 PUTCHUNK 9 {ID} 1\r\n\r\n"), |e| {
            matches!(e, ParseError::FieldCount { .. })
        }),
        (format!("1.0 DELETE 9 {ID} 1\r\n\r\n"), |e| {
            matches!(e, ParseError::FieldCount { .. })
        }),
        (format!("1.0 STORED x9 {ID} 1\r\n\r\n"), |e| {
            matches!(e, ParseError::BadSender(_))
        }),
        (format!("1.0 STORED 99999999999 {ID} 1\r\n\r\n"), |e| {
            matches!(e, ParseError::BadSender(_))
        }),
        (format!("1.0\tSTORED 9 {ID} 1\r\n\r\n"), |e| {
            matches!(e, ParseError::BadVersion(_))
        }),
        (format!("10 STORED 9 {ID} 1\r\n\r\n"), |e| {
            matches!(e, ParseError::BadVersion(_))
        }),
        ("1.0 HI 9\r\n\r\n".to_string(), |e| {
            matches!(e, ParseError::UnknownType(_))
        }),
        (format!("1.0 stored 9 {ID} 1\r\n\r\n"), |e| {
            matches!(e, ParseError::UnknownType(_))
        }),
        ("1.0 STORED 9 é\r\n\r\n".into(), |e| {
            *e == ParseError::NotAscii
        }),
    ];
    for (text, check) in bad {
        let e = Message::parse(text.as_bytes()).unwrap_err();
        assert!(check(&e), "{text:?} gave {e:?}");
    }
    let mut big = format!("1.0 CHUNK 9 {ID} 1\r\n\r\n").into_bytes();
    big.extend(vec![0; CHUNK_SIZE + 1]);
    assert_eq!(
        Message::parse(&big),
        Err(ParseError::BodyTooLarge(CHUNK_SIZE + 1))
    );
    let long = vec![b'1'; MAX_HEADER_LEN + 10];
    assert_eq!(Message::parse(&long), Err(ParseError::HeaderTooLong));
}

fn any_chunk() -> impl Strategy<Value = ChunkId> {
    ("[0-9a-fA-F]{64}", 0..=MAX_CHUNK_NO).prop_map(|(id, no)| ChunkId {
        file_id: FileId::parse(&id).unwrap(),
        chunk_no: ChunkNo(no),
    })
}

fn any_message() -> impl Strategy<Value = Message> {
    let body = proptest::collection::vec(any::<u8>(), 0..=CHUNK_SIZE);
    let kind = prop_oneof![
        (any_chunk(), 1u8..=9, body.clone()).prop_map(|(chunk, rd, body)| {
            MessageKind::PutChunk {
                chunk,
                rd: Rd(rd),
                body,
            }
        }),
        any_chunk().prop_map(|chunk| MessageKind::Stored { chunk }),
        any_chunk().prop_map(|chunk| MessageKind::GetChunk { chunk }),
        (any_chunk(), body).prop_map(|(chunk, body)| MessageKind::Chunk { chunk, body }),
        any_chunk().prop_map(|c| MessageKind::Delete { file_id: c.file_id }),
        any_chunk().prop_map(|chunk| MessageKind::Removed { chunk }),
        any_chunk().prop_map(|c| MessageKind::Deleted { file_id: c.file_id }),
        Just(MessageKind::Hello),
    ];
    let extra = proptest::collection::vec("[ -~]{1,30}", 0..3);
    (0u8..10, 0u8..10, any::<u32>(), kind, extra).prop_map(
        |(major, minor, sender, kind, extra_lines)| Message {
            version: Version { major, minor },
            sender: PeerId(sender),
            kind,
            extra_lines,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn build_then_parse_is_identity(m in any_message()) {
        let parsed = Message::parse(&m.encode()).unwrap();
        prop_assert_eq!(parsed.file_id().map(FileId::as_wire), m.file_id().map(FileId::as_wire));
        prop_assert_eq!(parsed, m);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let _ = Message::parse(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(m in any_message(), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let mut bytes = m.encode();
        let i = at % bytes.len();
        bytes[i] = byte;
        bytes.truncate(cut % (bytes.len() + 1));
        let _ = Message::parse(&bytes);
    }
}
