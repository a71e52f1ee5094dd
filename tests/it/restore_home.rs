//! Issue 25, items 1 and 2, with real daemons on loopback: a machine is lost (state folder and
//! watched folders wiped, config and key kept), `recover` and `restore --all` bring back a
//! user's home with each folder's owner, group, mode and mtime (not root's, 0755, now), files
//! deleted before the catalog snapshot stay deleted unless `--include-deleted`, and files that
//! existed at the snapshot, seen gone only after the recover, come back. The pass that gives
//! folders their owner never follows a link planted in place of a folder it made.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// A folder as the test sets it and expects it back.
struct Dir {
    rel: &'static str,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: SystemTime,
}

fn at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

fn set_dir(root: &Path, d: &Dir) {
    let path = root.join(d.rel);
    std::os::unix::fs::chown(&path, Some(d.uid), Some(d.gid)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(d.mode)).unwrap();
    std::fs::File::open(&path)
        .unwrap()
        .set_modified(d.mtime)
        .unwrap();
}

fn check_dir(root: &Path, d: &Dir) {
    let path = root.join(d.rel);
    let meta = std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{d:?}: {e}", d = d.rel));
    assert!(meta.is_dir(), "{}", path.display());
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (d.uid, d.gid, d.mode),
        "owner, group, mode of {}",
        path.display()
    );
    assert_eq!(
        meta.modified().unwrap(),
        d.mtime,
        "mtime of {}",
        path.display()
    );
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Waits until every path is backed up at RD `rd` in a version of `size` bytes.
fn wait_backed_up(c: &Cluster, rd: u32, paths: &[(PathBuf, usize)]) {
    let done = || {
        c.peer(0).try_state().is_ok_and(|s| {
            paths.iter().all(|(p, size)| {
                (s.versions_of(p).iter()).any(|f| f.min_rd() >= rd && f.size == *size as u64)
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(120), done),
        "not all backed up:\n{}",
        c.dump()
    );
}

fn deleted_locally(c: &Cluster, path: &Path) -> bool {
    c.full_log(0)
        .contains(&format!("{} was deleted locally", path.display()))
}

#[test]
fn a_recovered_home_gets_its_folders_back_as_they_were_and_not_the_files_deleted_before() {
    if needs_root("giving folders another owner") {
        return;
    }
    let base_dir = tempfile::tempdir().unwrap();
    let base = base_dir.path().canonicalize().unwrap();
    // Two watched folders: alice's home (lost with the machine, made again by the restore)
    // and a project folder that is still there but empty (its files seen gone after the
    // recover, so marked deleted after the snapshot: they come back).
    let home = base.join("home/alice");
    let projects = base.join("srv/projects");
    let files: Vec<(PathBuf, Vec<u8>)> = [
        (home.join("top.txt"), random_bytes(1_000)),
        (home.join("documents/notes.txt"), random_bytes(70_000)),
        (home.join("documents/deep/plan.txt"), random_bytes(3_000)),
        (home.join("public/index.html"), random_bytes(500)),
        (projects.join("src/main.rs"), random_bytes(2_000)),
        (projects.join("README"), random_bytes(300)),
    ]
    .into_iter()
    .collect();
    for (p, b) in &files {
        write(p, b);
    }
    let gone = home.join("trash/old-draft.txt");
    let gone_too = projects.join("old.log");
    write(&gone, b"thrown away on purpose");
    write(&gone_too, b"rotated away");
    // Folders of other owners, modes and mtimes, set deepest first (each set after what is
    // made inside it).
    let home_dirs = [
        Dir {
            rel: "documents/deep",
            uid: 4242,
            gid: 4343,
            mode: 0o755,
            mtime: at(1_600_000_000, 111_111_111),
        },
        Dir {
            rel: "documents",
            uid: 4242,
            gid: 4343,
            mode: 0o700,
            mtime: at(1_600_100_000, 222_222_222),
        },
        Dir {
            rel: "public",
            uid: 4244,
            gid: 4343,
            mode: 0o755,
            mtime: at(1_600_200_000, 333_333_333),
        },
        Dir {
            rel: "",
            uid: 4242,
            gid: 4343,
            mode: 0o750,
            mtime: at(1_600_300_000, 444_444_444),
        },
    ];
    let project_dirs = [Dir {
        rel: "src",
        uid: 4245,
        gid: 4346,
        mode: 0o2750,
        mtime: at(1_600_400_000, 555_555_555),
    }];
    for d in &home_dirs {
        set_dir(&home, d);
    }
    for d in &project_dirs {
        set_dir(&projects, d);
    }
    let watch = |p: &Path| {
        format!(
            "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"200ms\"\nencrypt = true\n",
            p.display()
        )
    };
    let extra = format!("{}{}", watch(&home), watch(&projects));
    let mut c = Cluster::start_with(&["0", "30 MiB", "30 MiB", "30 MiB"], &[&extra]);
    let mut all: Vec<(PathBuf, usize)> = files.iter().map(|(p, b)| (p.clone(), b.len())).collect();
    all.push((gone.clone(), 22));
    all.push((gone_too.clone(), 12));
    wait_backed_up(&c, 2, &all);

    // Deleted on purpose, before the snapshot (the trash folder's own metadata is not looked
    // at: the deletion moved its mtime).
    std::fs::remove_file(&gone).unwrap();
    std::fs::remove_file(&gone_too).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || deleted_locally(&c, &gone)
            && deleted_locally(&c, &gone_too)),
        "the deletions were not seen:\n{}",
        c.log(0)
    );
    // A folder changed after its files were backed up: recorded when a file below changes.
    let public = Dir {
        mode: 0o705,
        ..home_dirs[2]
    };
    std::fs::set_permissions(home.join("public"), std::fs::Permissions::from_mode(0o705)).unwrap();
    let index = home.join("public/index.html");
    let new_index = random_bytes(600);
    // Written in place: the folder's mtime does not move.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&index)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &new_index))
        .unwrap();
    wait_backed_up(&c, 2, &[(index.clone(), new_index.len())]);
    // Deletions are noted in whole seconds: the snapshot is taken more than one later.
    std::thread::sleep(Duration::from_millis(1_500));
    let out = c.cli_ok(0, &["snapshot"], 0);
    assert!(out.contains("every chunk at its RD"), "{out}");

    // The machine is lost: its state, alice's whole home, the projects' files (the folder
    // itself stays, mode 0751, as the admin left it).
    c.kill(0);
    std::fs::remove_dir_all(c.peers[0].dir.join("state")).unwrap();
    std::fs::remove_dir_all(&home).unwrap();
    for entry in std::fs::read_dir(&projects).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => std::fs::remove_dir_all(path).unwrap(),
            false => std::fs::remove_file(path).unwrap(),
        }
    }
    std::fs::set_permissions(&projects, std::fs::Permissions::from_mode(0o751)).unwrap();
    let projects_mtime = at(1_700_000_000, 0);
    std::fs::File::open(&projects)
        .unwrap()
        .set_modified(projects_mtime)
        .unwrap();
    c.spawn(0);
    c.wait_ready(0);
    let out = c.cli_ok(0, &["recover"], 0);
    assert!(out.contains("running with the recovered catalog"), "{out}");
    // The recovered daemon finds the projects' files gone: marked deleted now, after the
    // snapshot. They were there when it was taken: they come back.
    let main_rs = projects.join("src/main.rs");
    assert!(
        wait_until(Duration::from_secs(30), || deleted_locally(
            &c,
            &projects.join("README")
        ) && deleted_locally(
            &c, &main_rs
        )),
        "the recovered daemon did not see the projects' files gone:\n{}",
        c.log(0)
    );
    std::thread::sleep(Duration::from_millis(1_100));

    let out = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(out.contains("6 files: 6 restored, 0 failed"), "{out}");
    assert!(
        out.contains("2 not restored: deleted before the catalog snapshot"),
        "{out}"
    );
    assert!(out.contains("--include-deleted restores them"), "{out}");
    for (p, b) in files.iter().filter(|(p, _)| *p != index) {
        assert!(std::fs::read(p).unwrap() == *b, "{}", p.display());
    }
    assert!(std::fs::read(&index).unwrap() == new_index);
    assert!(
        !gone.exists() && !gone_too.exists(),
        "deleted before the loss"
    );
    assert!(
        !home.join("trash").exists(),
        "no folder made for what is not restored"
    );
    // Every folder made is as it was; the home is alice's again.
    for d in home_dirs.iter().filter(|d| d.rel != "public") {
        check_dir(&home, d);
    }
    check_dir(&home, &public);
    for d in &project_dirs {
        check_dir(&projects, d);
    }
    // The folder that was there is left as the admin left it (but for its mtime, which the
    // files written into it moved).
    let meta = std::fs::metadata(&projects).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o751));

    // --include-deleted brings back the rest, into a trash folder made as it was recorded.
    let out = c.cli_ok(0, &["restore", "--all", "--include-deleted"], 0);
    assert!(
        out.contains("8 files: 2 restored, 0 failed, 6 skipped"),
        "{out}"
    );
    assert_eq!(std::fs::read(&gone).unwrap(), b"thrown away on purpose");
    assert_eq!(std::fs::read(&gone_too).unwrap(), b"rotated away");
    let trash = std::fs::metadata(home.join("trash")).unwrap();
    assert_eq!(
        (trash.uid(), trash.mode() & 0o7777),
        (0, 0o755),
        "recorded as made by root"
    );
    // The home, not made this time, is left as it is: the trash written into it moved its
    // mtime; --force gives back every recorded folder.
    assert_ne!(
        std::fs::metadata(&home).unwrap().modified().unwrap(),
        home_dirs[3].mtime
    );
    let out = c.cli_ok(0, &["restore", "--all", "--force", "--include-deleted"], 0);
    assert!(out.contains("8 files: 8 restored"), "{out}");
    check_dir(&home, &home_dirs[3]);
    check_dir(&home, &home_dirs[1]);
}

