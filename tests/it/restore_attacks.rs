//! Issue 23, case 1: a local user turns root's restore into a write anywhere. The user's
//! `~/docs/zz-evil.sh` (mode 0755) is backed up from a watched folder that holds the user's
//! home; the user then renames `docs` away and puts a symlink to a root-owned folder (standing
//! for `/etc/profile.d`) in its place. Root's `restore --all`, `restore --all --force`, plain
//! `restore PATH` and `restore --all DEST` (DEST in a world-writable folder the user planted a
//! symlink in) must create and replace nothing in the root folder, say why in one line naming
//! the symlink, and restore the user's other files. Real daemons on loopback; the user is uid
//! 12346 (setpriv). Needs root: skipped otherwise, failed with CI=true.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, UNIX_EPOCH};

use common::*;

const USER: u32 = 12346;

/// Runs `script` with `sh -c` as the user, which must succeed.
fn as_user_sh(script: &str) {
    let o = as_uid(USER, None, Path::new("sh"))
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{script}: {}", output_text(&o));
}

/// Every name below `dir`, folders too (what a restore could have made there).
fn everything_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            found.push(p);
        }
    }
    found.sort();
    found
}

/// A folder as root makes it, that others may enter: 0755.
fn open_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A file of the user's: its bytes, mode and mtime.
fn users_file(path: &Path, bytes: &[u8], mode: u32, mtime_s: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::os::unix::fs::chown(path, Some(USER), Some(USER)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime_s))
        .unwrap();
}

const EVIL: &[u8] = b"#!/bin/sh\necho the user runs this as root\n";
const ROOTS: &[u8] = b"root's own file: must stay as it is\n";

/// The scene once the user has swapped `docs` for a symlink to `target`, a root folder.
struct Scene {
    c: Cluster,
    /// Holds the watched folder, the root folder and the world-writable one.
    _dir: tempfile::TempDir,
    /// The user's home, in the watched folder.
    home: PathBuf,
    /// The root-owned folder the user points `docs` at (think `/etc/profile.d`).
    target: PathBuf,
    /// A world-writable, sticky folder (think `/tmp`).
    public: PathBuf,
    /// The user's `notes.txt`: (path, bytes), lost before the restores, restored by them.
    notes: (PathBuf, Vec<u8>),
}

/// The user's home in a watched folder, backed up at RD 2, then `docs` swapped for a symlink to
/// a root-owned folder and `notes.txt` lost.
/// Every one of `files` has a complete version with every chunk at RD 2 or more.
fn at_rd_2(c: &Cluster, files: &[std::path::PathBuf]) -> bool {
    c.peer(0).try_state().ok().is_some_and(|s| {
        files.iter().all(|f| {
            s.versions_of(f)
                .iter()
                .any(|e| e.min_rd() >= 2 && e.complete)
        })
    })
}

fn swapped_after_backup() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    open_dir(&base);
    let watched = base.join("w");
    let home = watched.join("home/u");
    open_dir(&home);
    std::os::unix::fs::chown(&home, Some(USER), Some(USER)).unwrap();
    users_file(&home.join("docs/zz-evil.sh"), EVIL, 0o755, 1_700_000_000);
    users_file(&home.join("docs/cron/zz-evil"), EVIL, 0o644, 1_700_000_000);
    std::os::unix::fs::chown(home.join("docs"), Some(USER), Some(USER)).unwrap();
    std::os::unix::fs::chown(home.join("docs/cron"), Some(USER), Some(USER)).unwrap();
    let notes = random_bytes(90_000);
    users_file(&home.join("notes.txt"), &notes, 0o640, 1_600_000_000);
    let target = base.join("profile.d");
    open_dir(&target);
    let public = base.join("tmp");
    open_dir(&public);
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();

    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"200ms\"\n",
        watched.display()
    );
    let c = Cluster::start_with(&["0", "30 MiB", "30 MiB"], &[&watch]);
    let files = ["docs/zz-evil.sh", "docs/cron/zz-evil", "notes.txt"].map(|f| home.join(f));
    assert!(
        wait_until(Duration::from_secs(60), || at_rd_2(&c, &files)),
        "not backed up:\n{}",
        c.dump()
    );
    // The user's move, with the user's own rights.
    as_user_sh(&format!(
        "cd '{}' && mv docs docs.away && ln -s '{}' docs && rm notes.txt",
        home.display(),
        target.display()
    ));
    // The daemon backs up the moved folder's files as new paths: waited for, so that what
    // `restore --all` finds does not depend on how fast it was (5 files: the 2 moved, the 2
    // under `docs` and notes.txt, the last 3 gone locally and kept).
    let moved = ["docs.away/zz-evil.sh", "docs.away/cron/zz-evil"].map(|f| home.join(f));
    assert!(
        wait_until(Duration::from_secs(60), || at_rd_2(&c, &moved)),
        "the moved files not backed up:\n{}",
        c.dump()
    );
    Scene {
        c,
        _dir: dir,
        home: home.clone(),
        target,
        public,
        notes: (home.join("notes.txt"), notes),
    }
}

