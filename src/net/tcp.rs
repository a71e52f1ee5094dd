//! TCP transport of the 2.0 restore (SPEC §3): the restoring peer pulls. A holder that has a
//! chunk says so on MDR with a body-less CHUNK naming its listener's port; the restorer connects
//! there and asks. The TCP handshake proves who asks, so a datagram never makes anyone connect
//! to an address of a stranger's choice, and a holder writes chunk bytes only to a peer that
//! connected to it. On a connection: frames, each a 4-byte big-endian length N then N bytes;
//! the restorer sends a request (a GETCHUNK message), the holder answers with one frame (the
//! CHUNK message) or closes. Any LAN host may connect, so lengths, time and connections are
//! bounded, in total and per source address.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::protocol::message::MAX_HEADER_LEN;
use crate::protocol::CHUNK_SIZE;
use crate::shutdown::Shutdown;

/// Largest answer accepted: a header (MAX_HEADER_LEN plus room for an AUTH line) plus one chunk
/// body.
pub const MAX_FRAME: usize = MAX_HEADER_LEN + 256 + CHUNK_SIZE;
/// Largest request accepted: a header and its AUTH line, no body.
pub const MAX_REQUEST: usize = MAX_HEADER_LEN + 256;
/// Connections served at once (inbound); beyond this, new ones are accepted and closed at once.
pub const MAX_INBOUND: usize = 32;
/// Of those, from any one address: a host holding connections leaves room for the others.
pub const MAX_INBOUND_PER_SOURCE: usize = 8;
/// Requests served on one connection; then it is closed (the restorer connects again).
pub const MAX_REQUESTS_PER_CONNECTION: usize = 1024;
/// Pulls in progress at once (outbound); the others wait their turn.
pub const MAX_OUTBOUND: usize = 32;
/// A step (connect, a whole request, a whole answer, or the wait for the next request) that does
/// not complete within this cuts the connection.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed accept (out of descriptors, say), wait this long rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds a TCP listener on `ip`, port chosen by the kernel; returns it and its port.
pub async fn bind(ip: Ipv4Addr) -> io::Result<(TcpListener, u16)> {
    let listener = TcpListener::bind(SocketAddrV4::new(ip, 0)).await?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// Accepts connections until `shutdown` fires; on each, reads requests and writes what
/// `answer(request, peer address)` gives back (None: the connection is closed). `refused`
/// counts connections closed at once (too many) and requests cut (too long, too slow).
/// Connections still open when it returns are dropped. Errors are logged at debug level: a
/// peer's bad connection is not ours to report.
pub async fn serve<A, F>(
    listener: TcpListener,
    answer: A,
    refused: Arc<AtomicU64>,
    shutdown: Shutdown,
) where
    A: Fn(Vec<u8>, SocketAddr) -> F + Clone + Send + 'static,
    F: Future<Output = Option<Vec<u8>>> + Send,
{
    serve_with(listener, answer, refused, shutdown, TIMEOUT).await;
}

/// `serve` with the time limit as a parameter, so tests need not wait TIMEOUT.
async fn serve_with<A, F>(
    listener: TcpListener,
    answer: A,
    refused: Arc<AtomicU64>,
    mut shutdown: Shutdown,
    timeout: Duration,
) where
    A: Fn(Vec<u8>, SocketAddr) -> F + Clone + Send + 'static,
    F: Future<Output = Option<Vec<u8>>> + Send,
{
    // Owning the connections' tasks means they end (aborted) when serve does. Each returns its
    // source address, whose count then goes down.
    let mut connections: JoinSet<IpAddr> = JoinSet::new();
    let mut per_source: HashMap<IpAddr, usize> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.recv() => break,
            // Reaps finished connections so the set does not grow; disabled while empty.
            Some(joined) = connections.join_next() => match joined {
                Ok(ip) => {
                    if let Some(n) = per_source.get_mut(&ip) {
                        *n -= 1;
                        if *n == 0 {
                            per_source.remove(&ip);
                        }
                    }
                }
                Err(e) => tracing::debug!("a TCP connection's task failed: {e}"),
            },
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    // Refusing (rather than waiting) keeps a flood of idle connections from
                    // queueing up in the kernel behind the ones being served.
                    let mine = per_source.get(&from.ip()).copied().unwrap_or(0);
                    if connections.len() >= MAX_INBOUND || mine >= MAX_INBOUND_PER_SOURCE {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            "TCP connection from {from} closed: {} being served, {mine} from it",
                            connections.len()
                        );
                        continue;
                    }
                    *per_source.entry(from.ip()).or_default() += 1;
                    let (answer, refused) = (answer.clone(), refused.clone());
                    connections.spawn(async move {
                        serve_one(stream, from, answer, refused, timeout).await;
                        from.ip()
                    });
                }
                Err(e) => {
                    tracing::debug!("TCP accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Serves one connection: each request must arrive whole within `timeout` (of the connection's
/// start or of the last answer), and each answer be written within it.
async fn serve_one<A, F>(
    mut stream: TcpStream,
    from: SocketAddr,
    answer: A,
    refused: Arc<AtomicU64>,
    timeout: Duration,
) where
    A: Fn(Vec<u8>, SocketAddr) -> F,
    F: Future<Output = Option<Vec<u8>>>,
{
    let _ = stream.set_nodelay(true);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        // The whole request, not each read, is timed: a sender dripping a byte at a time is cut.
        let request = match tokio::time::timeout(timeout, read_frame(&mut stream, MAX_REQUEST))
            .await
        {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => return, // closed between requests: done
            Ok(Err(e)) => {
                refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("TCP connection from {from}: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("TCP connection from {from} cut: no whole request in {timeout:?}");
                return;
            }
        };
        let Some(frame) = answer(request, from).await else {
            return;
        };
        match tokio::time::timeout(timeout, write_frame(&mut stream, &frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return tracing::debug!("TCP connection from {from}: {e}"),
            Err(_) => return tracing::debug!("TCP answer to {from} not taken in {timeout:?}"),
        }
    }
}

/// Reads a length prefix and that many bytes; None if the peer closed before a prefix. A
/// length of 0 or over `max` is refused before anything is allocated for it.
async fn read_frame(stream: &mut TcpStream, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut prefix = [0u8; 4];
    let first = stream.read(&mut prefix).await?;
    if first == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut prefix[first..]).await?;
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len == 0 || len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} is not within 1..={max}"),
        ));
    }
    let mut frame = vec![0; len];
    stream.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

async fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> io::Result<()> {
    check_len("frame", frame, MAX_FRAME)?;
    // Fits: MAX_FRAME is far below u32::MAX. One write: the frame follows its prefix at once.
    let mut bytes = Vec::with_capacity(4 + frame.len());
    bytes.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    bytes.extend_from_slice(frame);
    stream.write_all(&bytes).await
}

/// The restorer's side: pulls, at most MAX_OUTBOUND at once and MAX_PER_HOLDER to one holder
/// (the holder serves no more connections from one address: more would be closed at once, and
/// their chunks wait for a resend), over connections kept open between pulls (one handshake per
/// connection, not per chunk); an idle connection is kept at most `KEEP_IDLE`, well within the
/// holder's own limit.
#[derive(Clone)]
pub struct Pulls {
    permits: Arc<Semaphore>,
    holders: Arc<std::sync::Mutex<HashMap<SocketAddr, Arc<Semaphore>>>>,
    idle: Arc<std::sync::Mutex<Idle>>,
}

/// Connections kept open per holder, and since when each is idle.
type Idle = HashMap<SocketAddr, Vec<(TcpStream, std::time::Instant)>>;

/// An idle connection older than this is closed rather than used (the holder cuts it at TIMEOUT).
const KEEP_IDLE: Duration = Duration::from_secs(2);
/// Connections to one holder at once: what a holder serves from one address.
pub const MAX_PER_HOLDER: usize = MAX_INBOUND_PER_SOURCE;
/// Holders whose places are remembered while none of them is in use (a forged announcement
/// adds one, so the map is trimmed beyond this).
const HOLDERS_KEPT: usize = 64;

