//! The command lines of `peerstash` and `peerstashd` (clap), in the library so that man pages
//! and shell completions can be generated from the same definitions the programs parse; and
//! what `peerstash` does on the caller's side beyond one request: its reports (`report`),
//! `restore --all` (`restore_all`), its progress meter and pager.

pub mod at;
pub mod report;
pub mod restore_all;

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// Back up, restore and inspect files with the local peerstash daemon.
#[derive(Parser)]
#[command(name = "peerstash", version)]
pub struct Args {
    /// The daemon's configuration file (to find its control socket).
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "socket")]
    pub config: Option<PathBuf>,
    /// The daemon's control socket (instead of reading the config).
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// Answer in JSON on stdout: a report as one object; backup, restore and recover as one
    /// line per progress event, then `{"type":"done","code":..,"message":..,"data":..}`; any
    /// other command as that last line alone.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Back up a file, or every file below a folder, now.
    Backup {
        path: PathBuf,
        /// Desired replication degree, 1-9 (default: the watched folder's, else 2).
        #[arg(long, short = 'r', value_parser = clap::value_parser!(u8).range(1..=9))]
        replication: Option<u8>,
        /// Encrypt the chunks under this peer's master key (default: as the watched folder
        /// says, else in clear).
        #[arg(long)]
        encrypt: bool,
    },
    /// Rebuild a backed-up file from the peers and check its content hash.
    Restore {
        /// The file to restore; with --all, the folder to restore everything into (default:
        /// every file to its own path).
        #[arg(required_unless_present = "all")]
        path: Option<PathBuf>,
        /// Which version (see `versions`); default the newest.
        #[arg(long, conflicts_with = "all")]
        version: Option<u32>,
        /// The file, or every file below the folder, as it was at WHEN: an age (3d, 12h, 90m,
        /// 2w) or a date and time in UTC ("2026-12-01 14:00"). Files deleted since come back
        /// too, nothing newer; existing files are skipped unless --force (a folder's files go
        /// to DEST/path with --to DEST).
        #[arg(long, value_name = "WHEN", conflicts_with_all = ["all", "version"])]
        at: Option<String>,
        /// Where to write it (a file, or a folder to put it in); default its own path.
        #[arg(long, value_name = "DEST", conflicts_with = "all")]
        to: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
        /// Every file of every watched folder (its newest complete version), with its owner,
        /// mode and mtime, below PATH if given (as /PATH/watched/folder/file); the folders it
        /// makes get the owner, mode and mtime recorded for them. Files deleted before the
        /// newest catalog snapshot was taken are left out (see --include-deleted).
        #[arg(long)]
        all: bool,
        /// With --all: restore also the files deleted before the newest catalog snapshot was
        /// taken (after a recover: the snapshot it installed).
        #[arg(long, requires = "all")]
        include_deleted: bool,
    },
    /// List the backed-up versions of a path (or of every file below a folder).
    Versions {
        path: PathBuf,
        /// Only the version of each file at WHEN (see `restore --at`): what a folder held then.
        #[arg(long, value_name = "WHEN")]
        at: Option<String>,
    },
    /// Delete every backed-up version of a path from the peers.
    Delete { path: PathBuf },
    /// Set the space offered to other peers now (e.g. "10GiB", "0" frees everything).
    Reclaim { size: String },
    /// A watched folder's history (see `keep` in the config's [[watch]]).
    History {
        #[command(subcommand)]
        what: HistoryCommand,
    },
    /// Check the catalog in full (slow on a large catalog; `peerstashd` does a quick check at
    /// every start). Root only.
    Check,
    /// Read back every chunk this peer hosts and check it against its hash; a damaged copy is
    /// dropped and announced (REMOVED), so another holder makes a new one. Root only (the
    /// packages run it weekly).
    Scrub,
    /// Back up a snapshot of this peer's catalog now, encrypted under its master key (the daemon
    /// takes one after changes, at most every 10 minutes, and daily). Root only.
    Snapshot,
    /// On a reinstalled computer (same peer.id, same master key file, empty state folder): find
    /// this peer's newest catalog snapshot on the peers and install it (the daemon restarts
    /// with it); then `peerstash restore --all` brings the files back. Root only.
    Recover {
        /// How many days back to look for dated snapshots, taken by a version before numbered
        /// ones (the computer was lost that long ago at most).
        #[arg(long, default_value_t = 92, value_parser = clap::value_parser!(u32).range(1..=3660))]
        days: u32,
        /// Replace the catalog even if it already lists backups (it is kept beside as
        /// catalog.db.before-recover).
        #[arg(long)]
        force: bool,
        /// List the snapshots found on the peers (number, when taken, whether whole), and
        /// change nothing.
        #[arg(long, conflicts_with_all = ["at", "none", "force"])]
        list: bool,
        /// Install snapshot N (as `--list` shows it), not the newest.
        #[arg(long, value_name = "N", conflicts_with = "none")]
        at: Option<String>,
        /// There is no catalog to recover (a new peer whose master key was copied from
        /// elsewhere): start taking catalog snapshots. Refused while snapshots of this peer are
        /// found on the peers, unless with --force.
        #[arg(long)]
        none: bool,
    },
    /// Whether this peer's files are safe, at a glance: one health line (the degraded and
    /// at-risk files by name), quota and use, the queue, the last backup of each watched folder,
    /// the peers heard and lost, the newest catalog snapshot. Exit status, for monitoring: 0
    /// healthy; 5 a watched folder unavailable; 3 a file below its RD; 7 no catalog snapshot at
    /// its RD; 6 changes queued, not yet backed up (the first of these that holds).
    Status,
    /// Show this peer's state: quota, what it backed up and how healthy each file is, what it
    /// hosts. On a terminal the report goes through $PAGER (default `less -FRX`).
    State {
        /// Only the versions of files at or below this path (and no hosted chunks).
        path: Option<PathBuf>,
        /// Print straight to the terminal, without the pager.
        #[arg(long)]
        no_pager: bool,
    },
    /// List the other peers heard or holding chunks of ours: protocol and when last heard (as
    /// heard since this daemon started: "unknown yet" until then), lost or not, chunks of ours
    /// each holds, bytes of its we host, deletes it has not acknowledged.
    Peers,
    /// Write a new random LAN key (32 bytes, mode 0600) to PATH, which must not exist; copy it
    /// to every peer and set network.lan_key_file to it. Needs no daemon.
    Keygen { path: PathBuf },
    /// Print a peer.id for this machine made from its IPv4 address: third byte × 256 + fourth
    /// byte (never 0), unique among the machines of one /16 network. The address is the
    /// config's network.interface when it is set and not loopback, else the first IPv4 address
    /// of an interface that is up and not loopback; the output says which. Needs no daemon.
    SuggestId {
        /// Make the id from this address instead (for scripts).
        #[arg(long, value_name = "A.B.C.D")]
        address: Option<std::net::Ipv4Addr>,
    },
    /// Run a local cluster of 4 peers on 127.0.0.1 and show a backup, a lost peer and a restore.
    Demo,
    /// Run a peer daemon (what `peerstashd` does; used by `demo`).
    #[command(hide = true)]
    RunDaemon {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Write man pages and shell completions of both programs into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

/// The peerstash daemon: backs up this computer's watched folders on the other peers of the
/// LAN and hosts their chunks within a quota.
#[derive(Parser)]
#[command(name = "peerstashd", version)]
pub struct DaemonArgs {
    /// The configuration file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Check the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check_config: bool,
    /// The catalog was lost: re-index the hosted chunk files into a new one (their hashes and
    /// sizes), announce them to their home peers with STORED, then run as usual.
    #[arg(long, conflicts_with = "check_config")]
    pub rebuild_catalog: bool,
    /// Start with the key in peer.master_key_file (made there if missing) although the
    /// catalog's encrypted versions were made with another one: those versions can no longer
    /// be restored here (they stay listed, at risk) and every encrypted file is backed up again.
    #[arg(long, conflicts_with = "check_config")]
    pub new_master_key: bool,
}

/// Writes to stdout (`outln!`, `out!`). A reader that went away (`peerstash state | head -1`)
/// ends the program as it ends any Unix command: quietly, by SIGPIPE (status 141 in a shell).
/// Any other error writing is ignored, as `println!` would panic on it.
pub fn print_out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| match newline {
            true => out.write_all(b"\n"),
            false => Ok(()),
        })
        .and_then(|()| out.flush());
    if written.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
        use nix::sys::signal::{raise, signal, SigHandler, Signal};
        // The default action, which Rust replaces with "ignore" at start.
        // SAFETY: no handler is installed, only the default action restored.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
        let _ = raise(Signal::SIGPIPE);
        std::process::exit(141);
    }
}

