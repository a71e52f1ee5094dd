//! `[metrics] listen`: Prometheus metrics (`GET /metrics`, text format 0.0.4) and a one-page
//! read-only health summary (`GET /`), on a loopback address only (the config refuses any
//! other). Off unless set.
//!
//! The HTTP here is the least a scraper and a browser need, and no more: one GET per
//! connection, its request read within `READ_WITHIN` and `MAX_REQUEST` bytes, the answer with
//! its length and `Connection: close`, at most `MAX_CONNECTIONS` at once (`MAX_PER_SOURCE` from
//! one address), and only to a `Host` that names this listener (`host_allowed`). (A web
//! framework would bring more code than this whole listener.)

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::daemon::Node;
use crate::shutdown::Shutdown;
use crate::store::Health;
use crate::store::Overview;

const MAX_REQUEST: usize = 8 * 1024;
/// Records the channels' byte totals now (every status tick).
pub fn sample(node: &Node) {
    let b = &node.counters.bytes;
    let total = |d: usize| {
        b.iter()
            .map(|ch| ch[d].load(Ordering::Relaxed))
            .sum::<u64>()
    };
    if let Ok(mut h) = node.traffic_history.lock() {
        h.push((crate::clock::unix_ms(), total(0), total(1)));
    }
}

/// An SVG plot of the last hour's traffic: received in blue, sent in orange.
fn plot(rates: &[(f64, f64, f64)]) -> String {
    let (w, h) = (720.0, 180.0);
    let top = rates.iter().map(|r| r.1.max(r.2)).fold(1.0f64, f64::max);
    let x = |ago: f64| w - (ago / 3600.0).min(1.0) * w;
    let y = |rate: f64| h - rate / top * (h - 20.0);
    let line = |pick: fn(&(f64, f64, f64)) -> f64| {
        rates
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.0), y(pick(r))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"traffic of the last hour\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#f8f8f8\" stroke=\"#ccc\"/>\
         <text x=\"4\" y=\"14\" font-size=\"12\">{} B/s</text>\
         <text x=\"4\" y=\"{}\" font-size=\"12\">1 h ago</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"12\">now</text>\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"2\" points=\"{}\"/></svg>",
        top.round(),
        h - 4.0,
        w - 30.0,
        h - 4.0,
        line(|r| r.1),
        line(|r| r.2),
    )
}
/// A connection must have sent its whole request within this, and been answered within twice
/// this, or it is closed.
const READ_WITHIN: Duration = Duration::from_secs(5);
/// Connections open at once, all sources together, and from one source address.
const MAX_CONNECTIONS: usize = 32;
const MAX_PER_SOURCE: usize = 16;

/// Binds the listener (at start: a port taken is a refusal, said before the peer is heard).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (metrics.listen) for metrics: {e}"))
}

/// One open connection, as the accept loop keeps track of it.
struct Open {
    id: u64,
    source: IpAddr,
    since: Instant,
    /// Still waiting for its request (not yet being answered): it may be closed for a newer one.
    reading: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

/// The open connections (at most MAX_CONNECTIONS): a connection's task takes itself out when
/// it ends.
#[derive(Default)]
struct Table(Mutex<Vec<Open>>);

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Open>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for a connection from `source`: within the bounds, or by closing the oldest
    /// connection that is still waiting for its request (of that source first). Idle
    /// connections (slowloris) thus never lock a scraper out: its request comes at once, and
    /// only connections older than it are closed. False when every slot is being answered.
    fn make_room(open: &mut Vec<Open>, source: IpAddr) -> bool {
        let of_source = open.iter().filter(|o| o.source == source).count();
        let victim = |same_source: bool| {
            (open.iter().enumerate())
                .filter(|(_, o)| o.reading.load(Ordering::Relaxed))
                .filter(|(_, o)| !same_source || o.source == source)
                .min_by_key(|(_, o)| o.since)
                .map(|(i, _)| i)
        };
        let chosen = if of_source >= MAX_PER_SOURCE {
            victim(true)
        } else if open.len() >= MAX_CONNECTIONS {
            victim(false)
        } else {
            return true;
        };
        match chosen {
            Some(i) => {
                open.swap_remove(i).task.abort();
                true
            }
            None => false,
        }
    }
}

