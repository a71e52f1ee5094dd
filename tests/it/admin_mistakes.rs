//! Issue 10: an admin's mistakes and the machine's accidents lose no backup. A second daemon on
//! one state folder, a lost or damaged catalog, a control socket path that names a file, stray
//! files in the chunk store: each is refused or set aside with one clear line, and nothing
//! hosted is deleted on a guess.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Runs a daemon with `config` and `args` to its end (at most 15 s); exit code and output.
fn run_once(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(PEERSTASHD)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code(), text)
}

#[test]
fn a_second_daemon_on_the_same_state_folder_is_refused() {
    let c = Cluster::start(&["0", "100MB", "100MB"]);
    let base = c.dir.path().canonicalize().unwrap();
    let f = base.join("f.bin");
    std::fs::write(&f, random_bytes(300_000)).unwrap();
    c.cli_ok(0, &["backup", f.to_str().unwrap(), "-r", "2"], 0);
    let hosted_before = chunk_files_on_disk(c.peer(1));
    // A copied config: same state folder, another socket.
    let text = std::fs::read_to_string(&c.peer(1).config)
        .unwrap()
        .replace("control.sock", "second.sock");
    let copy = c.peer(1).dir.join("copy.toml");
    std::fs::write(&copy, text).unwrap();
    let (code, out) = run_once(&copy, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("already running"), "{out}");
    assert!(
        out.contains(&c.peer(1).id.to_string()) || out.contains("pid"),
        "{out}"
    );
    assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
    assert!(!c.peer(1).dir.join("second.sock").exists());
    // The first goes on, with every chunk, and a sound catalog.
    assert_eq!(chunk_files_on_disk(c.peer(1)), hosted_before);
    assert!(c.cli_ok(1, &["check"], 0).contains("sound"));
    std::fs::remove_file(&f).unwrap();
    c.cli_ok(0, &["restore", f.to_str().unwrap()], 0);
}

#[test]
fn a_lost_catalog_stops_the_start_and_is_rebuilt_from_the_chunk_files() {
    // Peer 2 is the only host: its chunks are the only copies.
    let mut c = Cluster::start(&["0", "100MB", "0"]);
    let base = c.dir.path().canonicalize().unwrap();
    let f = base.join("only-copy.bin");
    let bytes = random_bytes(1_000_000);
    std::fs::write(&f, &bytes).unwrap();
    c.cli_ok(0, &["backup", f.to_str().unwrap(), "-r", "1"], 0);
    let hosted = chunk_files_on_disk(c.peer(1));
    assert_eq!(hosted, 16);
    c.stop(1);
    // Emptied, as by a mistaken `> catalog.db`.
    let state = c.peer(1).dir.join("state");
    std::fs::write(state.join("catalog.db"), b"").unwrap();
    for extra in ["catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(state.join(extra));
    }
    c.spawn(1);
    assert_eq!(c.wait_exit(1, Duration::from_secs(15)), Some(1));
    let log = c.full_log(1);
    assert!(log.contains("--rebuild-catalog"), "{log}");
    assert_eq!(chunk_files_on_disk(c.peer(1)), hosted, "nothing deleted");
    // Rebuilt: the chunks are hosted again and serve a restore.
    c.spawn_with(1, &[], &["--rebuild-catalog"]);
    c.wait_ready(1);
    let stored = c.peer(1).state().stored.len();
    assert_eq!(stored, hosted);
    std::fs::remove_file(&f).unwrap();
    c.cli_ok(0, &["restore", f.to_str().unwrap()], 0);
    assert_eq!(std::fs::read(&f).unwrap(), bytes);
    // And the next ordinary start is ordinary.
    c.restart(1);
    assert_eq!(c.peer(1).state().stored.len(), hosted);
}

#[test]
fn a_damaged_catalog_stops_the_start_with_the_way_out() {
    let mut c = Cluster::start(&["0", "100MB", "100MB"]);
    let base = c.dir.path().canonicalize().unwrap();
    for i in 0..20 {
        let f = base.join(format!("f{i}.bin"));
        std::fs::write(&f, random_bytes(200_000)).unwrap();
        c.cli_ok(0, &["backup", f.to_str().unwrap(), "-r", "2"], 0);
    }
    c.stop(1);
    let db = c.peer(1).dir.join("state").join("catalog.db");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 3 * 4096, "{} bytes", bytes.len());
    // Garbage over the second page (past the header page).
    for b in &mut bytes[4096..8192] {
        *b = 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    c.spawn(1);
    assert_eq!(c.wait_exit(1, Duration::from_secs(15)), Some(1));
    let log = c.full_log(1);
    let line = log.lines().last().unwrap_or("");
    assert!(line.contains("catalog"), "{log}");
    assert!(line.contains("--rebuild-catalog"), "{log}");
    assert!(chunk_files_on_disk(c.peer(1)) > 0, "nothing deleted");
}

