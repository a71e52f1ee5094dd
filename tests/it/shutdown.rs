//! Issue 11's clean shutdown: SIGTERM stops the daemon within 5 s with status 0, leaves no
//! control socket, and a backup it cut resumes at the next start sending only the chunks that
//! were not yet confirmed (counted on the wire, by listening to the MDB group ourselves).

use crate::common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use peerstash::control::{FileState, PeerState};

/// What a stopping daemon gets (a behaviour bound: systemd's users wait for it).
const STOP_BOUND: Duration = Duration::from_secs(5);
const SIZE: usize = 100_000_000;
const CHUNKS: usize = SIZE / 64_000 + 1;
/// A user other than root, in the control socket's group.
const USER: u32 = 12345;

/// The PUTCHUNKs heard on a cluster's MDB group: (fileId in lower case, chunkNo), in order.
struct Snoop {
    heard: Arc<Mutex<Vec<(String, u32)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Snoop {
    fn join(group: SocketAddrV4) -> Snoop {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        // A 100 MB backup is 1563 datagrams of 64 KB in a few seconds: room for a burst (the
        // forced size needs root; the ordinary one is capped by net.core.rmem_max).
        let want = 64 << 20;
        if nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &want).is_err()
        {
            let _ = s.set_recv_buffer_size(want);
        }
        s.bind(&std::net::SocketAddr::V4(group).into()).unwrap();
        s.join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)
            .unwrap();
        let s: std::net::UdpSocket = s.into();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (heard, stop) = (heard.clone(), stop.clone());
            move || {
                let mut buf = vec![0u8; 70_000];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = s.recv(&mut buf) else { continue };
                    let head = &buf[..n.min(200)];
                    let line = String::from_utf8_lossy(head);
                    let fields: Vec<&str> = line
                        .split("\r\n")
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .collect();
                    if let ["1.0", "PUTCHUNK", _, file_id, chunk_no, _] = fields[..] {
                        if let Ok(no) = chunk_no.parse() {
                            heard.lock().unwrap().push((file_id.to_lowercase(), no));
                        }
                    }
                }
            }
        });
        Snoop {
            heard,
            stop,
            thread: Some(thread),
        }
    }

    /// How many PUTCHUNKs were heard so far.
    fn mark(&self) -> usize {
        self.heard.lock().unwrap().len()
    }

    /// The chunk numbers of `file_id` heard in PUTCHUNKs from the `from`th one on.
    fn chunks_since(&self, from: usize, file_id: &str) -> Vec<u32> {
        self.heard.lock().unwrap()[from..]
            .iter()
            .filter(|(f, _)| f == file_id)
            .map(|(_, no)| *no)
            .collect()
    }
}

impl Drop for Snoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sigterm(c: &Cluster, i: usize) {
    let pid = c.pid(i).expect("the daemon runs");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The chunk numbers of a file entry whose perceived RD is at least `rd`.
fn chunks_at(file: &FileState, rd: u32) -> BTreeSet<u32> {
    (file.chunks.iter())
        .filter(|c| c.perceived_rd >= rd)
        .map(|c| c.chunk_no)
        .collect()
}

/// `size` random bytes, written beside `dest` and moved there at once (one event).
fn write_big_file(staging: &Path, dest: &Path, size: usize) {
    use rand::RngCore;
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(staging).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len());
        rand::thread_rng().fill_bytes(&mut block[..n]);
        out.write_all(&block[..n]).unwrap();
        left -= n;
    }
    out.into_inner().unwrap().sync_all().unwrap();
    std::fs::rename(staging, dest).unwrap();
}

