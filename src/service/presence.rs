//! Whether a watched folder is really there, and how long a deleted file has been absent.
//! A folder that is missing, or that sits on another file system than the one it was seen on
//! while holding none of its backed-up files (a disk not mounted: the empty mount point), is
//! *unavailable*: nothing under it is marked deleted nor expires until it is back.
//! `keep_deleted` counts absence with the monotonic clock, only while the folder is available.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::daemon::Node;

/// Backed-up paths looked for on a file system that is not the one the folder was seen on.
const SAMPLE: usize = 256;
/// A wall clock that moved this much more (or less) than the monotonic one between two checks
/// is said to have jumped.
const JUMP: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presence {
    /// There, on its file system (device id `dev`).
    Available { dev: u64 },
    /// Not there, or not its file system: why, in words for the admin.
    Unavailable(String),
}

impl Presence {
    pub fn is_available(&self) -> bool {
        matches!(self, Presence::Available { .. })
    }
}

fn dev_key(root: &Path) -> String {
    format!("watch_dev {}", root.to_string_lossy())
}

/// Looks at a watched folder and decides whether it is available. The device it is found on
/// is recorded in the catalog (`meta`); another device is accepted only when it holds some of
/// the folder's backed-up files (the data moved to a new disk), never when it holds none (a
/// mount point whose disk is not mounted), and a folder that has backed-up files but was never
/// seen is judged the same way.
pub async fn probe(node: &Arc<Node>, root: &Path) -> Presence {
    let r = root.to_path_buf();
    let stat = tokio::task::spawn_blocking(move || std::fs::metadata(r)).await;
    let dev = match stat {
        Ok(Ok(m)) if m.is_dir() => m.dev(),
        Ok(Ok(_)) => return Presence::Unavailable("not a folder".into()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Presence::Unavailable("missing".into())
        }
        Ok(Err(e)) => return Presence::Unavailable(format!("cannot be read: {e}")),
        Err(e) => return Presence::Unavailable(format!("internal error: {e}")),
    };
    let seen = node
        .catalog
        .recorded_dev_or_sample(dev_key(root), dev, root, SAMPLE)
        .await;
    let (recorded, sample) = match seen {
        Ok(s) => s,
        Err(e) => return Presence::Unavailable(format!("the catalog cannot tell: {e}")),
    };
    if recorded == Some(dev) {
        return Presence::Available { dev };
    }
    let known = sample.len();
    let found = tokio::task::spawn_blocking(move || {
        sample
            .iter()
            .any(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.dev() == dev))
    })
    .await
    .unwrap_or(false);
    if known > 0 && !found {
        return Presence::Unavailable(match recorded {
            Some(was) => format!(
                "on another file system (device {dev}, was {was}) holding none of its \
                 backed-up files: not mounted? (restore a file there to accept this one)"
            ),
            None => "none of its backed-up files is there: not mounted? (restore a file \
                     there to accept it)"
                .into(),
        });
    }
    if let Some(was) = recorded {
        tracing::warn!(
            "{} is now on another file system (device {dev}, was {was}) that holds its files: \
             watching it there",
            root.display()
        );
    }
    let key = dev_key(root);
    if let Err(e) = node.catalog.set_meta(&key, dev.to_string()).await {
        tracing::error!("cannot record the file system of {}: {e}", root.display());
    }
    Presence::Available { dev }
}

/// The mount (its id in /proc/self/mountinfo) that holds `path`: a new one after an unmount and
/// a mount again, even of the same device, when the kernel dropped our inotify watches.
pub fn mount_of(path: &Path) -> Option<u64> {
    let path = path.canonicalize().ok()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_in(&table, &path)
}

