//! Issue 24, with real daemons on loopback. Case 5, "the key never changes behind the admin's
//! back": a missing master key stops the start instead of being made again, a reload never
//! switches keys, and versions this peer cannot decrypt are counted at risk. Case 4, "a busy
//! file still gets versions": a file never quiet is backed up after its folder's max_delay.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use peerstash::control::StatusReport;
use peerstash::protocol::seal::MasterKey;

/// Peer 1 (hosting nothing) watches a new folder, encrypted at RD 2, on peers 2 and 3.
fn encrypted_cluster() -> (Cluster, tempfile::TempDir, PathBuf) {
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap();
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"200ms\"\nencrypt = true\n",
        root.display()
    );
    let c = Cluster::start_with(&["0", "10 MiB", "10 MiB"], &[&watch]);
    (c, folder, root)
}

/// The newest version of `path` that peer 1 has at RD 2 or more, if any (the folder encrypts).
fn backed_up(c: &Cluster, path: &Path) -> Option<u64> {
    let s = c.peer(0).try_state().ok()?;
    (s.versions_of(path).into_iter())
        .filter(|f| f.min_rd() >= 2)
        .map(|f| u64::from(f.version))
        .max()
}

fn wait_backed_up(c: &Cluster, path: &Path) -> u64 {
    let mut version = None;
    let done = wait_until(Duration::from_secs(40), || {
        version = backed_up(c, path);
        version.is_some()
    });
    assert!(done, "{} not backed up:\n{}", path.display(), c.dump());
    version.unwrap()
}

fn fingerprint(key_file: &Path) -> String {
    let bytes: [u8; 32] = std::fs::read(key_file).unwrap().try_into().unwrap();
    MasterKey::new(bytes).fingerprint()
}

