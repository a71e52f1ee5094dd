//! Issue 12's "What must be shown", with real daemons on loopback: protocol 2.0 keeps exactly RD
//! copies of a chunk, restores without chunk bodies on MDR, frees the chunks of a peer that was
//! stopped during a DELETE once it is back, replaces holders lost for good, and works with 1.0
//! peers in every direction. Each test also shows, where it can, what 1.0 does instead.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const MB: usize = 1_000_000;

/// A cluster of one peer per spec; each peer reports the protocol its spec gave it.
fn start(specs: Vec<PeerSpec>) -> Cluster {
    let protocols: Vec<String> = specs.iter().map(|s| s.protocol.clone()).collect();
    let c = Cluster::start_specs(specs);
    for (i, p) in protocols.iter().enumerate() {
        assert_eq!(&c.peer(i).state().protocol, p, "protocol of peer {}", i + 1);
    }
    c
}

/// `size` random bytes written to `name` in the cluster's data folder: its path (as the daemons
/// name it) and its bytes.
fn random_file(c: &Cluster, name: &str, size: usize) -> (PathBuf, Vec<u8>) {
    let data = c.root().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let path = data.join(name);
    let bytes = random_bytes(size);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The chunks (fileId, chunkNo) of the newest version of `path` that peer `home` backed up.
fn chunks_of(c: &Cluster, home: usize, path: &Path) -> Vec<(String, u32)> {
    let f = c.peer(home).file(path);
    let f = f.latest();
    f.chunks
        .iter()
        .map(|ch| (f.file_id.clone(), ch.chunk_no))
        .collect()
}

/// For each of `chunks`, how many of the peers `hosts` host it (their `state` "stored" lists).
fn copies(c: &Cluster, hosts: &[usize], chunks: &[(String, u32)]) -> Vec<usize> {
    let states: Vec<State> = hosts.iter().map(|&i| c.peer(i).state()).collect();
    chunks
        .iter()
        .map(|(id, n)| states.iter().filter(|s| s.hosts(id, *n)).count())
        .collect()
}

/// How many chunks have each number of copies.
fn histogram(copies: &[usize]) -> BTreeMap<usize, usize> {
    let mut h = BTreeMap::new();
    for &n in copies {
        *h.entry(n).or_insert(0) += 1;
    }
    h
}

fn mean(copies: &[usize]) -> f64 {
    copies.iter().sum::<usize>() as f64 / copies.len().max(1) as f64
}

/// Issue 12: none below 2, and at least 95% of the chunks with exactly 2 copies.
fn exactly_two(copies: &[usize]) -> bool {
    let exact = copies.iter().filter(|&&n| n == 2).count();
    !copies.is_empty() && copies.iter().all(|&n| n >= 2) && exact * 100 >= 95 * copies.len()
}

/// The bytes after a datagram's header (after the first CRLF CRLF; all of it if it has none).
fn body(datagram: &[u8]) -> &[u8] {
    match datagram.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &datagram[end + 4..],
        None => datagram,
    }
}

/// Removes `path` and restores it through peer `home`'s command line; its bytes must be `bytes`.
fn remove_and_restore(c: &Cluster, home: usize, path: &Path, bytes: &[u8]) {
    std::fs::remove_file(path).unwrap();
    c.cli_ok(home, &["restore", text(path)], 0);
    assert!(
        std::fs::read(path).unwrap() == bytes,
        "peer {} restored other bytes for {path:?}",
        home + 1
    );
}

/// What one 5 MB backup at RD 2 among 6 peers of one protocol left on the peers.
struct Replication {
    /// Hosted copies of each chunk, once settled.
    copies: Vec<usize>,
    backup: Duration,
    /// How many chunks of the file each peer hosts.
    per_peer: Vec<usize>,
}