/// `println!` to stdout, ended quietly by a closed pipe (`print_out`).
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::print_out(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::cli::print_out(format_args!($($arg)*), true) };
}

/// `print!` to stdout, ended quietly by a closed pipe (`print_out`).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::print_out(format_args!($($arg)*), false) };
}

/// A long report read through a pager, as `git log` and `systemctl` do: while it lives, stdout
/// is the pager's input. Only when stdout is a terminal; `$PAGER` says which (run by `sh -c`;
/// `less -FRX` when unset and less is installed, which quits by itself when the text fits on
/// one screen; empty or `cat` for none). A pager that cannot start leaves stdout as it was.
pub struct Pager {
    child: std::process::Child,
    /// The terminal, to put back as stdout at the end.
    terminal: std::os::fd::OwnedFd,
}

impl Pager {
    pub fn start() -> Option<Pager> {
        use std::io::IsTerminal;
        use std::os::fd::{AsRawFd, FromRawFd};
        if !std::io::stdout().is_terminal() {
            return None;
        }
        let command = match std::env::var("PAGER") {
            Ok(c) => c,
            // Not every system has less (a minimal install): then no pager.
            Err(_) => {
                let path = std::env::var_os("PATH").unwrap_or_default();
                std::env::split_paths(&path)
                    .any(|dir| dir.join("less").is_file())
                    .then(|| "less -FRX".to_owned())?
            }
        };
        if command.trim().is_empty() || command.trim() == "cat" {
            return None;
        }
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&command)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let input = child.stdin.take()?;
        let out = std::io::stdout().as_raw_fd();
        let saved = nix::unistd::dup(out).ok();
        let swapped = saved.is_some_and(|_| nix::unistd::dup2(input.as_raw_fd(), out).is_ok());
        drop(input);
        let Some(saved) = saved.filter(|_| swapped) else {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        // SAFETY: `saved` was just made by dup() and is owned by nothing else.
        let terminal = unsafe { std::os::fd::OwnedFd::from_raw_fd(saved) };
        Some(Pager { child, terminal })
    }
}

