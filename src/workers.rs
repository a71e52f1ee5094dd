//! The daemon's background workers and what each is doing (Garage's idea): every worker (the
//! queue's, the watcher, repair, expiry, status) says when it is busy and with what, when it is
//! idle again, and when its work failed; `peerstash state` lists them. Only a report: the work
//! itself, and what must survive a restart, is in the catalog.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::control::WorkerInfo;

/// What a worker is doing, as last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerState {
    Idle,
    Busy {
        what: String,
        /// The path it works on (shown to root only).
        path: Option<PathBuf>,
        since: Instant,
    },
    /// Its last work failed, and every one since: `since` is the first failure in a row.
    Failing {
        error: String,
        path: Option<PathBuf>,
        since: Instant,
    },
}

impl WorkerState {
    pub fn name(&self) -> &'static str {
        match self {
            WorkerState::Idle => "idle",
            WorkerState::Busy { .. } => "busy",
            WorkerState::Failing { .. } => "failing",
        }
    }

    /// How long it has been in this state (nothing for idle).
    pub fn for_how_long(&self, now: Instant) -> Option<Duration> {
        match self {
            WorkerState::Idle => None,
            WorkerState::Busy { since, .. } | WorkerState::Failing { since, .. } => {
                Some(now.saturating_duration_since(*since))
            }
        }
    }
}

struct Entry {
    id: u64,
    name: String,
    state: WorkerState,
    /// When the current run of failures began: kept while the worker is busy again, so a worker
    /// that keeps failing reports the first failure's time.
    failing_since: Option<Instant>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// In the order the workers were registered.
    entries: Vec<Entry>,
}

/// The registry, shared by the workers (each through its `Worker`) and `state`.
#[derive(Clone, Default)]
pub struct Workers(Arc<Mutex<Registry>>);

impl Workers {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Every update is a single assignment: a poisoned lock is consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a worker, idle; it stays listed until its `Worker` is dropped.
    pub fn register(&self, name: impl Into<String>) -> Worker {
        let mut r = self.lock();
        let id = r.next_id;
        r.next_id += 1;
        r.entries.push(Entry {
            id,
            name: name.into(),
            state: WorkerState::Idle,
            failing_since: None,
        });
        Worker {
            workers: self.clone(),
            id,
        }
    }

