use super::*;
use crate::protocol::auth::{LanKey, KEY_LEN};

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
    let c = Config::from_toml_str("[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nrescan = \"10m\"\n")
        .unwrap();
    assert_eq!(c.watch[0].rescan, Duration::from_secs(600));
    assert_eq!(c.watch[0].max_delay, Duration::from_secs(300));
    // History: the default rule, capped at 200; keep_versions alone keeps that many whatever
    // their age (what it meant before `keep`); both: the rule, capped.
    assert_eq!(c.watch[0].keep, crate::history::Keep::default());
    assert_eq!(c.watch[0].keep_versions, 200);
    let full = Config::from_toml_str(FULL).unwrap();
    assert_eq!(
        (full.watch[0].keep.clone(), full.watch[0].keep_versions),
        (crate::history::Keep::all(), 1)
    );
    let c = Config::from_toml_str(
        "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nkeep = \"2h:all, 1w:daily\"\nkeep_versions = 9\n",
    )
    .unwrap();
    assert_eq!(c.watch[0].keep.to_string(), "2h:all, 1w:daily");
    assert_eq!(c.watch[0].keep_versions, 9);
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
            "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nkeep = \"1d:hourly, 1h:all\"\n",
            "watch[0].keep",
        ),
        (
            "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nguard = \"20\"\n",
            "watch[0].guard",
        ),
        (
            "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nguard_within = \"0s\"\n",
            "watch[0].guard_within",
        ),
        (
            "[peer]\nid = 1\n[[watch]]\npath = \"/a\"\nguard_min_files = 0\n",
            "watch[0].guard_min_files",
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
    let text = include_str!("../../etc/peerstash/peerstash.toml");
    let e = Config::from_toml_str(text).unwrap_err().to_string();
    assert!(e.contains("peer.id"), "{e}");
    let with_id = text.replacen("id = 0", "id = 12", 1);
    let c = Config::from_toml_str(&with_id).unwrap();
    assert_eq!(c.storage.quota, 0);
}
