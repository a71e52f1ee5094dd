//! `peerstash`: the command line that drives the local peerstash daemon over its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use peerstash::cli::report::{print_peers, print_state, print_status, print_versions};
use peerstash::cli::restore_all::{give_back_parents, restore_all};
use peerstash::cli::{fail, Args, Command};
use peerstash::clock::unix_ms;
use peerstash::cluster::Programs;
use peerstash::config::{parse_size, Config, DEFAULT_CONFIG_PATH};
use peerstash::control::{self, exit, shown, Answer, PeersReport, Request};

fn main() -> ExitCode {
    let args = Args::parse();
    ExitCode::from(run(args) as u8)
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
            mut version,
            to,
            force,
            all: false,
            at,
            ..
        } => {
            let Some(path) = path else {
                return fail(exit::USAGE, "restore needs a PATH (or --all)");
            };
            let path = resolve(&path);
            let to = to.as_deref().map(written_to);
            if let Some(when) = at {
                // The version of each file at WHEN: one file, or a folder's files.
                let at_ms = match peerstash::cli::at::parse_when(&when, unix_ms()) {
                    Ok(ms) => ms,
                    Err(e) => return fail(exit::USAGE, e),
                };
                let listed = runtime.block_on(control::call::<Vec<control::VersionInfo>>(
                    &socket,
                    &Request::Versions { path: path.clone() },
                    &[],
                    |_| {},
                ));
                let versions = match listed {
                    Ok((exit::OK, _, Some(v))) => v,
                    Ok((code, message, _)) => return fail(code, message),
                    Err(e) => return fail(exit::UNREACHABLE, e),
                };
                let picked = peerstash::cli::at::at(versions, at_ms);
                match picked.get(&path) {
                    Some(v) if picked.len() == 1 => version = Some(v.version),
                    _ if picked.is_empty() => {
                        return fail(
                            exit::FAILED,
                            format!(
                                "nothing of {} was backed up at {} (`peerstash versions {}` lists when each version was made)",
                                shown(&path),
                                peerstash::store::snapshot::taken_at(at_ms).trim_start_matches("taken "),
                                shown(&path)
                            ),
                        )
                    }
                    _ => {
                        // The watched folders, where the config can be read (else every file
                        // is reached from `/`).
                        let watched: Vec<PathBuf> = (config.iter().flat_map(|c| &c.watch))
                            .map(|w| w.path.clone())
                            .collect();
                        return peerstash::cli::restore_all::restore_at(
                            &runtime,
                            &socket,
                            &watched,
                            &path,
                            picked,
                            to.as_deref(),
                            force,
                            json,
                        );
                    }
                }
            }
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
            let versions_at = match &command {
                Command::Versions { at: Some(when), .. } => {
                    match peerstash::cli::at::parse_when(when, unix_ms()) {
                        Ok(ms) => Some(ms),
                        Err(e) => return fail(exit::USAGE, e),
                    }
                }
                _ => None,
            };
            let request = match command {
                Command::Versions { path, .. } => Request::Versions {
                    path: resolve(&path),
                },
                Command::Delete { path } => Request::Delete {
                    path: resolve(&path),
                },
                Command::History {
                    what: peerstash::cli::HistoryCommand::Resume { dir },
                } => Request::HistoryResume {
                    path: resolve(&dir),
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
            let asked = runtime.block_on(control::ask(&socket, &request, &[], |e| {
                if !e.message.is_empty() {
                    print(&e.message)
                }
            }));
            // `versions --at`: each file's version at that moment only.
            match versions_at {
                Some(ms) => asked.map(|(code, message, data)| {
                    let data = data.map(|a| match a {
                        Answer::Versions(v) => {
                            Answer::Versions(peerstash::cli::at::at(v, ms).into_values().collect())
                        }
                        other => other,
                    });
                    (code, message, data)
                }),
                None => asked,
            }
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
    i32::from(peerstash::service::entry::main(
        peerstash::service::entry::Launch {
            config: config.to_path_buf(),
            ..Default::default()
        },
    ))
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
