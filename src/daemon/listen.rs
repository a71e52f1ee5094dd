//! The control socket's listening end, bound at start before the peer joins the LAN (a second
//! daemon on the same socket is refused there); `server` serves it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use tokio::net::{UnixListener, UnixStream};

use crate::control::shown;

/// Binds the control socket at `path` (mode 0660, group peerstash). Refused when another
/// daemon answers there, or when something that is not a socket is there (never deleted).
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} (peer.control_socket)", shown(dir)))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} (peer.control_socket) exists and is not a socket: it is left as it is; remove it or choose another path",
                shown(path)
            );
        }
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another peerstashd is already listening on {} (peer.control_socket): stop it or give this one another socket",
                shown(path)
            );
        }
        // A socket left by a daemon that was killed: nobody answers on it, replace it.
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", shown(path)))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {} (peer.control_socket)", shown(path)))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    // Members of group peerstash may use the socket (under systemd, Group=peerstash does it).
    if let Ok(Some(group)) = nix::unistd::Group::from_name("peerstash") {
        if let Err(e) = std::os::unix::fs::chown(path, None, Some(group.gid.as_raw())) {
            tracing::warn!("cannot give {} to group peerstash: {e}", shown(path));
        }
    }
    Ok(listener)
}
