//! The reports the command line prints without `--json`: `state`, `status`, `peers` and
//! `versions`, each from the daemon's typed answer.

use std::path::{Path, PathBuf};

use crate::control::{shown, PeerState, PeersReport, StatusReport, VersionInfo, WorkerInfo};
use crate::store::Health;

pub fn print_versions(versions: &[VersionInfo]) {
    crate::outln!(
        "{:>7}  {:>12}  {:>3}  {:>9}  {:<16}  {:<16}  path",
        "version",
        "size",
        "RD",
        "min RD",
        "made (UTC)",
        "fileId"
    );
    for v in versions {
        crate::outln!(
            "{:>7}  {:>12}  {:>3}  {:>9}  {:<16}  {:<16}  {}{}{}",
            v.version,
            v.size,
            v.desired_rd,
            v.min_perceived_rd,
            v.completed_ms.map_or("-".to_owned(), crate::cli::at::utc),
            &v.file_id[..16],
            shown(&v.path),
            if v.encrypted { "  (encrypted)" } else { "" },
            if v.complete {
                ""
            } else {
                "  (backup unfinished)"
            }
        );
    }
}

/// One line per background worker: "worker queue 1: busy 3s, backing up /srv/x", "worker
/// repair: failing 60s, cannot check replication: …".
fn print_worker(w: &WorkerInfo) {
    let mut line = format!("worker {}: {}", w.name, w.state);
    if let Some(s) = w.since_s {
        line.push_str(&format!(" {s}s"));
    }
    let path = w.path.as_deref().map(shown);
    match (&w.what, &w.error, path) {
        (Some(what), _, Some(path)) => line.push_str(&format!(", {what} {path}")),
        (Some(what), _, None) => line.push_str(&format!(", {what}")),
        (None, Some(error), Some(path)) => line.push_str(&format!(", {error} ({path})")),
        (None, Some(error), None) => line.push_str(&format!(", {error}")),
        (None, None, _) => {}
    }
    crate::outln!("{line}");
}

/// "1 file", "3 files".
fn files(n: usize) -> String {
    match n {
        1 => "1 file".into(),
        n => format!("{n} files"),
    }
}

/// The line that says at once whether every backed-up file is safe.
fn health_summary(s: &PeerState) -> String {
    let count = |f: fn(&Health) -> bool| s.files.iter().filter(|x| f(&x.health)).count();
    let degraded = count(|h| matches!(h, Health::Degraded { .. }));
    let at_risk = count(|h| matches!(h, Health::AtRisk { .. }));
    match (s.files.len(), degraded + at_risk) {
        (0, _) => "nothing backed up yet".into(),
        (n, 0) => format!("all {} at their RD", files(n)),
        _ => format!("{} degraded, {at_risk} at risk", files(degraded)),
    }
}

