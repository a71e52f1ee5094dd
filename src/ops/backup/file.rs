//! One file's backup: opened through a handle, its chunks cut, read and offered to the engine
//! within its job's credit, its version recorded as it goes and completed once every chunk is
//! confirmed; abandoned (and its partial version forgotten) if it changed meanwhile.

use super::*;

/// Whether the file stayed as it was from `before` (before reading) to `after`: same size,
/// mtime and ctime (every write moves ctime, and nobody can set it back). A ctime that moved
/// while size and mtime did not (a hard link made or renamed, a chmod — or a write followed by
/// `touch -r`) is decided by the content: `same_content` says whether the two reads of the file
/// (the scan and the chunks) agreed. Both stamps come from the handle (fstat).
pub(super) fn stable(before: &Stamp, after: &Stamp, same_content: bool) -> bool {
    before.size == after.size
        && before.mtime_ns == after.mtime_ns
        && (before.ctime_ns == after.ctime_ns || same_content)
}

pub(super) struct Scanned {
    /// The file as it was before it was read.
    pub(super) stamp: Stamp,
    pub(super) content_hash: String,
    /// Its first bytes look like ciphertext (`history::looks_random`).
    pub(super) random: bool,
    /// Whether it was the same after it was read (and as long as it said), leaving a moved
    /// ctime to the second read (`stable`).
    pub(super) stable: bool,
}

