//! Issue 23, cases 7, 8 and 10: a group member attacks the control socket of the root daemon
//! with a client of its own, run as a non-root user in the socket's group (uid 12348, by
//! setpriv): descriptors sent a byte at a time, idle connections that hold every slot, and
//! errors that would name another user's files. Each attack must fail while root's commands
//! still answer. Needs root (to act as other users): skipped otherwise, failed with CI=true.

use crate::common;

use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const USER: u32 = 12348;
/// Another user, whose file names the attacker must never see.
const ALICE: u32 = 12349;

/// The test binary's `socket_attacker`, run as the attacker in the socket's group, in `mode`.
fn attacker(c: &Cluster, mode: &str) -> Child {
    attacker_as(c, USER, mode, 40)
}

/// `attacker`, as `uid`, with `idle` connections in mode "idle".
fn attacker_as(c: &Cluster, uid: u32, mode: &str, idle: usize) -> Child {
    let gid = std::fs::metadata(&c.peer(0).socket).unwrap().gid();
    let exe = std::env::current_exe().unwrap();
    as_uid(uid, Some(gid), &exe)
        .args([
            "socket_attacks::socket_attacker",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("PS_ATTACK_SOCKET", &c.peer(0).socket)
        .env("PS_ATTACK_MODE", mode)
        .env("PS_ATTACK_IDLE", idle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The attacker's lines as it prints them: waits for one starting with `prefix` (its rest).
fn expect_line(lines: &mut impl Iterator<Item = String>, prefix: &str) -> String {
    for line in lines.by_ref() {
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
    panic!("the attacker ended before saying {prefix}");
}

/// Root's `peerstash status` on peer 0, given at most `within`: its output, or None if it had
/// not answered by then (it is then killed).
fn root_status_within(c: &Cluster, within: Duration) -> Option<Output> {
    let mut status = Command::new(PEERSTASH);
    status.arg("--config").arg(&c.peer(0).config).arg("status");
    run_within(status, within)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
#[ignore = "the attacker's client, run as another user by the tests of this file"]
fn socket_attacker() {
    let Ok(socket) = std::env::var("PS_ATTACK_SOCKET") else {
        return;
    };
    match std::env::var("PS_ATTACK_MODE").as_deref() {
        Ok("fds") => descriptor_flood(&socket),
        Ok("idle") => idle_connections(&socket),
        other => panic!("unknown mode {other:?}"),
    }
}

/// Case 7: a request line sent one byte at a time, each byte with 253 descriptors of
/// /dev/null, never its newline; a connection the daemon closes is opened again. 300 pieces at
/// most, 20 ms apart.
fn descriptor_flood(socket: &str) {
    let null = std::fs::File::open("/dev/null").unwrap();
    let fds = vec![null.as_raw_fd(); 253];
    let rights = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let (mut sent, mut closed) = (0, 0);
    let mut stream = UnixStream::connect(socket).unwrap();
    println!("STARTED");
    for _ in 0..300 {
        let piece = nix::sys::socket::sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(b"{")],
            &rights,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            None,
        );
        match piece {
            Ok(_) => sent += 1,
            Err(_) => {
                closed += 1;
                stream = UnixStream::connect(socket).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("SENT {sent} CLOSED {closed}");
}

/// Case 8: PS_ATTACK_IDLE connections opened and left idle. Says how many the daemon refused
/// at once, then waits (at most 25 s) for the daemon to close the others, and says how many it
/// did.
fn idle_connections(socket: &str) {
    let n: usize = std::env::var("PS_ATTACK_IDLE").unwrap().parse().unwrap();
    let conns: Vec<UnixStream> = (0..n.min(100))
        .map(|_| UnixStream::connect(socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // Refused: a line is waiting (or the connection is closed) at once.
    let (refused, held): (Vec<_>, Vec<_>) = conns.into_iter().partition(answered_now);
    println!("REFUSED {}", refused.len());
    println!("HOLDING {}", held.len());
    std::io::stdout().flush().unwrap();
    // The others: closed by the daemon once their request line is overdue.
    let start = Instant::now();
    let mut closed = 0;
    let mut message = String::new();
    for s in &held {
        let left = Duration::from_secs(25).saturating_sub(start.elapsed());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut all = String::new();
        if BufReader::new(s).read_to_string(&mut all).is_ok() {
            closed += 1;
            message = all;
        }
    }
    println!(
        "CLOSED {closed} AFTER {} MESSAGE {}",
        start.elapsed().as_secs(),
        message.trim()
    );
}

/// Whether the daemon has written to (or closed) a connection, without waiting.
fn answered_now(s: &UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let peeked = recv(
        s.as_raw_fd(),
        &mut [0u8; 1],
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    );
    peeked != Err(nix::errno::Errno::EAGAIN)
}

#[test]
fn descriptors_sent_a_byte_at_a_time_are_closed_as_they_arrive() {
    if needs_root("acting as another user") {
        return;
    }
    let c = Cluster::start(&["0", "20MB"]);
    let pid = c.peer(0).pid().expect("the daemon's pid");
    let before = open_fds(pid);
    let mut child = attacker(&c, "fds");
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    expect_line(&mut lines, "STARTED");
    // While the attack goes on (6 s at least): the daemon's descriptors, and root's status.
    let (mut most, mut samples) = (0, 0);
    let start = Instant::now();
    let mut status = None;
    while start.elapsed() < Duration::from_secs(5) {
        let n = open_fds(pid);
        most = most.max(n);
        samples += 1;
        if status.is_none() && start.elapsed() > Duration::from_secs(1) {
            status = Some(root_status_within(&c, Duration::from_secs(5)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let said = expect_line(&mut lines, "SENT");
    let _ = child.wait();
    let status = status
        .unwrap()
        .expect("root's status answered during the attack");
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Each piece would have left 253 descriptors in the daemon: it keeps at most a few.
    assert!(
        most < before + 40,
        "the daemon held {most} descriptors during the attack ({before} before; attacker: {said}; {samples} samples)"
    );
    // The daemon closed the connection at the first piece, each time.
    let closed: usize = said.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(closed >= 50, "the daemon closed few connections: {said}");
    assert!(
        wait_until(Duration::from_secs(5), || open_fds(pid) <= before + 16),
        "descriptors left: {} (before: {before})",
        open_fds(pid)
    );
}

#[test]
fn idle_connections_of_a_user_never_keep_root_waiting() {
    if needs_root("acting as another user") {
        return;
    }
    let c = Cluster::start(&["0", "20MB"]);
    let mut child = attacker(&c, "idle");
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let refused: usize = expect_line(&mut lines, "REFUSED").parse().unwrap();
    let held: usize = expect_line(&mut lines, "HOLDING").parse().unwrap();
    // The user holds all it may (and more are refused at once, told why): root is served.
    let status = root_status_within(&c, Duration::from_secs(5));
    let status = status.expect("root's status answered while a user held idle connections");
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(refused + held, 40);
    assert!(held <= 8, "one user held {held} connections");
    // The same user's own command meanwhile: refused at once, told why in one line.
    let gid = std::fs::metadata(&c.peer(0).socket).unwrap().gid();
    let o = as_uid(USER, Some(gid), Path::new(PEERSTASH))
        .arg("--socket")
        .arg(&c.peer(0).socket)
        .arg("status")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(
        said.contains("connections to the daemon open already: wait for one to end"),
        "{said}"
    );
    // The held ones are closed once their request line is overdue (10 s), told why.
    let closed = expect_line(&mut lines, "CLOSED");
    let _ = child.wait();
    assert!(
        closed.starts_with(&format!("{held} AFTER")),
        "held {held}, closed: {closed}"
    );
    assert!(closed.contains("no whole request line"), "{closed}");
}

#[test]
fn users_who_fill_every_slot_together_still_leave_room_for_root() {
    if needs_root("acting as another user") {
        return;
    }
    let c = Cluster::start(&["0", "20MB"]);
    // 5 group members, 8 idle connections each: more than every slot of non-root callers.
    let mut children: Vec<Child> = (0..5)
        .map(|i| attacker_as(&c, USER + 10 + i, "idle", 8))
        .collect();
    let mut outputs: Vec<_> = children
        .iter_mut()
        .map(|ch| {
            BufReader::new(ch.stdout.take().unwrap())
                .lines()
                .map_while(Result::ok)
        })
        .collect();
    let held: usize = outputs
        .iter_mut()
        .map(|lines| {
            expect_line(lines, "REFUSED");
            expect_line(lines, "HOLDING").parse::<usize>().unwrap()
        })
        .sum();
    let status = root_status_within(&c, Duration::from_secs(5));
    let status = status.expect("root's status answered while users held every slot");
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(held, 32, "the users together held {held} connections");
    for mut ch in children {
        let _ = ch.kill();
        let _ = ch.wait();
    }
}

#[test]
fn refusals_never_name_another_users_files() {
    if needs_root("acting as another user") {
        return;
    }
    let c = Cluster::start(&["0", "100MB", "100MB"]);
    let (base, _home, mine) = user_home(&c, USER);
    // Alice's private folder, in the same tree as the attacker's home.
    let private = base.join("alice").join("private");
    std::fs::create_dir_all(&private).unwrap();
    for dir in [base.join("alice"), private.clone()] {
        std::os::unix::fs::chown(&dir, Some(ALICE), Some(ALICE)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let secret = private.join("divorce-lawyer-letters-2026.pdf");
    std::fs::write(&secret, random_bytes(5_000)).unwrap();
    std::os::unix::fs::chown(&secret, Some(ALICE), Some(ALICE)).unwrap();
    c.cli_ok(0, &["backup", secret.to_str().unwrap(), "-r", "2"], 0);
    let gid = std::fs::metadata(&c.peer(0).socket).unwrap().gid();
    let user = |args: &[&str]| {
        let o = as_uid(USER, Some(gid), Path::new(PEERSTASH))
            .arg("--socket")
            .arg(&c.peer(0).socket)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), text)
    };
    let (code, text) = user(&["backup", mine.to_str().unwrap(), "-r", "2"]);
    assert_eq!(code, Some(0), "{text}");

    let (base_s, secret_s) = (base.to_str().unwrap(), secret.to_str().unwrap());
    // Asked about the tree that holds both users' backups: never a name of alice's.
    let attempts: [&[&str]; 6] = [
        &["delete", base_s],
        &["versions", base_s],
        &["versions", "/"],
        &["state", base_s],
        &["state"],
        &["status"],
    ];
    for args in attempts {
        let (_, text) = user(args);
        assert!(
            !text.contains("divorce-lawyer"),
            "{args:?} named alice's file: {text}"
        );
    }
    let (code, text) = user(&["delete", base_s]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not every backup there is yours"), "{text}");
    // Alice's file named by the attacker (a guess): answered exactly as a path never backed
    // up, so the answer does not confirm the guess.
    let never = base
        .join("alice")
        .join("private")
        .join("never-backed-up.pdf");
    let never_s = never.to_str().unwrap();
    let out = base.join("home").join("out.pdf");
    for args in [
        vec!["delete", secret_s],
        vec!["restore", secret_s, "--to", out.to_str().unwrap()],
        vec!["versions", secret_s],
    ] {
        let (code, named) = user(&args);
        let guessed: Vec<&str> = args
            .iter()
            .map(|a| if *a == secret_s { never_s } else { a })
            .collect();
        let (code_never, unknown) = user(&guessed);
        assert_eq!(code, Some(1), "{args:?}: {named}");
        assert_eq!(
            (code, named.replace(secret_s, "PATH")),
            (code_never, unknown.replace(never_s, "PATH")),
            "{args:?}"
        );
    }
    // Nothing of alice's was deleted; the user's own delete still works.
    assert_eq!(c.peer(0).state().versions_of(&secret).len(), 1);
    let (code, text) = user(&["delete", mine.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
}
