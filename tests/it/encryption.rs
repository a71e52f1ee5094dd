//! Encrypted chunks (SPEC §3), with real daemons on loopback: what the hosts keep and what
//! crosses the LAN holds none of the file's plaintext; a restore gives the file back byte for
//! byte, even with a damaged copy on one holder; without the master key nothing is readable.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use peerstash::protocol::seal::PIECE;

/// A file of `len` bytes: a random 32-byte marker over and over (so any piece of plaintext of
/// 32 bytes or more that leaks contains it, whatever the alignment).
fn marked_file(path: &Path, len: usize) -> (Vec<u8>, Vec<u8>) {
    let marker = random_bytes(32);
    let bytes: Vec<u8> = marker.iter().copied().cycle().take(len).collect();
    std::fs::write(path, &bytes).unwrap();
    (marker, bytes)
}

/// Whether `haystack` holds the marker's first 16 bytes at any offset.
fn leaks(haystack: &[u8], marker: &[u8]) -> bool {
    haystack.windows(16).any(|w| w == &marker[..16])
}

/// Every byte a peer keeps in its chunk store.
fn store_bytes(peer: &Peer) -> Vec<u8> {
    let dir = peer.dir.join("state").join("chunks");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            all.extend(std::fs::read(path).unwrap());
        }
    }
    all
}

fn backed_up_at(c: &Cluster, path: &Path, rd: u32) -> bool {
    c.peer(0)
        .try_state()
        .ok()
        .is_some_and(|s| s.versions_of(path).iter().any(|f| f.min_rd() >= rd))
}

#[test]
fn an_encrypted_folder_shows_no_plaintext_to_its_hosts_nor_the_lan() {
    let folder = tempfile::tempdir().unwrap();
    let watch = format!(
        "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"200ms\"\nencrypt = true\n",
        folder.path().display()
    );
    let mut c = Cluster::start_with(&["0", "10 MiB", "10 MiB", "10 MiB"], &[&watch]);
    // A daemon started by hand makes its master key when a folder needs it, private.
    let key = c.peer(0).dir.join("master.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode, std::fs::metadata(&key).unwrap().len()), (0o600, 32));

    let lan = Listener::join(c.mdb).record();
    let file = folder.path().join("secret.bin");
    let len = 3 * PIECE + 8_048;
    let (marker, bytes) = marked_file(&file, len);
    assert!(
        wait_until(Duration::from_secs(30), || backed_up_at(&c, &file, 2)),
        "not backed up at RD 2:\n{}",
        c.dump()
    );
    let heard = lan.stop();

    // On the LAN: the PUTCHUNKs of its 4 chunks, 64000 bytes each but the last (SPEC §1).
    let mut sizes = std::collections::BTreeMap::new();
    for d in &heard {
        let fields = header_fields(d);
        if fields.get(1).map(String::as_str) == Some("PUTCHUNK") {
            let body = d.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            sizes.insert(fields[4].parse::<u32>().unwrap(), d.len() - body);
        }
        assert!(!leaks(d, &marker), "plaintext on the LAN: {:?}", fields);
    }
    let expected = [(0, 64_000), (1, 64_000), (2, 64_000), (3, 8_048 + 16)];
    assert_eq!(sizes, expected.into_iter().collect(), "chunk sizes on MDB");

    // On the hosts: ciphertext only, on at least the 2 holders.
    let mut holders = 0;
    for i in 1..4 {
        let kept = store_bytes(c.peer(i));
        holders += usize::from(kept.len() > len / 2);
        assert!(
            !leaks(&kept, &marker),
            "plaintext in peer {}'s store",
            i + 1
        );
    }
    assert!(holders >= 2, "{holders} peers hold the file");

    // Back byte for byte.
    let out = folder.path().join("back.bin");
    assert!(
        restore_to(&c, 0, &file, &out) == bytes,
        "restored bytes differ"
    );

    // A damaged copy on one holder: detected, and the chunk comes from the other one.
    let holder = (1..4)
        .find(|i| store_bytes(c.peer(*i)).len() > len / 2)
        .unwrap();
    damage_every_chunk(c.peer(holder));
    assert!(
        restore_to(&c, 0, &file, &out) == bytes,
        "restored bytes differ"
    );
    c.stop_all();
}

#[test]
fn backup_encrypt_needs_the_master_key_to_be_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(&["0", "10 MiB", "10 MiB"]);
    let key: PathBuf = c.peer(0).dir.join("master.key");
    // Nothing encrypted yet: no key made (a peer that encrypts nothing writes no key).
    assert!(!key.exists());
    let file = dir.path().join("notes.txt");
    let (_, bytes) = marked_file(&file, 100_000);
    // The first backup asked to encrypt makes the key (private), and says so in the log.
    c.cli_ok(0, &["backup", file.to_str().unwrap(), "--encrypt"], 0);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode, std::fs::metadata(&key).unwrap().len()), (0o600, 32));
    assert!(c.log(0).contains("made a new master key"), "{}", c.log(0));
    let listed = c.cli_ok(0, &["versions", file.to_str().unwrap()], 0);
    assert!(listed.contains("(encrypted)"), "{listed}");
    let out_file = dir.path().join("back.txt");
    let restore = [
        "restore",
        file.to_str().unwrap(),
        "--to",
        out_file.to_str().unwrap(),
    ];
    c.cli_ok(0, &restore, 0);
    assert!(std::fs::read(&out_file).unwrap() == bytes);

    // The key lost: the start stops, naming the key the catalog's versions need.
    std::fs::remove_file(&out_file).unwrap();
    let kept = std::fs::read(&key).unwrap();
    let fp =
        peerstash::protocol::seal::MasterKey::new(kept.clone().try_into().unwrap()).fingerprint();
    std::fs::remove_file(&key).unwrap();
    c.stop(0);
    c.spawn(0);
    assert_ne!(c.wait_exit(0, Duration::from_secs(20)), Some(0));
    assert!(c.full_log(0).contains(&fp), "{}", c.log(0));
    assert!(!key.exists(), "no key made behind the admin's back");

    // Another key, on the admin's word: the restore names the key it needs, writes nothing.
    c.spawn_with(0, &[], &["--new-master-key"]);
    c.wait_ready(0);
    let out = c.cli(0, &restore);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("encrypted under master key {fp}")),
        "{err}"
    );
    assert!(!out_file.exists());

    // The right key back: restored.
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, kept).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // (On the admin's word again: versions may have been made under the other key since.)
    c.stop(0);
    c.spawn_with(0, &[], &["--new-master-key"]);
    c.wait_ready(0);
    c.cli_ok(0, &restore, 0);
    assert!(std::fs::read(&out_file).unwrap() == bytes);
    c.stop_all();
}

