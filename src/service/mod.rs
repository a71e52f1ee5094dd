//! The system service around the peer: watched folders and their policies, the persistent work
//! queue, reload on SIGHUP, systemd notifications, clean stop on SIGTERM (every worker stops,
//! the catalog is checkpointed, the control socket removed, within `STOP_WITHIN` or so).

pub mod copy;
pub mod entry;
mod history;
pub mod metrics;
pub mod presence;
pub mod queue;
mod repair;
pub mod systemd;
pub mod watch;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::config::{self, Config, NetworkConfig};
use crate::daemon::{self, Node};
use crate::engine::presence::{lost_holder_looks, RepairSchedule};
use crate::ops as cmd;
use crate::protocol::auth::LanKey;
use crate::protocol::seal::MasterKey;
use crate::shutdown::{Shutdown, Trigger};
use crate::workers::Worker;
use watch::Watchers;

/// How often the systemd status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// 2.0: a deleted version's holders that never confirmed the DELETE (1.0 peers cannot) are
/// no longer waited for after this.
const DELETE_ACK_DEADLINE: Duration = Duration::from_secs(30 * 86_400);
/// How long the workers get to stop after SIGTERM (the control socket's requests take up to a
/// second of it); then the catalog is checkpointed, within `CHECKPOINT_WITHIN`. `run` returns
/// within their sum, well inside systemd's stop timeout and the 5 s a user waits.
const STOP_WITHIN: Duration = Duration::from_millis(2500);
const CHECKPOINT_WITHIN: Duration = Duration::from_secs(1);

/// Runs a worker until it ends or the daemon stops: stopping drops it where it waits. Used for
/// workers that keep everything that must survive in the catalog, so that a cut anywhere loses
/// nothing. Holds `shutdown` until then (the trigger waits for it).
pub(crate) async fn until_stopped(mut shutdown: Shutdown, work: impl Future<Output = ()>) {
    tokio::select! {
        _ = shutdown.recv() => {}
        _ = work => {}
    }
}

/// How the service ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// SIGTERM or SIGINT.
    Stopped,
    /// It must start again (`peerstash recover` left a catalog to install): see `reexec`.
    Restart,
}

/// Starts the daemon again in this process (same pid, so systemd and a supervisor keep it), with
/// the same arguments, once `run` returned `Ended::Restart`. Returns only on failure.
pub fn reexec() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .exec()
}

/// Runs the peer as a service until SIGTERM or SIGINT. `config_path` is re-read on SIGHUP, and
/// the LAN key with it; `lan_key` is the one the config names now (`config::load_lan_key`).
/// `run` on `runtime`, to its end. Here rather than in the programs, so that the runtime's code
/// for the daemon's future is compiled once, with the library.
#[inline(never)]
pub fn run_on(
    runtime: &tokio::runtime::Runtime,
    config: Config,
    lan_key: Option<LanKey>,
    config_path: PathBuf,
    options: daemon::StartOptions,
) -> anyhow::Result<Ended> {
    runtime.block_on(run(config, lan_key, config_path, options))
}

