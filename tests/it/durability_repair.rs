//! Issue 24, "everything kept is kept at its RD": repair covers every version the policy keeps
//! (older versions, deleted files) from a surviving copy on the peers (case 3); a reclaim hands
//! a last copy on before dropping it (case 3); a file too big for the LAN is refused and its
//! partial chunks freed, and never starves the rest (case 12). Real daemons on loopback.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(40);

fn text(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn watch(dir: &Path, replication: u8) -> String {
    watch_encrypted(dir, replication, false)
}

fn watch_encrypted(dir: &Path, replication: u8, encrypt: bool) -> String {
    format!(
        "\n[[watch]]\npath = \"{}\"\nreplication = {replication}\nkeep_versions = 3\n\
         keep_deleted = \"1h\"\nquiet = \"300ms\"\nrescan = \"1h\"\nencrypt = {encrypt}\n",
        dir.display()
    )
}

/// 2.0 peers that count a holder lost after 5 s of silence (and say HELLO every second).
fn spec(quota: &str, extra: String) -> PeerSpec {
    PeerSpec {
        extra,
        peer_extra: "holder_timeout = \"5s\"\n".into(),
        ..PeerSpec::new(quota).protocol("2.0")
    }
}

/// Peer 1's complete versions of `path`: (version, lowest perceived RD).
fn versions(c: &Cluster, path: &Path) -> Vec<(u32, u32)> {
    c.peer(0)
        .state()
        .versions_of(path)
        .into_iter()
        .filter(|f| f.complete)
        .map(|f| (f.version, f.min_rd()))
        .collect()
}

/// Waits until `path` has `n` complete versions, each with every chunk at RD `rd` or more.
fn wait_versions_at(c: &Cluster, path: &Path, n: usize, rd: u32, why: &str) {
    let mut seen = Vec::new();
    let ok = wait_until(WAIT, || {
        seen = versions(c, path);
        seen.len() == n && seen.iter().all(|(_, r)| *r >= rd)
    });
    assert!(
        ok,
        "{why}: {} should have {n} complete versions at RD {rd}, has (version, RD) {seen:?}\n\
         log of peer 1:\n{}",
        path.display(),
        c.log(0)
    );
}

/// Waits until peer 1 counted peer `id` lost (not heard for holder_timeout).
fn wait_lost(c: &Cluster, id: u32) {
    let said = format!("peer {id} was not heard for");
    let lost = wait_until(WAIT, || c.full_log(0).contains(&said));
    assert!(lost, "peer {id} counted lost:\n{}", c.log(0));
}

/// `peerstash restore PATH --version N --to OUT` on peer 1; the bytes restored.
fn restore_version(c: &Cluster, path: &Path, version: u64, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    let v = version.to_string();
    let args = ["restore", text(path), "--version", &v, "--to", text(out)];
    c.cli_ok(0, &args, 0);
    std::fs::read(out).unwrap()
}

/// Cases 3a and 3b: three versions of a file (keep_versions = 3) and a file deleted locally
/// (keep_deleted = 1h), at RD 2 on peers 2 and 3 (peer 4 has no room then). Peer 4 gets room;
/// peer 2 retires (counted lost after 5 s): every kept version, old ones and the deleted file
/// included, is back at RD 2 (from the copies on peer 3, as the local file has other content or
/// is gone). Then peer 3 retires too: everything still restores, from peer 4 alone. On main,
/// only the newest version of the file on disk was repaired: the rest fell to RD 0.
#[test]
fn kept_versions_and_deleted_files_are_repaired_from_the_peers_copies() {
    repaired_from_the_peers_copies(false);
}

/// The same with an encrypted folder: the sealed bodies fetched are sent again as they are
/// (their hashes are the ones recorded), and every version still opens.
#[test]
fn encrypted_kept_versions_are_repaired_from_the_peers_copies() {
    repaired_from_the_peers_copies(true);
}

fn repaired_from_the_peers_copies(encrypt: bool) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Cluster::start_specs(vec![
        spec("0", watch_encrypted(&dir, 2, encrypt)),
        spec("50MB", String::new()),
        spec("50MB", String::new()),
        spec("0", String::new()),
    ]);
    let (f, g) = (dir.join("f.bin"), dir.join("gone.bin"));
    let mut contents = Vec::new();
    for v in 1..=3u64 {
        let bytes = random_bytes(150_000 + v as usize * 1000);
        std::fs::write(&f, &bytes).unwrap();
        contents.push(bytes);
        wait_versions_at(&c, &f, v as usize, 2, "backed up");
    }
    let gone = random_bytes(100_000);
    std::fs::write(&g, &gone).unwrap();
    wait_versions_at(&c, &g, 1, 2, "backed up");
    if encrypt {
        let listed = c.cli_ok(0, &["versions", text(&f)], 0);
        assert_eq!(listed.matches("(encrypted)").count(), 3, "{listed}");
    }
    std::fs::remove_file(&g).unwrap();
    let said = format!("{} was deleted locally", g.display());
    let marked = wait_until(WAIT, || c.full_log(0).contains(&said));
    assert!(marked, "gone.bin noted deleted:\n{}", c.log(0));
    assert_eq!(c.peer(3).state().used_bytes, 0, "peer 4 holds nothing yet");

    // Peer 4 gets room; peer 2 retires.
    c.rewrite_config(3, "50MB", "");
    c.reload(3);
    c.stop(1);
    wait_lost(&c, 2);
    wait_versions_at(&c, &f, 3, 2, "after peer 2 retired");
    wait_versions_at(&c, &g, 1, 2, "after peer 2 retired (deleted file)");

    // Peer 3 retires too: peer 4 alone has every kept version.
    c.stop(2);
    let out = root.path().join("out");
    for (v, bytes) in contents.iter().enumerate() {
        let got = restore_version(&c, &f, v as u64 + 1, &out);
        assert!(got == *bytes, "version {} of f.bin restored whole", v + 1);
    }
    assert!(
        restore_version(&c, &g, 1, &out) == gone,
        "gone.bin restored"
    );
}

