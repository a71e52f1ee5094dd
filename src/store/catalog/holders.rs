//! `file_chunks` and `holders`: the chunks of our versions, their hashes, and which peers hold
//! each (perceived RD, counted by triggers in `holder_counts`).

use super::*;

/// One chunk of a version this peer backed up, as recorded before its first PUTCHUNK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChunkRow {
    pub chunk_no: ChunkNo,
    pub size: u64,
    /// SHA-256 of its bytes: a restore takes only a CHUNK that matches.
    pub hash: String,
    /// Distinct peers known to hold it.
    pub perceived_rd: u32,
}

/// Most distinct holders recorded per chunk. A real LAN has far fewer peers than this; STOREDs
/// from more senders (forged ids) are ignored, so a flood cannot grow a holder set.
pub const MAX_HOLDERS: u32 = 64;

impl Catalog {
    /// Records a chunk of a version being backed up. A chunk already recorded keeps its record:
    /// returns false (and changes nothing) if it was recorded with other bytes — the file
    /// changed since that version was read, and the version must stay as it was.
    pub fn record_file_chunk(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        size: u64,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let known: Option<(i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT size, hash FROM file_chunks WHERE file_id = ?1 AND chunk_no = ?2",
            )?
            .query_row(params![&file_id, chunk_no.0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match known {
            Some((s, h)) => Ok(s as u64 == size && h == hash),
            None => {
                self.put_file_chunk(file_id, chunk_no, size, hash)?;
                Ok(true)
            }
        }
    }

    pub fn put_file_chunk(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        size: u64,
        hash: &str,
    ) -> Result<(), StoreError> {
        self.conn.prepare_cached("INSERT INTO file_chunks (file_id, chunk_no, size, hash) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (file_id, chunk_no) DO UPDATE SET size = excluded.size, hash = excluded.hash")?.execute(params![&file_id, chunk_no.0, size as i64, hash],
        )?;
        Ok(())
    }

    /// (chunkNo, size, hash, perceived RD) of every chunk of one of our files.
    pub fn file_chunks(&self, file_id: &FileId) -> Result<Vec<FileChunkRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.chunk_no, c.size, c.hash,
                    COALESCE((SELECT n FROM holder_counts h WHERE h.file_id = c.file_id AND h.chunk_no = c.chunk_no), 0)
             FROM file_chunks c WHERE c.file_id = ?1 ORDER BY c.chunk_no",
        )?;
        let rows = stmt.query_map([&file_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?;
        rows.map(|r| {
            let (no, size, hash, perceived_rd) = r?;
            Ok(FileChunkRow {
                chunk_no: chunk_no_of(no)?,
                size: size as u64,
                hash,
                perceived_rd,
            })
        })
        .collect()
    }

    /// The lowest perceived RD over a file's chunks (0 when a chunk has no holder).
    pub fn min_perceived_rd(&self, file_id: &FileId) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COALESCE(MIN(COALESCE((SELECT n FROM holder_counts h
                                  WHERE h.file_id = c.file_id AND h.chunk_no = c.chunk_no), 0)), 0)
             FROM file_chunks c WHERE c.file_id = ?1",
            )?
            .query_row([&file_id], |r| r.get(0))?)
    }

    /// Records that `peer` holds a chunk, if the chunk is ours or hosted here (others' chunks are
    /// not our business in 1.0). Returns the perceived RD after the update, or None if ignored.
    pub fn add_holder(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        peer: PeerId,
    ) -> Result<Option<u32>, StoreError> {
        self.add_holders(file_id, chunk_no, &[peer])
    }

    /// Records the STOREDs heard from `peers` for one chunk, if the chunk is ours or hosted here
    /// (others' chunks are not our business in 1.0), up to `MAX_HOLDERS` distinct holders.
    /// Returns the perceived RD after the update, or None if ignored.
    pub fn add_holders(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        peers: &[PeerId],
    ) -> Result<Option<u32>, StoreError> {
        let key = file_id.digest();
        let known: bool = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM file_chunks WHERE file_id = ?1 AND chunk_no = ?2)
                 OR EXISTS (SELECT 1 FROM hosted WHERE file_id = ?1 AND chunk_no = ?2)",
            )?
            .query_row(params![key, chunk_no.0], |r| r.get(0))?;
        if !known {
            return Ok(None);
        }
        self.insert_holders(&key, chunk_no, peers).map(Some)
    }

    /// Inserts holders up to the cap; returns the perceived RD after.
    pub(super) fn insert_holders(
        &self,
        key: &[u8; 32],
        chunk_no: ChunkNo,
        peers: &[PeerId],
    ) -> Result<u32, StoreError> {
        let mut perceived: u32 = self
            .conn
            .prepare_cached("SELECT n FROM holder_counts WHERE file_id = ?1 AND chunk_no = ?2")?
            .query_row(params![key, chunk_no.0], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let mut insert = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO holders (file_id, chunk_no, peer) VALUES (?1, ?2, ?3)",
        )?;
        for peer in peers {
            if perceived >= MAX_HOLDERS {
                break; // a peer already in the set stays there; a new one is not recorded
            }
            perceived += insert.execute(params![key, chunk_no.0, peer.0])? as u32;
        }
        Ok(perceived)
    }

    /// Removes `peer` from a chunk's holder set; returns the perceived RD after the update.
    pub fn remove_holder(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        peer: PeerId,
    ) -> Result<u32, StoreError> {
        self.conn
            .prepare_cached(
                "DELETE FROM holders WHERE file_id = ?1 AND chunk_no = ?2 AND peer = ?3",
            )?
            .execute(params![&file_id, chunk_no.0, peer.0])?;
        self.perceived(file_id, chunk_no)
    }

    pub fn holders(&self, file_id: &FileId, chunk_no: ChunkNo) -> Result<Vec<PeerId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT peer FROM holders WHERE file_id = ?1 AND chunk_no = ?2 ORDER BY peer",
        )?;
        let rows = stmt.query_map(params![&file_id, chunk_no.0], |r| r.get(0))?;
        rows.map(|r| Ok(PeerId(r?))).collect()
    }

    /// A chunk's perceived RD (kept by the triggers: no recount).
    pub fn perceived(&self, file_id: &FileId, chunk_no: ChunkNo) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT n FROM holder_counts WHERE file_id = ?1 AND chunk_no = ?2")?
            .query_row(params![&file_id, chunk_no.0], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    // ---- peers: when heard, when lost, what they owe us ----------------------------------

    /// 2.0: up to `per_holder` random chunks of our own files counted at each of up to
    /// `max_holders` holders that announced an incarnation (peerstash 2.0 peers: the ones that
    /// answer PROVE) and are not counted lost: `(holder, chunk, size, hash)`.
    pub fn verify_samples(
        &self,
        per_holder: usize,
        max_holders: usize,
    ) -> Result<Vec<(PeerId, ChunkId, u64, String)>, StoreError> {
        let holders: Vec<u32> = self
            .conn
            .prepare_cached(
                "SELECT id FROM peers WHERE incarnation IS NOT NULL AND lost_at IS NULL
                 AND EXISTS (SELECT 1 FROM holders WHERE peer = peers.id)
                 ORDER BY random() LIMIT ?1",
            )?
            .query_map([max_holders as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // A random row of the holder's, found by a seek along the index on (peer, rowid) from a
        // random rowid (wrapping to the start): no sort of all its rows.
        let max_rowid: i64 = (self.conn)
            .prepare_cached("SELECT COALESCE(MAX(rowid), 0) FROM holders")?
            .query_row([], |r| r.get(0))?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT h.file_id, h.chunk_no, c.size, c.hash FROM holders h
             JOIN file_chunks c ON c.file_id = h.file_id AND c.chunk_no = h.chunk_no
             WHERE h.peer = ?1 AND h.rowid >= ?2 ORDER BY h.rowid LIMIT 1",
        )?;
        let mut out = Vec::new();
        for peer in holders {
            let mut picked: Vec<(FileId, i64)> = Vec::new();
            for _ in 0..per_holder * 3 {
                let from = (rand::random::<u64>() >> 1) as i64 % (max_rowid + 1);
                let mut row = |start: i64| {
                    stmt.query_row(params![peer, start], |r| {
                        Ok((
                            r.get::<_, FileId>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    })
                    .optional()
                };
                let found = match row(from)? {
                    Some(found) => Some(found),
                    None => row(0)?,
                };
                let Some((file_id, chunk_no, size, hash)) = found else {
                    break; // it holds none of our chunks
                };
                if picked.contains(&(file_id.clone(), chunk_no)) {
                    continue;
                }
                picked.push((file_id.clone(), chunk_no));
                let chunk = ChunkId {
                    file_id,
                    chunk_no: chunk_no_of(chunk_no)?,
                };
                out.push((PeerId(peer), chunk, size as u64, hash));
                if picked.len() >= per_holder {
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl Catalog {
    /// A batch of chunks read for `file_id`, recorded in order (`record_file_chunk`) until
    /// the first that differs from what is recorded; for each recorded one, its known holders
    /// when the version is `resumed` (else none). One transaction.
    pub fn record_chunks(
        &self,
        file_id: &FileId,
        rows: &[(ChunkNo, u64, String)],
        resumed: bool,
    ) -> Result<Vec<Vec<PeerId>>, StoreError> {
        self.atomically(|| {
            let mut known = Vec::with_capacity(rows.len());
            for (no, size, hash) in rows {
                if !self.record_file_chunk(file_id, *no, *size, hash)? {
                    break;
                }
                known.push(match resumed {
                    true => self.holders(file_id, *no)?,
                    false => Vec::new(),
                });
            }
            Ok(known)
        })
    }

    /// The STOREDs heard in a moment, by chunk: each chunk's new holders added. A chunk that
    /// cannot be recorded is logged and skipped: the others still count.
    pub fn record_storeds(&self, by_chunk: &[(ChunkId, Vec<PeerId>)]) -> Result<(), StoreError> {
        for (c, peers) in by_chunk {
            if let Err(e) = self.add_holders(&c.file_id, c.chunk_no, peers) {
                tracing::warn!("could not record the STOREDs of {c}: {e}");
            }
        }
        Ok(())
    }

    /// A chunk's role and its perceived RD now, once `gone` (a REMOVED's sender) is taken out
    /// of its holders; `gone` None: only look. A chunk neither ours nor hosted counts 0. One
    /// transaction.
    pub fn role_and_rd(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        gone: Option<PeerId>,
    ) -> Result<(ChunkRole, u32), StoreError> {
        self.atomically(|| {
            let role = self.role(file_id, chunk_no)?;
            let perceived = match (role, gone) {
                (ChunkRole::Unknown | ChunkRole::Forgotten, _) => 0,
                (_, Some(peer)) => self.remove_holder(file_id, chunk_no, peer)?,
                (_, None) => self.perceived(file_id, chunk_no)?,
            };
            Ok((role, perceived))
        })
    }

    /// A version to repair: its row, and each chunk below its RD that some holder is known for
    /// (a chunk with none has nobody to be fetched from) with those holders. None: the version
    /// is gone.
    #[allow(clippy::type_complexity)]
    pub fn chunks_to_repair(
        &self,
        file_id: &FileId,
    ) -> Result<Option<(FileRow, Vec<(FileChunkRow, Vec<PeerId>)>)>, StoreError> {
        let Some(row) = self.file(file_id)? else {
            return Ok(None);
        };
        let mut below = Vec::new();
        for chunk in self.file_chunks(file_id)? {
            if (1..u32::from(row.desired_rd)).contains(&chunk.perceived_rd) {
                let holders = self.holders(file_id, chunk.chunk_no)?;
                below.push((chunk, holders));
            }
        }
        Ok(Some((row, below)))
    }
}