impl Drop for Pager {
    /// The report is whole: the pager reads its end, and the program ends when it quits.
    fn drop(&mut self) {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let _ = std::io::stdout().flush();
        // Stdout is the terminal again, which closes the pager's input.
        let _ = nix::unistd::dup2(self.terminal.as_raw_fd(), std::io::stdout().as_raw_fd());
        let _ = self.child.wait();
    }
}

/// Says `message` on stderr as the one line of an error, and gives back the exit status `code`.
pub fn fail(code: i32, message: impl std::fmt::Display) -> i32 {
    eprintln!("peerstash: {message}");
    code
}

/// One reply (a progress event, the outcome) as a JSON line on stdout (`--json`).
pub fn print_reply(reply: &crate::control::Reply) {
    if let Ok(line) = serde_json::to_string(reply) {
        crate::outln!("{line}");
    }
}

/// A long command's progress on stderr: a bar with the rate and ETA on a terminal, otherwise a
/// plain line every `PLAIN_EVERY` (none for a command that ends sooner). The daemon's lines go
/// to stdout as before (above the bar).
pub struct Meter {
    what: String,
    /// Every event as a JSON line on stdout instead (`--json`).
    json: bool,
    /// stderr is a terminal: a bar, from the first amount on.
    tty: bool,
    bar: Option<indicatif::ProgressBar>,
    started: std::time::Instant,
    said: Option<std::time::Instant>,
    unit: Option<crate::control::Unit>,
}

const PLAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Meter {
    /// For the command `what` ("backup", "restore"...); with `json` (`--json`), every event as
    /// a JSON line on stdout (`{"type":"progress","message":...,"amount":...}`), and no bar.
    pub fn new(what: &str, json: bool) -> Meter {
        use std::io::IsTerminal;
        Meter {
            what: what.to_owned(),
            json,
            tty: !json && std::io::stderr().is_terminal(),
            bar: None,
            started: std::time::Instant::now(),
            said: None,
            unit: None,
        }
    }

    /// Prints a line to stdout, above the bar (with `--json`, as a progress event).
    pub fn say(&self, line: &str) {
        if self.json {
            print_reply(&crate::control::Reply::Progress {
                message: line.to_owned(),
                amount: None,
            });
            return;
        }
        match &self.bar {
            Some(bar) => bar.suspend(|| crate::outln!("{line}")),
            None => crate::outln!("{line}"),
        }
    }

    /// A progress reply: its line printed, its amount shown.
    pub fn event(&mut self, e: &crate::control::ProgressEvent) {
        if self.json {
            print_reply(&crate::control::Reply::Progress {
                message: e.message.clone(),
                amount: e.amount,
            });
            return;
        }
        if !e.message.is_empty() {
            self.say(&e.message);
        }
        if let Some(a) = e.amount {
            self.amount(a);
        }
    }

    /// Shows `done` of `total` `unit`s.
    pub fn amount(&mut self, a: crate::control::Amount) {
        use crate::control::Unit;
        let unit_name = a.unit.name();
        if self.tty && self.bar.is_none() {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(a.total),
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_message(self.what.clone());
            self.bar = Some(bar);
        }
        match &self.bar {
            Some(bar) => {
                if self.unit != Some(a.unit) {
                    let template = match a.unit {
                        Unit::Bytes => "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}".to_owned(),
                        _ => format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit_name} {{per_sec}} ETA {{eta}}"),
                    };
                    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    self.unit = Some(a.unit);
                }
                bar.set_length(a.total);
                bar.set_position(a.done);
            }
            None => {
                let now = std::time::Instant::now();
                let due = self
                    .said
                    .map_or(self.started + PLAIN_EVERY, |t| t + PLAIN_EVERY);
                if now < due || a.total == 0 {
                    return;
                }
                self.said = Some(now);
                eprintln!(
                    "{}",
                    plain_line(&self.what, a, now.duration_since(self.started))
                );
            }
        }
    }

    /// Removes the bar (before the final line).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The progress line printed every `PLAIN_EVERY` when stderr is no terminal: "backup: 1200000