/// Takes a connection out of the table when its task ends (or is aborted).
struct Leave {
    table: Arc<Table>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.table.lock().retain(|o| o.id != self.id);
    }
}

/// Serves the listener until the daemon stops. The accept loop never waits for a slot: a
/// connection gets one at once, or is closed at once.
pub async fn serve(node: Arc<Node>, listener: TcpListener, mut shutdown: Shutdown) {
    let cache: Arc<Cache> = Arc::default();
    let table: Arc<Table> = Arc::default();
    let Ok(listen) = listener.local_addr() else {
        tracing::error!("metrics: the listener has no address; not serving");
        return;
    };
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.recv() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // The lock is held only here and in Leave::drop, never across an await.
        let mut open = table.lock();
        if !Table::make_room(&mut open, peer.ip()) {
            tracing::debug!(%peer, "metrics: every connection is being answered; closed");
            continue;
        }
        next_id += 1;
        let reading = Arc::new(AtomicBool::new(true));
        let leave = Leave {
            table: table.clone(),
            id: next_id,
        };
        let (node, cache, r) = (node.clone(), cache.clone(), reading.clone());
        let task = tokio::spawn(async move {
            let _leave = leave;
            let answered = answer(&node, &cache, stream, listen, &r);
            let _ = tokio::time::timeout(READ_WITHIN * 2, answered).await;
        });
        open.push(Open {
            id: next_id,
            source: peer.ip(),
            since: Instant::now(),
            reading,
            task: task.abort_handle(),
        });
    }
}

/// Whether the request's `Host` names this listener: its address (`ip:port`, or `ip` on port
/// 80) or `localhost` (with or without the port). Exactly one Host line. A page of another
/// site that rebinds its name to 127.0.0.1 sends its own name, and gets no data.
fn host_allowed(head: &[u8], listen: SocketAddr) -> bool {
    let Ok(text) = std::str::from_utf8(head) else {
        return false;
    };
    let mut hosts = text
        .split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim().to_ascii_lowercase());
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return false;
    };
    let port = listen.port();
    let ip = match listen.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    host == format!("{ip}:{port}")
        || host == "localhost"
        || host == format!("localhost:{port}")
        || (port == 80 && host == ip)
}

/// The path a request line asks for with GET, if it is one.
fn requested_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("GET"), Some(path), Some(v)) if v.starts_with("HTTP/1.") => Some(path),
        _ => None,
    }
}

