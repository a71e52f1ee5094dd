//! Local clusters of real peers on 127.0.0.1 for the demo, the tests and benchmarks. A cluster
//! owns a temporary folder, one generated config per peer, the peers' `peerstashd` processes
//! (killed when the cluster is dropped), and reads each peer's `state --json` through the real
//! command line.
//!
//! Network safety: every peer listens and sends on 127.0.0.1 with multicast TTL 0, so nothing
//! leaves this machine; each cluster draws its own multicast group (239.x.y.z) and ports, so
//! clusters running side by side never hear each other. A peer may use another interface only
//! inside a network namespace (`ip netns exec`), whose addresses exist nowhere else.

mod state;

pub use state::State;

use std::ffi::{OsStr, OsString};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long `stop` waits after SIGTERM before SIGKILL: twice the 5 s a daemon has to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the waits look again.
const POLL: Duration = Duration::from_millis(50);

/// The programs a cluster runs.
#[derive(Clone, Debug)]
pub struct Programs {
    /// Runs one peer, given `--config PATH` after `daemon_args` (`peerstashd`).
    pub daemon: PathBuf,
    pub daemon_args: Vec<OsString>,
    /// The command line (`peerstash`).
    pub cli: PathBuf,
}

impl Programs {
    pub fn new(daemon: impl Into<PathBuf>, cli: impl Into<PathBuf>) -> Programs {
        Programs {
            daemon: daemon.into(),
            daemon_args: Vec::new(),
            cli: cli.into(),
        }
    }
}

/// Where a peer runs: its interface address, multicast TTL, and a command prefix (for example
/// `ip netns exec HOST`, or a wrapper that changes its umask).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub interface: String,
    pub ttl: u32,
    pub wrapper: Vec<String>,
}

impl Default for Place {
    /// This machine's loopback, TTL 0: nothing leaves the machine.
    fn default() -> Place {
        Place {
            interface: "127.0.0.1".into(),
            ttl: 0,
            wrapper: Vec::new(),
        }
    }
}

impl Place {
    /// A peer run in network namespace `netns` (made by the caller), on `interface` there.
    pub fn in_netns(netns: &str, interface: &str, ttl: u32) -> Place {
        Place {
            interface: interface.into(),
            ttl,
            wrapper: ["ip", "netns", "exec", netns].map(String::from).to_vec(),
        }
    }

    /// Loopback with TTL 0, or anything inside a network namespace.
    fn is_safe(&self) -> bool {
        let loopback = self.interface == "127.0.0.1" && self.ttl == 0;
        let in_netns = self.wrapper.len() > 3
            && self.wrapper[..3] == ["ip", "netns", "exec"]
            && !self.wrapper[3].is_empty();
        loopback || in_netns
    }
}

/// What a new peer is given.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// `storage.quota` ("100MB"; "0": it hosts nothing).
    pub quota: String,
    /// TOML appended to the config, e.g. `[[watch]]` tables.
    pub extra: String,
    /// Environment of its daemon at every start.
    pub env: Vec<(String, String)>,
    pub place: Place,
    /// `network.lan_key_file`.
    pub lan_key_file: Option<PathBuf>,
    /// `peer.protocol`: "1.0" or "2.0" (by default, the config's default).
    pub protocol: String,
    /// TOML lines appended to the `[peer]` table, e.g. `holder_timeout = "5s"`.
    pub peer_extra: String,
    /// TOML lines appended to the `[network]` table, e.g. `raise_receive_buffers = false`.
    pub network_extra: String,
}

impl PeerSpec {
    /// A peer on loopback with quota `quota` and nothing else.
    pub fn new(quota: &str) -> PeerSpec {
        PeerSpec {
            quota: quota.into(),
            extra: String::new(),
            env: Vec::new(),
            place: Place::default(),
            lan_key_file: None,
            protocol: crate::config::DEFAULT_PROTOCOL.into(),
            peer_extra: String::new(),
            network_extra: String::new(),
        }
    }