/// Case 3, reclaim: `peerstash reclaim 0` on peer 2, the only holder of an RD 1 folder's chunks
/// (an older version, and a file deleted locally: nothing the local disk can give again),
/// while peer 3 has room. Peer 2 hands each chunk on to peer 3 before dropping it: afterwards
/// every kept version restores, with peer 2 holding nothing. On main peer 2 dropped them at once
/// and only the newest version of the file still on disk came back (from the local file).
#[test]
fn reclaim_hands_the_last_copy_on_before_dropping_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let c = Cluster::start_specs(vec![
        spec("0", watch(&dir, 1)),
        spec("50MB", String::new()),
        spec("0", String::new()),
    ]);
    let (f, g) = (dir.join("f.bin"), dir.join("gone.bin"));
    let old = random_bytes(140_000);
    std::fs::write(&f, &old).unwrap();
    wait_versions_at(&c, &f, 1, 1, "backed up");
    std::fs::write(&f, random_bytes(141_000)).unwrap();
    wait_versions_at(&c, &f, 2, 1, "backed up");
    let gone = random_bytes(90_000);
    std::fs::write(&g, &gone).unwrap();
    wait_versions_at(&c, &g, 1, 1, "backed up");
    std::fs::remove_file(&g).unwrap();
    let said = format!("{} was deleted locally", g.display());
    let marked = wait_until(WAIT, || c.full_log(0).contains(&said));
    assert!(marked, "gone.bin noted deleted:\n{}", c.log(0));

    // Peer 3 gets room; peer 2 gives all of its back.
    c.rewrite_config(2, "50MB", "");
    c.reload(2);
    let has_room = wait_until(WAIT, || c.peer(2).state().quota_bytes > 0);
    assert!(has_room, "peer 3's new quota applied:\n{}", c.log(2));
    c.cli_ok(1, &["reclaim", "0"], 0);
    assert_eq!(
        c.peer(1).state().used_bytes,
        0,
        "peer 2 holds nothing after reclaim 0"
    );
    assert_eq!(chunk_files_on_disk(c.peer(1)), 0, "peer 2's store is empty");

    let out = root.path().join("out");
    assert!(
        restore_version(&c, &f, 1, &out) == old,
        "f.bin version 1 restored"
    );
    assert!(
        restore_version(&c, &g, 1, &out) == gone,
        "gone.bin restored"
    );
}

/// Case 12: a 3 MB file at RD 1 under two peers' 1 MB quotas. It is refused with a message that
/// says what to do (log and `status`), the chunks of it the peers had taken are freed (DELETE
/// of the unfinished version), it is not sent again meanwhile, and a new 8 KB file then gets
/// its copy. On main the partial version stayed on the full peers, retried for ever, and the
/// small file got no copy.
#[test]
fn a_file_too_big_for_the_lan_is_refused_and_starves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let c = Cluster::start_specs(vec![
        spec("0", watch(&dir, 1)),
        spec("1MB", String::new()),
        spec("1MB", String::new()),
    ]);
    let big = dir.join("big.bin");
    std::fs::write(&big, random_bytes(3_000_000)).unwrap();
    let said = format!(
        "{}: does not fit on the peers (3000000 bytes, peers full): not backed up; free space \
         or lower RD",
        big.display()
    );
    let refused = wait_until(Duration::from_secs(55), || c.full_log(0).contains(&said));
    assert!(refused, "big.bin refused with {said:?}:\n{}", c.log(0));
    let status = c.cli(0, &["status"]);
    assert!(
        output_text(&status).contains(&said),
        "status says why big.bin is not backed up:\n{}",
        output_text(&status)
    );
    let freed = wait_until(WAIT, || {
        c.peer(1).state().used_bytes == 0 && c.peer(2).state().used_bytes == 0
    });
    assert!(
        freed,
        "the peers freed big.bin's chunks: {} and {} bytes used",
        c.peer(1).state().used_bytes,
        c.peer(2).state().used_bytes
    );
    assert!(
        versions(&c, &big).is_empty(),
        "no version of big.bin kept: {:?}",
        c.peer(0).state().versions_of(&big)
    );

    let small = dir.join("small.bin");
    std::fs::write(&small, random_bytes(8192)).unwrap();
    wait_versions_at(
        &c,
        &small,
        1,
        1,
        "the small file backed up after the refusal",
    );
    // Not sent again meanwhile: the peers hold the small file only.
    std::thread::sleep(Duration::from_secs(3));
    let hosted = c.peer(1).state().used_bytes + c.peer(2).state().used_bytes;
    assert!(
        hosted <= 2 * charged(c.peer(1), 8192),
        "only the small file is on the peers: {hosted} bytes"
    );
    assert_eq!(
        c.full_log(0).matches(&said).count(),
        1,
        "refused once, not tried again and again:\n{}",
        c.log(0)
    );
}
