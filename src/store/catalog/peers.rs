//! The `peers` table (who was heard, when, with which protocol and LAN-key mark; lost
//! holders; incarnations) and `delete_acks` (the DELETEs each holder has yet to confirm).

use super::*;
use crate::engine::presence::HolderHeard;

/// One peer as `peerstash peers` lists it (`Catalog::peers_report`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRow {
    pub id: PeerId,
    /// The highest protocol version heard from it ("1.0", "2.0"); empty if never heard.
    pub protocol: String,
    /// Unix ms of its latest message heard; None if never heard.
    pub last_heard_ms: Option<i64>,
    /// Unix ms since when it is counted lost (silent longer than `peer.holder_timeout`).
    pub lost_at_ms: Option<i64>,
    /// Chunks of our own files it holds (holder rows).
    pub chunks_of_ours: u64,
    /// Bytes of its chunks we host (those whose PUTCHUNK it sent).
    pub hosted_bytes: u64,
    /// Deleted versions of ours it has not acknowledged.
    pub unacked_deletes: u64,
}

/// Most rows of `peers` that `heard_peers` lets grow by peers holding nothing of ours: any
/// datagram names a sender id, so a flood of forged ids must not grow the table without end.
pub const MAX_PEER_ROWS: u64 = 4096;

impl Catalog {
    /// Records the peers heard since the last call: `(peer, the protocol version it is known to
    /// speak ("1.0", "2.0"; '' not known yet: `daemon::heard`), unix ms when heard)`, in one
    /// transaction. Each peer keeps its latest time and the highest version it ever spoke, and
    /// is no longer lost. A
    /// peer not yet in the table is added only while the table has fewer than `MAX_PEER_ROWS`
    /// rows, or if it holds chunks of ours or hosted here (sender ids are easily forged).
    pub fn heard_peers(&self, heard: &[(PeerId, String, i64)]) -> Result<(), StoreError> {
        self.atomically(|| {
            let mut rows: u64 = self
                .conn
                .prepare_cached("SELECT COUNT(*) FROM peers")?
                .query_row([], |r| r.get::<_, i64>(0))? as u64;
            // Versions are "<digit>.<digit>": text order is version order.
            let mut update = self.conn.prepare_cached(
                "UPDATE peers SET last_heard = MAX(last_heard, ?2),
                                  protocol = MAX(protocol, ?3), lost_at = NULL
                 WHERE id = ?1",
            )?;
            let mut holds = self
                .conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM holders WHERE peer = ?1)")?;
            let mut insert = self.conn.prepare_cached(
                "INSERT INTO peers (id, protocol, last_heard) VALUES (?1, ?3, ?2)",
            )?;
            for (peer, protocol, at) in heard {
                let values = params![peer.0, at, protocol];
                if update.execute(values)? == 1 {
                    continue;
                }
                if rows >= MAX_PEER_ROWS && !holds.query_row([peer.0], |r| r.get::<_, bool>(0))? {
                    continue;
                }
                insert.execute(values)?;
                rows += 1;
            }
            Ok(())
        })
    }

    /// LAN key: keeps each peer's newest AUTH time taken (`auth::ReplayGuard`), so that what was
    /// taken before a restart is refused after it. Written as given (a mark capped after a
    /// clock set wrong goes down); a peer without a row (`heard_peers` did not add it) is left
    /// out.
    pub fn record_auth_marks(&self, marks: &[auth::Mark]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        self.atomically(|| {
            let mut update = self.conn.prepare_cached(
                "UPDATE peers SET auth_mark = ?2, auth_mark_at = ?3 WHERE id = ?1",
            )?;
            let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
            for m in marks {
                update.execute(params![m.sender.0, secs(m.mark), secs(m.marked_at)])?;
            }
            Ok(())
        })
    }

    /// The marks `record_auth_marks` kept, for `auth::ReplayGuard::load` at start.
    pub fn auth_marks(&self) -> Result<Vec<auth::Mark>, StoreError> {
        let secs = |s: i64| u64::try_from(s).unwrap_or(0);
        let marks = self
            .conn
            .prepare_cached("SELECT id, auth_mark, auth_mark_at FROM peers WHERE auth_mark > 0")?
            .query_map([], |r| {
                Ok(auth::Mark {
                    sender: PeerId(r.get(0)?),
                    mark: secs(r.get(1)?),
                    marked_at: secs(r.get(2)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(marks)
    }

    /// 2.0: `peer` announced its store's incarnation `inc`. Recorded; if it differs from the
    /// one recorded, the store it had is gone: the peer leaves every holder set (it is not
    /// counted lost: it is alive). Returns how many holder rows it left (None: not changed).
    /// A peer without a row gets one only as `heard_peers` would add it.
    pub fn peer_incarnation(&self, peer: PeerId, inc: &str) -> Result<Option<u64>, StoreError> {
        self.atomically(|| {
            let known: Option<Option<String>> = self
                .conn
                .prepare_cached("SELECT incarnation FROM peers WHERE id = ?1")?
                .query_row([peer.0], |r| r.get(0))
                .optional()?;
            match known {
                Some(Some(k)) if k == inc => return Ok(None),
                Some(_) => {}
                None => {
                    let rows: i64 = (self.conn.prepare_cached("SELECT COUNT(*) FROM peers")?)
                        .query_row([], |r| r.get(0))?;
                    let holds: bool = (self.conn)
                        .prepare_cached("SELECT EXISTS (SELECT 1 FROM holders WHERE peer = ?1)")?
                        .query_row([peer.0], |r| r.get(0))?;
                    if rows as u64 >= MAX_PEER_ROWS && !holds {
                        return Ok(None);
                    }
                    (self.conn.prepare_cached(
                        "INSERT INTO peers (id, protocol, last_heard) VALUES (?1, '', 0)",
                    )?)
                    .execute([peer.0])?;
                }
            }
            (self
                .conn
                .prepare_cached("UPDATE peers SET incarnation = ?2 WHERE id = ?1")?)
            .execute(params![peer.0, inc])?;
            let Some(Some(_)) = known else {
                return Ok(None); // the first one heard: nothing to compare with
            };
            let removed = (self
                .conn
                .prepare_cached("DELETE FROM holders WHERE peer = ?1")?)
            .execute([peer.0])?;
            Ok(Some(removed as u64))
        })
    }

    /// Every peer holding chunks (of ours or hosted here), by id, with its latest message
    /// recorded and whether it is counted lost: the facts `engine::presence::lost_holders`
    /// decides on. This peer is itself a holder of every chunk it hosts (it never hears itself).
    pub fn holders_heard(&self) -> Result<Vec<HolderHeard>, StoreError> {
        // The distinct holders by hopping along the index on peer: one lookup per peer, not a
        // scan of every holder row.
        let mut stmt = self.conn.prepare_cached(
            "WITH RECURSIVE holder (peer) AS (
                 SELECT MIN(peer) FROM holders
                 UNION ALL
                 SELECT (SELECT MIN(peer) FROM holders WHERE peer > holder.peer)
                 FROM holder WHERE holder.peer IS NOT NULL
             )
             SELECT h.peer, p.last_heard, p.lost_at IS NOT NULL
             FROM holder h LEFT JOIN peers p ON p.id = h.peer
             WHERE h.peer IS NOT NULL
             ORDER BY h.peer",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(HolderHeard {
                peer: PeerId(r.get(0)?),
                // 0: a row made when it was counted lost or announced its store, never heard.
                last_heard: r.get::<_, Option<i64>>(1)?.filter(|&t| t != 0),
                lost: r.get::<_, Option<bool>>(2)?.unwrap_or(false),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts `peer` lost at `now_ms`, in one transaction: it leaves every holder set (of our
    /// chunks and of hosted ones; the perceived RDs follow), and its row says since when it is
    /// lost (the first time, until it is heard again). Returns how many holder rows it left.
    pub fn drop_lost_holder(&self, peer: PeerId, now_ms: i64) -> Result<u64, StoreError> {
        self.atomically(|| {
            let removed = self
                .conn
                .prepare_cached("DELETE FROM holders WHERE peer = ?1")?
                .execute([peer.0])?;
            self.conn
                .prepare_cached(
                    "INSERT INTO peers (id, protocol, last_heard, lost_at) VALUES (?1, '', 0, ?2)
                 ON CONFLICT (id) DO UPDATE SET lost_at = COALESCE(lost_at, excluded.lost_at)",
                )?
                .execute(params![peer.0, now_ms])?;
            Ok(removed as u64)
        })
    }

    /// `peer` acknowledged the DELETE of a version of ours (DELETED): it owes nothing more for
    /// it. True if it was still owed.
    pub fn delete_acked(&self, file_id: &FileId, peer: PeerId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM delete_acks WHERE file_id = ?1 AND peer = ?2")?
            .execute(params![&file_id, peer.0])?
            == 1)
    }

    /// Up to `limit` versions of ours whose DELETE `peer` has not acknowledged, oldest first:
    /// what to send it again when it says HELLO.
    pub fn unacked_deletes_for(
        &self,
        peer: PeerId,
        limit: usize,
    ) -> Result<Vec<FileId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT file_id FROM delete_acks WHERE peer = ?1 ORDER BY since, file_id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![peer.0, limit as i64], |r| r.get::<_, FileId>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Gives up on the acknowledgements owed since before `older_than_ms` (the delete deadline
    /// passed: a peer that never answers, a 1.0 peer). Returns how many were dropped.
    pub fn expire_delete_acks(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM delete_acks WHERE since < ?1")?
            .execute([older_than_ms])?)
    }

    /// Acknowledgements still owed: (version, peer) pairs.
    pub fn unacked_delete_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM delete_acks")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Other peers ever heard, and of those counted lost now.
    pub fn peers_heard_lost(&self) -> Result<(u64, u64), StoreError> {
        // As `peers_report` counts them (last_heard 0: never heard), without its walk over
        // every holder.
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(last_heard != 0), 0), COALESCE(SUM(lost_at IS NOT NULL), 0)
                 FROM peers",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    /// Every peer heard, counted lost, holding chunks of our own files, sending the chunks we
    /// host, or owing a delete acknowledgement, ordered by id, with what it does for us and we
    /// for it.
    pub fn peers_report(&self) -> Result<Vec<PeerRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "WITH own (id, n) AS (
                 SELECT h.peer, COUNT(*) FROM holders h
                 WHERE h.file_id IN (SELECT file_id FROM files) GROUP BY h.peer
             ),
             sent (id, bytes) AS (
                 SELECT sender, SUM(size) FROM hosted WHERE sender != 0 GROUP BY sender
             ),
             owed (id, n) AS (SELECT peer, COUNT(*) FROM delete_acks GROUP BY peer),
             ids (id) AS (
                 SELECT id FROM peers UNION SELECT id FROM own
                 UNION SELECT id FROM sent UNION SELECT id FROM owed
             )
             SELECT ids.id, p.protocol, p.last_heard, p.lost_at,
                    COALESCE(own.n, 0), COALESCE(sent.bytes, 0), COALESCE(owed.n, 0)
             FROM ids
             LEFT JOIN peers p ON p.id = ids.id
             LEFT JOIN own ON own.id = ids.id
             LEFT JOIN sent ON sent.id = ids.id
             LEFT JOIN owed ON owed.id = ids.id
             ORDER BY ids.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PeerRow {
                id: PeerId(r.get(0)?),
                protocol: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                // 0: a row made when it was counted lost, never heard.
                last_heard_ms: r.get::<_, Option<i64>>(2)?.filter(|&t| t != 0),
                lost_at_ms: r.get(3)?,
                chunks_of_ours: r.get::<_, i64>(4)? as u64,
                hosted_bytes: r.get::<_, i64>(5)? as u64,
                unacked_deletes: r.get::<_, i64>(6)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Catalog {
    /// The peers heard in a moment (`heard_peers`) and the LAN-key marks of their latest
    /// datagrams (`record_auth_marks`), in one transaction.
    pub fn record_heard(
        &self,
        heard: &[(PeerId, String, i64)],
        marks: &[auth::Mark],
    ) -> Result<(), StoreError> {
        self.atomically(|| {
            self.heard_peers(heard)?;
            self.record_auth_marks(marks)
        })
    }

    /// The lost-holder round's writes, once `engine::presence::lost_holders` chose from
    /// `holders_heard`: each peer of `lost` leaves every holder set (`drop_lost_holder`), unless
    /// it was heard since it was read (the next look decides on it); then the deletes
    /// unacknowledged since before `ack_deadline_ms` are no longer waited for. Returns each peer
    /// counted lost with the chunk copies it held, and how many acks expired. One transaction.
    pub fn drop_lost_holders(
        &self,
        lost: &[HolderHeard],
        now_ms: i64,
        ack_deadline_ms: i64,
    ) -> Result<(Vec<(PeerId, u64)>, usize), StoreError> {
        self.atomically(|| {
            let mut last_heard = self
                .conn
                .prepare_cached("SELECT last_heard FROM peers WHERE id = ?1")?;
            let mut dropped = Vec::new();
            for h in lost {
                let now_heard: Option<i64> = (last_heard.query_row([h.peer.0], |r| r.get(0)))
                    .optional()?
                    .flatten()
                    .filter(|&t| t != 0);
                if now_heard != h.last_heard {
                    continue;
                }
                dropped.push((h.peer, self.drop_lost_holder(h.peer, now_ms)?));
            }
            let expired = self.expire_delete_acks(ack_deadline_ms)?;
            Ok((dropped, expired))
        })
    }
}