#[test]
fn sigterm_during_a_backup_stops_cleanly_and_the_restart_sends_only_missing_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let dir = base.join("watched");
    std::fs::create_dir_all(&dir).unwrap();
    let table = format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"300ms\"\n",
        dir.display()
    );
    let mut c = Cluster::start_with(&["0", "300MB", "300MB"], &[&table]);
    let snoop = Snoop::join(c.mdb);
    let big = dir.join("big.bin");
    write_big_file(&base.join("staging.bin"), &big, SIZE);

    // Caught in the middle: some chunks confirmed by both other peers, most not yet.
    let mut caught: Option<State> = None;
    let in_progress = wait_until(Duration::from_secs(180), || {
        let s = c.peer(0).state();
        let entry = s.versions_of(&big).last().map(|f| (*f).clone());
        match entry {
            Some(f) if (CHUNKS / 20..CHUNKS / 2).contains(&chunks_at(&f, 2).len()) => {
                caught = Some(s);
                true
            }
            _ => false,
        }
    });
    assert!(
        in_progress,
        "never caught the backup in progress: {}",
        c.log(0)
    );
    let s = caught.unwrap();
    let file = s.versions_of(&big)[0].clone();
    let file_id = file.file_id.clone();
    // The queue's worker says what it is doing.
    let busy = (s.workers.iter()).any(|w| w.state == "busy" && w.path.as_ref() == Some(&big));
    assert!(busy, "a queue worker busy with {big:?}: {:?}", s.workers);
    if nix::unistd::geteuid().is_root() {
        // Another user of the socket's group sees the workers, not the paths.
        user_home(&c, USER);
        let gid = std::fs::metadata(&c.peer(0).socket).unwrap().gid();
        let out = as_uid(USER, Some(gid), Path::new(PEERSTASH))
            .arg("--socket")
            .arg(&c.peer(0).socket)
            .args(["state", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let theirs: PeerState = parse_json(&out.stdout);
        let workers = &theirs.workers;
        assert!(workers.iter().any(|w| w.state == "busy"), "{workers:?}");
        assert!(workers.iter().all(|w| w.path.is_none()), "{workers:?}");
    }

    let confirmed = chunks_at(&file, 2);
    sigterm(&c, 0);
    assert_eq!(
        c.wait_exit(0, STOP_BOUND),
        Some(0),
        "exit status 0 within {STOP_BOUND:?}; log:\n{}",
        c.log(0)
    );
    assert!(!c.peer(0).socket.exists(), "the control socket is removed");
    let log = c.full_log(0);
    assert!(log.contains("every task stopped"), "{}", c.log(0));
    assert!(log.contains("resume at the next start"), "{}", c.log(0));

    // The cut backup stays queued and due now: not done, nor put off as a failure would be.
    {
        let db = c.peer(0).dir.join("state/catalog.db");
        let catalog = peerstash::store::Catalog::open(&db).unwrap();
        let now = peerstash::clock::unix_ms();
        let due = catalog.due(now, 1000).unwrap();
        assert!(
            due.iter().any(|(p, _, _)| *p == big),
            "{big:?} queued and due: {due:?}"
        );
    }

    // Every chunk confirmed before the stop was sent before it (the snoop hears the backup).
    std::thread::sleep(Duration::from_millis(500));
    let before: BTreeSet<u32> = snoop.chunks_since(0, &file_id).into_iter().collect();
    assert!(
        confirmed.iter().filter(|n| before.contains(n)).count() >= confirmed.len() * 9 / 10,
        "the snoop heard the PUTCHUNKs of the confirmed chunks ({} heard)",
        before.len()
    );
    let restart = snoop.mark();
    c.spawn(0);
    c.wait_ready(0);
    let done = wait_until(Duration::from_secs(240), || {
        let s = c.peer(0).state();
        let e = s.versions_of(&big);
        e.len() == 1 && e[0].complete && e[0].min_rd() >= 2
    });
    assert!(done, "the backup completes after the restart: {}", c.log(0));
    let s = c.peer(0).state();
    let after = s.versions_of(&big)[0];
    assert_eq!(after.file_id, file_id, "the same version resumed");
    assert_eq!(after.chunks.len(), CHUNKS);

    std::thread::sleep(Duration::from_millis(500));
    let sent: BTreeSet<u32> = snoop.chunks_since(restart, &file_id).into_iter().collect();
    let sent_again: Vec<&u32> = sent.intersection(&confirmed).collect();
    eprintln!(
        "{} chunks confirmed at the stop; {} sent after the restart, {} of them confirmed before",
        confirmed.len(),
        sent.len(),
        sent_again.len()
    );
    assert!(
        !sent.is_empty(),
        "the chunks missing at the stop were sent after the restart"
    );
    assert!(
        sent_again.len() <= confirmed.len() / 100,
        "{} of the {} chunks confirmed before the stop were sent again after it: {:?}",
        sent_again.len(),
        confirmed.len(),
        &sent_again[..sent_again.len().min(20)]
    );
    drop(tmp);
}

#[test]
fn sigterm_while_idle_stops_at_once_and_removes_the_socket() {
    let mut c = Cluster::start(&["1MB"]);
    assert!(c.peer(0).socket.exists());
    let s = c.peer(0).state();
    let names: Vec<&str> = s.workers.iter().map(|w| w.name.as_str()).collect();
    for name in [
        "queue 1",
        "queue 2",
        "watch keeper",
        "watcher",
        "expiry",
        "repair",
    ] {
        assert!(names.contains(&name), "worker {name} listed: {names:?}");
    }
    let human = c.cli_ok(0, &["state"], 0);
    assert!(human.contains("worker queue: 64 idle"), "{human}");
    sigterm(&c, 0);
    assert_eq!(c.wait_exit(0, STOP_BOUND), Some(0), "{}", c.log(0));
    assert!(!c.peer(0).socket.exists(), "the control socket is removed");
    let log = c.full_log(0);
    for line in [
        "SIGTERM: stopping",
        "every task stopped",
        "catalog checkpointed",
    ] {
        assert!(log.contains(line), "{line:?} in the log:\n{}", c.log(0));
    }
    // The next start finds nothing in its way.
    c.spawn(0);
    c.wait_ready(0);
}

#[test]
fn a_request_running_at_sigterm_is_told_it_was_cut() {
    let mut c = Cluster::start(&["0", "300MB"]);
    let file = c.dir.path().canonicalize().unwrap().join("manual.bin");
    write_big_file(&c.dir.path().join("staging.bin"), &file, 30_000_000);
    let client = Command::new(PEERSTASH)
        .arg("--config")
        .arg(&c.peer(0).config)
        .args(["backup", file.to_str().unwrap(), "-r", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = wait_until(Duration::from_secs(120), || {
        let s = c.peer(0).state();
        (s.versions_of(&file).last()).is_some_and(|f| !chunks_at(f, 1).is_empty() && !f.complete)
    });
    assert!(started, "the backup started: {}", c.log(0));
    sigterm(&c, 0);
    assert_eq!(c.wait_exit(0, STOP_BOUND), Some(0), "{}", c.log(0));
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stopped before this request ended"),
        "{stderr}"
    );
}
