//! The configuration file (`/etc/peerstash/peerstash.toml`, SPEC §4): read, checked and typed.
//! Every error names the key and the reason, in one line.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod keys;
pub use keys::*;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/peerstash/peerstash.toml";
/// `peer.control_socket` when the config does not set it.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/peerstash/control.sock";
/// Protocol versions this build implements.
pub const SUPPORTED_PROTOCOLS: &[&str] = &["1.0", "2.0"];
/// What `peer.protocol` is when the config does not say (SPEC §4).
pub const DEFAULT_PROTOCOL: &str = "2.0";

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub peer: PeerConfig,
    pub network: NetworkConfig,
    pub storage: StorageConfig,
    pub watch: Vec<WatchConfig>,
    pub metrics: MetricsConfig,
}

/// `[metrics]`: Prometheus metrics (`/metrics`) and a read-only dashboard (`/`), off unless
/// `listen` is set, and only on a loopback address (they are for this computer).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsConfig {
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PeerConfig {
    pub id: u32,
    pub protocol: String,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    /// 2.0: a holder not heard from this long is counted lost, and its copies re-created.
    pub holder_timeout: Duration,
    /// 2.0: how often this peer asks each holder to prove it still has a few of our chunks
    /// (`engine::verify`).
    pub verify_every: Duration,
    /// The master key (SPEC §3 "Encrypted chunks"): read by the daemon, not here, so that the
    /// `peerstash` command can read this config without access to the key.
    pub master_key_file: PathBuf,
}