fn replicate_5mb(protocol: &str) -> Replication {
    let c = start(vec![PeerSpec::new("100MB").protocol(protocol); 6]);
    let (path, _) = random_file(&c, "five.bin", 5 * MB);
    let start = Instant::now();
    c.cli_ok(0, &["backup", text(&path), "--replication", "2"], 0);
    let backup = start.elapsed();
    let chunks = chunks_of(&c, 0, &path);
    let all: Vec<usize> = (0..6).collect();
    // A 2.0 holder that sees more than RD holders may drop its copy (REMOVED) shortly after the
    // backup; a 1.0 holder may still be writing: read until two reads agree and look final.
    let settled_2_0 = protocol == "2.0";
    let mut last = Vec::new();
    let settled = wait_until(Duration::from_secs(8), || {
        let now = copies(&c, &all, &chunks);
        let done = now == last
            && if settled_2_0 {
                exactly_two(&now)
            } else {
                now.iter().all(|&n| n >= 2)
            };
        last = now;
        done
    });
    let (id, _) = &chunks[0];
    let per_peer = (0..6)
        .map(|i| c.peer(i).state().stored_of(id).len())
        .collect();
    if !settled {
        eprintln!(
            "{protocol}: the copies did not settle as expected within 8 s: chunks per number of \
             copies {:?}, chunks each peer hosts {per_peer:?}",
            histogram(&last)
        );
    }
    Replication {
        copies: last,
        backup,
        per_peer,
    }
}

/// SPEC §3 Backup: a 2.0 peer stores a chunk only if fewer than RD peers did while it waited, so
/// 6 peers keep about RD copies where 1.0 keeps one on every peer with room.
#[test]
fn exact_replication_at_2_0() {
    let v2 = replicate_5mb("2.0");
    let v1 = replicate_5mb("1.0");
    eprintln!(
        "exact_replication_at_2_0: 5 MB at RD 2 on 6 peers: 2.0 {:.2} copies per chunk {:?} \
         (backup {:.2} s), 1.0 {:.2} copies per chunk {:?} (backup {:.2} s)",
        mean(&v2.copies),
        histogram(&v2.copies),
        v2.backup.as_secs_f64(),
        mean(&v1.copies),
        histogram(&v1.copies),
        v1.backup.as_secs_f64(),
    );
    let below: Vec<usize> = (0..v2.copies.len()).filter(|&n| v2.copies[n] < 2).collect();
    assert!(
        below.is_empty(),
        "2.0: chunks {below:?} have fewer than 2 copies (chunks per number of copies: {:?}; \
         chunks each peer hosts: {:?})",
        histogram(&v2.copies),
        v2.per_peer
    );
    assert!(
        exactly_two(&v2.copies),
        "2.0: fewer than 95% of {} chunks have exactly 2 copies (chunks per number of copies: \
         {:?}; chunks each peer hosts: {:?})",
        v2.copies.len(),
        histogram(&v2.copies),
        v2.per_peer
    );
    assert!(
        mean(&v1.copies) > mean(&v2.copies),
        "1.0 keeps {:.2} copies per chunk, 2.0 {:.2}: the comparison shows nothing",
        mean(&v1.copies),
        mean(&v2.copies)
    );
}

/// SPEC §3 Restore: a 2.0 holder answers GETCHUNK with a body-less CHUNK on MDR naming its TCP
/// port, and the restorer pulls the chunk from there, so a 5 MB restore puts no chunk bytes on
/// the multicast group.
#[test]
fn restore_at_2_0_sends_no_chunk_bodies_on_mdr() {
    let c = start(vec![PeerSpec::new("100MB").protocol("2.0"); 4]);
    let (path, bytes) = random_file(&c, "five.bin", 5 * MB);
    c.cli_ok(0, &["backup", text(&path), "--replication", "2"], 0);
    std::fs::remove_file(&path).unwrap();

    let mdr = Listener::join(c.mdr).record();
    let start = Instant::now();
    c.cli_ok(0, &["restore", text(&path)], 0);
    let took = start.elapsed();
    // Holders answer within 400 ms of a GETCHUNK: a late CHUNK would still be heard.
    std::thread::sleep(Duration::from_secs(1));
    let heard = mdr.stop();
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "the restored file differs from the original"
    );

    let mut chunks = 0;
    let mut body_bytes = 0;
    let mut with_body: Vec<String> = Vec::new();
    for d in &heard {
        let fields = header_fields(d);
        if fields.get(1).is_some_and(|t| t == "CHUNK") {
            chunks += 1;
        }
        let n = body(d).len();
        if n > 0 {
            body_bytes += n;
            if with_body.len() < 10 {
                with_body.push(format!("{} ({n} bytes)", fields.join(" ")));
            }
        }
    }
    eprintln!(
        "restore_at_2_0_sends_no_chunk_bodies_on_mdr: restore of 5 MB took {:.2} s; MDR carried \
         {} datagrams, {chunks} CHUNKs, {body_bytes} body bytes",
        took.as_secs_f64(),
        heard.len()
    );
    assert_eq!(
        body_bytes,
        0,
        "MDR carried {body_bytes} body bytes in {} datagrams during a 2.0 restore; the first: \
         {with_body:?}",
        heard.iter().filter(|d| !body(d).is_empty()).count()
    );
    assert!(
        chunks > 0,
        "no CHUNK heard on MDR: 2.0 holders say where to pull each chunk with a body-less \
         CHUNK ({} datagrams heard)",
        heard.len()
    );
}