/// Reads the file once, for its content hash: at most one byte more than its size at open, so
/// that a file that reads longer than it says (one that grows, or a kernel's made-up file) is
/// found changed after a bounded read, never read without end.
pub(super) fn scan_file(file: File) -> std::io::Result<(File, Scanned)> {
    let stamp = Stamp::of(&file.metadata()?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    let mut bounded = (&file).take(stamp.size.saturating_add(1));
    let mut counts = [0u64; 256];
    loop {
        let n = bounded.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let sampled = (crate::history::SAMPLE_BYTES as u64).saturating_sub(size) as usize;
        for &b in &buf[..n.min(sampled)] {
            counts[usize::from(b)] += 1;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let scanned = Scanned {
        stamp,
        content_hash: hex(&hasher.finalize()),
        random: crate::history::looks_random(
            &counts,
            size.min(crate::history::SAMPLE_BYTES as u64),
        ),
        // A moved ctime alone is left to the second read (the chunks), compared with this one.
        stable: size == stamp.size && stable(&stamp, &Stamp::of(&file.metadata()?), true),
    };
    Ok((file, scanned))
}

/// Reads piece `no` of a `size`-byte file cut as `cut` says (short only for the last one).
pub(super) fn read_piece(
    file: &File,
    cut: Cut,
    size: u64,
    no: ChunkNo,
) -> std::io::Result<Vec<u8>> {
    let len = cut.piece_len(size, no.0).unwrap_or(0);
    let mut piece = vec![0u8; len];
    file.read_exact_at(&mut piece, cut.offset(no))?;
    Ok(piece)
}

/// Backs up the file at `path`, which the daemon opens itself (a watched file, or one it
/// repairs): below its watched folder (or `/`) no symlink is followed, so a user who owns a
/// folder there cannot swap in a link to a file it may not read.
pub(crate) async fn backup_file(
    node: &Arc<Node>,
    path: &Path,
    plan: Plan,
) -> Result<BackupReport, BackupError> {
    let base = node
        .config()
        .watch_of(path)
        .map_or(PathBuf::from("/"), |w| w.path.clone());
    let file = spawn_blocking({
        let path = path.to_path_buf();
        move || fsx::open_under(&base, &path, fsx::Kind::File)
    })
    .await??;
    backup_handle(node, path, file, plan).await
}

/// Backs up the open file `file` under the name `path`, unless it is already backed up at
/// `desired` (`standing`): then only its version is reported.
pub(crate) async fn backup_handle(
    node: &Arc<Node>,
    path: &Path,
    file: File,
    plan: Plan,
) -> Result<BackupReport, BackupError> {
    backup_handle_as(node, path, file, plan, None, None).await
}

/// `backup_handle`, under the fileId `named` if given (a catalog snapshot, whose fileId comes
/// from its slot), else the one its identity gives; with its bytes sent so far on `progress`
/// if given.
pub(crate) async fn backup_handle_as(
    node: &Arc<Node>,
    path: &Path,
    file: File,
    plan: Plan,
    named: Option<FileId>,
    progress: Option<&Progress>,
) -> Result<BackupReport, BackupError> {
    let rd = Rd::new(plan.desired).unwrap_or_else(|| Rd::new(1).expect("1 is a valid RD"));
    let master = match plan.encrypt {
        true => Some(node.master_key_or_make().ok_or(BackupError::NoMasterKey)?),
        false => None,
    };
    let cut = Cut::of(plan.encrypt);
    let (file, now) = spawn_blocking(move || {
        fsx::refuse_pseudo(&file)?;
        file.metadata().map(|m| (file, Stamp::of(&m)))
    })
    .await??;
    let standing = standing_of(node, path, now, rd.get(), plan.encrypt).await?;
    if let Standing::AtRd { version } = standing {
        tracing::debug!(
            "{} is already backed up at RD {rd} (version {version}): nothing to send",
            path.display()
        );
        return Ok(BackupReport {
            version,
            size: now.size,
            chunks: cut.count(now.size),
            below: 0,
            peers_heard: 0,
            changed: false,
            turned_random: false,
        });
    }
    tracing::debug!("reading {} to back it up", path.display());
    // Bounded memory whatever the files: large ones a few at a time, the others within a
    // budget of bytes.
    let _memory = if now.size > (READ_BATCH * CHUNK_SIZE) as u64 {
        node.large_backups.acquire().await
    } else {
        let kib = (now.size.div_ceil(1024) as u32).saturating_add(FILE_OVERHEAD_KIB);
        (node.small_backups)
            .acquire_many(kib.min(SMALL_FILES_MEMORY_KIB))
            .await
    }
    .map_err(|_| BackupError::Stopping)?;
    let (file, scanned) = spawn_blocking(move || scan_file(file)).await??;
    if !scanned.stable {
        // Being written: what was read is no version of the file. Nothing was recorded.
        return Err(BackupError::Changed);
    }
    let stamp = scanned.stamp;
    let scanned_random = scanned.random;
    let chunks = cut.count(stamp.size);
    if chunks > u64::from(crate::protocol::message::MAX_CHUNK_NO) + 1 {
        return Err(BackupError::TooLarge);
    }
    let identity = FileIdentity {
        peer: node.id,
        path: path.as_os_str().as_bytes(),
        size: stamp.size,
        mtime_ns: stamp.mtime_ns,
        content_hash: &scanned.content_hash,
    };
    // An encrypted attempt's fileId is random (`MasterKey::file_id`): a resumable version of
    // the same content is looked up by that content instead (`Catalog::sealed_version`).
    let (sealed, snapshot) = (named.is_none() && master.is_some(), named.is_some());
    let file_id = match (named, &master) {
        (Some(named), _) => named,
        (None, Some(master)) => master.file_id(&identity, &Attempt(rand::random())),
        (None, None) => identity.file_id(),
    };
    let row = FileRow {
        file_id: file_id.clone(),
        path: path.to_path_buf(),
        version: 0,
        size: stamp.size,
        mtime_ns: stamp.mtime_ns,
        mode: stamp.mode,
        content_hash: scanned.content_hash.clone(),
        desired_rd: rd.get(),
        complete: false,
        inode: stamp.inode,
        uid: stamp.uid,
        gid: stamp.gid,
        deleted_at: None,
        ctime_ns: stamp.ctime_ns,
        encrypted: plan.encrypt,
        key_fp: master.as_ref().map(MasterKey::fingerprint),
        completed_ms: None,
        random: scanned.random,
    };
    // The same content backed up again is the same version: resume it (only chunks below
    // their RD are sent again), under the RD asked now. Either way the path exists: its
    // versions no longer expire as deleted.
    let backup = BackupId::new();
    let Begun {
        file_id,
        version,
        resumed,
        was_complete,
        retouched,
        previous_random,
    } = (node.catalog)
        .begin_or_resume_version(row, sealed, backup)
        .await?;
    if retouched {
        tracing::info!(
            "{}: same content as its version {version}: no new version, its times, mode and owner noted",
            shown(path)
        );
    }
    let key = master.map(|m| Arc::new(m.file_key(&file_id)));

    let file = Arc::new(file);
    // Reading, hashing and recording chunks runs ahead of sending them, a few batches deep.
    let (ready_tx, mut ready) = mpsc::channel::<Prepared>(2 * READ_BATCH);
    let reader = tokio::spawn(prepare_chunks(
        node.clone(),
        Reading {
            file: file.clone(),
            file_id: file_id.clone(),
            size: stamp.size,
            cut,
            key: key.clone(),
        },
        resumed,
        ready_tx,
    ));
    // Chunks go to the engine as its window gives room (`Credit`); it says how each ended.
    let mut job = node.start_job(JobKind::Backup);
    let mut heard = std::collections::HashSet::new();
    let (mut sent, mut below, mut resent, mut unplaced) = (0u64, 0u64, 0u64, 0u64);
    let (mut credit, mut outstanding, mut reading) = (0usize, 0u64, true);
    while reading || outstanding > 0 {
        tokio::select! {
            next = ready.recv(), if reading && credit > 0 => {
                let Some(p) = next else {
                    reading = false;
                    continue;
                };
                let chunk = ChunkId {
                    file_id: file_id.clone(),
                    chunk_no: p.chunk_no,
                };
                let source = Source::File {
                    file: file.clone(),
                    offset: cut.offset(p.chunk_no),
                    len: p.piece_len,
                    hash: p.hash,
                    key: key.clone(),
                };
                node.engine(Input::BackupChunk {
                    job: job.id,
                    chunk,
                    rd,
                    body: p.body,
                    known: p.known,
                    source,
                });
                credit -= 1;
                outstanding += 1;
                sent += 1;
            }
            event = job.events.recv() => match event {
                Some(JobEvent::Credit(n)) => credit += n,
                Some(JobEvent::BackedUp(o)) => {
                    outstanding -= 1;
                    if let Some(progress) = progress {
                        let done = (sent - outstanding) * cut.piece();
                        meter(progress, done.min(stamp.size), stamp.size, Unit::Bytes);
                    }
                    heard.extend(o.holders.iter().copied().filter(|p| *p != node.id));
                    resent += u64::from(o.sends.saturating_sub(1));
                    if !o.reached {
                        below += 1;
                    }
                    // No peer took it, all its sends spent (not cut short by a change).
                    if o.stopped.is_none() && o.holders.iter().all(|p| *p == node.id) {
                        unplaced += 1;
                    }
                }
                Some(JobEvent::Fetched(..)) => {}
                // The engine stopped: the daemon is stopping. The version stays unfinished and
                // is resumed (only the missing chunks) by the next backup.
                None => return Err(BackupError::Stopping),
            },
        }
    }
    drop(job);
    // The file must have stayed as it was scanned: same bytes, same size, mtime and ctime from
    // before the first read to after the last (a ctime that alone moved is judged by the bytes:
    // both reads agreed, or the rehash check fails). Otherwise it is still being written (a copy the
    // kernel makes in one call sends no event for its whole length): try again once quiet.
    let checked = match reader.await? {
        Err(e) => Err(e),
        Ok(_) if sent != chunks => Err(BackupError::Changed),
        Ok((rehash, after)) => {
            let same_content = rehash == scanned.content_hash;
            match same_content && stable(&stamp, &after, same_content) {
                true => Ok(()),
                false => Err(BackupError::Changed),
            }
        }
    };
    if let Err(e) = checked {
        // A catalog snapshot's fileId (and key) comes from its slot: its version row stays,
        // so that the slot is never given back and sealed again with other bytes
        // (`Catalog::release_snapshot`).
        if matches!(e, BackupError::Changed) {
            let resumed = resumed || snapshot;
            abandon(node, path, &file_id, version, resumed, sealed, backup).await?;
        }
        return Err(e);
    }
    // Some chunks found no peer at all while others were stored: the peers are full. An
    // unfinished version is not kept half on them (its chunks are freed for the other files)
    // and the file is refused, not sent again and again (`service::queue`).
    if unplaced > 0 && !heard.is_empty() && !snapshot && !was_complete {
        let f = file_id.clone();
        let now_ms = unix_ms();
        let forgotten = node.catalog.forget(&f, Forget::DoesNotFit, now_ms).await?;
        if forgotten {
            tracing::info!(
                "{}: {unplaced} of {chunks} chunks found no peer with room: version {version} dropped from the peers",
                shown(path)
            );
            tokio::spawn(send_pending_deletes(node.clone()));
        }
        return Err(BackupError::DoesNotFit { size: stamp.size });
    }
    let recorded = (node.catalog)
        .complete_version(&file_id, stamp.inode, stamp.ctime_ns)
        .await?;
    if !recorded {
        return Err(BackupError::Deleted);
    }
    tracing::info!(
        "backed up {} ({chunks} chunks, {resent} PUTCHUNKs resent)",
        shown(path)
    );
    Ok(BackupReport {
        version,
        size: stamp.size,
        chunks,
        below,
        peers_heard: heard.len(),
        changed: !resumed && version > 1,
        turned_random: !resumed && scanned_random && previous_random == Some(false),
    })
}

/// A backup found the file changed while reading it. A version it resumed (complete or not) is
/// left exactly as it was; a version it inserted is forgotten (its chunks deleted from the peers)
/// — through `Catalog::forget`, which refuses anything else. An unfinished encrypted (`sealed`)
/// version it resumed is not resumed again: a chunk of it may now be recorded with the changed
/// bytes, and the next backup makes a new version under a key of its own.
pub(super) async fn abandon(
    node: &Arc<Node>,
    path: &Path,
    file_id: &FileId,
    version: u32,
    resumed: bool,
    sealed: bool,
    backup: BackupId,
) -> Result<(), BackupError> {
    if resumed {
        if sealed {
            node.catalog.stop_resuming(file_id).await?;
        }
        tracing::info!(
            "{} changed while being read: its version {version} is left as it was",
            path.display()
        );
        return Ok(());
    }
    let forgotten = (node.catalog)
        .forget(file_id, Forget::Abandoned { backup }, unix_ms())
        .await?;
    if forgotten {
        tracing::info!(
            "{} changed while being read: the version {version} begun is dropped",
            path.display()
        );
        tokio::spawn(send_pending_deletes(node.clone()));
    }
    Ok(())
}

/// A chunk read, hashed and recorded in the catalog, ready to be sent.
pub(super) struct Prepared {
    chunk_no: ChunkNo,
    body: Vec<u8>,
    /// The length of the file's piece it holds (its body's, unless encrypted).
    piece_len: usize,
    hash: String,
    known: Vec<PeerId>,
}

/// What `prepare_chunks` reads: the file, the version it is, and how its chunks are made.
pub(super) struct Reading {
    file: Arc<File>,
    file_id: FileId,
    size: u64,
    cut: Cut,
    /// The file's key when its chunks are encrypted.
    key: Option<Arc<FileKey>>,
}

/// Reads the file chunk by chunk, records each chunk's size and hash in the catalog (before its
/// first PUTCHUNK, so every STORED finds its chunk) and hands it on. Returns the content hash of
/// what it read, to be compared with the one the fileId was made from, and the file's stamp
/// right after the last read. A chunk recorded before with other bytes (a resumed version, and
/// the file changed since) stops it with `Changed` before that chunk is recorded or sent.
pub(super) async fn prepare_chunks(
    node: Arc<Node>,
    reading: Reading,
    resumed: bool,
    ready: mpsc::Sender<Prepared>,
) -> Result<(String, Stamp), BackupError> {
    let reading = Arc::new(reading);
    let chunks = reading.cut.count(reading.size);
    let mut rehash = Sha256::new();
    let mut next = 0u64;
    while next < chunks {
        let batch = (READ_BATCH as u64).min(chunks - next);
        // Read (and encrypted) away from the runtime; the content hash is of the plaintext.
        let (read, hashed) = spawn_blocking({
            let (r, first) = (reading.clone(), next);
            move || -> std::io::Result<_> {
                let mut read = Vec::with_capacity(batch as usize);
                for no in (first..first + batch).map(|no| ChunkNo(no as u32)) {
                    let piece = read_piece(&r.file, r.cut, r.size, no)?;
                    rehash.update(&piece);
                    let piece_len = piece.len();
                    let body = match &r.key {
                        Some(key) => key.seal(no, &piece),
                        None => piece,
                    };
                    let hash = sha256_hex(&body);
                    read.push((no, body, piece_len, hash));
                }
                Ok((read, rehash))
            }
        })
        .await??;
        rehash = hashed;
        let rows: Vec<(ChunkNo, u64, String)> = (read.iter())
            .map(|(no, body, _, hash)| (*no, body.len() as u64, hash.clone()))
            .collect();
        let known = (node.catalog)
            .record_chunks(&reading.file_id, rows, resumed)
            .await?;
        let same = known.len() == read.len();
        // Chunks up to the first one that differs are as recorded: they may still be sent.
        for ((chunk_no, body, piece_len, hash), known) in read.into_iter().zip(known) {
            let p = Prepared {
                chunk_no,
                body,
                piece_len,
                hash,
                known,
            };
            if ready.send(p).await.is_err() {
                return Err(BackupError::Changed);
            }
            next += 1;
        }
        if !same {
            return Err(BackupError::Changed);
        }
    }
    let file = reading.file.clone();
    let after = spawn_blocking(move || file.metadata()).await??;
    Ok((hex(&rehash.finalize()), Stamp::of(&after)))
}