fn put_back(kept: &Path, key: &Path) {
    std::fs::rename(kept, key).unwrap();
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Starts peer 1 (with `args`) and expects it to refuse: its exit code is not 0 and one line
/// of its log says all of `says`.
fn start_refused(c: &mut Cluster, args: &[&str], says: &[&str]) {
    c.spawn_with(0, &[], args);
    let code = c.wait_exit(0, Duration::from_secs(20));
    let log = c.full_log(0);
    assert!(
        code.is_some_and(|code| code != 0),
        "the start was not refused ({code:?}):\n{log}"
    );
    // One line says it all.
    let said = log.lines().find(|l| says.iter().all(|w| l.contains(w)));
    assert!(
        said.is_some(),
        "no line of the log says all of {says:?}:\n{log}"
    );
    eprintln!("refused: {}", said.unwrap_or_default());
}

#[test]
fn a_missing_master_key_stops_the_start_until_it_is_put_back() {
    let (mut c, _folder, root) = encrypted_cluster();
    let file = root.join("ledger.bin");
    let bytes = random_bytes(300_000);
    std::fs::write(&file, &bytes).unwrap();
    wait_backed_up(&c, &file);
    let key = c.peers[0].dir.join("master.key");
    let kept = c.peers[0].dir.join("master.key.kept");
    let fp = fingerprint(&key);

    // Config management rebuilt /etc: the key file is gone. The start stops, naming the key
    // it needs, where, and what to do; no new key is made.
    c.stop(0);
    std::fs::rename(&key, &kept).unwrap();
    let path = key.display().to_string();
    start_refused(&mut c, &[], &[&fp, &path, "is missing", "--new-master-key"]);
    assert!(!key.exists(), "a new master key was made");

    // The key put back: the peer starts, and the file comes back byte for byte.
    put_back(&kept, &key);
    c.spawn(0);
    c.wait_ready(0);
    let out = c.dir.path().join("ledger.back");
    assert!(
        restore_to(&c, 0, &file, &out) == bytes,
        "restored bytes differ"
    );
    c.stop_all();
}

#[test]
fn a_reload_never_switches_master_keys() {
    let (mut c, _folder, root) = encrypted_cluster();
    let first = root.join("first.bin");
    std::fs::write(&first, random_bytes(50_000)).unwrap();
    wait_backed_up(&c, &first);
    let key = c.peers[0].dir.join("master.key");
    let fp = fingerprint(&key);

    // The config now names another key file, and is reloaded: the running key stays.
    let other = c.peers[0].dir.join("other.key");
    peerstash::config::write_new_key(&other).unwrap();
    let config = c.peers[0].config.clone();
    let original = std::fs::read_to_string(&config).unwrap();
    let key_text = key.to_str().unwrap();
    assert!(original.contains(key_text), "{original}");
    let edited = original.replace(key_text, other.to_str().unwrap());
    std::fs::write(&config, &edited).unwrap();
    c.reload(0);
    assert!(
        wait_until(Duration::from_secs(10), || c
            .full_log(0)
            .contains("config reloaded from")),
        "not reloaded:\n{}",
        c.log(0)
    );

    // A file backed up after the reload is under the key the peer started with.
    let second = root.join("second.bin");
    let bytes = random_bytes(80_000);
    std::fs::write(&second, &bytes).unwrap();
    wait_backed_up(&c, &second);

    // Restarted with the first key: the file backed up after the reload restores.
    c.stop(0);
    std::fs::write(&config, &original).unwrap();
    c.spawn(0);
    c.wait_ready(0);
    let out = c.dir.path().join("second.back");
    assert!(
        restore_to(&c, 0, &second, &out) == bytes,
        "restored bytes differ"
    );
    // The reload said, in one WARN line, that the key stays and why.
    let log = c.full_log(0);
    let warning = log.lines().find(|l| l.contains("the master key stays"));
    assert!(
        warning
            .is_some_and(|w| w.contains(&fp) && w.contains("other.key") && w.contains("restart")),
        "no warning that says why:\n{log}"
    );

    // A restart with the other key is checked against the catalog: refused.
    c.stop(0);
    std::fs::write(&config, &edited).unwrap();
    start_refused(&mut c, &[], &[&fp, &fingerprint(&other)]);
    c.stop_all();
}

#[test]
fn versions_this_peer_cannot_decrypt_are_counted_at_risk() {
    let (mut c, _folder, root) = encrypted_cluster();
    let (gone, kept_file) = (root.join("gone.bin"), root.join("kept.bin"));
    std::fs::write(&gone, random_bytes(40_000)).unwrap();
    let bytes = random_bytes(60_000);
    std::fs::write(&kept_file, &bytes).unwrap();
    wait_backed_up(&c, &gone);
    let before = wait_backed_up(&c, &kept_file);
    let key = c.peers[0].dir.join("master.key");
    let old = fingerprint(&key);

    // The key lost for good; one file deleted meanwhile. The admin starts with a new key.
    c.stop(0);
    std::fs::remove_file(&key).unwrap();
    std::fs::remove_file(&gone).unwrap();
    c.spawn_with(0, &[], &["--new-master-key"]);
    c.wait_ready(0);
    let new = fingerprint(&key);
    assert_ne!(old, new);

    // The file still there is backed up again under the new key, and restores.
    assert!(
        wait_until(Duration::from_secs(40), || backed_up(&c, &kept_file)
            .is_some_and(|v| v > before)),
        "kept.bin not backed up again under the new key:\n{}",
        c.dump()
    );
    let out = c.dir.path().join("kept.back");
    assert!(
        restore_to(&c, 0, &kept_file, &out) == bytes,
        "restored bytes differ"
    );

    // The deleted file's versions are under the old key: status counts them at risk.
    let status = c.cli(0, &["status"]);
    let text = output_text(&status);
    assert_ne!(status.status.code(), Some(0), "{text}");
    assert!(text.contains("another master key"), "{text}");
    let at_risk = text
        .lines()
        .find(|l| l.trim_start().starts_with("at risk:"))
        .unwrap_or_default();
    assert!(at_risk.contains("gone.bin"), "{text}");
    assert!(!at_risk.contains("kept.bin"), "{text}");

    // A restore of it names the key it needs.
    let out = c.cli(
        0,
        &[
            "restore",
            gone.to_str().unwrap(),
            "--to",
            c.dir.path().join("gone.back").to_str().unwrap(),
        ],
    );
    let text = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&old), "{text}");
    c.stop_all();
}

