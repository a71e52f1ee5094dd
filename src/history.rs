//! Which versions of a file its folder keeps as they age (`[[watch]] keep`): every version for
//! a while, then one an hour, one a day, one a week, as Time Machine and Syncthing's staggered
//! versioning do. Pure: the catalog applies it (`Catalog::forget_by_policy`).
//!
//! A rule is a list of tiers, `"1h:all, 1d:hourly, 30d:daily, 1y:weekly"`: versions up to an
//! hour old are all kept; up to a day old, one per hour; up to 30 days, one per day; up to a
//! year, one per week; older ones go. The newest complete version is kept whatever its age,
//! and `keep_versions` caps how many are kept in all.
//!
//! Ages are counted on the daemon's running clock (`Version::age_ms`), not the wall clock: a
//! clock set years ahead, or a computer off for a month, prunes nothing early.

use std::fmt;
use std::time::Duration;

/// The default history of a watched folder.
pub const DEFAULT_KEEP: &str = "1h:all, 1d:hourly, 30d:daily, 1y:weekly";

/// One tier: versions up to `within` old are kept one per `every` (None: all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    pub within: Duration,
    pub every: Option<Duration>,
}

/// A folder's history rule: tiers by increasing age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keep {
    tiers: Vec<Tier>,
}

impl Keep {
    /// Parses `"1h:all, 1d:hourly, 30d:daily, 1y:weekly"`: comma-separated `AGE:EVERY`, ages
    /// increasing; EVERY is `all`, `hourly`, `daily`, `weekly`, `monthly` (30 days) or a
    /// duration (`10m`, `6h`). `"none"` keeps only the newest version, `"all"` every version.
    pub fn parse(text: &str) -> Result<Keep, String> {
        let text = text.trim();
        match text {
            "none" => return Ok(Keep { tiers: Vec::new() }),
            "all" => return Ok(Keep::all()),
            _ => {}
        }
        let mut tiers: Vec<Tier> = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let (age, every) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?}: expected AGE:EVERY, as in \"1d:hourly\""))?;
            let within = parse_age(age.trim()).map_err(|e| format!("{part:?}: {e}"))?;
            let every = match every.trim() {
                "all" => None,
                "hourly" => Some(Duration::from_secs(3600)),
                "daily" => Some(Duration::from_secs(86_400)),
                "weekly" => Some(Duration::from_secs(7 * 86_400)),
                "monthly" => Some(Duration::from_secs(30 * 86_400)),
                other => Some(parse_age(other).map_err(|e| {
                    format!("{part:?}: {e} (or all, hourly, daily, weekly, monthly)")
                })?),
            };
            if let Some(last) = tiers.last() {
                if within <= last.within {
                    return Err(format!(
                        "{part:?}: ages must increase ({} is not beyond {})",
                        age.trim(),
                        show(last.within)
                    ));
                }
            }
            tiers.push(Tier { within, every });
        }
        Ok(Keep { tiers })
    }

    /// Every version, whatever its age (up to `keep_versions`): what `keep_versions` alone
    /// meant before `keep` existed.
    pub fn all() -> Keep {
        Keep {
            tiers: vec![Tier {
                within: Duration::MAX,
                every: None,
            }],
        }
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The versions to forget among `versions` (complete ones, newest first), at most `cap`
    /// kept in all, the newest first. The newest is always kept. Going from older to newer, a
    /// version is kept when its tier keeps all, or when it is at least its tier's `every`
    /// newer than the last version kept (so as versions age into a sparser tier, the ones
    /// between go, and the older one of each stretch stays); a version older than every tier
    /// goes. A version superseded less than `grace_ms` ago (its next newer version is younger
    /// than that: the guard's window) is kept whatever its tier, so that the guard can hold the
    /// history before a mass change prunes the versions it replaced; only the cap takes it.
    /// Returns indexes into `versions`, in increasing order.
    pub fn forget(&self, versions: &[Version], cap: u32, grace_ms: i64) -> Vec<usize> {
        let mut kept = vec![false; versions.len()];
        let mut last_kept: Option<i64> = None;
        for (i, v) in versions.iter().enumerate().rev() {
            let keep = i == 0
                || versions[i - 1].age_ms < grace_ms
                || match self.tier_of(v.age_ms) {
                    None => false,
                    Some(Tier { every: None, .. }) => true,
                    Some(Tier {
                        every: Some(every), ..
                    }) => {
                        last_kept.is_none_or(|older| older - v.age_ms >= every.as_millis() as i64)
                    }
                };
            if keep {
                kept[i] = true;
                last_kept = Some(v.age_ms);
            }
        }
        let mut room = cap.max(1);
        (0..versions.len())
            .filter(|&i| {
                let stays = kept[i] && room > 0;
                room -= u32::from(stays);
                !stays
            })
            .collect()
    }

    fn tier_of(&self, age_ms: i64) -> Option<Tier> {
        (self.tiers.iter())
            .find(|t| i128::from(age_ms) <= t.within.as_millis() as i128)
            .copied()
    }
}