#[test]
fn a_single_restore_gives_the_parents_it_makes_their_recorded_owner_and_mode() {
    if needs_root("giving folders another owner") {
        return;
    }
    let base_dir = tempfile::tempdir().unwrap();
    let home = base_dir.path().canonicalize().unwrap().join("bob");
    let file = home.join("letters/2026/dear.txt");
    write(&file, b"dear bob");
    let dirs = [
        Dir {
            rel: "letters/2026",
            uid: 5151,
            gid: 5152,
            mode: 0o700,
            mtime: at(1_650_000_000, 7),
        },
        Dir {
            rel: "letters",
            uid: 5151,
            gid: 5152,
            mode: 0o750,
            mtime: at(1_650_000_100, 8),
        },
    ];
    for d in &dirs {
        set_dir(&home, d);
    }
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"200ms\"\n",
        home.display()
    );
    let mut c = Cluster::start_with(&["0", "30 MiB", "30 MiB"], &[&watch]);
    wait_backed_up(&c, 2, &[(file.clone(), 8)]);
    std::thread::sleep(Duration::from_millis(500));
    c.stop_status(0);
    std::fs::remove_dir_all(home.join("letters")).unwrap();
    c.spawn(0);
    c.wait_ready(0);
    let out = c.cli_ok(0, &["restore", file.to_str().unwrap()], 0);
    assert!(out.contains("written to"), "{out}");
    assert_eq!(std::fs::read(&file).unwrap(), b"dear bob");
    for d in &dirs {
        check_dir(&home, d);
    }
}