pub async fn run(
    config: Config,
    lan_key: Option<LanKey>,
    config_path: PathBuf,
    options: daemon::StartOptions,
) -> anyhow::Result<Ended> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let trigger = Trigger::new();
    let (node, control) = daemon::start(config, lan_key, options, &trigger).await?;
    crate::server::serve(node.clone(), control, trigger.subscribe());
    // What the last run left unfinished: over-quota chunks to reclaim, DELETEs not yet sent.
    tokio::spawn(crate::ops::reclaim::reclaim_to_quota(node.clone()));
    tokio::spawn(crate::ops::delete::send_pending_deletes(node.clone()));
    if let Some(addr) = node.config().metrics.listen {
        let listener = metrics::bind(addr).await?;
        tracing::info!("metrics on http://{addr}/metrics, a summary on http://{addr}/");
        tokio::spawn(metrics::serve(node.clone(), listener, trigger.subscribe()));
    }
    let wake = Arc::new(Notify::new());
    tokio::spawn(queue::run(node.clone(), wake.clone(), trigger.subscribe()));
    let mut watchers = Watchers::start(node.clone(), wake.clone(), trigger.subscribe())?;
    // Watching starts with a scan of each folder: what changed while we were down is queued.
    watchers.sync(&node.config().watch);
    note_watched(&node, &node.config().watch).await;
    let worker = node.workers.register("expiry");
    let expiry = expire(node.clone(), wake.clone(), worker);
    tokio::spawn(until_stopped(trigger.subscribe(), expiry));
    let worker = node.workers.register("repair");
    let repair = repair(node.clone(), wake.clone(), worker);
    tokio::spawn(until_stopped(trigger.subscribe(), repair));
    let worker = node.workers.register("holders");
    tokio::spawn(until_stopped(
        trigger.subscribe(),
        lost_holders(node.clone(), worker),
    ));
    let worker = node.workers.register("snapshots");
    tokio::spawn(until_stopped(
        trigger.subscribe(),
        crate::ops::snapshot::keep_taking(node.clone(), worker),
    ));
    let worker = node.workers.register("history");
    tokio::spawn(until_stopped(
        trigger.subscribe(),
        history::keep_history(node.clone(), worker),
    ));
    let worker = node.workers.register("status");
    tokio::spawn(until_stopped(
        trigger.subscribe(),
        status(node.clone(), worker),
    ));
    if node.lan_key().is_some() {
        tracing::info!("LAN key set: every datagram is signed, and unsigned ones are dropped");
    }
    tracing::info!(peer = node.id.0, "peer is up");
    systemd::ready(&status_line(&node).await);
    systemd::spawn_watchdog(trigger.subscribe());
    let signal = loop {
        tokio::select! {
            _ = hup.recv() => reload(&node, &config_path, &mut watchers, &wake).await,
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = node.restart.notified() => break "restart",
        }
    };
    let ended = match signal {
        "restart" => {
            // Same pid: systemd sees a reload, then READY again.
            systemd::reloading();
            tracing::info!("restarting to install the recovered catalog");
            Ended::Restart
        }
        _ => {
            systemd::stopping();
            tracing::info!("{signal}: stopping");
            Ended::Stopped
        }
    };
    // The watchers hold a Shutdown for the rescan tasks they start.
    drop(watchers);
    if trigger.shutdown(STOP_WITHIN).await {
        tracing::info!("every task stopped");
    } else {
        tracing::warn!(
            "some tasks did not stop within {} ms: stopping anyway",
            STOP_WITHIN.as_millis()
        );
    }
    match tokio::time::timeout(CHECKPOINT_WITHIN, node.catalog.checkpoint()).await {
        Ok(Ok(())) => tracing::info!("catalog checkpointed"),
        Ok(Err(e)) => tracing::warn!("cannot checkpoint the catalog: {e} (it is safe anyway)"),
        Err(_) => {
            tracing::warn!("the catalog checkpoint took too long (the catalog is safe anyway)")
        }
    }
    let socket = node.config().peer.control_socket.clone();
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!("cannot remove the control socket {}: {e}", socket.display());
    }
    tracing::info!("stopped");
    Ok(ended)
}

/// Expires the versions of files deleted locally for longer than their folder keeps them.
async fn expire(node: Arc<Node>, wake: Arc<Notify>, worker: Worker) {
    let mut absence = presence::Absence::default();
    loop {
        tokio::time::sleep(queue::expiry_interval(&node.config())).await;
        worker.busy("expiring deleted files", None);
        match queue::expire_deleted(&node, &wake, &mut absence).await {
            Ok(()) => worker.idle(),
            Err(e) => worker.failed(&e, None),
        }
    }
}

/// Refreshes the systemd status line.
async fn status(node: Arc<Node>, worker: Worker) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tick.tick().await;
        worker.busy("updating the status line", None);
        systemd::status(&status_line(&node).await);
        metrics::sample(&node);
        worker.idle();
    }
}

/// Queues our files that have a chunk below its desired RD (periodically, and after a REMOVED
/// once the holders had time to re-back up): the queue's backup resends only those chunks.
/// The kept versions the local file cannot give (older ones, deleted files) are sent again
/// from a copy on the peers (`repair`).
async fn repair(node: Arc<Node>, wake: Arc<Notify>, worker: Worker) {
    let mut schedule = RepairSchedule::new(std::time::Instant::now());
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(schedule.next().into()) => {}
            _ = node.repair.notified() => {
                schedule.on_removed(std::time::Instant::now());
                continue;
            }
        }
        schedule.ran(std::time::Instant::now());
        worker.busy("checking replication", None);
        match node.catalog.paths_below_rd().await {
            Ok(paths) => {
                // A file refused as too big is not queued again by the repair (that would
                // be a loop): its newest kept version comes back from the peers' copies.
                let (refused, paths): (Vec<PathBuf>, Vec<PathBuf>) = {
                    let r = node.refused.lock().unwrap_or_else(|e| e.into_inner());
                    paths.into_iter().partition(|p| r.contains_key(p))
                };
                if !paths.is_empty() {
                    tracing::info!(
                        "{} backed-up files have chunks below their RD: backing them up again",
                        paths.len()
                    );
                    queue::enqueue(&node, &wake, paths).await;
                }
                // Older versions and deleted files: from a copy on the peers.
                match repair::from_surviving_copies(&node, refused).await {
                    Ok(r) if r.versions > 0 => tracing::info!(
                        "repair from the peers' copies: {} kept versions looked at, {} chunks sent again, {} could not be",
                        r.versions,
                        r.chunks,
                        r.failed
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("repair from the peers' copies stopped: {e}"),
                }
                worker.idle();
            }
            Err(e) => {
                tracing::error!("cannot check replication: {e}");
                worker.failed(&format!("cannot check replication: {e}"), None);
            }
        }
    }
}

