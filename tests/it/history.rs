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

/// `peerstash restore --at` on a folder's files changed over time: a folder and a single file
/// as they were at three moments, deleted files back, nothing newer, modes and mtimes given
/// back; `versions DIR --at` lists what the folder held.
#[test]
fn a_folder_and_a_file_come_back_as_they_were_at_a_time() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("w");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let watch = format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 1\nquiet = \"200ms\"\nrescan = \"1h\"\n",
        dir.display()
    );
    let c = Cluster::start_with(&["0", "50MB"], &[&watch, ""]);
    let (a, b, gone, late) = (
        dir.join("a.txt"),
        dir.join("sub/b.bin"),
        dir.join("sub/gone.txt"),
        dir.join("late.txt"),
    );
    let wait_complete = |p: &Path, n: usize| {
        let mut seen = Vec::new();
        let ok = wait_until(WAIT, || {
            seen = complete_versions(&c, p);
            seen.len() >= n
        });
        assert!(ok, "{}: {seen:?}\n{}", p.display(), c.log(0));
    };
    let now_s = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let set = |p: &Path, bytes: &[u8], mode: u32, mtime_s: u64| {
        std::fs::write(p, bytes).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_s))
            .unwrap();
    };
    // Moment 1: a, b and gone, first contents.
    let a1 = random_bytes(1_000);
    let b1 = random_bytes(70_000);
    set(&a, &a1, 0o600, 1_700_000_000);
    set(&b, &b1, 0o640, 1_700_000_100);
    set(&gone, b"soon gone", 0o644, 1_700_000_200);
    for p in [&a, &b, &gone] {
        wait_complete(p, 1);
    }
    std::thread::sleep(Duration::from_millis(1100));
    let t1 = now_s();
    std::thread::sleep(Duration::from_millis(1100));
    // Moment 2: a and b changed, gone deleted, late made.
    let a2 = random_bytes(2_000);
    set(&a, &a2, 0o644, 1_700_001_000);
    set(&b, &random_bytes(70_001), 0o600, 1_700_001_100);
    std::fs::remove_file(&gone).unwrap();
    set(&late, b"late", 0o644, 1_700_001_200);
    wait_complete(&a, 2);
    wait_complete(&b, 2);
    wait_complete(&late, 1);
    let said = format!("{} was deleted locally", gone.display());
    assert!(
        wait_until(WAIT, || c.full_log(0).contains(&said)),
        "{}",
        c.log(0)
    );
    std::thread::sleep(Duration::from_millis(1100));
    let t2 = now_s();
    std::thread::sleep(Duration::from_millis(1100));
    // Moment 3: a once more (and b overwritten as ransomware would).
    let a3 = random_bytes(3_000);
    set(&a, &a3, 0o644, 1_700_002_000);
    wait_complete(&a, 3);
    let t3 = now_s() + 1;

    // The folder at moment 1, into out/: a, b and gone as they were; late did not exist.
    let out = root.path().join("out");
    let at1 = format!("@{t1}");
    let said = c.cli_ok(
        0,
        &["restore", text(&dir), "--at", &at1, "--to", text(&out)],
        0,
    );
    assert!(said.contains("3 files: 3 restored"), "{said}");
    let under = |p: &Path| out.join(p.strip_prefix("/").unwrap());
    assert!(std::fs::read(under(&a)).unwrap() == a1);
    assert!(std::fs::read(under(&b)).unwrap() == b1);
    assert_eq!(std::fs::read(under(&gone)).unwrap(), b"soon gone");
    assert!(!under(&late).exists(), "nothing newer than the moment");
    let meta = std::fs::metadata(under(&b)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(
        meta.modified().unwrap(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100)
    );
    // What the folder held then, and at moment 2.
    let listed = c.cli_ok(0, &["versions", text(&dir), "--at", &at1], 0);
    assert!(
        listed.contains("gone.txt") && !listed.contains("late.txt"),
        "{listed}"
    );
    let listed = c.cli_ok(0, &["versions", text(&dir), "--at", &format!("@{t2}")], 0);
    assert!(
        !listed.contains("gone.txt") && listed.contains("late.txt"),
        "{listed}"
    );
    // One file at three moments: three contents.
    for (t, bytes) in [(t1, &a1), (t2, &a2), (t3, &a3)] {
        let one = root.path().join(format!("a-at-{t}"));
        let at = format!("@{t}");
        c.cli_ok(
            0,
            &["restore", text(&a), "--at", &at, "--to", text(&one)],
            0,
        );
        assert!(std::fs::read(&one).unwrap() == *bytes, "a at {t}");
    }
    // In place: a file that exists is left alone without --force, put back with it.
    c.cli_ok(0, &["restore", text(&dir), "--at", &at1], 0);
    assert!(std::fs::read(&a).unwrap() == a3, "kept without --force");
    c.cli_ok(0, &["restore", text(&dir), "--at", &at1, "--force"], 0);
    assert!(std::fs::read(&a).unwrap() == a1, "put back with --force");
    assert_eq!(std::fs::read(&gone).unwrap(), b"soon gone");
    // Before anything was backed up: said so.
    let o = c.cli(0, &["restore", text(&dir), "--at", "@1000000000"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("nothing of"),
        "{}",
        output_text(&o)
    );
}

/// Issue 27's ransomware: a watched folder of 300 files, then every one overwritten with
/// random bytes. The guard trips (status exits 8 and says why, the journal has an error line),
/// nothing of the folder is pruned though `keep = "none"`, and `restore DIR --at <before>`
/// brings every file back byte for byte, with its mode and mtime. `history resume` lifts it.
#[test]
fn a_mass_overwrite_trips_the_guard_and_everything_comes_back() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("home");
    std::fs::create_dir_all(&dir).unwrap();
    let watch = format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 1\nkeep = \"none\"\nquiet = \"200ms\"\n\
         rescan = \"1h\"\n",
        dir.display()
    );
    let c = Cluster::start_with(&["0", "100MB"], &[&watch, ""]);
    let files: Vec<(std::path::PathBuf, Vec<u8>, u32, u64)> = (0..300)
        .map(|i| {
            let p = dir.join(format!("doc{i:03}.txt"));
            let bytes = random_bytes(500 + i * 7);
            let mode = [0o600, 0o640, 0o644][i % 3];
            (p, bytes, mode, 1_700_000_000 + i as u64)
        })
        .collect();
    for (p, bytes, mode, mtime) in &files {
        std::fs::write(p, bytes).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(*mode)).unwrap();
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime))
            .unwrap();
    }
    let all_at = |n: usize| {
        let state = c.peer(0).state();
        files.iter().all(|(p, ..)| {
            (state.versions_of(p).into_iter())
                .filter(|f| f.complete && f.min_rd() >= 1)
                .count()
                >= n
        })
    };
    assert!(
        wait_until(Duration::from_secs(120), || all_at(1)),
        "{}",
        c.log(0)
    );
    std::thread::sleep(Duration::from_millis(1100));
    let before = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::thread::sleep(Duration::from_millis(1100));
    // Encrypted by ransomware: every file rewritten with random bytes.
    for (p, bytes, ..) in &files {
        std::fs::write(p, random_bytes(bytes.len() + 16)).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(120), || all_at(2)),
        "{}",
        c.log(0)
    );
    let held = wait_until(WAIT, || c.cli(0, &["status"]).status.code() == Some(8));
    let status = c.cli(0, &["status"]);
    assert!(held, "status: {}\n{}", output_text(&status), c.log(0));
    assert!(
        output_text(&status).contains("is held"),
        "{}",
        output_text(&status)
    );
    assert!(c.full_log(0).contains("history guard:"), "{}", c.log(0));
    // Nothing pruned: every file still has its first version (keep = "none" would have let it
    // go once the second was complete).
    let state = c.peer(0).state();
    for (p, ..) in &files {
        assert_eq!(state.versions_of(p).len(), 2, "{}", p.display());
    }
    // Everything back as it was, in place.
    let at = format!("@{before}");
    let said = c.cli_ok(0, &["restore", text(&dir), "--at", &at, "--force"], 0);
    assert!(said.contains("300 files: 300 restored"), "{said}");
    for (p, bytes, mode, mtime) in &files {
        assert!(std::fs::read(p).unwrap() == *bytes, "{}", p.display());
        let meta = std::fs::metadata(p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, *mode, "{}", p.display());
        assert_eq!(
            meta.modified().unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime)
        );
    }
    // Looked at: resumed.
    let said = c.cli_ok(0, &["history", "resume", text(&dir)], 0);
    assert!(said.contains("history resumed"), "{said}");
    let status = c.cli(0, &["status"]);
    assert_ne!(status.status.code(), Some(8), "{}", output_text(&status));
}