/// SPEC §3 Delete: a holder that was down while the home peer sent DELETE frees the file's
/// chunks within 5 s of starting again (its HELLO brings the DELETE again).
#[test]
fn a_peer_down_during_delete_frees_the_chunks_when_back() {
    let mut c = start(vec![PeerSpec::new("100MB").protocol("2.0"); 4]);
    let (path, _) = random_file(&c, "one.bin", MB);
    c.cli_ok(0, &["backup", text(&path), "--replication", "3"], 0);
    let at_3 = wait_until(Duration::from_secs(10), || {
        c.peer(0).file(&path).min_rd() >= 3
    });
    assert!(at_3, "every chunk at RD 3:\n{}", c.dump());
    let file_id = c.peer(0).file(&path).latest().file_id.clone();

    let victim = (1..4)
        .find(|&i| !c.peer(i).state().stored_of(&file_id).is_empty())
        .unwrap_or_else(|| panic!("no peer hosts a chunk of the file:\n{}", c.dump()));
    let hosted = c.peer(victim).state().stored_of(&file_id).len();
    let on_disk = chunk_files_on_disk(c.peer(victim));
    let status = c.stop_status(victim);
    eprintln!("peer {} stopped ({status:?})", victim + 1);

    let mc = Listener::join(c.mc);
    c.cli_ok(0, &["delete", text(&path)], 0);
    // The DELETE sends go on after the command returns: wait until they stop (half a second
    // without one), so the stopped peer cannot hear the first round when it starts.
    let mut deletes = 0;
    let sends_end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < sends_end {
        let heard = mc
            .collect(Duration::from_millis(500))
            .iter()
            .map(|d| header_fields(d))
            .filter(|f| {
                f.len() >= 4
                    && f[1] == "DELETE"
                    && f[2] == "1"
                    && f[3].eq_ignore_ascii_case(&file_id)
            })
            .count();
        deletes += heard;
        if deletes > 0 && heard == 0 {
            break;
        }
    }
    assert!(deletes > 0, "no DELETE heard on MC");
    let live: Vec<usize> = (1..4).filter(|&i| i != victim).collect();
    let freed = wait_until(Duration::from_secs(5), || {
        live.iter()
            .all(|&i| c.peer(i).state().stored_of(&file_id).is_empty())
    });
    assert!(freed, "the running peers freed the chunks:\n{}", c.dump());
    let unacked_down = c.peer(0).state().unacked_deletes;

    let start = Instant::now();
    c.spawn(victim);
    c.wait_ready(victim);
    let left = || {
        let stored = c.peer(victim).state().stored_of(&file_id).len();
        (stored, chunk_files_on_disk(c.peer(victim)))
    };
    let back = wait_until(
        Duration::from_secs(5).saturating_sub(start.elapsed()),
        || left() == (0, on_disk.saturating_sub(hosted)),
    );
    let (stored, files) = left();
    eprintln!(
        "a_peer_down_during_delete_frees_the_chunks_when_back: {deletes} DELETEs while peer {} \
         was down with {hosted} chunks; {:.2} s after its start it hosts {stored} of them, {files} \
         chunk files on disk (was {on_disk}); unacked_deletes while it was down: {unacked_down:?}",
        victim + 1,
        start.elapsed().as_secs_f64()
    );
    assert!(
        back,
        "peer {} still hosts {stored} of the deleted file's {hosted} chunks ({files} chunk files \
         on disk, was {on_disk}) 5 s after it started again:\n{}\n---- its log ----\n{}",
        victim + 1,
        c.dump(),
        c.log(victim)
    );

    // The home peer's count of deletes not yet confirmed by every holder (`unacked_deletes`,
    // always in `state --json` now).
    let acked = wait_until(Duration::from_secs(5), || {
        c.peer(0).state().unacked_deletes == 0
    });
    assert!(
        acked,
        "peer 1 still counts unacknowledged deletes: {}",
        c.peer(0).state().unacked_deletes
    );
}