    /// Every worker's name and state, in the order they were registered.
    /// The workers by name (the same order whatever order they started in).
    pub fn list(&self) -> Vec<(String, WorkerState)> {
        let mut list: Vec<(String, WorkerState)> = (self.lock().entries.iter())
            .map(|e| (e.name.clone(), e.state.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// The workers as `state` shows them at `now`; paths only `with_paths` (root's business).
    pub fn report(&self, with_paths: bool, now: Instant) -> Vec<WorkerInfo> {
        self.list()
            .into_iter()
            .map(|(name, state)| {
                let since_s = state.for_how_long(now).map(|d| d.as_secs());
                let mut info = WorkerInfo {
                    name,
                    state: state.name().to_owned(),
                    what: None,
                    error: None,
                    path: None,
                    since_s,
                };
                match state {
                    WorkerState::Idle => {}
                    WorkerState::Busy { what, path, .. } => {
                        info.what = Some(what);
                        info.path = path.filter(|_| with_paths);
                    }
                    WorkerState::Failing { error, path, .. } => {
                        info.error = Some(error);
                        info.path = path.filter(|_| with_paths);
                    }
                }
                info
            })
            .collect()
    }
}

/// One worker's handle for reporting what it does.
pub struct Worker {
    workers: Workers,
    id: u64,
}

impl Worker {
    fn update(&self, f: impl FnOnce(&mut Entry)) {
        let mut r = self.workers.lock();
        if let Some(e) = r.entries.iter_mut().find(|e| e.id == self.id) {
            f(e);
        }
    }

    /// Starts working on `what` (and `path`, if it concerns one).
    pub fn busy(&self, what: &str, path: Option<&Path>) {
        self.busy_at(what, path, Instant::now());
    }

    /// Its work ended well: idle, and no longer failing.
    pub fn idle(&self) {
        self.update(|e| {
            e.state = WorkerState::Idle;
            e.failing_since = None;
        });
    }

    /// Its work ended with `error` (about `path`, if it concerns one).
    pub fn failed(&self, error: &str, path: Option<&Path>) {
        self.failed_at(error, path, Instant::now());
    }

    fn busy_at(&self, what: &str, path: Option<&Path>, now: Instant) {
        self.update(|e| {
            e.state = WorkerState::Busy {
                what: what.to_owned(),
                path: path.map(Path::to_path_buf),
                since: now,
            }
        });
    }

    fn failed_at(&self, error: &str, path: Option<&Path>, now: Instant) {
        self.update(|e| {
            let since = *e.failing_since.get_or_insert(now);
            e.state = WorkerState::Failing {
                error: error.to_owned(),
                path: path.map(Path::to_path_buf),
                since,
            };
        });
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let id = self.id;
        self.workers.lock().entries.retain(|e| e.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_of(workers: &Workers, name: &str) -> WorkerState {
        workers
            .list()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .expect("listed")
    }

    #[test]
    fn a_worker_goes_busy_idle_and_failing_with_the_time_of_the_first_failure() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let workers = Workers::default();
        let queue = workers.register("queue 1");
        let repair = workers.register("repair");
        assert_eq!(state_of(&workers, "queue 1"), WorkerState::Idle);

        queue.busy_at("backing up", Some(Path::new("/srv/a")), t0);
        let busy = state_of(&workers, "queue 1");
        assert_eq!(busy.name(), "busy");
        assert_eq!(busy.for_how_long(t0 + s(3)), Some(s(3)));
        assert_eq!(state_of(&workers, "repair"), WorkerState::Idle);

        queue.failed_at("no peer answered", Some(Path::new("/srv/a")), t0 + s(5));
        queue.busy_at("backing up", Some(Path::new("/srv/b")), t0 + s(6));
        queue.failed_at("no peer answered", Some(Path::new("/srv/b")), t0 + s(9));
        // Failing since the first failure of the run, with the last error.
        assert_eq!(
            state_of(&workers, "queue 1"),
            WorkerState::Failing {
                error: "no peer answered".into(),
                path: Some("/srv/b".into()),
                since: t0 + s(5)
            }
        );

        queue.busy_at("backing up", None, t0 + s(10));
        queue.idle();
        assert_eq!(state_of(&workers, "queue 1"), WorkerState::Idle);
        // A new failure after a success starts a new run.
        queue.failed_at("disk full", None, t0 + s(20));
        assert_eq!(
            state_of(&workers, "queue 1").for_how_long(t0 + s(21)),
            Some(s(1))
        );
        assert_eq!(state_of(&workers, "repair"), WorkerState::Idle);
        drop(repair);
    }

    #[test]
    fn the_report_shows_paths_to_root_only() {
        let t0 = Instant::now();
        let workers = Workers::default();
        let queue = workers.register("queue 1");
        let _repair = workers.register("repair");
        queue.busy_at("backing up", Some(Path::new("/srv/x")), t0);
        let root = workers.report(true, t0 + Duration::from_millis(3500));
        let json = serde_json::to_value(&root).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"name": "queue 1", "state": "busy", "what": "backing up", "path": "/srv/x",
                 "since_s": 3},
                {"name": "repair", "state": "idle"}
            ])
        );
        let user = workers.report(false, t0);
        assert_eq!(user[0].path, None);
        assert_eq!(user[0].what.as_deref(), Some("backing up"));
        // The control socket's reply reads back the same.
        let back: Vec<WorkerInfo> = serde_json::from_value(json).unwrap();
        assert_eq!(back, root);
    }

    #[test]
    fn workers_are_listed_by_name_until_dropped() {
        let workers = Workers::default();
        let a = workers.register("queue 1");
        let b = workers.register("watcher");
        let c = workers.register("status");
        let names = |w: &Workers| w.list().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(&workers), ["queue 1", "status", "watcher"]);
        drop(b);
        assert_eq!(names(&workers), ["queue 1", "status"]);
        a.busy("scanning", None);
        assert_eq!(workers.list()[0].1.name(), "busy");
        drop(a);
        assert_eq!(names(&workers), ["status"]);
        drop(c);
        assert!(workers.list().is_empty());
    }
}
