//! Issue 8: a local user in group peerstash attacks the root daemon through its control socket,
//! as an attacker would: with the real `peerstash` command, or with raw JSON and descriptors of
//! its choice written to the socket, run as a non-root user (uid 12346, by setpriv). Every
//! attack must fail. Needs root (to act as another user): skipped otherwise, failed with CI=true.

use crate::common;

use std::io::{BufRead, BufReader, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use peerstash::control::{PeerState, Reply};

const USER: u32 = 12346;

/// A command run as the test's user, in the socket's group (peerstash's, or root's here).
fn as_user(c: &Cluster, program: &Path) -> Command {
    let gid = std::fs::metadata(&c.peer(0).socket).unwrap().gid();
    as_uid(USER, Some(gid), program)
}

fn user_cli(c: &Cluster, args: &[&str]) -> Output {
    as_user(c, Path::new(PEERSTASH))
        .arg("--socket")
        .arg(&c.peer(0).socket)
        .args(args)
        .output()
        .unwrap()
}

fn user_cli_on(c: &Cluster, peer: usize, args: &[&str]) -> Output {
    as_user(c, Path::new(PEERSTASH))
        .arg("--socket")
        .arg(&c.peer(peer).socket)
        .args(args)
        .output()
        .unwrap()
}

/// The attacker's own client: writes `line` to the socket, with a descriptor of `file` (opened
/// as the user, read-only or read-write) when given; returns the final reply's code and message.
fn raw(c: &Cluster, line: &str, file: Option<(&Path, bool)>) -> (i64, String) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = as_user(c, &exe);
    cmd.args([
        "local_attacks::attacker_client",
        "--exact",
        "--ignored",
        "--nocapture",
    ])
    .env("PS_ATTACK_SOCKET", &c.peer(0).socket)
    .env("PS_ATTACK_LINE", line);
    if let Some((path, rw)) = file {
        cmd.env("PS_ATTACK_FD", path);
        if rw {
            cmd.env("PS_ATTACK_RW", "1");
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reply = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REPLY: "))
        .unwrap_or_else(|| panic!("no reply from the attacker's client: {}", output_text(&out)));
    // Whatever payload it carries is not looked at.
    let (code, message, _) = done(parse_json::<Reply<serde::de::IgnoredAny>>(reply));
    (i64::from(code), message)
}

#[test]
#[ignore = "the attacker's client, run as another user by the tests of this file"]
fn attacker_client() {
    let Ok(socket) = std::env::var("PS_ATTACK_SOCKET") else {
        return;
    };
    let line = std::env::var("PS_ATTACK_LINE").unwrap() + "\n";
    let file = std::env::var_os("PS_ATTACK_FD").map(|p| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(std::env::var_os("PS_ATTACK_RW").is_some())
            .open(p)
            .unwrap()
    });
    let stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let fds: Vec<i32> = file.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let cmsgs: &[nix::sys::socket::ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    nix::sys::socket::sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(line.as_bytes())],
        cmsgs,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    let last = BufReader::new(&stream).lines().map_while(Result::ok).last();
    println!("REPLY: {}", last.unwrap_or_default());
}

/// Everything heard on a channel from now until `stop` (at most two minutes).
struct Heard {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<u8>>>,
}

fn listen_until_stopped(channel: std::net::SocketAddrV4) -> Heard {
    let listener = Listener::join(channel);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut all = Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(120);
        while !s.load(Ordering::Relaxed) && std::time::Instant::now() < end {
            all.extend(listener.collect(Duration::from_millis(200)));
        }
        // What was still on its way.
        all.extend(listener.collect(Duration::from_millis(500)));
        all
    });
    Heard { stop, thread }
}

