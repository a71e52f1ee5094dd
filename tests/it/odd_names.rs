//! Issue 9, case 4 and 8: paths are bytes end to end. Names that are not UTF-8, names with a
//! newline, and names of 255 bytes are backed up by the watcher and by `peerstash backup`,
//! listed escaped, kept apart (two Latin-1 names are two paths, not one lossy one), survive a
//! restart, and restore under their own names byte for byte.

use crate::common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
/// The paths of the complete versions in `state --json` (one that is not UTF-8 travels as
/// `{"bytes_hex": …}`, read back to its bytes).
fn complete_paths(state: &State) -> Vec<PathBuf> {
    (state.files.iter())
        .filter(|f| f.complete)
        .map(|f| f.path.clone())
        .collect()
}

fn name(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// `peerstash` on peer 1 with arguments that need not be UTF-8; asserts it succeeded.
fn cli_os(c: &Cluster, args: &[&OsStr]) {
    let out = std::process::Command::new(PEERSTASH)
        .arg("--config")
        .arg(&c.peer(0).config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn odd_names_are_backed_up_listed_and_restored_under_their_own_names() {
    let watched = tempfile::tempdir().unwrap();
    let w = watched.path().canonicalize().unwrap();
    let table = format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"300ms\"\nkeep_deleted = \"2s\"\n",
        w.display()
    );
    let mut c = Cluster::start_with(&["0", "100MB", "100MB"], &[table.as_str()]);
    let long_text = "x".repeat(251) + ".txt";
    let mut long_latin1 = b"caf\xe9-".to_vec();
    long_latin1.resize(255, b'y');
    let names: Vec<Vec<u8>> = vec![
        b"caf\xe9".to_vec(),        // Latin-1 "café"
        b"caf\xe8".to_vec(),        // Latin-1 "cafè": the same text once made lossy
        "café".as_bytes().to_vec(), // UTF-8
        b"line\nbreak".to_vec(),
        long_text.into_bytes(),
        long_latin1,
    ];
    let files: Vec<(PathBuf, Vec<u8>)> = names
        .iter()
        .map(|n| (w.join(name(n)), random_bytes(70_000)))
        .collect();
    for (path, bytes) in &files {
        std::fs::write(path, bytes).unwrap();
    }
    let all_backed_up = |c: &Cluster| {
        let done = complete_paths(&c.peer(0).state());
        files.iter().all(|(p, _)| done.contains(p))
    };
    assert!(
        wait_until(Duration::from_secs(30), || all_backed_up(&c)),
        "the watcher backed up every name: {:?}\n{}",
        complete_paths(&c.peer(0).state()),
        c.log(0)
    );
    // One version each: no two names were taken for one path.
    let state = c.peer(0).state();
    for (path, _) in &files {
        let n = state.files.iter().filter(|f| f.path == *path).count();
        assert_eq!(n, 1, "{}", path.display());
    }
    // Listed escaped, one line per version.
    let listing = c.cli_ok(0, &["versions", w.to_str().unwrap()], 0);
    assert!(listing.contains("caf\\xe9"), "{listing}");
    assert!(listing.contains("caf\\xe8"), "{listing}");
    assert!(listing.contains("café"), "{listing}");
    assert!(listing.contains("line\\nbreak"), "{listing}");
    assert_eq!(listing.lines().count(), 1 + files.len(), "{listing}");

    // A restart does not take them for deleted files (keep_deleted is 2 s).
    c.restart(0);
    std::thread::sleep(Duration::from_secs(4));
    assert!(all_backed_up(&c), "{}", c.log(0));

    // Gone, then restored under their own names (the longest included) by `peerstash restore`
    // given the raw bytes as its argument.
    for (path, _) in &files {
        std::fs::remove_file(path).unwrap();
    }
    for (path, bytes) in &files {
        cli_os(&c, &[name(b"restore"), path.as_os_str()]);
        assert_eq!(std::fs::read(path).unwrap(), *bytes, "{}", path.display());
    }
}

#[test]
fn a_manual_backup_keeps_two_latin1_names_apart() {
    let c = Cluster::start(&["0", "100MB", "100MB"]);
    let base = c.dir.path().canonicalize().unwrap();
    let dir = base.join(name(b"dossier-\xe9t\xe9"));
    std::fs::create_dir(&dir).unwrap();
    let a = dir.join(name(b"caf\xe9"));
    let b = dir.join(name(b"caf\xe8"));
    std::fs::write(&a, b"one").unwrap();
    std::fs::write(&b, b"two").unwrap();
    cli_os(
        &c,
        &[name(b"backup"), name(b"-r"), name(b"2"), dir.as_os_str()],
    );
    let done = complete_paths(&c.peer(0).state());
    assert!(done.contains(&a) && done.contains(&b), "{done:?}");
    for (path, bytes) in [(&a, b"one"), (&b, b"two")] {
        std::fs::remove_file(path).unwrap();
        cli_os(&c, &[name(b"restore"), path.as_os_str()]);
        assert_eq!(std::fs::read(path).unwrap(), bytes);
    }
}
