//! The channels' receive buffers: what the kernel granted, and the one start-up warning that
//! says what to do when it granted less than asked, in words that can be followed where the
//! daemon runs (a container cannot change `net.core.rmem_max`: only its host can).

use std::path::Path;

use socket2::Socket;

use super::WANTED_RCVBUF;

/// Asks for WANTED_RCVBUF, forcing past `net.core.rmem_max` when the daemon holds
/// CAP_NET_ADMIN (by hand as root; not under the packaged unit, see peerstash.service), and
/// returns what the kernel granted. `fault_max` (PEERSTASH_FAULTS `rcvbuf_max`, tests): ask for
/// no more than that, unforced, as a lower `net.core.rmem_max` would grant.
pub(super) fn grow(socket: &Socket, fault_max: Option<usize>) -> usize {
    use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
    match fault_max {
        Some(max) => {
            let _ = socket.set_recv_buffer_size(max.min(WANTED_RCVBUF));
        }
        None => {
            if setsockopt(socket, RcvBufForce, &WANTED_RCVBUF).is_err() {
                let _ = socket.set_recv_buffer_size(WANTED_RCVBUF);
            }
        }
    }
    // Linux reports twice the size granted (bookkeeping overhead).
    socket.recv_buffer_size().unwrap_or(0) / 2
}

/// The warning for the smallest buffer the three channels got, or None when each got what was
/// asked. `container` is what `detect_container` found.
pub fn shortfall_warning(granted: usize, container: Option<&str>) -> Option<String> {
    if granted >= WANTED_RCVBUF {
        return None;
    }
    let what = format!(
        "the multicast receive buffers are {granted} bytes, less than the {WANTED_RCVBUF} \
         wanted (net.core.rmem_max is lower): a burst of chunks may be dropped and sent again"
    );
    Some(match container {
        Some(kind) => format!(
            "{what}; this runs in a container ({kind}), which cannot change net.core.rmem_max: \
             the kernel keeps one value for the whole machine (a container's network namespace \
             shows the host's, read-only, or not at all). On the host, as root: \
             `sysctl -w net.core.rmem_max={WANTED_RCVBUF}` (and the same line in a file of \
             /etc/sysctl.d/ to keep it), then restart peerstash here"
        ),
        None => format!(
            "{what}; as root: `sysctl --system` (it applies the package's \
             /usr/lib/sysctl.d/60-peerstash.conf; or `sysctl -w \
             net.core.rmem_max={WANTED_RCVBUF}`), then restart peerstash"
        ),
    })
}

/// The kind of container this runs in, from what its manager leaves behind: systemd's
/// `/run/systemd/container` (its content names the manager: "systemd-nspawn", "lxc",
/// "docker", ...), Docker's `/.dockerenv`, Podman's `/run/.containerenv`. None on a machine
/// or a VM of its own (a VM has its own kernel, where root can set the sysctl).
pub fn container_from(
    systemd_container: Option<&str>,
    dockerenv: bool,
    containerenv: bool,
) -> Option<String> {
    if let Some(kind) = systemd_container {
        let kind = kind.trim();
        return Some(
            if kind.is_empty() {
                "unknown kind"
            } else {
                kind
            }
            .to_string(),
        );
    }
    match (dockerenv, containerenv) {
        (true, _) => Some("docker".to_string()),
        (false, true) => Some("podman".to_string()),
        (false, false) => None,
    }
}

/// Reads the markers `container_from` looks at. Small files on a tmpfs, read once per start:
/// no process is spawned (`systemd-detect-virt` would be one, and the daemon's
/// /proc/1/environ is out of its reach under the unit's ProtectProc).
pub fn detect_container() -> Option<String> {
    let systemd = std::fs::read_to_string("/run/systemd/container").ok();
    container_from(
        systemd.as_deref(),
        Path::new("/.dockerenv").exists(),
        Path::new("/run/.containerenv").exists(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_is_named_by_systemd_or_by_its_manager_file() {
        assert_eq!(
            container_from(Some("systemd-nspawn\n"), false, false).as_deref(),
            Some("systemd-nspawn")
        );
        assert_eq!(
            container_from(Some("lxc"), true, false).as_deref(),
            Some("lxc"),
            "systemd's word first"
        );
        assert_eq!(
            container_from(Some("\n"), false, false).as_deref(),
            Some("unknown kind")
        );
        assert_eq!(container_from(None, true, false).as_deref(), Some("docker"));
        assert_eq!(container_from(None, false, true).as_deref(), Some("podman"));
        assert_eq!(container_from(None, false, false), None);
    }

    #[test]
    fn the_warning_says_what_can_be_done_where_the_daemon_runs() {
        assert_eq!(shortfall_warning(WANTED_RCVBUF, None), None);
        assert_eq!(shortfall_warning(WANTED_RCVBUF + 1, Some("lxc")), None);

        let host = shortfall_warning(212_992, None).unwrap();
        assert!(host.contains("212992 bytes"), "{host}");
        assert!(host.contains("sysctl --system"), "{host}");
        assert!(!host.contains("container"), "{host}");

        let ct = shortfall_warning(212_992, Some("systemd-nspawn")).unwrap();
        assert!(ct.contains("container (systemd-nspawn)"), "{ct}");
        assert!(ct.contains("On the host"), "{ct}");
        assert!(ct.contains("sysctl -w net.core.rmem_max=8388608"), "{ct}");
        assert!(
            !ct.contains("sysctl --system"),
            "in a container that advice cannot be followed: {ct}"
        );
    }
}
