//! `peerstash status`: the first thing an admin types. One health line over the newest version
//! of every backed-up file (the degraded and at-risk ones by name), quota and use, the queue,
//! the last completed backup of each watched folder, the peers heard and lost, and the newest
//! catalog snapshot. A non-root caller sees its own files only, and no folders.

use std::path::PathBuf;
use std::sync::Arc;

use crate::control::{exit, FolderStatus, SnapshotInfo, StatusReport};
use crate::daemon::Node;
use crate::store::{Health, StoreError};

/// What keeps `status` from exiting 0, most serious first: the first that holds gives the exit
/// status (SPEC §5, README "Exit status").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Problem {
    /// Too many files of a watched folder changed at once (ransomware?): its history is held,
    /// nothing there is pruned until the admin resumes it.
    HistoryHeld,
    /// A watched folder is unavailable (missing, or its disk not mounted): nothing in it is
    /// backed up, whatever else holds.
    FolderUnavailable,
    /// A file's newest version is below its RD, cannot be decrypted here, or waited more
    /// than twice its max_delay.
    BelowRd,
    /// Files are backed up and no catalog snapshot that a recover finds is at its RD.
    NoSnapshotAtRd,
    /// Changes are queued, not yet backed up.
    QueueNotDrained,
}

impl Problem {
    /// Its name in `status --json`'s `problems`.
    pub fn word(self) -> &'static str {
        match self {
            Problem::HistoryHeld => "history_held",
            Problem::FolderUnavailable => "folder_unavailable",
            Problem::BelowRd => "below_rd",
            Problem::NoSnapshotAtRd => "no_snapshot_at_rd",
            Problem::QueueNotDrained => "queue_not_drained",
        }
    }

    pub fn code(self) -> i32 {
        match self {
            Problem::HistoryHeld => exit::HISTORY_HELD,
            Problem::FolderUnavailable => exit::FOLDER_UNAVAILABLE,
            Problem::BelowRd => exit::BELOW_RD,
            Problem::NoSnapshotAtRd => exit::NO_SNAPSHOT_AT_RD,
            Problem::QueueNotDrained => exit::QUEUE_NOT_DRAINED,
        }
    }
}

/// What `status` found, as far as the exit status goes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Facts {
    /// Watched folders whose history the guard holds.
    pub history_held: usize,
    pub unavailable_folders: usize,
    /// Files below their RD, undecryptable versions, files late.
    pub below_rd: usize,
    /// Backed-up files (their newest version) the caller sees.
    pub files: u64,
    /// The newest snapshot a recover finds is at its RD.
    pub snapshot_at_rd: bool,
    pub queued: u64,
}

/// Every problem that holds, most serious first. Nothing backed up and nothing queued (a peer
/// that only hosts, or watches empty folders) is healthy: there is nothing to recover.
pub(crate) fn problems(f: &Facts) -> Vec<Problem> {
    let holds = [
        (Problem::HistoryHeld, f.history_held > 0),
        (Problem::FolderUnavailable, f.unavailable_folders > 0),
        (Problem::BelowRd, f.below_rd > 0),
        (Problem::NoSnapshotAtRd, f.files > 0 && !f.snapshot_at_rd),
        (Problem::QueueNotDrained, f.queued > 0),
    ];
    (holds.into_iter())
        .filter_map(|(p, holds)| holds.then_some(p))
        .collect()
}

/// `status`'s exit status: the first problem's, else 0.
pub(crate) fn exit_code(problems: &[Problem]) -> i32 {
    problems.first().map_or(exit::OK, |p| p.code())
}

/// Why files stay below their RD, when too few other peers hold chunks of ours for their RD:
/// `below_rds` the desired RD of each file below it, `holding` the other peers not lost that
/// hold chunks of ours (the ones known to have had room), `heard_none` the others heard, not
/// lost, that hold none. Only what this peer knows: no peer announces its room.
pub(crate) fn below_rd_why(below_rds: &[u8], holding: u64, heard_none: u64) -> Option<String> {
    let short: Vec<u8> = (below_rds.iter().copied())
        .filter(|&rd| u64::from(rd) > holding)
        .collect();
    let rd = *short.iter().max()?;
    let n = short.len();
    let files = if n == 1 { "file" } else { "files" };
    let peers = |k: u64| if k == 1 { "peer" } else { "peers" };
    let others = match heard_none {
        0 => String::new(),
        k => format!(
            "; {k} other {} heard {} none (a quota of 0, or no room left)",
            peers(k),
            if k == 1 { "holds" } else { "hold" }
        ),
    };
    Some(format!(
        "{n} {files} below RD for want of peers: only {holding} other {} {} chunks of ours and RD {rd} needs {rd}{others}",
        peers(holding),
        if holding == 1 { "holds" } else { "hold" },
    ))
}

