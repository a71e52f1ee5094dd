//! `peerstash restore --all [DEST]` with real daemons on loopback: every file of a watched
//! folder comes back byte for byte with its mode and mtime, into DEST or in place, and files
//! that exist are left alone unless --force.

use crate::common;

use common::*;
use peerstash::control::{Amount, Reply, RestoreAllSummary};

#[test]
fn restore_all_brings_back_every_watched_file_with_its_mode_and_mtime() {
    let (c, _folder, root, files) = backed_up_tree(false);
    // Healthy once the catalog snapshot that follows the backups is at its RD too.
    let healthy = wait_until(std::time::Duration::from_secs(60), || {
        c.cli(0, &["status"]).status.code() == Some(0)
    });
    assert!(healthy, "{}", output_text(&c.cli(0, &["status"])));
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

    // With --json: an event per file, counted up to 50, then the outcome with its counts.
    let dest = tempfile::tempdir().unwrap();
    let out = c.cli_ok(
        0,
        &["restore", "--all", "--json", dest.path().to_str().unwrap()],
        0,
    );
    let mut lines: Vec<Reply<RestoreAllSummary>> = json_lines(&out);
    let (code, _, summary) = done(lines.pop().expect("an outcome"));
    assert_eq!(code, 0, "{out}");
    let summary = summary.unwrap_or_else(|| panic!("no counts: {out}"));
    assert_eq!(summary.restored, 50, "{out}");
    assert_eq!(summary.failed, 0, "{out}");
    let progress: Vec<(&str, Option<Amount>)> = (lines.iter())
        .filter_map(|p| match p {
            Reply::Progress { message, amount } => Some((message.as_str(), *amount)),
            Reply::Done { .. } => None,
        })
        .collect();
    let counted: Vec<u64> = (progress.iter())
        .filter_map(|(_, a)| a.map(|a| a.done))
        .collect();
    assert!(counted.windows(2).all(|w| w[0] <= w[1]), "{out}");
    assert_eq!(counted.last(), Some(&50), "{out}");
    assert_eq!(
        (progress.iter())
            .filter(|(m, _)| m.contains("restored"))
            .count(),
        50,
        "{out}"
    );
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
