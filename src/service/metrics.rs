//! `[metrics] listen`: Prometheus metrics (`GET /metrics`, text format 0.0.4) and a one-page
//! read-only health summary (`GET /`), on a loopback address only (the config refuses any
//! other). Off unless set.
//!
//! The HTTP here is the least a scraper and a browser need, and no more: one GET per
//! connection, its request read within `READ_WITHIN` and `MAX_REQUEST` bytes, the answer with
//! its length and `Connection: close`, at most `MAX_CONNECTIONS` at once. (A web framework
//! would bring more code than this whole listener.)

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::daemon::cmd::status::Overview;
use crate::daemon::Node;
use crate::shutdown::Shutdown;
use crate::store::Health;

const MAX_REQUEST: usize = 8 * 1024;
/// Samples of traffic kept for the plots: one per status tick (10 s), an hour's worth.
const HISTORY: usize = 360;

/// Total bytes received and sent on the channels, sampled (unix ms, in, out).
#[derive(Default)]
pub struct History(std::collections::VecDeque<(i64, u64, u64)>);

impl History {
    fn push(&mut self, sample: (i64, u64, u64)) {
        if self.0.len() == HISTORY {
            self.0.pop_front();
        }
        self.0.push_back(sample);
    }

    /// Bytes per second in and out between consecutive samples: (seconds before `now`, in,
    /// out).
    fn rates(&self, now_ms: i64) -> Vec<(f64, f64, f64)> {
        let s: Vec<_> = self.0.iter().collect();
        s.windows(2)
            .filter_map(|w| {
                let ((t0, i0, o0), (t1, i1, o1)) = (w[0], w[1]);
                let dt = (t1 - t0) as f64 / 1000.0;
                (dt > 0.0).then(|| {
                    (
                        (now_ms - t1) as f64 / 1000.0,
                        i1.saturating_sub(*i0) as f64 / dt,
                        o1.saturating_sub(*o0) as f64 / dt,
                    )
                })
            })
            .collect()
    }
}

/// Records the channels' byte totals now (every status tick).
pub fn sample(node: &Node) {
    let b = &node.counters.bytes;
    let total = |d: usize| {
        b.iter()
            .map(|ch| ch[d].load(Ordering::Relaxed))
            .sum::<u64>()
    };
    if let Ok(mut h) = node.traffic_history.lock() {
        h.push((crate::store::unix_ms(), total(0), total(1)));
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
const READ_WITHIN: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 8;

/// Binds the listener (at start: a port taken is a refusal, said before the peer is heard).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (metrics.listen) for metrics: {e}"))
}

/// Serves the listener until the daemon stops.
pub async fn serve(node: Arc<Node>, listener: TcpListener, mut shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let cache: Arc<Cache> = Arc::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.recv() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Beyond the bound, the connection waits in the kernel's backlog.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (node, cache) = (node.clone(), cache.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_WITHIN * 2, answer(&node, &cache, stream)).await;
            drop(permit);
        });
    }
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

async fn answer(node: &Arc<Node>, cache: &Cache, mut stream: TcpStream) -> std::io::Result<()> {
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
    let (status, kind, body) = match requested_path(&head) {
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
    let overview = node
        .catalog
        .read(move |c| crate::daemon::cmd::status::overview(c, None, folders))
        .await
        .ok()?;
    let (mut healthy, mut degraded, mut at_risk, mut below_rd) = (0, 0, 0, 0u64);
    for (_, h, below) in &overview.health {
        below_rd += below;
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
        let now = crate::store::unix_ms();
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
            let now = crate::store::unix_ms();
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
        .map(|h| h.rates(crate::store::unix_ms()))
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
    fn the_history_keeps_an_hour_and_gives_rates() {
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
