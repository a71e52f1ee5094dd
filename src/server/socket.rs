//! The control socket server: a Unix socket at `peer.control_socket`, one JSON request line per
//! connection, answered with progress lines and one final line.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::spawn_blocking;

use crate::control::{self, exit, shown, Reply, Request};
use crate::daemon::Node;
use crate::fsx;
use crate::ops;
use crate::server::{self, reply, Done};
use crate::shutdown::Shutdown;

/// Connections of callers other than root served at once, all uids together; more are
/// refused at once (a refused caller is told; nothing waits in the daemon).
const MAX_CONNECTIONS: usize = 32;
/// Of those, one uid's: a group member cannot take every slot for itself.
const MAX_PER_UID: usize = 8;
/// Root's connections, counted apart: root never waits behind another user's connections.
/// More wait for a turn (root is trusted not to flood its own daemon).
const MAX_ROOT_CONNECTIONS: usize = 16;
/// A connection must have sent its whole request line within this, or it is closed: an idle
/// or slow connection holds its slot no longer.
const REQUEST_WITHIN: Duration = Duration::from_secs(10);
/// A reply line must be taken by the caller within this; a caller that stops reading is no
/// longer written to (its request still runs to its end).
const WRITE_WITHIN: Duration = Duration::from_secs(10);

/// The control socket's slots: root's apart, the others counted per uid.
struct Slots {
    root: Arc<Semaphore>,
    /// Connections held per uid other than root (a uid is removed at 0: bounded by
    /// MAX_CONNECTIONS entries).
    others: Mutex<HashMap<u32, usize>>,
}

/// One non-root connection's slot, given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut others = self.slots.others.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = others.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                others.remove(&self.uid);
            }
        }
    }
}

impl Slots {
    fn new() -> Arc<Slots> {
        Arc::new(Slots {
            root: Arc::new(Semaphore::new(MAX_ROOT_CONNECTIONS)),
            others: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection of `uid` (not root), or why there is none.
    fn take(self: &Arc<Self>, uid: u32) -> Result<Slot, String> {
        // Only counters are changed under the lock: it is never held across an await.
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        if others.values().sum::<usize>() >= MAX_CONNECTIONS {
            return Err(format!(
                "the daemon is serving {MAX_CONNECTIONS} connections of users other than root: try again in a moment"
            ));
        }
        let mine = others.entry(uid).or_insert(0);
        if *mine >= MAX_PER_UID {
            return Err(format!(
                "you have {MAX_PER_UID} connections to the daemon open already: wait for one to end"
            ));
        }
        *mine += 1;
        Ok(Slot {
            slots: self.clone(),
            uid,
        })
    }
}

/// Serves the control socket bound by `bind` until shutdown: then no connection is accepted any
/// more, and requests still running get `STOP_GRACE` to end before they are cut (their caller
/// is told). The listener is closed once every connection is over.
///
/// The accept loop never waits: a connection of root waits for one of root's slots in its own
/// task; one of another user gets a slot at once or is refused at once (`Slots::take`).
pub fn serve(node: Arc<Node>, listener: UnixListener, mut shutdown: Shutdown) {
    let slots = Slots::new();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.recv() => break,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Who is asking (SO_PEERCRED, as it was at connect): root may do anything; others
            // act on their own files only.
            let caller = match stream.peer_cred() {
                Ok(c) => c.uid(),
                Err(e) => {
                    refuse_now(
                        &stream,
                        exit::FAILED,
                        &format!("cannot identify the caller: {e}"),
                    );
                    continue;
                }
            };
            let slot = match caller {
                0 => None,
                uid => match slots.take(uid) {
                    Ok(slot) => Some(slot),
                    Err(message) => {
                        tracing::debug!(uid, "control connection refused: {message}");
                        refuse_now(&stream, exit::FAILED, &message);
                        continue;
                    }
                },
            };
            let (node, shutdown, root) = (node.clone(), shutdown.clone(), slots.root.clone());
            tokio::spawn(async move {
                let permit = match slot {
                    Some(_) => None,
                    None => match root.acquire_owned().await {
                        Ok(p) => Some(p),
                        Err(_) => return,
                    },
                };
                if let Err(e) = connection(node, stream, caller, shutdown).await {
                    tracing::debug!("control connection ended: {e}");
                }
                drop((slot, permit));
            });
        }
        tracing::debug!("control socket: no longer accepting");
    });
}

