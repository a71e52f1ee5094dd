//! Our backups: the PUTCHUNK schedule, the pace, job credit.

use super::*;

/// Drives a chunk backup, answering `ReadBody` with the bytes, until it ends.
fn drive_backup(
    p: &mut Peer,
    t0: Instant,
    storers: &[(u32, Duration)],
) -> (Vec<Duration>, BackupOutcome) {
    let mut sends = Vec::new();
    let mut now = t0;
    loop {
        for a in actions(p) {
            match a {
                Action::ReadBody { chunk } => p.resend_body(&chunk, Some(vec![1]), now),
                Action::BackedUp { outcome, .. } => return (sends, outcome),
                _ => {}
            }
        }
        for m in std::iter::from_fn(|| p.poll_transmit()) {
            if matches!(m.kind, MessageKind::PutChunk { .. }) {
                sends.push(now - t0);
            }
        }
        let next_stored = storers
            .iter()
            .filter(|(_, at)| t0 + *at > now)
            .map(|(_, at)| t0 + *at)
            .min();
        let next = [p.poll_timeout(), next_stored]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        now = next;
        for (peer, at) in storers {
            if t0 + *at == now {
                p.handle(msg(*peer, MessageKind::Stored { chunk: chunk(0) }), now);
            }
        }
        p.handle_timeout(now);
    }
}

/// Whether the sends of a chunk, in seconds, keep the schedule (0, 1, 3, 7, 15 s) within
/// its spread: each wait from the schedule's to a quarter more.
fn on_spread_schedule(sends: &[Duration]) -> bool {
    sends.windows(2).enumerate().all(|(k, pair)| {
        let (wait, base) = ((pair[1] - pair[0]).as_secs_f64(), f64::from(1u32 << k));
        (base..=1.25 * base).contains(&wait)
    })
}

#[test]
fn putchunk_is_resent_on_the_spread_schedule_and_counts_distinct_peers() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.start_job(JobId(1), JobKind::Backup);
    p.backup_chunk(JobId(1), chunk(0), rd(3), vec![1], vec![], t0);
    let ms = Duration::from_millis;
    let (sends, outcome) = drive_backup(&mut p, t0, &[(2, ms(10)), (2, ms(20)), (3, ms(30))]);
    assert_eq!(sends.len(), 5);
    assert!(on_spread_schedule(&sends), "{sends:?}");
    assert!(!outcome.reached);
    assert_eq!(outcome.holders, vec![PeerId(2), PeerId(3)]);

    let mut p = Peer::new(ME, 1);
    p.start_job(JobId(1), JobKind::Backup);
    p.backup_chunk(JobId(1), chunk(0), rd(2), vec![1], vec![], t0);
    let (sends, outcome) = drive_backup(&mut p, t0, &[(2, ms(10)), (3, ms(1500))]);
    assert_eq!(sends.len(), 2, "stops once RD peers confirmed: {sends:?}");
    assert!(on_spread_schedule(&sends), "{sends:?}");
    assert!(outcome.reached);
    assert!(outcome.recovered_by_resend);
    assert_eq!(p.counters().putchunks_sent, 2);
    assert_eq!(
        p.counters().putchunks_resent,
        1,
        "the second send is a resend"
    );
}

#[test]
fn a_chunk_handed_on_is_done_once_another_peer_stored_it_and_not_before() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    // Another peer stores it: done at its STORED, after one send; our own copy is no holder.
    let mut p = Peer::new(ME, 1);
    p.hand_on(chunk(0), rd(1), vec![1], vec![ME], t0);
    let (sends, outcome) = drive_backup(&mut p, t0, &[(3, ms(150))]);
    assert_eq!(sends, vec![Duration::ZERO]);
    assert!(outcome.reached);
    assert_eq!(outcome.holders, vec![PeerId(3)]);
    // Nobody has room: five sends on the schedule, then not reached (the copy stays).
    let mut p = Peer::new(ME, 1);
    p.hand_on(chunk(0), rd(1), vec![1], vec![ME], t0);
    let (sends, outcome) = drive_backup(&mut p, t0, &[]);
    assert_eq!(sends.len(), 5);
    assert!(on_spread_schedule(&sends), "{sends:?}");
    assert!(!outcome.reached);
    assert!(*sends.last().unwrap() < Duration::from_secs(20));
    // Enough other holders already: nothing is sent.
    let mut p = Peer::new(ME, 1);
    p.hand_on(chunk(0), rd(1), vec![1], vec![ME, PeerId(4)], t0);
    let (sends, outcome) = drive_backup(&mut p, t0, &[]);
    assert!(sends.is_empty() && outcome.reached, "{sends:?}");
}

fn putchunks(p: &mut Peer) -> usize {
    std::iter::from_fn(|| p.poll_transmit())
        .filter(|m| matches!(m.kind, MessageKind::PutChunk { .. }))
        .count()
}

