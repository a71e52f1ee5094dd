//! `peerstash versions PATH`: the backed-up versions of a path, or of every file below it; and
//! the folders ever watched here, which `restore --all` walks, and the folders recorded below
//! a path, whose owner, mode and mtime it gives back.

use std::path::PathBuf;
use std::sync::Arc;

use super::Done;
use crate::control::{exit, shown, Answer, FolderInfo, FoldersAnswer, VersionInfo, WatchedFolders};
use crate::daemon::Node;
use crate::ops::CmdError;

pub(crate) async fn versions(
    node: &Arc<Node>,
    path: PathBuf,
    owner: Option<u32>,
) -> Result<Done, CmdError> {
    let rows: Vec<VersionInfo> = (node.catalog.versions_with_rd(&path, owner).await?)
        .into_iter()
        .map(|(f, min)| VersionInfo {
            path: f.path,
            version: f.version,
            file_id: f.file_id.as_wire().to_owned(),
            size: f.size,
            mtime_ns: f.mtime_ns,
            desired_rd: f.desired_rd,
            complete: f.complete,
            min_perceived_rd: min,
            encrypted: f.encrypted,
            deleted_at: f.deleted_at,
            completed_ms: f.completed_ms.filter(|_| f.complete),
        })
        .collect();
    if rows.is_empty() {
        return Err(CmdError::NotFound(format!(
            "no backed-up version of {}",
            shown(&path)
        )));
    }
    Ok(Done {
        code: exit::OK,
        message: format!("{} versions", rows.len()),
        data: Some(Answer::Versions(rows)),
    })
}

/// The folders the catalog knows were watched (`Catalog::note_watched`), as wire paths; for a
/// user other than root, only those holding a version of its own.
pub(crate) async fn watched(node: &Arc<Node>, owner: Option<u32>) -> Result<Done, CmdError> {
    let folders = node.catalog.watched_folders_of(owner).await?;
    Ok(Done {
        code: exit::OK,
        message: format!("{} watched folders known", folders.len()),
        data: Some(Answer::Watched(WatchedFolders { folders })),
    })
}

/// The folders recorded at or below `path` and the time `restore --all` takes as the loss's
/// (`Catalog::restore_cutoff_ms`). A user other than root hears only of the folders that hold
/// a version of its own (as `versions` shows it only its own files).
pub(crate) async fn folders(
    node: &Arc<Node>,
    path: PathBuf,
    owner: Option<u32>,
) -> Result<Done, CmdError> {
    let (folders, snapshot_ms) = node.catalog.folders_for_restore(&path, owner).await?;
    let answer = FoldersAnswer {
        folders: (folders.into_iter())
            .map(|f| FolderInfo {
                path: f.path,
                uid: f.uid,
                gid: f.gid,
                mode: f.mode,
                mtime_ns: f.mtime_ns,
            })
            .collect(),
        snapshot_ms,
    };
    Ok(Done {
        code: exit::OK,
        message: format!("{} folders recorded", answer.folders.len()),
        data: Some(Answer::Folders(answer)),
    })
}