/// Tells a caller that is not served why, if its socket takes the line at once (a new
/// connection's buffer is empty), and closes the connection. Never waits.
fn refuse_now(stream: &UnixStream, code: i32, message: &str) {
    let reply: Reply = Reply::Done {
        code,
        message: message.to_owned(),
        data: None,
    };
    if let Ok(mut text) = serde_json::to_string(&reply) {
        text.push('\n');
        let _ = stream.try_write(text.as_bytes());
    }
}

/// How long a request running when the daemon stops may still take before it is cut.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Resolves `STOP_GRACE` after shutdown was triggered.
async fn cut(mut shutdown: Shutdown) {
    shutdown.recv().await;
    tokio::time::sleep(STOP_GRACE).await;
}

/// The final line of a request cut by the daemon stopping.
const CUT: &str = "peerstashd stopped before this request ended; run it again once the daemon is back (a backup resumes where it stopped)";

async fn connection(
    node: Arc<Node>,
    stream: UnixStream,
    caller: u32,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let cut = cut(shutdown);
    tokio::pin!(cut);
    let read = tokio::select! {
        r = tokio::time::timeout(REQUEST_WITHIN, control::read_request(&stream)) => r,
        // No request yet: nothing to answer.
        _ = &mut cut => return Ok(()),
    };
    let (_, mut write) = stream.into_split();
    let (line, fds) = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return refuse(&mut write, exit::USAGE, format!("bad request: {e}")).await,
        Err(_) => {
            let message = format!(
                "no whole request line within {} s: the connection is closed",
                REQUEST_WITHIN.as_secs()
            );
            return refuse(&mut write, exit::USAGE, message).await;
        }
    };
    let request = match Request::decode(&line) {
        Ok(r) => r,
        Err(e) => return refuse(&mut write, exit::USAGE, format!("bad request: {e}")).await,
    };
    tracing::debug!(?request, caller, fds = fds.len(), "control request");
    let owner = (caller != 0).then_some(caller);
    let handle = fds.into_iter().next().map(File::from);
    let prepared = tokio::select! {
        p = prepare(&node, request, owner, handle) => p,
        _ = &mut cut => {
            return tokio::time::timeout(STOP_GRACE, refuse(&mut write, exit::FAILED, CUT.into()))
                .await
                .unwrap_or(Ok(()))
        }
    };
    let job = match prepared {
        Ok(job) => job,
        Err(message) => return refuse(&mut write, exit::FAILED, message).await,
    };
    let (progress, mut lines) = mpsc::channel::<crate::control::ProgressEvent>(64);
    let mut work = tokio::spawn(run(node, job, owner, progress));
    let finished = {
        let write = &mut write;
        let forward = async {
            let mut gone = false;
            while let Some(event) = lines.recv().await {
                // A client that went away (or stopped reading) does not stop the work: the
                // backup finishes anyway, its progress is dropped.
                if gone {
                    continue;
                }
                let reply = Reply::Progress {
                    message: event.message,
                    amount: event.amount,
                };
                gone = send(write, &reply).await.is_err();
            }
            (&mut work).await
        };
        tokio::select! {
            done = forward => Some(done),
            _ = &mut cut => None,
        }
    };
    match finished {
        Some(done) => {
            let done = done.unwrap_or_else(|e| Done {
                code: exit::FAILED,
                message: format!("internal error: {e}"),
                data: None,
            });
            send(&mut write, &final_reply(done)).await
        }
        None => {
            // Dropped where it waits; what it recorded is in the catalog.
            work.abort();
            // A caller that does not read does not hold the stop up.
            tokio::time::timeout(STOP_GRACE, refuse(&mut write, exit::FAILED, CUT.into()))
                .await
                .unwrap_or(Ok(()))
        }
    }
}

/// A request checked and ready to run, with the handles it works through.
enum Job {
    Backup {
        path: PathBuf,
        root: File,
        replication: Option<u8>,
        encrypt: bool,
    },
    Restore {
        path: PathBuf,
        rows: Vec<crate::store::FileRow>,
        out: File,
    },
    Other(Request),
}