/// The id of the mount in `table` (mountinfo text) whose mount point holds `path` most closely
/// (the last one listed when mounts are stacked on one point).
fn mount_in(table: &str, path: &Path) -> Option<u64> {
    let mut best: Option<(usize, u64)> = None;
    for line in table.lines() {
        let mut fields = line.split(' ');
        let (Some(id), Some(_parent), Some(_dev), Some(_root), Some(point)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let (Ok(id), point) = (id.parse::<u64>(), unescape(point)) else {
            continue;
        };
        if path.starts_with(&point) {
            let depth = Path::new(&point).components().count();
            if best.is_none_or(|(d, _)| depth >= d) {
                best = Some((depth, id));
            }
        }
    }
    best.map(|(_, id)| id)
}

/// mountinfo writes space, tab, newline and backslash in mount points as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Counts absence for `keep_deleted` by the monotonic clock, check after check. A path is
/// credited the time between two checks only when it was absent, in an available folder, at
/// both (so a path is never credited time before it was found gone, nor time its folder was
/// unavailable); the first check after a start credits nothing (the daemon did not see the time
/// it was stopped, and a wall clock set ahead meanwhile must not count).
#[derive(Default)]
pub struct Absence {
    last: Option<(Instant, SystemTime)>,
    absent: HashSet<PathBuf>,
}

/// What one expiry check credits.
#[derive(Debug, PartialEq, Eq)]
pub struct Credit {
    /// Time to add to each path of `paths`.
    pub time: Duration,
    pub paths: Vec<PathBuf>,
    /// Seconds the wall clock moved beyond (or short of, when negative) the monotonic clock
    /// since the last check, when that is more than a minute.
    pub wall_jump_s: Option<i64>,
}

impl Absence {
    /// A check at `mono` (monotonic) and `wall` (wall clock) found `absent` gone in available
    /// folders.
    pub fn check(&mut self, mono: Instant, wall: SystemTime, absent: Vec<PathBuf>) -> Credit {
        let absent: HashSet<PathBuf> = absent.into_iter().collect();
        let previous = std::mem::replace(&mut self.absent, absent);
        let Some((mono0, wall0)) = self.last.replace((mono, wall)) else {
            return Credit {
                time: Duration::ZERO,
                paths: Vec::new(),
                wall_jump_s: None,
            };
        };
        let time = mono.saturating_duration_since(mono0);
        let wall_ms = match wall.duration_since(wall0) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        };
        let drift_ms = wall_ms - time.as_millis() as i64;
        let wall_jump_s =
            (drift_ms.unsigned_abs() > JUMP.as_millis() as u64).then_some(drift_ms / 1000);
        let mut paths: Vec<PathBuf> = self.absent.intersection(&previous).cloned().collect();
        paths.sort();
        Credit {
            time,
            paths,
            wall_jump_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absence_is_counted_by_the_monotonic_clock_between_two_checks() {
        let mut a = Absence::default();
        let (m0, w0) = (Instant::now(), SystemTime::now());
        let f = PathBuf::from("/w/f");
        // The first check after a start credits nothing, whatever the wall clock says.
        let c = a.check(m0, w0 + Duration::from_secs(7200), vec![f.clone()]);
        assert_eq!(c.time, Duration::ZERO);
        assert!(c.paths.is_empty());
        // 30 s later by the monotonic clock: 30 s for a path absent at both checks.
        let g = PathBuf::from("/w/g");
        let m1 = m0 + Duration::from_secs(30);
        let c = a.check(
            m1,
            w0 + Duration::from_secs(7230),
            vec![f.clone(), g.clone()],
        );
        assert_eq!(c.time, Duration::from_secs(30));
        assert_eq!(
            c.paths,
            vec![f.clone()],
            "g was not absent at the last check"
        );
        assert_eq!(c.wall_jump_s, None);
        // The wall clock jumps two hours ahead: reported, and still 30 s counted.
        let m2 = m1 + Duration::from_secs(30);
        let c = a.check(
            m2,
            w0 + Duration::from_secs(7230 + 30 + 7200),
            vec![g.clone()],
        );
        assert_eq!(c.time, Duration::from_secs(30));
        assert_eq!(c.paths, vec![g.clone()]);
        assert_eq!(c.wall_jump_s, Some(7200));
        // ... or back: reported, nothing more counted.
        let m3 = m2 + Duration::from_secs(30);
        let c = a.check(m3, w0, vec![g.clone()]);
        assert_eq!(c.time, Duration::from_secs(30));
        assert!(c.wall_jump_s.is_some_and(|j| j < -7000));
        // A path whose folder became unavailable is not in `absent`: not credited, and not
        // credited at the next check either.
        let c = a.check(m3 + Duration::from_secs(30), w0, vec![]);
        assert!(c.paths.is_empty());
        let c = a.check(m3 + Duration::from_secs(60), w0, vec![g.clone()]);
        assert!(c.paths.is_empty());
    }

    #[test]
    fn the_mount_holding_a_path_is_the_innermost_and_last_stacked() {
        let table = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /mnt/usb rw - tmpfs tmpfs rw
31 22 0:41 / /mnt/usb rw - tmpfs tmpfs rw
32 22 0:42 / /mnt/with\\040space rw - tmpfs tmpfs rw
";
        assert_eq!(mount_in(table, Path::new("/home/x")), Some(22));
        assert_eq!(mount_in(table, Path::new("/mnt/usb/photos")), Some(31));
        assert_eq!(mount_in(table, Path::new("/mnt/usbx")), Some(22));
        assert_eq!(mount_in(table, Path::new("/mnt/with space/a")), Some(32));
    }
}
