//! The named verbs of `CatalogHandle` on what peers do: the chunks we host, who holds ours,
//! the peers heard and lost, and the deletes they owe. Each runs one `Catalog` method (its rule
//! is there) on the catalog thread and returns once it is committed.

use super::*;
use crate::engine::presence::HolderHeard;

impl CatalogHandle {
    // ---- hosted chunks -----------------------------------------------------------------

    /// What `chunk` is to this peer (ours, hosted, forgotten or unknown).
    pub async fn role(&self, chunk: &ChunkId) -> Result<ChunkRole, StoreError> {
        let c = chunk.clone();
        self.call(move |cat| cat.role(&c.file_id, c.chunk_no)).await
    }

    /// A chunk written for another peer is hosted, this peer (`me`) its first holder.
    pub async fn store_hosted(&self, row: HostedRow, me: PeerId) -> Result<(), StoreError> {
        self.call(move |cat| cat.insert_hosted(&row, &[me])).await
    }

    /// A hosted chunk's desired RD heard again (`Catalog::learn_hosted_rd`).
    pub async fn learn_hosted_rd(&self, chunk: &ChunkId, rd: u8) -> Result<bool, StoreError> {
        let c = chunk.clone();
        self.call(move |cat| cat.learn_hosted_rd(&c.file_id, c.chunk_no, rd))
            .await
    }

    /// The row of a hosted chunk.
    pub async fn hosted(&self, chunk: &ChunkId) -> Result<Option<HostedRow>, StoreError> {
        let c = chunk.clone();
        self.call(move |cat| cat.hosted(&c.file_id, c.chunk_no))
            .await
    }

    /// A hosted chunk is no longer hosted; returns its size if it was.
    pub async fn unhost(&self, chunk: &ChunkId) -> Result<Option<u64>, StoreError> {
        let c = chunk.clone();
        self.call(move |cat| cat.delete_hosted(&c.file_id, c.chunk_no))
            .await
    }

    /// Every hosted chunk of `file_id` is no longer hosted; returns them with their sizes.
    pub async fn unhost_file(&self, file_id: &FileId) -> Result<Vec<(ChunkNo, u64)>, StoreError> {
        let f = file_id.clone();
        self.call(move |cat| cat.delete_hosted_file(&f)).await
    }

    /// Every hosted chunk, with its perceived RD.
    pub async fn all_hosted(&self) -> Result<Vec<(HostedRow, u32)>, StoreError> {
        self.call(|cat| cat.all_hosted()).await
    }

    /// How many chunks are hosted.
    pub async fn hosted_count(&self) -> Result<usize, StoreError> {
        self.call(|cat| cat.hosted_count()).await
    }

    /// A page of hosted chunks after `after`, in order (`Catalog::hosted_page`).
    pub async fn hosted_page(
        &self,
        after: Option<ChunkId>,
        limit: Option<usize>,
    ) -> Result<Vec<(HostedRow, u32)>, StoreError> {
        self.call(move |cat| cat.hosted_page(after.as_ref(), limit))
            .await
    }

    /// The bytes hosted, each chunk counted as `charge` says (its place on disk).
    pub async fn used_bytes<F>(&self, charge: F) -> Result<u64, StoreError>
    where
        F: Fn(u64) -> u64 + Send + 'static,
    {
        self.call(move |cat| cat.used_bytes(charge)).await
    }

    /// `--rebuild-catalog`: the chunks found are hosted and `notes` set
    /// (`Catalog::host_rebuilt`).
    pub async fn host_rebuilt(
        &self,
        rows: Vec<HostedRow>,
        me: PeerId,
        notes: Vec<(&str, String)>,
    ) -> Result<usize, StoreError> {
        let notes: Vec<(String, String)> = (notes.into_iter())
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        self.call(move |cat| {
            let notes: Vec<(&str, String)> = (notes.iter())
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            cat.host_rebuilt(&rows, me, &notes)
        })
        .await
    }

    // ---- holders of our chunks -----------------------------------------------------------

    /// The peers known to hold `chunk`.
    pub async fn holders(&self, chunk: &ChunkId) -> Result<Vec<PeerId>, StoreError> {
        let c = chunk.clone();
        self.call(move |cat| cat.holders(&c.file_id, c.chunk_no))
            .await
    }