impl Scene {
    /// `notes.txt` came back at `at` with its bytes, owner, mode and mtime.
    fn notes_restored_at(&self, at: &Path) {
        assert!(
            std::fs::read(at).unwrap() == self.notes.1,
            "{}",
            at.display()
        );
        let m = std::fs::metadata(at).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (USER, USER, 0o640));
        assert_eq!(m.mtime(), 1_600_000_000);
    }

    /// The root folder holds exactly `expected` (nothing was made or replaced there).
    fn target_holds(&self, expected: &[PathBuf], what: &str) {
        assert_eq!(
            everything_below(&self.target),
            expected,
            "{what}: a restore by root wrote into the folder the user's symlink points at"
        );
    }

    /// The error names the symlink and says it was not followed.
    fn refused(&self, o: &Output) {
        let docs = self.home.join("docs");
        let said = output_text(o);
        assert!(
            said.contains(&format!("{} is a symlink: not followed", docs.display())),
            "{said}"
        );
        assert!(
            said.lines()
                .filter(|l| l.contains("symlink"))
                .all(|l| l.starts_with("peerstash: cannot restore to ")),
            "one line per file, saying which: {said}"
        );
    }
}

#[test]
fn root_restore_all_does_not_follow_a_users_symlink_into_a_root_folder() {
    if needs_root("acting as another user") {
        return;
    }
    let s = swapped_after_backup();
    let o = s.c.cli(0, &["restore", "--all"]);
    s.target_holds(&[], "restore --all");
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    s.refused(&o);
    assert!(
        output_text(&o).contains("5 files: 1 restored, 2 failed, 2 skipped"),
        "{}",
        output_text(&o)
    );
    s.notes_restored_at(&s.notes.0);
    // Nothing was put in the folder the user moved away either: the restore went nowhere.
    assert_eq!(
        std::fs::read(s.home.join("docs.away/zz-evil.sh")).unwrap(),
        EVIL
    );
}

#[test]
fn root_restore_all_force_replaces_no_root_file_through_a_users_symlink() {
    if needs_root("acting as another user") {
        return;
    }
    let s = swapped_after_backup();
    // Root's own file where the user's symlink leads (think /etc/passwd).
    let roots = s.target.join("zz-evil.sh");
    std::fs::write(&roots, ROOTS).unwrap();
    let inode = std::fs::metadata(&roots).unwrap().ino();
    let o = s.c.cli(0, &["restore", "--all", "--force"]);
    s.target_holds(std::slice::from_ref(&roots), "restore --all --force");
    let m = std::fs::metadata(&roots).unwrap();
    assert_eq!((m.ino(), m.uid(), m.mode() & 0o777), (inode, 0, 0o644));
    assert_eq!(std::fs::read(&roots).unwrap(), ROOTS);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    s.refused(&o);
    s.notes_restored_at(&s.notes.0);
}

#[test]
fn root_restore_of_one_path_does_not_follow_a_users_symlink() {
    if needs_root("acting as another user") {
        return;
    }
    let s = swapped_after_backup();
    let docs = s.home.join("docs");
    // In place: the file below a folder of `docs` (its path does not resolve through the
    // symlink, so it is found in the catalog as it was backed up).
    let deep = docs.join("cron/zz-evil");
    let o = s.c.cli(0, &["restore", deep.to_str().unwrap()]);
    s.target_holds(&[], "restore PATH");
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    s.refused(&o);
    // --to into the user's `docs` (the folder, and a file name in it), with --force over
    // root's files there.
    let roots = [s.target.join("notes.txt"), s.target.join("zz-evil.sh")];
    for f in &roots {
        std::fs::write(f, ROOTS).unwrap();
    }
    let notes = s.notes.0.to_str().unwrap();
    for to in [docs.clone(), docs.join("zz-evil.sh")] {
        let args = ["restore", notes, "--to", to.to_str().unwrap(), "--force"];
        let o = s.c.cli(0, &args);
        s.target_holds(&roots, "restore PATH --to");
        for f in &roots {
            assert!(
                std::fs::read(f).unwrap() == ROOTS,
                "{} replaced",
                f.display()
            );
        }
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", output_text(&o));
        s.refused(&o);
    }
    // Where no symlink is on the way, the same restore works.
    let back = s.home.join("back");
    let o = s.c.cli(
        0,
        &[
            "restore",
            deep.to_str().unwrap(),
            "--to",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert_eq!(std::fs::read(&back).unwrap(), EVIL);
    assert_eq!(std::fs::metadata(&back).unwrap().uid(), USER);
}

#[test]
fn root_restore_all_into_a_world_writable_folder_follows_no_planted_symlink() {
    if needs_root("acting as another user") {
        return;
    }
    let s = swapped_after_backup();
    // DEST itself a symlink the user planted in /tmp.
    let planted = s.public.join("restored");
    as_user_sh(&format!(
        "ln -s '{}' '{}'",
        s.target.display(),
        planted.display()
    ));
    let o = s.c.cli(0, &["restore", "--all", planted.to_str().unwrap()]);
    s.target_holds(&[], "restore --all DEST, DEST a symlink");
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let said = output_text(&o);
    assert!(
        said.contains(&format!("{} is a symlink: not followed", planted.display())),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "one line: {said}");

    // DEST a folder the user made in advance, with a symlink where the home's `docs` will go.
    let dest = s.public.join("dest");
    let docs_there = dest.join(s.home.strip_prefix("/").unwrap()).join("docs");
    as_user_sh(&format!(
        "mkdir -p '{}' && ln -s '{}' '{}'",
        docs_there.parent().unwrap().display(),
        s.target.display(),
        docs_there.display()
    ));
    let o =
        s.c.cli(0, &["restore", "--all", "--force", dest.to_str().unwrap()]);
    s.target_holds(&[], "restore --all DEST, a symlink below DEST");
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let said = output_text(&o);
    assert!(
        said.contains(&format!(
            "{} is a symlink: not followed",
            docs_there.display()
        )),
        "{said}"
    );
    assert!(said.contains("5 files: 3 restored, 2 failed"), "{said}");
    s.notes_restored_at(&docs_there.parent().unwrap().join("notes.txt"));
}