#[test]
fn a_control_socket_path_naming_a_file_is_refused_and_left_alone() {
    let mut c = Cluster::start(&["0"]);
    c.stop(0);
    let socket = c.peer(0).socket.clone();
    std::fs::write(&socket, b"an admin's notes").unwrap();
    c.spawn(0);
    assert_eq!(c.wait_exit(0, Duration::from_secs(15)), Some(1));
    let log = c.full_log(0);
    assert!(log.contains("is not a socket"), "{log}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"an admin's notes");
}

#[test]
fn chunk_files_the_catalog_does_not_know_are_set_aside_not_deleted() {
    let mut c = Cluster::start(&["100MB"]);
    c.stop(0);
    let chunks = c.peer(0).dir.join("state").join("chunks");
    let dir = chunks.join("ab".repeat(32));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("7"), b"a chunk someone copied here").unwrap();
    std::fs::write(chunks.join("README"), b"not a chunk").unwrap();
    c.spawn(0);
    c.wait_ready(0);
    let quarantine = c.peer(0).dir.join("state").join("quarantine");
    let kept: Vec<Vec<u8>> = std::fs::read_dir(&quarantine)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        kept.contains(&b"a chunk someone copied here".to_vec()),
        "{kept:?}"
    );
    assert!(kept.contains(&b"not a chunk".to_vec()), "{kept:?}");
    assert!(c.full_log(0).contains("quarantine"));
    assert_eq!(chunk_files_on_disk(c.peer(0)), 0);
}

#[test]
fn a_copied_peer_id_is_reported_and_explains_a_short_backup() {
    let mut c = Cluster::start(&["0", "100MB", "100MB"]);
    // Peer 3 gets peer 1's id, as with a config copied to a new machine.
    c.stop(2);
    let text = std::fs::read_to_string(&c.peer(2).config)
        .unwrap()
        .replace("id = 3", "id = 1");
    std::fs::write(&c.peer(2).config, text).unwrap();
    c.spawn(2);
    c.wait_ready(2);
    let base = c.dir.path().canonicalize().unwrap();
    let f = base.join("f.bin");
    std::fs::write(&f, random_bytes(200_000)).unwrap();
    // Peer 1 ignores what comes with its own id: only peer 2 can store.
    let out = c.cli(2, &["backup", f.to_str().unwrap(), "-r", "2"]);
    let err =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("only 1 other peers confirmed"), "{err}");
    // Peer 1 saw PUTCHUNKs with its id for a file that is not its own.
    assert!(
        wait_until(Duration::from_secs(5), || {
            (c.peer(0).state().warnings.iter()).any(|w| w.contains("peer.id"))
        }),
        "{}",
        c.log(0)
    );
    assert!(c.full_log(0).contains("another peer uses this peer's id 1"));
    let text = c.cli_ok(0, &["state"], 0);
    assert!(
        text.starts_with("WARNING: another peer uses this peer's id"),
        "{text}"
    );
}

#[test]
fn a_socket_option_naming_a_file_says_so() {
    let c = Cluster::start(&["0"]);
    let file = c.peer(0).dir.join("not-a-socket");
    std::fs::write(&file, b"x").unwrap();
    let out = Command::new(PEERSTASH)
        .arg("--socket")
        .arg(&file)
        .arg("state")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a socket"), "{err}");
}

#[test]
fn errors_about_the_state_folder_keep_their_cause() {
    if !nix::unistd::geteuid().is_root() {
        skip("mounting and acting as another user need root");
        return;
    }
    let c = Cluster::start(&["0"]);
    let base = c.dir.path().canonicalize().unwrap();
    // A state folder on a read-only file system.
    let ro = base.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&ro)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let text = std::fs::read_to_string(&c.peer(0).config)
            .unwrap()
            .replace(
                &c.peer(0).dir.join("state").display().to_string(),
                &ro.join("state").display().to_string(),
            )
            .replace("control.sock", "ro.sock");
        let config = base.join("ro.toml");
        std::fs::write(&config, text).unwrap();
        let (code, out) = run_once(&config, &[]);
        let _ = Command::new("umount").arg(&ro).status();
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("Read-only file system"), "{out}");
        assert!(out.contains("peer.state_dir"), "{out}");
    } else {
        skip("no tmpfs mount here: the read-only case");
    }
    // A daemon started by a user on root's state folder.
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = as_uid(12347, None, std::path::Path::new(PEERSTASHD))
        .arg("--config")
        .arg(&c.peer(0).config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("user 12347"), "{text}");
    assert!(text.contains("run peerstashd as root"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");
}
