//! `restore --all`: every file below every watched folder brought back as `restore` brings one,
//! then the folders it made given what the catalog recorded of them; and the same for the
//! parents a single `restore` made. The caller's side only: each file is one `Restore` request.

use std::path::{Path, PathBuf};

use super::fail;
use crate::config::Config;
use crate::control::{self, exit, shown, Answer, Request, RestoreAnswer, VersionInfo};
use crate::fsx::Folder;

/// `restore --all [DEST]`: the newest complete version of every file below every watched
/// folder, restored one by one as `restore` does (owner, mode, mtime; into DEST/path when DEST
/// is given). Existing files are skipped unless `force`; so are files deleted before the newest
/// catalog snapshot was taken (gone before the loss), unless `include_deleted`. Then each folder
/// it made is given the owner, mode and mtime the catalog recorded (with `force`, every recorded
/// folder). Ends with one summary line.
pub fn restore_all(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    config: &Config,
    dest: Option<&Path>,
    force: bool,
    include_deleted: bool,
    json: bool,
) -> i32 {
    let watched: Vec<PathBuf> = config.watch.iter().map(|w| w.path.clone()).collect();
    restore_many(
        runtime,
        socket,
        &watched,
        dest,
        force,
        include_deleted,
        json,
        None,
    )
}

/// `restore DIR --at WHEN`: the files `picked` below `root` (each file's version at WHEN,
/// `cli::at`), restored as `restore --all` restores (to their places, below their watched
/// folder or from `/`; into DEST/path with `dest`), existing files skipped unless `force`;
/// then the folders it made get what the catalog recorded of them.
#[allow(clippy::too_many_arguments)]
pub fn restore_at(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    watched: &[PathBuf],
    root: &Path,
    picked: std::collections::BTreeMap<PathBuf, VersionInfo>,
    dest: Option<&Path>,
    force: bool,
    json: bool,
) -> i32 {
    let picked = Picked {
        root,
        versions: picked,
    };
    restore_many(
        runtime,
        socket,
        watched,
        dest,
        force,
        true,
        json,
        Some(picked),
    )
}

/// The files a `restore --at` takes, below `root`.
struct Picked<'a> {
    root: &'a Path,
    versions: std::collections::BTreeMap<PathBuf, VersionInfo>,
}

