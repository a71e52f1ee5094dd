//! The key files the config names: the LAN key (`network.lan_key_file`) and the master key
//! (`peer.master_key_file`): read with their permissions checked, made new never over an
//! existing file, and marked with the machine that made them.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, NetworkConfig, PeerConfig};
use crate::protocol::auth::{LanKey, KEY_LEN};
use crate::protocol::seal::MasterKey;

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