impl Heard {
    fn stop(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn a_symlinked_restore_target_creates_nothing_in_a_root_folder() {
    if needs_root("acting as another user") {
        return;
    }
    let c = Cluster::start(&["0", "100MB", "100MB"]);
    let (base, home, mine) = user_home(&c, USER);
    let o = user_cli(&c, &["backup", mine.to_str().unwrap(), "-r", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    // ~/lnk -> a folder of root's that the user may not write to.
    let rootdir = base.join("rootonly");
    std::fs::create_dir(&rootdir).unwrap();
    std::fs::set_permissions(&rootdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lnk = home.join("lnk");
    std::os::unix::fs::symlink(&rootdir, &lnk).unwrap();
    std::os::unix::fs::lchown(&lnk, Some(USER), Some(USER)).unwrap();
    let mine_s = mine.to_str().unwrap();

    let o = user_cli(
        &c,
        &[
            "restore",
            mine_s,
            "--to",
            lnk.join("evil").to_str().unwrap(),
        ],
    );
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("ermission denied"),
        "the kernel refused it: {}",
        output_text(&o)
    );
    // Raw requests: no descriptor, a read-only one, and the old fields naming the target.
    let line = format!(r#"{{"cmd":"restore","path":"{mine_s}","version":null}}"#);
    let (code, message) = raw(&c, &line, None);
    assert_eq!(code, 1, "{message}");
    assert!(message.contains("must send"), "{message}");
    let (code, message) = raw(&c, &line, Some((&mine, false)));
    assert_eq!(code, 1, "{message}");
    let old = format!(
        r#"{{"cmd":"restore","path":"{mine_s}","version":null,"to":"{}","force":true}}"#,
        rootdir.join("evil").display()
    );
    let (code, message) = raw(&c, &old, None);
    assert_eq!(code, 2, "{message}");
    assert!(entries(&rootdir).is_empty(), "{:?}", entries(&rootdir));

    // What the user may do still works, with the file's mode and the user as owner.
    let back = home.join("back.txt");
    let o = user_cli(&c, &["restore", mine_s, "--to", back.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&mine).unwrap());
    let m = std::fs::metadata(&back).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (USER, 0o640));
    assert!(
        entries(&home)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".tmp")),
        "no temp file left"
    );
}

#[test]
fn a_user_cannot_read_root_files_through_backups() {
    if needs_root("acting as another user") {
        return;
    }
    let c = Cluster::start(&["0", "100MB", "100MB"]);
    let (base, home, mine) = user_home(&c, USER);
    let marker: Vec<u8> = b"ROOT-ONLY-SECRET-0123456789abcdef".repeat(64);
    let secret = base.join("secret");
    std::fs::write(&secret, &marker).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A file of root's inside the user's folder, readable by all: still not the user's.
    let dir = home.join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(USER), Some(USER)).unwrap();
    let roots_marker: Vec<u8> = b"ROOT-OWNED-IN-USER-FOLDER-98765".repeat(64);
    std::fs::write(dir.join("roots.txt"), &roots_marker).unwrap();
    for i in 0..20 {
        let f = dir.join(format!("f{i}"));
        std::fs::write(&f, random_bytes(100_000)).unwrap();
        std::os::unix::fs::chown(&f, Some(USER), Some(USER)).unwrap();
        std::fs::hard_link(&f, home.join(format!("keep{i}"))).unwrap();
    }
    let heard = listen_until_stopped(c.mdb);

    let secret_s = secret.to_str().unwrap();
    // By path, without a descriptor.
    let line = format!(r#"{{"cmd":"backup","path":"{secret_s}","replication":2}}"#);
    let (code, message) = raw(&c, &line, None);
    assert_eq!(code, 1, "{message}");
    // Its own file's descriptor, filed under root's path.
    let (code, message) = raw(&c, &line, Some((&mine, false)));
    assert_eq!(code, 1, "{message}");
    assert!(message.contains("not the file that was sent"), "{message}");
    // A symlink to the secret.
    let link = home.join("s");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let o = user_cli(&c, &["backup", link.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));

    // A backup of the folder while half its files are swapped for symlinks to the secret and
    // back (the other half stay, so that the backup always has something to send).
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (home, dir, secret, stop) = (home.clone(), dir.clone(), secret.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 400_000 {
                let i = n % 10;
                let (f, tmp) = (dir.join(format!("f{i}")), dir.join(format!(".l{i}")));
                if n % 20 < 10 {
                    let _ = std::os::unix::fs::symlink(&secret, &tmp);
                } else {
                    let _ = std::fs::hard_link(home.join(format!("keep{i}")), &tmp);
                }
                let _ = std::fs::rename(&tmp, &f);
                n += 1;
            }
        })
    };
    let o = user_cli(&c, &["backup", dir.to_str().unwrap(), "-r", "2"]);
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert!(
        output_text(&o).contains("not yours"),
        "root's file was skipped: {}",
        output_text(&o)
    );
    let datagrams = heard.stop();
    assert!(
        !datagrams.is_empty(),
        "the backup was heard on MDB: {}",
        output_text(&o)
    );
    for d in &datagrams {
        for m in [&marker, &roots_marker] {
            assert!(
                !d.windows(32).any(|w| w == &m[..32]),
                "a root-only file's bytes went out on the backup channel"
            );
        }
    }
}

