use super::*;
use std::io::Read;
use std::os::unix::fs::symlink;

#[test]
fn a_symlink_anywhere_on_the_path_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().canonicalize().unwrap();
    std::fs::create_dir(base.join("real")).unwrap();
    std::fs::write(base.join("real/f"), b"x").unwrap();
    symlink(base.join("real"), base.join("link")).unwrap();
    symlink(base.join("real/f"), base.join("real/flink")).unwrap();
    assert!(open_path(&base.join("real/f"), Kind::File).is_ok());
    for bad in ["link/f", "real/flink", "link"] {
        let e = open_path(&base.join(bad), Kind::Any).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{bad}: {e}");
    }
    assert!(open_path(&base.join("real"), Kind::File).is_err());
    assert!(open_path(&base.join("real/f"), Kind::Dir).is_err());
    assert!(open_path(Path::new("relative"), Kind::Any).is_err());
    // Looked at, not opened: a device is refused without its open being run.
    let probe = open_path(&base.join("real/f"), Kind::Probe).unwrap();
    assert!(same_file(&probe, &File::open(base.join("real/f")).unwrap()).unwrap());
    assert!(open_path(Path::new("/dev/null"), Kind::Probe).is_err());
    // The admin's own symlink above a watched folder is followed; none below it.
    assert!(open_under(&base.join("link"), &base.join("link/f"), Kind::File).is_ok());
    let e = open_under(&base, &base.join("link/f"), Kind::File).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
}

#[test]
fn a_stamp_reads_the_same_from_std_and_from_nix() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("f");
    std::fs::write(&f, b"12345").unwrap();
    std::fs::hard_link(&f, d.path().join("g")).unwrap();
    let meta = std::fs::symlink_metadata(&f).unwrap();
    let stamp = Stamp::of(&meta);
    let st = nix::sys::stat::stat(&f).unwrap();
    assert_eq!(Stamp::of_stat(&st), stamp);
    assert_eq!((stamp.size, stamp.nlink, stamp.inode), (5, 2, meta.ino()));
    assert_eq!(
        stamp.mtime_ns,
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
    );
    assert_eq!(
        stamp.ctime_ns,
        meta.ctime() * 1_000_000_000 + meta.ctime_nsec()
    );
    assert_eq!(stamp.mode, meta.mode() & 0o7777);
}

#[test]
fn nothing_climbs_out_of_a_folder() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("in")).unwrap();
    std::fs::write(d.path().join("secret"), b"x").unwrap();
    let dir = open_path(&d.path().canonicalize().unwrap().join("in"), Kind::Dir).unwrap();
    assert!(open_below(&dir, Path::new("../secret"), Kind::File).is_err());
    assert!(open_below(&dir, Path::new("/etc/passwd"), Kind::File).is_err());
}

#[test]
fn a_folder_to_write_into_is_reached_through_no_symlink() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().canonicalize().unwrap();
    let outside = base.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir(base.join("real")).unwrap();
    symlink(&outside, base.join("real/link")).unwrap();
    let top = Folder::open_trusted(&base).unwrap();
    // Missing folders are made; a symlink anywhere is refused, and named.
    let made = top
        .reach(Path::new("real/new/deeper"), Links::Refuse)
        .unwrap();
    assert_eq!(made.path(), base.join("real/new/deeper"));
    assert!(base.join("real/new/deeper").is_dir());
    for bad in ["real/link", "real/link/sub"] {
        match top.reach(Path::new(bad), Links::Refuse) {
            Err(PlaceError::Symlink(p)) => assert_eq!(p, base.join("real/link")),
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing made there"
    );
    assert!(matches!(
        top.reach(Path::new("../x"), Links::Refuse),
        Err(PlaceError::NotPlain(_))
    ));
    std::fs::write(base.join("real/file"), b"x").unwrap();
    assert!(matches!(
        top.reach(Path::new("real/file/x"), Links::Refuse),
        Err(PlaceError::NotAFolder(_))
    ));
    // Followed only when asked (a user's own restore).
    let followed = top
        .reach(Path::new("real/link/sub"), Links::Follow)
        .unwrap();
    assert!(outside.join("sub").is_dir());
    drop(followed);

    // Looked at, made and renamed in the handle: a dangling symlink exists; no file is
    // made through one, nor over an existing name.
    let dir = top.reach(Path::new("real"), Links::Refuse).unwrap();
    symlink(outside.join("target"), base.join("real/dangling")).unwrap();
    assert!(dir.has(OsStr::new("dangling")).unwrap());
    assert!(!dir.has(OsStr::new("nothing")).unwrap());
    assert!(dir.create_new(OsStr::new("dangling")).is_err());
    assert!(!outside.join("target").exists());
    assert!(dir.create_new(OsStr::new("file")).is_err());
    dir.create_new(OsStr::new("tmp")).unwrap();
    assert!(dir
        .rename(OsStr::new("tmp"), OsStr::new("file"), false)
        .is_err());
    dir.rename(OsStr::new("tmp"), OsStr::new("file"), true)
        .unwrap();
    assert_eq!(std::fs::read(base.join("real/file")).unwrap(), b"");

    // The folder swapped for a symlink after it was reached: what is done in the handle
    // lands in the folder reached (moved away), never where the symlink points.
    std::fs::rename(base.join("real"), base.join("moved")).unwrap();
    symlink(&outside, base.join("real")).unwrap();
    dir.create_new(OsStr::new("late")).unwrap();
    assert!(base.join("moved/late").exists());
    assert!(!outside.join("late").exists());
    dir.remove(OsStr::new("late")).unwrap();
    assert!(!base.join("moved/late").exists());
}

