//! Unit tests of `backup`: the chunk schedule, the pace and the window.
use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn rng() -> StdRng {
    StdRng::seed_from_u64(1)
}

#[test]
fn stops_early_once_rd_distinct_peers_stored() {
    let (t0, rng) = (Instant::now(), &mut rng());
    let mut b = ChunkBackup::new(2, []);
    assert_eq!(b.poll(t0, rng), Action::SendPutChunk);
    assert_eq!(b.first_sent(), Some(t0));
    b.on_stored(PeerId(2));
    b.on_stored(PeerId(2)); // duplicated datagram
    assert!(matches!(
        b.poll(t0 + Duration::from_millis(100), rng),
        Action::WaitUntil(_)
    ));
    b.on_stored(PeerId(3));
    assert_eq!(
        b.poll(t0 + Duration::from_millis(200), rng),
        Action::Done { reached: true }
    );
    assert_eq!(b.sends(), 1);
}

#[test]
fn resends_on_the_spread_schedule_then_reports_below_rd() {
    let rng = &mut rng();
    let t0 = Instant::now();
    let mut b = ChunkBackup::new(3, [PeerId(9)]);
    b.on_stored(PeerId(2));
    let mut now = t0;
    let mut sends = Vec::new();
    let reached = loop {
        match b.poll(now, rng) {
            Action::SendPutChunk => sends.push((now - t0).as_secs_f64()),
            Action::WaitUntil(t) => now = t,
            Action::Done { reached } => break reached,
        }
    };
    assert!(!reached);
    assert_eq!(sends.len(), 5);
    // 0, 1, 3, 7, 15 s, each wait at most a quarter longer (`Retry::poll_spread`).
    for (k, pair) in sends.windows(2).enumerate() {
        let (wait, base) = (pair[1] - pair[0], f64::from(1u32 << k));
        assert!((base..=1.25 * base).contains(&wait), "{sends:?}");
    }
    assert_eq!(b.first_sent(), Some(t0));
}

#[test]
fn a_holder_gained_by_a_resend_means_loss() {
    let (t0, rng) = (Instant::now(), &mut rng());
    let mut b = ChunkBackup::new(2, []);
    assert_eq!(b.poll(t0, rng), Action::SendPutChunk);
    b.on_stored(PeerId(2));
    let Action::WaitUntil(resend) = b.poll(t0, rng) else {
        panic!("waits for STOREDs");
    };
    assert_eq!(b.poll(resend, rng), Action::SendPutChunk);
    assert!(!b.recovered_by_resend());
    b.on_stored(PeerId(3));
    assert!(b.recovered_by_resend());
}

#[test]
fn already_replicated_chunk_sends_nothing() {
    let mut b = ChunkBackup::new(1, [PeerId(4)]);
    assert_eq!(
        b.poll(Instant::now(), &mut rng()),
        Action::Done { reached: true }
    );
}

#[test]
fn window_grows_on_clean_rounds_and_halves_on_resend() {
    let mut w = Window::new(16, 4, 64);
    for _ in 0..100 {
        w.on_done(1, true, false);
    }
    assert_eq!(w.size(), 64);
    w.on_done(2, true, true);
    assert_eq!(w.size(), 32);
    // Too few peers: no loss, no shrinking.
    w.on_done(5, false, false);
    assert_eq!(w.size(), 32);
    for _ in 0..10 {
        w.on_done(5, false, true);
    }
    assert_eq!(w.size(), 4);
}

const CLEAN: Ended = Ended {
    first_sent: None,
    sent_at_rate: None,
    sends: 1,
    reached: true,
    recovered_by_resend: false,
};

/// A chunk first sent at `first_sent`, at rate `rate`, that a resend brought a holder.
fn lost(first_sent: Instant, rate: f64) -> Ended {
    Ended {
        first_sent: Some(first_sent),
        sent_at_rate: Some(rate),
        sends: 2,
        reached: true,
        recovered_by_resend: true,
    }
}

/// Sends `n` first sends as soon as the pace allows, from `t0`: their instants.
fn send_paced(p: &mut Pace, t0: Instant, n: usize) -> Vec<Instant> {
    let (mut now, mut sent) = (t0, Vec::new());
    while sent.len() < n {
        if p.try_send(now) {
            sent.push(now);
        } else {
            let next = p.next_send(now);
            assert!(next > now, "a timer that would spin");
            now = next;
        }
    }
    sent
}

#[test]
fn first_sends_are_spread_at_the_rate_not_sent_at_once() {
    let t0 = Instant::now();
    let mut p = Pace::default();
    assert_eq!(p.rate(), INITIAL_RATE);
    let sent = send_paced(&mut p, t0, 32);
    // One at once (a burst is 2 ms' worth, at least one), then one every 2 ms.
    let at_once = sent.iter().filter(|t| **t == t0).count();
    assert_eq!(at_once, 1, "{sent:?}");
    for pair in sent.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_micros(1999) && gap <= Duration::from_micros(2002),
            "{gap:?}"
        );
    }
    let span = sent[31] - t0;
    assert!(span >= Duration::from_millis(61) && span <= Duration::from_millis(63));
    // Fast: at the top rate, 50 chunks a millisecond; never more than the burst at once.
    let mut p = Pace::new(MAX_RATE);
    let sent = send_paced(&mut p, t0, 10_000);
    let span = (sent[9_999] - t0).as_secs_f64();
    assert!((0.19..0.21).contains(&span), "{span}");
    let at_once = sent.iter().filter(|t| **t == t0).count();
    assert_eq!(at_once, 100);
}

