//! Issue 25 item 5: when the kernel grants the channels less receive buffer than asked (a
//! `net.core.rmem_max` the daemon may not force past: a container, a unit without
//! CAP_NET_ADMIN), each start logs one WARN line, not one per socket, whose advice can be
//! followed where the daemon runs. The machine's own rmem_max cannot be lowered by a test: the
//! fault `rcvbuf_max` gives the sockets that small a buffer for real.

use crate::common;

use common::*;

const SMALL: &str = "rcvbuf_max=212992";

fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("multicast receive buffers"))
        .collect()
}

#[test]
fn a_small_receive_buffer_is_one_warning_per_start_with_advice_for_where_it_runs() {
    let mut c = Cluster::start_env(&["10MB"], &[], |_| {
        vec![("PEERSTASH_FAULTS".to_owned(), SMALL.to_owned())]
    });
    let log = c.full_log(0);
    let lines = warnings(&log);
    assert_eq!(lines.len(), 1, "one warning at a start:\n{log}");
    let line = lines[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("212992 bytes"), "{line}");
    // Where the test runs decides the advice, as it does for the daemon.
    match peerstash::net::rcvbuf::detect_container() {
        Some(kind) => {
            assert!(line.contains(&format!("container ({kind})")), "{line}");
            assert!(line.contains("On the host"), "{line}");
            assert!(!line.contains("sysctl --system"), "{line}");
        }
        None => {
            assert!(line.contains("sysctl --system"), "{line}");
            assert!(!line.contains("container"), "{line}");
        }
    }

    c.restart(0);
    let log = c.full_log(0);
    assert_eq!(
        warnings(&log).len(),
        2,
        "one more at the next start:\n{log}"
    );
}

/// Root forces its buffers past rmem_max (as peerstashd run by hand does): nothing to say.
#[test]
fn a_daemon_that_got_its_buffers_says_nothing() {
    if needs_root("SO_RCVBUFFORCE") {
        return;
    }
    let c = Cluster::start(&["10MB"]);
    let log = c.full_log(0);
    assert!(warnings(&log).is_empty(), "{log}");
}