/// SPEC §3 Reclaim / repair: holders not heard for `peer.holder_timeout` are dropped from the
/// holder sets and the home peer backs up their chunks again on the peers left.
#[test]
fn holders_lost_for_good_are_replaced() {
    let spec = PeerSpec {
        peer_extra: "holder_timeout = \"5s\"\n".into(),
        ..PeerSpec::new("100MB").protocol("2.0")
    };
    let mut c = start(vec![spec; 6]);
    let files = [
        random_file(&c, "six.bin", 600_000),
        random_file(&c, "three.bin", 300_000),
    ];
    for (path, _) in &files {
        c.cli_ok(0, &["backup", text(path), "--replication", "3"], 0);
    }
    let paths = || files.iter().map(|(p, _)| p.as_path());
    let at_3 = wait_until(Duration::from_secs(10), || {
        c.peer(0).state().min_rd_of(paths()) >= 3
    });
    assert!(at_3, "every chunk at RD 3:\n{}", c.dump());
    let chunks: Vec<(String, u32)> = files
        .iter()
        .flat_map(|(p, _)| chunks_of(&c, 0, p))
        .collect();

    // The two peers holding the most of these chunks die for good.
    let mut holders: Vec<(usize, usize)> = (1..6)
        .map(|i| {
            let s = c.peer(i).state();
            let n = chunks.iter().filter(|(id, n)| s.hosts(id, *n)).count();
            (n, i)
        })
        .collect();
    holders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let dead = [holders[0].1, holders[1].1];
    assert!(holders[1].0 > 0, "two peers hold chunks: {holders:?}");
    let live: Vec<usize> = (0..6).filter(|i| !dead.contains(i)).collect();
    let before = copies(&c, &(0..6).collect::<Vec<_>>(), &chunks);
    for &i in &dead {
        c.kill(i);
    }
    let start = Instant::now();
    let after_kill = copies(&c, &live, &chunks);
    let short = after_kill.iter().filter(|&&n| n < 3).count();

    // Every chunk: counted at RD ≥ 3 by the home peer, counting only peers left (not the dead),
    // and really hosted ≥ 3 times on them.
    let report = || {
        let home = c.peer(0).state();
        let left = copies(&c, &live, &chunks);
        let mut bad = Vec::new();
        for ((id, n), &hosted) in chunks.iter().zip(&left) {
            let rd = home
                .files
                .iter()
                .find(|f| f.file_id == *id)
                .and_then(|f| f.rd_of(*n))
                .unwrap_or(0);
            if rd < 3 || hosted < 3 || rd as usize > hosted {
                bad.push(format!(
                    "{}…#{n}: perceived RD {rd}, {hosted} copies on the peers left",
                    &id[..8]
                ));
            }
        }
        bad
    };
    let mut bad = Vec::new();
    let repaired = wait_until(Duration::from_secs(30), || {
        bad = report();
        bad.is_empty()
    });
    eprintln!(
        "holders_lost_for_good_are_replaced: {} chunks at RD 3, copies before {:?}; peers {} and \
         {} killed, {short} chunks left below 3 copies; {} after {:.1} s",
        chunks.len(),
        histogram(&before),
        dead[0] + 1,
        dead[1] + 1,
        if repaired {
            "all repaired".to_owned()
        } else {
            format!("{} chunks still short", bad.len())
        },
        start.elapsed().as_secs_f64()
    );
    assert!(
        repaired,
        "30 s after peers {} and {} died (holder_timeout 5 s), chunks not back at perceived RD 3 \
         on the peers left: {bad:?}\n{}",
        dead[0] + 1,
        dead[1] + 1,
        c.dump()
    );
    for (n, (path, bytes)) in files.iter().enumerate() {
        let to = c.root().join(format!("restored-{n}"));
        c.cli_ok(0, &["restore", text(path), "--to", text(&to)], 0);
        assert!(
            std::fs::read(&to).unwrap() == *bytes,
            "{path:?} restored with other bytes"
        );
    }
}

