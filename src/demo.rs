//! `peerstash demo`: a cluster of 4 real peers on 127.0.0.1 (a random multicast group, TTL 0:
//! nothing leaves this machine) that backs up a watched folder, makes a new version, loses a
//! peer and restores every file, saying what happens in plain words. Cleans up after itself.
//! The cluster is `crate::cluster`'s, as in the tests.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cluster::{toml_path, Cluster, PeerSpec, Programs};

const PEERS: usize = 4;
const RD: u32 = 2;
/// Every wait of the demo is bounded: it ends, well or badly, in about a minute at most.
const STEP_TIMEOUT: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(200);

/// Runs the demo with `programs` (the daemon and the command line).
pub fn run(programs: Programs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cluster = Cluster::new(programs, "peerstash-demo-")?;
    cluster.ready_timeout = STEP_TIMEOUT;
    match demo(&mut cluster) {
        // The folder is removed as the cluster drops, after this line.
        Ok(()) => {
            crate::outln!(
                "\nAll done in {:.1} s. The peers are stopped and {} is removed.",
                started.elapsed().as_secs_f64(),
                cluster.root().display()
            );
            Ok(())
        }
        Err(e) => {
            let kept = cluster.keep();
            bail!(
                "{e:#}\n(the demo's folder is kept for a look: {}, daemon logs in peer*/daemon.log)",
                kept.display()
            )
        }
    }
}

fn demo(cluster: &mut Cluster) -> anyhow::Result<()> {
    let root = cluster.root().to_owned();
    let watched = root.join("watched");
    std::fs::create_dir_all(&watched)?;
    let [_, a, b, _] = cluster.mc.ip().octets();
    crate::outln!("peerstash demo: {PEERS} peers on this machine, talking over multicast group");
    crate::outln!(
        "239.{a}.{b}.x port {} on 127.0.0.1 with TTL 0 (nothing leaves this machine).",
        cluster.mc.port()
    );
    crate::outln!(
        "Peer 1 watches {} and keeps every file at {RD} copies on other peers;",
        watched.display()
    );
    crate::outln!("peers 2-{PEERS} each offer 100 MB of disk.\n");

    cluster.add_peer(PeerSpec {
        extra: format!(
            "\n[[watch]]\npath = {}\nreplication = {RD}\nkeep_versions = 1\n\
             keep_deleted = \"1h\"\nexclude = [\"*.tmp\"]\nquiet = \"300ms\"\n",
            toml_path(&watched)
        ),
        ..PeerSpec::new("0")
    })?;
    for _ in 2..=PEERS {
        cluster.add_peer(PeerSpec::new("100MB"))?;
    }
    cluster.start_all()?;
    crate::outln!("[1] Started {PEERS} peers.");

    let files: Vec<(&str, Vec<u8>)> = vec![
        ("notes.txt", b"Buy milk. Back up the photos.\n".to_vec()),
        ("photo.jpg", pseudo_random(1_500_000, 1)),
        ("exactly-two-chunks.bin", pseudo_random(128_000, 2)),
        ("empty.txt", Vec::new()),
        ("draft.tmp", b"excluded by the *.tmp pattern".to_vec()),
    ];
    crate::outln!("[2] Writing {} files into the watched folder:", files.len());
    for (name, bytes) in &files {
        std::fs::write(watched.join(name), bytes)?;
        crate::outln!("      {name:<24} {:>9} bytes", bytes.len());
    }
    crate::outln!("    Peer 1 notices them, waits until they stop changing, and backs them up:");
    let home = cluster.peer(0);
    let wanted: Vec<PathBuf> = files
        .iter()
        .filter(|(n, _)| !n.ends_with(".tmp"))
        .map(|(n, _)| watched.join(n))
        .collect();
    let mut reported = HashSet::new();
    wait_for("the backups", || {
        let Ok(s) = home.try_state() else {
            return false;
        };
        for f in &s.files {
            if f.complete && f.min_rd() >= RD && reported.insert(f.file_id.clone()) {
                crate::outln!(
                    "      backed up {:<24} {:>3} chunks, each on {} peers",
                    name(&f.path),
                    f.chunks.len(),
                    f.min_rd()
                );
            }
        }
        wanted.iter().all(|w| {
            s.files.iter().any(|f| {
                &f.path == w && f.complete && f.chunks.iter().all(|c| c.perceived_rd >= RD)
            })
        })
    })?;
    let s = home.try_state()?;
    if s.files.iter().any(|f| name(&f.path).ends_with(".tmp")) {
        bail!("the excluded draft.tmp was backed up");
    }
    crate::outln!("    draft.tmp is excluded (*.tmp) and was not backed up.");
    let hosted: Vec<String> = cluster.peers[1..]
        .iter()
        .map(|p| {
            let chunks = p.try_state().map_or(0, |s| s.stored.len());
            format!("peer {} holds {chunks} chunks", p.id)
        })
        .collect();
    crate::outln!("    {}.", hosted.join(", "));

    crate::outln!(
        "\n[3] Changing notes.txt: a new version is backed up, then the old one is deleted"
    );
    crate::outln!("    from the peers (the folder keeps 1 version).");
    let notes = watched.join("notes.txt");
    std::fs::write(&notes, b"Buy milk and bread. Back up the photos.\n")?;
    wait_for("version 2 of notes.txt", || {
        home.try_state()
            .is_ok_and(|s| match s.versions_of(&notes)[..] {
                [only] => only.version == 2 && only.min_rd() >= RD,
                _ => false,
            })
    })?;
    crate::outln!("    notes.txt is now at version 2 on {RD}+ peers; version 1 is gone.");

    crate::outln!("\n[4] Killing peer 2 with SIGKILL, as if its computer had died.");
    cluster.kill(1);

    crate::outln!(
        "\n[5] Deleting the originals (their backups stay: the folder keeps deleted files'"
    );
    crate::outln!(
        "    last version for an hour) and restoring every file from the peers still up:"
    );
    let restored = root.join("restored");
    std::fs::create_dir_all(&restored)?;
    let mut expected: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .filter(|(n, _)| !n.ends_with(".tmp"))
        .map(|(n, b)| (watched.join(n), b.clone()))
        .collect();
    expected[0].1 = std::fs::read(&notes)?;
    for (path, bytes) in &expected {
        std::fs::remove_file(path)?;
        let to = restored.join(name(path));
        let out = cluster.cli(
            0,
            [
                OsStr::new("restore"),
                path.as_os_str(),
                OsStr::new("--to"),
                to.as_os_str(),
            ],
        )?;
        if !out.status.success() {
            bail!(
                "restoring {} failed ({}): {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let got = std::fs::read(&to).with_context(|| format!("reading {}", to.display()))?;
        if got != *bytes {
            bail!("{} was restored with different bytes", path.display());
        }
        crate::outln!(
            "      restored {:<24} {:>9} bytes, identical to the original",
            name(path),
            bytes.len()
        );
    }
    crate::outln!("    Every file came back byte for byte, with one peer dead.");

    crate::outln!("\n[6] Stopping the peers.");
    cluster.stop_all();
    Ok(())
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Polls `check` every 200 ms until it holds; fails after STEP_TIMEOUT.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + STEP_TIMEOUT;
    while Instant::now() < end {
        if check() {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    bail!(
        "gave up waiting for {what} after {}s",
        STEP_TIMEOUT.as_secs()
    )
}

/// Reproducible filler bytes (not compressible, not secret).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