pub fn print_state(s: &PeerState, below: Option<&Path>) {
    for warning in &s.warnings {
        crate::outln!("WARNING: {warning}");
    }
    crate::outln!("{}", health_summary(s));
    crate::outln!(
        "peer {}  protocol {}  hosting {} of {} bytes",
        s.peer_id,
        s.protocol,
        s.used_bytes,
        s.quota_bytes
    );
    for u in &s.unavailable {
        crate::outln!("UNAVAILABLE: {} ({})", shown(&u.path), u.reason);
    }
    if let Some(snap) = &s.catalog_snapshot {
        crate::outln!(
            "catalog snapshot: {} ({}), {}",
            snap.snapshot,
            snap.taken,
            match snap.at_rd {
                true => "at its RD: `peerstash recover` would find it",
                false => "below its RD: `peerstash recover` would not find it yet (what it misses is sent again every 10 minutes)",
            }
        );
    }
    let busy: Vec<String> = s.in_progress.iter().map(|p| shown(p).to_string()).collect();
    crate::outln!(
        "queue: {} paths waiting{}",
        s.queue_length,
        if busy.is_empty() {
            String::new()
        } else {
            format!("; backing up {}", busy.join(", "))
        }
    );
    // The queue's many workers: the idle ones on one line.
    let idle_queue = |w: &&WorkerInfo| w.name.starts_with("queue ") && w.state == "idle";
    let idle = s.workers.iter().filter(idle_queue).count();
    if idle > 0 {
        crate::outln!("worker queue: {idle} idle");
    }
    for w in s.workers.iter().filter(|w| !idle_queue(w)) {
        print_worker(w);
    }
    if s.malformed_datagrams + s.busy_drops + s.queue_drops > 0 {
        crate::outln!(
            "dropped since start: {} malformed datagrams, {} PUTCHUNKs while busy, {} datagrams while the catalog queue was full",
            s.malformed_datagrams, s.busy_drops, s.queue_drops
        );
    }
    if s.unauthenticated_datagrams > 0 {
        crate::outln!(
            "dropped since start: {} datagrams without a valid LAN key tag",
            s.unauthenticated_datagrams
        );
    }
    if s.unacked_deletes > 0 {
        crate::outln!(
            "deletes not yet acknowledged by the peers holding them: {}",
            s.unacked_deletes
        );
    }
    match below {
        None => crate::outln!("\nbacked up ({} versions):", s.files.len()),
        Some(b) => crate::outln!(
            "\nbacked up at or below {} ({} versions):",
            shown(b),
            s.files.len()
        ),
    }
    for f in &s.files {
        let min = f.min_rd();
        let below = match f.health {
            Health::AtRisk { chunks } => {
                format!(" ({} chunks below, {chunks} at risk)", f.chunks_below_rd)
            }
            _ if f.chunks_below_rd > 0 => format!(" ({} chunks below)", f.chunks_below_rd),
            _ => String::new(),
        };
        crate::outln!(
            "  {:<8} {} v{}  {} bytes  {} chunks  RD {} wanted, lowest {}{}  {}",
            f.health.word(),
            shown(&f.path),
            f.version,
            f.size,
            f.chunks.len(),
            f.desired_rd,
            min,
            below,
            &f.file_id[..16]
        );
    }
    if below.is_some() {
        // Hosted chunks have no path: the whole report lists them.
        return;
    }
    crate::outln!("\nhosted ({} chunks):", s.stored.len());
    for c in &s.stored {
        crate::outln!(
            "  {}#{}  {} bytes  RD {} wanted, {} perceived",
            &c.file_id[..16],
            c.chunk_no,
            c.size,
            match c.desired_rd {
                0 => "?".to_owned(), // re-indexed by --rebuild-catalog, not heard again yet
                n => n.to_string(),
            },
            c.perceived_rd
        );
    }
}

/// A count with thousands separators: 1,234.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// Names the first few of `paths`.
fn some_of(paths: &[PathBuf]) -> String {
    const SHOWN: usize = 10;
    let mut names: Vec<String> = paths
        .iter()
        .take(SHOWN)
        .map(|p| shown(p).to_string())
        .collect();
    if paths.len() > SHOWN {
        names.push(format!(
            "and {} more (see `peerstash state`)",
            paths.len() - SHOWN
        ));
    }
    names.join(", ")
}

