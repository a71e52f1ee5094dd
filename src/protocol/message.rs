//! The six messages of protocol 1.0, the two of 2.0 (DELETED, HELLO), peerstash's PROVE and
//! PROOF, and their codec (SPEC §2, §3): a header line of space-separated
//! fields, optional extra header lines, an empty line, then the body. Lenient on spaces and extra
//! lines, strict on field syntax: anything else is a `ParseError`, never a panic.

use std::fmt;
use std::hash::{Hash, Hasher};

pub const CHUNK_SIZE: usize = 64_000;
pub const MAX_CHUNK_NO: u32 = 999_999;
/// A header that has not ended (CRLF CRLF) within this many bytes is malformed.
pub const MAX_HEADER_LEN: usize = 4096;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PeerId(pub u32);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkNo(pub u32);

impl ChunkNo {
    pub fn new(n: u32) -> Option<ChunkNo> {
        (n <= MAX_CHUNK_NO).then_some(ChunkNo(n))
    }
}

impl fmt::Display for ChunkNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A desired replication degree, 1 to 9.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rd(u8);

impl Rd {
    pub fn new(rd: u8) -> Option<Rd> {
        (1..=9).contains(&rd).then_some(Rd(rd))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Rd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
}

impl Version {
    pub const V1_0: Version = Version { major: 1, minor: 0 };
    pub const V2_0: Version = Version { major: 2, minor: 0 };

    /// Whether a peer that sent this version speaks the 2.0 enhancements (SPEC §3).
    pub fn has_enhancements(self) -> bool {
        self.major >= 2
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A fileId as written by its home peer: 64 hex digits. Equality, ordering and hashing ignore
/// case (other implementations differ), but `as_wire` gives back the exact text received, to be
/// used in every message about the file's chunks.
#[derive(Clone, Debug)]
pub struct FileId {
    text: String,
}

impl FileId {
    pub fn parse(text: &str) -> Result<FileId, ParseError> {
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(FileId {
                text: text.to_owned(),
            })
        } else {
            Err(ParseError::BadFileId(clip(text)))
        }
    }

    pub fn from_digest(digest: &[u8; 32]) -> FileId {
        FileId {
            text: crate::protocol::hex(digest),
        }
    }

    pub fn as_wire(&self) -> &str {
        &self.text
    }

    /// The 32 bytes the hex text stands for.
    pub fn digest(&self) -> [u8; 32] {
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(self.text.as_bytes().chunks(2)) {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            *byte = hex(pair[0]) << 4 | hex(pair[1]);
        }
        digest
    }

    /// The lower-case form: for map keys, catalog keys and file names.
    pub fn key(&self) -> String {
        self.text.to_ascii_lowercase()
    }

    fn lower(&self) -> impl Iterator<Item = u8> + '_ {
        self.text.bytes().map(|b| b.to_ascii_lowercase())
    }
}

impl PartialEq for FileId {
    fn eq(&self, other: &Self) -> bool {
        self.text.eq_ignore_ascii_case(&other.text)
    }
}

impl Eq for FileId {}

impl Hash for FileId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in self.lower() {
            state.write_u8(b);
        }
    }
}

impl PartialOrd for FileId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FileId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.lower().cmp(other.lower())
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    pub file_id: FileId,
    pub chunk_no: ChunkNo,
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.file_id, self.chunk_no)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Mc,
    Mdb,
    Mdr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageKind {
    PutChunk {
        chunk: ChunkId,
        rd: Rd,
        body: Vec<u8>,
    },
    Stored {
        chunk: ChunkId,
    },
    GetChunk {
        chunk: ChunkId,
    },
    Chunk {
        chunk: ChunkId,
        body: Vec<u8>,
    },
    Delete {
        file_id: FileId,
    },
    Removed {
        chunk: ChunkId,
    },
    /// 2.0: a holder freed a file's chunks after DELETE.
    Deleted {
        file_id: FileId,
    },
    /// 2.0: a peer announces itself, at start and periodically.
    Hello,
    /// 2.0 (peerstash): a home peer asks one holder (its `HOLDER` line) to prove it has a chunk
    /// (`engine::verify`; the nonce in a `NONCE` line).
    Prove {
        chunk: ChunkId,
    },
    /// 2.0 (peerstash): the answer to PROVE: the chunk's body, or a `NONE` line.
    Proof {
        chunk: ChunkId,
        body: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub version: Version,
    pub sender: PeerId,
    pub kind: MessageKind,
    /// Header lines after the first, kept verbatim; a 1.0 peer ignores them.
    pub extra_lines: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("no end of header (CRLF CRLF)")]
    NoHeaderEnd,
    #[error("header longer than {MAX_HEADER_LEN} bytes")]
    HeaderTooLong,
    #[error("header is not ASCII")]
    NotAscii,
    #[error("bad version {0:?}")]
    BadVersion(String),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("{msg_type} has {expected} fields, found {found}")]
    FieldCount {
        msg_type: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("bad sender id {0:?}")]
    BadSender(String),
    #[error("bad fileId {0:?}")]
    BadFileId(String),
    #[error("bad chunk number {0:?}")]
    BadChunkNo(String),
    #[error("bad replication degree {0:?}")]
    BadRd(String),
    #[error("body of {0} bytes is larger than a chunk")]
    BodyTooLarge(usize),
}