    /// `peer` no longer counts as a holder of `chunk`; returns its perceived RD now.
    pub async fn remove_holder(&self, chunk: &ChunkId, peer: PeerId) -> Result<u32, StoreError> {
        let c = chunk.clone();
        self.call(move |cat| cat.remove_holder(&c.file_id, c.chunk_no, peer))
            .await
    }

    /// A chunk's role and perceived RD once `gone` left its holders (`Catalog::role_and_rd`).
    pub async fn role_and_rd(
        &self,
        chunk: &ChunkId,
        gone: Option<PeerId>,
    ) -> Result<(ChunkRole, u32), StoreError> {
        let c = chunk.clone();
        self.call(move |cat| cat.role_and_rd(&c.file_id, c.chunk_no, gone))
            .await
    }

    /// The STOREDs heard, by chunk (`Catalog::record_storeds`).
    pub async fn record_storeds(
        &self,
        by_chunk: Vec<(ChunkId, Vec<PeerId>)>,
    ) -> Result<(), StoreError> {
        self.call(move |cat| cat.record_storeds(&by_chunk)).await
    }

    /// Chunks to ask holders to prove they hold (`Catalog::verify_samples`).
    pub async fn verify_samples(
        &self,
        per_holder: usize,
        max_holders: usize,
    ) -> Result<Vec<(PeerId, ChunkId, u64, String)>, StoreError> {
        self.call(move |cat| cat.verify_samples(per_holder, max_holders))
            .await
    }

    // ---- peers -------------------------------------------------------------------------

    /// The peers heard and their LAN-key marks (`Catalog::record_heard`).
    pub async fn record_heard(
        &self,
        heard: Vec<(PeerId, String, i64)>,
        marks: Vec<auth::Mark>,
    ) -> Result<(), StoreError> {
        self.call(move |cat| cat.record_heard(&heard, &marks)).await
    }

    /// The LAN-key marks of the peers heard.
    pub async fn auth_marks(&self) -> Result<Vec<auth::Mark>, StoreError> {
        self.call(|cat| cat.auth_marks()).await
    }

    /// A peer's chunk store incarnation heard (`Catalog::peer_incarnation`): Some(copies) when
    /// it is new and the copies it held no longer count.
    pub async fn peer_incarnation(
        &self,
        peer: PeerId,
        inc: String,
    ) -> Result<Option<u64>, StoreError> {
        self.call(move |cat| cat.peer_incarnation(peer, &inc)).await
    }

    /// Every holder, when last heard, and whether counted lost (`Catalog::holders_heard`).
    pub async fn holders_heard(&self) -> Result<Vec<HolderHeard>, StoreError> {
        self.call(|cat| cat.holders_heard()).await
    }

    /// The lost-holder round's writes for the holders counted lost (`Catalog::drop_lost_holders`).
    pub async fn drop_lost_holders(
        &self,
        lost: Vec<HolderHeard>,
        now_ms: i64,
        ack_deadline_ms: i64,
    ) -> Result<(Vec<(PeerId, u64)>, usize), StoreError> {
        self.call(move |cat| cat.drop_lost_holders(&lost, now_ms, ack_deadline_ms))
            .await
    }

    /// `peer` acknowledged the DELETE of `file_id`; true when it was the last one owed.
    pub async fn delete_acked(&self, file_id: &FileId, peer: PeerId) -> Result<bool, StoreError> {
        let f = file_id.clone();
        self.call(move |cat| cat.delete_acked(&f, peer)).await
    }

    /// At most `limit` deleted versions `peer` has not acknowledged.
    pub async fn unacked_deletes_for(
        &self,
        peer: PeerId,
        limit: usize,
    ) -> Result<Vec<FileId>, StoreError> {
        self.call(move |cat| cat.unacked_deletes_for(peer, limit))
            .await
    }

    /// Every peer, and what it does for us (`Catalog::peers_report`).
    pub async fn peers_report(&self) -> Result<Vec<PeerRow>, StoreError> {
        self.call(|cat| cat.peers_report()).await
    }
}
