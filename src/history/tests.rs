use super::*;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

#[test]
fn rules_parse_and_read_back() {
    let k = Keep::default();
    assert_eq!(k.to_string(), DEFAULT_KEEP);
    assert_eq!(k.tiers().len(), 4);
    assert_eq!(k.tiers()[0].every, None);
    assert_eq!(k.tiers()[3].within, Duration::from_secs(365 * 86_400));
    let custom = Keep::parse(" 30m:all,2d:6h , 8w:monthly").unwrap();
    assert_eq!(custom.to_string(), "30m:all, 2d:6h, 8w:monthly");
    assert!(Keep::parse("none").unwrap().tiers().is_empty());
    assert_eq!(Keep::parse("all").unwrap(), Keep::all());
    assert_eq!(Keep::all().to_string(), "all");
    let old = [
        Version { age_ms: 0 },
        Version { age_ms: 1 },
        Version { age_ms: 900 * DAY },
    ];
    assert!(
        Keep::all().forget(&old, 3, 0).is_empty(),
        "all, whatever their age"
    );
    for (bad, says) in [
        ("1d", "AGE:EVERY"),
        ("1d:hourly, 1h:all", "ages must increase"),
        ("1x:all", "unit"),
        ("0d:all", "above 0"),
        ("1d:sometimes", "hourly"),
        ("d:all", "not a number"),
    ] {
        let e = Keep::parse(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

/// Applies `keep` after each new version, as the daemon does, to a version every `step` ms for
/// `span` ms; returns the ages of those left at the end, newest first.
fn run(keep: &Keep, cap: u32, step: i64, span: i64) -> Vec<i64> {
    let mut made: Vec<i64> = Vec::new(); // times made, newest first
    let mut now = 0;
    while now <= span {
        made.insert(0, now);
        let versions: Vec<Version> = (made.iter()).map(|t| Version { age_ms: now - t }).collect();
        for i in keep.forget(&versions, cap, 0).into_iter().rev() {
            made.remove(i);
        }
        now += step;
    }
    let end = now - step;
    made.iter().map(|t| end - t).collect()
}

/// A year of changes every 10 minutes under the default rule: everything of the last hour,
/// then about one an hour for a day, one a day for 30 days, one a week for the year, and
/// nothing older; no tier leaves a hole twice its spacing.
#[test]
fn a_year_of_changes_every_ten_minutes() {
    let ages = run(&Keep::default(), u32::MAX, 10 * MIN, 365 * DAY);
    assert_eq!(ages[0], 0, "the newest is kept");
    let within = |lo: i64, hi: i64| ages.iter().filter(|a| **a > lo && **a <= hi).count();
    assert_eq!(within(-1, HOUR), 7, "the last hour: all ({ages:?})");
    let hourly = within(HOUR, DAY);
    assert!((20..=24).contains(&hourly), "hourly for a day: {hourly}");
    let daily = within(DAY, 30 * DAY);
    assert!((27..=30).contains(&daily), "daily for 30 days: {daily}");
    let weekly = within(30 * DAY, 365 * DAY);
    assert!((45..=50).contains(&weekly), "weekly for a year: {weekly}");
    assert!(ages.len() < 110, "{} kept", ages.len());
    // Spacing: within each tier, no gap beyond twice its period.
    for w in ages.windows(2) {
        let (newer, older) = (w[0], w[1]);
        let limit = match older {
            a if a <= HOUR => 10 * MIN,
            a if a <= DAY => 2 * HOUR,
            a if a <= 30 * DAY => 2 * DAY,
            _ => 14 * DAY + DAY,
        };
        assert!(older - newer <= limit, "a hole from {newer} to {older} ms");
    }
}

#[test]
fn the_cap_keeps_the_newest_and_the_newest_survives_any_rule() {
    let ages = run(&Keep::default(), 5, 10 * MIN, 30 * DAY);
    assert_eq!(ages, vec![0, 10 * MIN, 20 * MIN, 30 * MIN, 40 * MIN]);
    // "none": only the newest, even a year old.
    let none = Keep::parse("none").unwrap();
    let versions = [Version { age_ms: 365 * DAY }, Version { age_ms: 400 * DAY }];
    assert_eq!(none.forget(&versions, 100, 0), vec![1]);
    // The newest is kept even when older than every tier.
    assert_eq!(Keep::default().forget(&versions, 100, 0), vec![1]);
}

/// Ages count the running clock, the wall clock only when it says less: a clock set ahead
/// prunes nothing early, a clock set back makes nothing negative.
#[test]
fn ages_do_not_follow_a_wrong_clock() {
    // Made at run 1,000 / wall 5,000; now run 2,000.
    assert_eq!(age_ms(2_000, Some(1_000), 6_000, Some(5_000)), 1_000);
    // The wall clock jumped a year ahead: still 1,000.
    assert_eq!(
        age_ms(2_000, Some(1_000), 5_000 + 365 * DAY, Some(5_000)),
        1_000
    );
    // Set back before the version: 0.
    assert_eq!(age_ms(2_000, Some(1_000), 4_000, Some(5_000)), 0);
    // A version from before the running clock was kept: the wall clock.
    assert_eq!(age_ms(2_000, None, 9_000, Some(5_000)), 4_000);
    assert_eq!(age_ms(2_000, None, 9_000, None), 0);
}

#[test]
fn the_guard_trips_on_a_share_of_at_least_its_minimum_within_its_window() {
    let g = Guard::default();
    assert!(!g.trips(199, 300), "fewer than 200");
    assert!(g.trips(200, 300));
    assert!(!g.trips(300, 10_000), "300 of 10,000 is 3%");
    assert!(g.trips(2_000, 10_000));
    assert_eq!(Guard::parse_share("20%"), Ok(Some(0.2)));
    assert_eq!(Guard::parse_share("off"), Ok(None));
    for bad in ["20", "0%", "120%", "x%"] {
        assert!(Guard::parse_share(bad).is_err(), "{bad}");
    }
    // The window: a file counted once, changes older than the window forgotten.
    let mut c = Changes::default();
    let w = Duration::from_secs(600);
    assert_eq!(c.note(b"/a", 0, w), 1);
    assert_eq!(c.note(b"/a", 1_000, w), 1, "the same file again");
    assert_eq!(c.note(b"/b", 2_000, w), 2);
    assert_eq!(
        c.note(b"/c", 600_500, w),
        3,
        "/a's first change left the window, its second not"
    );
    assert_eq!(c.note(b"/d", 602_001, w), 2, "/a and /b left it");
}

/// The guard's grace: a version replaced within the window stays whatever its tier (the guard
/// may yet hold the folder); the cap still counts.
#[test]
fn a_version_replaced_within_the_grace_stays_until_it_passes() {
    let keep = Keep::parse("none").unwrap();
    let v = |ages: &[i64]| {
        ages.iter()
            .map(|&age_ms| Version { age_ms })
            .collect::<Vec<_>>()
    };
    // Replaced 5 minutes ago, grace 10 minutes: kept; 11 minutes ago: goes.
    assert!(keep
        .forget(&v(&[5 * MIN, 3 * DAY]), 100, 10 * MIN)
        .is_empty());
    assert_eq!(
        keep.forget(&v(&[11 * MIN, 3 * DAY]), 100, 10 * MIN),
        vec![1]
    );
    // Only the one replaced recently: the older ones go.
    assert_eq!(
        keep.forget(&v(&[5 * MIN, DAY, 2 * DAY]), 100, 10 * MIN),
        vec![2]
    );
    // The cap still counts.
    assert_eq!(keep.forget(&v(&[5 * MIN, DAY]), 1, 10 * MIN), vec![1]);
}

#[test]
fn ciphertext_is_told_from_text_and_documents() {
    let counts = |bytes: &[u8]| {
        let mut c = [0u64; 256];
        bytes.iter().for_each(|&b| c[b as usize] += 1);
        (c, bytes.len() as u64)
    };
    let random: Vec<u8> = (0..SAMPLE_BYTES as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i as u8).rotate_left(3))
        .collect();
    let (c, n) = counts(&random);
    assert!(looks_random(&c, n), "random bytes");
    let text = "Dear Alice, the meeting is moved to Thursday at ten. ".repeat(1500);
    let (c, n) = counts(text.as_bytes());
    assert!(!looks_random(&c, n), "text");
    let (c, n) = counts(&[0u8; 10_000]);
    assert!(!looks_random(&c, n), "zeros");
    let (c, n) = counts(&random[..1000]);
    assert!(!looks_random(&c, n), "too short to tell");
    // The guard counts files turned to ciphertext apart, with a threshold of its own.
    let g = Guard::default();
    assert!(!g.trips_on_ciphertext(19) && g.trips_on_ciphertext(20));
    let off = Guard {
        ciphertext_files: 0,
        ..g
    };
    assert!(!off.trips_on_ciphertext(1_000));
    let mut ch = Changes::default();
    let w = Duration::from_secs(600);
    assert_eq!(ch.note_turned(b"/a", 0, w), 1);
    assert_eq!(ch.note_turned(b"/a", 5, w), 1);
    assert_eq!(ch.note_turned(b"/b", 10, w), 2);
    ch.note(b"/c", 700_000, w);
    assert_eq!(
        ch.note_turned(b"/d", 700_001, w),
        1,
        "the others left the window"
    );
}