/// A guard with a `guard_hold` lets go by itself once it has passed (the history worker looks
/// every 10 s); the thresholds are the config's.
#[test]
fn a_guard_hold_ends_by_itself() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let watch = format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 1\nquiet = \"200ms\"\nrescan = \"1h\"\n\
         guard = \"50%\"\nguard_min_files = 3\nguard_within = \"1m\"\nguard_hold = \"2s\"\n",
        dir.display()
    );
    let c = Cluster::start_with(&["0", "50MB"], &[&watch, ""]);
    let files: Vec<_> = (0..4).map(|i| dir.join(format!("f{i}"))).collect();
    for f in &files {
        std::fs::write(f, random_bytes(100)).unwrap();
    }
    let all = |n: usize| files.iter().all(|f| complete_versions(&c, f).len() >= n);
    assert!(wait_until(WAIT, || all(1)), "{}", c.log(0));
    let code = || c.cli(0, &["status"]).status.code();
    assert_ne!(code(), Some(8));
    // Two files changed and one gone: 3 of 4, at least 3: held.
    for f in &files[..2] {
        std::fs::write(f, random_bytes(200)).unwrap();
    }
    std::fs::remove_file(&files[2]).unwrap();
    assert!(wait_until(WAIT, || code() == Some(8)), "{}", c.log(0));
    assert!(wait_until(WAIT, || code() != Some(8)), "{}", c.log(0));
    assert!(
        c.full_log(0).contains("its guard_hold (2 s) has passed"),
        "{}",
        c.log(0)
    );
}