/// of 6000000 bytes (20%), 240000 bytes/s, about 20 s left".
pub fn plain_line(what: &str, a: crate::control::Amount, elapsed: std::time::Duration) -> String {
    let unit = a.unit.name();
    let done = a.done.min(a.total);
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = match rate > 0.0 {
        true => format!(", about {:.0} s left", (a.total - done) as f64 / rate),
        false => String::new(),
    };
    let percent = match a.total {
        0 => 100,
        t => done * 100 / t,
    };
    format!(
        "{what}: {done} of {} {unit} ({percent}%), {rate:.0} {unit}/s{eta}",
        a.total
    )
}

/// Writes `peerstash.1`, `peerstashd.8` and bash, zsh and fish completions into `dir`.
pub fn generate_docs(dir: &Path) -> std::io::Result<()> {
    use clap_complete::{generate_to, Shell};
    std::fs::create_dir_all(dir)?;
    for (mut cmd, section) in [(Args::command(), "1"), (DaemonArgs::command(), "8")] {
        let name = cmd.get_name().to_owned();
        let page = clap_mangen::Man::new(cmd.clone()).section(section);
        let mut out = Vec::new();
        page.render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.{section}")), out)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            generate_to(shell, &mut cmd, name.clone(), dir)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_consistent() {
        Args::command().debug_assert();
        DaemonArgs::command().debug_assert();
    }

    #[test]
    fn docs_are_generated() {
        let dir = tempfile::tempdir().unwrap();
        generate_docs(dir.path()).unwrap();
        for f in [
            "peerstash.1",
            "peerstashd.8",
            "peerstash.bash",
            "_peerstashd",
            "peerstash.fish",
        ] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        let man = std::fs::read_to_string(dir.path().join("peerstash.1")).unwrap();
        assert!(man.contains("restore"), "{man}");
        assert!(man.contains("peers"), "{man}");
        assert!(!man.contains("run-daemon"), "hidden commands stay hidden");
    }

    #[test]
    fn the_plain_progress_line_says_how_far_how_fast_and_how_long_yet() {
        use crate::control::{Amount, Unit};
        let a = |done, total, unit| Amount { done, total, unit };
        let s = std::time::Duration::from_secs;
        assert_eq!(
            plain_line("backup", a(1_200_000, 6_000_000, Unit::Bytes), s(5)),
            "backup: 1200000 of 6000000 bytes (20%), 240000 bytes/s, about 20 s left"
        );
        assert_eq!(
            plain_line("restore --all", a(0, 50, Unit::Files), s(5)),
            "restore --all: 0 of 50 files (0%), 0 files/s",
            "no rate yet: no time left is guessed"
        );
        assert_eq!(
            plain_line("recover", a(12, 10, Unit::Chunks), s(10)),
            "recover: 10 of 10 chunks (100%), 1 chunks/s, about 0 s left",
            "more done than announced reads as all of it"
        );
        assert_eq!(
            plain_line("x", a(0, 0, Unit::Files), std::time::Duration::ZERO),
            "x: 0 of 0 files (100%), 0 files/s"
        );
    }
}

/// `peerstash history ...`.
#[derive(Debug, clap::Subcommand)]
pub enum HistoryCommand {
    /// The guard held DIR's history (too many of its files changed at once: `status` says
    /// why): once you have looked, and restored what was lost (`restore DIR --at WHEN`), let
    /// its old versions be pruned again. Root only.
    Resume { dir: PathBuf },
}