#[test]
fn a_folder_swapped_for_a_link_before_its_owner_is_given_back_is_refused() {
    if needs_root("giving folders another owner") {
        return;
    }
    let base_dir = tempfile::tempdir().unwrap();
    let base = base_dir.path().canonicalize().unwrap();
    let home = base.join("mallory");
    // Restored first (paths in order), then a large file that keeps the restore busy while
    // the link is planted.
    let first = home.join("aaa/first.txt");
    let big = home.join("zzz/big.dat");
    write(&first, b"first");
    let big_bytes = random_bytes(24 << 20);
    write(&big, &big_bytes);
    let aaa = Dir {
        rel: "aaa",
        uid: 6161,
        gid: 6162,
        mode: 0o777,
        mtime: at(1_660_000_000, 0),
    };
    set_dir(&home, &aaa);
    // What the planted link points at: root's, and must stay so.
    let victim = base.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim_mtime = at(1_500_000_000, 0);
    std::fs::File::open(&victim)
        .unwrap()
        .set_modified(victim_mtime)
        .unwrap();
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 1\nquiet = \"200ms\"\n",
        home.display()
    );
    let mut c = Cluster::start_with(&["0", "100 MiB", "100 MiB"], &[&watch]);
    wait_backed_up(&c, 1, &[(first.clone(), 5), (big.clone(), big_bytes.len())]);
    std::thread::sleep(Duration::from_millis(500));
    c.stop_status(0);
    std::fs::remove_dir_all(&home).unwrap();
    c.spawn(0);
    c.wait_ready(0);

    // The attacker: once aaa/first.txt is restored, aaa becomes a link to the victim.
    let planted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let (home, first, victim, planted) =
            (home.clone(), first.clone(), victim.clone(), planted.clone());
        std::thread::spawn(move || {
            // Polled closely: the big file is restored meanwhile.
            let end = std::time::Instant::now() + Duration::from_secs(60);
            while !first.exists() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(2));
            }
            if first.exists() {
                std::fs::rename(home.join("aaa"), home.join("aaa.moved")).unwrap();
                std::os::unix::fs::symlink(&victim, home.join("aaa")).unwrap();
                planted.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let out = c.cli(0, &["restore", "--all"]);
    attacker.join().unwrap();
    let text = output_text(&out);
    assert!(planted.load(std::sync::atomic::Ordering::SeqCst), "{text}");
    assert!(
        text.contains("is a symlink: not followed"),
        "the link was planted before the folders' pass, which must refuse it: {text}"
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(std::fs::read(&big).unwrap().len(), big_bytes.len());
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o700),
        "the victim keeps its owner and mode"
    );
    assert_eq!(meta.modified().unwrap(), victim_mtime);
}