#[test]
fn group_members_see_only_their_own_backups() {
    if needs_root("acting as another user") {
        return;
    }
    let c = Cluster::start(&["0", "100MB", "100MB"]);
    let (base, _home, mine) = user_home(&c, USER);
    let roots = base.join("roots-private-name.txt");
    std::fs::write(&roots, b"root's file").unwrap();
    c.cli_ok(0, &["backup", roots.to_str().unwrap(), "-r", "2"], 0);
    let o = user_cli(&c, &["backup", mine.to_str().unwrap(), "-r", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let root_id = c.peer(0).state().versions_of(&roots)[0].file_id.clone();

    for args in [
        vec!["state", "--json"],
        vec!["state"],
        vec!["versions", "/"],
    ] {
        let o = user_cli(&c, &args);
        let t = output_text(&o);
        assert!(!t.contains("roots-private-name"), "{args:?}: {t}");
        assert!(!t.contains(&root_id[..16]), "{args:?}: {t}");
    }
    let o = user_cli(&c, &["versions", "/"]);
    assert!(output_text(&o).contains("mine.txt"), "{}", output_text(&o));
    let o = user_cli(&c, &["versions", roots.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    // History: what a folder held then shows only the user's files; root's file at a time is
    // not restored for it; resuming a held history is root's.
    let o = user_cli(&c, &["versions", "/", "--at", "@9999999999"]);
    let t = output_text(&o);
    assert!(
        t.contains("mine.txt") && !t.contains("roots-private-name"),
        "{t}"
    );
    let at = [
        "restore",
        roots.to_str().unwrap(),
        "--at",
        "@9999999999",
        "--to",
        "/tmp/x",
    ];
    let o = user_cli(&c, &at);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let o = user_cli(&c, &["history", "resume", "/"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("run it as root"),
        "{}",
        output_text(&o)
    );
    // A hosting peer: root sees the chunks it hosts, the user only the totals.
    assert!(!c.peer(1).state().stored.is_empty());
    let o = user_cli_on(&c, 1, &["state", "--json"]);
    let state: PeerState = parse_json(&o.stdout);
    assert!(state.stored.is_empty(), "{state:?}");
    assert!(state.used_bytes > 0);
}

#[test]
fn a_restore_in_progress_is_private_from_its_first_byte() {
    if needs_root("acting as another user") {
        return;
    }
    let c = Cluster::start(&["0", "200MB", "200MB"]);
    let base = c.dir.path().canonicalize().unwrap();
    let big = base.join("big.bin");
    std::fs::write(&big, random_bytes(30_000_000)).unwrap();
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o644)).unwrap();
    c.cli_ok(0, &["backup", big.to_str().unwrap(), "-r", "1"], 0);
    let out = base.join("out");
    std::fs::create_dir(&out).unwrap();
    // A careless umask: the file being written must still be 0600.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("umask 0; exec \"$@\"")
        .arg("sh")
        .arg(PEERSTASH)
        .arg("--config")
        .arg(&c.peer(0).config)
        .args(["restore", big.to_str().unwrap(), "--to"])
        .arg(&out)
        .spawn()
        .unwrap();
    // The modes the temp file went through, in order (its final mode is set just before its
    // final name, once its content is complete and checked).
    let mut seen: Vec<u32> = Vec::new();
    while child.try_wait().unwrap().is_none() {
        for e in std::fs::read_dir(&out).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                if let Ok(m) = e.metadata() {
                    let mode = m.mode() & 0o7777;
                    if seen.last() != Some(&mode) {
                        seen.push(mode);
                    }
                }
            }
        }
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(seen.first(), Some(&0o600), "modes seen: {seen:?}");
    assert!(
        seen == [0o600] || seen == [0o600, 0o644],
        "modes seen: {seen:?}"
    );
    let restored = out.join("big.bin");
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&big).unwrap()
    );
    assert_eq!(std::fs::metadata(&restored).unwrap().mode() & 0o777, 0o644);
}

