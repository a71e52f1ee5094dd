//! Test harness: a cluster of real `peerstashd` processes on loopback, each with its own state
//! folder, all on a multicast group and ports picked at random for this cluster (TTL 0, interface
//! 127.0.0.1: nothing leaves the machine), driven with the real `peerstash` command line.
#![allow(dead_code)]

mod state;

// Not every test file uses every type.
#[allow(unused_imports)]
pub use state::{BackedUp, ChunkState, FileState, State, StoredChunk};

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PEERSTASHD: &str = env!("CARGO_BIN_EXE_peerstashd");
pub const PEERSTASH: &str = env!("CARGO_BIN_EXE_peerstash");

pub struct Peer {
    pub id: u32,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// Environment given to this peer's daemon at every start.
    pub env: Vec<(String, String)>,
    /// Where the peer runs: its interface address, multicast TTL, and a command prefix (for
    /// example `ip netns exec HOST`).
    pub place: Place,
    /// `network.lan_key_file` of this peer's config, if any.
    pub lan_key_file: Option<PathBuf>,
    child: Option<Child>,
}

#[derive(Clone, Debug)]
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

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub mc: SocketAddrV4,
    pub mdb: SocketAddrV4,
    pub mdr: SocketAddrV4,
    pub peers: Vec<Peer>,
}

/// A group and ports of this cluster's own: 239.x.y.z with random x, y, z and random high ports.
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

impl Cluster {
    /// Starts one peer per quota (ids 1..), and waits until each answers on its control socket.
    pub fn start(quotas: &[&str]) -> Cluster {
        Self::start_with(quotas, &[])
    }

    /// Like `start`, with `extra[i]` (TOML, e.g. [[watch]] tables) appended to peer i's config.
    pub fn start_with(quotas: &[&str], extra: &[&str]) -> Cluster {
        Self::start_env(quotas, extra, |_| Vec::new())
    }

    /// Like `start_with`, with an environment for each peer's daemon (e.g. PEERSTASH_FAULTS).
    pub fn start_env(
        quotas: &[&str],
        extra: &[&str],
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        Self::start_placed(quotas, extra, env, |_| Place::default())
    }

    /// Like `start`, with a LAN key file (network.lan_key_file) for each peer that has one.
    pub fn start_keyed(quotas: &[&str], key: impl Fn(usize) -> Option<PathBuf>) -> Cluster {
        Self::start_full(quotas, &[], |_| Vec::new(), |_| Place::default(), key)
    }

    /// Per-peer extra config, environment and place.
    pub fn start_placed(
        quotas: &[&str],
        extra: &[&str],
        env: impl Fn(usize) -> Vec<(String, String)>,
        place: impl Fn(usize) -> Place,
    ) -> Cluster {
        Self::start_full(quotas, extra, env, place, |_| None)
    }

