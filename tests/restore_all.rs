//! `peerstash restore --all [DEST]` with real daemons on loopback: every file of a watched
//! folder comes back byte for byte with its mode and mtime, into DEST or in place, and files
//! that exist are left alone unless --force.

mod common;

use common::*;

#[test]
fn restore_all_brings_back_every_watched_file_with_its_mode_and_mtime() {
    let (c, _folder, root, files) = backed_up_tree(false);
    let status = c.cli_ok(0, &["status"], 0);
    assert!(status.starts_with("all 50 files at their RD"), "{status}");
    assert!(
        status.contains(&format!("{}: last backup ", root.display())),
        "{status}"
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
