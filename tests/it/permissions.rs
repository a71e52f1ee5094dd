//! Issue 5: local permissions. The control socket is for root and group peerstash (here: the
//! socket's group); a non-root caller (SO_PEERCRED) backs up, restores and deletes only its own
//! files, restores only into places it owns, and may not reclaim. Restored files get back their
//! owner, group, mode and mtime. Needs root (to act as another user): skipped otherwise, failed with CI=true.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::process::Output;

use common::*;

const USER: u32 = 12345;

/// Runs `peerstash` as uid/gid 12345, with the socket's group (root's, here) when `in_group`.
fn as_user(c: &Cluster, in_group: bool, args: &[&str]) -> Output {
    // The socket's group: peerstash's if that group exists here, else root's.
    let gid = std::fs::metadata(&c.peer(0).socket).unwrap().gid();
    as_uid(
        USER,
        in_group.then_some(gid),
        std::path::Path::new(PEERSTASH),
    )
    .arg("--socket")
    .arg(&c.peer(0).socket)
    .args(args)
    .output()
    .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn non_root_callers_act_only_on_their_own_files() {
    if !nix::unistd::geteuid().is_root() {
        skip("acting as another user needs root");
        return;
    }
    let c = Cluster::start(&["0", "100MB", "100MB"]);
    let (base, home, mine) = user_home(&c, USER);
    let roots = base.join("roots.txt");
    std::fs::write(&roots, b"root's secret").unwrap();
    c.cli_ok(0, &["backup", roots.to_str().unwrap(), "-r", "2"], 0);

    // Outside the socket's group: refused with a message saying what to do.
    let o = as_user(&c, false, &["state"]);
    assert_eq!(code(&o), 4, "{}", err(&o));
    assert!(err(&o).contains("group peerstash"), "{}", err(&o));

    // In the group: own files only.
    let o = as_user(&c, true, &["backup", mine.to_str().unwrap(), "-r", "2"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let o = as_user(&c, true, &["backup", roots.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("not yours"), "{}", err(&o));
    let o = as_user(&c, true, &["reclaim", "0"]);
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("root"), "{}", err(&o));
    // A user may not copy the catalog out, nor replace it with one of its choosing.
    for admin in [&["snapshot"][..], &["recover", "--force"][..]] {
        let o = as_user(&c, true, admin);
        assert_eq!(code(&o), 1, "{admin:?}");
        assert!(err(&o).contains("run it as root"), "{}", err(&o));
    }
    assert!(!c.peer(0).dir.join("state/snapshots").exists());
    let o = as_user(
        &c,
        true,
        &[
            "restore",
            roots.to_str().unwrap(),
            "--to",
            home.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 1, "root's file restored for a user");
    let o = as_user(&c, true, &["delete", roots.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "root's backup deleted by a user");
    // Restoring its own file into a place it does not own is refused too.
    let o = as_user(
        &c,
        true,
        &[
            "restore",
            mine.to_str().unwrap(),
            "--to",
            base.join("x").to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 1, "{}", err(&o));
    let into = home.join("back.txt");
    let o = as_user(
        &c,
        true,
        &[
            "restore",
            mine.to_str().unwrap(),
            "--to",
            into.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(std::fs::read(&into).unwrap(), std::fs::read(&mine).unwrap());

    // Restored (here by root) with the owner, group, mode and mtime it had.
    let before = std::fs::metadata(&mine).unwrap();
    std::fs::remove_file(&mine).unwrap();
    c.cli_ok(0, &["restore", mine.to_str().unwrap()], 0);
    let after = std::fs::metadata(&mine).unwrap();
    assert_eq!((after.uid(), after.gid()), (USER, USER));
    assert_eq!(after.mode() & 0o7777, 0o640);
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec())
    );

    let o = as_user(&c, true, &["delete", mine.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", err(&o));
}