/// What `status` found: the report, and what keeps it from exiting 0, most serious first (the
/// report's `problems` are their words; `exit_code` gives the exit status).
pub(crate) struct Status {
    pub report: StatusReport,
    pub problems: Vec<Problem>,
}

/// The overview of what is backed up, for the caller `owner` (None: root, who also sees the
/// watched folders and the catalog snapshot).
pub(crate) async fn status(node: &Arc<Node>, owner: Option<u32>) -> Result<Status, StoreError> {
    let watched: Vec<PathBuf> = node.config().watch.iter().map(|w| w.path.clone()).collect();
    let folders_asked = match owner {
        None => watched,
        Some(_) => Vec::new(),
    };
    let running = node.master_key().map(|k| k.fingerprint());
    let snapshot_rd = super::snapshot::snapshot_rd(node);
    let v = (node.catalog)
        .status_view(owner, folders_asked, running, snapshot_rd)
        .await?;
    let (o, waiting, undecryptable) = (v.overview, v.waiting, v.undecryptable);
    let snapshot = v.snapshot.map(SnapshotInfo::from);
    let unavailable = node
        .unavailable
        .lock()
        .map(|u| u.clone())
        .unwrap_or_default();
    let usage = node.store.usage();
    let mut report = StatusReport {
        peer_id: node.id.0,
        files: o.health.len() as u64,
        healthy: 0,
        degraded: Vec::new(),
        at_risk: Vec::new(),
        quota_bytes: usage.quota,
        used_bytes: usage.used,
        queue_length: o.queue,
        folders: (o.folders.into_iter())
            .map(|(path, completed)| {
                let waits = waiting.iter().find(|(root, ..)| *root == path);
                FolderStatus {
                    unavailable: unavailable.get(&path).cloned(),
                    last_backup_ms: node.last_backed_up(&path, completed),
                    waiting_since_ms: waits.map(|(_, _, since)| *since),
                    waiting: waits.map(|(_, file, _)| file.clone()),
                    path,
                }
            })
            .collect(),
        peers_heard: o.peers.0,
        peers_lost: o.peers.1,
        // A non-root caller is told whether there is one at its RD (`problems`), no more.
        catalog_snapshot: snapshot.clone().filter(|_| owner.is_none()),
        problems: Vec::new(),
        below_rd_why: None,
        warnings: (node.duplicate_id_warning().into_iter())
            .chain(v.waits_recover.then(crate::daemon::wait_recover_warning))
            .collect(),
    };
    // A version this peer cannot decrypt is at risk whatever its RD: no restore here opens it.
    if undecryptable > 0 {
        report.warnings.push(format!(
            "{undecryptable} encrypted versions were made with another master key than this peer's ({}): they cannot be restored here; put that key back as peer.master_key_file and restart peerstashd (`peerstash restore` names the key a version needs)",
            node.master_key().map_or("none".to_owned(), |k| format!("key {}", k.fingerprint()))
        ));
    }
    // A file that has waited more than twice its folder's max_delay (it should have had a
    // version after one): at risk, whatever the folder's last backup says.
    let config = node.config();
    let now = crate::clock::unix_ms();
    let unreadable: std::collections::HashSet<PathBuf> = v.unreadable.into_iter().collect();
    let mut late = std::collections::HashSet::new();
    for (root, file, since) in &waiting {
        let limit = config
            .watch_of(root)
            .map_or(i64::MAX, |w| 2 * w.max_delay.as_millis() as i64);
        if now.saturating_sub(*since) > limit {
            report.warnings.push(format!(
                "{} changed {} s ago and has no version of it yet (more than twice max_delay): see the daemon's log for why",
                file.display(),
                (now - since) / 1000
            ));
            late.insert(file.clone());
        }
    }
    if owner.is_none() {
        let refused = node.refused.lock().map(|r| r.clone()).unwrap_or_default();
        report.warnings.extend(refused.into_values());
    }
    let files = o.health.len() as u64;
    for (path, h, _) in o.health {
        if unreadable.contains(&path) || late.remove(&path) {
            report.at_risk.push(path);
            continue;
        }
        match h {
            Health::Healthy => report.healthy += 1,
            Health::Degraded { .. } => report.degraded.push(path),
            Health::AtRisk { .. } => report.at_risk.push(path),
        }
    }
    // Late files never backed up before.
    report.at_risk.extend(late);
    // Only these are listed: sorted here, not the whole catalog's walk.
    report.degraded.sort_unstable();
    report.at_risk.sort_unstable();
    let below_rd = report.degraded.len() + report.at_risk.len() + undecryptable as usize;
    if below_rd > 0 {
        report.below_rd_why = below_rd_why(&o.below_rds, v.holding, v.heard_none);
    }
    if let Some((since, n)) = *node.space_cuts.lock().unwrap_or_else(|e| e.into_inner()) {
        report.warnings.push(format!(
            "history is being cut for space: {n} old versions pruned since {} UTC to make room for new ones (the peers are full: add a peer or raise their quotas); the newest version of every file is kept",
            crate::clock::utc(since)
        ));
    }
    let held = node.catalog.history_holds().await?;
    if owner.is_none() {
        for h in &held {
            report.warnings.push(format!(
                "the history of {} is held since {} UTC: {}; nothing there is pruned. Check its files, bring back what was lost (`peerstash restore {} --at ...`), then `peerstash history resume {}`",
                h.root.display(),
                crate::clock::utc(h.since_ms),
                h.why,
                h.root.display(),
                h.root.display()
            ));
        }
    }
    let problems = problems(&Facts {
        history_held: held.len(),
        unavailable_folders: (report.folders.iter())
            .filter(|f| f.unavailable.is_some())
            .count(),
        below_rd,
        files,
        snapshot_at_rd: snapshot.is_some_and(|s| s.at_rd),
        queued: report.queue_length,
    });
    report.problems = problems.iter().map(|p| p.word().to_owned()).collect();
    Ok(Status { report, problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_folder_unavailable_below_rd_no_snapshot_and_queue_gives_the_exit_status() {
        let healthy = Facts {
            files: 3,
            snapshot_at_rd: true,
            ..Facts::default()
        };
        assert_eq!(problems(&healthy), []);
        assert_eq!(exit_code(&problems(&healthy)), exit::OK);
        // Nothing backed up and nothing queued: nothing to recover, nothing at risk.
        assert_eq!(exit_code(&problems(&Facts::default())), exit::OK);
        // "Nothing backed up yet" with files queued.
        let starting = Facts {
            queued: 14,
            ..Facts::default()
        };
        assert_eq!(problems(&starting), [Problem::QueueNotDrained]);
        assert_eq!(exit_code(&problems(&starting)), 6);
        let all = Facts {
            history_held: 0,
            unavailable_folders: 2,
            below_rd: 1,
            files: 3,
            snapshot_at_rd: false,
            queued: 1,
        };
        let words: Vec<_> = problems(&all).iter().map(|p| p.word()).collect();
        assert_eq!(
            words,
            [
                "folder_unavailable",
                "below_rd",
                "no_snapshot_at_rd",
                "queue_not_drained"
            ]
        );
        assert_eq!(exit_code(&problems(&all)), 5);
        // A held history comes first: too many files changed at once.
        let held = Facts {
            history_held: 1,
            ..all
        };
        assert_eq!(problems(&held)[0].word(), "history_held");
        assert_eq!(exit_code(&problems(&held)), 8);
        let no_folder = Facts {
            unavailable_folders: 0,
            ..all
        };
        assert_eq!(exit_code(&problems(&no_folder)), 3);
        let at_rd = Facts {
            below_rd: 0,
            ..no_folder
        };
        assert_eq!(exit_code(&problems(&at_rd)), 7);
        let snapshot = Facts {
            snapshot_at_rd: true,
            ..at_rd
        };
        assert_eq!(exit_code(&problems(&snapshot)), 6);
        // The codes are status's own: none is another exit status of SPEC §5.
        for p in problems(&all) {
            assert!(exit::is_status(p.code()));
            assert!(![exit::FAILED, exit::USAGE, exit::UNREACHABLE].contains(&p.code()));
        }
    }

    #[test]
    fn status_says_why_files_stay_below_rd_only_when_too_few_peers_hold_ours() {
        // 3 machines at RD 2, a quota of 0 on one: one other peer holds our chunks.
        assert_eq!(
            below_rd_why(&[2, 2, 2], 1, 1).as_deref(),
            Some("3 files below RD for want of peers: only 1 other peer holds chunks of ours and RD 2 needs 2; 1 other peer heard holds none (a quota of 0, or no room left)")
        );
        assert_eq!(
            below_rd_why(&[3, 1], 0, 0).as_deref(),
            Some("2 files below RD for want of peers: only 0 other peers hold chunks of ours and RD 3 needs 3")
        );
        // Enough peers hold ours: the reason is elsewhere (a repair under way, a lost holder).
        assert_eq!(below_rd_why(&[2, 2], 2, 0), None);
        // Only the files whose RD is short of peers are counted.
        assert_eq!(
            below_rd_why(&[1, 3], 2, 0).as_deref(),
            Some("1 file below RD for want of peers: only 2 other peers hold chunks of ours and RD 3 needs 3")
        );
        assert_eq!(below_rd_why(&[], 0, 0), None);
    }
}