    /// The most general start: per-peer extra config, environment, place and LAN key file.
    pub fn start_full(
        quotas: &[&str],
        extra: &[&str],
        env: impl Fn(usize) -> Vec<(String, String)>,
        place: impl Fn(usize) -> Place,
        key: impl Fn(usize) -> Option<PathBuf>,
    ) -> Cluster {
        let [mc, mdb, mdr] = random_channels();
        let mut cluster = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            mc,
            mdb,
            mdr,
            peers: Vec::new(),
        };
        for (i, quota) in quotas.iter().enumerate() {
            let id = i as u32 + 1;
            let dir = cluster.dir.path().join(format!("peer{id}"));
            std::fs::create_dir_all(&dir).unwrap();
            let socket = dir.join("control.sock");
            let config = dir.join("peerstash.toml");
            let peer = Peer {
                id,
                dir,
                config,
                socket,
                env: env(i),
                place: place(i),
                lan_key_file: key(i),
                child: None,
            };
            let text = cluster.config_text(&peer, quota) + extra.get(i).unwrap_or(&"");
            std::fs::write(&peer.config, text).unwrap();
            cluster.peers.push(peer);
        }
        for i in 0..quotas.len() {
            cluster.spawn(i);
        }
        for i in 0..quotas.len() {
            cluster.wait_ready(i);
        }
        cluster
    }

    pub fn config_text(&self, peer: &Peer, quota: &str) -> String {
        let (id, dir, socket) = (peer.id, &peer.dir, &peer.socket);
        let (interface, ttl) = (&peer.place.interface, peer.place.ttl);
        let lan_key = match &peer.lan_key_file {
            Some(f) => format!("lan_key_file = \"{}\"\n", f.display()),
            None => String::new(),
        };
        format!(
            r#"[peer]
id = {id}
protocol = "1.0"
state_dir = "{state}"
control_socket = "{socket}"

[network]
interface = "{interface}"
mc = "{mc}"
mdb = "{mdb}"
mdr = "{mdr}"
ttl = {ttl}
{lan_key}
[storage]
quota = "{quota}"
"#,
            state = dir.join("state").display(),
            socket = socket.display(),
            mc = self.mc,
            mdb = self.mdb,
            mdr = self.mdr,
        )
    }

    pub fn peer(&self, i: usize) -> &Peer {
        &self.peers[i]
    }

    /// Rewrites peer i's config (same channels and folders) with a quota and extra TOML.
    pub fn rewrite_config(&self, i: usize, quota: &str, extra: &str) {
        let p = &self.peers[i];
        let text = self.config_text(p, quota) + extra;
        std::fs::write(&p.config, text).unwrap();
    }

    pub fn spawn(&mut self, i: usize) {
        self.spawn_env(i, &[]);
    }

    pub fn spawn_env(&mut self, i: usize, env: &[(&str, &str)]) {
        self.spawn_with(i, env, &[]);
    }

    /// Starts peer i's daemon with extra environment and extra arguments (after --config).
    pub fn spawn_with(&mut self, i: usize, env: &[(&str, &str)], args: &[&str]) {
        let peer = &mut self.peers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(peer.dir.join("daemon.log"))
            .unwrap();
        let mut cmd = match peer.place.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(PEERSTASHD);
                c
            }
            None => Command::new(PEERSTASHD),
        };
        let child = cmd
            .arg("--config")
            .arg(&peer.config)
            .args(args)
            .env("RUST_LOG", "peerstash=debug")
            .envs(peer.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting peerstashd");
        peer.child = Some(child);
    }

    pub fn wait_ready(&self, i: usize) {
        let ok = wait_until(Duration::from_secs(20), || self.try_state(i).is_some());
        assert!(ok, "peer {} did not come up; log:\n{}", i + 1, self.log(i));
    }

    /// Stops a peer with SIGTERM and waits for it to exit.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, "TERM");
    }

    /// Kills a peer with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, "KILL");
    }

    /// Sends SIGHUP: reload the config.
    pub fn reload(&self, i: usize) {
        if let Some(child) = &self.peers[i].child {
            let _ = Command::new("kill")
                .arg("-HUP")
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Stops a peer with SIGTERM; returns its exit code.
    pub fn stop_status(&mut self, i: usize) -> Option<i32> {
        let mut child = self.peers[i].child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().ok()?.code()
    }

    fn signal(&mut self, i: usize, sig: &str) {
        if let Some(mut child) = self.peers[i].child.take() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for peer i's daemon to exit by itself; its exit code (None: it
    /// is still running, and is killed).
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        let child = self.peers[i].child.as_mut()?;
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                self.peers[i].child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill(i);
        None
    }

    /// The process id of peer i's daemon, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.peers[i].child.as_ref().map(|c| c.id())
    }

    pub fn restart(&mut self, i: usize) {
        self.stop(i);
        self.spawn(i);
        self.wait_ready(i);
    }

    /// The whole log of peer i.
    pub fn full_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.peers[i].dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn log(&self, i: usize) -> String {
        self.peers[i].log_tail()
    }

    /// Runs `peerstash --config <peer's config> args…`.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(PEERSTASH)
            .arg("--config")
            .arg(&self.peers[i].config)
            .args(args)
            .output()
            .expect("running peerstash")
    }

    /// Runs the CLI and asserts its exit status.
    pub fn cli_ok(&self, i: usize, args: &[&str], code: i32) -> String {
        let out = self.cli(i, args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "peerstash {args:?} on peer {}: stdout:\n{stdout}\nstderr:\n{}\nlog:\n{}",
            i + 1,
            String::from_utf8_lossy(&out.stderr),
            self.log(i)
        );
        stdout
    }

    pub fn try_state(&self, i: usize) -> Option<Value> {
        let out = self.cli(i, &["state", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn state(&self, i: usize) -> Value {
        self.try_state(i)
            .unwrap_or_else(|| panic!("state of peer {} failed; log:\n{}", i + 1, self.log(i)))
    }

    /// Every peer's state, for failure messages.
    pub fn dump(&self) -> String {
        self.peers
            .iter()
            .map(|p| match p.try_state() {
                Some(s) => format!("---- state of peer {} ----\n{s}", p.id),
                None => format!("---- peer {} does not answer ----", p.id),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends raw bytes to one of the cluster's channels, on loopback only.
    pub fn send_raw(&self, channel: SocketAddrV4, bytes: &[u8]) {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
        s.set_multicast_ttl_v4(0).unwrap();
        s.send_to(bytes, &std::net::SocketAddr::V4(channel).into())
            .unwrap();
    }
}

/// A listener on one of a cluster's channels, as another implementation would be.
pub struct Listener(std::net::UdpSocket);

impl Listener {
    pub fn join(channel: SocketAddrV4) -> Listener {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&std::net::SocketAddr::V4(channel).into()).unwrap();
        s.join_multicast_v4(channel.ip(), &Ipv4Addr::LOCALHOST)
            .unwrap();
        // Room for bursts of CHUNKs while the reader is not scheduled (capped by rmem_max).
        let _ = s.set_recv_buffer_size(8 << 20);
        let s: std::net::UdpSocket = s.into();
        s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        Listener(s)
    }

    /// Every datagram heard within `time`.
    pub fn collect(&self, time: Duration) -> Vec<Vec<u8>> {
        let end = Instant::now() + time;
        let mut buf = vec![0u8; 70_000];
        let mut got = Vec::new();
        while Instant::now() < end {
            if let Ok(n) = self.0.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    }

    /// Reads in a thread, while the test goes on, until `Recording::stop`.
    pub fn record(self) -> Recording {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut got = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    got.extend(self.collect(Duration::from_millis(200)));
                }
                got
            }
        });
        Recording { stop, thread }
    }
}

/// A listener reading in a thread: see `Listener::record`.
pub struct Recording {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<u8>>>,
}

impl Recording {
    /// Every datagram heard since the recording started.
    pub fn stop(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the listener thread")
    }
}

/// The fields of a datagram's first header line: version, message type, sender id, fileId,
/// chunkNo… (empty if the datagram has no CRLF).
pub fn header_fields(datagram: &[u8]) -> Vec<String> {
    let Some(end) = datagram.windows(2).position(|w| w == b"\r\n") else {
        return Vec::new();
    };
    String::from_utf8_lossy(&datagram[..end])
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.peers.len() {
            if std::thread::panicking() {
                eprintln!("---- log of peer {} ----\n{}", i + 1, self.log(i));
            }
            self.kill(i);
        }
    }
}