    /// The same with `peer.protocol = protocol`.
    pub fn protocol(mut self, protocol: &str) -> PeerSpec {
        self.protocol = protocol.into();
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot make a temporary folder for the cluster: {0}")]
    Folder(#[source] std::io::Error),
    #[error("the cluster's folder {} is not UTF-8, which TOML cannot name", .0.display())]
    NotUtf8(PathBuf),
    #[error("peer {id} would send beyond this machine ({interface}, TTL {ttl}): only 127.0.0.1 with TTL 0, or a network namespace (ip netns exec), is allowed")]
    Unsafe {
        id: u32,
        interface: String,
        ttl: u32,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start peer {id} ({}): {source}", program.display())]
    Spawn {
        id: u32,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("peer {id} is already running")]
    Running { id: u32 },
    #[error("peer {id} is not running")]
    NotRunning { id: u32 },
    #[error("peer {id} exited ({status}) before answering (its log: {})", log.display())]
    Exited {
        id: u32,
        status: ExitStatus,
        log: PathBuf,
    },
    #[error("peer {id} did not answer within {} s (its log: {})", waited.as_secs(), log.display())]
    NotReady {
        id: u32,
        waited: Duration,
        log: PathBuf,
    },
    #[error("cannot signal peer {id}: {source}")]
    Signal { id: u32, source: nix::Error },
    #[error("cannot run {}: {source}", program.display())]
    Cli {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("`state --json` of peer {id} failed: {message}")]
    State { id: u32, message: String },
}

/// One peer: its folder (config, control socket, state, log) and its daemon when it runs.
#[derive(Debug)]
pub struct Peer {
    /// 1, 2, … in the order the peers were added.
    pub id: u32,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// The daemon's stdout and stderr, appended at every start.
    pub log_file: PathBuf,
    pub env: Vec<(String, String)>,
    pub place: Place,
    pub lan_key_file: Option<PathBuf>,
    pub protocol: String,
    pub peer_extra: String,
    pub network_extra: String,
    cli: PathBuf,
    child: Option<Child>,
}

impl Peer {
    /// Runs `peerstash --config <this peer's config> args…` and returns its output.
    pub fn cli<I, S>(&self, args: I) -> Result<Output, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new(&self.cli)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ClusterError::Cli {
                program: self.cli.clone(),
                source,
            })
    }

    /// This peer's state now, read with `peerstash state --json`.
    pub fn try_state(&self) -> Result<State, ClusterError> {
        let out = self.cli(["state", "--json"])?;
        let failed = |message: String| ClusterError::State {
            id: self.id,
            message,
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(failed(format!("{} ({})", stderr.trim(), out.status)));
        }
        State::parse(&out.stdout).map_err(|e| failed(format!("unexpected output: {e}")))
    }

    /// The whole log of this peer's daemon (empty if there is none yet).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The process id of the daemon, if it was started and not yet stopped or reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: Signal) -> Result<(), ClusterError> {
        let child = self
            .child
            .as_ref()
            .ok_or(ClusterError::NotRunning { id: self.id })?;
        kill(Pid::from_raw(child.id() as i32), signal).map_err(|source| ClusterError::Signal {
            id: self.id,
            source,
        })
    }

    /// Its exit status if the daemon has exited (and is now reaped).
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Waits until the daemon exits or `deadline`; its status if it exited.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL, then reaped.
    fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }
}

/// A cluster of peers in a temporary folder, all on one multicast group of its own.
#[derive(Debug)]
pub struct Cluster {
    /// Removed when the cluster is dropped (unless `keep`).
    pub dir: tempfile::TempDir,
    pub mc: SocketAddrV4,
    pub mdb: SocketAddrV4,
    pub mdr: SocketAddrV4,
    pub peers: Vec<Peer>,
    /// How long `wait_ready` waits for a daemon to answer.
    pub ready_timeout: Duration,
    /// `dir`, symlinks resolved: the daemons see paths this way.
    root: PathBuf,
    programs: Programs,
}

/// A group and ports of a cluster's own: 239.a.b.c, +1, +2 (a in 100..200, b and c random) and
/// ports p, p+1, p+2 (p random, 20000..60000).
fn random_channels() -> [SocketAddrV4; 3] {
    let a: u8 = rand::random::<u8>() % 100 + 100;
    let (b, c): (u8, u8) = (rand::random(), rand::random());
    let port = 20_000 + rand::random::<u16>() % 40_000;
    [0u8, 1, 2].map(|i| {
        SocketAddrV4::new(
            Ipv4Addr::new(239, a, b, c.wrapping_add(i)),
            port + u16::from(i),
        )
    })
}

