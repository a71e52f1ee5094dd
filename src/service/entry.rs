//! The daemon's one entry, for `peerstashd` and for `peerstash run-daemon` (what the demo
//! starts) alike: the config and the LAN key read and checked, logging, the master key read
//! (never made here: the start decides that against the catalog), the limit on open files
//! raised, then the peer run until SIGTERM.

use std::path::PathBuf;

use super::{run_on, systemd, Ended};
use crate::config::{load_lan_key, master_key_if_present, Config};
use crate::daemon::StartOptions;

/// How the daemon was asked to start (`peerstashd`'s flags).
#[derive(Default)]
pub struct Launch {
    /// The configuration file.
    pub config: PathBuf,
    /// Check the configuration and exit (0 valid, 2 invalid).
    pub check_config: bool,
    /// Re-index the hosted chunk files into a new catalog before running.
    pub rebuild_catalog: bool,
    /// Start with the key in `peer.master_key_file` over a catalog made with another one.
    pub new_master_key: bool,
}

/// Exit status: the config or a key could not be used.
const USAGE: u8 = 2;
const FAILED: u8 = 1;

/// Runs the daemon as `launch` says; returns the process's exit status: 0 stopped (SIGTERM) or
/// config valid, 1 failed, 2 a config or key that cannot be used.
pub fn main(launch: Launch) -> u8 {
    let config = match Config::load(&launch.config) {
        Ok(c) => c,
        Err(e) => return refuse(USAGE, &e),
    };
    let lan_key = match load_lan_key(&config.network, Some(&launch.config)) {
        Ok(k) => k,
        Err(e) => return refuse(USAGE, &e),
    };
    if launch.check_config {
        println!("{}: valid", launch.config.display());
        return 0;
    }
    systemd::init_logging();
    // Read only: whether a key may be made is the start's to decide, against the catalog.
    let master_key = match master_key_if_present(&config.peer, Some(&launch.config)) {
        Ok(key) => key,
        Err(e) => return refuse(USAGE, &e),
    };
    raise_descriptor_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return refuse(FAILED, format!("cannot start the async runtime: {e}")),
    };
    let options = StartOptions {
        rebuild_catalog: launch.rebuild_catalog,
        master_key,
        new_master_key: launch.new_master_key,
    };
    let result = run_on(&runtime, config, lan_key, launch.config, options);
    // `run` has stopped every task it could (SIGTERM): what is left (a file read by a blocking
    // thread, say) is not waited for long. The catalog is consistent at any instant.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(Ended::Stopped) => 0,
        Ok(Ended::Restart) => {
            let e = super::reexec();
            tracing::error!("cannot start again: {e}; start peerstashd by hand");
            FAILED
        }
        Err(e) => {
            // One line: to the journal at error priority under systemd, to stderr otherwise.
            tracing::error!("{e:#}");
            FAILED
        }
    }
}

/// A refusal before logging starts: one line on stderr, which journald records at error
/// priority under systemd (the `<3>` prefix; `journalctl -p err` shows it).
fn refuse(code: u8, message: impl std::fmt::Display) -> u8 {
    match systemd::stderr_is_journal() {
        true => eprintln!("<3>peerstashd: {message}"),
        false => eprintln!("peerstashd: {message}"),
    }
    code
}

/// Many files are backed up at once, each through its descriptor: the soft limit on open files
/// is raised to the hard one (the unit sets both; a shell's soft limit is often 1024). Backups
/// hold at most a quarter of it whatever it is.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let wanted = hard.min(65_536);
        if soft < wanted {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
                tracing::debug!("cannot raise the limit on open files to {wanted}: {e}");
            }
        }
    }
}