/// Checks a request against its caller and the descriptor it came with. A non-root caller
/// (`owner`) must send what it names opened with its own rights: the kernel has then decided
/// what it may read or write, and no path is looked up for it twice. Root may name a file to
/// back up by path; it is opened without following symlinks.
async fn prepare(
    node: &Arc<Node>,
    request: Request,
    owner: Option<u32>,
    handle: Option<File>,
) -> Result<Job, String> {
    let expects_handle = matches!(request, Request::Backup { .. } | Request::Restore { .. });
    if handle.is_some() && !expects_handle {
        return Err("this request takes no descriptor".into());
    }
    match request {
        Request::Reclaim { .. } if owner.is_some() => {
            Err("reclaim sets this peer's quota: run it as root".into())
        }
        Request::HistoryResume { .. } if owner.is_some() => {
            Err("history resume lets old versions be pruned again: run it as root".into())
        }
        Request::Check if owner.is_some() => {
            Err("check reads the whole catalog: run it as root".into())
        }
        Request::Scrub if owner.is_some() => {
            Err("scrub reads every chunk this peer hosts: run it as root".into())
        }
        Request::Snapshot if owner.is_some() => {
            Err("snapshot copies the whole catalog: run it as root".into())
        }
        Request::RestoredAll if owner.is_some() => {
            Err("only root's restore --all restores every file".into())
        }
        Request::Recover { .. } if owner.is_some() => {
            Err("recover replaces this peer's catalog: run it as root".into())
        }
        Request::Backup {
            path,
            replication,
            encrypt,
        } => {
            if replication.is_some_and(|r| !(1..=9).contains(&r)) {
                return Err("--replication must be between 1 and 9".into());
            }
            if owner.is_some() && handle.is_none() {
                return Err(format!(
                    "{}: a backup asked by a user other than root must send the open file (use the peerstash command)",
                    shown(&path)
                ));
            }
            let p = path.clone();
            let root = spawn_blocking(move || named_handle(&p, handle))
                .await
                .map_err(|e| e.to_string())??;
            if owner.is_some_and(|uid| root.metadata().map(|m| m.uid()).ok() != Some(uid)) {
                return Err(format!(
                    "{} is not yours: you may back up only what you own",
                    shown(&path)
                ));
            }
            Ok(Job::Backup {
                path,
                root,
                replication,
                encrypt,
            })
        }
        Request::Restore { path, version } => {
            let Some(out) = handle else {
                return Err(format!(
                    "{}: a restore must send the file to write into, opened for reading and writing (use the peerstash command)",
                    shown(&path)
                ));
            };
            let out = spawn_blocking(move || writable_file(out))
                .await
                .map_err(|e| e.to_string())??;
            // Refused before any work when the version is not the caller's.
            let rows = server::restore::restore_choice(node, &path, version, owner).await?;
            Ok(Job::Restore { path, rows, out })
        }
        Request::Delete { path } => {
            if let Some(uid) = owner {
                // Said without naming any other user's file, and, when none of the caller's is
                // there, as if nothing were: the answer tells nothing of what others backed up.
                let versions = versions_of(node, &path).await?;
                if !versions.iter().any(|f| f.uid == uid) {
                    return Err(ops::delete::nothing_of(&path));
                }
                if versions.iter().any(|f| f.uid != uid) {
                    return Err(format!(
                        "{}: not every backup there is yours, and you may delete only your own: name your own files or folders",
                        shown(&path)
                    ));
                }
            }
            Ok(Job::Other(Request::Delete { path }))
        }
        other => Ok(Job::Other(other)),
    }
}

/// The file or folder to back up: the caller's handle, checked to be what `path` names (so a
/// caller cannot file its own bytes under another path), or, without a handle, `path` opened
/// without following symlinks.
fn named_handle(path: &Path, handle: Option<File>) -> Result<File, String> {
    // Only looked at when the caller sent the file: a path a user names is never opened for
    // reading by the daemon (a device's open could do something).
    let kind = match handle {
        Some(_) => fsx::Kind::Probe,
        None => fsx::Kind::Any,
    };
    let named =
        fsx::open_path(path, kind).map_err(|e| format!("cannot open {}: {e}", shown(path)))?;
    let Some(handle) = handle else {
        return Ok(named);
    };
    match fsx::same_file(&handle, &named) {
        Ok(true) => {}
        _ => return Err(format!("{} is not the file that was sent", shown(path))),
    }
    let meta = handle.metadata().map_err(|e| e.to_string())?;
    match meta.is_file() || meta.is_dir() {
        true => Ok(handle),
        false => Err(format!("{}: not a regular file or a folder", shown(path))),
    }
}