/// SPEC §3: a 2.0 peer speaks 1.0 with 1.0 peers and loses no function. Peers 1 and 2 run 1.0,
/// 3 and 4 run 2.0; every one backs up, restores, deletes or reclaims with the others as holders.
#[test]
fn mixed_cluster_works_in_every_direction() {
    let c = start(
        ["1.0", "1.0", "2.0", "2.0"]
            .map(|p| PeerSpec::new("50MB").protocol(p))
            .to_vec(),
    );
    let files: Vec<(PathBuf, Vec<u8>)> = (0..4)
        .map(|i| random_file(&c, &format!("of-peer-{}.bin", i + 1), 300_000))
        .collect();
    for (i, (path, _)) in files.iter().enumerate() {
        c.cli_ok(i, &["backup", text(path), "--replication", "2"], 0);
        // A 2.0 holder's copy too many may go (REMOVED) just before a late STORED of a 1.0
        // holder is recorded: the home peer's count settles within moments.
        let at_rd = wait_until(Duration::from_secs(3), || {
            c.peer(i).file(path).min_rd() >= 2
        });
        let rd = c.peer(i).file(path).min_rd();
        assert!(at_rd, "peer {}'s file at RD {rd}:\n{}", i + 1, c.dump());
    }
    let chunks: Vec<Vec<(String, u32)>> = files
        .iter()
        .enumerate()
        .map(|(i, (p, _))| chunks_of(&c, i, p))
        .collect();
    let all: Vec<usize> = (0..4).collect();
    let backed_up: Vec<f64> = chunks
        .iter()
        .map(|ch| mean(&copies(&c, &all, ch)))
        .collect();
    for (i, (path, bytes)) in files.iter().enumerate() {
        remove_and_restore(&c, i, path, bytes);
    }

    // Deletes from a 1.0 home (peer 1) and a 2.0 home (peer 3).
    for i in [0, 2] {
        c.cli_ok(i, &["delete", text(&files[i].0)], 0);
    }
    let deleted: Vec<(String, u32)> = [0, 2].iter().flat_map(|&i| chunks[i].clone()).collect();
    let freed = wait_until(Duration::from_secs(10), || {
        copies(&c, &all, &deleted).iter().all(|&n| n == 0)
    });
    assert!(
        freed,
        "chunks of the files deleted by peers 1 and 3 still hosted:\n{}",
        c.dump()
    );

    // Reclaims by a 1.0 peer (2), then a 2.0 peer (4): the files of peers 2 and 4 get back to
    // RD 2 on the peers that still offer room.
    let mut reclaimed: Vec<usize> = Vec::new();
    let mut took = Vec::new();
    for r in [1, 3] {
        c.cli_ok(r, &["reclaim", "0"], 0);
        reclaimed.push(r);
        let hosts: Vec<usize> = (0..4).filter(|i| !reclaimed.contains(i)).collect();
        let start = Instant::now();
        let mut bad = Vec::new();
        let back = wait_until(Duration::from_secs(20), || {
            bad.clear();
            if !c.peer(r).state().stored.is_empty() {
                bad.push(format!("peer {} still hosts chunks", r + 1));
            }
            for home in [1, 3] {
                let left = copies(&c, &hosts, &chunks[home]);
                let f = c.peer(home).file(&files[home].0);
                for (ch, &hosted) in f.latest().chunks.iter().zip(&left) {
                    if ch.perceived_rd < 2 || hosted < 2 || ch.perceived_rd as usize > hosted {
                        bad.push(format!(
                            "peer {}'s chunk {}: perceived RD {}, {hosted} copies on peers {:?}",
                            home + 1,
                            ch.chunk_no,
                            ch.perceived_rd,
                            hosts.iter().map(|h| h + 1).collect::<Vec<_>>()
                        ));
                    }
                }
            }
            bad.is_empty()
        });
        assert!(
            back,
            "after `reclaim 0` on peer {}: {bad:?}\n{}",
            r + 1,
            c.dump()
        );
        took.push(start.elapsed());
    }
    for home in [1, 3] {
        remove_and_restore(&c, home, &files[home].0, &files[home].1);
    }
    eprintln!(
        "mixed_cluster_works_in_every_direction: copies per chunk after backup by peers 1-4: \
         {backed_up:.2?}; deletes by peers 1 and 3 freed every holder; RD 2 back {:.1} s after \
         peer 2's reclaim and {:.1} s after peer 4's; every restore byte for byte",
        took[0].as_secs_f64(),
        took[1].as_secs_f64()
    );
}