/// Every file a walk hands over, by path, with the sizes of the batches.
fn walk_all(
    dir: &File,
    owner: Option<u32>,
    batch: usize,
    mut keep: impl FnMut(&Path, Entry) -> bool,
) -> (Vec<Found>, Vec<usize>) {
    let (mut files, mut sizes) = (Vec::new(), Vec::new());
    let walk = Walk {
        owner,
        batch,
        max_depth: DEPTH_LIMIT,
    };
    let walked = walk
        .run(dir, &mut keep, |b| {
            sizes.push(b.len());
            files.extend(b);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(walked.unreadable.is_empty(), "{:?}", walked.unreadable);
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    (files, sizes)
}

fn rels(files: &[Found]) -> Vec<PathBuf> {
    files.iter().map(|f| f.rel.clone()).collect()
}

#[test]
fn a_walk_skips_symlinks_and_keeps_names_as_bytes() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().canonicalize().unwrap();
    std::fs::create_dir_all(base.join("a/b")).unwrap();
    std::fs::write(base.join("a/b/f"), b"x").unwrap();
    let odd = OsStr::from_bytes(b"caf\xe9");
    std::fs::write(base.join(odd), b"yy").unwrap();
    symlink("/etc/passwd", base.join("a/p")).unwrap();
    symlink(base.join("a"), base.join("loop")).unwrap();
    nix::unistd::mkfifo(&base.join("a/fifo"), Mode::S_IRWXU).unwrap();
    let dir = open_path(&base, Kind::Dir).unwrap();
    let (files, _) = walk_all(&dir, None, 100, |_, _| true);
    assert_eq!(
        rels(&files),
        vec![PathBuf::from("a/b/f"), PathBuf::from(odd)]
    );
    // The stamp is the file's, and the file opens from the folder it was found in.
    for f in &files {
        let meta = std::fs::symlink_metadata(base.join(&f.rel)).unwrap();
        assert_eq!(f.stamp, Stamp::of(&meta));
        let opened = f.open().unwrap();
        assert!(same_file(&opened, &File::open(base.join(&f.rel)).unwrap()).unwrap());
    }
    // Walked again from the same handle: the same files (the listing has its own position).
    assert_eq!(
        rels(&walk_all(&dir, None, 100, |_, _| true).0),
        rels(&files)
    );
    // Only the folders the owner owns are entered (the walked one is the caller's).
    let (mine, _) = walk_all(&dir, Some(54321), 100, |_, _| true);
    assert_eq!(rels(&mine), vec![PathBuf::from(odd)]);
    std::os::unix::fs::chown(base.join("a"), Some(54321), None).unwrap();
    let (mine, _) = walk_all(&dir, Some(54321), 100, |_, _| true);
    assert_eq!(rels(&mine), vec![PathBuf::from(odd)], "a/b is not 54321's");
    std::os::unix::fs::chown(base.join("a/b"), Some(54321), None).unwrap();
    let (mine, _) = walk_all(&dir, Some(54321), 100, |_, _| true);
    assert_eq!(rels(&mine), rels(&files));
}

#[test]
fn a_walk_asks_before_it_enters_or_hands_over_and_hands_over_in_batches() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().canonicalize().unwrap();
    std::fs::create_dir_all(base.join("keep/own")).unwrap();
    std::fs::create_dir_all(base.join("skip")).unwrap();
    for f in ["keep/1", "keep/2.tmp", "keep/own/3", "skip/4", "5", "6"] {
        std::fs::write(base.join(f), f).unwrap();
    }
    let dir = open_path(&base, Kind::Dir).unwrap();
    let mut asked = Vec::new();
    let (files, sizes) = walk_all(&dir, None, 2, |rel, entry| {
        asked.push((rel.to_path_buf(), entry));
        !(rel.ends_with("own") || rel.starts_with("skip") || rel.ends_with("2.tmp"))
    });
    assert_eq!(
        rels(&files),
        ["5", "6", "keep/1"].map(PathBuf::from).to_vec()
    );
    assert_eq!(sizes, vec![2, 1]);
    asked.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = [
        ("5", Entry::File),
        ("6", Entry::File),
        ("keep", Entry::Dir),
        ("keep/1", Entry::File),
        ("keep/2.tmp", Entry::File),
        ("keep/own", Entry::Dir),
        ("skip", Entry::Dir),
    ]
    .map(|(p, e)| (PathBuf::from(p), e));
    assert_eq!(asked, expected.to_vec(), "nothing below a skipped folder");
    // Break ends the walk at the batch that said so.
    let mut calls = 0;
    let walk = Walk {
        owner: None,
        batch: 1,
        max_depth: DEPTH_LIMIT,
    };
    walk.run(
        &dir,
        |_, _| true,
        |_| {
            calls += 1;
            ControlFlow::Break(())
        },
    )
    .unwrap();
    assert_eq!(calls, 1);
}