#[test]
fn the_pace_grows_on_clean_first_sends_only_while_it_holds_sends_back() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut p = Pace::default();
    // Nothing held back yet (a backup its disk holds back): no growth.
    assert!(p.try_send(t0));
    p.on_done(CLEAN, t0);
    assert_eq!(p.rate(), INITIAL_RATE);
    // Held back: each chunk confirmed on its first send adds to the rate, fast until the
    // first loss (slow start).
    send_paced(&mut p, t0, 10);
    for _ in 0..100 {
        p.on_done(CLEAN, t0 + ms(300));
    }
    let grown = INITIAL_RATE + 100.0 * SLOW_START_GROWTH;
    assert_eq!(p.rate(), grown);
    // Long after the last send held back: no growth.
    p.on_done(CLEAN, t0 + ms(5000));
    assert_eq!(p.rate(), grown);
    // A chunk confirmed only after a resend, but not because of a loss: no growth either.
    let slow = Ended { sends: 2, ..CLEAN };
    send_paced(&mut p, t0 + ms(5000), 10);
    p.on_done(slow, t0 + ms(5000));
    assert_eq!(p.rate(), grown);
    // After a loss, slower growth.
    p.on_done(lost(t0 + ms(4000), grown), t0 + ms(5100));
    assert_eq!(p.rate(), grown / 2.0);
    for _ in 0..100 {
        p.on_done(CLEAN, t0 + ms(5200));
    }
    assert_eq!(p.rate(), grown / 2.0 + 100.0 * GROWTH);
    // Never beyond the top.
    for _ in 0..1_000_000 {
        p.on_done(CLEAN, t0 + ms(5200));
    }
    assert_eq!(p.rate(), MAX_RATE);
}

#[test]
fn the_pace_halves_on_loss_once_per_round_and_never_below_the_minimum() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut p = Pace::new(1000.0);
    p.on_done(lost(t0, 1000.0), t0 + s(1));
    assert_eq!(p.rate(), 500.0);
    // Chunks of the same burst, sent before that decrease: already answered.
    for _ in 0..20 {
        p.on_done(lost(t0 + Duration::from_millis(500), 1000.0), t0 + s(2));
    }
    assert_eq!(p.rate(), 500.0);
    // A chunk sent after it: a new round, halved again.
    p.on_done(lost(t0 + s(1), 500.0), t0 + s(2));
    assert_eq!(p.rate(), 250.0);
    // Half the rate the lost chunk was sent at, not of what the rate grew to meanwhile.
    let mut q = Pace::new(4000.0);
    q.on_done(lost(t0, 1000.0), t0 + s(1));
    assert_eq!(q.rate(), 500.0);
    // Short of holders for want of room (sends spent, nothing recovered): not congestion.
    let no_room = Ended {
        first_sent: Some(t0 + s(3)),
        sent_at_rate: Some(250.0),
        sends: 5,
        reached: false,
        recovered_by_resend: false,
    };
    p.on_done(no_room, t0 + s(40));
    assert_eq!(p.rate(), 250.0);
    for k in 0..100 {
        p.on_done(lost(t0 + s(10 + k), p.rate()), t0 + s(11 + k));
    }
    assert_eq!(p.rate(), MIN_RATE);
    let sent = send_paced(&mut p, t0 + s(200), 3);
    let gap = (sent[2] - sent[1]).as_secs_f64();
    assert!((gap - 1.0 / MIN_RATE).abs() < 1e-5, "{gap}");
}

#[test]
fn resends_take_tokens_without_waiting_within_a_bounded_debt() {
    let t0 = Instant::now();
    let mut p = Pace::new(100.0);
    for _ in 0..20 {
        p.charge(t0);
    }
    // 20 resends at once: the next first send waits for 20 tokens (0.2 s at 100/s).
    assert!(!p.try_send(t0));
    let next = p.next_send(t0) - t0;
    assert!(next > Duration::from_millis(200) && next < Duration::from_millis(202));
    // Debt never beyond a second's worth.
    for _ in 0..10_000 {
        p.charge(t0);
    }
    let next = p.next_send(t0) - t0;
    assert!(next > Duration::from_secs(1) && next < Duration::from_millis(1011));
}

#[test]
fn the_window_and_the_chunks_ahead_follow_the_rate_within_bounds() {
    let bounds = (4, 1024);
    assert_eq!(Pace::new(1000.0).window(bounds), 1000);
    assert_eq!(Pace::new(MIN_RATE).window(bounds), 16);
    assert_eq!(Pace::new(1.0).window(bounds), 16, "the rate has a floor");
    assert_eq!(Pace::new(MAX_RATE).window(bounds), 1024);
    assert_eq!(Pace::new(1000.0).ahead(), 20);
    assert_eq!(Pace::default().ahead(), 10);
    assert_eq!(Pace::new(MIN_RATE).ahead(), 2);
    assert_eq!(Pace::new(MAX_RATE).ahead(), MAX_AHEAD);
}
