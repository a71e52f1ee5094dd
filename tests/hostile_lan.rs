//! Issue 8, the LAN side: a host on the LAN may send any datagram any number of times. Each test
//! is one attack, made as an attacker would: datagrams from a plain UDP socket to the cluster's
//! multicast group, on 127.0.0.1 with TTL 0 (nothing leaves the machine), bounded in count and
//! time.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The attacker: a plain UDP socket that sends to the cluster's groups on loopback, TTL 0.
fn attacker() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    s.set_multicast_ttl_v4(0).unwrap();
    s.into()
}

/// A listener on one of the cluster's channels (loopback membership only).
fn listen(channel: SocketAddrV4) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&std::net::SocketAddr::V4(channel).into()).unwrap();
    s.join_multicast_v4(channel.ip(), &Ipv4Addr::LOCALHOST)
        .unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// The first header line's fields of a datagram.
fn header(datagram: &[u8]) -> Vec<String> {
    let end = datagram
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(datagram.len());
    String::from_utf8_lossy(&datagram[..end])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Runs `peerstash` on peer i; None if it has not answered within `limit` (then it is killed).
fn cli_within(c: &Cluster, i: usize, args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = Command::new(PEERSTASH)
        .arg("--config")
        .arg(&c.peer(i).config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A file of `size` random bytes in the cluster's folder, backed up from peer 1.
fn backed_up_file(c: &Cluster, name: &str, size: usize, rd: &str) -> (PathBuf, Vec<u8>, String) {
    let data = c.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let path = data.canonicalize().unwrap().join(name);
    let bytes = random_bytes(size);
    std::fs::write(&path, &bytes).unwrap();
    c.cli_ok(0, &["backup", path.to_str().unwrap(), "-r", rd], 0);
    let state = c.state(0);
    let id = file_entries(&state, &path)[0]["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (path, bytes, id)
}

/// 200,000 forged STOREDs (random sender ids) for a real chunk in about 3 s: every peer still
/// answers within 5 s, stays under 150 MiB, and the chunk's perceived RD stays under the cap.
#[test]
fn a_burst_of_forged_storeds_stalls_no_peer() {
    let c = Cluster::start(&["100MB", "100MB", "100MB"]);
    let (path, _, id) = backed_up_file(&c, "f.bin", 100_000, "2");
    let sock = attacker();
    let start = Instant::now();
    let total = 200_000u32;
    for n in 0..total {
        let sender = 1000 + rand::random::<u32>() % 1_000_000_000;
        let d = format!("1.0 STORED {sender} {id} 0\r\n\r\n");
        let _ = sock.send_to(d.as_bytes(), c.mc);
        // Keep to about 3 s: 200,000 evenly spread.
        if n % 1000 == 999 {
            let due = start + Duration::from_secs(3) * (n + 1) / total;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    eprintln!("burst sent in {:?}", start.elapsed());
    for i in 0..3 {
        let t = Instant::now();
        let out = cli_within(&c, i, &["state", "--json"], Duration::from_secs(5));
        let out = out.unwrap_or_else(|| panic!("peer {} did not answer state within 5 s", i + 1));
        assert!(out.status.success());
        eprintln!("peer {}: state in {:?}", i + 1, t.elapsed());
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for f in state["files"].as_array().unwrap() {
            for ch in f["chunks"].as_array().unwrap() {
                assert!(ch["perceived_rd"].as_u64().unwrap() <= 64, "{ch}");
            }
        }
        for h in state["stored"].as_array().unwrap() {
            assert!(h["perceived_rd"].as_u64().unwrap() <= 64, "{h}");
        }
        let rss = peak_rss(c.pid(i).unwrap());
        eprintln!("peer {}: peak RSS {} MiB", i + 1, rss >> 20);
        assert!(rss < 150 << 20, "peer {}: peak RSS {rss} bytes", i + 1);
    }
    let out = cli_within(
        &c,
        0,
        &["versions", path.to_str().unwrap()],
        Duration::from_secs(5),
    )
    .expect("versions answered within 5 s");
    assert!(out.status.success());
    // The file's chunk: its holders are the real peers and at most 64 in all.
    let s = c.state(0);
    let rd = min_rd(file_entries(&s, &path)[0]);
    assert!((2..=64).contains(&rd), "perceived RD {rd}");
}

/// 3,000 forged empty-chunk PUTCHUNKs (distinct fileIds) against a 64 KB quota: the store takes
/// less than 1 MB of disk, and the used bytes `state` reports never exceed the quota.
#[test]
fn forged_empty_putchunks_cannot_fill_the_disk() {
    let c = Arc::new(Cluster::start(&["64KB"]));
    let quota = 64_000u64;
    let done = Arc::new(AtomicBool::new(false));
    let peak_used = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (c, done, peak_used) = (c.clone(), done.clone(), peak_used.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(s) = c.try_state(0) {
                    peak_used.fetch_max(used_bytes(&s), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let sock = attacker();
    let start = Instant::now();
    for n in 0..3000u32 {
        let id = format!("{:064x}", 0xbad0_0000u64 + u64::from(n));
        let d = format!("1.0 PUTCHUNK 99 {id} 0 1\r\n\r\n");
        let _ = sock.send_to(d.as_bytes(), c.mdb);
        // About one a millisecond: slow enough that the peer is not merely busy.
        let due = start + Duration::from_millis(u64::from(n));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();

    let s = c.state(0);
    let stored = s["stored"].as_array().unwrap().len();
    let files = chunk_files_on_disk(c.peer(0));
    let chunks = c.peer(0).dir.join("state").join("chunks");
    let du = Command::new("du").arg("-sk").arg(&chunks).output().unwrap();
    let du_kb: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "{stored} chunks hosted, {files} chunk files, {du_kb} KiB on disk, {} bytes used",
        used_bytes(&s)
    );
    assert!(stored > 0, "empty chunks are hosted while they fit");
    assert_eq!(files, stored);
    assert!(files as u64 <= quota / 4096, "{files} chunk files");
    assert!(du_kb < 1024, "{du_kb} KiB on disk");
    assert!(used_bytes(&s) <= quota);
    assert!(peak_used.load(Ordering::Relaxed) <= quota);
}

/// A host that answers every GETCHUNK at once with a 10-byte bogus CHUNK (and again during the
/// holders' random wait) does not silence the real holders: the restore succeeds, promptly.
#[test]
fn a_restore_succeeds_under_a_jammer() {
    let c = Cluster::start(&["100MB", "100MB", "100MB"]);
    let (path, bytes, _) = backed_up_file(&c, "r.bin", 1_000_000, "2");
    std::fs::remove_file(&path).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let jammed = Arc::new(AtomicU64::new(0));
    let jammer = {
        let (stop, jammed) = (stop.clone(), jammed.clone());
        let (mc, mdr) = (c.mc, c.mdr);
        std::thread::spawn(move || {
            let heard = listen(mc);
            heard
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            let sock = attacker();
            let end = Instant::now() + Duration::from_secs(60);
            let mut buf = vec![0u8; 70_000];
            // Bogus CHUNKs to send: at once, and again through the holders' 0-400 ms wait.
            let mut due: Vec<(Instant, Vec<u8>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                if let Ok(n) = heard.recv(&mut buf) {
                    let h = header(&buf[..n]);
                    if h.len() >= 5 && h[1] == "GETCHUNK" {
                        let mut d = format!("1.0 CHUNK 77 {} {}\r\n\r\n", h[3], h[4]).into_bytes();
                        d.extend(b"0123456789");
                        // 2.0: a body-less CHUNK says "delivered over TCP" (it silences the
                        // holders of a GETCHUNK that asked for TCP, never of a plain one), and
                        // junk goes to the port the GETCHUNK names.
                        let bodyless = format!("2.0 CHUNK 77 {} {}\r\n\r\n", h[3], h[4]);
                        let now = Instant::now();
                        for ms in [0, 10, 30, 60, 100, 150, 200, 300] {
                            due.push((now + Duration::from_millis(ms), d.clone()));
                            due.push((
                                now + Duration::from_millis(ms),
                                bodyless.clone().into_bytes(),
                            ));
                        }
                        if let Some(port) = tcp_port(&buf[..n]) {
                            let frame = [&(d.len() as u32).to_be_bytes()[..], &d].concat();
                            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                                let _ = std::io::Write::write_all(&mut s, &frame);
                            }
                        }
                        jammed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let now = Instant::now();
                due.retain(|(at, d)| {
                    if *at <= now {
                        let _ = sock.send_to(d, mdr);
                    }
                    *at > now
                });
            }
        })
    };
    let took = restore_under_attack(&c, &path, &bytes, || {
        stop.store(true, Ordering::Relaxed);
        jammer.join().unwrap();
    });
    let jammed = jammed.load(Ordering::Relaxed);
    eprintln!("restore in {took:?} under {jammed} jammed GETCHUNKs");
    assert!(jammed > 0, "the jammer was heard");
    assert!(took < Duration::from_secs(10), "restore took {took:?}");
}

/// Restores `path` on peer 1 (within 40 s) while an attack runs, then `stop`s the attack;
/// checks the restore succeeded byte for byte and returns how long it took.
fn restore_under_attack(c: &Cluster, path: &Path, bytes: &[u8], stop: impl FnOnce()) -> Duration {
    let t = Instant::now();
    let restore = ["restore", path.to_str().unwrap()];
    let out = cli_within(c, 0, &restore, Duration::from_secs(40));
    let took = t.elapsed();
    stop();
    let out = out.expect("restore ended");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    took
}

/// The port of a 2.0 GETCHUNK's `TCP <port>` line.
fn tcp_port(datagram: &[u8]) -> Option<u16> {
    peerstash::protocol::Message::parse(datagram)
        .ok()?
        .tcp_port()
}

/// 2.0: an attacker holds every connection the restore's TCP listener serves at once (and
/// opens new ones as they are cut): the holders cannot deliver over TCP, and the restore ends
/// all the same, from the multicast answers to its later GETCHUNKs.
#[test]
fn a_restore_succeeds_with_its_tcp_listener_held_busy() {
    let c = Cluster::start(&["100MB", "100MB", "100MB"]);
    let (path, bytes, _) = backed_up_file(&c, "t.bin", 1_000_000, "2");
    std::fs::remove_file(&path).unwrap();
    // The restore's port, from a first restore's GETCHUNKs.
    let mc = Listener::join(c.mc).record();
    let first = c.dir.path().join("first.bin");
    c.cli_ok(
        0,
        &[
            "restore",
            path.to_str().unwrap(),
            "--to",
            first.to_str().unwrap(),
        ],
        0,
    );
    let port = (mc.stop().iter())
        .find_map(|d| tcp_port(d))
        .expect("a GETCHUNK with a TCP line");
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                held.retain(|s: &std::net::TcpStream| s.peer_addr().is_ok());
                if held.len() < 40 {
                    if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                        let _ = std::io::Write::write_all(&mut &s, &[0, 1]); // half a length
                        held.push(s);
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if held.len() >= 40 {
                    // Reopen the ones the listener cut.
                    held.retain(|s| {
                        let mut b = [0u8; 1];
                        s.set_nonblocking(true).ok();
                        !matches!(std::io::Read::read(&mut &*s, &mut b), Ok(0))
                    });
                }
            }
            held.len()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let took = restore_under_attack(&c, &path, &bytes, || {
        stop.store(true, Ordering::Relaxed);
        holder.join().unwrap();
    });
    eprintln!("restore in {took:?} with its TCP listener held busy");
    assert!(took < Duration::from_secs(15), "restore took {took:?}");
}

/// 500 GETCHUNKs for one chunk in 2 s buy at most about one 64 KB CHUNK a second.
#[test]
fn a_getchunk_flood_gets_one_chunk_a_second() {
    let c = Cluster::start(&["100MB", "100MB"]);
    let (_, _, id) = backed_up_file(&c, "g.bin", 100_000, "1");
    let counter = {
        let mdr = c.mdr;
        let id = id.clone();
        std::thread::spawn(move || {
            let heard = listen(mdr);
            let end = Instant::now() + Duration::from_secs(4);
            let mut buf = vec![0u8; 70_000];
            let mut replies = 0;
            while Instant::now() < end {
                if let Ok(n) = heard.recv(&mut buf) {
                    let h = header(&buf[..n]);
                    if h.len() >= 5 && h[1] == "CHUNK" && h[3].eq_ignore_ascii_case(&id) {
                        replies += 1;
                    }
                }
            }
            replies
        })
    };
    std::thread::sleep(Duration::from_millis(200)); // the listener has joined
    let sock = attacker();
    let d = format!("1.0 GETCHUNK 99 {id} 0\r\n\r\n");
    let start = Instant::now();
    for n in 0..500u32 {
        let _ = sock.send_to(d.as_bytes(), c.mc);
        // 500 evenly spread over 2 s.
        let due = start + Duration::from_millis(u64::from(n + 1) * 4);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let flood = start.elapsed();
    let replies = counter.join().unwrap();
    eprintln!("{replies} CHUNK replies to 500 GETCHUNKs in {flood:?}");
    assert!(replies >= 1, "the holder answers");
    assert!(replies <= 3, "{replies} CHUNK replies");
}

/// A peer started with the unit's umask (0007) keeps its store to itself: chunk folders 0700,
/// chunk files 0600, the chunks folder and the state folder 0700, the catalog 0600.
#[test]
fn hosted_chunks_are_the_daemons_alone() {
    let umask_0007 = |_| Place {
        wrapper: vec![
            "sh".into(),
            "-c".into(),
            "umask 0007 && exec \"$0\" \"$@\"".into(),
        ],
        ..Place::default()
    };
    let c = Cluster::start_placed(&["100MB", "100MB"], &[], |_| Vec::new(), umask_0007);
    backed_up_file(&c, "p.bin", 200_000, "1");
    let state = c.peer(1).dir.join("state");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&state), 0o700, "state folder");
    assert_eq!(mode(&state.join("chunks")), 0o700, "chunks folder");
    for name in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let p = state.join(name);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{name}");
        }
    }
    for pack in std::fs::read_dir(state.join("chunks")).unwrap().flatten() {
        assert_eq!(mode(&pack.path()), 0o600, "{:?}", pack.path());
    }
    assert_eq!(
        chunk_files_on_disk(c.peer(1)),
        4,
        "the file's four chunks are hosted"
    );
}

/// A DELETE that arrives while a chunk of its file is being written: the chunk is removed once
/// written, and no STORED is sent for it.
#[test]
fn a_delete_during_the_write_leaves_nothing() {
    let c = Cluster::start(&["100MB"]);
    let stored = {
        let mc = c.mc;
        std::thread::spawn(move || {
            let heard = listen(mc);
            let end = Instant::now() + Duration::from_secs(4);
            let mut buf = vec![0u8; 70_000];
            let mut stored = 0;
            while Instant::now() < end {
                if let Ok(n) = heard.recv(&mut buf) {
                    stored +=
                        usize::from(header(&buf[..n]).get(1).map(String::as_str) == Some("STORED"));
                }
            }
            stored
        })
    };
    std::thread::sleep(Duration::from_millis(200)); // the listener has joined
    let sock = attacker();
    for n in 0..10u64 {
        let id = format!("{:064x}", 0xde1e_7e00u64 + n);
        let mut put = format!("1.0 PUTCHUNK 99 {id} 0 1\r\n\r\n").into_bytes();
        put.extend(random_bytes(64_000));
        let _ = sock.send_to(&put, c.mdb);
        // The two come on different channels, so a DELETE sent at once may be handled before the
        // PUTCHUNK. A home peer sends DELETE several times: here 0 to 8 ms later, while
        // the chunk is being written (its file synced, then its row committed).
        for ms in [0, 1, 1, 2, 4] {
            std::thread::sleep(Duration::from_millis(ms));
            let _ = sock.send_to(format!("1.0 DELETE 99 {id}\r\n\r\n").as_bytes(), c.mc);
        }
    }
    let stored = stored.join().unwrap();
    let s = c.state(0);
    assert_eq!(stored, 0, "STORED sent for a deleted chunk");
    assert_eq!(chunk_files_on_disk(c.peer(0)), 0);
    assert!(s["stored"].as_array().unwrap().is_empty(), "{s}");
    assert_eq!(used_bytes(&s), 0);
}