#[test]
fn a_folder_switched_to_encrypt_is_backed_up_again_and_its_clear_copies_go() {
    let folder = tempfile::tempdir().unwrap();
    let watch = |encrypt: bool| {
        format!(
            "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"200ms\"\nencrypt = {encrypt}\n",
            folder.path().display()
        )
    };
    let c = Cluster::start_with(&["0", "10 MiB", "10 MiB"], &[&watch(false)]);
    let file = folder.path().join("plain.bin");
    let (marker, bytes) = marked_file(&file, 2 * PIECE + 5);
    let hosted_clear = || (1..3).any(|i| leaks(&store_bytes(c.peer(i)), &marker));
    assert!(
        wait_until(Duration::from_secs(30), || backed_up_at(&c, &file, 2)
            && hosted_clear()),
        "not backed up in clear:\n{}",
        c.dump()
    );

    c.rewrite_config(0, "0", &watch(true));
    c.reload(0);
    let encrypted = || {
        let listed = c.cli_ok(0, &["versions", file.to_str().unwrap()], 0);
        listed.contains("(encrypted)") && backed_up_at(&c, &file, 2)
    };
    assert!(
        wait_until(Duration::from_secs(30), || encrypted() && !hosted_clear()),
        "still in clear on a host:\n{}",
        c.dump()
    );
    let out = folder.path().join("back.bin");
    assert!(restore_to(&c, 0, &file, &out) == bytes);
}

/// Where the fd of `path` in process `pid` stands (`pos` of /proc/PID/fdinfo), if it is open.
fn fd_position(pid: u32, path: &Path) -> Option<u64> {
    let fds = PathBuf::from(format!("/proc/{pid}/fd"));
    std::fs::read_dir(fds).ok()?.flatten().find_map(|entry| {
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(path) {
            return None;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let text = std::fs::read_to_string(info).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("pos:"))
            .and_then(|p| p.trim().parse().ok())
    })
}

/// Writes `piece` at `at` in place, and sets the mtime back to `mtime`: size and mtime as
/// before, as a careful attacker (or `touch -r`) leaves them.
fn rewrite_in_place(path: &Path, at: u64, piece: &[u8], mtime: std::time::SystemTime) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(piece, at).unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(mtime))
        .unwrap();
}