impl PeerConfig {
    /// Whether this peer runs the 2.0 enhancements (SPEC §3).
    pub fn enhanced(&self) -> bool {
        self.protocol != "1.0"
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    pub interface: Ipv4Addr,
    pub mc: SocketAddrV4,
    pub mdb: SocketAddrV4,
    pub mdr: SocketAddrV4,
    pub ttl: u32,
    /// The LAN key (SPEC §3): read by the daemon at start and reload, not here, so that the
    /// `peerstash` command can read this config without access to the key.
    pub lan_key_file: Option<PathBuf>,
    /// Ask the kernel for large receive buffers (forced past `net.core.rmem_max` when root), so
    /// a burst of chunks is not dropped while the daemon is busy. False: keep the kernel's
    /// default, as a peer without root or the sysctl has (the backup pacing copes with it).
    pub raise_receive_buffers: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StorageConfig {
    /// Bytes offered to other peers' chunks.
    pub quota: u64,
}

/// At most this many versions of a file kept when `keep_versions` is not set: the default
/// `keep` rule keeps about 110 over a year of changes every 10 minutes.
pub const DEFAULT_KEEP_VERSIONS: i64 = 200;

#[derive(Clone, Debug, PartialEq)]
pub struct WatchConfig {
    pub path: PathBuf,
    pub replication: u8,
    /// Which versions are kept as they age (`keep`, `history::Keep`).
    pub keep: crate::history::Keep,
    /// At most this many versions of a file are kept (`keep_versions`), the newest first.
    pub keep_versions: u32,
    /// The guard against mass change (`guard`, `guard_min_files`, `guard_within`,
    /// `guard_hold`); None: `guard = "off"`.
    pub guard: Option<crate::history::Guard>,
    pub keep_deleted: Duration,
    pub exclude: Vec<String>,
    /// A file is backed up once no change was seen for this long (never half written).
    pub quiet: Duration,
    /// …or once it has waited this long since its first change, quiet or not: a file that is
    /// never quiet (a log) still gets versions, from a consistent copy (`service::copy`).
    pub max_delay: Duration,
    /// The folder is compared with the catalog this often, for changes inotify cannot report
    /// (a write through a hard link outside the folder, say); zero: never.
    pub rescan: Duration,
    /// The daemon's own paths inside this folder (`peer.state_dir`, `peer.control_socket`):
    /// never backed up nor watched, whatever `exclude` says. Set by `Config::exclude_own_paths`.
    pub own: Vec<PathBuf>,
    /// Chunks encrypted under the master key: unreadable by the peers that host them.
    pub encrypt: bool,
}

impl WatchConfig {
    /// The exclude patterns, matched against paths relative to the watched folder
    /// (`*` also crosses `/`, so "*.tmp" excludes such files at any depth).
    pub fn exclude_set(&self) -> globset::GlobSet {
        let mut b = globset::GlobSetBuilder::new();
        for pattern in &self.exclude {
            // Checked when the config was read.
            if let Ok(glob) = globset::Glob::new(pattern) {
                b.add(glob);
            }
        }
        b.build().unwrap_or_else(|_| globset::GlobSet::empty())
    }

    /// Whether `path` (below this folder) is excluded: by a pattern, or as the daemon's own.
    pub fn excludes(&self, set: &globset::GlobSet, path: &Path) -> bool {
        self.is_own(path)
            || path
                .file_name()
                .is_some_and(crate::control::client::is_restore_temp)
            || path
                .strip_prefix(&self.path)
                .map(|rel| set.is_match(rel))
                .unwrap_or(false)
    }

    /// Whether `path` is (below) one of the daemon's own paths: its live catalog, hosted chunks
    /// and socket change while they are read and must never be backed up nor watched.
    pub fn is_own(&self, path: &Path) -> bool {
        self.own.iter().any(|o| path.starts_with(o))
    }
}

impl Config {
    /// The watched folder a path belongs to (the innermost when folders nest).
    pub fn watch_of(&self, path: &Path) -> Option<&WatchConfig> {
        self.watch
            .iter()
            .filter(|w| path.starts_with(&w.path))
            .max_by_key(|w| w.path.components().count())
    }

    /// Notes in each watch the daemon's own paths inside it (state folder, control socket), to
    /// be excluded from it. Called once the `peer` keys are final (after a reload kept them).
    pub fn exclude_own_paths(&mut self) {
        let own = [&self.peer.state_dir, &self.peer.control_socket];
        for w in &mut self.watch {
            w.own = own
                .iter()
                .filter(|o| o.starts_with(&w.path))
                .map(|o| o.to_path_buf())
                .collect();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config {path}: {source} (create it, or pass --config PATH)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{message}", origin(.path))]
    Syntax {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("{}{key}: {reason}", origin(.path))]
    Invalid {
        path: Option<PathBuf>,
        key: String,
        reason: String,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

// The file as written: strings where the typed config has sizes, durations and addresses, so
// that each can be checked with its key's name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    peer: Option<RawPeer>,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    watch: Vec<RawWatch>,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: Option<i64>,
    protocol: Option<String>,
    state_dir: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    holder_timeout: Option<String>,
    verify_every: Option<String>,
    master_key_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    interface: Option<String>,
    mc: Option<String>,
    mdb: Option<String>,
    mdr: Option<String>,
    ttl: Option<i64>,
    lan_key_file: Option<PathBuf>,
    raise_receive_buffers: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    quota: Option<SizeValue>,
}

/// A size may be written as a string ("20 GiB") or a bare integer of bytes.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    path: Option<PathBuf>,
    replication: Option<i64>,
    keep: Option<String>,
    keep_versions: Option<i64>,
    guard: Option<String>,
    guard_min_files: Option<i64>,
    guard_ciphertext_files: Option<i64>,
    guard_within: Option<String>,
    guard_hold: Option<String>,
    keep_deleted: Option<String>,
    #[serde(default)]
    exclude: Vec<String>,
    quiet: Option<String>,
    max_delay: Option<String>,
    rescan: Option<String>,
    encrypt: Option<bool>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, Some(path))
    }

    /// The control socket a config names, read from its text alone, for a command that needs
    /// nothing else while the rest may be invalid (the daemon keeps its running config then):
    /// `peer.control_socket`, or the default when the file cannot be read, parsed, or does not
    /// set it.
    pub fn control_socket_of(path: &Path) -> PathBuf {
        let named = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
            .and_then(|t| {
                let socket = t.get("peer")?.get("control_socket")?.as_str()?;
                Some(PathBuf::from(socket))
            });
        named
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into())
    }

    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, None)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = path.map(Path::to_path_buf);
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.clone(),
            // toml's message spans several lines (it quotes the line); keep it to one.
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            path: path.clone(),
            key: key.to_owned(),
            reason,
        };
        let peer = raw
            .peer
            .ok_or_else(|| bad("peer", "the [peer] table with `id` is required".into()))?;
        let id = match peer.id {
            Some(id) if (1..=i64::from(u32::MAX)).contains(&id) => id as u32,
            Some(0) | None => {
                return Err(bad(
                    "peer.id",
                    "must be set to a unique non-zero integer (one per peer on the LAN)".into(),
                ))
            }
            Some(id) => {
                return Err(bad(
                    "peer.id",
                    format!("{id} is out of range 1..=4294967295"),
                ))
            }
        };
        let protocol = peer.protocol.unwrap_or_else(|| DEFAULT_PROTOCOL.into());
        if !SUPPORTED_PROTOCOLS.contains(&protocol.as_str()) {
            return Err(bad(
                "peer.protocol",
                format!(
                    "{protocol:?} is not implemented by this build (it implements {})",
                    SUPPORTED_PROTOCOLS.join(", ")
                ),
            ));
        }
        let holder_timeout = parse_duration(peer.holder_timeout.as_deref().unwrap_or("1d"))
            .map_err(|e| bad("peer.holder_timeout", e))?;
        if holder_timeout < Duration::from_secs(2) {
            return Err(bad(
                "peer.holder_timeout",
                "must be at least 2s (peers announce themselves every second at most)".into(),
            ));
        }
        let verify_every = parse_duration(peer.verify_every.as_deref().unwrap_or("10m"))
            .map_err(|e| bad("peer.verify_every", e))?;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&verify_every) {
            return Err(bad(
                "peer.verify_every",
                "must be between 1s and 1h (a holder that lost its disk is found within one)"
                    .into(),
            ));
        }
        let state_dir = peer
            .state_dir
            .unwrap_or_else(|| "/var/lib/peerstash".into());
        let control_socket = peer
            .control_socket
            .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into());
        let master_key_file = peer
            .master_key_file
            .unwrap_or_else(|| DEFAULT_MASTER_KEY_FILE.into());
        for (key, p) in [
            ("peer.state_dir", &state_dir),
            ("peer.control_socket", &control_socket),
            ("peer.master_key_file", &master_key_file),
        ] {
            if !p.is_absolute() {
                return Err(bad(
                    key,
                    format!("{} must be an absolute path", p.display()),
                ));
            }
        }

        let n = raw.network;
        let interface = n.interface.as_deref().unwrap_or("0.0.0.0");
        let interface: Ipv4Addr = interface.parse().map_err(|_| {
            bad(
                "network.interface",
                format!("{interface:?} is not an IPv4 address"),
            )
        })?;
        let group = |key: &str, value: Option<String>, default: &str| {
            let text = value.unwrap_or_else(|| default.into());
            let addr: SocketAddrV4 = text
                .parse()
                .map_err(|_| bad(key, format!("{text:?} is not an IPv4 address:port")))?;
            if !addr.ip().is_multicast() {
                return Err(bad(
                    key,
                    format!("{} is not a multicast address (224.0.0.0/4)", addr.ip()),
                ));
            }
            if addr.port() == 0 {
                return Err(bad(key, "the port must not be 0".into()));
            }
            Ok(addr)
        };
        let mc = group("network.mc", n.mc, "239.255.42.1:4701")?;
        let mdb = group("network.mdb", n.mdb, "239.255.42.2:4702")?;
        let mdr = group("network.mdr", n.mdr, "239.255.42.3:4703")?;
        if mc == mdb || mc == mdr || mdb == mdr {
            return Err(bad(
                "network",
                "mc, mdb and mdr must be three different group:port pairs".into(),
            ));
        }
        let ttl = match n.ttl.unwrap_or(1) {
            t @ 0..=255 => t as u32,
            t => return Err(bad("network.ttl", format!("{t} is out of range 0..=255"))),
        };
        if let Some(p) = &n.lan_key_file {
            if !p.is_absolute() {
                return Err(bad(
                    "network.lan_key_file",
                    format!("{} must be an absolute path", p.display()),
                ));
            }
        }

        let quota = match raw.storage.quota {
            None => 0,
            Some(SizeValue::Bytes(b)) => {
                u64::try_from(b).map_err(|_| bad("storage.quota", format!("{b} is negative")))?
            }
            Some(SizeValue::Text(t)) => parse_size(&t).map_err(|e| bad("storage.quota", e))?,
        };

        let listen = match raw.metrics.listen.as_deref() {
            None => None,
            Some(text) => {
                let addr: std::net::SocketAddr = text.parse().map_err(|_| {
                    bad(
                        "metrics.listen",
                        format!("{text:?} is not an address and port (e.g. \"127.0.0.1:9464\")"),
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(bad(
                        "metrics.listen",
                        format!("{addr} is not a loopback address: the metrics and the dashboard are for this computer only (use 127.0.0.1 and scrape through a proxy or SSH tunnel)"),
                    ));
                }
                Some(addr)
            }
        };

        let mut watch = Vec::new();
        for (i, w) in raw.watch.into_iter().enumerate() {
            let key = |k: &str| format!("watch[{i}].{k}");
            let path = w
                .path
                .ok_or_else(|| bad(&key("path"), "is required".into()))?;
            if !path.is_absolute() {
                return Err(bad(
                    &key("path"),
                    format!("{} must be an absolute path", path.display()),
                ));
            }
            if path.starts_with(&state_dir) {
                return Err(bad(
                    &key("path"),
                    format!(
                        "{} is inside peer.state_dir {}, the daemon's own files",
                        path.display(),
                        state_dir.display()
                    ),
                ));
            }
            let replication = match w.replication.unwrap_or(2) {
                r @ 1..=9 => r as u8,
                r => {
                    return Err(bad(
                        &key("replication"),
                        format!("{r} is out of range 1..=9"),
                    ))
                }
            };
            // `keep_versions` alone keeps what it always did: that many, whatever their age.
            let keep = match (&w.keep, w.keep_versions) {
                (Some(text), _) => crate::history::Keep::parse(text),
                (None, Some(_)) => Ok(crate::history::Keep::all()),
                (None, None) => crate::history::Keep::parse(crate::history::DEFAULT_KEEP),
            }
            .map_err(|e| bad(&key("keep"), e))?;
            let guard =
                match crate::history::Guard::parse_share(w.guard.as_deref().unwrap_or("20%"))
                    .map_err(|e| bad(&key("guard"), e))?
                {
                    None => None,
                    Some(share) => {
                        let default = crate::history::Guard::default();
                        let min_files = match w.guard_min_files {
                            None => default.min_files,
                            Some(n @ 1..=0xFFFF_FFFF) => n as u32,
                            Some(n) => {
                                return Err(bad(
                                    &key("guard_min_files"),
                                    format!("{n} must be at least 1"),
                                ))
                            }
                        };
                        let ciphertext_files = match w.guard_ciphertext_files {
                            None => default.ciphertext_files,
                            Some(n @ 0..=0xFFFF_FFFF) => n as u32,
                            Some(n) => {
                                return Err(bad(
                                    &key("guard_ciphertext_files"),
                                    format!("{n} must be 0 (off) or more"),
                                ))
                            }
                        };
                        let within = match w.guard_within.as_deref() {
                            None => default.within,
                            Some(t) => match parse_duration(t) {
                                Ok(d) if !d.is_zero() => d,
                                Ok(_) => {
                                    return Err(bad(
                                        &key("guard_within"),
                                        format!("{t:?} must be more than zero"),
                                    ))
                                }
                                Err(e) => return Err(bad(&key("guard_within"), e)),
                            },
                        };
                        let hold = parse_duration(w.guard_hold.as_deref().unwrap_or("0s"))
                            .map_err(|e| bad(&key("guard_hold"), e))?;
                        Some(crate::history::Guard {
                            share,
                            min_files,
                            ciphertext_files,
                            within,
                            hold: (!hold.is_zero()).then_some(hold),
                        })
                    }
                };
            let keep_versions = match w.keep_versions.unwrap_or(DEFAULT_KEEP_VERSIONS) {
                k @ 1..=0xFFFF_FFFF => k as u32,
                k => {
                    return Err(bad(
                        &key("keep_versions"),
                        format!("{k} must be at least 1"),
                    ))
                }
            };
            let keep_deleted = parse_duration(w.keep_deleted.as_deref().unwrap_or("30d"))
                .map_err(|e| bad(&key("keep_deleted"), e))?;
            for (j, pattern) in w.exclude.iter().enumerate() {
                let key = format!("watch[{i}].exclude[{j}]");
                if pattern.is_empty() {
                    return Err(bad(&key, "an empty pattern".into()));
                }
                globset::Glob::new(pattern)
                    .map_err(|e| bad(&key, format!("{pattern:?} is not a glob: {e}")))?;
            }
            let quiet = parse_duration(w.quiet.as_deref().unwrap_or("2s"))
                .map_err(|e| bad(&key("quiet"), e))?;
            // Unset: 5 minutes, or the quiet time if that is longer.
            let max_delay = match w.max_delay.as_deref() {
                None => Duration::from_secs(300).max(quiet),
                Some(text) => match parse_duration(text) {
                    Ok(d) if !d.is_zero() && d >= quiet => d,
                    Ok(_) => {
                        return Err(bad(
                            &key("max_delay"),
                            format!(
                                "{text:?} must be more than zero and at least `quiet` ({}); set it to \"5m\" or remove it",
                                w.quiet.as_deref().unwrap_or("2s")
                            ),
                        ))
                    }
                    Err(e) => return Err(bad(&key("max_delay"), e)),
                },
            };
            let rescan = parse_duration(w.rescan.as_deref().unwrap_or("1h"))
                .map_err(|e| bad(&key("rescan"), e))?;
            watch.push(WatchConfig {
                path,
                replication,
                keep,
                keep_versions,
                guard,
                keep_deleted,
                exclude: w.exclude,
                quiet,
                max_delay,
                rescan,
                own: Vec::new(),
                encrypt: w.encrypt.unwrap_or(false),
            });
        }
        let mut config = Config {
            peer: PeerConfig {
                id,
                protocol,
                state_dir,
                control_socket,
                holder_timeout,
                verify_every,
                master_key_file,
            },
            network: NetworkConfig {
                interface,
                mc,
                mdb,
                mdr,
                ttl,
                lan_key_file: n.lan_key_file,
                raise_receive_buffers: n.raise_receive_buffers.unwrap_or(true),
            },
            storage: StorageConfig { quota },
            watch,
            metrics: MetricsConfig { listen },
        };
        config.exclude_own_paths();
        Ok(config)
    }
}

/// A size: bytes, or a number with B, KB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB (1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if !t.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a size (examples: \"0\", \"512MB\", \"20 GiB\")"
        ));
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("{text:?} is not a size (examples: \"0\", \"512MB\", \"20 GiB\")"))
}

/// A duration: a number with ms, s, m, h or d (a bare number is seconds).
/// A duration as the config writes it, in the largest unit that divides it ("1d", "90m", "5s").
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    for (size, unit) in units {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad =
        || format!("{text:?} is not a duration (examples: \"0s\", \"500ms\", \"15m\", \"30d\")");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(bad)
}

#[cfg(test)]
mod tests;