impl Default for Pulls {
    fn default() -> Pulls {
        Pulls::new()
    }
}

impl Pulls {
    pub fn new() -> Pulls {
        Pulls {
            permits: Arc::new(Semaphore::new(MAX_OUTBOUND)),
            holders: Arc::default(),
            idle: Arc::default(),
        }
    }

    /// A permit now, or None when MAX_OUTBOUND are in progress.
    pub fn try_start(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Sends `request` to the holder at `to` and reads its one answer (at most MAX_FRAME bytes),
    /// each step within TIMEOUT; waits for a free place first. A kept connection that fails is
    /// tried once more on a new one (the holder may have closed it meanwhile).
    pub async fn pull(&self, to: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
        check_request(request)?;
        // The semaphores are never closed.
        let _place = self
            .holder(to)
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let _permit = self.permits.acquire().await.map_err(io::Error::other)?;
        if let Some(mut stream) = self.take_idle(to) {
            if let Ok(answer) = exchange(&mut stream, to, request, TIMEOUT).await {
                self.put_idle(to, stream);
                return Ok(answer);
            }
        }
        let mut stream = connect(to, TIMEOUT).await?;
        let answer = exchange(&mut stream, to, request, TIMEOUT).await?;
        self.put_idle(to, stream);
        Ok(answer)
    }

    /// The places of one holder.
    fn holder(&self, to: SocketAddr) -> Arc<Semaphore> {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        if holders.len() >= HOLDERS_KEPT && !holders.contains_key(&to) {
            holders.retain(|_, places| places.available_permits() < MAX_PER_HOLDER);
        }
        (holders.entry(to))
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_PER_HOLDER)))
            .clone()
    }

    fn take_idle(&self, to: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.get_mut(&to)?;
        kept.retain(|(_, at)| at.elapsed() < KEEP_IDLE);
        let stream = kept.pop().map(|(s, _)| s);
        if kept.is_empty() {
            idle.remove(&to);
        }
        stream
    }

    fn put_idle(&self, to: SocketAddr, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Forgets holders whose connections all went stale, so the map stays small.
        idle.retain(|_, kept| {
            kept.retain(|(_, at)| at.elapsed() < KEEP_IDLE);
            !kept.is_empty()
        });
        let kept = idle.entry(to).or_default();
        if kept.len() < MAX_PER_HOLDER {
            kept.push((stream, std::time::Instant::now()));
        }
    }
}

/// Connects to the holder at `to` and pulls one answer, on a connection of its own (closed
/// after).
pub async fn pull(to: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
    pull_with(to, request, TIMEOUT).await
}

async fn pull_with(to: SocketAddr, request: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    check_request(request)?;
    let mut stream = connect(to, timeout).await?;
    exchange(&mut stream, to, request, timeout).await
}

async fn connect(to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(to))
        .await
        .map_err(|_| timed_out(to, timeout))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn timed_out(to: SocketAddr, timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("pull from {to} not done within {timeout:?}"),
    )
}

/// A request the holder would refuse (empty, over MAX_REQUEST) is not sent.
fn check_request(request: &[u8]) -> io::Result<()> {
    check_len("request", request, MAX_REQUEST)
}

/// What the other end would refuse (empty, over `max`) is not sent.
fn check_len(what: &str, bytes: &[u8], max: usize) -> io::Result<()> {
    if bytes.is_empty() || bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} of {} bytes is not within 1..={max}", bytes.len()),
        ));
    }
    Ok(())
}

/// Writes `request` and reads one answer, within `timeout`.
async fn exchange(
    stream: &mut TcpStream,
    to: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    if request.is_empty() || request.len() > MAX_REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "request of {} bytes is not within 1..={MAX_REQUEST}",
                request.len()
            ),
        ));
    }
    let exchange = async {
        write_frame(stream, request).await?;
        match read_frame(stream, MAX_FRAME).await? {
            Some(frame) => Ok(frame),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{to} closed without an answer"),
            )),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| timed_out(to, timeout))?
}

#[cfg(test)]
mod tests;