#[test]
fn a_backup_hands_over_a_few_chunks_ahead_of_their_turn() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.start_job(JobId(7), JobKind::Backup);
    let first = credit(&actions(&mut p));
    assert_eq!(first, Pace::default().ahead());
    for no in 0..first as u32 {
        p.backup_chunk(JobId(7), chunk(no), rd(1), vec![1], vec![], t0);
    }
    // A burst's worth leaves now (2 ms at 500/s: one); as many may be handed over again.
    assert_eq!(putchunks(&mut p), 1);
    assert_eq!(credit(&actions(&mut p)), 1);
    for no in first as u32..first as u32 + 1 {
        p.backup_chunk(JobId(7), chunk(no), rd(1), vec![1], vec![], t0);
    }
    assert_eq!(credit(&actions(&mut p)), 0, "enough at hand");
    // The next one leaves when the pace has a token for it, 2 ms later.
    let next = p.poll_timeout().unwrap();
    assert!(next > t0 && next <= t0 + Duration::from_micros(2002));
    p.handle_timeout(next);
    assert_eq!(putchunks(&mut p), 1);
    assert_eq!(credit(&actions(&mut p)), 1);
    // A chunk confirmed on its first send ends; the others leave their first round at their
    // resend. A chunk whose file changed meanwhile ends, not reached.
    p.handle(msg(2, MessageKind::Stored { chunk: chunk(0) }), next);
    assert!(actions(&mut p)
        .iter()
        .any(|a| matches!(a, Action::BackedUp { chunk: c, .. } if *c == chunk(0))));
    let later = t0 + Duration::from_millis(1300);
    while let Some(at) = p.poll_timeout().filter(|at| *at <= later) {
        p.handle_timeout(at);
    }
    let reads: Vec<ChunkId> = actions(&mut p)
        .into_iter()
        .filter_map(|a| match a {
            Action::ReadBody { chunk } => Some(chunk),
            _ => None,
        })
        .collect();
    assert!(reads.contains(&chunk(1)), "{reads:?}");
    p.resend_body(&reads[0], None, later);
    assert!(actions(&mut p).iter().any(|a| matches!(
        a,
        Action::BackedUp {
            outcome: BackupOutcome {
                stopped: Some(Stopped::Changed),
                reached: false,
                ..
            },
            ..
        }
    )));
}

/// What `drive_job` saw: every PUTCHUNK (when, after the job's start; chunk number; its
/// send number, 1 for a first send), the outcomes, and when the last chunk ended.
struct Driven {
    putchunks: Vec<(Duration, u32, u32)>,
    outcomes: Vec<BackupOutcome>,
    end: Instant,
}

impl Driven {
    fn first_sends(&self) -> Vec<Duration> {
        (self.putchunks.iter())
            .filter(|(_, _, k)| *k == 1)
            .map(|(t, _, _)| *t)
            .collect()
    }

    fn resends(&self) -> usize {
        self.putchunks.iter().filter(|(_, _, k)| *k > 1).count()
    }
}

/// Drives a backup job of chunks 0..n at RD 1 from `t0`, as the daemon does: a chunk handed
/// over for each credit, the bytes of each resend read at once. Peer 2 answers STORED 100 ms
/// after each PUTCHUNK that `lost(chunk number, send number)` does not drop.
fn drive_job(
    p: &mut Peer,
    job: JobId,
    n: u32,
    t0: Instant,
    lost: impl Fn(u32, u32) -> bool,
) -> Driven {
    p.start_job(job, JobKind::Backup);
    let (mut now, mut next, mut credit) = (t0, 0, 0);
    let mut sends: BTreeMap<u32, u32> = BTreeMap::new();
    let mut storeds: BTreeMap<(Instant, u32), ()> = BTreeMap::new();
    let mut driven = Driven {
        putchunks: Vec::new(),
        outcomes: Vec::new(),
        end: t0,
    };
    loop {
        let mut idle = false;
        while !idle {
            idle = true;
            for a in actions(p) {
                idle = false;
                match a {
                    Action::Credit { n, .. } => credit += n,
                    Action::ReadBody { chunk } => p.resend_body(&chunk, Some(vec![1]), now),
                    Action::BackedUp { outcome, .. } => driven.outcomes.push(outcome),
                    _ => {}
                }
            }
            while credit > 0 && next < n {
                idle = false;
                p.backup_chunk(job, chunk(next), rd(1), vec![1], vec![], now);
                (next, credit) = (next + 1, credit - 1);
            }
            for m in std::iter::from_fn(|| p.poll_transmit()) {
                idle = false;
                if let MessageKind::PutChunk { chunk, .. } = m.kind {
                    let no = chunk.chunk_no.0;
                    let k = sends.entry(no).or_default();
                    *k += 1;
                    driven.putchunks.push((now - t0, no, *k));
                    if !lost(no, *k) {
                        storeds.insert((now + Duration::from_millis(100), no), ());
                    }
                }
            }
        }
        if driven.outcomes.len() == n as usize {
            p.end_job(job);
            driven.end = now;
            return driven;
        }
        let stored = storeds.keys().next().map(|(at, _)| *at);
        now = [p.poll_timeout(), stored]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        while let Some((&(at, no), _)) = storeds.first_key_value().filter(|(k, _)| k.0 <= now) {
            storeds.remove(&(at, no));
            p.handle(msg(2, MessageKind::Stored { chunk: chunk(no) }), now);
        }
        p.handle_timeout(now);
    }
}

