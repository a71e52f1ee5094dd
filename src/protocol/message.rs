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
mod tests;
