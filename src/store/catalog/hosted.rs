//! The `hosted` table: the chunks this peer stores for others, and what a chunk is to us
//! (`ChunkRole`: ours, hosted, forgotten or unknown).

use super::*;

/// A chunk this peer hosts for another peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostedRow {
    pub file_id: FileId,
    pub chunk_no: ChunkNo,
    pub size: u64,
    pub hash: String,
    pub desired_rd: u8,
    /// The peer whose PUTCHUNK was stored: `PeerId(0)` when unknown (recorded before senders
    /// were, or re-indexed by `--rebuild-catalog`).
    pub sender: PeerId,
}

impl HostedRow {
    /// The chunk, with the fileId text exactly as its home peer wrote it.
    pub fn chunk_id(&self) -> ChunkId {
        ChunkId {
            file_id: self.file_id.clone(),
            chunk_no: self.chunk_no,
        }
    }
}

/// What a chunk is to this peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkRole {
    /// A chunk of one of our files (we are its home peer; we never host it).
    Own {
        desired_rd: u8,
    },
    Hosted {
        desired_rd: u8,
    },
    /// A chunk of a version of ours that was forgotten (deleted): still ours, never hosted. A
    /// holder's late re-backup of it would otherwise make us host our own chunk.
    Forgotten,
    Unknown,
}