#[test]
fn a_backup_sends_its_chunks_at_the_pace_not_at_once() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    let d = drive_job(&mut p, JobId(1), 32, t0, |_, _| false);
    let first = d.first_sends();
    assert_eq!(first.len(), 32);
    assert_eq!(d.resends(), 0);
    assert!(d.outcomes.iter().all(|o| o.reached && o.sends == 1));
    // One at a time (a burst is 2 ms' worth, one at 500 chunks a second), 2 ms apart.
    assert_eq!(first.iter().filter(|t| t.is_zero()).count(), 1, "{first:?}");
    for pair in first.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_micros(1999),
            "{first:?}"
        );
    }
    assert!(first[31] < Duration::from_millis(70), "{first:?}");
    // Every chunk was confirmed on its first send while the pace held sends back.
    assert!(p.backup_rate() > crate::engine::backup::INITIAL_RATE);
}

#[test]
fn the_pace_is_kept_across_backups_grows_while_confirmed_and_halves_on_loss() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    drive_job(&mut p, JobId(1), 500, t0, |_, _| false);
    let grown = p.backup_rate();
    assert!(grown > crate::engine::backup::INITIAL_RATE * 4.0, "{grown}");
    // The next backup starts where the last one left the pace.
    let t1 = t0 + Duration::from_secs(60);
    let d = drive_job(&mut p, JobId(2), 200, t1, |no, k| no % 4 == 0 && k == 1);
    assert!(d.outcomes.iter().all(|o| o.reached), "lost chunks resent");
    assert_eq!(d.resends(), 50);
    let first = d.first_sends();
    let span = (first[99] - first[0]).as_secs_f64();
    assert!(
        span < 100.0 / grown * 1.1,
        "{span} s for 100 first sends at {grown}/s"
    );
    // Losses halved the pace, once per round: the 50 lost chunks of one round, once.
    let lowered = p.backup_rate();
    assert!(
        lowered < grown * 0.6 && lowered > grown * 0.4,
        "{grown} -> {lowered}"
    );
    // And the next backup starts from there.
    let t2 = t1 + Duration::from_secs(60);
    let d = drive_job(&mut p, JobId(3), 100, t2, |_, _| false);
    let first = d.first_sends();
    let span = (first[99] - first[0]).as_secs_f64();
    let expected = 100.0 / lowered;
    assert!(span > expected * 0.8 && span < expected * 1.1, "{span} s");
}

#[test]
fn the_resends_of_a_burst_do_not_leave_together() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    // Every first send lost: all 32 resend, each on its own spread schedule.
    let d = drive_job(&mut p, JobId(1), 32, t0, |_, k| k == 1);
    assert!(d.outcomes.iter().all(|o| o.reached && o.sends == 2));
    let resent: BTreeMap<u32, Duration> = (d.putchunks.iter())
        .filter(|(_, _, k)| *k == 2)
        .map(|(t, no, _)| (*no, *t))
        .collect();
    let first: BTreeMap<u32, Duration> = (d.putchunks.iter())
        .filter(|(_, _, k)| *k == 1)
        .map(|(t, no, _)| (*no, *t))
        .collect();
    for (no, at) in &resent {
        let wait = (*at - first[no]).as_secs_f64();
        assert!(
            (1.0..=1.25).contains(&wait),
            "chunk {no} resent after {wait} s"
        );
    }
    let mut at: Vec<Duration> = resent.values().copied().collect();
    at.sort();
    assert!(at[31] - at[0] > Duration::from_millis(200), "{at:?}");
    let together = at
        .windows(2)
        .filter(|w| w[1] - w[0] < Duration::from_millis(1));
    assert!(together.count() < 8, "{at:?}");
}

#[test]
fn chunks_short_of_holders_for_want_of_room_do_not_slow_the_pace() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    let d = drive_job(&mut p, JobId(1), 8, t0, |_, _| true);
    assert!(d.outcomes.iter().all(|o| !o.reached && o.sends == 5));
    assert_eq!(p.backup_rate(), crate::engine::backup::INITIAL_RATE);
    // Given up in bounded time: the last wait ends within a quarter of 31 s.
    assert!(d.end - t0 < Duration::from_secs(39));
}

#[test]
fn ending_a_job_stops_its_chunks() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.start_job(JobId(1), JobKind::Backup);
    p.backup_chunk(JobId(1), chunk(0), rd(1), vec![], vec![], t0);
    p.start_job(JobId(2), JobKind::Restore);
    p.fetch_chunk(JobId(2), chunk(1), Expect::bytes(0, sha256_hex(&[])), t0);
    p.end_job(JobId(1));
    p.end_job(JobId(2));
    assert_eq!(p.load().sending + p.load().fetching, 0);
    assert_eq!(p.poll_timeout(), None);
}
