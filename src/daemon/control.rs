//! The control socket server: a Unix socket at `peer.control_socket`, one JSON request line per
//! connection, answered with progress lines and one final line.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use super::jobs::{self, Done};
use super::Node;
use crate::control::{exit, Reply, Request, MAX_REQUEST_LINE};

/// Connections served at once; more wait for a turn.
const MAX_CONNECTIONS: usize = 32;

pub async fn serve(node: Arc<Node>) -> anyhow::Result<()> {
    let path = node.config().peer.control_socket.clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} (peer.control_socket)", dir.display()))?;
    }
    // A socket file left by a daemon that was killed: nobody answers on it, replace it.
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            anyhow::bail!(
                "another peerstashd is already listening on {} (peer.control_socket): stop it or give this one another socket",
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {} (peer.control_socket)", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    // Members of group peerstash may use the socket (under systemd, Group=peerstash does it).
    if let Ok(Some(group)) = nix::unistd::Group::from_name("peerstash") {
        if let Err(e) = std::os::unix::fs::chown(&path, None, Some(group.gid.as_raw())) {
            tracing::warn!("cannot give {} to group peerstash: {e}", path.display());
        }
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(node, stream).await {
                    tracing::debug!("control connection ended: {e}");
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn connection(node: Arc<Node>, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_LINE as u64);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    let request = match Request::decode(&line) {
        Ok(r) => r,
        Err(e) => return refuse(&mut write, exit::USAGE, format!("bad request: {e}")).await,
    };
    // Who is asking (SO_PEERCRED): root may do anything; others act on their own files only.
    let caller = match write.as_ref().peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            let message = format!("cannot identify the caller: {e}");
            return refuse(&mut write, exit::FAILED, message).await;
        }
    };
    tracing::debug!(?request, caller, "control request");
    if caller != 0 {
        if let Err(message) = authorize(&node, caller, &request).await {
            return refuse(&mut write, exit::FAILED, message).await;
        }
    }
    let owner = (caller != 0).then_some(caller);
    let (progress, mut lines) = mpsc::channel::<String>(64);
    let work = tokio::spawn(run(node, request, owner, progress));
    while let Some(message) = lines.recv().await {
        // A client that went away does not stop the work: the backup finishes anyway.
        let _ = send(&mut write, &Reply::Progress { message }).await;
    }
    let done = work.await.unwrap_or_else(|e| Done {
        code: exit::FAILED,
        message: format!("internal error: {e}"),
        data: None,
    });
    send(&mut write, &final_reply(done)).await
}

/// What a caller other than root may do: back up, restore and delete only what it owns, restore
/// only into places it owns, and not change the quota.
async fn authorize(node: &Arc<Node>, uid: u32, request: &Request) -> Result<(), String> {
    match request {
        Request::Reclaim { .. } => Err("reclaim sets this peer's quota: run it as root".into()),
        Request::Backup { path, .. } => match owner_of(path.clone()).await {
            Some(owner) if owner == uid => Ok(()),
            Some(_) => Err(format!(
                "{} is not yours: you may back up only what you own",
                path.display()
            )),
            None => Err(format!("{}: no such file or folder", path.display())),
        },
        Request::Restore {
            path, version, to, ..
        } => {
            let versions = versions_of(node, path).await?;
            let chosen = versions
                .iter()
                .rfind(|f| &f.path == path && version.is_none_or(|v| f.version == v));
            if chosen.is_some_and(|f| f.uid != uid) {
                return Err(format!(
                    "{} is not yours: you may restore only your own files",
                    path.display()
                ));
            }
            // The file restored over, or the folder it is restored into.
            let (path, to) = (path.clone(), to.clone());
            let place = tokio::task::spawn_blocking(move || {
                let dest = jobs::restore_destination(&path, to.as_deref());
                match dest.exists() {
                    true => dest,
                    false => dest.parent().unwrap_or(Path::new("/")).to_path_buf(),
                }
            })
            .await
            .map_err(|e| e.to_string())?;
            match owner_of(place.clone()).await {
                Some(owner) if owner == uid => Ok(()),
                _ => Err(format!(
                    "you may restore only into places you own, and {} is not yours",
                    place.display()
                )),
            }
        }
        Request::Delete { path } => {
            let versions = versions_of(node, path).await?;
            match versions.iter().find(|f| f.uid != uid) {
                Some(f) => Err(format!(
                    "{} is not yours: you may delete only your own backups",
                    f.path.display()
                )),
                None => Ok(()),
            }
        }
        Request::Versions { .. } | Request::State => Ok(()),
    }
}

/// The backed-up versions of a path (or below it), for checking their owners.
async fn versions_of(node: &Arc<Node>, path: &Path) -> Result<Vec<crate::store::FileRow>, String> {
    let p = path.to_path_buf();
    node.catalog
        .call(move |c| c.versions(&p))
        .await
        .map_err(|e| e.to_string())
}

/// The uid owning a path (not following a symlink), if it exists.
async fn owner_of(path: std::path::PathBuf) -> Option<u32> {
    tokio::task::spawn_blocking(move || std::fs::symlink_metadata(path).map(|m| m.uid()).ok())
        .await
        .ok()
        .flatten()
}

async fn run(
    node: Arc<Node>,
    request: Request,
    owner: Option<u32>,
    progress: mpsc::Sender<String>,
) -> Done {
    match request {
        Request::Backup { path, replication } => {
            if replication.is_some_and(|r| !(1..=9).contains(&r)) {
                return Done {
                    code: exit::USAGE,
                    message: "--replication must be between 1 and 9".into(),
                    data: None,
                };
            }
            jobs::backup(&node, path, replication, owner, &progress).await
        }
        Request::Restore {
            path,
            version,
            to,
            force,
        } => jobs::restore(&node, path, version, to, force, &progress).await,
        Request::Versions { path } => jobs::versions(&node, path).await,
        Request::Delete { path } => jobs::delete(&node, path).await,
        Request::Reclaim { quota } => jobs::reclaim(&node, quota).await,
        Request::State => jobs::state(&node).await,
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

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut text = serde_json::to_string(reply).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}