async fn answer(
    node: &Arc<Node>,
    cache: &Cache,
    mut stream: TcpStream,
    listen: SocketAddr,
    reading: &AtomicBool,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_WITHIN, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    reading.store(false, Ordering::Relaxed);
    let path = requested_path(&head);
    let (status, kind, body) = match path {
        Some(_) if !host_allowed(&head, listen) => (
            "421 Misdirected Request",
            "text/plain",
            "this listener answers only to Host: localhost or its own address\n".to_owned(),
        ),
        Some("/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(node, cache).await,
        ),
        Some("/") => (
            "200 OK",
            "text/html; charset=utf-8",
            render_page(node, cache).await,
        ),
        Some(_) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        None => ("400 Bad Request", "text/plain", "GET only\n".to_owned()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// What the catalog says for the metrics and the page.
struct Catalogued {
    below_rd: u64,
    healthy: u64,
    degraded: u64,
    at_risk: u64,
    overview: Overview,
}

/// How long a look at the catalog serves the scrapes and pages that follow: a scraper (or any
/// local user) asking in a loop costs the catalog one walk per this.
const CATALOGUED_FOR: Duration = Duration::from_secs(5);

/// The last look at the catalog, shared by the connections (one looks, the others wait).
type Cache = tokio::sync::Mutex<Option<(std::time::Instant, Arc<Catalogued>)>>;

async fn catalogued(node: &Arc<Node>, cache: &Cache) -> Option<Arc<Catalogued>> {
    let mut cached = cache.lock().await;
    if let Some((at, k)) = cached.as_ref() {
        if at.elapsed() < CATALOGUED_FOR {
            return Some(k.clone());
        }
    }
    let k = Arc::new(look(node).await?);
    *cached = Some((std::time::Instant::now(), k.clone()));
    Some(k)
}

async fn look(node: &Arc<Node>) -> Option<Catalogued> {
    let folders: Vec<_> = node.config().watch.iter().map(|w| w.path.clone()).collect();
    let running = node.master_key().map(|k| k.fingerprint());
    let (overview, unreadable) = node.catalog.metrics_view(folders, running).await.ok()?;
    // A file whose newest version this peer cannot decrypt is at risk, as `status` counts it.
    let unreadable: std::collections::HashSet<_> = unreadable.into_iter().collect();
    let (mut healthy, mut degraded, mut at_risk, mut below_rd) = (0, 0, 0, 0u64);
    for (path, h, below) in &overview.health {
        below_rd += below;
        if unreadable.contains(path) {
            at_risk += 1;
            continue;
        }
        match h {
            Health::Healthy => healthy += 1,
            Health::Degraded { .. } => degraded += 1,
            Health::AtRisk { .. } => at_risk += 1,
        }
    }
    Some(Catalogued {
        below_rd,
        healthy,
        degraded,
        at_risk,
        overview,
    })
}

/// A label value, escaped as the text format wants.
fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

async fn render_metrics(node: &Arc<Node>, cache: &Cache) -> String {
    let c = &node.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    let mut out = String::new();
    let channels = ["mc", "mdb", "mdr"];
    let directions = ["in", "out"];
    let by_channel = |table: &[[std::sync::atomic::AtomicU64; 2]; 3]| {
        let mut v = Vec::new();
        for (i, ch) in channels.iter().enumerate() {
            for (j, dir) in directions.iter().enumerate() {
                v.push((
                    format!("{{channel=\"{ch}\",direction=\"{dir}\"}}"),
                    load(&table[i][j]),
                ));
            }
        }
        v
    };
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        &mut out,
        "peerstash_datagrams_total",
        "counter",
        "Datagrams received and sent, by multicast channel.",
        &by_channel(&c.datagrams),
    );
    metric(
        &mut out,
        "peerstash_bytes_total",
        "counter",
        "Bytes of datagrams received and sent, by multicast channel.",
        &by_channel(&c.bytes),
    );
    metric(
        &mut out,
        "peerstash_malformed_datagrams_total",
        "counter",
        "Datagrams dropped as malformed or on the wrong channel.",
        &one(load(&c.malformed)),
    );
    let dropped = vec![
        ("{reason=\"busy\"}".to_owned(), load(&c.dropped_busy)),
        ("{reason=\"queue_full\"}".to_owned(), load(&c.dropped_queue)),
        (
            "{reason=\"unauthenticated\"}".to_owned(),
            load(&c.unauthenticated),
        ),
        ("{reason=\"tcp_refused\"}".to_owned(), load(&c.tcp_refused)),
    ];
    metric(
        &mut out,
        "peerstash_dropped_datagrams_total",
        "counter",
        "Datagrams and frames dropped, by reason.",
        &dropped,
    );
    metric(
        &mut out,
        "peerstash_putchunks_sent_total",
        "counter",
        "PUTCHUNKs sent, first sends and resends.",
        &one(load(&c.putchunks_sent)),
    );
    metric(
        &mut out,
        "peerstash_putchunks_resent_total",
        "counter",
        "PUTCHUNKs sent again because too few STOREDs came back: datagrams lost, or holders slow.",
        &one(load(&c.putchunks_resent)),
    );
    metric(
        &mut out,
        "peerstash_chunks_in_flight",
        "gauge",
        "Chunks being backed up or fetched now.",
        &one(load(&c.chunks_in_flight)),
    );
    let usage = node.store.usage();
    metric(
        &mut out,
        "peerstash_hosted_bytes",
        "gauge",
        "Bytes of other peers' chunks hosted here.",
        &one(usage.used as f64),
    );
    metric(
        &mut out,
        "peerstash_quota_bytes",
        "gauge",
        "Space offered to the other peers.",
        &one(usage.quota as f64),
    );
    if let Ok(held) = node.catalog.history_holds().await {
        metric(
            &mut out,
            "peerstash_history_held_folders",
            "gauge",
            "Watched folders whose history the guard holds (too many files changed at once): nothing there is pruned until `peerstash history resume DIR`.",
            &one(held.len() as f64),
        );
    }
    if let Some(k) = catalogued(node, cache).await {
        metric(
            &mut out,
            "peerstash_queue_length",
            "gauge",
            "Paths waiting in the backup queue.",
            &one(k.overview.queue as f64),
        );
        metric(
            &mut out,
            "peerstash_chunks_below_rd",
            "gauge",
            "Chunks of the newest versions of our files held by fewer peers than desired.",
            &one(k.below_rd as f64),
        );
        let files = vec![
            ("{health=\"healthy\"}".to_owned(), k.healthy as f64),
            ("{health=\"degraded\"}".to_owned(), k.degraded as f64),
            ("{health=\"at_risk\"}".to_owned(), k.at_risk as f64),
        ];
        metric(
            &mut out,
            "peerstash_files",
            "gauge",
            "Backed-up files (newest version), by health.",
            &files,
        );
        let now = crate::clock::unix_ms();
        let ages: Vec<(String, f64)> = (k.overview.folders.iter())
            .filter_map(|(path, t)| {
                let t = node.last_backed_up(path, *t)?;
                let folder = label(&path.to_string_lossy());
                Some((
                    format!("{{folder=\"{folder}\"}}"),
                    ((now - t).max(0) / 1000) as f64,
                ))
            })
            .collect();
        metric(
            &mut out,
            "peerstash_seconds_since_last_backup",
            "gauge",
            "Seconds since each watched folder was last known backed up: a backup in it completed, or a scan found nothing to back up (absent: never).",
            &ages,
        );
    }
    out
}

fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The one-page summary: health line, watched folders, hosting. Plain HTML, no script.
async fn render_page(node: &Arc<Node>, cache: &Cache) -> String {
    let mut body = String::new();
    let usage = node.store.usage();
    match catalogued(node, cache).await {
        Some(k) => {
            let health = match (k.healthy + k.degraded + k.at_risk, k.degraded + k.at_risk) {
                (0, _) => "nothing backed up yet".to_owned(),
                (1, 0) => "the 1 file backed up is at its RD".to_owned(),
                (n, 0) => format!("all {n} files at their RD"),
                _ => format!("{} files degraded, {} at risk", k.degraded, k.at_risk),
            };
            let _ = write!(body, "<h1 id=\"health\">{}</h1>", html(&health));
            // Any local user may load this page: the files are named by `peerstash status`,
            // to root and to their owners.
            if k.degraded + k.at_risk > 0 {
                body.push_str("<p>which files: <code>sudo peerstash status</code> names them</p>");
            }
            let _ = write!(
                body,
                "<p>peers: {} heard, {} lost</p>",
                k.overview.peers.0, k.overview.peers.1
            );
            let _ = write!(
                body,
                "<p>queue: {} paths waiting</p><h2>Watched folders</h2><ul>",
                k.overview.queue
            );
            let now = crate::clock::unix_ms();
            if k.overview.folders.is_empty() {
                body.push_str("<li>none (see [[watch]] in the config)</li>");
            }
            for (path, t) in &k.overview.folders {
                let last = match node.last_backed_up(path, *t) {
                    Some(t) => format!("last backup {} s ago", (now - t).max(0) / 1000),
                    None => "never backed up".to_owned(),
                };
                let _ = write!(body, "<li>{}: {}</li>", html(&path.to_string_lossy()), last);
            }
            body.push_str("</ul>");
        }
        None => body.push_str("<h1 id=\"health\">the catalog cannot be read</h1>"),
    }
    let _ = write!(
        body,
        "<p>hosting {} of {} bytes for the other peers</p>",
        usage.used, usage.quota
    );
    let rates = node
        .traffic_history
        .lock()
        .map(|h| h.rates(crate::clock::unix_ms()))
        .unwrap_or_default();
    let _ = write!(
        body,
        "<h2>Traffic, last hour</h2><p>received (blue) and sent (orange) on the multicast channels, bytes per second{}</p>{}",
        match rates.is_empty() {
            true => " (the first samples come 10 s after the start)",
            false => "",
        },
        plot(&rates)
    );
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>peerstash peer {}</title></head><body>{body}</body></html>\n",
        node.id.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_get_request_line_names_a_path() {
        assert_eq!(
            requested_path(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("/metrics")
        );
        assert_eq!(requested_path(b"GET / HTTP/1.0\r\n\r\n"), Some("/"));
        assert_eq!(requested_path(b"POST /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(requested_path(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(requested_path(b"\xff\xfe"), None);
        assert_eq!(requested_path(b""), None);
    }

    #[test]
    fn only_a_host_naming_the_listener_is_answered() {
        let listen: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let with = |host: &str| format!("GET /metrics HTTP/1.1\r\n{host}\r\nAccept: */*\r\n\r\n");
        for good in [
            "Host: 127.0.0.1:9464",
            "Host: localhost",
            "host: LocalHost:9464",
            "HOST:  localhost:9464 ",
        ] {
            assert!(host_allowed(with(good).as_bytes(), listen), "{good}");
        }
        for bad in [
            "Host: evil.example",
            "Host: evil.example:9464",
            "Host: 127.0.0.1",
            "Host: localhost:80",
            "Host: localhost.evil.example",
            "Host: 127.0.0.1:9464\r\nHost: evil.example",
            "X-Host: localhost",
        ] {
            assert!(!host_allowed(with(bad).as_bytes(), listen), "{bad}");
        }
        // No Host, or a Host after the head: refused.
        assert!(!host_allowed(b"GET / HTTP/1.0\r\n\r\n", listen));
        assert!(!host_allowed(
            b"GET / HTTP/1.1\r\n\r\nHost: localhost\r\n",
            listen
        ));
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert!(host_allowed(with("Host: [::1]").as_bytes(), v6));
        assert!(host_allowed(with("Host: [::1]:80").as_bytes(), v6));
    }

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let one: IpAddr = "127.0.0.1".parse().unwrap();
            let two: IpAddr = "127.0.0.2".parse().unwrap();
            let start = Instant::now();
            let conn = |id: u64, source: IpAddr, reading: bool| Open {
                id,
                source,
                since: start + Duration::from_millis(id),
                reading: Arc::new(AtomicBool::new(reading)),
                task: tokio::spawn(std::future::pending::<()>()).abort_handle(),
            };
            // One source at its bound: its oldest idle connection goes, not one being answered.
            let mut open: Vec<Open> = (0..MAX_PER_SOURCE as u64)
                .map(|id| conn(id, one, id != 0))
                .collect();
            assert!(Table::make_room(&mut open, two));
            assert!(Table::make_room(&mut open, one));
            assert_eq!(open.len(), MAX_PER_SOURCE - 1);
            assert!(open.iter().any(|o| o.id == 0) && !open.iter().any(|o| o.id == 1));
            // Every slot taken: the oldest idle one of any source goes; none idle: refused.
            let mut open: Vec<Open> = (0..MAX_CONNECTIONS as u64)
                .map(|id| conn(id, if id < 5 { two } else { one }, id >= 3))
                .collect();
            assert!(Table::make_room(&mut open, "127.0.0.3".parse().unwrap()));
            assert!(!open.iter().any(|o| o.id == 3));
            for o in &open {
                o.reading.store(false, Ordering::Relaxed);
            }
            assert!(!Table::make_room(&mut open, one));
        });
    }

    #[test]
    fn the_history_keeps_an_hour_and_gives_rates() {
        use crate::daemon::traffic::{History, HISTORY};
        let mut h = History::default();
        for i in 0..(HISTORY as i64 + 10) {
            h.push((i * 10_000, (i * 1_000) as u64, (i * 2_000) as u64));
        }
        assert_eq!(h.0.len(), HISTORY);
        let now = (HISTORY as i64 + 9) * 10_000;
        let rates = h.rates(now);
        assert_eq!(rates.len(), HISTORY - 1);
        assert_eq!(rates.last(), Some(&(0.0, 100.0, 200.0)));
        let svg = plot(&rates);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }

    #[test]
    fn labels_and_text_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(
            html("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