/// The bodies of the PUTCHUNKs of chunk `no` heard, with their fileIds.
fn putchunks_of(heard: &[Vec<u8>], no: u32) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for d in heard {
        let fields = header_fields(d);
        if fields.get(1).map(String::as_str) != Some("PUTCHUNK")
            || fields.get(4).and_then(|n| n.parse::<u32>().ok()) != Some(no)
        {
            continue;
        }
        let body = d.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        found.push((fields[3].to_lowercase(), d[body..].to_vec()));
    }
    found
}

/// A file of about 16 MB whose last piece an attacker rewrites in place: its bytes, and the
/// original and rewritten last piece.
struct Target {
    file: PathBuf,
    len: u64,
    original: Vec<u8>,
    mtime: std::time::SystemTime,
    last: u32,
    at: u64,
    p1: Vec<u8>,
    p2: Vec<u8>,
}

impl Target {
    fn new(dir: &Path) -> Target {
        use peerstash::protocol::seal::Cut;
        let file = dir.canonicalize().unwrap().join("big.bin");
        // Large enough that the daemon reads the last piece well after the whole file was
        // hashed (it reads chunks only a few batches ahead of what the holders took).
        let len = 260 * PIECE as u64 + 5_000;
        let original = random_bytes(len as usize);
        std::fs::write(&file, &original).unwrap();
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        let last = Cut::Sealed.count(len) as u32 - 1;
        let at = Cut::Sealed.offset(peerstash::protocol::ChunkNo(last));
        let p1 = original[at as usize..].to_vec();
        let p2 = p1.iter().map(|b| b ^ 0x5a).collect();
        Target {
            file,
            len,
            original,
            mtime,
            last,
            at,
            p1,
            p2,
        }
    }

    fn path(&self) -> &str {
        self.file.to_str().unwrap()
    }

    /// Starts `peerstash backup --encrypt` on peer `i`; once the daemon has hashed the whole
    /// file (its descriptor, shared by the CLI that opened it and the daemon, at its end: the
    /// chunks are then read by position), rewrites the last piece before the daemon reads it
    /// to seal it, and sets the mtime back. The CLI's output.
    fn backup_while_rewriting(&self, c: &Cluster, i: usize) -> std::process::Output {
        let cli = self.start_backup(c, i);
        let hashed = self.wait_hashed(c, i, &cli);
        rewrite_in_place(&self.file, self.at, &self.p2, self.mtime);
        let out = cli.wait_with_output().unwrap();
        assert!(
            hashed.is_ok(),
            "the file was not seen hashed whole: {hashed:?}"
        );
        out
    }