/// A user other than root, in the socket's group.
const USER: u32 = 12351;

#[test]
#[ignore = "a user's client, run as another user by the tests of this file"]
fn folders_asker() {
    use std::io::{BufRead, Write};
    let (Ok(socket), Ok(path)) = (std::env::var("PS_ASK_SOCKET"), std::env::var("PS_ASK_PATH"))
    else {
        return;
    };
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let line =
        serde_json::to_string(&peerstash::control::Request::Folders { path: path.into() }).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    for line in std::io::BufReader::new(s).lines() {
        println!("ANSWER {}", line.unwrap());
    }
}

#[test]
fn a_user_hears_only_of_the_folders_that_hold_its_own_files() {
    if needs_root("acting as another user") {
        return;
    }
    let base_dir = tempfile::tempdir().unwrap();
    let w = base_dir.path().canonicalize().unwrap().join("w");
    let theirs = w.join("alice/secret-project/plan.txt");
    let mine = w.join("user/notes/todo.txt");
    write(&theirs, b"alice's");
    write(&mine, b"the user's");
    for (p, uid) in [(&theirs, 4242), (&mine, USER)] {
        std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
    }
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 1\nquiet = \"200ms\"\n",
        w.display()
    );
    let c = Cluster::start_with(&["0", "30 MiB"], &[&watch]);
    wait_backed_up(&c, 1, &[(theirs.clone(), 7), (mine.clone(), 10)]);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ask = |uid: Option<u32>| -> String {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match uid {
            Some(uid) => {
                let gid = std::fs::metadata(&c.peer(0).socket).unwrap().gid();
                as_uid(uid, Some(gid), &exe)
            }
            None => std::process::Command::new(&exe),
        };
        let out = cmd
            .args([
                "restore_home::folders_asker",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("PS_ASK_SOCKET", &c.peer(0).socket)
            .env("PS_ASK_PATH", &w)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("ANSWER"), "{}", output_text(&out));
        text
    };
    let root = ask(None);
    assert!(root.contains("secret-project"), "{root}");
    assert!(root.contains("user/notes"), "{root}");
    let user = ask(Some(USER));
    assert!(user.contains("user/notes"), "{user}");
    assert!(
        !user.contains("alice"),
        "a user hears nothing of another's folders: {user}"
    );
}