impl Default for Keep {
    fn default() -> Keep {
        Keep::parse(DEFAULT_KEEP).expect("the default history rule parses")
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tiers.is_empty() {
            return write!(f, "none");
        }
        if *self == Keep::all() {
            return write!(f, "all");
        }
        let parts: Vec<String> = (self.tiers.iter())
            .map(|t| {
                let every = match t.every.map(|e| e.as_secs()) {
                    None => "all".to_owned(),
                    Some(3600) => "hourly".to_owned(),
                    Some(86_400) => "daily".to_owned(),
                    Some(604_800) => "weekly".to_owned(),
                    Some(2_592_000) => "monthly".to_owned(),
                    Some(_) => show(t.every.unwrap_or_default()),
                };
                format!("{}:{every}", show(t.within))
            })
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// How many first bytes of a file `looks_random` is decided on.
pub const SAMPLE_BYTES: usize = 64 * 1024;

/// Whether a file's first bytes (`counts`: how many of each byte value, `n` bytes in all) look
/// like ciphertext or compressed data: at least 4 KiB of them, at 7.5 bits of entropy a byte
/// or more (random bytes give about 7.99 over 64 KiB, text about 4.5, a PDF or an office
/// document about 6 to 7.6 over its first bytes).
pub fn looks_random(counts: &[u64; 256], n: u64) -> bool {
    if n < 4096 {
        return false;
    }
    let entropy: f64 = (counts.iter())
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum();
    entropy >= 7.5
}

/// A guard against mass change (ransomware, a sync gone wrong, a script run on the wrong
/// folder): when at least `min_files` files of a folder, and `share` of its files, changed or
/// went within `within`, its history stops being pruned (`Catalog::hold_history`) until the
/// admin says (`peerstash history resume DIR`) or, if set, `hold` has passed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guard {
    pub share: f64,
    pub min_files: u32,
    /// Also trips when this many files (0: never) got content that looks like ciphertext
    /// where their version before did not (`looks_random`), whatever their share.
    pub ciphertext_files: u32,
    pub within: Duration,
    pub hold: Option<Duration>,
}

impl Default for Guard {
    /// 20% of a folder's files, and at least 200, within 10 minutes; held until resumed.
    fn default() -> Guard {
        Guard {
            share: 0.2,
            min_files: 200,
            ciphertext_files: 20,
            within: Duration::from_secs(600),
            hold: None,
        }
    }
}

impl Guard {
    /// `"20%"` (a share of the folder's files) or `"off"`, with the other keys as given.
    pub fn parse_share(text: &str) -> Result<Option<f64>, String> {
        if text.trim() == "off" {
            return Ok(None);
        }
        let pct = text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|p| (0.0..=100.0).contains(p) && *p > 0.0)
            .ok_or_else(|| format!("{text:?}: expected a share such as \"20%\", or \"off\""))?;
        Ok(Some(pct / 100.0))
    }