impl Catalog {
    pub fn role(&self, file_id: &FileId, chunk_no: ChunkNo) -> Result<ChunkRole, StoreError> {
        let key = file_id.digest();
        let own: Option<u8> = self
            .conn
            .prepare_cached("SELECT desired_rd FROM files WHERE file_id = ?1")?
            .query_row([&key], |r| r.get(0))
            .optional()?;
        if let Some(desired_rd) = own {
            return Ok(ChunkRole::Own { desired_rd });
        }
        let hosted: Option<u8> = self
            .conn
            .prepare_cached("SELECT desired_rd FROM hosted WHERE file_id = ?1 AND chunk_no = ?2")?
            .query_row(params![key, chunk_no.0], |r| r.get(0))
            .optional()?;
        if let Some(desired_rd) = hosted {
            return Ok(ChunkRole::Hosted { desired_rd });
        }
        let forgotten: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM forgotten WHERE file_id = ?1)")?
            .query_row([&key], |r| r.get(0))?;
        Ok(match forgotten {
            true => ChunkRole::Forgotten,
            false => ChunkRole::Unknown,
        })
    }

    /// Records a chunk now on disk, with the holders known so far (ourselves included).
    pub fn insert_hosted(&self, row: &HostedRow, holders: &[PeerId]) -> Result<(), StoreError> {
        let key = row.file_id.digest();
        self.conn
            .prepare_cached(
                "INSERT INTO hosted (file_id, chunk_no, wire_id, size, hash, desired_rd, sender)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                key,
                row.chunk_no.0,
                row.file_id.as_wire(),
                row.size as i64,
                row.hash,
                row.desired_rd,
                row.sender.0
            ])?;
        self.insert_holders(&key, row.chunk_no, holders)?;
        Ok(())
    }

    /// Records a hosted chunk's desired RD heard in a PUTCHUNK, when it was unknown (re-indexed
    /// by `--rebuild-catalog`, `engine::peer::UNKNOWN_RD`). Returns whether it was.
    pub fn learn_hosted_rd(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        rd: u8,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE hosted SET desired_rd = ?3
                 WHERE file_id = ?1 AND chunk_no = ?2 AND desired_rd = 0",
            )?
            .execute(params![&file_id, chunk_no.0, rd])?;
        Ok(n > 0)
    }

    pub fn hosted(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
    ) -> Result<Option<HostedRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT wire_id, size, hash, desired_rd, sender FROM hosted
                 WHERE file_id = ?1 AND chunk_no = ?2",
            )?
            .query_row(params![&file_id, chunk_no.0], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .optional()?
            .map(|(wire, size, hash, desired_rd, sender)| {
                Ok(HostedRow {
                    file_id: file_id_of(wire)?,
                    chunk_no,
                    size: size as u64,
                    hash,
                    desired_rd,
                    sender: PeerId(sender),
                })
            })
            .transpose()
    }

    /// Every hosted chunk with its perceived RD.
    pub fn all_hosted(&self) -> Result<Vec<(HostedRow, u32)>, StoreError> {
        self.hosted_page(None, None)
    }

    /// How many chunks this peer hosts.
    pub fn hosted_count(&self) -> Result<usize, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM hosted")?
            .query_row([], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// Hosted chunks (with their perceived RD) in (fileId, chunkNo) order: those after `after`,
    /// at most `limit` of them (a scrub of a large store never lists it whole in memory).
    pub fn hosted_page(
        &self,
        after: Option<&ChunkId>,
        limit: Option<usize>,
    ) -> Result<Vec<(HostedRow, u32)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.wire_id, s.chunk_no, s.size, s.hash, s.desired_rd,
                    COALESCE((SELECT n FROM holder_counts h WHERE h.file_id = s.file_id AND h.chunk_no = s.chunk_no), 0),
                    s.sender
             FROM hosted s
             WHERE ?1 IS NULL OR (s.file_id, s.chunk_no) > (?1, ?2)
             ORDER BY s.file_id, s.chunk_no LIMIT ?3",
        )?;
        let limit = limit.map_or(-1, |n| n as i64);
        let (file, no) = after.map_or((None, 0), |c| (Some(&c.file_id), c.chunk_no.0));
        let rows = stmt.query_map(params![file, no, limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u8>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, u32>(6)?,
            ))
        })?;
        rows.map(|r| {
            let (wire, no, size, hash, desired_rd, perceived, sender) = r?;
            Ok((
                HostedRow {
                    file_id: file_id_of(wire)?,
                    chunk_no: chunk_no_of(no)?,
                    size: size as u64,
                    hash,
                    desired_rd,
                    sender: PeerId(sender),
                },
                perceived,
            ))
        })
        .collect()
    }

    /// Forgets one hosted chunk and its holder set; returns its size if it was hosted.
    pub fn delete_hosted(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
    ) -> Result<Option<u64>, StoreError> {
        let key = file_id.digest();
        let size: Option<i64> = self
            .conn
            .prepare_cached(
                "DELETE FROM hosted WHERE file_id = ?1 AND chunk_no = ?2 RETURNING size",
            )?
            .query_row(params![key, chunk_no.0], |r| r.get(0))
            .optional()?;
        self.conn
            .prepare_cached("DELETE FROM holders WHERE file_id = ?1 AND chunk_no = ?2")?
            .execute(params![key, chunk_no.0])?;
        Ok(size.map(|s| s as u64))
    }

    /// Forgets every hosted chunk of a file; returns (chunkNo, size) of each.
    pub fn delete_hosted_file(&self, file_id: &FileId) -> Result<Vec<(ChunkNo, u64)>, StoreError> {
        let key = file_id.digest();
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM hosted WHERE file_id = ?1 RETURNING chunk_no, size")?;
        let gone: Vec<(i64, i64)> = stmt
            .query_map([&key], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        self.conn
            .prepare_cached("DELETE FROM holders WHERE file_id = ?1")?
            .execute([&key])?;
        gone.into_iter()
            .map(|(no, size)| Ok((chunk_no_of(no)?, size as u64)))
            .collect()
    }

    /// The hosted chunks' cost against the quota, each chunk's size charged by `charge` (the
    /// store's: what the disk pays for it).
    pub fn used_bytes(&self, charge: impl Fn(u64) -> u64) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT size FROM hosted")?;
        let sizes = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        sizes.map(|s| Ok(charge(s? as u64))).sum()
    }

    // ---- holder sets ----------------------------------------------------------------------
}

impl Catalog {
    /// `--rebuild-catalog`: the chunks found on disk that the catalog does not know are hosted
    /// (with this peer, `me`, as their holder), and `notes` (meta key, value) are set, in one
    /// transaction. Returns how many rows were added.
    pub fn host_rebuilt(
        &self,
        rows: &[HostedRow],
        me: PeerId,
        notes: &[(&str, String)],
    ) -> Result<usize, StoreError> {
        self.atomically(|| {
            let mut added = 0;
            for row in rows {
                if self.hosted(&row.file_id, row.chunk_no)?.is_none() {
                    self.insert_hosted(row, &[me])?;
                    added += 1;
                }
            }
            for (key, value) in notes {
                self.set_meta(key, value)?;
            }
            Ok(added)
        })
    }
}