#[allow(clippy::too_many_arguments)]
fn restore_many(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    watched: &[PathBuf],
    dest: Option<&Path>,
    force: bool,
    include_deleted: bool,
    json: bool,
    picked: Option<Picked>,
) -> i32 {
    let what = match picked {
        Some(_) => "restore --at",
        None => "restore --all",
    };
    let mut meter = crate::cli::Meter::new(what, json);
    // The config's watched folders, then those the catalog knows were watched here and the
    // config does not name (added after it was copied off the machine).
    let mut folders: Vec<PathBuf> = watched.to_vec();
    if picked.is_some() {
        // Files backed up by hand, below no watched folder: reached from `/`.
        folders.push(PathBuf::from("/"));
    }
    let known = runtime.block_on(control::call::<control::WatchedFolders>(
        socket,
        &Request::Watched,
        &[],
        |_| {},
    ));
    let known = match known {
        Ok((exit::OK, _, Some(watched))) => watched.folders,
        // An older daemon: the config's folders only.
        Ok(_) => Vec::new(),
        Err(e) => return fail(exit::UNREACHABLE, e),
    };
    let in_config = folders.len();
    for k in known {
        if !folders.contains(&k) {
            folders.push(k);
        }
    }
    // Each file with a complete version, the watched folder it was found below, and which
    // version (None: the daemon takes the newest that can be restored whole).
    let mut newest: std::collections::BTreeMap<PathBuf, (&Path, Option<u32>)> = Default::default();
    // Each path's newest version: whether it was deleted, and when (unix s).
    let mut last: std::collections::HashMap<PathBuf, (u32, Option<i64>)> = Default::default();
    // The folders the catalog recorded (owner, mode, mtime), by path.
    let mut recorded: std::collections::BTreeMap<PathBuf, control::FolderInfo> = Default::default();
    let mut snapshot_ms: Option<i64> = None;
    let mut extra = Vec::new();
    let scanned: Vec<PathBuf> = match &picked {
        Some(p) => vec![p.root.to_path_buf()],
        None => folders.clone(),
    };
    if let Some(p) = &picked {
        for (path, v) in &p.versions {
            // The deepest watched folder above it.
            let base = (folders.iter())
                .filter(|w| path.starts_with(w))
                .max_by_key(|w| w.as_os_str().len());
            if let Some(base) = base {
                newest.insert(path.clone(), (base.as_path(), Some(v.version)));
            }
        }
    }
    for (i, w) in scanned.iter().enumerate() {
        if picked.is_some() {
            match runtime.block_on(control::client::folders(socket, w)) {
                Ok(answer) => {
                    recorded.extend(answer.folders.into_iter().map(|f| (f.path.clone(), f)))
                }
                Err(e) => return fail(exit::UNREACHABLE, e),
            }
            continue;
        }
        let request = Request::Versions { path: w.clone() };
        let answer = runtime.block_on(control::call::<Vec<VersionInfo>>(
            socket,
            &request,
            &[],
            |_| {},
        ));
        let versions = match answer {
            Ok((exit::OK, _, Some(versions))) => Ok::<_, String>(versions),
            // A folder no longer in the config whose files all expired: nothing to say.
            Ok(_) if i >= in_config => continue,
            Ok((_, message, _)) => {
                meter.say(&format!("{}: {message}", shown(w)));
                continue;
            }
            Err(e) => return fail(exit::UNREACHABLE, e),
        };
        let versions = match versions {
            Ok(v) => v,
            Err(e) => return fail(exit::FAILED, e),
        };
        if i >= in_config {
            extra.push(shown(w).to_string());
        }
        for v in &versions {
            let seen = last
                .entry(v.path.clone())
                .or_insert((v.version, v.deleted_at));
            if v.version >= seen.0 {
                *seen = (v.version, v.deleted_at);
            }
        }
        for v in versions.into_iter().filter(|v| v.complete) {
            newest.entry(v.path).or_insert((w, None));
        }
        match runtime.block_on(control::client::folders(socket, w)) {
            Ok(answer) => {
                snapshot_ms = snapshot_ms.or(answer.snapshot_ms);
                recorded.extend(answer.folders.into_iter().map(|f| (f.path.clone(), f)));
            }
            Err(e) => return fail(exit::UNREACHABLE, e),
        }
    }
    if !extra.is_empty() {
        meter.say(&format!(
            "also restoring {} watched folder(s) the catalog knows and the config does not name: {} (add them to the config's [[watch]] to back them up again)",
            extra.len(),
            extra.join(", ")
        ));
    }
    // Deleted before the loss: found gone (unix s, so up to a second later than it went) at
    // or before the snapshot's time. After a recover the daemon finds every file gone, after
    // that time: those are restored.
    let mut deleted = 0usize;
    if let (Some(cutoff), false) = (snapshot_ms, include_deleted) {
        newest.retain(|path, _| {
            let gone = last
                .get(path)
                .and_then(|(_, d)| *d)
                .is_some_and(|d| d.saturating_add(1).saturating_mul(1000) <= cutoff);
            deleted += usize::from(gone);
            !gone
        });
    }
    // Where the files go is reached from handles opened once: DEST (walked from `/`), or each
    // watched folder as the config names it (the admin's path, as the daemon reads it). The
    // folders made on the way are noted, by where they were reached from.
    let mut made: Vec<(Base, crate::fsx::Made)> = Vec::new();
    let dest = match dest.map(|d| control::client::folder_from_root(d, &mut Vec::new())) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return fail(exit::FAILED, e),
    };
    let mut bases: std::collections::HashMap<&Path, Result<Folder, String>> = Default::default();
    // The files restored (for --force: the recorded folders on their way are given back).
    let mut written: Vec<PathBuf> = Vec::new();
    let total = newest.len();
    let (mut restored, mut skipped, mut failed) = (0usize, 0usize, 0usize);
    let mut disk_full = false;
    let files = |done: usize| control::Amount {
        done: done as u64,
        total: total as u64,
        unit: control::Unit::Files,
    };
    for (i, (path, (watched, version))) in newest.into_iter().enumerate() {
        meter.event(&control::ProgressEvent {
            message: String::new(),
            amount: Some(files(i)),
        });
        let mut made_here = Vec::new();
        let target = match &dest {
            Some(d) => {
                let t = control::client::target(
                    d,
                    path.strip_prefix("/").unwrap_or(&path),
                    &mut made_here,
                );
                made.extend(made_here.drain(..).map(|m| (Base::Dest, m)));
                t
            }
            None => match bases.entry(watched).or_insert_with(|| {
                let mut from_root = Vec::new();
                let base = watched_folder(watched, &mut from_root);
                made.extend(from_root.into_iter().map(|m| (Base::Root, m)));
                base
            }) {
                Ok(base) => match path.strip_prefix(watched) {
                    Ok(rel) => {
                        let t = control::client::target(base, rel, &mut made_here);
                        made.extend(made_here.drain(..).map(|m| (Base::Watched(watched), m)));
                        t
                    }
                    Err(_) => Err(control::ClientError::Local(format!(
                        "{} is not below {}",
                        shown(&path),
                        shown(watched)
                    ))),
                },
                Err(e) => Err(control::ClientError::Local(e.clone())),
            },
        };
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                failed += 1;
                eprintln!("peerstash: {e}");
                let line = match json {
                    true => format!("[{}/{total}] FAILED {}: {e}", i + 1, shown(&path)),
                    false => String::new(),
                };
                meter.event(&control::ProgressEvent {
                    message: line,
                    amount: Some(files(i + 1)),
                });
                continue;
            }
        };
        let exists = target.dir.has(&target.name);
        let line = if !force && exists.as_ref().is_ok_and(|e| *e) {
            skipped += 1;
            format!(
                "[{}/{total}] {} exists: skipped",
                i + 1,
                shown(&target.path())
            )
        } else {
            let answer = runtime.block_on(control::client::restore(
                socket,
                &path,
                version,
                &target,
                force,
                |_| {},
            ));
            let target = target.path();
            match answer {
                Ok((exit::OK, message, data)) => {
                    restored += 1;
                    written.push(path.clone());
                    // An older version than the newest: said, with why.
                    match data {
                        Some(RestoreAnswer::Restored(control::Restored {
                            not_whole: Some(_),
                            ..
                        })) => format!("[{}/{total}] {message}", i + 1),
                        _ => format!("[{}/{total}] restored {}", i + 1, shown(&target)),
                    }
                }
                Ok((_, message, data)) => {
                    failed += 1;
                    // Every other file would fail the same way.
                    disk_full |= matches!(
                        data,
                        Some(RestoreAnswer::Failed(control::RestoreFailed {
                            disk_full: true
                        }))
                    );
                    eprintln!("peerstash: {message}");
                    // On stderr already; the JSON events say it too.
                    match json {
                        true => format!("[{}/{total}] FAILED {}: {message}", i + 1, shown(&target)),
                        false => String::new(),
                    }
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("peerstash: {}: {e}", shown(&path));
                    match json {
                        true => format!("[{}/{total}] FAILED {}: {e}", i + 1, shown(&target)),
                        false => String::new(),
                    }
                }
            }
        };
        meter.event(&control::ProgressEvent {
            message: line,
            amount: Some(files(i + 1)),
        });
        if disk_full {
            break;
        }
    }
    meter.finish();
    // The files are in: the folders get their owner, mode and mtime, deepest first.
    let root = Folder::root();
    let original = |base: &Base, rel: &Path| match base {
        Base::Root | Base::Dest => Path::new("/").join(rel),
        Base::Watched(w) => w.join(rel),
    };
    type Place<'a> = (Base<'a>, PathBuf, Option<(u64, u64)>);
    let mut todo: std::collections::BTreeMap<PathBuf, Place> = Default::default();
    let mut unrecorded = 0usize;
    for (base, m) in made {
        let at = original(&base, &m.rel);
        match recorded.contains_key(&at) {
            true => {
                todo.insert(at, (base, m.rel, Some(m.id)));
            }
            // A folder above the watched ones is never recorded; one below, only by a
            // catalog recorded before folders were.
            false => unrecorded += usize::from(folders.iter().any(|w| at.starts_with(w))),
        }
    }
    if force {
        // Every recorded folder on the way to a file restored, made now or not.
        let on_the_way: std::collections::BTreeSet<&Path> =
            written.iter().flat_map(|p| p.ancestors().skip(1)).collect();
        for at in recorded
            .keys()
            .filter(|at| on_the_way.contains(at.as_path()))
        {
            let place = match (&dest, folders.iter().find(|w| at.starts_with(w))) {
                (Some(_), _) => (at.strip_prefix("/").ok()).map(|r| (Base::Dest, r.into(), None)),
                (None, Some(w)) => {
                    (at.strip_prefix(w).ok()).map(|r| (Base::Watched(w), r.into(), None))
                }
                (None, None) => None,
            };
            if let Some(place) = place {
                todo.entry(at.clone()).or_insert(place);
            }
        }
    }
    let mut give = Vec::new();
    for (at, (base, rel, made_as)) in todo {
        let from = match &base {
            Base::Dest => dest.as_ref(),
            Base::Root => root.as_ref().ok(),
            Base::Watched(w) => bases.get(w).and_then(|b| b.as_ref().ok()),
        };
        if let (Some(from), Some(f)) = (from, recorded.remove(&at)) {
            give.push(control::client::MadeFolder {
                from,
                rel,
                made_as,
                recorded: f,
            });
        }
    }
    let (given, folder_errors) = control::client::give_back_folders(give);
    for e in &folder_errors {
        eprintln!("peerstash: {e}");
    }
    let skipped_note = match skipped {
        0 => String::new(),
        n => format!(", {n} skipped (they exist: --force overwrites them)"),
    };
    let deleted_note = match (deleted, snapshot_ms) {
        (0, _) | (_, None) => String::new(),
        (n, Some(ms)) => format!(
            ", {n} not restored: deleted before the catalog snapshot {} (--include-deleted restores them)",
            crate::store::snapshot::taken_at(ms)
        ),
    };
    let stopped = match disk_full {
        true => format!(
            ", {} not tried: the disk is full, free space and run restore --all again",
            total - restored - failed - skipped
        ),
        false => String::new(),
    };
    let mut folders_note = match given {
        0 => String::new(),
        n => format!("; {n} folders given their owner, mode and mtime"),
    };
    if !folder_errors.is_empty() {
        folders_note += &format!(", {} folders could not be (see above)", folder_errors.len());
    }
    if unrecorded > 0 {
        folders_note += &format!(
            "; {unrecorded} folders made with no recorded owner (a catalog from before they were recorded): they are the restorer's, mode 0755"
        );
    }
    let message = format!(
        "{total} files: {restored} restored, {failed} failed{skipped_note}{deleted_note}{stopped}{folders_note}"
    );
    if failed == 0 && !disk_full && dest.is_none() {
        // Every file is back in place: after a recover, keep_deleted applies again. (Root's
        // only; another user's restore is refused, and changes nothing.)
        let _ = runtime.block_on(control::call::<control::Nothing>(
            socket,
            &Request::RestoredAll,
            &[],
            |_| {},
        ));
    }
    let code = match failed + folder_errors.len() {
        0 => exit::OK,
        _ => exit::FAILED,
    };
    if json {
        crate::cli::print_reply(&control::Reply::Done {
            code,
            message,
            data: Some(Answer::RestoreAll(control::RestoreAllSummary {
                files: total as u64,
                restored: restored as u64,
                skipped: skipped as u64,
                failed: failed as u64,
                deleted_not_restored: deleted as u64,
                folders_given: given as u64,
                folders_failed: folder_errors.len() as u64,
            })),
        });
    } else {
        crate::outln!("{message}");
    }
    code
}

