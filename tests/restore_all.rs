//! `peerstash restore --all [DEST]` with real daemons on loopback: every file of a watched
//! folder comes back byte for byte with its mode and mtime, into DEST or in place, and files
//! that exist are left alone unless --force.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// 50 files in 5 subfolders, of various sizes, modes and mtimes: (relative path, bytes, mode,
/// mtime).
fn populate(root: &Path) -> Vec<(PathBuf, Vec<u8>, u32, SystemTime)> {
    let mut files = Vec::new();
    for i in 0..50u64 {
        let rel = PathBuf::from(format!("sub{}/deeper{}/file-{i}.dat", i % 5, i % 2));
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = random_bytes((i as usize * 2_711) % 130_000);
        std::fs::write(&path, &bytes).unwrap();
        let mode = [0o600, 0o640, 0o755][i as usize % 3];
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let mtime = UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        files.push((rel, bytes, mode, mtime));
    }
    files
}

fn check_all(root: &Path, files: &[(PathBuf, Vec<u8>, u32, SystemTime)]) {
    for (rel, bytes, mode, mtime) in files {
        let path = root.join(rel);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            std::fs::read(&path).unwrap() == *bytes,
            "{}",
            path.display()
        );
        assert_eq!(
            meta.permissions().mode() & 0o777,
            *mode,
            "{}",
            path.display()
        );
        assert_eq!(meta.modified().unwrap(), *mtime, "{}", path.display());
    }
}

#[test]
fn restore_all_brings_back_every_watched_file_with_its_mode_and_mtime() {
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap();
    let files = populate(&root);
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"200ms\"\n",
        root.display()
    );
    let c = Cluster::start_with(&["0", "20 MiB", "20 MiB", "20 MiB"], &[&watch]);
    let all_backed_up = || {
        c.try_state(0).is_some_and(|s| {
            files.iter().all(|(rel, ..)| {
                file_entries(&s, &root.join(rel))
                    .iter()
                    .any(|f| min_rd(f) >= 2)
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), all_backed_up),
        "not all backed up:\n{}",
        c.dump()
    );

    // Into another folder, under the files' full paths.
    let dest = tempfile::tempdir().unwrap();
    let out = c.cli_ok(0, &["restore", "--all", dest.path().to_str().unwrap()], 0);
    assert!(out.contains("50 files: 50 restored, 0 failed"), "{out}");
    check_all(&dest.path().join(root.strip_prefix("/").unwrap()), &files);

    // In place, after the folder's content is lost.
    for entry in std::fs::read_dir(&root).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    let out = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(out.contains("50 files: 50 restored, 0 failed"), "{out}");
    check_all(&root, &files);

    // Files that exist are left alone.
    let out = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(out.contains("0 restored, 0 failed, 50 skipped"), "{out}");
}
