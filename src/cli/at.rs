//! `--at WHEN` (`restore PATH --at`, `versions PATH --at`): a moment in the past, and the
//! version of each file at that moment.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::control::VersionInfo;

/// `WHEN` in unix ms, at `now_ms`: an age back from now (`90m`, `3d`, `2w`: minutes, hours,
/// days, weeks) or a date and time in UTC (`2026-12-01`, `2026-12-01 14:00`,
/// `2026-12-01T14:00:30Z`, optionally `UTC`), or unix seconds (`@1796133600`).
pub fn parse_when(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    let err = || {
        format!(
            "--at {text:?}: expected an age such as 3d, 12h or 90m, or a date and time in UTC such as \"2026-12-01 14:00\""
        )
    };
    if let Some(secs) = t.strip_prefix('@') {
        // Unix seconds (as `date -d @S`), for scripts.
        let s: i64 = secs.parse().map_err(|_| err())?;
        return s.checked_mul(1000).ok_or_else(err);
    }
    if let Some(unit) = t.chars().last().filter(|c| "mhdw".contains(*c)) {
        if let Ok(n) = t[..t.len() - 1].parse::<i64>() {
            let ms = match unit {
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                _ => 7 * 86_400_000,
            };
            return n.checked_mul(ms).map(|back| now_ms - back).ok_or_else(err);
        }
    }
    let t = t.trim_end_matches("UTC").trim_end_matches('Z').trim();
    let (date, time) = match t.split_once([' ', 'T']) {
        Some((d, tm)) => (d, tm.trim()),
        None => (t, "00:00"),
    };
    let num = |s: &str| s.parse::<i64>().map_err(|_| err());
    let d: Vec<&str> = date.split('-').collect();
    let tm: Vec<&str> = time.split(':').collect();
    let ([y, mo, da], 2..=3) = (<[&str; 3]>::try_from(d).map_err(|_| err())?, tm.len()) else {
        return Err(err());
    };
    let (y, mo, da) = (num(y)?, num(mo)?, num(da)?);
    let (h, mi) = (num(tm[0])?, num(tm[1])?);
    let s = match tm.get(2) {
        Some(s) => num(s)?,
        None => 0,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return Err(err());
    }
    Ok((days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s) * 1000)
}

pub use crate::clock::utc;

/// Days from 1970-01-01 to the given date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The version of each file at `at_ms`, from `versions` (of one path or of the files below a
/// folder): its newest version complete by then; none for a file whose first version completed
/// later, or that was found gone (`deleted_at`) by then. By path.
pub fn at(versions: Vec<VersionInfo>, at_ms: i64) -> BTreeMap<PathBuf, VersionInfo> {
    let mut out: BTreeMap<PathBuf, VersionInfo> = BTreeMap::new();
    let mut gone: BTreeMap<PathBuf, bool> = BTreeMap::new();
    for v in versions {
        if let Some(d) = v.deleted_at {
            // Found gone at second `d`: gone by `at_ms` if that second had begun.
            let by_then = d.saturating_mul(1000) <= at_ms;
            *gone.entry(v.path.clone()).or_default() |= by_then;
        }
        let Some(done) = v.completed_ms.filter(|_| v.complete) else {
            continue;
        };
        if done > at_ms {
            continue;
        }
        match out.get(&v.path) {
            Some(kept) if kept.version > v.version => {}
            _ => {
                out.insert(v.path.clone(), v);
            }
        }
    }
    out.retain(|path, _| !gone.get(path).copied().unwrap_or(false));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn when_is_an_age_or_a_date_in_utc() {
        let now = 1_765_000_000_000;
        assert_eq!(parse_when("3d", now), Ok(now - 3 * DAY));
        assert_eq!(parse_when("90m", now), Ok(now - 90 * 60_000));
        assert_eq!(parse_when("2w", now), Ok(now - 14 * DAY));
        assert_eq!(parse_when("1970-01-01", now), Ok(0));
        assert_eq!(parse_when("@1796133630", now), Ok(1_796_133_630_000));
        assert_eq!(parse_when("2026-12-01 14:00", now), Ok(1_796_133_600_000));
        assert_eq!(
            parse_when("2026-12-01T14:00:30Z", now),
            Ok(1_796_133_630_000)
        );
        assert_eq!(
            parse_when("2026-12-01 14:00 UTC", now),
            Ok(1_796_133_600_000)
        );
        assert_eq!(parse_when("2024-02-29 00:00", now), Ok(1_709_164_800_000));
        // What `versions` shows reads back.
        assert_eq!(utc(1_796_133_659_999), "2026-12-01 14:00");
        assert_eq!(
            parse_when(&utc(1_796_133_600_000), now),
            Ok(1_796_133_600_000)
        );
        for bad in [
            "yesterday",
            "3x",
            "2026-13-01",
            "2026-12-01 25:00",
            "2026-12",
            "d",
            "@x",
        ] {
            let e = parse_when(bad, now).unwrap_err();
            assert!(e.contains("expected an age"), "{bad}: {e}");
        }
    }

    fn v(
        path: &str,
        version: u32,
        completed_ms: Option<i64>,
        deleted_at: Option<i64>,
    ) -> VersionInfo {
        VersionInfo {
            path: path.into(),
            version,
            file_id: String::new(),
            size: 0,
            mtime_ns: 0,
            desired_rd: 1,
            complete: completed_ms.is_some(),
            min_perceived_rd: 1,
            encrypted: false,
            deleted_at,
            completed_ms,
        }
    }

    #[test]
    fn each_file_as_it_was_then() {
        let versions = vec![
            v("/w/a", 1, Some(1_000), None),
            v("/w/a", 2, Some(5_000), None),
            v("/w/a", 3, None, None), // unfinished
            v("/w/b", 1, Some(7_000), None),
            v("/w/gone", 1, Some(2_000), Some(4)), // found gone at second 4
        ];
        let at = |ms| -> Vec<(String, u32)> {
            at(versions.clone(), ms)
                .into_values()
                .map(|v| (v.path.display().to_string(), v.version))
                .collect()
        };
        assert_eq!(at(500), vec![]);
        assert_eq!(at(3_000), vec![("/w/a".into(), 1), ("/w/gone".into(), 1)]);
        assert_eq!(at(4_000), vec![("/w/a".into(), 1)]);
        assert_eq!(at(6_000), vec![("/w/a".into(), 2)]);
        assert_eq!(at(9_000), vec![("/w/a".into(), 2), ("/w/b".into(), 1)]);
    }
}
