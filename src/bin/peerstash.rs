//! `peerstash`: the command line that drives the local peerstash daemon over its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use peerstash::cli::{Args, Command};
use peerstash::cluster::Programs;
use peerstash::config::{load_lan_key, parse_size, Config, DEFAULT_CONFIG_PATH};
use peerstash::control::{
    self, exit, shown, Answer, PeerState, PeersReport, Request, RestoreAnswer, StatusReport,
    VersionInfo, WorkerInfo,
};
use peerstash::fsx::Folder;
use peerstash::store::{unix_ms, Health};

fn main() -> ExitCode {
    let args = Args::parse();
    ExitCode::from(run(args) as u8)
}

fn fail(code: i32, message: impl std::fmt::Display) -> i32 {
    eprintln!("peerstash: {message}");
    code
}

/// Absolute path as the daemon knows it: symlinks resolved as far as the path exists.
fn resolve(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (
        abs.parent().and_then(|p| p.canonicalize().ok()),
        abs.file_name(),
    ) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => abs,
    }
}

/// Where a restore is to write, as the caller wrote it: absolute, `.` and `..` taken away by
/// name. Root's is not resolved: a symlink on it is refused when it is walked, never followed
/// (one a user planted in `/tmp` would otherwise lead root's restore anywhere). Another user's
/// is resolved as before: it writes with its own rights.
fn written_to(path: &Path) -> PathBuf {
    if control::client::links() == peerstash::fsx::Links::Follow {
        return resolve(path);
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            // With no symlink on the way (the walk refuses them), `a/..` is `a`'s parent.
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn run(args: Args) -> i32 {
    match &args.command {
        Command::Demo => return demo(),
        Command::RunDaemon { config } => return run_daemon(config),
        Command::Keygen { path } => return keygen(path),
        Command::SuggestId { address } => {
            return suggest_id(args.config.as_deref(), *address, args.json)
        }
        Command::GenerateDocs { dir } => {
            return match peerstash::cli::generate_docs(dir) {
                Ok(()) => exit::OK,
                Err(e) => fail(exit::FAILED, format!("cannot write to {}: {e}", shown(dir))),
            }
        }
        _ => {}
    }
    let config_path = (args.config.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let config = Config::load(&config_path);
    let socket = match (&args.socket, &config) {
        (Some(s), _) => s.clone(),
        (None, Ok(c)) => c.peer.control_socket.clone(),
        // A typo in the config: the daemon refused it on reload and runs on as it was. Every
        // command but `restore --all` needs only the socket.
        (None, Err(e)) => {
            let socket = Config::control_socket_of(&config_path);
            eprintln!(
                "peerstash: warning: {e}; the daemon keeps the config it runs with (fix the file, then reload); using the control socket {}",
                shown(&socket)
            );
            socket
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(exit::FAILED, e),
    };
    let print = |line: &str| peerstash::outln!("{line}");
    let json = args.json;
    // `state`: the path it is limited to, and whether its report may go through the pager.
    let (below, pager) = match &args.command {
        Command::State { path, no_pager } => (path.as_deref().map(resolve), !no_pager),
        _ => (None, false),
    };
    let output = match &args.command {
        Command::State { .. } => Output::State,
        Command::Peers => Output::Peers,
        Command::Status => Output::Status,
        Command::Versions { .. } => Output::Versions,
        _ => Output::Message,
    };
    let result = match args.command {
        Command::Backup {
            path,
            replication,
            encrypt,
        } => {
            if !path.exists() {
                return fail(
                    exit::FAILED,
                    format!("{}: no such file or folder", shown(&path)),
                );
            }
            let mut meter = peerstash::cli::Meter::new("backup", json);
            let r = runtime.block_on(control::client::backup(
                &socket,
                &resolve(&path),
                replication,
                encrypt,
                |e| meter.event(e),
            ));
            meter.finish();
            r
        }
        Command::Restore {
            path: dest,
            force,
            all: true,
            include_deleted,
            ..
        } => {
            // The watched folders are the config's.
            let config = match config {
                Ok(c) => c,
                Err(e) => {
                    return fail(
                        exit::USAGE,
                        format!("restore --all restores the watched folders of the config: {e}"),
                    )
                }
            };
            let dest = dest.as_deref().map(written_to);
            return restore_all(
                &runtime,
                &socket,
                &config,
                dest.as_deref(),
                force,
                include_deleted,
                json,
            );
        }
        Command::Restore {
            path,
            version,
            to,
            force,
            all: false,
            ..
        } => {
            let Some(path) = path else {
                return fail(exit::USAGE, "restore needs a PATH (or --all)");
            };
            let path = resolve(&path);
            let to = to.as_deref().map(written_to);
            let dest = control::client::destination(&path, to.as_deref());
            let mut made = Vec::new();
            let target = match control::client::target_from_root(&dest, &mut made) {
                Ok(t) => t,
                Err(e) => return fail(exit::FAILED, e),
            };
            let mut meter = peerstash::cli::Meter::new("restore", json);
            let r = runtime.block_on(control::client::restore(
                &socket,
                &path,
                version,
                &target,
                force,
                |e| meter.event(e),
            ));
            meter.finish();
            let r = r.map(|(code, message, data)| (code, message, data.map(Answer::Restore)));
            // Parents it made in the file's own place get what the catalog recorded of them
            // (made elsewhere, with --to, they are no backed-up folder's).
            if to.is_none() {
                if let Some(errors) = give_back_parents(&runtime, &socket, made) {
                    for e in errors {
                        eprintln!("peerstash: {e}");
                    }
                }
            }
            r
        }
        Command::Recover {
            days,
            force,
            list,
            at,
            none,
        } => {
            let request = Request::Recover {
                days: Some(days),
                force,
                list,
                at,
                none,
            };
            let restarts = !list && !none;
            let mut meter = peerstash::cli::Meter::new("recover", json);
            let result = runtime.block_on(control::ask(&socket, &request, &[], |e| meter.event(e)));
            meter.finish();
            if let (true, Ok((exit::OK, message, data))) = (restarts, &result) {
                if !json {
                    peerstash::outln!("{message}");
                }
                let code = wait_for_restart(&runtime, &socket, json);
                if json && code == exit::OK {
                    peerstash::cli::print_reply(&control::Reply::Done {
                        code,
                        message: message.clone(),
                        data: data.clone(),
                    });
                }
                return code;
            }
            result
        }
        command => {
            let request = match command {
                Command::Versions { path } => Request::Versions {
                    path: resolve(&path),
                },
                Command::Delete { path } => Request::Delete {
                    path: resolve(&path),
                },
                Command::Reclaim { size } => match parse_size(&size) {
                    Ok(quota) => Request::Reclaim { quota },
                    Err(e) => return fail(exit::USAGE, format!("bad size {size:?}: {e}")),
                },
                Command::State { path, .. } => Request::State {
                    path: path.as_deref().map(resolve),
                },
                Command::Peers => Request::Peers,
                Command::Status => Request::Status,
                Command::Check => Request::Check,
                Command::Scrub => Request::Scrub,
                Command::Snapshot => Request::Snapshot,
                Command::Backup { .. }
                | Command::Restore { .. }
                | Command::Recover { .. }
                | Command::Demo
                | Command::RunDaemon { .. }
                | Command::GenerateDocs { .. }
                | Command::Keygen { .. }
                | Command::SuggestId { .. } => unreachable!("handled above"),
            };
            runtime.block_on(control::ask(&socket, &request, &[], |e| {
                if !e.message.is_empty() {
                    print(&e.message)
                }
            }))
        }
    };
    let (code, message, data) = match result {
        Ok(r) => r,
        Err(
            e @ (control::ClientError::Connect { .. }
            | control::ClientError::Denied(_)
            | control::ClientError::NotASocket(_)),
        ) => return fail(exit::UNREACHABLE, e),
        Err(e) => return fail(exit::FAILED, e),
    };
    // `status` ends with the state it found (its report shown, then its code), not an error.
    let reported = match output {
        Output::Status => exit::is_status(code),
        _ => code == exit::OK || code == exit::BELOW_RD,
    };
    if !reported {
        return fail(code, message);
    }
    let printed = match (data, output) {
        (data, Output::Message) if json => {
            peerstash::cli::print_reply(&control::Reply::Done {
                code,
                message,
                data,
            });
            Ok(())
        }
        (Some(data), _) if json => {
            peerstash::outln!("{}", control::sorted_json(&data));
            Ok(())
        }
        (Some(Answer::State(s)), Output::State) => {
            let _pager = pager.then(peerstash::cli::Pager::start).flatten();
            print_state(&s, below.as_deref());
            Ok(())
        }
        (Some(Answer::Versions(v)), Output::Versions) => {
            print_versions(&v);
            Ok(())
        }
        (Some(Answer::Peers(p)), Output::Peers) => {
            print_peers(&p, unix_ms());
            Ok(())
        }
        (Some(Answer::Status(s)), Output::Status) => {
            print_status(&s, unix_ms());
            Ok(())
        }
        (Some(_), Output::State | Output::Versions | Output::Peers | Output::Status) => {
            Err("unexpected answer from the daemon".to_owned())
        }
        _ => {
            peerstash::outln!("{message}");
            Ok(())
        }
    };
    match printed {
        Ok(()) => code,
        Err(e) => fail(exit::FAILED, e),
    }
}

/// After `recover`: waits (a minute at most) for the daemon to answer again, now with the
/// recovered catalog.
fn wait_for_restart(runtime: &tokio::runtime::Runtime, socket: &Path, quiet: bool) -> i32 {
    let answers = || {
        let answer = runtime.block_on(control::call::<PeersReport>(
            socket,
            &Request::Peers,
            &[],
            |_| {},
        ));
        matches!(answer, Ok((exit::OK, _, _)))
    };
    let poll = std::time::Duration::from_millis(50);
    // It stops first (within seconds: the old daemon no longer answers), then starts again.
    let gone_by = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while answers() && std::time::Instant::now() < gone_by {
        std::thread::sleep(poll);
    }
    let back_by = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < back_by {
        if answers() {
            if quiet {
                return exit::OK;
            }
            peerstash::outln!(
                "peerstashd is running with the recovered catalog: run `peerstash restore --all` to bring the files back"
            );
            return exit::OK;
        }
        std::thread::sleep(poll);
    }
    fail(
        exit::UNREACHABLE,
        "the catalog was recovered but peerstashd did not answer within a minute after its restart: see its log (journalctl -u peerstash), start it, then run `peerstash restore --all`",
    )
}

/// `restore --all [DEST]`: the newest complete version of every file below every watched
/// folder, restored one by one as `restore` does (owner, mode, mtime; into DEST/path when DEST
/// is given). Existing files are skipped unless `force`; so are files deleted before the newest
/// catalog snapshot was taken (gone before the loss), unless `include_deleted`. Then each folder
/// it made is given the owner, mode and mtime the catalog recorded (with `force`, every recorded
/// folder). Ends with one summary line.
fn restore_all(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    config: &Config,
    dest: Option<&Path>,
    force: bool,
    include_deleted: bool,
    json: bool,
) -> i32 {
    let mut meter = peerstash::cli::Meter::new("restore --all", json);
    // The config's watched folders, then those the catalog knows were watched here and the
    // config does not name (added after it was copied off the machine).
    let mut folders: Vec<PathBuf> = config.watch.iter().map(|w| w.path.clone()).collect();
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
    // Each file with a complete version, and the watched folder it was found below; the
    // daemon takes the newest version that can be restored whole.
    let mut newest: std::collections::BTreeMap<PathBuf, &Path> = Default::default();
    // Each path's newest version: whether it was deleted, and when (unix s).
    let mut last: std::collections::HashMap<PathBuf, (u32, Option<i64>)> = Default::default();
    // The folders the catalog recorded (owner, mode, mtime), by path.
    let mut recorded: std::collections::BTreeMap<PathBuf, control::FolderInfo> = Default::default();
    let mut snapshot_ms: Option<i64> = None;
    let mut extra = Vec::new();
    for (i, w) in folders.iter().enumerate() {
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
            newest.entry(v.path).or_insert(w);
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
    let mut made: Vec<(Base, peerstash::fsx::Made)> = Vec::new();
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
    for (i, (path, watched)) in newest.into_iter().enumerate() {
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
                None,
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
            peerstash::store::snapshot::taken_at(ms)
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
        peerstash::cli::print_reply(&control::Reply::Done {
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
        peerstash::outln!("{message}");
    }
    code
}

/// The folders a single `restore` made on the way to a file's own path (`made`, below `/`,
/// parents first) given the owner, mode and mtime recorded for them, deepest first; the
/// messages of those that could not be. None when there was nothing to ask.
fn give_back_parents(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    made: Vec<peerstash::fsx::Made>,
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
fn watched_folder(path: &Path, made: &mut Vec<peerstash::fsx::Made>) -> Result<Folder, String> {
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

/// How a command's answer is printed without `--json`.
#[derive(Clone, Copy)]
enum Output {
    /// The daemon's one-line message.
    Message,
    State,
    Versions,
    Peers,
    Status,
}

fn demo() -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return fail(
                exit::FAILED,
                format!("cannot find this program's path: {e}"),
            )
        }
    };
    // This program runs the peers (`run-daemon`) and is their command line.
    let programs = Programs {
        daemon: exe.clone(),
        daemon_args: vec!["run-daemon".into()],
        cli: exe,
    };
    match peerstash::demo::run(programs) {
        Ok(()) => exit::OK,
        Err(e) => fail(exit::FAILED, format!("the demo failed: {e:#}")),
    }
}

fn run_daemon(config: &Path) -> i32 {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return fail(exit::USAGE, e),
    };
    let lan_key = match load_lan_key(&cfg.network, Some(config)) {
        Ok(k) => k,
        Err(e) => return fail(exit::USAGE, e),
    };
    peerstash::service::systemd::init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(exit::FAILED, e),
    };
    let result = peerstash::service::run_on(
        &runtime,
        cfg,
        lan_key,
        config.to_path_buf(),
        Default::default(),
    );
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(peerstash::service::Ended::Stopped) => exit::OK,
        Ok(peerstash::service::Ended::Restart) => fail(
            exit::FAILED,
            format!("cannot start again: {}", peerstash::service::reexec()),
        ),
        Err(e) => fail(exit::FAILED, format!("{e:#}")),
    }
}

/// `keygen PATH`: a new LAN key, never over an existing file. Needs no daemon and no config.
fn keygen(path: &Path) -> i32 {
    match peerstash::config::write_new_key(path) {
        Ok(()) => {
            peerstash::outln!(
                "wrote a new LAN key to {} (mode 0600): copy it (mode 0600) to every peer, set \
                 network.lan_key_file to its path there, and reload each peer",
                shown(path)
            );
            exit::OK
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => fail(
            exit::FAILED,
            format!(
                "{} already exists: not overwritten (the peers may use that key; remove it \
                 first to make a new one)",
                shown(path)
            ),
        ),
        Err(e) => fail(
            exit::FAILED,
            format!("cannot write a LAN key to {}: {e}", shown(path)),
        ),
    }
}

/// `peerstash suggest-id`: the id, the address it came from and why that one, and where to
/// put it. Reads the config's text only (the shipped one, with id 0, is what it helps fill in).
fn suggest_id(config: Option<&Path>, address: Option<std::net::Ipv4Addr>, json: bool) -> i32 {
    use peerstash::net::suggest_id::{self as s, Source};
    let config = config.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    let suggestion = match address {
        Some(a) => s::from_given(a),
        None => match s::machine_addresses() {
            Ok(addresses) => s::choose(s::configured_interface(config), &addresses),
            Err(e) => {
                return fail(
                    exit::FAILED,
                    format!("cannot list this machine's addresses: {e}"),
                )
            }
        },
    };
    let s = match suggestion {
        Ok(s) => s,
        Err(e @ s::SuggestError::NotAMachine(_)) => return fail(exit::USAGE, e),
        Err(e) => return fail(exit::FAILED, e),
    };
    let (interface, from) = match &s.source {
        Source::Given => (None, "given with --address".to_string()),
        Source::Configured { interface } => (
            interface.clone(),
            format!(
                "network.interface in {}{}",
                shown(config),
                match interface {
                    Some(name) => format!(", on {name}"),
                    None => ", which no interface of this machine holds now".to_string(),
                }
            ),
        ),
        Source::Interface(name) => (
            Some(name.clone()),
            format!("the first IPv4 address of this machine that is not loopback, on {name}"),
        ),
    };
    let [_, _, third, fourth] = s.address.octets();
    if json {
        let reply: control::Reply = control::Reply::Done {
            code: exit::OK,
            message: format!("suggested peer.id: {}", s.id),
            data: Some(Answer::SuggestedId(control::SuggestedId {
                id: s.id,
                address: s.address.to_string(),
                interface,
            })),
        };
        // Every key sorted, the line's own too, as it has always been printed.
        peerstash::outln!("{}", control::sorted_json(&reply));
        return exit::OK;
    }
    peerstash::outln!("suggested peer.id: {}", s.id);
    if s.id == 65_536 {
        peerstash::outln!(
            "from {} ({from}): its last two bytes are 0, which is no id; 65536 is the one number \
             past third byte × 256 + fourth byte, so no other address makes it",
            s.address
        );
    } else {
        peerstash::outln!(
            "from {} ({from}): third byte × 256 + fourth byte = {third} × 256 + {fourth}",
            s.address
        );
    }
    peerstash::outln!(
        "unique among machines whose addresses differ in their last two bytes (one /16 network); \
         set it as `id` under [peer] in {} (never change it afterwards)",
        shown(config)
    );
    exit::OK
}

fn print_versions(versions: &[VersionInfo]) {
    peerstash::outln!(
        "{:>7}  {:>12}  {:>3}  {:>9}  {:<16}  path",
        "version",
        "size",
        "RD",
        "min RD",
        "fileId"
    );
    for v in versions {
        peerstash::outln!(
            "{:>7}  {:>12}  {:>3}  {:>9}  {:<16}  {}{}{}",
            v.version,
            v.size,
            v.desired_rd,
            v.min_perceived_rd,
            &v.file_id[..16],
            shown(&v.path),
            if v.encrypted { "  (encrypted)" } else { "" },
            if v.complete {
                ""
            } else {
                "  (backup unfinished)"
            }
        );
    }
}

/// One line per background worker: "worker queue 1: busy 3s, backing up /srv/x", "worker
/// repair: failing 60s, cannot check replication: …".
fn print_worker(w: &WorkerInfo) {
    let mut line = format!("worker {}: {}", w.name, w.state);
    if let Some(s) = w.since_s {
        line.push_str(&format!(" {s}s"));
    }
    let path = w.path.as_deref().map(shown);
    match (&w.what, &w.error, path) {
        (Some(what), _, Some(path)) => line.push_str(&format!(", {what} {path}")),
        (Some(what), _, None) => line.push_str(&format!(", {what}")),
        (None, Some(error), Some(path)) => line.push_str(&format!(", {error} ({path})")),
        (None, Some(error), None) => line.push_str(&format!(", {error}")),
        (None, None, _) => {}
    }
    peerstash::outln!("{line}");
}

/// "1 file", "3 files".
fn files(n: usize) -> String {
    match n {
        1 => "1 file".into(),
        n => format!("{n} files"),
    }
}

/// The line that says at once whether every backed-up file is safe.
fn health_summary(s: &PeerState) -> String {
    let count = |f: fn(&Health) -> bool| s.files.iter().filter(|x| f(&x.health)).count();
    let degraded = count(|h| matches!(h, Health::Degraded { .. }));
    let at_risk = count(|h| matches!(h, Health::AtRisk { .. }));
    match (s.files.len(), degraded + at_risk) {
        (0, _) => "nothing backed up yet".into(),
        (n, 0) => format!("all {} at their RD", files(n)),
        _ => format!("{} degraded, {at_risk} at risk", files(degraded)),
    }
}

fn print_state(s: &PeerState, below: Option<&Path>) {
    for warning in &s.warnings {
        peerstash::outln!("WARNING: {warning}");
    }
    peerstash::outln!("{}", health_summary(s));
    peerstash::outln!(
        "peer {}  protocol {}  hosting {} of {} bytes",
        s.peer_id,
        s.protocol,
        s.used_bytes,
        s.quota_bytes
    );
    for u in &s.unavailable {
        peerstash::outln!("UNAVAILABLE: {} ({})", shown(&u.path), u.reason);
    }
    if let Some(snap) = &s.catalog_snapshot {
        peerstash::outln!(
            "catalog snapshot: {} ({}), {}",
            snap.snapshot,
            snap.taken,
            match snap.at_rd {
                true => "at its RD: `peerstash recover` would find it",
                false => "below its RD: `peerstash recover` would not find it yet (what it misses is sent again every 10 minutes)",
            }
        );
    }
    let busy: Vec<String> = s.in_progress.iter().map(|p| shown(p).to_string()).collect();
    peerstash::outln!(
        "queue: {} paths waiting{}",
        s.queue_length,
        if busy.is_empty() {
            String::new()
        } else {
            format!("; backing up {}", busy.join(", "))
        }
    );
    // The queue's many workers: the idle ones on one line.
    let idle_queue = |w: &&WorkerInfo| w.name.starts_with("queue ") && w.state == "idle";
    let idle = s.workers.iter().filter(idle_queue).count();
    if idle > 0 {
        peerstash::outln!("worker queue: {idle} idle");
    }
    for w in s.workers.iter().filter(|w| !idle_queue(w)) {
        print_worker(w);
    }
    if s.malformed_datagrams + s.busy_drops + s.queue_drops > 0 {
        peerstash::outln!(
            "dropped since start: {} malformed datagrams, {} PUTCHUNKs while busy, {} datagrams while the catalog queue was full",
            s.malformed_datagrams, s.busy_drops, s.queue_drops
        );
    }
    if s.unauthenticated_datagrams > 0 {
        peerstash::outln!(
            "dropped since start: {} datagrams without a valid LAN key tag",
            s.unauthenticated_datagrams
        );
    }
    if s.unacked_deletes > 0 {
        peerstash::outln!(
            "deletes not yet acknowledged by the peers holding them: {}",
            s.unacked_deletes
        );
    }
    match below {
        None => peerstash::outln!("\nbacked up ({} versions):", s.files.len()),
        Some(b) => peerstash::outln!(
            "\nbacked up at or below {} ({} versions):",
            shown(b),
            s.files.len()
        ),
    }
    for f in &s.files {
        let min = f.min_rd();
        let below = match f.health {
            Health::AtRisk { chunks } => {
                format!(" ({} chunks below, {chunks} at risk)", f.chunks_below_rd)
            }
            _ if f.chunks_below_rd > 0 => format!(" ({} chunks below)", f.chunks_below_rd),
            _ => String::new(),
        };
        peerstash::outln!(
            "  {:<8} {} v{}  {} bytes  {} chunks  RD {} wanted, lowest {}{}  {}",
            f.health.word(),
            shown(&f.path),
            f.version,
            f.size,
            f.chunks.len(),
            f.desired_rd,
            min,
            below,
            &f.file_id[..16]
        );
    }
    if below.is_some() {
        // Hosted chunks have no path: the whole report lists them.
        return;
    }
    peerstash::outln!("\nhosted ({} chunks):", s.stored.len());
    for c in &s.stored {
        peerstash::outln!(
            "  {}#{}  {} bytes  RD {} wanted, {} perceived",
            &c.file_id[..16],
            c.chunk_no,
            c.size,
            match c.desired_rd {
                0 => "?".to_owned(), // re-indexed by --rebuild-catalog, not heard again yet
                n => n.to_string(),
            },
            c.perceived_rd
        );
    }
}

/// How long ago `then_ms` was at `now_ms`: "3 s ago", "5 min ago", "2 h ago", "4 d ago".
/// A count with thousands separators: 1,234.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// Names the first few of `paths`.
fn some_of(paths: &[PathBuf]) -> String {
    const SHOWN: usize = 10;
    let mut names: Vec<String> = paths
        .iter()
        .take(SHOWN)
        .map(|p| shown(p).to_string())
        .collect();
    if paths.len() > SHOWN {
        names.push(format!(
            "and {} more (see `peerstash state`)",
            paths.len() - SHOWN
        ));
    }
    names.join(", ")
}

fn print_status(s: &StatusReport, now_ms: i64) {
    for warning in &s.warnings {
        peerstash::outln!("WARNING: {warning}");
    }
    let plural = |n: usize| if n == 1 { "file" } else { "files" };
    match (s.files, s.degraded.len(), s.at_risk.len()) {
        (0, _, _) => peerstash::outln!("nothing backed up yet"),
        (n, 0, 0) => peerstash::outln!("all {} {} at their RD", thousands(n), plural(n as usize)),
        (_, d, r) => peerstash::outln!(
            "{} {} degraded, {r} at risk",
            thousands(d as u64),
            plural(d)
        ),
    }
    if let Some(why) = &s.below_rd_why {
        peerstash::outln!("  why: {why}");
    }
    if !s.at_risk.is_empty() {
        peerstash::outln!("  at risk: {}", some_of(&s.at_risk));
    }
    if !s.degraded.is_empty() {
        peerstash::outln!("  degraded: {}", some_of(&s.degraded));
    }
    peerstash::outln!(
        "peer {}: hosting {} of {} bytes; queue: {} paths waiting",
        s.peer_id,
        thousands(s.used_bytes),
        thousands(s.quota_bytes),
        thousands(s.queue_length)
    );
    for f in &s.folders {
        let mut last = match f.last_backup_ms {
            Some(t) => format!("last backup {}", ago(now_ms, t)),
            None => "never backed up".to_owned(),
        };
        if let (Some(t), Some(file)) = (f.waiting_since_ms, &f.waiting) {
            last.push_str(&format!(
                "; oldest change waiting: {} ({})",
                shown(file),
                ago(now_ms, t)
            ));
        }
        match &f.unavailable {
            Some(why) => peerstash::outln!("{}: UNAVAILABLE ({why}); {last}", shown(&f.path)),
            None => peerstash::outln!("{}: {last}", shown(&f.path)),
        }
    }
    peerstash::outln!("peers: {} heard, {} lost", s.peers_heard, s.peers_lost);
    if let Some(snap) = &s.catalog_snapshot {
        peerstash::outln!(
            "catalog snapshot: {} ({}, {})",
            snap.snapshot,
            snap.taken,
            match snap.at_rd {
                true => "at its RD",
                false => "below its RD",
            }
        );
    }
    // The exit status in words: what a monitoring check acts on.
    let problems: Vec<&str> = (s.problems.iter())
        .map(|p| match p.as_str() {
            "folder_unavailable" => "a watched folder is unavailable",
            "below_rd" => "files below their RD",
            "no_snapshot_at_rd" => "no catalog snapshot at its RD",
            "queue_not_drained" => "changes queued, not yet backed up",
            other => other,
        })
        .collect();
    if !problems.is_empty() {
        peerstash::outln!("not healthy: {}", problems.join("; "));
    }
}

fn ago(now_ms: i64, then_ms: i64) -> String {
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..120 => format!("{s} s ago"),
        120..7_200 => format!("{} min ago", s / 60),
        7_200..172_800 => format!("{} h ago", s / 3_600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn print_peers(report: &PeersReport, now_ms: i64) {
    if report.peers.is_empty() {
        peerstash::outln!("peer {}: no other peer known yet", report.peer_id);
        return;
    }
    peerstash::outln!(
        "{:>6}  {:<12}  {:<21}  {:>14}  {:>14}  {:>15}",
        "peer",
        "protocol",
        "last heard",
        "chunks of ours",
        "hosted bytes",
        "unacked deletes"
    );
    for p in &report.peers {
        let heard = match (p.last_heard_ms, p.heard_since_start) {
            (Some(t), true) => ago(now_ms, t),
            _ => "not heard since start".to_owned(),
        };
        let lost = match p.lost_at_ms {
            Some(t) => format!("  LOST (since {})", ago(now_ms, t)),
            None if p.lost => "  LOST".to_owned(),
            None => String::new(),
        };
        peerstash::outln!(
            "{:>6}  {:<12}  {:<21}  {:>14}  {:>14}  {:>15}{lost}",
            p.id,
            p.protocol.as_deref().unwrap_or("unknown yet"),
            heard,
            p.chunks_of_ours,
            p.hosted_bytes,
            p.unacked_deletes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_as_how_long_ago() {
        assert_eq!(ago(10_000, 7_000), "3 s ago");
        assert_eq!(ago(10_000, 12_000), "0 s ago", "a clock that stepped back");
        assert_eq!(ago(300_000, 0), "5 min ago");
        assert_eq!(ago(7_200_000, 0), "2 h ago");
        assert_eq!(ago(4 * 86_400_000, 0), "4 d ago");
    }

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