    fn start_backup(&self, c: &Cluster, i: usize) -> std::process::Child {
        std::process::Command::new(PEERSTASH)
            .arg("--config")
            .arg(&c.peer(i).config)
            .args(["backup", self.path(), "--encrypt", "-r", "2"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits (30 s at most) until the file's descriptor is at its end; Err: the positions seen.
    fn wait_hashed(
        &self,
        c: &Cluster,
        i: usize,
        cli: &std::process::Child,
    ) -> Result<(), Vec<[Option<u64>; 2]>> {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while std::time::Instant::now() < end {
            let pos = [c.pid(i).unwrap(), cli.id()].map(|pid| fd_position(pid, &self.file));
            if pos.contains(&Some(self.len)) {
                return Ok(());
            }
            if seen.last() != Some(&pos) {
                seen.push(pos);
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        Err(seen)
    }

    /// Puts the last piece back: size, mtime and content as the first attempt saw them.
    fn put_back(&self) {
        rewrite_in_place(&self.file, self.at, &self.p1, self.mtime);
    }

    /// What was heard on MDB shows no key and nonce used twice: both pieces of the last chunk
    /// were sealed and sent (the attack happened), each opens only under its own fileId's key,
    /// no chunk id (fileId and chunkNo: key and nonce) carries two different bodies, and the
    /// two bodies do not share a keystream (C1 xor C2 != P1 xor P2).
    /// Puts the file back as it was and backs it up again; then checks what MDB carried (since
    /// `lan` started) with `check_never_two_bodies`, and that a restore gives back the original.
    fn put_back_and_back_up_again(&self, c: &Cluster, lan: Recording, dir: &Path) {
        self.put_back();
        c.cli_ok(0, &["backup", self.path(), "--encrypt", "-r", "2"], 0);
        std::thread::sleep(Duration::from_millis(500));
        self.check_never_two_bodies(c, &lan.stop());
        let out = dir.join("back.bin");
        assert!(
            restore_to(c, 0, &self.file, &out) == self.original,
            "restored bytes differ"
        );
    }

    fn check_never_two_bodies(&self, c: &Cluster, heard: &[Vec<u8>]) {
        use peerstash::protocol::seal::MasterKey;
        use peerstash::protocol::{ChunkNo, FileId};
        let bodies = putchunks_of(heard, self.last);
        let key = std::fs::read(c.peer(0).dir.join("master.key")).unwrap();
        let master = MasterKey::new(key.try_into().unwrap());
        let opened = |id: &str, body: &[u8]| {
            let id = FileId::parse(id).unwrap();
            master.file_key(&id).open(ChunkNo(self.last), body).ok()
        };
        let sealing = |piece: &Vec<u8>| -> Vec<&(String, Vec<u8>)> {
            (bodies.iter())
                .filter(|(id, b)| opened(id, b).as_ref() == Some(piece))
                .collect()
        };
        let (sealed_p2, sealed_p1) = (sealing(&self.p2), sealing(&self.p1));
        assert!(
            !sealed_p2.is_empty() && !sealed_p1.is_empty(),
            "both pieces of chunk {} heard on MDB ({} PUTCHUNKs of it, {} datagrams):\n{}",
            self.last,
            bodies.len(),
            heard.len(),
            c.log(0)
        );
        for (id, body) in &bodies {
            for (other_id, other) in &bodies {
                assert!(
                    id != other_id || body == other,
                    "chunk {} of {id} sent with two different bodies",
                    self.last
                );
            }
        }
        let xor = |a: &[u8], b: &[u8]| -> Vec<u8> { a.iter().zip(b).map(|(x, y)| x ^ y).collect() };
        let (c2, c1) = (&sealed_p2[0].1, &sealed_p1[0].1);
        let n = self.p1.len();
        assert_ne!(
            xor(&c2[..n], &c1[..n]),
            xor(&self.p2, &self.p1),
            "the two bodies share a keystream"
        );
        assert!(
            opened(&sealed_p1[0].0, c2).is_none(),
            "each opens only under its own key"
        );
    }
}

/// Issue 23, case 6: during a `backup --encrypt`, the last piece is rewritten in place (same
/// size, mtime set back) once the daemon has hashed the whole file: the backup seals and sends
/// the rewritten piece, then fails as "changed". The file is put back and backed up again: it
/// has the same identity as the first attempt. On MDB, no key and nonce carry two bodies
/// (`Target::check_never_two_bodies`), and the restore gives back the original bytes.
#[test]
fn a_piece_changed_during_an_encrypted_backup_is_never_sealed_twice_under_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(&["0", "100 MiB", "100 MiB"]);
    let t = Target::new(dir.path());
    let lan = Listener::join(c.mdb).record();
    let first = t.backup_while_rewriting(&c, 0);
    assert_eq!(
        first.status.code(),
        Some(1),
        "the first backup reports the change: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    t.put_back_and_back_up_again(&c, lan, dir.path());
}

/// Issue 23, case 6, across a kill: a `backup --encrypt` is killed (kill -9) after sending part
/// of the file; the next one resumes that version and, while it reads, the last piece (not sent
/// before the kill) is rewritten in place, mtime set back: sealed, sent, then "changed". Put
/// back and backed up again, the version is not resumed (its last chunk is now recorded with
/// the rewritten bytes; resuming would fail on it every time, or seal the original under the
/// same key and nonce): a new version under a key of its own is made and completes. On MDB no
/// key and nonce carry two bodies, and the restore gives back the original bytes.
#[test]
fn a_resumed_encrypted_backup_never_seals_other_bytes_under_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(&["0", "100 MiB", "100 MiB"]);
    let t = Target::new(dir.path());
    let lan = Listener::join(c.mdb).record();
    let cli = t.start_backup(&c, 0);
    let hashed = t.wait_hashed(&c, 0, &cli);
    assert!(
        hashed.is_ok(),
        "the file was not seen hashed whole: {hashed:?}"
    );
    // A few chunks sent, far from all 261.
    std::thread::sleep(Duration::from_millis(300));
    c.kill(0);
    let killed = cli.wait_with_output().unwrap();
    assert_ne!(killed.status.code(), Some(0), "the backup was cut short");
    c.spawn(0);
    c.wait_ready(0);

    let resumed = t.backup_while_rewriting(&c, 0);
    assert_eq!(
        resumed.status.code(),
        Some(1),
        "the resumed backup reports the change: {}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        c.log(0).contains("its version 1 is left as it was"),
        "version 1 was resumed:\n{}",
        c.log(0)
    );
    t.put_back_and_back_up_again(&c, lan, dir.path());
}