/// 2.0: a holder not heard for `peer.holder_timeout` (since this daemon started, at least) is
/// counted lost: it leaves every holder set, and the repair makes its copies again elsewhere.
/// Deletes it never confirmed are no longer waited for after `DELETE_ACK_DEADLINE`.
async fn lost_holders(node: Arc<Node>, worker: Worker) {
    loop {
        let config = node.config();
        let timeout = config.peer.holder_timeout;
        tokio::time::sleep(lost_holder_looks(timeout)).await;
        if !config.peer.enhanced() {
            continue;
        }
        worker.busy("looking for lost holders", None);
        let (now, since, me) = (crate::clock::unix_ms(), node.started_ms, node.id);
        let deadline = now - DELETE_ACK_DEADLINE.as_millis() as i64;
        let r = match node.catalog.holders_heard().await {
            Ok(holders) => {
                let lost = crate::engine::presence::lost_holders(&holders, me, now, since, timeout);
                node.catalog.drop_lost_holders(lost, now, deadline).await
            }
            Err(e) => Err(e),
        };
        match r {
            Ok((lost, expired)) => {
                for (peer, copies) in &lost {
                    tracing::warn!(
                        "peer {peer} was not heard for {} (peer.holder_timeout): counted lost; the {copies} chunk copies it held are made again on the peers left",
                        config::format_duration(timeout)
                    );
                }
                if expired > 0 {
                    tracing::info!("{expired} deletes were never confirmed by their holders within 30 days: no longer waited for");
                }
                if !lost.is_empty() {
                    node.repair.notify_one();
                }
                worker.idle();
            }
            Err(e) => {
                tracing::error!("cannot look for lost holders: {e}");
                worker.failed(&format!("cannot look for lost holders: {e}"), None);
            }
        }
    }
}

async fn status_line(node: &Arc<Node>) -> String {
    let usage = node.store.usage();
    let queued = node.catalog.queue_len().await.unwrap_or(0);
    let busy = node.in_progress.lock().map(|s| s.len()).unwrap_or(0);
    format!(
        "hosting {} of {} bytes; {queued} paths queued, {busy} being backed up",
        usage.used, usage.quota
    )
}

/// Keeps the watched folders in the catalog (see `Catalog::note_watched`).
async fn note_watched(node: &Arc<Node>, watch: &[crate::config::WatchConfig]) {
    let roots: Vec<PathBuf> = watch.iter().map(|w| w.path.clone()).collect();
    if let Err(e) = node.catalog.note_watched(roots).await {
        tracing::warn!("cannot note the watched folders in the catalog: {e}");
    }
}