    /// Whether `changed` files of a folder of `files` (its files backed up, gone ones within
    /// the window included) changed too many within the window.
    pub fn trips(&self, changed: u64, files: u64) -> bool {
        changed >= u64::from(self.min_files) && changed as f64 >= self.share * files.max(1) as f64
    }

    /// Whether `turned` files turning to ciphertext within the window is too many.
    pub fn trips_on_ciphertext(&self, turned: u64) -> bool {
        self.ciphertext_files > 0 && turned >= u64::from(self.ciphertext_files)
    }
}

/// The changes seen in one folder within a guard's window (ms on a monotonic clock): each
/// file counted once.
#[derive(Debug, Default)]
pub struct Changes {
    seen: std::collections::VecDeque<(i64, Vec<u8>)>,
    counted: std::collections::HashMap<Vec<u8>, u32>,
    /// The same for the files whose new content looks like ciphertext where the old did not.
    turned: Box<Option<Changes>>,
}

impl Changes {
    /// `path` changed (a new version, or found gone) at `now_ms`; returns how many distinct
    /// files changed within `within` up to now. Memory is bounded by the window's changes.
    pub fn note(&mut self, path: &[u8], now_ms: i64, within: Duration) -> u64 {
        self.expire(now_ms, within);
        if let Some(turned) = self.turned.as_mut() {
            turned.expire(now_ms, within);
        }
        self.seen.push_back((now_ms, path.to_vec()));
        *self.counted.entry(path.to_vec()).or_default() += 1;
        self.counted.len() as u64
    }

    /// `path` got content that looks like ciphertext where its version before did not;
    /// returns how many distinct files did within `within` up to now.
    pub fn note_turned(&mut self, path: &[u8], now_ms: i64, within: Duration) -> u64 {
        let turned = self.turned.get_or_insert_with(Changes::default);
        turned.note(path, now_ms, within)
    }

    fn expire(&mut self, now_ms: i64, within: Duration) {
        let oldest = now_ms - within.as_millis() as i64;
        while let Some((at, _)) = self.seen.front() {
            if *at > oldest {
                break;
            }
            let (_, path) = self.seen.pop_front().expect("front exists");
            if let Some(n) = self.counted.get_mut(&path) {
                *n -= 1;
                if *n == 0 {
                    self.counted.remove(&path);
                }
            }
        }
    }
}

/// One complete version as the rule sees it: how old it is (ms on the running clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub age_ms: i64,
}

/// A version's age at `now_run_ms` on the daemon's running clock: from when it became complete
/// (`completed_run_ms`, on the same clock) or, for a version recorded before that clock was
/// kept, by the wall clock; never more than the wall clock says (a version is not older than
/// its wall-clock age), never below 0.
pub fn age_ms(
    now_run_ms: i64,
    completed_run_ms: Option<i64>,
    now_wall_ms: i64,
    completed_wall_ms: Option<i64>,
) -> i64 {
    let wall = completed_wall_ms.map(|c| now_wall_ms - c);
    let run = completed_run_ms.map(|c| now_run_ms - c);
    let age = match (run, wall) {
        (Some(run), Some(wall)) => run.min(wall),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => 0,
    };
    age.max(0)
}

/// `30s`, `10m`, `1h`, `2d`, `1w`, `1y` (365 days).
fn parse_age(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (s, m, h, d, w or y)"))?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a number and a unit, as in \"30d\""))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => return Err(format!("{text:?}: unit {unit:?} is not s, m, h, d, w or y")),
    };
    match n.checked_mul(secs) {
        Some(s) if s > 0 => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "{text:?} must be above 0 and below 500 billion years"
        )),
    }
}

fn show(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, secs) in [
        ("y", 365 * 86_400),
        ("w", 7 * 86_400),
        ("d", 86_400),
        ("h", 3600),
        ("m", 60),
    ] {
        if s % secs == 0 {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests;