#[test]
fn a_walk_goes_no_deeper_than_its_limit_and_says_where_it_stopped() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().canonicalize().unwrap();
    // A chain d/d/d/… ten deep with a file `f` in every folder, and a folder beside it.
    let mut here = base.clone();
    for _ in 0..10 {
        std::fs::write(here.join("f"), b"x").unwrap();
        here = here.join("d");
        std::fs::create_dir(&here).unwrap();
    }
    std::fs::create_dir(base.join("side")).unwrap();
    std::fs::write(base.join("side/g"), b"y").unwrap();
    let dir = open_path(&base, Kind::Dir).unwrap();
    let walk = Walk {
        owner: None,
        batch: 100,
        max_depth: 3,
    };
    let mut files = Vec::new();
    let walked = walk
        .run(
            &dir,
            |_, _| true,
            |b| {
                files.extend(b.into_iter().map(|f| f.rel));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    files.sort();
    let expected = ["d/d/d/f", "d/d/f", "d/f", "f", "side/g"].map(PathBuf::from);
    assert_eq!(files, expected.to_vec(), "three levels of folders entered");
    assert_eq!(walked.too_deep, vec![PathBuf::from("d/d/d/d")]);
    assert_eq!(walked.too_deep_count, 1);
    assert!(walked.unreadable.is_empty());
    // At the default limit, the whole chain.
    let (all, _) = walk_all(&dir, None, 100, |_, _| true);
    assert_eq!(all.len(), 11);
}

#[test]
fn pseudo_file_systems_are_known_by_their_magic_and_never_walked() {
    let proc_file = File::open("/proc/self/stat").unwrap();
    assert_eq!(pseudo_fs(&proc_file).unwrap(), Some("proc"));
    let e = refuse_pseudo(&proc_file).unwrap_err();
    assert!(e.to_string().contains("proc file system"), "{e}");
    if let Ok(sys) = File::open("/sys/kernel") {
        assert_eq!(pseudo_fs(&sys).unwrap(), Some("sysfs"));
    }
    let d = tempfile::tempdir().unwrap();
    let here = File::open(d.path()).unwrap();
    assert_eq!(pseudo_fs(&here).unwrap(), None);
    // A walk of /proc itself is refused before anything is listed.
    let walk = Walk {
        owner: None,
        batch: 10,
        max_depth: DEPTH_LIMIT,
    };
    let proc_dir = File::open("/proc").unwrap();
    let mut handed = 0;
    let e = walk
        .run(
            &proc_dir,
            |_, _| true,
            |b| {
                handed += b.len();
                ControlFlow::Continue(())
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("proc file system"), "{e}");
    assert_eq!(handed, 0);
}

#[test]
fn a_folder_swapped_for_a_symlink_during_a_walk_leaks_nothing() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().canonicalize().unwrap();
    let secret = base.join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("f"), b"SECRET").unwrap();
    let w = base.join("w");
    std::fs::create_dir_all(w.join("u")).unwrap();
    std::fs::create_dir_all(w.join("v")).unwrap();
    std::fs::write(w.join("u/f"), b"user's").unwrap();
    std::fs::write(w.join("v/f"), b"user's").unwrap();
    let dir = open_path(&w, Kind::Dir).unwrap();
    // `u` is swapped just before the walk opens it: the symlink is refused, not followed.
    // `v` is swapped after the walk listed its file: the file still opens from the folder
    // the walk had opened, never through the symlink now at its path.
    let swap = |name: &str| {
        std::fs::rename(w.join(name), w.join(format!("{name}.old"))).unwrap();
        symlink(&secret, w.join(name)).unwrap();
    };
    let (files, _) = walk_all(&dir, None, 100, |rel, entry| {
        if rel == Path::new("u") && entry == Entry::Dir {
            swap("u");
        }
        rel != Path::new("u.old") && rel != Path::new("v.old")
    });
    assert_eq!(rels(&files), vec![PathBuf::from("v/f")]);
    swap("v");
    let mut read = String::new();
    files[0].open().unwrap().read_to_string(&mut read).unwrap();
    assert_eq!(read, "user's");
    // Where the symlink is, a path-based look would have found the secret.
    assert_eq!(std::fs::read(w.join("v/f")).unwrap(), b"SECRET");
}