/// Re-reads the config. A bad one is refused and the running one stays. Keys that only a
/// restart can change keep their running value (with a warning).
async fn reload(node: &Arc<Node>, path: &Path, watchers: &mut Watchers, wake: &Arc<Notify>) {
    systemd::reloading();
    // The LAN key is part of the config: one that cannot be read refuses the whole reload.
    // So is the master key, when a peer without one gets a newly encrypted folder.
    let running = node.master_key();
    let loaded = Config::load(path).and_then(|mut new| {
        let key = config::load_lan_key(&new.network, Some(path))?;
        let master = match &running {
            Some(running) => {
                keep_master_key(running, &node.config(), &mut new, path);
                None
            }
            None => config::master_key_for(&new, Some(path))?,
        };
        Ok((new, key, master))
    });
    match loaded {
        Err(e) => tracing::error!("reload refused, the running config stays: {e}"),
        Ok((mut new, key, master)) => {
            if let Some((key, made)) = master {
                if made {
                    daemon::warn_new_master_key(&new.peer.master_key_file);
                }
                node.note_master_key(&key, made);
                node.set_master_key(Some(key));
            }
            let old = node.config();
            keep_restart_only_keys(&old, &mut new);
            // The own paths excluded from the watches are those of the running peer keys.
            new.exclude_own_paths();
            // A folder's RD or encryption changed: each of its files is backed up again.
            let rd_changed: Vec<PathBuf> = new
                .watch
                .iter()
                .filter(|w| {
                    old.watch.iter().any(|o| {
                        o.path == w.path
                            && (o.replication != w.replication || o.encrypt != w.encrypt)
                    })
                })
                .map(|w| w.path.clone())
                .collect();
            if key != node.lan_key() {
                tracing::info!(
                    "LAN key {}",
                    match (&key, node.lan_key()) {
                        (None, _) => "removed: datagrams are no longer signed nor checked",
                        (Some(_), None) => "set: every datagram is now signed and checked",
                        (Some(_), Some(_)) => "changed",
                    }
                );
            }
            node.set_lan_key(key);
            node.set_config(new.clone());
            match daemon::quota::effective(&node.catalog, new.storage.quota).await {
                Ok(quota) => {
                    node.store.set_quota(quota);
                    tokio::spawn(cmd::reclaim::reclaim_to_quota(node.clone()));
                }
                Err(e) => tracing::error!("cannot apply the new quota: {e}"),
            }
            watchers.sync(&new.watch);
            note_watched(node, &new.watch).await;
            // Files refused as too big for the peers are tried again (the admin may have
            // lowered an RD or given peers room).
            let refused: Vec<PathBuf> =
                std::mem::take(&mut *node.refused.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_keys()
                    .collect();
            queue::enqueue(node, wake, refused).await;
            // A changed RD: every file of the folder is backed up again at the new RD (only
            // chunks below it are sent; chunks above it settle when space is reclaimed).
            for root in rd_changed {
                let paths = (node.catalog.live_paths_under(&root).await).unwrap_or_default();
                tracing::info!(
                    "replication or encryption of {} changed: {} files to back up as it now says",
                    root.display(),
                    paths.len()
                );
                queue::enqueue(node, wake, paths).await;
            }
            tracing::info!("config reloaded from {}", path.display());
        }
    }
    systemd::ready(&status_line(node).await);
}

/// **A reload never switches master keys**: the running one stays, and `new` keeps the running
/// `peer.master_key_file`. A changed path, or a key file whose key is now another (or gone),
/// is said in one WARN line; the start checks it against the catalog (`daemon::key_at_start`).
fn keep_master_key(running: &MasterKey, old: &Config, new: &mut Config, path: &Path) {
    let (was, now) = (&old.peer.master_key_file, &new.peer.master_key_file);
    let why = match config::master_key_if_present(&new.peer, Some(path)) {
        _ if was != now => Some(format!(
            "peer.master_key_file changed from {} to {}",
            was.display(),
            now.display()
        )),
        Ok(Some(key)) if key.fingerprint() == running.fingerprint() => None,
        Ok(Some(key)) => Some(format!(
            "{} now holds key {}",
            now.display(),
            key.fingerprint()
        )),
        Ok(None) => Some(format!("{} is missing", now.display())),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = why {
        tracing::warn!(
            "the master key stays key {} (the one this peer started with): {why}; restart peerstashd to change keys (the start checks the key against the catalog's encrypted versions)",
            running.fingerprint()
        );
    }
    new.peer.master_key_file = was.clone();
}

fn keep_restart_only_keys(old: &Config, new: &mut Config) {
    let mut kept = Vec::new();
    if new.peer.id != old.peer.id {
        kept.push("peer.id");
        new.peer.id = old.peer.id;
    }
    if new.peer.protocol != old.peer.protocol {
        kept.push("peer.protocol");
        new.peer.protocol = old.peer.protocol.clone();
    }
    if new.peer.state_dir != old.peer.state_dir {
        kept.push("peer.state_dir");
        new.peer.state_dir = old.peer.state_dir.clone();
    }
    if new.peer.control_socket != old.peer.control_socket {
        kept.push("peer.control_socket");
        new.peer.control_socket = old.peer.control_socket.clone();
    }
    // The LAN key applies on reload; the rest of [network] needs new sockets.
    let lan_key_file = new.network.lan_key_file.take();
    if new.network
        != (NetworkConfig {
            lan_key_file: None,
            ..old.network.clone()
        })
    {
        kept.push("network");
        new.network = old.network.clone();
    }
    new.network.lan_key_file = lan_key_file;
    if new.metrics != old.metrics {
        kept.push("metrics.listen");
        new.metrics = old.metrics.clone();
    }
    if !kept.is_empty() {
        tracing::warn!(
            "{} changed in the config: restart peerstashd to apply (the running values stay)",
            kept.join(", ")
        );
    }
}
