//! `[metrics] listen`: a scrape of `/metrics` parses as the Prometheus text format, every sample
//! line of it, and its byte counters move with a backup; `/` is a page with the health line.

mod common;

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
}