/// Echoed text in errors is cut short: a hostile datagram must not fill the logs.
fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

fn digits(text: &str, max_len: usize) -> Option<u32> {
    if text.is_empty() || text.len() > max_len || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl Message {
    pub fn new(sender: PeerId, kind: MessageKind) -> Message {
        Message {
            version: Version::V1_0,
            sender,
            kind,
            extra_lines: Vec::new(),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self.kind {
            MessageKind::PutChunk { .. } => "PUTCHUNK",
            MessageKind::Stored { .. } => "STORED",
            MessageKind::GetChunk { .. } => "GETCHUNK",
            MessageKind::Chunk { .. } => "CHUNK",
            MessageKind::Delete { .. } => "DELETE",
            MessageKind::Removed { .. } => "REMOVED",
            MessageKind::Deleted { .. } => "DELETED",
            MessageKind::Hello => "HELLO",
            MessageKind::Prove { .. } => "PROVE",
            MessageKind::Proof { .. } => "PROOF",
        }
    }

    pub fn channel(&self) -> Channel {
        match self.kind {
            MessageKind::PutChunk { .. } => Channel::Mdb,
            MessageKind::Chunk { .. } | MessageKind::Proof { .. } => Channel::Mdr,
            _ => Channel::Mc,
        }
    }

    pub fn chunk(&self) -> Option<&ChunkId> {
        match &self.kind {
            MessageKind::PutChunk { chunk, .. }
            | MessageKind::Stored { chunk }
            | MessageKind::GetChunk { chunk }
            | MessageKind::Chunk { chunk, .. }
            | MessageKind::Removed { chunk }
            | MessageKind::Prove { chunk }
            | MessageKind::Proof { chunk, .. } => Some(chunk),
            MessageKind::Delete { .. } | MessageKind::Deleted { .. } | MessageKind::Hello => None,
        }
    }

    /// The file the message is about (HELLO is about none).
    pub fn file_id(&self) -> Option<&FileId> {
        match &self.kind {
            MessageKind::Delete { file_id } | MessageKind::Deleted { file_id } => Some(file_id),
            _ => self.chunk().map(|c| &c.file_id),
        }
    }

    /// Whether the message has this extra header line (words compared, spaces ignored).
    pub fn has_line(&self, line: &str) -> bool {
        self.extra_lines
            .iter()
            .any(|l| l.split(' ').filter(|w| !w.is_empty()).eq(line.split(' ')))
    }

    /// The port of a `TCP <port>` line: in a 2.0 body-less CHUNK, the holder's port to pull the
    /// chunk from (in the first 2.0 design, a GETCHUNK's port to deliver to: no longer honoured).
    pub fn tcp_port(&self) -> Option<u16> {
        self.extra_lines.iter().find_map(|line| {
            let mut words = line.split(' ').filter(|w| !w.is_empty());
            match (words.next(), words.next(), words.next()) {
                (Some("TCP"), Some(port), None) => digits(port, 5)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0),
                _ => None,
            }
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut header = format!("{} {} {}", self.version, self.type_name(), self.sender);
        match &self.kind {
            MessageKind::PutChunk { chunk, rd, .. } => {
                header += &format!(" {} {} {}", chunk.file_id, chunk.chunk_no, rd)
            }
            MessageKind::Delete { file_id } | MessageKind::Deleted { file_id } => {
                header += &format!(" {file_id}")
            }
            _ => {
                if let Some(chunk) = self.chunk() {
                    header += &format!(" {} {}", chunk.file_id, chunk.chunk_no);
                }
            }
        }
        header += "\r\n";
        for line in &self.extra_lines {
            header += line;
            header += "\r\n";
        }
        header += "\r\n";
        let body: &[u8] = match &self.kind {
            MessageKind::PutChunk { body, .. }
            | MessageKind::Chunk { body, .. }
            | MessageKind::Proof { body, .. } => body,
            _ => &[],
        };
        let mut out = Vec::with_capacity(header.len() + body.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    pub fn parse(datagram: &[u8]) -> Result<Message, ParseError> {
        let window = &datagram[..datagram.len().min(MAX_HEADER_LEN + 4)];
        let end = match window.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => end,
            None if datagram.len() > MAX_HEADER_LEN => return Err(ParseError::HeaderTooLong),
            None => return Err(ParseError::NoHeaderEnd),
        };
        if end > MAX_HEADER_LEN {
            return Err(ParseError::HeaderTooLong);
        }
        let header = std::str::from_utf8(&datagram[..end])
            .ok()
            .filter(|h| h.is_ascii())
            .ok_or(ParseError::NotAscii)?;
        let body = &datagram[end + 4..];
        let mut lines = header.split("\r\n");
        let first = lines.next().unwrap_or_default();
        let extra_lines = lines.map(str::to_owned).collect();
        // Fields are separated by one or more spaces; tabs and other blanks are not separators.
        let fields: Vec<&str> = first.split(' ').filter(|f| !f.is_empty()).collect();
        let version = match fields.first().map(|v| v.as_bytes()) {
            Some([major @ b'0'..=b'9', b'.', minor @ b'0'..=b'9']) => Version {
                major: major - b'0',
                minor: minor - b'0',
            },
            _ => return Err(ParseError::BadVersion(clip(fields.first().unwrap_or(&"")))),
        };
        let msg_type = fields.get(1).copied().unwrap_or_default();
        let (name, expected) = match msg_type {
            "PUTCHUNK" => ("PUTCHUNK", 6),
            "STORED" => ("STORED", 5),
            "GETCHUNK" => ("GETCHUNK", 5),
            "CHUNK" => ("CHUNK", 5),
            "REMOVED" => ("REMOVED", 5),
            "DELETE" => ("DELETE", 4),
            "DELETED" => ("DELETED", 4),
            "HELLO" => ("HELLO", 3),
            "PROVE" => ("PROVE", 5),
            "PROOF" => ("PROOF", 5),
            other => return Err(ParseError::UnknownType(clip(other))),
        };
        if fields.len() != expected {
            return Err(ParseError::FieldCount {
                msg_type: name,
                expected,
                found: fields.len(),
            });
        }
        let sender = digits(fields[2], 10)
            .map(PeerId)
            .ok_or_else(|| ParseError::BadSender(clip(fields[2])))?;
        if name == "HELLO" {
            return Ok(Message {
                version,
                sender,
                kind: MessageKind::Hello,
                extra_lines,
            });
        }
        let file_id = FileId::parse(fields[3])?;
        let chunk = || -> Result<ChunkId, ParseError> {
            let chunk_no = digits(fields[4], 6)
                .and_then(ChunkNo::new)
                .ok_or_else(|| ParseError::BadChunkNo(clip(fields[4])))?;
            Ok(ChunkId {
                file_id: file_id.clone(),
                chunk_no,
            })
        };
        let with_body = || {
            if body.len() > CHUNK_SIZE {
                Err(ParseError::BodyTooLarge(body.len()))
            } else {
                Ok(body.to_vec())
            }
        };
        let kind = match name {
            "PUTCHUNK" => {
                let rd = match fields[5].as_bytes() {
                    [d @ b'1'..=b'9'] => Rd(d - b'0'),
                    _ => return Err(ParseError::BadRd(clip(fields[5]))),
                };
                MessageKind::PutChunk {
                    chunk: chunk()?,
                    rd,
                    body: with_body()?,
                }
            }
            "STORED" => MessageKind::Stored { chunk: chunk()? },
            "GETCHUNK" => MessageKind::GetChunk { chunk: chunk()? },
            "CHUNK" => MessageKind::Chunk {
                chunk: chunk()?,
                body: with_body()?,
            },
            "REMOVED" => MessageKind::Removed { chunk: chunk()? },
            "PROVE" => MessageKind::Prove { chunk: chunk()? },
            "PROOF" => MessageKind::Proof {
                chunk: chunk()?,
                body: with_body()?,
            },
            "DELETED" => MessageKind::Deleted { file_id },
            _ => MessageKind::Delete { file_id },
        };
        Ok(Message {
            version,
            sender,
            kind,
            extra_lines,
        })
    }
}

#[cfg(test)]
mod tests {
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
}
