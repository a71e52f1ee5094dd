//! `peerstash restore --all [DEST]` with real daemons on loopback: every file of a watched
//! folder comes back byte for byte with its mode and mtime, into DEST or in place, and files
//! that exist are left alone unless --force.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn restore_all_brings_back_every_watched_file_with_its_mode_and_mtime() {
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap();
    let files = populate_tree(&root);
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
    check_tree(&dest.path().join(root.strip_prefix("/").unwrap()), &files);

    // In place, after the folder's content is lost.
    for entry in std::fs::read_dir(&root).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    let out = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(out.contains("50 files: 50 restored, 0 failed"), "{out}");
    check_tree(&root, &files);

    // Files that exist are left alone.
    let out = c.cli_ok(0, &["restore", "--all"], 0);
    assert!(out.contains("0 restored, 0 failed, 50 skipped"), "{out}");
}
