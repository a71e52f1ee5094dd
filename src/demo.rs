//! `peerstash demo`: a cluster of 4 real peers on 127.0.0.1 (a random multicast group, TTL 0:
//! nothing leaves this machine) that backs up a watched folder, makes a new version, loses a
//! peer and restores every file, saying what happens in plain words. Cleans up after itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::control::{self, PeerState, Request, VersionInfo};

const PEERS: usize = 4;
const RD: u64 = 2;
/// Every wait of the demo is bounded: it ends, well or badly, in about a minute at most.
const STEP_TIMEOUT: Duration = Duration::from_secs(40);

struct Peer {
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The cluster; its processes are killed whatever way the demo ends.
struct Cluster {
    peers: Vec<Peer>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.peers {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Runs the demo. `daemon` is the command that runs a peer given `--config PATH`.
pub async fn run(daemon: Vec<String>) -> anyhow::Result<()> {
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("peerstash-demo-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let root = work.path().canonicalize()?;
    let outcome = demo(&daemon, &root).await;
    match outcome {
        Ok(()) => {
            println!(
                "\nAll done in {:.1} s. The peers are stopped and {} is removed.",
                started.elapsed().as_secs_f64(),
                root.display()
            );
            Ok(())
        }
        Err(e) => {
            let kept = work.keep();
            bail!(
                "{e:#}\n(the demo's folder is kept for a look: {}, daemon logs in peer*/daemon.log)",
                kept.display()
            )
        }
    }
}

async fn demo(daemon: &[String], root: &Path) -> anyhow::Result<()> {
    let watched = root.join("watched");
    std::fs::create_dir_all(&watched)?;
    let (group, port) = random_channels();
    println!("peerstash demo: {PEERS} peers on this machine, talking over multicast group");
    println!("239.{group}.x port {port} on 127.0.0.1 with TTL 0 (nothing leaves this machine).");
    println!(
        "Peer 1 watches {} and keeps every file at {RD} copies on other peers;",
        watched.display()
    );
    println!("peers 2-{PEERS} each offer 100 MB of disk.\n");

    let mut cluster = Cluster { peers: Vec::new() };
    for id in 1..=PEERS {
        let dir = root.join(format!("peer{id}"));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("control.sock");
        let config = dir.join("peerstash.toml");
        let watch = if id == 1 {
            format!(
                "\n[[watch]]\npath = \"{}\"\nreplication = {RD}\nkeep_versions = 1\n\
                 keep_deleted = \"1h\"\nexclude = [\"*.tmp\"]\nquiet = \"300ms\"\n",
                watched.display()
            )
        } else {
            String::new()
        };
        let quota = if id == 1 { "0" } else { "100MB" };
        std::fs::write(
            &config,
            format!(
                "[peer]\nid = {id}\nprotocol = \"1.0\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n\n\
                 [network]\ninterface = \"127.0.0.1\"\nmc = \"239.{group}.1:{port}\"\n\
                 mdb = \"239.{group}.2:{}\"\nmdr = \"239.{group}.3:{}\"\nttl = 0\n\n\
                 [storage]\nquota = \"{quota}\"\n{watch}",
                dir.join("state").display(),
                socket.display(),
                port + 1,
                port + 2
            ),
        )?;
        let log = dir.join("daemon.log");
        cluster.peers.push(Peer {
            config,
            socket,
            log,
            child: None,
        });
    }
    for p in &mut cluster.peers {
        let log = std::fs::File::create(&p.log)?;
        let child = Command::new(&daemon[0])
            .args(&daemon[1..])
            .arg("--config")
            .arg(&p.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", daemon[0]))?;
        p.child = Some(child);
    }
    for (i, p) in cluster.peers.iter().enumerate() {
        wait_for(&format!("peer {} to start", i + 1), || async {
            state(&p.socket).await.is_ok()
        })
        .await?;
    }
    println!("[1] Started {PEERS} peers.");

    let files: Vec<(&str, Vec<u8>)> = vec![
        ("notes.txt", b"Buy milk. Back up the photos.\n".to_vec()),
        ("photo.jpg", pseudo_random(1_500_000, 1)),
        ("exactly-two-chunks.bin", pseudo_random(128_000, 2)),
        ("empty.txt", Vec::new()),
        ("draft.tmp", b"excluded by the *.tmp pattern".to_vec()),
    ];
    println!("[2] Writing {} files into the watched folder:", files.len());
    for (name, bytes) in &files {
        std::fs::write(watched.join(name), bytes)?;
        println!("      {name:<24} {:>9} bytes", bytes.len());
    }
    println!("    Peer 1 notices them, waits until they stop changing, and backs them up:");
    let home = &cluster.peers[0].socket.clone();
    let wanted: Vec<PathBuf> = files
        .iter()
        .filter(|(n, _)| !n.ends_with(".tmp"))
        .map(|(n, _)| watched.join(n))
        .collect();
    let mut reported = std::collections::HashSet::new();
    let end = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Ok(s) = state(home).await {
            for f in &s.files {
                let min = f.chunks.iter().map(|c| c.perceived_rd).min().unwrap_or(0);
                if u64::from(min) >= RD && f.complete && reported.insert(f.file_id.clone()) {
                    println!(
                        "      backed up {:<24} {:>3} chunks, each on {} peers",
                        name(&f.path),
                        f.chunks.len(),
                        min
                    );
                }
            }
            let all = wanted.iter().all(|w| {
                s.files.iter().any(|f| {
                    &f.path == w
                        && f.complete
                        && f.chunks.iter().all(|c| u64::from(c.perceived_rd) >= RD)
                })
            });
            if all {
                break;
            }
        }
        if Instant::now() > end {
            bail!(
                "gave up waiting for the backups after {}s",
                STEP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = state(home).await?;
    if s.files.iter().any(|f| name(&f.path).ends_with(".tmp")) {
        bail!("the excluded draft.tmp was backed up");
    }
    println!("    draft.tmp is excluded (*.tmp) and was not backed up.");
    let hosted: Vec<String> = futures_states(&cluster.peers[1..])
        .await
        .into_iter()
        .enumerate()
        .map(|(i, st)| {
            format!(
                "peer {} holds {} chunks",
                i + 2,
                st.map_or(0, |s| s.stored.len())
            )
        })
        .collect();
    println!("    {}.", hosted.join(", "));

    println!("\n[3] Changing notes.txt: a new version is backed up, then the old one is deleted");
    println!("    from the peers (the folder keeps 1 version).");
    let notes = watched.join("notes.txt");
    std::fs::write(&notes, b"Buy milk and bread. Back up the photos.\n")?;
    wait_for("version 2 of notes.txt", || async {
        let Ok(r) = control::call(
            home,
            &Request::Versions {
                path: notes.clone(),
            },
            &[],
            |_| {},
        )
        .await
        else {
            return false;
        };
        let versions: Vec<VersionInfo> =
            r.2.and_then(|d| serde_json::from_value(d).ok())
                .unwrap_or_default();
        versions.len() == 1
            && versions[0].version == 2
            && u64::from(versions[0].min_perceived_rd) >= RD
    })
    .await?;
    println!("    notes.txt is now at version 2 on {RD}+ peers; version 1 is gone.");

    println!("\n[4] Killing peer 2 with SIGKILL, as if its computer had died.");
    if let Some(mut c) = cluster.peers[1].child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }

    println!("\n[5] Deleting the originals (their backups stay: the folder keeps deleted files'");
    println!("    last version for an hour) and restoring every file from the peers still up:");
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
        let to = restored.join(path.file_name().unwrap_or_default());
        let (code, message, _) =
            control::client::restore(home, path, None, &to, false, |_| {}).await?;
        if code != 0 {
            bail!("restoring {} failed: {message}", path.display());
        }
        if std::fs::read(&to)? != *bytes {
            bail!("{} was restored with different bytes", path.display());
        }
        println!(
            "      restored {:<24} {:>9} bytes, identical to the original",
            name(path),
            bytes.len()
        );
    }
    println!("    Every file came back byte for byte, with one peer dead.");

    println!("\n[6] Stopping the peers.");
    for p in &mut cluster.peers {
        if let Some(c) = &p.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        if let Some(mut c) = p.child.take() {
            let _ = c.wait();
        }
    }
    Ok(())
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

async fn state(socket: &Path) -> anyhow::Result<PeerState> {
    let (code, message, data) = control::call(socket, &Request::State, &[], |_| {}).await?;
    if code != 0 {
        bail!("state failed: {message}");
    }
    Ok(serde_json::from_value(data.unwrap_or_default())?)
}

async fn futures_states(peers: &[Peer]) -> Vec<Option<PeerState>> {
    let mut out = Vec::new();
    for p in peers {
        out.push(state(&p.socket).await.ok());
    }
    out
}

/// Polls `check` every 200 ms until it holds; fails after STEP_TIMEOUT.
async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + STEP_TIMEOUT;
    while Instant::now() < end {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "gave up waiting for {what} after {}s",
        STEP_TIMEOUT.as_secs()
    )
}

/// A multicast group prefix "a.b" (239.a.b.x) and a base port of the demo's own.
fn random_channels() -> (String, u16) {
    let a = rand::random::<u8>() % 100 + 100;
    let b = rand::random::<u8>();
    (format!("{a}.{b}"), 20_000 + rand::random::<u16>() % 40_000)
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