/// The folders a single `restore` made on the way to a file's own path (`made`, below `/`,
/// parents first) given the owner, mode and mtime recorded for them, deepest first; the
/// messages of those that could not be. None when there was nothing to ask.
pub fn give_back_parents(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    made: Vec<crate::fsx::Made>,
) -> Option<Vec<String>> {
    let top = Path::new("/").join(&made.first()?.rel);
    let answer = runtime
        .block_on(control::client::folders(socket, &top))
        .ok()?;
    let root = Folder::root().ok()?;
    let mut recorded: std::collections::HashMap<PathBuf, control::FolderInfo> = (answer.folders)
        .into_iter()
        .map(|f| (f.path.clone(), f))
        .collect();
    let give = (made.into_iter())
        .filter_map(|m| {
            let f = recorded.remove(&Path::new("/").join(&m.rel))?;
            Some(control::client::MadeFolder {
                from: &root,
                rel: m.rel,
                made_as: Some(m.id),
                recorded: f,
            })
        })
        .collect();
    Some(control::client::give_back_folders(give).1)
}

/// Where a folder `restore --all` made was reached from.
enum Base<'a> {
    /// `/` (a watched folder that was gone): its path below `/` is its own.
    Root,
    /// DEST: its path below DEST is its own below `/`.
    Dest,
    /// This watched folder.
    Watched(&'a Path),
}

/// A watched folder, to restore its files in place: opened as the config names it (symlinks
/// of the admin's own followed, as the daemon does when it reads it); when it is gone, made
/// again from `/` through no symlink at all (each folder made noted in `made`, below `/`).
fn watched_folder(path: &Path, made: &mut Vec<crate::fsx::Made>) -> Result<Folder, String> {
    match Folder::open_trusted(path) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            control::client::folder_from_root(path, made).map_err(|e| e.to_string())
        }
        Err(e) => Err(format!(
            "cannot open the watched folder {}: {e}",
            shown(path)
        )),
    }
}