/// A restore writes into a regular file opened for reading and writing, not in append mode.
fn writable_file(out: File) -> Result<File, String> {
    let meta = out.metadata().map_err(|e| e.to_string())?;
    let flags = nix::fcntl::fcntl(out.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| e.to_string())?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags);
    let rw = flags & nix::fcntl::OFlag::O_ACCMODE == nix::fcntl::OFlag::O_RDWR;
    if !meta.is_file() || !rw || flags.contains(nix::fcntl::OFlag::O_APPEND) {
        return Err(
            "a restore needs a regular file opened for reading and writing, not appending".into(),
        );
    }
    Ok(out)
}

/// The backed-up versions of a path (or below it), for checking their owners.
async fn versions_of(node: &Arc<Node>, path: &Path) -> Result<Vec<crate::store::FileRow>, String> {
    node.catalog.versions(path).await.map_err(|e| e.to_string())
}

async fn run(node: Arc<Node>, job: Job, owner: Option<u32>, progress: ops::Progress) -> Done {
    match job {
        Job::Backup {
            path,
            root,
            replication,
            encrypt,
        } => {
            let wanted = ops::backup::Wanted {
                replication,
                encrypt,
            };
            let ended =
                ops::backup::backup(&node, path.clone(), root, wanted, owner, &progress).await;
            let done = server::backup::done(&node, &path, ended);
            // The answer waits for the holders its chunks' STOREDs named to be recorded (the
            // engine asks for them before it says a chunk is done): what it prints ("every
            // chunk at RD >= 1") is what `state` and `status` read next.
            node.storeds_recorded().await;
            done
        }
        Job::Restore { path, rows, out } => {
            server::restore::restore(&node, path, rows, out, &progress).await
        }
        Job::Other(Request::Versions { path }) => {
            reply(server::versions::versions(&node, path, owner).await)
        }
        Job::Other(Request::Watched) => reply(server::versions::watched(&node, owner).await),
        Job::Other(Request::Folders { path }) => {
            reply(server::versions::folders(&node, path, owner).await)
        }
        Job::Other(Request::Delete { path }) => reply(server::delete::delete(&node, path).await),
        Job::Other(Request::Reclaim { quota }) => server::reclaim::reclaim(&node, quota).await,
        Job::Other(Request::HistoryResume { path }) => server::history::resume(&node, path).await,
        Job::Other(Request::State { path }) => server::state::state(&node, owner, path).await,
        Job::Other(Request::Check) => server::check::check(&node).await,
        Job::Other(Request::Scrub) => server::scrub::scrub(&node, &progress).await,
        Job::Other(Request::Peers) => server::peers::peers(&node).await,
        Job::Other(Request::Snapshot) => server::snapshot::snapshot(&node).await,
        Job::Other(Request::RestoredAll) => server::recover::restored_all(&node).await,
        Job::Other(Request::Status) => server::status::status(&node, owner).await,
        Job::Other(Request::Recover {
            days,
            force,
            list,
            at,
            none,
        }) => {
            let days = days.unwrap_or(server::recover::DEFAULT_DAYS);
            let mode = match (list, at, none) {
                (false, None, false) => server::recover::Mode::Install(None),
                (true, None, false) => server::recover::Mode::List,
                (false, None, true) => server::recover::Mode::Nothing,
                (false, Some(at), false) => match at.parse() {
                    Ok(at) => server::recover::Mode::Install(Some(at)),
                    Err(e) => return Done::failed(e),
                },
                _ => return Done::failed("recover takes one of --list, --at N and --none"),
            };
            server::recover::recover(&node, days, force, mode, &progress).await
        }
        Job::Other(Request::Backup { .. } | Request::Restore { .. }) => {
            unreachable!("prepare turns these into their jobs")
        }
    }
}

/// Answers a request that will not be carried out.
async fn refuse(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    code: i32,
    message: String,
) -> std::io::Result<()> {
    let reply = Reply::Done {
        code,
        message,
        data: None,
    };
    send(write, &reply).await
}

fn final_reply(done: Done) -> Reply {
    Reply::Done {
        code: done.code,
        message: done.message,
        data: done.data,
    }
}

/// Writes one reply line, within WRITE_WITHIN.
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut text = serde_json::to_string(reply).map_err(std::io::Error::other)?;
    text.push('\n');
    match tokio::time::timeout(WRITE_WITHIN, write.write_all(text.as_bytes())).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the caller does not read its replies",
        )),
    }
}
