//! `peerstashd`: the peerstash daemon. Thin: parses its flags and runs the daemon's one entry
//! (`service::entry`, which `peerstash run-daemon` runs too).

use std::process::ExitCode;

use clap::Parser;
use peerstash::cli::DaemonArgs as Args;
use peerstash::service::entry::{main as run, Launch};

fn main() -> ExitCode {
    let args = Args::parse();
    ExitCode::from(run(Launch {
        config: args.config,
        check_config: args.check_config,
        rebuild_catalog: args.rebuild_catalog,
        new_master_key: args.new_master_key,
    }))
}