/// Issue 27, space: the peers are full and a new file does not fit. The oldest history goes
/// first (versions 1 and 2 of a file), the newest version of every file stays, the new file is
/// backed up, and `status` says that history is being cut for space.
#[test]
fn full_peers_cut_the_oldest_history_first_and_keep_every_newest_version() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let (a_len, b_len) = (100_000usize, 200_000usize);
    // A chunk of 64000 bytes and the rest, on the peer's filesystem.
    let on_disk = |len: usize| {
        let full = (len / 64_000) as u64 * charged_on(root.path(), 64_000);
        full + charged_on(root.path(), (len % 64_000) as u64)
    };
    let quota = 3 * on_disk(a_len) + on_disk(b_len) / 2 + 64 * 1024;
    let watch = format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 1\nquiet = \"200ms\"\nrescan = \"1h\"\n",
        dir.display()
    );
    let c = Cluster::start_with(&["0", &quota.to_string()], &[&watch, ""]);
    let a = dir.join("a.bin");
    let mut contents = Vec::new();
    for v in 1..=3usize {
        let bytes = random_bytes(a_len - v);
        std::fs::write(&a, &bytes).unwrap();
        contents.push(bytes);
        let ok = wait_until(WAIT, || complete_versions(&c, &a).len() == v);
        assert!(ok, "a version {v}:\n{}", c.log(0));
    }
    // A catalog snapshot at its RD names version 3: the older ones may go.
    c.cli_ok(0, &["snapshot"], 0);
    let b = dir.join("b.bin");
    let b_bytes = random_bytes(b_len);
    std::fs::write(&b, &b_bytes).unwrap();
    let ok = wait_until(Duration::from_secs(60), || {
        complete_versions(&c, &b).len() == 1
    });
    assert!(ok, "b backed up once old versions made room:\n{}", c.log(0));
    assert_eq!(
        complete_versions(&c, &a),
        vec![3],
        "the oldest history went first"
    );
    assert!(
        c.full_log(0).contains("pruned to make room for"),
        "{}",
        c.log(0)
    );
    let status = output_text(&c.cli(0, &["status"]));
    assert!(
        status.contains("history is being cut for space"),
        "{status}"
    );
    // The newest versions restore.
    for (path, bytes) in [(&a, &contents[2]), (&b, &b_bytes)] {
        let out = root.path().join("out");
        assert!(
            restore_to(&c, 0, path, &out) == *bytes,
            "{}",
            path.display()
        );
    }
}

/// The guard also trips on fewer files when their new content looks like ciphertext where the
/// old did not (20 by default, whatever their share): 25 text files rewritten with other text
/// do not trip it; the same files encrypted do.
#[test]
fn files_turned_to_ciphertext_trip_the_guard_before_the_count_does() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let watch = format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = 1\nquiet = \"200ms\"\nrescan = \"1h\"\n",
        dir.display()
    );
    let c = Cluster::start_with(&["0", "50MB"], &[&watch, ""]);
    let files: Vec<_> = (0..25)
        .map(|i| dir.join(format!("letter{i:02}.txt")))
        .collect();
    let text = |i: usize, round: usize| {
        format!("Letter {i}, draft {round}: the meeting moves to Thursday at ten.\n").repeat(150)
    };
    let all = |n: usize| files.iter().all(|f| complete_versions(&c, f).len() >= n);
    for (i, f) in files.iter().enumerate() {
        std::fs::write(f, text(i, 1)).unwrap();
    }
    assert!(wait_until(WAIT, || all(1)), "{}", c.log(0));
    // Other text: 25 changes, below the count's 200: not held.
    for (i, f) in files.iter().enumerate() {
        std::fs::write(f, text(i, 2)).unwrap();
    }
    assert!(wait_until(WAIT, || all(2)), "{}", c.log(0));
    assert_ne!(c.cli(0, &["status"]).status.code(), Some(8), "{}", c.log(0));
    // Encrypted in place: held.
    for f in &files {
        std::fs::write(f, random_bytes(9_000)).unwrap();
    }
    let held = wait_until(WAIT, || c.cli(0, &["status"]).status.code() == Some(8));
    assert!(held, "{}", c.log(0));
    let status = output_text(&c.cli(0, &["status"]));
    assert!(status.contains("looks encrypted"), "{status}");
}
