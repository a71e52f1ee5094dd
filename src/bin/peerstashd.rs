//! `peerstashd`: the peerstash daemon. Thin: reads the config and runs the peer.

use std::process::ExitCode;

use clap::Parser;
use peerstash::cli::DaemonArgs as Args;
use peerstash::config::{load_lan_key, master_key_if_present, Config};

/// A refusal before logging starts: one line on stderr, which journald records at error
/// priority under systemd (the `<3>` prefix; `journalctl -p err` shows it).
fn refuse(message: impl std::fmt::Display) {
    match peerstash::service::systemd::stderr_is_journal() {
        true => eprintln!("<3>peerstashd: {message}"),
        false => eprintln!("peerstashd: {message}"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            refuse(&e);
            return ExitCode::from(2);
        }
    };
    let lan_key = match load_lan_key(&config.network, Some(&args.config)) {
        Ok(k) => k,
        Err(e) => {
            refuse(&e);
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    peerstash::service::systemd::init_logging();
    // Read only: whether a key may be made is the start's to decide, against the catalog.
    let master_key = match master_key_if_present(&config.peer, Some(&args.config)) {
        Ok(key) => key,
        Err(e) => {
            refuse(&e);
            return ExitCode::from(2);
        }
    };
    raise_descriptor_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            refuse(format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let options = peerstash::daemon::StartOptions {
        rebuild_catalog: args.rebuild_catalog,
        master_key,
        new_master_key: args.new_master_key,
    };
    let result = peerstash::service::run_on(&runtime, config, lan_key, args.config, options);
    // `run` has stopped every task it could (SIGTERM): what is left (a file read by a blocking
    // thread, say) is not waited for long. The catalog is consistent at any instant.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(peerstash::service::Ended::Stopped) => ExitCode::SUCCESS,
        Ok(peerstash::service::Ended::Restart) => {
            let e = peerstash::service::reexec();
            tracing::error!("cannot start again: {e}; start peerstashd by hand");
            ExitCode::FAILURE
        }
        Err(e) => {
            // One line: to the journal at error priority under systemd, to stderr otherwise.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
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