/// Issue 24, case 4: a log appended every half second for 40 s (quiet 2 s, max_delay 8 s) gets a
/// version while it is still appended, and that version is content the file really had: a
/// prefix of its final content.
#[test]
fn a_file_that_is_never_quiet_still_gets_versions() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap();
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"2s\"\nmax_delay = \"8s\"\nkeep_versions = 100\n",
        root.display()
    );
    let c = Cluster::start_with(&["0", "10 MiB", "10 MiB"], &[&watch]);
    let log = root.join("app.log");
    let appending = Arc::new(AtomicBool::new(true));
    let appender = {
        let (log, appending) = (log.clone(), appending.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            for i in 0..80 {
                let line = format!("{i:>4} {}\n", hex(&random_bytes(24)));
                f.write_all(line.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(500));
            }
            appending.store(false, Ordering::SeqCst);
        })
    };
    // A version complete at its RD while the log is still appended.
    let mut seen = None;
    while appending.load(Ordering::SeqCst) && seen.is_none() {
        seen = backed_up(&c, &log).filter(|_| appending.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(250));
    }
    appender.join().unwrap();
    let version = seen.unwrap_or_else(|| {
        panic!(
            "no version of the log while it was appended for 40 s:\n{}",
            c.log(0)
        )
    });
    let final_bytes = std::fs::read(&log).unwrap();
    let out = c.dir.path().join("app.back");
    let v = version.to_string();
    let args = [
        "restore",
        log.to_str().unwrap(),
        "--version",
        &v,
        "--to",
        out.to_str().unwrap(),
    ];
    c.cli_ok(0, &args, 0);
    let restored = std::fs::read(&out).unwrap();
    assert!(!restored.is_empty());
    assert!(
        final_bytes.starts_with(&restored),
        "version {version} ({} bytes) is not a prefix of the log ({} bytes)",
        restored.len(),
        final_bytes.len()
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Issue 24, case 4: a folder's last backup (of another file) does not hide a file that waits:
/// `status` shows the folder's oldest change not backed up, and the file at risk once it has
/// waited more than twice its max_delay.
#[test]
fn status_shows_a_file_that_waits_longer_than_its_max_delay() {
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap();
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 1\nquiet = \"200ms\"\nmax_delay = \"1s\"\n",
        root.display()
    );
    // The only other peer has room for the small file, not for the large one.
    let c = Cluster::start_with(&["0", "300 KB"], &[&watch]);
    let small = root.join("small.txt");
    std::fs::write(&small, random_bytes(10_000)).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || c.peer(0).try_state().is_ok_and(
            |s| s.versions_of(&small).iter().any(|f| f.min_rd() >= 1)
        )),
        "small.txt not backed up:\n{}",
        c.dump()
    );
    let large = root.join("large.bin");
    std::fs::write(&large, random_bytes(1_000_000)).unwrap();
    let mut last = String::new();
    let shown = wait_until(Duration::from_secs(30), || {
        let out = c.cli(0, &["status", "--json"]);
        last = output_text(&out);
        let Ok(s) = serde_json::from_slice::<StatusReport>(&out.stdout) else {
            return false;
        };
        let Some(folder) = s.folders.first() else {
            return false;
        };
        folder.last_backup_ms.is_some()
            && folder.waiting.as_ref() == Some(&large)
            && folder.waiting_since_ms.is_some()
            && s.at_risk.contains(&large)
            && s.warnings.iter().any(|w| w.contains("large.bin"))
    });
    assert!(shown, "status does not show large.bin waiting:\n{last}");
    let text = output_text(&c.cli(0, &["status"]));
    assert!(text.contains("oldest change waiting"), "{text}");
}