pub fn print_status(s: &StatusReport, now_ms: i64) {
    for warning in &s.warnings {
        crate::outln!("WARNING: {warning}");
    }
    let plural = |n: usize| if n == 1 { "file" } else { "files" };
    match (s.files, s.degraded.len(), s.at_risk.len()) {
        (0, _, _) => crate::outln!("nothing backed up yet"),
        (n, 0, 0) => crate::outln!("all {} {} at their RD", thousands(n), plural(n as usize)),
        (_, d, r) => crate::outln!(
            "{} {} degraded, {r} at risk",
            thousands(d as u64),
            plural(d)
        ),
    }
    if let Some(why) = &s.below_rd_why {
        crate::outln!("  why: {why}");
    }
    if !s.at_risk.is_empty() {
        crate::outln!("  at risk: {}", some_of(&s.at_risk));
    }
    if !s.degraded.is_empty() {
        crate::outln!("  degraded: {}", some_of(&s.degraded));
    }
    crate::outln!(
        "peer {}: hosting {} of {} bytes; queue: {} paths waiting",
        s.peer_id,
        thousands(s.used_bytes),
        thousands(s.quota_bytes),
        thousands(s.queue_length)
    );
    for f in &s.folders {
        let mut last = match f.last_backup_ms {
            Some(t) => format!("last backup {}", ago(now_ms, t)),
            None => "never backed up".to_owned(),
        };
        if let (Some(t), Some(file)) = (f.waiting_since_ms, &f.waiting) {
            last.push_str(&format!(
                "; oldest change waiting: {} ({})",
                shown(file),
                ago(now_ms, t)
            ));
        }
        match &f.unavailable {
            Some(why) => crate::outln!("{}: UNAVAILABLE ({why}); {last}", shown(&f.path)),
            None => crate::outln!("{}: {last}", shown(&f.path)),
        }
    }
    crate::outln!("peers: {} heard, {} lost", s.peers_heard, s.peers_lost);
    if let Some(snap) = &s.catalog_snapshot {
        crate::outln!(
            "catalog snapshot: {} ({}, {})",
            snap.snapshot,
            snap.taken,
            match snap.at_rd {
                true => "at its RD",
                false => "below its RD",
            }
        );
    }
    // The exit status in words: what a monitoring check acts on.
    let problems: Vec<&str> = (s.problems.iter())
        .map(|p| match p.as_str() {
            "folder_unavailable" => "a watched folder is unavailable",
            "below_rd" => "files below their RD",
            "no_snapshot_at_rd" => "no catalog snapshot at its RD",
            "queue_not_drained" => "changes queued, not yet backed up",
            other => other,
        })
        .collect();
    if !problems.is_empty() {
        crate::outln!("not healthy: {}", problems.join("; "));
    }
}

/// How long ago `then_ms` was at `now_ms`: "3 s ago", "5 min ago", "2 h ago", "4 d ago".
fn ago(now_ms: i64, then_ms: i64) -> String {
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..120 => format!("{s} s ago"),
        120..7_200 => format!("{} min ago", s / 60),
        7_200..172_800 => format!("{} h ago", s / 3_600),
        _ => format!("{} d ago", s / 86_400),
    }
}

pub fn print_peers(report: &PeersReport, now_ms: i64) {
    if report.peers.is_empty() {
        crate::outln!("peer {}: no other peer known yet", report.peer_id);
        return;
    }
    crate::outln!(
        "{:>6}  {:<12}  {:<21}  {:>14}  {:>14}  {:>15}",
        "peer",
        "protocol",
        "last heard",
        "chunks of ours",
        "hosted bytes",
        "unacked deletes"
    );
    for p in &report.peers {
        let heard = match (p.last_heard_ms, p.heard_since_start) {
            (Some(t), true) => ago(now_ms, t),
            _ => "not heard since start".to_owned(),
        };
        let lost = match p.lost_at_ms {
            Some(t) => format!("  LOST (since {})", ago(now_ms, t)),
            None if p.lost => "  LOST".to_owned(),
            None => String::new(),
        };
        crate::outln!(
            "{:>6}  {:<12}  {:<21}  {:>14}  {:>14}  {:>15}{lost}",
            p.id,
            p.protocol.as_deref().unwrap_or("unknown yet"),
            heard,
            p.chunks_of_ours,
            p.hosted_bytes,
            p.unacked_deletes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_as_how_long_ago() {
        assert_eq!(ago(10_000, 7_000), "3 s ago");
        assert_eq!(ago(10_000, 12_000), "0 s ago", "a clock that stepped back");
        assert_eq!(ago(300_000, 0), "5 min ago");
        assert_eq!(ago(7_200_000, 0), "2 h ago");
        assert_eq!(ago(4 * 86_400_000, 0), "4 d ago");
    }

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
