//! The optional LAN key (SPEC §3): keyed peers sign every datagram and drop what does not carry
//! a valid tag, so a host without the key can neither forge messages nor take part.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use peerstash::protocol::auth::{self, LanKey};
use peerstash::protocol::Message;

/// A new key made by `peerstash keygen`.
fn new_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = Command::new(PEERSTASH)
        .arg("keygen")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    path
}

fn read_key(path: &Path) -> LanKey {
    LanKey::new(std::fs::read(path).unwrap().try_into().unwrap())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A file of random bytes below the cluster's folder, by the path the daemon sees.
fn make_file(c: &Cluster, name: &str, size: usize) -> (PathBuf, Vec<u8>) {
    let data = c.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let path = data.canonicalize().unwrap().join(name);
    let bytes = random_bytes(size);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn drops(state: &State) -> u64 {
    state.unauthenticated_datagrams
}

/// What a peer hosts: (fileId, chunkNo, perceived RD), sorted.
fn hosted(state: &State) -> Vec<(String, u64, u64)> {
    let mut v: Vec<_> = (state.stored.iter())
        .map(|h| {
            (
                h.file_id.clone(),
                u64::from(h.chunk_no),
                u64::from(h.perceived_rd),
            )
        })
        .collect();
    v.sort();
    v
}

fn hosts_file(state: &State, file_id: &str) -> bool {
    hosted(state).iter().any(|(id, _, _)| id == file_id)
}

/// The perceived RD of each chunk of the one version of `path`.
fn perceived(state: &State, path: &Path) -> Vec<u64> {
    let f = state.versions_of(path);
    assert_eq!(f.len(), 1, "one version of {path:?}: {state}");
    (f[0].chunks.iter())
        .map(|c| u64::from(c.perceived_rd))
        .collect()
}

fn file_id(state: &State, path: &Path) -> String {
    state.versions_of(path)[0].file_id.clone()
}

fn reloads(c: &Cluster, i: usize, what: &str) -> usize {
    c.full_log(i).matches(what).count()
}

/// Sends SIGHUP to peer i and waits until its log says the reload was done (`what`).
fn reload_and_wait(c: &Cluster, i: usize, what: &str) {
    let before = reloads(c, i, what);
    c.reload(i);
    assert!(
        wait_until(Duration::from_secs(10), || reloads(c, i, what) > before),
        "no {what:?} in the log of peer {}:\n{}",
        i + 1,
        c.log(i)
    );
}

#[test]
fn a_keyed_cluster_backs_up_restores_reclaims_and_deletes() {
    let keys = tempfile::tempdir().unwrap();
    let key = new_key(keys.path(), "lan.key");
    let c = Cluster::start_keyed(&["100MB", "100MB", "100MB", "0"], |_| Some(key.clone()));
    let files = [
        make_file(&c, "a.bin", 200_000),
        make_file(&c, "b.bin", 128_000),
    ];
    // Listen to the wire, as a 1.0 peer would, while the backups run.
    let sniffers: Vec<_> = [c.mc, c.mdb]
        .into_iter()
        .map(|ch| {
            let l = Listener::join(ch);
            std::thread::spawn(move || l.collect(Duration::from_secs(3)))
        })
        .collect();
    for (path, _) in &files {
        c.cli_ok(0, &["backup", path.to_str().unwrap(), "-r", "2"], 0);
    }
    let heard: Vec<Vec<u8>> = sniffers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(heard.len() >= 7, "heard {} datagrams", heard.len());
    let k = read_key(&key);
    for d in &heard {
        let text = String::from_utf8_lossy(&d[..d.len().min(200)]).into_owned();
        assert!(
            auth::verify(&k, d, now()).is_ok(),
            "every datagram carries the key's tag: {text:?}"
        );
        let m = Message::parse(d).expect("a peer without the key reads it");
        assert!(m.extra_lines.iter().any(|l| l.starts_with("AUTH ")));
    }

    let s = c.peer(0).state();
    for (path, _) in &files {
        assert!(perceived(&s, path).iter().all(|rd| *rd >= 2), "{s}");
    }
    assert!(
        hosted(&c.peer(3).state()).is_empty(),
        "quota 0 hosts nothing"
    );

    // Restore, byte for byte.
    for (path, bytes) in &files {
        std::fs::remove_file(path).unwrap();
        c.cli_ok(0, &["restore", path.to_str().unwrap()], 0);
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "restored {path:?}");
    }

    // Reclaim: peer 2 drops everything (REMOVED); the chunks get back to RD 2 on peer 4.
    c.cli_ok(3, &["reclaim", "100MB"], 0);
    c.cli_ok(1, &["reclaim", "0"], 0);
    assert!(hosted(&c.peer(1).state()).is_empty());
    assert_eq!(chunk_files_on_disk(c.peer(1)), 0);
    let back = wait_until(Duration::from_secs(20), || {
        let s = c.peer(0).state();
        files
            .iter()
            .all(|(p, _)| perceived(&s, p).iter().all(|rd| *rd >= 2))
    });
    assert!(back, "every chunk back at RD ≥ 2: {}", c.peer(0).state());
    let chunks: usize = files.iter().map(|(_, b)| b.len() / 64_000 + 1).sum();
    assert_eq!(
        hosted(&c.peer(3).state()).len(),
        chunks,
        "peer 4 took them over"
    );

    // Delete frees every peer.
    for (path, _) in &files {
        c.cli_ok(0, &["delete", path.to_str().unwrap()], 0);
    }
    let freed = wait_until(Duration::from_secs(5), || {
        (0..4).all(|i| c.peer(i).state().used_bytes == 0 && chunk_files_on_disk(c.peer(i)) == 0)
    });
    assert!(
        freed,
        "{:?}",
        (0..4).map(|i| c.peer(i).state()).collect::<Vec<_>>()
    );

    // Nothing of the cluster's own traffic was refused.
    for i in 0..4 {
        assert_eq!(
            drops(&c.peer(i).state()),
            0,
            "peer {} dropped datagrams",
            i + 1
        );
    }
}

#[test]
fn forged_messages_without_the_key_change_nothing() {
    let keys = tempfile::tempdir().unwrap();
    let key = new_key(keys.path(), "lan.key");
    let c = Cluster::start_keyed(&["100MB", "100MB", "100MB", "100MB"], |_| Some(key.clone()));
    let (path, bytes) = make_file(&c, "a.bin", 200_000);
    c.cli_ok(0, &["backup", path.to_str().unwrap(), "-r", "2"], 0);
    // Late STOREDs settle.
    std::thread::sleep(Duration::from_millis(1500));
    let s0 = c.peer(0).state();
    let id = file_id(&s0, &path);
    let chunks = perceived(&s0, &path).len();
    let snapshot = || {
        (0..4)
            .map(|i| {
                let s = c.peer(i).state();
                let mine = (i == 0).then(|| perceived(&s, &path));
                (hosted(&s), chunk_files_on_disk(c.peer(i)), mine)
            })
            .collect::<Vec<_>>()
    };
    let before = snapshot();
    let copies = |no: u64| {
        (1..4)
            .filter(|i| before[*i].0.iter().any(|(_, n, _)| *n == no))
            .count()
    };
    assert!(
        (0..chunks as u64).all(|no| copies(no) >= 2),
        "every chunk is hosted by RD 2 other peers: {before:?}"
    );

    // Forgeries from a plain socket: the home peer's DELETE, the holders' REMOVEDs, STOREDs
    // from a peer that does not exist, a PUTCHUNK of a made-up file; then a DELETE signed with
    // another key, and one signed with the right key but two minutes old.
    let mut forged: Vec<(std::net::SocketAddrV4, Vec<u8>)> = Vec::new();
    let delete = format!("1.0 DELETE 1 {id}\r\n\r\n").into_bytes();
    for sender in [1, 99] {
        forged.push((
            c.mc,
            format!("1.0 DELETE {sender} {id}\r\n\r\n").into_bytes(),
        ));
    }
    for no in 0..chunks {
        for sender in 2..=4 {
            let removed = format!("1.0 REMOVED {sender} {id} {no}\r\n\r\n");
            forged.push((c.mc, removed.into_bytes()));
        }
        forged.push((
            c.mc,
            format!("1.0 STORED 77 {id} {no}\r\n\r\n").into_bytes(),
        ));
    }
    let mut put = format!("1.0 PUTCHUNK 77 {} 0 1\r\n\r\n", "cd".repeat(32)).into_bytes();
    put.extend(random_bytes(100));
    forged.push((c.mdb, put));
    let other = LanKey::new([7; 32]);
    forged.push((c.mc, auth::sign(&other, &delete, now())));
    forged.push((c.mc, auth::sign(&read_key(&key), &delete, now() - 120)));
    for (ch, d) in &forged {
        c.send_raw(*ch, d);
    }
    // Long enough for REMOVED's re-backups (0-400 ms) and DELETE's work, were they accepted.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(snapshot(), before, "forged messages changed something");
    for i in 0..4 {
        let n = drops(&c.peer(i).state());
        assert!(
            n >= forged.len() as u64,
            "peer {}: {n} of {} forged datagrams counted",
            i + 1,
            forged.len()
        );
    }
    let text = c.cli_ok(1, &["state"], 0);
    assert!(text.contains("without a valid LAN key tag"), "{text}");

    // Restore while CHUNKs with wrong bytes pour in: they never reach the restore.
    let stop = Arc::new(AtomicBool::new(false));
    let mdr = c.mdr;
    let forger = {
        let stop = stop.clone();
        let datagrams: Vec<Vec<u8>> = (0..chunks)
            .map(|no| {
                let size = (bytes.len() - no * 64_000).min(64_000);
                let mut d = format!("1.0 CHUNK 3 {id} {no}\r\n\r\n").into_bytes();
                d.extend(vec![0u8; size]);
                d
            })
            .collect();
        std::thread::spawn(move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket2::SockRef::from(&s)
                .set_multicast_if_v4(&std::net::Ipv4Addr::LOCALHOST)
                .unwrap();
            s.set_multicast_ttl_v4(0).unwrap();
            let end = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                for d in &datagrams {
                    let _ = s.send_to(d, mdr);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let to = c.dir.path().join("restored.bin");
    c.cli_ok(
        0,
        &[
            "restore",
            path.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ],
        0,
    );
    stop.store(true, Ordering::Relaxed);
    forger.join().unwrap();
    assert_eq!(std::fs::read(&to).unwrap(), bytes);
    assert!(
        !c.full_log(0).contains("with wrong bytes"),
        "a forged CHUNK reached the restore"
    );
    assert_eq!(snapshot(), before);
}

#[test]
fn peers_with_no_key_or_another_key_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (a, b) = (new_key(keys.path(), "a.key"), new_key(keys.path(), "b.key"));
    // Peers 1 and 2 share key A; peer 3 has no key; peer 4 has key B.
    let key_of = [Some(a.clone()), Some(a), None, Some(b)];
    // 1.0: every peer that reads a PUTCHUNK stores it, so who reads whom is seen in what each
    // peer hosts (a 2.0 peer that counted RD STOREDs first would store nothing).
    let specs = (0..4)
        .map(|i| PeerSpec {
            lan_key_file: key_of[i].clone(),
            ..PeerSpec::new("100MB").protocol("1.0")
        })
        .collect();
    let c = Cluster::start_specs(specs);
    let (file_a, _) = make_file(&c, "a.bin", 100_000);
    let (file_none, _) = make_file(&c, "none.bin", 100_000);
    let (file_b, _) = make_file(&c, "b.bin", 100_000);

    // The keyless peer and the peer with key B cannot get their files stored by keyed peers
    // (all their sends, 31 s: run them side by side).
    let c = Arc::new(c);
    let refused: Vec<_> = [(2, file_none.clone()), (3, file_b.clone())]
        .into_iter()
        .map(|(i, path)| {
            let c = c.clone();
            std::thread::spawn(move || {
                c.cli_ok(i, &["backup", path.to_str().unwrap(), "-r", "1"], 3)
            })
        })
        .collect();
    // Key A's backup reaches peer 2 only: peer 4 (key B) refuses the PUTCHUNK, and peer 3
    // (no key) stores it but its unsigned STORED is not counted.
    c.cli_ok(0, &["backup", file_a.to_str().unwrap(), "-r", "1"], 0);
    for t in refused {
        let out = t.join().unwrap();
        assert!(out.contains("below"), "{out}");
    }
    std::thread::sleep(Duration::from_secs(1));

    let s: Vec<State> = (0..4).map(|i| c.peer(i).state()).collect();
    assert!(
        perceived(&s[0], &file_a).iter().all(|rd| *rd == 1),
        "{}",
        s[0]
    );
    assert!(
        perceived(&s[2], &file_none).iter().all(|rd| *rd == 0),
        "{}",
        s[2]
    );
    assert!(
        perceived(&s[3], &file_b).iter().all(|rd| *rd == 0),
        "{}",
        s[3]
    );
    let (id_a, id_none, id_b) = (
        file_id(&s[0], &file_a),
        file_id(&s[2], &file_none),
        file_id(&s[3], &file_b),
    );
    // Keyed peers host nothing of the others' files.
    for i in [0, 1] {
        assert!(!hosts_file(&s[i], &id_none), "peer {}: {}", i + 1, s[i]);
        assert!(!hosts_file(&s[i], &id_b), "peer {}: {}", i + 1, s[i]);
    }
    assert!(hosts_file(&s[1], &id_a));
    assert!(!hosts_file(&s[3], &id_a), "key B refused key A: {}", s[3]);
    assert!(
        !hosts_file(&s[3], &id_none),
        "key B refused no key: {}",
        s[3]
    );
    // A peer without a key reads signed messages as any 1.0 peer does.
    assert!(
        hosts_file(&s[2], &id_a) && hosts_file(&s[2], &id_b),
        "{}",
        s[2]
    );
    // The refusals were counted by keyed peers only.
    for i in [0, 1, 3] {
        assert!(drops(&s[i]) > 0, "peer {}: {}", i + 1, s[i]);
    }
    assert_eq!(drops(&s[2]), 0);
}

#[test]
fn a_changed_key_applies_on_reload_and_a_bad_one_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (a, b) = (new_key(keys.path(), "a.key"), new_key(keys.path(), "b.key"));
    let loose = new_key(keys.path(), "loose.key");
    chmod(&loose, 0o644);
    let mut c = Cluster::start_keyed(&["100MB", "100MB"], |_| Some(a.clone()));
    let backup = |c: &Cluster, name: &str, code: i32| {
        let (path, _) = make_file(c, name, 1000);
        c.cli_ok(0, &["backup", path.to_str().unwrap(), "-r", "1"], code);
    };
    backup(&c, "1", 0);

    // A key file others can read: the reload is refused, key A stays.
    c.peers[1].lan_key_file = Some(loose);
    c.rewrite_config(1, "100MB", "");
    reload_and_wait(&c, 1, "reload refused");
    assert!(c.log(1).contains("network.lan_key_file"), "{}", c.log(1));
    backup(&c, "2", 0);

    // Peer 2 moves to key B: peer 1 (key A) is no longer heard.
    c.peers[1].lan_key_file = Some(b.clone());
    c.rewrite_config(1, "100MB", "");
    reload_and_wait(&c, 1, "config reloaded");
    backup(&c, "3", 3);

    // Peer 1 follows: they hear each other again.
    c.peers[0].lan_key_file = Some(b);
    c.rewrite_config(0, "100MB", "");
    reload_and_wait(&c, 0, "config reloaded");
    backup(&c, "4", 0);
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs a program for at most 10 s (a daemon that should have refused to start is killed).
fn run_briefly(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (code, err)
}

#[test]
fn bad_key_files_stop_the_daemon_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Loopback, TTL 0 and a group of its own, should a daemon start after all.
    let port = 20_000 + rand::random::<u16>() % 40_000;
    let group = rand::random::<u8>() % 100 + 100;
    let config = |key: &Path| {
        let cfg = d.join("p.toml");
        std::fs::write(
            &cfg,
            format!(
                "[peer]\nid = 5\nstate_dir = \"{state}\"\ncontrol_socket = \"{sock}\"\n\
                 [network]\ninterface = \"127.0.0.1\"\nttl = 0\n\
                 mc = \"239.{group}.9.1:{port}\"\nmdb = \"239.{group}.9.2:{}\"\n\
                 mdr = \"239.{group}.9.3:{}\"\nlan_key_file = \"{key}\"\n",
                port + 1,
                port + 2,
                state = d.join("state").display(),
                sock = d.join("c.sock").display(),
                key = key.display(),
            ),
        )
        .unwrap();
        cfg.to_str().unwrap().to_owned()
    };
    let write = |name: &str, len: usize, mode: u32| {
        let p = d.join(name);
        std::fs::write(&p, vec![3u8; len]).unwrap();
        chmod(&p, mode);
        p
    };
    let cases = [
        (d.join("missing.key"), "cannot read"),
        (write("short.key", 31, 0o600), "is 31 bytes, not 32"),
        (write("long.key", 33, 0o600), "is 33 bytes, not 32"),
        (write("open.key", 32, 0o644), "chmod 600"),
        (write("group.key", 32, 0o620), "chmod 600"),
    ];
    for (key, reason) in &cases {
        let cfg = config(key);
        for args in [
            vec!["--config", &cfg],
            vec!["--check-config", "--config", &cfg],
        ] {
            let (code, err) = run_briefly(PEERSTASHD, &args);
            assert_eq!(code, Some(2), "{args:?} with {key:?}: {err}");
            assert!(err.contains("network.lan_key_file"), "{err}");
            assert!(err.contains(reason), "{err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        }
        // The command line reads the config without the key: it only looks for the socket.
        let (code, err) = run_briefly(PEERSTASH, &["--config", &cfg, "state"]);
        assert_eq!(code, Some(4), "{err}");
    }
    let good = write("good.key", 32, 0o600);
    let (code, err) = run_briefly(PEERSTASHD, &["--check-config", "--config", &config(&good)]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn keygen_writes_a_private_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = new_key(dir.path(), "lan.key");
    let key = std::fs::read(&path).unwrap();
    assert_eq!(key.len(), 32);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_ne!(
        key,
        std::fs::read(new_key(dir.path(), "other.key")).unwrap()
    );
    // No daemon, no config needed; an existing file is never overwritten.
    let (code, err) = run_briefly(
        PEERSTASH,
        &[
            "--config",
            "/nonexistent.toml",
            "keygen",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    assert_eq!(std::fs::read(&path).unwrap(), key);
}

/// 2.0 with a LAN key: a restore pulls its chunks over TCP with signed requests and takes only
/// signed answers; no body crosses MDR; a holder answers an unsigned request with nothing, and
/// counts it.
#[test]
fn a_keyed_restore_over_tcp_takes_only_signed_frames() {
    let keys = tempfile::tempdir().unwrap();
    let key = new_key(keys.path(), "lan.key");
    let c = Cluster::start_keyed(&["100MB"; 3], |_| Some(key.clone()));
    assert_eq!(c.peer(0).state().protocol, "2.0");
    let (path, bytes) = make_file(&c, "t.bin", 300_000);
    c.cli_ok(0, &["backup", path.to_str().unwrap(), "-r", "2"], 0);
    let id = file_id(&c.peer(0).state(), &path);
    std::fs::remove_file(&path).unwrap();
    let mdr = Listener::join(c.mdr).record();
    c.cli_ok(0, &["restore", path.to_str().unwrap()], 0);
    let mdr = mdr.stop();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let body_bytes: usize = (mdr.iter())
        .map(|d| match d.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => d.len() - end - 4,
            None => d.len(),
        })
        .sum();
    assert_eq!(body_bytes, 0, "chunk bodies crossed MDR");
    // A holder's port, from its body-less CHUNKs (signed, and saying where to pull).
    let (holder, port) = (mdr.iter())
        .filter_map(|d| Message::parse(d).ok())
        .find_map(|m| Some((m.sender.0 as usize - 1, m.tcp_port()?)))
        .expect("a body-less CHUNK naming a port");
    let before = drops(&c.peer(holder).state());
    let request = format!("2.0 GETCHUNK 1 {id} 0\r\n\r\n").into_bytes();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut s, &(request.len() as u32).to_be_bytes()).unwrap();
    std::io::Write::write_all(&mut s, &request).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    assert!(
        answer.is_empty(),
        "an unsigned request got {} bytes",
        answer.len()
    );
    assert!(
        wait_until(Duration::from_secs(5), || drops(&c.peer(holder).state())
            > before),
        "the unsigned request was not counted: {}",
        c.peer(holder).state()
    );
}

// ---- replays (issue 23, case 5) ------------------------------------------------------------

/// The message type and sender id of a recorded datagram.
fn kind_and_sender(d: &[u8]) -> (String, u32) {
    let f = header_fields(d);
    (f[1].clone(), f[2].parse().unwrap())
}

/// Sends recorded datagrams again, unchanged, from a host without the key; how many each peer
/// should refuse (a peer's own echo back is ignored, not counted).
fn replay(c: &Cluster, channel: std::net::SocketAddrV4, recorded: &[Vec<u8>]) -> Vec<u64> {
    let mut expected = vec![0; c.peers.len()];
    for d in recorded {
        c.send_raw(channel, d);
        let sender = kind_and_sender(d).1;
        for (i, e) in expected.iter_mut().enumerate() {
            *e += u64::from(sender != c.peers[i].id);
        }
        // Chunk-sized datagrams: room for the receivers' buffers.
        std::thread::sleep(Duration::from_millis(2));
    }
    expected
}

fn all_drops(c: &Cluster) -> Vec<u64> {
    (0..c.peers.len())
        .map(|i| drops(&c.peer(i).state()))
        .collect()
}

/// Waits until every peer counted at least `expected` more refusals than `before`.
fn counted(c: &Cluster, before: &[u64], expected: &[u64], what: &str) {
    let ok = wait_until(Duration::from_secs(5), || {
        let now = all_drops(c);
        (0..now.len()).all(|i| now[i] >= before[i] + expected[i])
    });
    assert!(
        ok,
        "{what}: refusals counted {:?}, before {before:?}, expected at least {expected:?} more",
        all_drops(c)
    );
}

/// The issue's attack: the signed DELETEs of `peerstash delete f` are recorded; f, unchanged,
/// is backed up again (same fileId); one DELETE replayed 4 s later must not make the holders
/// drop it: they keep the chunks, the home still counts RD 2, and the restore works.
#[test]
fn a_recorded_delete_replayed_after_the_file_is_backed_up_again_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let key = new_key(keys.path(), "lan.key");
    let c = Cluster::start_keyed(&["100MB"; 3], |_| Some(key.clone()));
    let (path, bytes) = make_file(&c, "f.bin", 150_000);
    let p = path.to_str().unwrap();
    c.cli_ok(0, &["backup", p, "-r", "2"], 0);
    let id = file_id(&c.peer(0).state(), &path);
    let mc = Listener::join(c.mc).record();
    c.cli_ok(0, &["delete", p], 0);
    let freed = wait_until(Duration::from_secs(10), || {
        (1..3).all(|i| !hosts_file(&c.peer(i).state(), &id))
    });
    assert!(freed, "the delete freed the holders: {}", c.dump());
    let deleted_at = Instant::now();
    // The DELETE goes out 8 times over 2.1 s: all of them recorded.
    std::thread::sleep(Duration::from_millis(2500));
    let deletes: Vec<Vec<u8>> = (mc.stop().into_iter())
        .filter(|d| kind_and_sender(d) == ("DELETE".into(), 1))
        .collect();
    assert!(!deletes.is_empty(), "no DELETE recorded");

    c.cli_ok(0, &["backup", p, "-r", "2"], 0);
    assert_eq!(
        file_id(&c.peer(0).state(), &path),
        id,
        "the same fileId again"
    );
    let stored = wait_until(Duration::from_secs(10), || {
        perceived(&c.peer(0).state(), &path)
            .iter()
            .all(|rd| *rd >= 2)
    });
    assert!(stored, "backed up again at RD 2: {}", c.peer(0).state());
    let held: Vec<_> = (1..3).map(|i| hosted(&c.peer(i).state())).collect();
    let on_disk: Vec<_> = (1..3).map(|i| chunk_files_on_disk(c.peer(i))).collect();

    // 4 s after the delete (well within the 60 s window), one DELETE, then all of them.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(deleted_at.elapsed()));
    let before = all_drops(&c);
    let one = replay(&c, c.mc, &deletes[..1]);
    // Long enough for a DELETE's work, were it taken.
    std::thread::sleep(Duration::from_secs(2));
    let every = replay(&c, c.mc, &deletes);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        (1..3)
            .map(|i| hosted(&c.peer(i).state()))
            .collect::<Vec<_>>(),
        held,
        "a holder dropped chunks"
    );
    assert_eq!(
        (1..3)
            .map(|i| chunk_files_on_disk(c.peer(i)))
            .collect::<Vec<_>>(),
        on_disk
    );
    assert!(perceived(&c.peer(0).state(), &path)
        .iter()
        .all(|rd| *rd >= 2));
    let expected: Vec<u64> = one.iter().zip(&every).map(|(a, b)| a + b).collect();
    counted(&c, &before, &expected, "DELETEs replayed");
    let to = c.dir.path().join("restored.bin");
    c.cli_ok(0, &["restore", p, "--to", to.to_str().unwrap()], 0);
    assert_eq!(std::fs::read(&to).unwrap(), bytes);
}

/// Each kind of message (PUTCHUNK, STORED, GETCHUNK, CHUNK, REMOVED, DELETE), recorded from a
/// keyed cluster and sent again unchanged by a host without the key, is refused and counted;
/// a STORED replayed after its sender's REMOVED does not make the home count it again, and
/// PUTCHUNKs replayed after the delete plant nothing. 1.0, so that CHUNKs cross MDR.
#[test]
fn every_kind_of_message_replayed_is_refused_and_counted() {
    let keys = tempfile::tempdir().unwrap();
    let key = new_key(keys.path(), "lan.key");
    let specs = (0..4)
        .map(|_| PeerSpec {
            lan_key_file: Some(key.clone()),
            ..PeerSpec::new("100MB").protocol("1.0")
        })
        .collect();
    let c = Cluster::start_specs(specs);
    let recordings = [c.mc, c.mdb, c.mdr].map(|ch| (ch, Listener::join(ch).record()));
    let (path, bytes) = make_file(&c, "g.bin", 150_000);
    let p = path.to_str().unwrap();
    // 1.0: every peer that reads a PUTCHUNK stores it: peers 2, 3 and 4 hold every chunk.
    c.cli_ok(0, &["backup", p, "-r", "2"], 0);
    let id = file_id(&c.peer(0).state(), &path);
    let to = c.dir.path().join("restored.bin");
    assert_eq!(restore_to(&c, 0, &path, &to), bytes);
    c.cli_ok(1, &["reclaim", "0"], 0);
    let settled = wait_until(Duration::from_secs(5), || {
        !hosts_file(&c.peer(1).state(), &id)
            && perceived(&c.peer(0).state(), &path)
                .iter()
                .all(|rd| *rd == 2)
    });
    assert!(settled, "peer 2 dropped its copies: {}", c.dump());
    std::thread::sleep(Duration::from_secs(2));
    let recorded: Vec<_> = recordings
        .into_iter()
        .map(|(ch, r)| (ch, r.stop()))
        .collect();
    let of_kind = |kind: &str, sender: Option<u32>| -> (std::net::SocketAddrV4, Vec<Vec<u8>>) {
        let (ch, ds) = (recorded.iter())
            .find(|(_, ds)| ds.iter().any(|d| kind_and_sender(d).0 == kind))
            .unwrap_or_else(|| panic!("no {kind} recorded"));
        let ds = (ds.iter())
            .filter(|d| {
                let (k, s) = kind_and_sender(d);
                k == kind && sender.is_none_or(|want| want == s)
            })
            .cloned()
            .collect();
        (*ch, ds)
    };

    // Peer 2's STOREDs, after its REMOVED: the home still counts 2 holders, not 3.
    let before = all_drops(&c);
    let (ch, stored) = of_kind("STORED", Some(2));
    assert!(!stored.is_empty());
    let expected = replay(&c, ch, &stored);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        perceived(&c.peer(0).state(), &path)
            .iter()
            .all(|rd| *rd == 2),
        "a replayed STORED counted a holder that dropped the chunk: {}",
        c.peer(0).state()
    );
    counted(&c, &before, &expected, "STORED");
    for kind in ["GETCHUNK", "CHUNK", "REMOVED"] {
        let before = all_drops(&c);
        let (ch, ds) = of_kind(kind, None);
        let expected = replay(&c, ch, &ds);
        counted(&c, &before, &expected, kind);
    }
    assert!(perceived(&c.peer(0).state(), &path)
        .iter()
        .all(|rd| *rd == 2));

    // Deleted, then its PUTCHUNKs and DELETEs replayed: nothing is planted again.
    let mc = Listener::join(c.mc).record();
    c.cli_ok(0, &["delete", p], 0);
    let freed = wait_until(Duration::from_secs(10), || {
        (0..4).all(|i| chunk_files_on_disk(c.peer(i)) == 0)
    });
    assert!(freed, "{}", c.dump());
    // The DELETE goes out 8 times over 2.1 s.
    std::thread::sleep(Duration::from_millis(2500));
    let deletes: Vec<Vec<u8>> = (mc.stop().into_iter())
        .filter(|d| kind_and_sender(d).0 == "DELETE")
        .collect();
    assert!(!deletes.is_empty(), "no DELETE recorded");
    let (ch, puts) = of_kind("PUTCHUNK", None);
    let before = all_drops(&c);
    let expected = replay(&c, ch, &puts);
    // Long enough for the chunks to be written, were they taken.
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..4 {
        assert_eq!(
            chunk_files_on_disk(c.peer(i)),
            0,
            "peer {}: re-planted",
            i + 1
        );
        assert!(
            hosted(&c.peer(i).state()).is_empty(),
            "{}",
            c.peer(i).state()
        );
    }
    counted(&c, &before, &expected, "PUTCHUNK");
    let before = all_drops(&c);
    let expected = replay(&c, c.mc, &deletes);
    counted(&c, &before, &expected, "DELETE");
}

/// A restart loses the tags seen: the sender's mark kept in the catalog refuses what it sent
/// before. PUTCHUNKs recorded during a backup, the file deleted, the holder restarted: replayed
/// at once, they plant nothing.
#[test]
fn a_replay_after_the_receiver_restarts_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let key = new_key(keys.path(), "lan.key");
    let mut c = Cluster::start_keyed(&["100MB"; 3], |_| Some(key.clone()));
    let (path, _) = make_file(&c, "r.bin", 150_000);
    let p = path.to_str().unwrap();
    let mdb = Listener::join(c.mdb).record();
    c.cli_ok(0, &["backup", p, "-r", "2"], 0);
    let puts: Vec<Vec<u8>> = (mdb.stop().into_iter())
        .filter(|d| kind_and_sender(d).0 == "PUTCHUNK")
        .collect();
    assert!(!puts.is_empty());
    let id = file_id(&c.peer(0).state(), &path);
    c.cli_ok(0, &["delete", p], 0);
    let freed = wait_until(Duration::from_secs(10), || {
        (1..3).all(|i| chunk_files_on_disk(c.peer(i)) == 0 && !hosts_file(&c.peer(i).state(), &id))
    });
    assert!(freed, "{}", c.dump());
    c.restart(1);
    assert_eq!(drops(&c.peer(1).state()), 0);
    let expected = replay(&c, c.mdb, &puts);
    // Long enough for the chunks to be written, were they taken.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        chunk_files_on_disk(c.peer(1)),
        0,
        "re-planted after the restart"
    );
    assert!(
        hosted(&c.peer(1).state()).is_empty(),
        "{}",
        c.peer(1).state()
    );
    counted(
        &c,
        &[0, 0, 0],
        &[0, expected[1], 0],
        "PUTCHUNK after a restart",
    );
}
