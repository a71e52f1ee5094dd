//! `CatalogHandle`: the catalog's own thread. Calls queued at the same moment run in one
//! transaction (a savepoint each) and their results are handed back only after COMMIT.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::*;

pub(super) type Deliver = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A queued call: run on the catalog (Some), or failed unrun (None) when its batch could not
/// begin; either way it returns whether it succeeded and how to hand over its result.
pub(super) type Job = Box<dyn FnOnce(Option<&Catalog>) -> (bool, Deliver) + Send>;

/// Read-only connections (`CatalogHandle::read`) open at once.
pub(super) const READERS: usize = 2;

/// Most calls committed in one transaction.
pub(super) const MAX_BATCH: usize = 512;

/// Async access to the catalog, cheap to clone. Results are delivered only after the
/// transaction holding them committed, so "recorded" means "on disk".
#[derive(Clone)]
pub struct CatalogHandle {
    tx: std_mpsc::Sender<Job>,
    /// The catalog's file, for `read`.
    path: PathBuf,
    readers: Arc<tokio::sync::Semaphore>,
    /// Asks the thread to merge the write-ahead log after its next commit (outside any
    /// transaction, where SQLite allows it).
    checkpoint: Arc<AtomicBool>,
}

impl CatalogHandle {
    pub fn start(catalog: Catalog) -> CatalogHandle {
        let (tx, rx) = std_mpsc::channel::<Job>();
        let checkpoint = Arc::new(AtomicBool::new(false));
        let flag = checkpoint.clone();
        let path = catalog.path.clone();
        std::thread::Builder::new()
            .name("catalog".into())
            .spawn(move || run(catalog, rx, flag))
            .expect("spawning the catalog thread");
        CatalogHandle {
            tx,
            checkpoint,
            path,
            readers: Arc::new(tokio::sync::Semaphore::new(READERS)),
        }
    }

    /// Runs `f` on a read-only connection of its own, in one read transaction, off the
    /// catalog's thread: WAL lets it read one consistent state while the thread goes on
    /// committing. For the long reads (`status`, `state`, the metrics: a walk over every file)
    /// that would otherwise hold up every write. At most `READERS` at once.
    pub(super) async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Catalog) -> Result<R, StoreError> + Send + 'static,
    {
        let _permit = self
            .readers
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            use rusqlite::OpenFlags;
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.execute_batch("BEGIN")?;
            let catalog = Catalog { conn, path };
            let read = f(&catalog);
            let _ = catalog.conn.execute_batch("COMMIT");
            read
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Merges the write-ahead log into the database file (at a clean stop: the file alone is
    /// then the whole catalog, for a copy or a check). Returns once done.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.checkpoint.store(true, Ordering::SeqCst);
        self.call(|_| Ok(())).await
    }

    /// Runs `f` on the catalog thread, in a savepoint of the batch's transaction; its result is
    /// handed back once that transaction committed. Private to the catalog: callers outside it
    /// use the named verbs (`verbs_own`, `verbs_peer`), so each rule lives in one `Catalog`
    /// method.
    pub(super) async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Catalog) -> Result<R, StoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |cat| {
            let r = match cat {
                Some(cat) => f(cat),
                None => Err(StoreError::Commit("the batch could not begin".into())),
            };
            let ok = r.is_ok();
            let deliver: Deliver = Box::new(move |commit| {
                let _ = done.send(commit.and(r));
            });
            (ok, deliver)
        });
        self.tx.send(job).map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}

pub(super) fn run(catalog: Catalog, rx: std_mpsc::Receiver<Job>, checkpoint: Arc<AtomicBool>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut delivers = Vec::with_capacity(jobs.len());
        if let Err(e) = catalog.conn.execute_batch("BEGIN IMMEDIATE") {
            // Outside a transaction each write would commit on its own while being reported
            // failed: fail the whole batch without running it.
            tracing::error!("catalog: cannot begin a transaction: {e}");
            for job in jobs {
                let (_, deliver) = job(None);
                deliver(Err(StoreError::batch("cannot begin a transaction", &e)));
            }
            continue;
        }
        for job in jobs {
            // A failing call must not undo the others in its batch.
            let _ = catalog.conn.execute_batch("SAVEPOINT call");
            let (ok, deliver) = job(Some(&catalog));
            if !ok {
                let _ = catalog.conn.execute_batch("ROLLBACK TO call");
            }
            let _ = catalog.conn.execute_batch("RELEASE call");
            delivers.push(deliver);
        }
        let committed = catalog.conn.execute_batch("COMMIT").map_err(|e| {
            let _ = catalog.conn.execute_batch("ROLLBACK");
            tracing::error!("catalog commit failed: {e}");
            (is_disk_full(&e), e.to_string())
        });
        if checkpoint.swap(false, Ordering::SeqCst) {
            if let Err(e) = catalog.checkpoint() {
                tracing::warn!("cannot merge the catalog's log into it: {e}");
            }
        }
        for deliver in delivers {
            deliver(committed.clone().map_err(|(full, e)| match full {
                true => StoreError::DiskFull(e),
                false => StoreError::Commit(e),
            }));
        }
    }
}
