//! Issue 5: a real LAN, simulated. Four hosts are network namespaces made by this test, joined
//! by a bridge in a namespace of its own through veth links with MTU 1500 (every 64 KB datagram
//! is fragmented, as on Ethernet). The addresses exist only inside those namespaces. One peer
//! per host, bound to its host's interface with TTL 1, backs up, restores, deletes and
//! reclaims a 5 MB file. Needs root: skipped with a message otherwise, failed with CI=true. The namespaces are
//! removed at the end, even when the test fails.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;

const HOSTS: usize = 4;

/// The namespaces of one run; deleted on drop (which deletes their veth links too).
struct Lan {
    names: Vec<String>,
}

impl Drop for Lan {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Address of host `i` (1-based) on the test's private link; exists only in its namespace.
fn host_addr(i: usize) -> String {
    format!("10.213.77.{}", 10 + i)
}

fn build_lan(tag: &str) -> Option<Lan> {
    let bridge = format!("ps{tag}br");
    let mut lan = Lan {
        names: vec![bridge.clone()],
    };
    if !ip(&["netns", "add", &bridge]) {
        return None;
    }
    let ok = ip(&[
        "-n",
        &bridge,
        "link",
        "add",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ]) && ip(&["-n", &bridge, "link", "set", "br0", "up"]);
    if !ok {
        return None;
    }
    for i in 1..=HOSTS {
        let host = format!("ps{tag}h{i}");
        lan.names.push(host.clone());
        let (veth, port) = (format!("eth{i}"), format!("port{i}"));
        let addr = format!("{}/24", host_addr(i));
        let ok = ip(&["netns", "add", &host])
            && ip(&[
                "link", "add", &veth, "netns", &host, "mtu", "1500", "type", "veth", "peer",
                "name", &port, "netns", &bridge, "mtu", "1500",
            ])
            && ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])
            && ip(&["-n", &host, "addr", "add", &addr, "dev", &veth])
            && ip(&["-n", &host, "link", "set", &veth, "up"])
            && ip(&["-n", &host, "link", "set", "lo", "up"])
            && ip(&["-n", &host, "route", "add", "224.0.0.0/4", "dev", &veth]);
        if !ok {
            return None;
        }
    }
    Some(lan)
}

#[test]
fn four_hosts_on_a_simulated_lan() {
    if !nix::unistd::geteuid().is_root() {
        skip("building network namespaces needs root");
        return;
    }
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let Some(lan) = build_lan(&tag) else {
        skip("cannot create network namespaces here (ip netns add failed)");
        return;
    };
    let c = Cluster::start_placed(
        &["0", "100MB", "100MB", "0"],
        &[],
        |_| Vec::new(),
        |i| Place {
            interface: host_addr(i + 1),
            ttl: 1,
            wrapper: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                lan.names[i + 1].clone(),
            ],
        },
    );
    let data = c.dir.path().canonicalize().unwrap().join("lan.bin");
    let bytes = random_bytes(5_000_000);
    std::fs::write(&data, &bytes).unwrap();
    let p = data.to_str().unwrap();

    c.cli_ok(0, &["backup", p, "-r", "2"], 0);
    assert!(c.peer(0).state().versions_of(&data)[0].min_rd() >= 2);
    std::fs::remove_file(&data).unwrap();
    c.cli_ok(0, &["restore", p], 0);
    assert_eq!(std::fs::read(&data).unwrap(), bytes);

    // Reclaim across hosts: host 4 offers room, host 2 frees all; RD comes back.
    c.cli_ok(3, &["reclaim", "100MB"], 0);
    c.cli_ok(1, &["reclaim", "0"], 0);
    assert!(
        wait_until(Duration::from_secs(30), || c
            .peer(0)
            .state()
            .versions_of(&data)[0]
            .min_rd()
            >= 2),
        "{}",
        c.peer(0).state()
    );
    assert!(c.peer(3).state().used_bytes >= 5_000_000);

    c.cli_ok(0, &["delete", p], 0);
    assert!(wait_until(Duration::from_secs(10), || (1..HOSTS)
        .all(|i| c.peer(i).state().used_bytes == 0)));
    drop(c);
    drop(lan);
}
