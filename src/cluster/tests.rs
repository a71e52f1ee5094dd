use super::*;

#[test]
fn only_loopback_with_ttl_0_or_a_network_namespace_is_allowed() {
    assert!(Place::default().is_safe());
    assert!(Place::in_netns("ps1h1", "10.213.77.11", 1).is_safe());
    let lan = Place {
        interface: "192.168.1.20".into(),
        ..Place::default()
    };
    assert!(!lan.is_safe());
    let hops = Place {
        ttl: 1,
        ..Place::default()
    };
    assert!(!hops.is_safe());
    // A wrapper that is not a network namespace does not make another interface safe.
    let wrapped = Place {
        interface: "192.168.1.20".into(),
        wrapper: vec!["unshare".into(), "-m".into()],
        ..Place::default()
    };
    assert!(!wrapped.is_safe());
    assert!(!Place {
        wrapper: ["ip", "netns", "exec"].map(String::from).to_vec(),
        ..lan
    }
    .is_safe());
}

#[test]
fn channels_are_administratively_scoped_and_distinct() {
    for _ in 0..1000 {
        let [mc, mdb, mdr] = random_channels();
        for ch in [mc, mdb, mdr] {
            assert_eq!(ch.ip().octets()[0], 239, "{ch}");
            assert!((100..200).contains(&ch.ip().octets()[1]), "{ch}");
            assert!(ch.port() >= 20_000, "{ch}");
        }
        assert!(mc != mdb && mdb != mdr && mc != mdr);
    }
}

#[test]
fn a_config_names_the_cluster_channels_and_the_peer_folders() {
    let mut c = Cluster::new(Programs::new("/nonexistent/peerstashd", "/bin/false"), "t-").unwrap();
    let extra = "[[watch]]\npath = \"/w\"\nreplication = 2\n";
    let i = c
        .add_peer(PeerSpec {
            extra: extra.into(),
            lan_key_file: Some("/k\"ey".into()),
            ..PeerSpec::new("5MB")
        })
        .unwrap();
    let config = crate::config::Config::load(&c.peer(i).config).unwrap();
    assert_eq!(config.peer.id, 1);
    assert_eq!(config.peer.control_socket, c.peer(i).socket);
    assert_eq!(config.peer.state_dir, c.root().join("peer1/state"));
    let n = &config.network;
    assert_eq!((n.mc, n.mdb, n.mdr), (c.mc, c.mdb, c.mdr));
    assert_eq!((n.interface, n.ttl), (Ipv4Addr::LOCALHOST, 0));
    assert_eq!(n.lan_key_file.as_deref(), Some(Path::new("/k\"ey")));
    assert_eq!(config.storage.quota, 5_000_000);
    assert_eq!(config.watch[0].replication, 2);
    assert!(c
        .add_peer(PeerSpec {
            place: Place {
                interface: "10.0.0.1".into(),
                ..Place::default()
            },
            ..PeerSpec::new("0")
        })
        .is_err());
    // A daemon that cannot start is an error, not a wait.
    assert!(matches!(c.spawn(i), Err(ClusterError::Spawn { .. })));
    let root = c.root().to_owned();
    drop(c);
    assert!(!root.exists());
}

#[test]
fn a_kept_cluster_leaves_its_folder() {
    let c = Cluster::new(Programs::new("/bin/false", "/bin/false"), "t-").unwrap();
    let root = c.root().to_owned();
    assert_eq!(c.keep(), root);
    assert!(root.is_dir());
    std::fs::remove_dir_all(&root).unwrap();
}
