//! Test harness: a thin layer over `peerstash::cluster` (real `peerstashd` processes on
//! loopback, each with its own state folder, all on a multicast group and ports picked at random
//! for this cluster; TTL 0, interface 127.0.0.1: nothing leaves the machine), driven with the real
//! `peerstash` command line. Where the library returns an error, this layer fails the test with
//! the peers' logs. Also: a listener on a cluster's channels, raw datagrams, quota arithmetic,
//! other users.
#![allow(dead_code)]

mod state;

// Not every test file uses every name.
#[allow(unused_imports)]
pub use peerstash::cluster::{Peer, PeerSpec, Place, State};
#[allow(unused_imports)]
pub use state::{PeerExt, StateExt};

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerstash::cluster::{self, Programs};

pub const PEERSTASHD: &str = env!("CARGO_BIN_EXE_peerstashd");
pub const PEERSTASH: &str = env!("CARGO_BIN_EXE_peerstash");

/// A `peerstash::cluster::Cluster` (its fields and methods through `Deref`) whose steps panic
/// with the peers' logs, and that prints every peer's log when a test fails.
pub struct Cluster(cluster::Cluster);

impl Deref for Cluster {
    type Target = cluster::Cluster;

    fn deref(&self) -> &cluster::Cluster {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut cluster::Cluster {
        &mut self.0
    }
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
    /// Every daemon logs at debug level.
    pub fn start_full(
        quotas: &[&str],
        extra: &[&str],
        env: impl Fn(usize) -> Vec<(String, String)>,
        place: impl Fn(usize) -> Place,
        key: impl Fn(usize) -> Option<PathBuf>,
    ) -> Cluster {
        let programs = Programs::new(PEERSTASHD, PEERSTASH);
        let inner = cluster::Cluster::new(programs, "peerstash-test-").expect("a cluster folder");
        let mut c = Cluster(inner);
        for (i, quota) in quotas.iter().enumerate() {
            let mut debug = vec![("RUST_LOG".to_owned(), "peerstash=debug".to_owned())];
            debug.extend(env(i));
            let spec = PeerSpec {
                extra: extra.get(i).unwrap_or(&"").to_string(),
                env: debug,
                place: place(i),
                lan_key_file: key(i),
                ..PeerSpec::new(quota)
            };
            c.0.add_peer(spec)
                .unwrap_or_else(|e| panic!("peer {}: {e}", i + 1));
        }
        let started = c.0.start_all();
        c.ok(started);
        c
    }

    /// Starts one peer per spec (ids 1..; protocol, quota, `[peer]` lines… as each says), every
    /// daemon logging at debug level, and waits until each answers on its control socket.
    pub fn start_specs(specs: Vec<PeerSpec>) -> Cluster {
        let programs = Programs::new(PEERSTASHD, PEERSTASH);
        let inner = cluster::Cluster::new(programs, "peerstash-test-").expect("a cluster folder");
        let mut c = Cluster(inner);
        for (i, mut spec) in specs.into_iter().enumerate() {
            spec.env
                .insert(0, ("RUST_LOG".to_owned(), "peerstash=debug".to_owned()));
            c.0.add_peer(spec)
                .unwrap_or_else(|e| panic!("peer {}: {e}", i + 1));
        }
        let started = c.0.start_all();
        c.ok(started);
        c
    }

    /// `r`'s value; else the test fails with the error (and `drop` prints every peer's log).
    fn ok<T>(&self, r: Result<T, cluster::ClusterError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Rewrites peer i's config (same channels and folders) with a quota and extra TOML.
    pub fn rewrite_config(&self, i: usize, quota: &str, extra: &str) {
        self.ok(self.0.rewrite_config(i, quota, extra));
    }

    pub fn spawn(&mut self, i: usize) {
        self.spawn_with(i, &[], &[]);
    }

    pub fn spawn_env(&mut self, i: usize, env: &[(&str, &str)]) {
        self.spawn_with(i, env, &[]);
    }

    /// Starts peer i's daemon with extra environment and extra arguments (after --config).
    pub fn spawn_with(&mut self, i: usize, env: &[(&str, &str)], args: &[&str]) {
        let started = self.0.spawn_with(i, env, args);
        self.ok(started);
    }

    pub fn wait_ready(&mut self, i: usize) {
        let ready = self.0.wait_ready(i);
        self.ok(ready);
    }

    /// Freezes peer i's daemon (SIGSTOP): it neither reads nor sends until `resume`; what is
    /// sent to it meanwhile waits in its sockets' buffers. A test sees this way what a peer owes
    /// before it can answer.
    pub fn pause(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused daemon go on (SIGCONT): it reads what waited for it.
    pub fn resume(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, i: usize, signal: nix::sys::signal::Signal) {
        let pid = self
            .pid(i)
            .unwrap_or_else(|| panic!("peer {} is not running", i + 1));
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("{signal} to peer {}: {e}", i + 1));
    }

    /// Sends SIGHUP: reload the config.
    pub fn reload(&self, i: usize) {
        self.ok(self.0.reload(i));
    }

    /// Stops a peer with SIGTERM (SIGKILL after 10 s); returns its exit code.
    pub fn stop_status(&mut self, i: usize) -> Option<i32> {
        self.stop(i)?.code()
    }

    /// Waits up to `timeout` for peer i's daemon to exit by itself; its exit code (None: it
    /// is still running, and is killed).
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        self.0.wait_exit(i, timeout)?.code()
    }

    pub fn restart(&mut self, i: usize) {
        let restarted = self.0.restart(i);
        self.ok(restarted);
    }

    /// The whole log of peer i.
    pub fn full_log(&self, i: usize) -> String {
        self.peers[i].log()
    }

    /// The last 60 lines of peer i's log.
    pub fn log(&self, i: usize) -> String {
        self.peers[i].log_tail(60)
    }

    /// Runs `peerstash --config <peer's config> args…`.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        self.ok(self.0.cli(i, args))
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

    /// Every peer's state, for failure messages.
    pub fn dump(&self) -> String {
        self.peers
            .iter()
            .map(|p| match p.try_state() {
                Ok(s) => format!("---- state of peer {} ----\n{s}", p.id),
                Err(e) => format!("---- peer {} does not answer: {e} ----", p.id),
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

impl Drop for Cluster {
    /// The peers are killed when the inner cluster drops; a failed test shows their logs.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.peers {
                eprintln!("---- log of peer {} ----\n{}", p.id, p.log_tail(60));
            }
        }
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
    (size + peerstash::store::chunks::HEADER).div_ceil(block) * block + 512
}

/// Count of whole chunks on disk in a peer's store (its packs' slots).
pub fn chunk_files_on_disk(peer: &Peer) -> usize {
    chunks_on_disk(peer).len()
}

/// The whole chunks on disk in a peer's store: (fileId, chunkNo, size).
pub fn chunks_on_disk(
    peer: &Peer,
) -> Vec<(
    peerstash::protocol::FileId,
    peerstash::protocol::ChunkNo,
    u64,
)> {
    peerstash::store::chunks::list(&peer.dir.join("state").join("chunks")).unwrap_or_default()
}

/// Flips a byte in the body of every chunk a peer keeps (64 KiB slots, 40-byte header).
pub fn damage_every_chunk(peer: &Peer) {
    use peerstash::store::chunks::{HEADER, SLOT};
    use std::os::unix::fs::FileExt;
    for (file_id, chunk_no, _) in chunks_on_disk(peer) {
        let path = peer
            .dir
            .join("state")
            .join("chunks")
            .join(format!("{}.pack", file_id.key()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let at = u64::from(chunk_no.0) * SLOT + HEADER + 7;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    }
}

/// `peerstash restore FILE --to OUT` on peer `i` (an OUT left by an earlier restore is removed
/// first), which must succeed; the bytes restored.
pub fn restore_to(c: &Cluster, i: usize, file: &Path, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    let args = [
        "restore",
        file.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
    ];
    c.cli_ok(i, &args, 0);
    std::fs::read(out).unwrap()
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

/// A watched folder's files: (relative path, bytes, mode, mtime).
pub type Tree = Vec<(PathBuf, std::vec::Vec<u8>, u32, std::time::SystemTime)>;

/// 50 files in 5 subfolders, of various sizes, modes and mtimes: (relative path, bytes, mode,
/// mtime).
pub fn populate_tree(root: &Path) -> Tree {
    use std::os::unix::fs::PermissionsExt;
    use std::time::UNIX_EPOCH;
    let mut files = Vec::new();
    for i in 0..50u64 {
        let rel = PathBuf::from(format!("sub{}/deeper{}/file-{i}.dat", i % 5, i % 2));
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = random_bytes((i as usize * 2_711) % 130_000);
        std::fs::write(&path, &bytes).unwrap();
        let mode = [0o600, 0o640, 0o755][i as usize % 3];
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let mtime = UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        files.push((rel, bytes, mode, mtime));
    }
    files
}

pub fn check_tree(root: &Path, files: &Tree) {
    use std::os::unix::fs::PermissionsExt;
    for (rel, bytes, mode, mtime) in files {
        let path = root.join(rel);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            std::fs::read(&path).unwrap() == *bytes,
            "{}",
            path.display()
        );
        assert_eq!(
            meta.permissions().mode() & 0o777,
            *mode,
            "{}",
            path.display()
        );
        assert_eq!(meta.modified().unwrap(), *mtime, "{}", path.display());
    }
}

/// Starts 4 peers (peer 1 hosts nothing) with peer 1 watching a new folder of `populate_tree`'s
/// 50 files (`encrypt` as asked), and waits until every file is at RD 2. Returns the cluster,
/// the folder (removed when dropped), its canonical path and its files.
pub fn backed_up_tree(encrypt: bool) -> (Cluster, tempfile::TempDir, PathBuf, Tree) {
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap();
    let files = populate_tree(&root);
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"200ms\"\nencrypt = {encrypt}\n",
        root.display()
    );
    let c = Cluster::start_with(&["0", "30 MiB", "30 MiB", "30 MiB"], &[&watch]);
    let all_backed_up = || {
        c.peer(0).try_state().is_ok_and(|s| {
            files
                .iter()
                .all(|(rel, ..)| (s.versions_of(&root.join(rel)).iter()).any(|f| f.min_rd() >= 2))
        })
    };
    assert!(
        wait_until(Duration::from_secs(90), all_backed_up),
        "not all backed up:\n{}",
        c.dump()
    );
    (c, folder, root, files)
}

/// Three peers (the first hosts nothing), the first with its metrics listener on a free port of
/// 127.0.0.1; returns the cluster and the port.
pub fn metrics_cluster() -> (Cluster, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    (
        Cluster::start_with(&["0", "20 MiB", "20 MiB"], &[&metrics]),
        port,
    )
}

/// Says why a test (or a part of one) cannot run here, so that the caller returns. With
/// `CI=true` it fails the test instead: CI must run every test, never pass one as skipped.
pub fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test cannot run here, and CI=true: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// Whether this test must return because it is not run as root (it says so; with `CI=true` it
/// fails instead, see `skip`). `what` says what root is needed for.
pub fn needs_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    skip(&format!("{what} needs root"));
    true
}

/// A command's stdout then stderr, as text.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd` (its output captured) for at most `limit`: None, and the command killed, if it
/// had not ended by then.
pub fn run_within(mut cmd: Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A small tmpfs mounted by the test (root only), unmounted when dropped: a disk that fills.
pub struct SmallDisk {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// A tmpfs of `size` ("3m"); None (with the reason said: a failure under CI=true) when
    /// this cannot be done here.
    pub fn mount(size: &str) -> Option<SmallDisk> {
        if needs_root("mounting a small tmpfs") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small");
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        if !ok {
            skip("cannot mount a tmpfs here");
            return None;
        }
        Some(SmallDisk { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The command line's `--json` output read as the typed value it prints: a report
/// (`PeerState`, `StatusReport`, `PeersReport`, `Vec<VersionInfo>`) or one final line
/// (`Reply<D>`, `D` the request's payload). Panics with the text when it does not read.
pub fn parse_json<T: serde::de::DeserializeOwned>(text: impl AsRef<[u8]>) -> T {
    let text = text.as_ref();
    serde_json::from_slice(text).unwrap_or_else(|e| {
        panic!(
            "--json output does not read as {}: {e}: {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(text)
        )
    })
}

/// Every line of a long command's `--json` output (its progress events, then its outcome),
/// the outcome's payload read as `D`.
pub fn json_lines<D: serde::de::DeserializeOwned>(text: &str) -> Vec<peerstash::control::Reply<D>> {
    text.lines().map(parse_json).collect()
}

/// The final line's code, message and payload; panics if `reply` is a progress line.
pub fn done<D: std::fmt::Debug>(reply: peerstash::control::Reply<D>) -> (i32, String, Option<D>) {
    match reply {
        peerstash::control::Reply::Done {
            code,
            message,
            data,
        } => (code, message, data),
        other => panic!("not a final line: {other:?}"),
    }
}
