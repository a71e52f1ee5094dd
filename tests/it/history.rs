//! Issue 27, history: only a change of content is a new version. A file touched, or written
//! again with the same bytes, keeps its versions (`keep_versions` counts contents, not saves).
//! Real daemons on loopback.

use crate::common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

const WAIT: Duration = Duration::from_secs(40);

fn text(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Peer 1's versions of `path` that are complete at RD 1 or more.
fn complete_versions(c: &Cluster, path: &Path) -> Vec<u32> {
    (c.peer(0).state().versions_of(path).into_iter())
        .filter(|f| f.complete && f.min_rd() >= 1)
        .map(|f| f.version)
        .collect()
}

/// Issue 27's measure: three contents under `keep_versions = 3`, then three `touch`es: the
/// three contents still restore (before: versions 1, 2, 3 became 4, 5, 6, all one content).
#[test]
fn touched_files_keep_their_three_contents() {
    touched_keeps_contents(false);
}

/// The same in an encrypted folder (a new attempt's fileId is random there).
#[test]
fn touched_encrypted_files_keep_their_three_contents() {
    touched_keeps_contents(true);
}

fn touched_keeps_contents(encrypt: bool) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let watch = format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 1\nkeep_versions = 3\nquiet = \"200ms\"\n\
         rescan = \"1h\"\nencrypt = {encrypt}\n",
        dir.display()
    );
    let c = Cluster::start_with(&["0", "50MB"], &[&watch, ""]);
    let f = dir.join("report.txt");
    let mut contents = Vec::new();
    for v in 1..=3u32 {
        let bytes = random_bytes(70_000 + v as usize);
        std::fs::write(&f, &bytes).unwrap();
        contents.push(bytes);
        let mut seen = Vec::new();
        let ok = wait_until(WAIT, || {
            seen = complete_versions(&c, &f);
            seen.len() == v as usize
        });
        assert!(ok, "version {v}: {seen:?}\n{}", c.log(0));
    }
    // Three touches, each a second later than the last, each backed up (the queue says so
    // once a backup of the file ends) before the next.
    let start = SystemTime::now();
    let backed_up = format!("backed up {} (version", f.display());
    for k in 1..=3u64 {
        let file = std::fs::File::options().write(true).open(&f).unwrap();
        file.set_modified(start + Duration::from_secs(k)).unwrap();
        drop(file);
        let ok = wait_until(WAIT, || {
            c.full_log(0).matches(&backed_up).count() == 3 + k as usize
        });
        assert!(ok, "touch {k} looked at:\n{}", c.log(0));
    }
    assert_eq!(complete_versions(&c, &f), vec![1, 2, 3], "{}", c.log(0));
    assert_eq!(
        c.full_log(0)
            .matches("same content as its version 3")
            .count(),
        3,
        "{}",
        c.log(0)
    );
    for (v, bytes) in contents.iter().enumerate() {
        let out = root.path().join(format!("out{v}"));
        let n = (v + 1).to_string();
        c.cli_ok(
            0,
            &["restore", text(&f), "--version", &n, "--to", text(&out)],
            0,
        );
        assert!(std::fs::read(&out).unwrap() == *bytes, "version {n}");
    }
    // The newest version has the file's new mtime, given back at restore.
    let out = root.path().join("newest");
    c.cli_ok(0, &["restore", text(&f), "--to", text(&out)], 0);
    let mtime = std::fs::metadata(&out).unwrap().modified().unwrap();
    assert_eq!(mtime, start + Duration::from_secs(3));
}