/// Polls `f` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

// Untyped helpers of the JSON state, for the tests not yet on `Peer::state` (state.rs).

/// Files of `state --json` whose path is `path`.
pub fn file_entries<'a>(state: &'a Value, path: &Path) -> Vec<&'a Value> {
    state["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"].as_str() == Some(path.to_str().unwrap()))
        .collect()
}

/// The lowest perceived RD over a file entry's chunks.
pub fn min_rd(file: &Value) -> u64 {
    file["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["perceived_rd"].as_u64().unwrap())
        .min()
        .unwrap_or(0)
}

pub fn used_bytes(state: &Value) -> u64 {
    state["used_bytes"].as_u64().unwrap()
}

/// What a hosted chunk of `size` bytes costs against a peer's quota (as `used_bytes` counts it):
/// its size in whole blocks of the store's filesystem, at least one, plus 512 bytes for its
/// catalog row.
pub fn charged(peer: &Peer, size: u64) -> u64 {
    charged_on(&peer.dir, size)
}

/// Like `charged`, for a store on the filesystem of `path`.
pub fn charged_on(path: &Path, size: u64) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    let block = match st.fragment_size() as u64 {
        0 => st.block_size() as u64,
        f => f,
    }
    .clamp(512, 1 << 20);
    size.div_ceil(block).max(1) * block + 512
}

/// Count of hosted chunk files on disk under a peer's store.
pub fn chunk_files_on_disk(peer: &Peer) -> usize {
    let root = peer.dir.join("state").join("chunks");
    let Ok(dirs) = std::fs::read_dir(root) else {
        return 0;
    };
    dirs.flatten()
        .map(|d| std::fs::read_dir(d.path()).map(|e| e.count()).unwrap_or(0))
        .sum()
}

/// A command run as uid and gid `uid` (setpriv), with the extra group `group` (None: none).
pub fn as_uid(uid: u32, group: Option<u32>, program: &Path) -> Command {
    let groups = match group {
        Some(gid) => format!("--groups={gid}"),
        None => "--clear-groups".to_owned(),
    };
    let mut cmd = Command::new("setpriv");
    cmd.args([format!("--reuid={uid}"), format!("--regid={uid}"), groups])
        .arg(program);
    cmd
}

/// For tests acting as user `uid`: the cluster's folder opened to all (it is 0700 root), a home
/// folder of the user's in it, and one file of its own there (70,000 bytes, mode 0640).
/// Returns (the cluster's folder, the home, the file).
pub fn user_home(c: &Cluster, uid: u32) -> (PathBuf, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let base = c.dir.path().canonicalize().unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = base.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(uid)).unwrap();
    let mine = home.join("mine.txt");
    std::fs::write(&mine, random_bytes(70_000)).unwrap();
    std::os::unix::fs::chown(&mine, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o640)).unwrap();
    (base, home, mine)
}
