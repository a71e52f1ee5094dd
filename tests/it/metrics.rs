//! `[metrics] listen`: a scrape of `/metrics` parses as the Prometheus text format, every sample
//! line of it, and its byte counters move with a backup; `/` is a page with the health line.

use crate::common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;

use common::*;
use prometheus_parse::{Scrape, Value};

/// GET `path` from `port` on 127.0.0.1: (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

fn scrape(port: u16) -> Scrape {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    // The parser skips what it cannot read: every sample line must have become a sample.
    let lines = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    assert_eq!(scrape.samples.len(), lines.count(), "{body}");
    scrape
}

fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = (s.samples.iter())
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {metric} {labels:?}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) => v,
        ref other => panic!("{metric}: {other:?}"),
    }
}

#[test]
fn a_scrape_parses_and_its_counters_move_with_a_backup() {
    let (c, port) = metrics_cluster();
    let before = scrape(port);
    let sent = |s: &Scrape| {
        value(
            s,
            "peerstash_bytes_total",
            &[("channel", "mdb"), ("direction", "out")],
        )
    };
    let file = c.dir.path().join("one.bin");
    std::fs::write(&file, random_bytes(1_000_000)).unwrap();
    c.cli_ok(0, &["backup", file.to_str().unwrap(), "-r", "2"], 0);
    let after = scrape(port);
    assert!(
        sent(&after) - sent(&before) >= 1_000_000.0,
        "{} then {}",
        sent(&before),
        sent(&after)
    );
    assert!(
        value(
            &after,
            "peerstash_datagrams_total",
            &[("channel", "mc"), ("direction", "in")]
        ) > 0.0
    );
    // What comes from the catalog is looked at once per 5 s at most.
    let counted = wait_until(std::time::Duration::from_secs(15), || {
        value(&scrape(port), "peerstash_files", &[("health", "healthy")]) == 1.0
    });
    assert!(counted, "the backed-up file is not counted");
    assert_eq!(value(&scrape(port), "peerstash_chunks_below_rd", &[]), 0.0);
    assert_eq!(
        value(&scrape(port), "peerstash_history_held_folders", &[]),
        0.0
    );
    assert!(value(&after, "peerstash_putchunks_sent_total", &[]) >= 16.0);
    assert!(
        value(&after, "peerstash_putchunks_resent_total", &[])
            < value(&after, "peerstash_putchunks_sent_total", &[])
    );

    let (status, page) = get(port, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        page.contains("<h1 id=\"health\">the 1 file backed up is at its RD</h1>"),
        "{page}"
    );
    let (status, _) = get(port, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // Anything but a GET line is refused, and the listener goes on.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"\xff\xfe garbage\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(s).read_line(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    scrape(port);

    // A file asked at RD 3 with 2 holders: its chunks are sent again (the backup says how many
    // times in the log), and every such send is counted.
    let resent = |s: &Scrape| value(s, "peerstash_putchunks_resent_total", &[]);
    let before = scrape(port);
    let below = c.dir.path().canonicalize().unwrap().join("below.bin");
    std::fs::write(&below, random_bytes(200_000)).unwrap();
    c.cli_ok(0, &["backup", below.to_str().unwrap(), "-r", "3"], 3);
    let said = resends_logged(&c.full_log(0), &below);
    assert!(said >= 4, "each of the 4 chunks sent again: {said}");
    let counted = wait_until(std::time::Duration::from_secs(5), || {
        resent(&scrape(port)) - resent(&before) >= said as f64
    });
    assert!(
        counted,
        "{said} PUTCHUNKs resent, counted: {} then {}",
        resent(&before),
        resent(&scrape(port))
    );
    let after = scrape(port);
    assert!(resent(&after) < value(&after, "peerstash_putchunks_sent_total", &[]));
}

/// The PUTCHUNKs resent by the backup of `path`, as its log line says ("backed up PATH (N
/// chunks, M PUTCHUNKs resent)").
fn resends_logged(log: &str, path: &std::path::Path) -> u64 {
    let line = (log.lines())
        .find(|l| l.contains(&format!("backed up {}", path.display())))
        .unwrap_or_else(|| panic!("no backup of {} in the log:\n{log}", path.display()));
    let (before, _) = line
        .split_once(" PUTCHUNKs resent")
        .unwrap_or_else(|| panic!("{line}"));
    let n = before.rsplit(' ').next().unwrap_or_default();
    n.parse().unwrap_or_else(|_| panic!("{line}"))
}

/// GET `path` with the request's head given whole (`host`: the Host line, if any): (status
/// line, body).
fn get_with(port: u16, path: &str, host: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\n{host}\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[test]
fn idle_connections_never_keep_a_scrape_waiting() {
    // Issue 23, case 12: any local user opens 60 connections to the listener and sends
    // nothing. A scrape must still be answered, within a few seconds.
    let (_c, port) = metrics_cluster();
    let idle: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(4)))
        .unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut all = String::new();
    let read = s.read_to_string(&mut all);
    assert!(
        read.is_ok() && all.starts_with("HTTP/1.1 200 OK"),
        "no answer while 60 idle connections are open: {read:?} {all}"
    );
    assert!(all.contains("peerstash_bytes_total"), "{all}");
    // Each idle connection is closed by the listener: for a newer one, or when its request is
    // overdue (5 s).
    for mut c in idle {
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        assert!(
            c.read_to_end(&mut rest).is_ok(),
            "an idle connection stayed open"
        );
    }
}

#[test]
fn a_page_asked_under_another_host_name_gets_no_data() {
    // Issue 23, case 12: a page of another site whose name is rebound to 127.0.0.1 (DNS
    // rebinding) asks with its own name as Host: refused, no metrics, no page.
    let (_c, port) = metrics_cluster();
    for host in [
        Some("evil.example".to_owned()),
        Some(format!("evil.example:{port}")),
        Some(format!("localhost.evil.example:{port}")),
        None,
    ] {
        for path in ["/metrics", "/"] {
            let (status, body) = get_with(port, path, host.as_deref());
            assert_eq!(
                status, "HTTP/1.1 421 Misdirected Request",
                "{host:?} {path}"
            );
            assert!(
                !body.contains("peerstash_") && !body.contains("<h1"),
                "{host:?} {path}: {body}"
            );
        }
    }
    // The listener's own names are answered.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, body) = get_with(port, "/metrics", Some(&host));
        assert_eq!(status, "HTTP/1.1 200 OK", "{host}");
        assert!(body.contains("peerstash_bytes_total"), "{host}");
    }
}
