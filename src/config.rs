//! The configuration file (`/etc/peerstash/peerstash.toml`, SPEC §4): read, checked and typed.
//! Every error names the key and the reason, in one line.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::auth::{LanKey, KEY_LEN};
use crate::protocol::seal::MasterKey;

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

#[derive(Clone, Debug, PartialEq)]
pub struct WatchConfig {
    pub path: PathBuf,
    pub replication: u8,
    pub keep_versions: u32,
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
    keep_versions: Option<i64>,
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
            let keep_versions = match w.keep_versions.unwrap_or(1) {
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
                keep_versions,
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

/// Reads the LAN key named by `network.lan_key_file` (None when the key is not set): exactly
/// `KEY_LEN` bytes, in a file that group and others can neither read nor write. Errors name
/// the key and say what to do, in one line. `config_path` only prefixes the message.
pub fn load_lan_key(
    network: &NetworkConfig,
    config_path: Option<&Path>,
) -> Result<Option<LanKey>, ConfigError> {
    let Some(file) = &network.lan_key_file else {
        return Ok(None);
    };
    let make = format!(
        "make one with `peerstash keygen {}` and copy it to every peer",
        file.display()
    );
    let key = read_key(file, "network.lan_key_file", "LAN key", &make, config_path)?;
    Ok(Some(LanKey::new(key)))
}

/// Where the master key is unless `peer.master_key_file` says otherwise.
pub const DEFAULT_MASTER_KEY_FILE: &str = "/etc/peerstash/master.key";

/// Reads the master key named by `peer.master_key_file`, as `load_lan_key` reads its key.
pub fn load_master_key(
    peer: &PeerConfig,
    config_path: Option<&Path>,
) -> Result<MasterKey, ConfigError> {
    let file = &peer.master_key_file;
    let make = format!(
        "make one with `peerstash keygen {}`, or put back the copy you kept: without it, \
         encrypted backups cannot be read",
        file.display()
    );
    let key = read_key(
        file,
        "peer.master_key_file",
        "master key",
        &make,
        config_path,
    )?;
    Ok(MasterKey::new(key))
}

/// `load_master_key`, making a new key first when there is none at all (a daemon started by
/// hand; the packages make it at install). Whether it was made.
pub fn load_or_make_master_key(
    peer: &PeerConfig,
    config_path: Option<&Path>,
) -> Result<(MasterKey, bool), ConfigError> {
    let made = match write_new_key(&peer.master_key_file) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        // Cannot make it (a read-only /etc): reading it says what is wrong.
        Err(_) => false,
    };
    Ok((load_master_key(peer, config_path)?, made))
}

/// The master key the daemon runs with. When a watched folder is encrypted it must be there: it
/// is made if there is no file at all (its second value says so). Otherwise it is read if it
/// is there (for `backup --encrypt` and restores of encrypted versions), and never made: a
/// peer that encrypts nothing writes nothing to /etc.
pub fn master_key_for(
    config: &Config,
    config_path: Option<&Path>,
) -> Result<Option<(MasterKey, bool)>, ConfigError> {
    if config.watch.iter().any(|w| w.encrypt) {
        return load_or_make_master_key(&config.peer, config_path).map(Some);
    }
    match config.peer.master_key_file.exists() {
        true => load_master_key(&config.peer, config_path).map(|k| Some((k, false))),
        false => Ok(None),
    }
}

/// The master key named by `peer.master_key_file` if that file is there; never made (the
/// daemon's start decides, against the catalog: `daemon::key_at_start`).
pub fn master_key_if_present(
    peer: &PeerConfig,
    config_path: Option<&Path>,
) -> Result<Option<MasterKey>, ConfigError> {
    match peer.master_key_file.symlink_metadata().is_ok() {
        true => load_master_key(peer, config_path).map(Some),
        false => Ok(None),
    }
}

/// The `KEY_LEN` bytes of a key file that group and others can neither read nor write; errors
/// name the config `key`, say what it is (`what`) and how to make one (`make`), in one line.
fn read_key(
    file: &Path,
    key: &str,
    what: &str,
    make: &str,
    config_path: Option<&Path>,
) -> Result<[u8; KEY_LEN], ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let bad = |reason: String| ConfigError::Invalid {
        path: config_path.map(Path::to_path_buf),
        key: key.into(),
        reason,
    };
    let shown = file.display();
    let cannot = |e: std::io::Error| bad(format!("cannot read the {what} {shown}: {e} ({make})"));
    let mut f = std::fs::File::open(file).map_err(cannot)?;
    let meta = f.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(bad(format!("{shown} is not a regular file")));
    }
    // Another user who owns the file could put a key of theirs in it: the key is the daemon's.
    let me = nix::unistd::geteuid().as_raw();
    if std::os::unix::fs::MetadataExt::uid(&meta) != me {
        return Err(bad(format!(
            "the {what} {shown} belongs to uid {}, not to the user the daemon runs as ({me}): \
             run `chown {me} {shown}`",
            std::os::unix::fs::MetadataExt::uid(&meta)
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o066 != 0 {
        return Err(bad(format!(
            "the {what} {shown} is readable or writable by group or others (mode {mode:04o}): \
             run `chmod 600 {shown}`"
        )));
    }
    let mut bytes = Vec::with_capacity(KEY_LEN + 1);
    f.by_ref()
        .take(KEY_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    bytes.as_slice().try_into().map_err(|_| {
        bad(format!(
            "the {what} {shown} is {} bytes, not {KEY_LEN} ({make})",
            meta.len()
        ))
    })
}

/// Writes a new random key (a LAN key or a master key) to `path`: `KEY_LEN` bytes from the OS's
/// generator, in a file created with mode 0600 that must not exist yet (an existing key is
/// never overwritten).
pub fn write_new_key(path: &Path) -> std::io::Result<()> {
    use rand::RngCore;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; KEY_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = f.write_all(&key).and_then(|()| f.sync_all());
    if written.is_err() {
        // Half a key is no key: leave nothing behind.
        let _ = std::fs::remove_file(path);
        return written;
    }
    // Best effort: without it, a start on a new catalog waits for `recover` (`key_made_here`).
    if let Err(e) = write_origin(&key_origin_path(path), &origin_text(&key)) {
        tracing::debug!("cannot note where {} was made: {e}", path.display());
    }
    Ok(())
}

/// Writes the origin note as a new file: whatever was at its name (an old note, or a link a
/// local user planted there, `keygen /tmp/lan.key` say) is unlinked, never written through.
fn write_origin(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Beside a key, what says it was made on this computer (by `write_new_key`): a one-way hash
/// of the key and `/etc/machine-id`. A reinstalled computer has a new machine id, and its
/// admin puts the old key back over the one the package made: either way the two disagree.
pub fn key_origin_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".origin");
    PathBuf::from(p)
}

/// Whether the key in `key_file` was made on this computer (not a copy put back after a
/// reinstall): a daemon starting on a new catalog with such a key takes snapshots at once,
/// with any other it waits for `peerstash recover` (`snapshot::WAIT_RECOVER`).
pub fn key_made_here(key_file: &Path) -> bool {
    let (Ok(key), Ok(origin)) = (
        std::fs::read(key_file),
        std::fs::read_to_string(key_origin_path(key_file)),
    ) else {
        return false;
    };
    origin.trim() == origin_text(&key)
}

fn origin_text(key: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"peerstash key origin v1\0");
    h.update(key);
    h.update(b"\0");
    h.update(machine_id());
    crate::protocol::hex(&h.finalize())
}

/// This computer's id (`/etc/machine-id`; empty if there is none). Tests only: in a debug
/// build `PEERSTASH_MACHINE_ID` stands for it (another computer with the same key).
fn machine_id() -> Vec<u8> {
    #[cfg(debug_assertions)]
    if let Ok(id) = std::env::var("PEERSTASH_MACHINE_ID") {
        return id.into_bytes();
    }
    let id = std::fs::read("/etc/machine-id").unwrap_or_default();
    id.trim_ascii().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_made_here_is_told_from_one_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        assert!(!key_made_here(&key), "no key");
        write_new_key(&key).unwrap();
        assert!(key_made_here(&key));
        // The admin puts the lost computer's key over the one the package made.
        std::fs::write(&key, [7u8; KEY_LEN]).unwrap();
        assert!(!key_made_here(&key));
        // A key copied without its origin note.
        std::fs::remove_file(&key).unwrap();
        write_new_key(&key).unwrap();
        std::fs::remove_file(key_origin_path(&key)).unwrap();
        assert!(!key_made_here(&key));
    }

    #[test]
    fn a_link_planted_at_the_origin_note_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let key = dir.path().join("lan.key");
        std::os::unix::fs::symlink(&victim, key_origin_path(&key)).unwrap();
        write_new_key(&key).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let meta = std::fs::symlink_metadata(key_origin_path(&key)).unwrap();
        assert!(meta.file_type().is_file(), "a note of its own");
        assert!(key_made_here(&key));
    }

    const FULL: &str = r#"
[peer]
id = 1
protocol = "1.0"
state_dir = "/var/lib/peerstash"
control_socket = "/run/peerstash/control.sock"

[network]
interface = "0.0.0.0"
mc  = "239.255.42.1:4701"
mdb = "239.255.42.2:4702"
mdr = "239.255.42.3:4703"
ttl = 1

[storage]
quota = "20 GiB"

[[watch]]
path = "/srv/projects"
replication = 3
keep_versions = 1
exclude = ["*.tmp", "**/.cache/**"]
"#;

    #[test]
    fn full_config_from_the_spec() {
        let c = Config::from_toml_str(FULL).unwrap();
        assert_eq!(c.peer.id, 1);
        assert_eq!(c.storage.quota, 20 * 1024 * 1024 * 1024);
        assert_eq!(c.network.mdb, "239.255.42.2:4702".parse().unwrap());
        assert_eq!(c.watch[0].replication, 3);
        assert_eq!(c.watch[0].keep_deleted, Duration::from_secs(30 * 86_400));
        assert_eq!(c.watch[0].exclude.len(), 2);
        assert_eq!(c.watch[0].rescan, Duration::from_secs(3600));
        let c =
            Config::from_toml_str("[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nrescan = \"10m\"\n")
                .unwrap();
        assert_eq!(c.watch[0].rescan, Duration::from_secs(600));
        assert_eq!(c.watch[0].max_delay, Duration::from_secs(300));
        let c = Config::from_toml_str(
            "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nquiet = \"2s\"\nmax_delay = \"8s\"\n",
        )
        .unwrap();
        assert_eq!(c.watch[0].max_delay, Duration::from_secs(8));
        // Unset, it is never shorter than the quiet time.
        let c = Config::from_toml_str("[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nquiet = \"1h\"\n")
            .unwrap();
        assert_eq!(c.watch[0].max_delay, Duration::from_secs(3600));
    }

    #[test]
    fn the_receive_buffers_may_stay_the_kernels_default() {
        let text = "[peer]\nid = 1\n[network]\nraise_receive_buffers = false\n";
        let c = Config::from_toml_str(text).unwrap();
        assert!(!c.network.raise_receive_buffers);
        let text = "[peer]\nid = 1\n[network]\nraise_receive_buffers = true\n";
        assert!(
            Config::from_toml_str(text)
                .unwrap()
                .network
                .raise_receive_buffers
        );
    }

    #[test]
    fn metrics_listen_only_on_loopback() {
        let with = |listen: &str| {
            Config::from_toml_str(&format!("[peer]\nid = 1\n[metrics]\nlisten = {listen:?}\n"))
        };
        assert_eq!(
            with("127.0.0.1:9464").unwrap().metrics.listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert!(with("[::1]:9464").is_ok());
        let e = with("0.0.0.0:9464").unwrap_err().to_string();
        assert!(
            e.contains("metrics.listen") && e.contains("loopback"),
            "{e}"
        );
        assert!(with("[::]:9464").is_err());
        assert!(
            with("239.255.0.1:9464").is_err(),
            "a multicast group is no listener"
        );
        assert!(with("localhost")
            .unwrap_err()
            .to_string()
            .contains("metrics.listen"));
        assert_eq!(
            Config::from_toml_str("[peer]\nid = 1\n")
                .unwrap()
                .metrics
                .listen,
            None
        );
    }

    #[test]
    fn durations_are_written_back_as_the_config_would() {
        for text in ["1d", "90m", "5s", "36h", "250ms", "0ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn defaults() {
        let c = Config::from_toml_str("[peer]\nid = 7\n").unwrap();
        assert_eq!(c.peer.protocol, "2.0");
        assert!(c.peer.enhanced());
        assert_eq!(c.peer.holder_timeout, Duration::from_secs(86_400));
        assert_eq!(c.peer.verify_every, Duration::from_secs(600));
        assert_eq!(c.peer.state_dir, PathBuf::from("/var/lib/peerstash"));
        assert_eq!(c.network.ttl, 1);
        assert!(c.network.raise_receive_buffers);
        assert_eq!(c.storage.quota, 0);
        assert!(c.watch.is_empty());
    }

    #[test]
    fn every_error_names_its_key() {
        let cases = [
            ("[peer]\n", "peer.id"),
            ("[peer]\nid = 0\n", "peer.id"),
            ("[peer]\nid = 1\nprotocol = \"3.0\"\n", "peer.protocol"),
            (
                "[peer]\nid = 1\nholder_timeout = \"1s\"\n",
                "peer.holder_timeout",
            ),
            (
                "[peer]\nid = 1\nholder_timeout = \"soon\"\n",
                "peer.holder_timeout",
            ),
            (
                "[peer]\nid = 1\nverify_every = \"2h\"\n",
                "peer.verify_every",
            ),
            ("[peer]\nid = 1\nstate_dir = \"rel\"\n", "peer.state_dir"),
            (
                "[peer]\nid = 1\n[network]\nmc = \"127.1.1.1:4701\"\n",
                "network.mc",
            ),
            (
                "[peer]\nid = 1\n[network]\nmdb = \"239.1.1.1:0\"\n",
                "network.mdb",
            ),
            ("[peer]\nid = 1\n[network]\nmdr = \"nope\"\n", "network.mdr"),
            (
                "[peer]\nid = 1\n[network]\ninterface = \"eth0\"\n",
                "network.interface",
            ),
            ("[peer]\nid = 1\n[network]\nttl = 300\n", "network.ttl"),
            (
                "[peer]\nid = 1\n[network]\nraise_receive_buffers = \"no\"\n",
                "raise_receive_buffers",
            ),
            (
                "[peer]\nid = 1\n[network]\nraise_receive_buffers = 0\n",
                "raise_receive_buffers",
            ),
            (
                "[peer]\nid = 1\n[network]\nlan_key_file = \"lan.key\"\n",
                "network.lan_key_file",
            ),
            (
                "[peer]\nid = 1\n[storage]\nquota = \"lots\"\n",
                "storage.quota",
            ),
            (
                "[peer]\nid = 1\n[storage]\nquota = \"-1\"\n",
                "storage.quota",
            ),
            (
                "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nreplication = 0\n",
                "watch[0].replication",
            ),
            (
                "[peer]\nid = 1\n[[watch]]\nreplication = 2\n",
                "watch[0].path",
            ),
            (
                "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nkeep_versions = 0\n",
                "watch[0].keep_versions",
            ),
            (
                "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nkeep_deleted = \"soon\"\n",
                "watch[0].keep_deleted",
            ),
            (
                "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nrescan = \"often\"\n",
                "watch[0].rescan",
            ),
            (
                "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nmax_delay = \"0s\"\n",
                "watch[0].max_delay",
            ),
            (
                "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nquiet = \"10s\"\nmax_delay = \"5s\"\n",
                "watch[0].max_delay",
            ),
            (
                "[peer]\nid = 1\nfavourite_colour = \"red\"\n",
                "favourite_colour",
            ),
        ];
        for (text, key) in cases {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(
                e.contains(key),
                "{text:?} gave {e:?}, which does not name {key}"
            );
            assert_eq!(e.lines().count(), 1, "one line: {e:?}");
        }
    }

    #[test]
    fn excludes_match_below_the_folder_at_any_depth() {
        let c = Config::from_toml_str(FULL).unwrap();
        let w = &c.watch[0];
        let set = w.exclude_set();
        assert!(w.excludes(&set, Path::new("/srv/projects/a.tmp")));
        assert!(w.excludes(&set, Path::new("/srv/projects/x/y/b.tmp")));
        assert!(w.excludes(&set, Path::new("/srv/projects/x/.cache/z")));
        assert!(!w.excludes(&set, Path::new("/srv/projects/x/keep.txt")));
        assert_eq!(
            c.watch_of(Path::new("/srv/projects/x")).unwrap().path,
            w.path
        );
        assert!(c.watch_of(Path::new("/srv/other")).is_none());
    }

    #[test]
    fn the_daemons_own_paths_are_excluded_from_the_watches_holding_them() {
        let text = "[peer]\nid = 1\nstate_dir = \"/srv/a/state\"\n\
                    control_socket = \"/srv/a/b/ctl.sock\"\n\
                    [[watch]]\npath = \"/srv/a\"\n[[watch]]\npath = \"/srv/a/b\"\n\
                    [[watch]]\npath = \"/srv/c\"\n";
        let c = Config::from_toml_str(text).unwrap();
        let (outer, inner, other) = (&c.watch[0], &c.watch[1], &c.watch[2]);
        let set = outer.exclude_set();
        assert!(outer.excludes(&set, Path::new("/srv/a/state")));
        assert!(outer.excludes(&set, Path::new("/srv/a/state/catalog.db-shm")));
        assert!(outer.excludes(&set, Path::new("/srv/a/b/ctl.sock")));
        assert!(!outer.excludes(&set, Path::new("/srv/a/statement")));
        assert_eq!(inner.own, vec![PathBuf::from("/srv/a/b/ctl.sock")]);
        assert!(other.own.is_empty());
        // The innermost watch holds a path.
        assert_eq!(
            c.watch_of(Path::new("/srv/a/b/x")).unwrap().path,
            inner.path
        );
        // A watch inside the state folder is refused.
        let text = "[peer]\nid = 1\nstate_dir = \"/srv/s\"\n[[watch]]\npath = \"/srv/s/chunks\"\n";
        let e = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(
            e.contains("watch[0].path") && e.contains("state_dir"),
            "{e}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20 GiB"), Ok(21_474_836_480));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1 KiB"), Ok(1024));
        assert_eq!(parse_size("3 B"), Ok(3));
        assert!(parse_size("abc").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("d").is_err());
    }

    fn network_with_key(file: &Path) -> NetworkConfig {
        let text = format!(
            "[peer]\nid = 1\n[network]\nlan_key_file = \"{}\"\n",
            file.display()
        );
        Config::from_toml_str(&text).unwrap().network
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_lan_key_is_read_only_from_a_private_32_byte_file() {
        let dir = tempfile::tempdir().unwrap();
        let none = Config::from_toml_str("[peer]\nid = 1\n").unwrap().network;
        assert_eq!(load_lan_key(&none, None).unwrap(), None);

        let file = dir.path().join("lan.key");
        let net = network_with_key(&file);
        let e = load_lan_key(&net, None).unwrap_err().to_string();
        assert!(e.starts_with("network.lan_key_file: cannot read"), "{e}");

        write_new_key(&file).unwrap();
        let key = load_lan_key(&net, None).unwrap().unwrap();
        assert_eq!(
            key,
            LanKey::new(std::fs::read(&file).unwrap().try_into().unwrap())
        );

        for (mode, bad) in [
            (0o600, false),
            (0o400, false),
            (0o700, false),
            (0o640, true),
        ] {
            chmod(&file, mode);
            let r = load_lan_key(&net, Some(Path::new("/etc/p.toml")));
            assert_eq!(r.is_err(), bad, "mode {mode:o}");
            if let Err(e) = r {
                let e = e.to_string();
                assert!(e.starts_with("/etc/p.toml: network.lan_key_file: "), "{e}");
                assert!(e.contains("chmod 600"), "{e}");
                assert!(e.contains("0640"), "{e}");
                assert_eq!(e.lines().count(), 1);
            }
        }
        for mode in [0o602, 0o604, 0o620, 0o644, 0o666] {
            chmod(&file, mode);
            assert!(load_lan_key(&net, None).is_err(), "mode {mode:o}");
        }

        chmod(&file, 0o600);
        // Owned by another user: refused (as root, the test can give it away).
        if nix::unistd::geteuid().is_root() {
            let nobody = nix::unistd::Uid::from_raw(65_534);
            nix::unistd::chown(&file, Some(nobody), None).unwrap();
            let e = load_lan_key(&net, None).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 65534"), "{e}");
            nix::unistd::chown(&file, Some(nix::unistd::geteuid()), None).unwrap();
        }
        for len in [0, 31, 33, 64] {
            std::fs::write(&file, vec![1u8; len]).unwrap();
            let e = load_lan_key(&net, None).unwrap_err().to_string();
            assert!(e.contains("network.lan_key_file"), "{e}");
            assert!(e.contains(&format!("is {len} bytes, not 32")), "{e}");
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn keygen_writes_a_new_private_key_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
        write_new_key(&a).unwrap();
        write_new_key(&b).unwrap();
        let key_a = std::fs::read(&a).unwrap();
        assert_eq!(key_a.len(), KEY_LEN);
        assert_ne!(key_a, std::fs::read(&b).unwrap(), "random keys");
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = write_new_key(&a).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&a).unwrap(), key_a, "left as it was");
    }

    #[test]
    fn the_shipped_default_config_is_valid_but_for_the_id() {
        let text = include_str!("../etc/peerstash/peerstash.toml");
        let e = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(e.contains("peer.id"), "{e}");
        let with_id = text.replacen("id = 0", "id = 12", 1);
        let c = Config::from_toml_str(&with_id).unwrap();
        assert_eq!(c.storage.quota, 0);
    }
}
