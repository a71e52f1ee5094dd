//! `peerstash suggest-id`: a peer id made from this machine's IPv4 address, so that an admin
//! needs no list of ids: the address's last two bytes read as one number, third × 256 + fourth
//! (1 to 65535), which differs between any two machines of one /16 network or smaller.

use std::net::Ipv4Addr;
use std::path::Path;

/// Where the address came from, for the line that says which one was used.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// `--address`.
    Given,
    /// `network.interface` of the config; the interface that holds it, when one does.
    Configured { interface: Option<String> },
    /// The first IPv4 address of an interface that is up and not loopback.
    Interface(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Suggestion {
    pub id: u32,
    pub address: Ipv4Addr,
    pub source: Source,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SuggestError {
    #[error("{0} is not the address of a machine (unspecified, multicast or broadcast): give the address of this machine's LAN interface")]
    NotAMachine(Ipv4Addr),
    #[error("this machine has no IPv4 address but loopback on an interface that is up: pass `--address A.B.C.D`, or pick any id unique on the LAN")]
    NoAddress,
}

/// Third byte × 256 + fourth byte. An address ending in .0.0 would make 0, which the daemon
/// refuses: it gets 65536, the one number past the formula's range (no other address has it).
pub fn id_from_address(address: Ipv4Addr) -> u32 {
    let [_, _, third, fourth] = address.octets();
    match u32::from(third) * 256 + u32::from(fourth) {
        0 => 65_536,
        id => id,
    }
}

fn names_a_machine(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_broadcast())
}

/// The suggestion for an address given on the command line (loopback allowed: scripts, tests).
pub fn from_given(address: Ipv4Addr) -> Result<Suggestion, SuggestError> {
    if !names_a_machine(address) {
        return Err(SuggestError::NotAMachine(address));
    }
    Ok(Suggestion {
        id: id_from_address(address),
        address,
        source: Source::Given,
    })
}

/// The config's `network.interface` when it is set to a machine's address that is not loopback
/// (the default 0.0.0.0 lets the kernel choose, and loopback is one machine's own); else the
/// first of `interfaces` (up, not loopback, in the kernel's order) that is not loopback.
pub fn choose(
    configured: Option<Ipv4Addr>,
    interfaces: &[(String, Ipv4Addr)],
) -> Result<Suggestion, SuggestError> {
    if let Some(address) = configured.filter(|a| names_a_machine(*a) && !a.is_loopback()) {
        let interface = interfaces
            .iter()
            .find(|(_, a)| *a == address)
            .map(|(name, _)| name.clone());
        return Ok(Suggestion {
            id: id_from_address(address),
            address,
            source: Source::Configured { interface },
        });
    }
    interfaces
        .iter()
        .find(|(_, a)| names_a_machine(*a) && !a.is_loopback())
        .map(|(name, address)| Suggestion {
            id: id_from_address(*address),
            address: *address,
            source: Source::Interface(name.clone()),
        })
        .ok_or(SuggestError::NoAddress)
}

/// `network.interface` as the config file writes it, read from its text alone: the shipped
/// config (peer.id 0) is one the daemon refuses, and this is what helps fill it in. None when
/// the file cannot be read or parsed, or does not set an IPv4 address there.
pub fn configured_interface(config: &Path) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string(config).ok()?;
    let table = toml::from_str::<toml::Table>(&text).ok()?;
    table
        .get("network")?
        .get("interface")?
        .as_str()?
        .parse()
        .ok()
}

/// This machine's IPv4 addresses on interfaces that are up and not loopback, in the kernel's
/// order, with their interface's name.
pub fn machine_addresses() -> std::io::Result<Vec<(String, Ipv4Addr)>> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(addrs
        .filter(|i| {
            i.flags.contains(InterfaceFlags::IFF_UP)
                && !i.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|i| {
            let ip = i.address?.as_sockaddr_in()?.ip();
            Some((i.interface_name, ip))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_id_is_the_third_byte_times_256_plus_the_fourth_never_0() {
        assert_eq!(id_from_address(a("192.168.4.5")), 4 * 256 + 5);
        assert_eq!(id_from_address(a("192.168.1.10")), 266);
        assert_eq!(id_from_address(a("10.0.0.1")), 1);
        assert_eq!(id_from_address(a("10.7.255.255")), 65_535);
        // Only the last two bytes count: the same on two /16 networks.
        assert_eq!(
            id_from_address(a("10.1.2.3")),
            id_from_address(a("172.16.2.3"))
        );
        assert_eq!(id_from_address(a("10.1.0.0")), 65_536, "never 0");
    }

    #[test]
    fn the_configured_interface_wins_unless_it_is_loopback_or_any() {
        let ifs = vec![
            ("eth0".to_string(), a("192.168.1.10")),
            ("eth1".to_string(), a("10.0.3.4")),
        ];
        let s = choose(Some(a("10.0.3.4")), &ifs).unwrap();
        assert_eq!((s.id, s.address), (3 * 256 + 4, a("10.0.3.4")));
        assert_eq!(
            s.source,
            Source::Configured {
                interface: Some("eth1".into())
            }
        );
        // An address no interface holds (yet) is still the admin's word.
        let s = choose(Some(a("10.9.8.7")), &ifs).unwrap();
        assert_eq!(s.source, Source::Configured { interface: None });
        assert_eq!(s.id, 8 * 256 + 7);
        for ignored in [None, Some(a("127.0.0.1")), Some(a("0.0.0.0"))] {
            let s = choose(ignored, &ifs).unwrap();
            assert_eq!(s.source, Source::Interface("eth0".into()), "{ignored:?}");
            assert_eq!(s.id, 266);
        }
    }

    #[test]
    fn no_address_but_loopback_is_an_error_that_says_what_to_do() {
        let only_lo = vec![("lo".to_string(), a("127.0.0.1"))];
        assert_eq!(choose(None, &only_lo), Err(SuggestError::NoAddress));
        assert_eq!(choose(None, &[]), Err(SuggestError::NoAddress));
        assert!(SuggestError::NoAddress.to_string().contains("--address"));
    }

    #[test]
    fn a_given_address_must_name_a_machine() {
        assert_eq!(from_given(a("127.0.0.1")).unwrap().id, 1);
        for bad in ["0.0.0.0", "239.1.2.3", "255.255.255.255"] {
            assert_eq!(from_given(a(bad)), Err(SuggestError::NotAMachine(a(bad))));
        }
    }

    #[test]
    fn the_interface_is_read_from_a_config_the_daemon_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, "[peer]\nid = 0\n[network]\ninterface = \"10.1.2.3\"\n").unwrap();
        assert_eq!(configured_interface(&p), Some(a("10.1.2.3")));
        std::fs::write(&p, "[peer]\nid = 0\n").unwrap();
        assert_eq!(configured_interface(&p), None);
        assert_eq!(configured_interface(&dir.path().join("none.toml")), None);
    }
}