/// The shipped unit's `ProtectSystem=full`, without systemd: the daemon runs in a mount
/// namespace where /etc is read-only.
fn read_only_etc() -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind /etc /etc && mount -o remount,bind,ro /etc && exec \"$0\" \"$@\"",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn root_restores_into_etc_although_the_daemon_cannot_write_there() {
    if needs_root("acting as another user") {
        return;
    }
    // Can this machine make a mount namespace, and is /etc then read-only in it?
    let probe = Command::new(&read_only_etc()[0])
        .args(&read_only_etc()[1..])
        .args(["touch", "/etc/.peerstash-probe"])
        .output()
        .unwrap();
    if probe.status.success() || !String::from_utf8_lossy(&probe.stderr).contains("Read-only") {
        let _ = std::fs::remove_file("/etc/.peerstash-probe");
        skip(&format!(
            "no read-only /etc in a mount namespace here: {}",
            String::from_utf8_lossy(&probe.stderr)
        ));
        return;
    }
    let c = Cluster::start_placed(
        &["0", "100MB", "100MB"],
        &[],
        |_| Vec::new(),
        |i| Place {
            wrapper: if i == 0 { read_only_etc() } else { Vec::new() },
            ..Place::default()
        },
    );
    let base = c.dir.path().canonicalize().unwrap();
    let conf = base.join("app.conf");
    std::fs::write(&conf, b"setting = 1\n").unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).unwrap();
    c.cli_ok(0, &["backup", conf.to_str().unwrap(), "-r", "2"], 0);
    let target = PathBuf::from(format!(
        "/etc/peerstash-test-{:08x}.conf",
        rand::random::<u32>()
    ));
    let o = c.cli(
        0,
        &[
            "restore",
            conf.to_str().unwrap(),
            "--to",
            target.to_str().unwrap(),
        ],
    );
    let restored = std::fs::read(&target);
    let _ = std::fs::remove_file(&target);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert_eq!(restored.unwrap(), b"setting = 1\n");
}

#[test]
fn a_watched_subfolder_swapped_for_a_symlink_leaks_nothing() {
    // A user who owns a folder inside a watched folder changes a file there, then, while the
    // daemon waits for the file to be quiet, puts a symlink to a root-only folder in the
    // folder's place. The daemon must not read through it. (Needs no second user: root plays
    // the user's part.)
    let watched = tempfile::tempdir().unwrap();
    let w = watched.path().canonicalize().unwrap();
    let table = format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 1\nquiet = \"1500ms\"\n",
        w.display()
    );
    let c = Cluster::start_with(&["0", "100MB"], &[table.as_str()]);
    std::fs::create_dir(w.join("u")).unwrap();
    let f = w.join("u/f");
    std::fs::write(&f, b"the user's own file\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            c.peer(0).state().versions_of(&f).iter().any(|e| e.complete)
        }),
        "{}",
        c.log(0)
    );
    let secret_dir = tempfile::tempdir().unwrap();
    let marker: Vec<u8> = b"ROOT-ONLY-BEHIND-A-SWAPPED-DIR!!".repeat(64);
    std::fs::write(secret_dir.path().join("f"), &marker).unwrap();
    let heard = listen_until_stopped(c.mdb);
    std::fs::write(&f, b"the user's own file, changed\n").unwrap();
    std::fs::rename(w.join("u"), w.join("u.old")).unwrap();
    std::os::unix::fs::symlink(secret_dir.path(), w.join("u")).unwrap();
    // The quiet time, then the queue's look at the file.
    std::thread::sleep(Duration::from_secs(5));
    for d in heard.stop() {
        assert!(
            !d.windows(32).any(|x| x == &marker[..32]),
            "a root-only file's bytes went out on the backup channel"
        );
    }
    assert!(
        (c.peer(0).state().versions_of(&f).iter()).all(|e| e.size != marker.len() as u64),
        "the file behind the symlink was recorded as a version of {}",
        f.display()
    );
}
