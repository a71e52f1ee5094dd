//! The control socket server: a Unix socket at `peer.control_socket`, one JSON request line per
//! connection, answered with progress lines and one final line.

use std::os::unix::fs::PermissionsExt;
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
        Err(e) => {
            let done = Done {
                code: exit::USAGE,
                message: format!("bad request: {e}"),
                data: None,
            };
            return send(&mut write, &final_reply(done)).await;
        }
    };
    tracing::debug!(?request, "control request");
    let (progress, mut lines) = mpsc::channel::<String>(64);
    let work = tokio::spawn(run(node, request, progress));
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

async fn run(node: Arc<Node>, request: Request, progress: mpsc::Sender<String>) -> Done {
    match request {
        Request::Backup { path, replication } => {
            if replication.is_some_and(|r| !(1..=9).contains(&r)) {
                return Done {
                    code: exit::USAGE,
                    message: "--replication must be between 1 and 9".into(),
                    data: None,
                };
            }
            jobs::backup(&node, path, replication, &progress).await
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