/// A path as a TOML string, quoted and escaped (a cluster's paths are UTF-8: `Cluster::new`).
pub fn toml_path(path: &Path) -> String {
    toml_string(&path.to_string_lossy())
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

impl Cluster {
    /// An empty cluster in a new temporary folder named `prefix…`; add peers with `add_peer`.
    pub fn new(programs: Programs, prefix: &str) -> Result<Cluster, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(ClusterError::Folder)?;
        let root = dir.path().canonicalize().map_err(ClusterError::Folder)?;
        if root.to_str().is_none() {
            return Err(ClusterError::NotUtf8(root));
        }
        let [mc, mdb, mdr] = random_channels();
        Ok(Cluster {
            dir,
            mc,
            mdb,
            mdr,
            peers: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            root,
            programs,
        })
    }

    /// The cluster's folder, symlinks resolved (as the daemons name the files in it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn peer(&self, i: usize) -> &Peer {
        &self.peers[i]
    }

    /// Adds a peer (id: its number from 1) and writes its config; it is not started. Returns
    /// its index.
    pub fn add_peer(&mut self, spec: PeerSpec) -> Result<usize, ClusterError> {
        let id = self.peers.len() as u32 + 1;
        if !spec.place.is_safe() {
            return Err(ClusterError::Unsafe {
                id,
                interface: spec.place.interface,
                ttl: spec.place.ttl,
            });
        }
        let dir = self.root.join(format!("peer{id}"));
        std::fs::create_dir_all(&dir).map_err(|source| ClusterError::Write {
            path: dir.clone(),
            source,
        })?;
        self.peers.push(Peer {
            id,
            config: dir.join("peerstash.toml"),
            socket: dir.join("control.sock"),
            log_file: dir.join("daemon.log"),
            dir,
            env: spec.env,
            place: spec.place,
            lan_key_file: spec.lan_key_file,
            protocol: spec.protocol,
            peer_extra: spec.peer_extra,
            network_extra: spec.network_extra,
            cli: self.programs.cli.clone(),
            child: None,
        });
        let i = self.peers.len() - 1;
        self.rewrite_config(i, &spec.quota, &spec.extra)?;
        Ok(i)
    }

    /// Starts every peer not running, then waits until each answers.
    pub fn start_all(&mut self) -> Result<(), ClusterError> {
        for i in 0..self.peers.len() {
            if self.peers[i].child.is_none() {
                self.spawn(i)?;
            }
        }
        for i in 0..self.peers.len() {
            self.wait_ready(i)?;
        }
        Ok(())
    }

    /// Peer i's config with `quota` and `extra` TOML appended; its other fields (place, LAN key
    /// file) as they are now.
    pub fn config_text(&self, i: usize, quota: &str, extra: &str) -> String {
        let p = &self.peers[i];
        let lan_key = match &p.lan_key_file {
            Some(f) => format!("lan_key_file = {}\n", toml_path(f)),
            None => String::new(),
        };
        format!(
            "[peer]\nid = {id}\nprotocol = {protocol}\nstate_dir = {state}\ncontrol_socket = {socket}\n\
             master_key_file = {master_key}\n{peer_extra}\n\
             [network]\ninterface = {interface}\nmc = \"{mc}\"\nmdb = \"{mdb}\"\nmdr = \"{mdr}\"\n\
             ttl = {ttl}\n{lan_key}{network_extra}\n[storage]\nquota = {quota}\n{extra}",
            id = p.id,
            protocol = toml_string(&p.protocol),
            peer_extra = p.peer_extra,
            network_extra = p.network_extra,
            state = toml_path(&p.dir.join("state")),
            // Its own, in its folder: a test never writes to /etc.
            master_key = toml_path(&p.dir.join("master.key")),
            socket = toml_path(&p.socket),
            interface = toml_string(&p.place.interface),
            ttl = p.place.ttl,
            quota = toml_string(quota),
            mc = self.mc,
            mdb = self.mdb,
            mdr = self.mdr,
        )
    }

    /// Writes peer i's config anew (same channels and folders) with `quota` and `extra`; a
    /// running daemon reads it on `reload` or its next start.
    pub fn rewrite_config(&self, i: usize, quota: &str, extra: &str) -> Result<(), ClusterError> {
        let path = &self.peers[i].config;
        std::fs::write(path, self.config_text(i, quota, extra)).map_err(|source| {
            ClusterError::Write {
                path: path.clone(),
                source,
            }
        })
    }

    /// Starts peer i's daemon (it does not wait for it to answer: `wait_ready`).
    pub fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        self.spawn_with(i, &[], &[])
    }

    /// Starts peer i's daemon with more environment and with `args` after `--config PATH`.
    pub fn spawn_with(
        &mut self,
        i: usize,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<(), ClusterError> {
        let programs = &self.programs;
        let peer = &mut self.peers[i];
        // A daemon that exited by itself is reaped; one still running is not started twice.
        peer.exited();
        if peer.child.is_some() {
            return Err(ClusterError::Running { id: peer.id });
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&peer.log_file)
            .map_err(|source| ClusterError::Write {
                path: peer.log_file.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ClusterError::Write {
            path: peer.log_file.clone(),
            source,
        })?;
        let mut cmd = match peer.place.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&programs.daemon);
                c
            }
            None => Command::new(&programs.daemon),
        };
        let child = cmd
            .args(&programs.daemon_args)
            .arg("--config")
            .arg(&peer.config)
            .args(args)
            .envs(peer.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| ClusterError::Spawn {
                id: peer.id,
                program: programs.daemon.clone(),
                source,
            })?;
        peer.child = Some(child);
        Ok(())
    }

    /// Waits until peer i answers `state`, at most `ready_timeout`; fails at once if its daemon
    /// exits.
    pub fn wait_ready(&mut self, i: usize) -> Result<(), ClusterError> {
        let deadline = Instant::now() + self.ready_timeout;
        let peer = &mut self.peers[i];
        loop {
            if let Some(status) = peer.exited() {
                return Err(ClusterError::Exited {
                    id: peer.id,
                    status,
                    log: peer.log_file.clone(),
                });
            }
            if peer.child.is_none() {
                return Err(ClusterError::NotRunning { id: peer.id });
            }
            if peer.try_state().is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NotReady {
                    id: peer.id,
                    waited: self.ready_timeout,
                    log: peer.log_file.clone(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops peer i with SIGTERM, SIGKILL after `STOP_TIMEOUT`; its exit status (None: it was
    /// not running).
    pub fn stop(&mut self, i: usize) -> Option<ExitStatus> {
        self.stop_each(&[i]).pop().flatten()
    }

    /// Stops every peer at once, as `stop` does; their exit statuses.
    pub fn stop_all(&mut self) -> Vec<Option<ExitStatus>> {
        let all: Vec<usize> = (0..self.peers.len()).collect();
        self.stop_each(&all)
    }

    fn stop_each(&mut self, which: &[usize]) -> Vec<Option<ExitStatus>> {
        for &i in which {
            // Fails only if it already exited: the wait below reaps it.
            let _ = self.peers[i].signal(Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        which
            .iter()
            .map(|&i| {
                let peer = &mut self.peers[i];
                peer.child.as_ref()?;
                peer.wait_until(deadline).or_else(|| peer.kill())
            })
            .collect()
    }

    /// Kills peer i with SIGKILL, as if its computer had died.
    pub fn kill(&mut self, i: usize) {
        self.peers[i].kill();
    }

    /// Sends SIGHUP: peer i reloads its config.
    pub fn reload(&self, i: usize) -> Result<(), ClusterError> {
        self.peers[i].signal(Signal::SIGHUP)
    }

    /// Stops, starts and waits for peer i.
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        self.stop(i);
        self.spawn(i)?;
        self.wait_ready(i)
    }

    /// Waits up to `timeout` for peer i's daemon to exit by itself; its exit status (None: it
    /// did not run, or still ran and is killed).
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let peer = &mut self.peers[i];
        peer.child.as_ref()?;
        let status = peer.wait_until(Instant::now() + timeout);
        if status.is_none() {
            peer.kill();
        }
        status
    }

    /// The process id of peer i's daemon, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.peers[i].pid()
    }

    /// Runs `peerstash --config <peer i's config> args…`.
    pub fn cli<I, S>(&self, i: usize, args: I) -> Result<Output, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.peers[i].cli(args)
    }

    /// Kills the peers and keeps the folder (for a look at what went wrong); its path.
    pub fn keep(mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.root.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.peers {
            p.kill();
        }
    }
}

#[cfg(test)]
mod tests;
