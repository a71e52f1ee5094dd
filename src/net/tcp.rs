//! TCP transport of the 2.0 restore (SPEC §3): a holder connects to the GETCHUNK sender's
//! `TCP <port>` and delivers one chunk. One frame per connection: a 4-byte big-endian length N,
//! N bytes (the encoded CHUNK message, parsed above), then close. Any LAN host may connect, so
//! lengths, time and connections are all bounded.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::protocol::message::MAX_HEADER_LEN;
use crate::protocol::CHUNK_SIZE;
use crate::shutdown::Shutdown;

/// Largest frame accepted: a header (MAX_HEADER_LEN plus room for an AUTH line) plus one chunk
/// body.
pub const MAX_FRAME: usize = MAX_HEADER_LEN + 256 + CHUNK_SIZE;
/// Connections served at once (inbound); beyond this, new ones are accepted and closed at once.
/// With MAX_FRAME this bounds the frames being read to MAX_INBOUND × MAX_FRAME (~2.2 MB).
pub const MAX_INBOUND: usize = 32;
/// Deliveries in progress at once (outbound); beyond this `Deliveries::try_start` returns None.
pub const MAX_OUTBOUND: usize = 16;
/// A connection that does not complete (connect, or the whole frame) within this is dropped.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed accept (out of descriptors, say), wait this long rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds a TCP listener on `ip`, port chosen by the kernel; returns it and its port.
pub async fn bind(ip: Ipv4Addr) -> io::Result<(TcpListener, u16)> {
    let listener = TcpListener::bind(SocketAddrV4::new(ip, 0)).await?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// Accepts connections until `shutdown` fires (or nobody receives `frames` any more); reads one
/// frame from each and hands `(frame, peer address)` to `frames` without waiting: a full queue
/// drops the frame and bumps `dropped`. Connections still being read when it returns are
/// dropped. Errors are logged at debug level: a peer's bad connection is not ours to report.
pub async fn serve(
    listener: TcpListener,
    frames: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    dropped: Arc<AtomicU64>,
    shutdown: Shutdown,
) {
    serve_with(listener, frames, dropped, shutdown, TIMEOUT).await;
}

/// `serve` with the per-connection time limit as a parameter, so tests need not wait TIMEOUT.
async fn serve_with(
    listener: TcpListener,
    frames: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    dropped: Arc<AtomicU64>,
    mut shutdown: Shutdown,
    timeout: Duration,
) {
    let permits = Arc::new(Semaphore::new(MAX_INBOUND));
    // Owning the connections' tasks means they end (aborted) when serve does.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = frames.closed() => break,
            // Reaps finished connections so the set does not grow; disabled while empty.
            Some(joined) = connections.join_next() => {
                if let Err(e) = joined {
                    tracing::debug!("a TCP connection's task failed: {e}");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    // Refusing (rather than waiting for a permit) keeps a flood of idle
                    // connections from queueing up in the kernel behind the ones being served.
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tracing::debug!(
                            "TCP connection from {from} closed: {MAX_INBOUND} already being served"
                        );
                        continue;
                    };
                    connections.spawn(receive(
                        stream,
                        from,
                        permit,
                        frames.clone(),
                        dropped.clone(),
                        timeout,
                    ));
                }
                Err(e) => {
                    tracing::debug!("TCP accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Serves one connection: reads its frame within `timeout` and queues it.
async fn receive(
    mut stream: TcpStream,
    from: SocketAddr,
    permit: OwnedSemaphorePermit,
    frames: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    dropped: Arc<AtomicU64>,
    timeout: Duration,
) {
    // The whole frame, not each read, is timed: a sender dripping a byte at a time is cut too.
    match tokio::time::timeout(timeout, read_frame(&mut stream)).await {
        Ok(Ok(frame)) => match frames.try_send((frame, from)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("TCP frame from {from} dropped: the queue is full");
            }
            Err(TrySendError::Closed(_)) => {
                tracing::debug!("TCP frame from {from} dropped: nobody receives frames");
            }
        },
        Ok(Err(e)) => tracing::debug!("TCP connection from {from}: {e}"),
        Err(_) => tracing::debug!("TCP connection from {from} cut: no whole frame in {timeout:?}"),
    }
    // The permit goes back before the peer can see the close, so whoever waits for the close
    // finds the slot free.
    drop(permit);
    drop(stream);
}

/// Reads a length prefix and that many bytes; a length of 0 or over MAX_FRAME is refused before
/// anything is allocated for it.
async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u32().await?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} is not within 1..={MAX_FRAME}"),
        ));
    }
    let mut frame = vec![0; len];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

/// Bounds outbound deliveries: a holder asked by many GETCHUNKs at once opens at most
/// MAX_OUTBOUND connections.
#[derive(Clone)]
pub struct Deliveries(Arc<Semaphore>);

impl Default for Deliveries {
    fn default() -> Deliveries {
        Deliveries::new()
    }
}

impl Deliveries {
    pub fn new() -> Deliveries {
        Deliveries(Arc::new(Semaphore::new(MAX_OUTBOUND)))
    }

    /// A permit for one delivery (held until it ends), or None when MAX_OUTBOUND are in progress.
    pub fn try_start(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// Connects to `to` and writes one frame (length prefix + bytes), all within TIMEOUT; then shuts
/// the write side down. A frame the receiver would refuse (empty, over MAX_FRAME) is not sent.
pub async fn deliver(to: SocketAddr, frame: &[u8]) -> io::Result<()> {
    deliver_with(to, frame, TIMEOUT).await
}

async fn deliver_with(to: SocketAddr, frame: &[u8], timeout: Duration) -> io::Result<()> {
    if frame.is_empty() || frame.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes is not within 1..={MAX_FRAME}",
                frame.len()
            ),
        ));
    }
    // Fits: MAX_FRAME is far below u32::MAX.
    let len = frame.len() as u32;
    let send = async {
        let mut stream = TcpStream::connect(to).await?;
        // The frame follows the 4-byte prefix without waiting for its ACK.
        stream.set_nodelay(true)?;
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(frame).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(timeout, send)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("delivery to {to} not done within {timeout:?}"),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::sync::mpsc::error::TryRecvError;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use crate::shutdown::Trigger;

    const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
    /// The serve timeout in tests: short, so stalls are cut quickly.
    const SHORT: Duration = Duration::from_millis(300);
    /// How long a test waits for something that should happen at once.
    const WAIT: Duration = Duration::from_secs(2);

    struct Server {
        addr: SocketAddr,
        frames: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
        dropped: Arc<AtomicU64>,
        trigger: Trigger,
        task: JoinHandle<()>,
    }

    async fn start(queue: usize) -> Server {
        let (listener, port) = bind(LOCALHOST).await.unwrap();
        let (tx, frames) = mpsc::channel(queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let trigger = Trigger::new();
        let task = tokio::spawn(serve_with(
            listener,
            tx,
            dropped.clone(),
            trigger.subscribe(),
            SHORT,
        ));
        Server {
            addr: SocketAddr::from((LOCALHOST, port)),
            frames,
            dropped,
            trigger,
            task,
        }
    }

    impl Server {
        async fn next(&mut self) -> (Vec<u8>, SocketAddr) {
            tokio::time::timeout(WAIT, self.frames.recv())
                .await
                .expect("a frame within WAIT")
                .expect("the server is running")
        }

        fn nothing_queued(&mut self) -> bool {
            matches!(self.frames.try_recv(), Err(TryRecvError::Empty))
        }
    }

    /// A frame whose bytes differ along its length, so a reordering or a gap would show.
    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// Waits until the server closes `stream` (EOF, or a reset when it left bytes unread);
    /// returns how long that took.
    async fn closed_by_server(stream: &mut (impl AsyncReadExt + Unpin)) -> Duration {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("closed by the server within WAIT");
        assert!(!matches!(read, Ok(n) if n > 0), "the server never writes");
        start.elapsed()
    }

    #[tokio::test]
    async fn a_delivered_frame_arrives_whole_with_the_senders_address() {
        let mut server = start(4).await;
        let sent = frame(MAX_FRAME, 7);
        deliver(server.addr, &sent).await.unwrap();
        let (got, from) = server.next().await;
        assert_eq!(got.len(), MAX_FRAME);
        assert!(got == sent);
        assert_eq!(from.ip(), LOCALHOST);

        // The exact address (port too), from a hand-made connection.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        stream.write_all(&3u32.to_be_bytes()).await.unwrap();
        stream.write_all(b"abc").await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(server.next().await, (b"abc".to_vec(), local));
    }

    #[tokio::test]
    async fn two_frames_on_two_interleaved_connections_both_arrive() {
        let mut server = start(4).await;
        let (a, b) = (frame(10_000, 1), frame(20_000, 2));
        let mut sa = TcpStream::connect(server.addr).await.unwrap();
        let mut sb = TcpStream::connect(server.addr).await.unwrap();
        let (la, lb) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
        // Half of each, then the rest of each: neither connection waits for the other.
        sa.write_all(&(a.len() as u32).to_be_bytes()).await.unwrap();
        sa.write_all(&a[..5_000]).await.unwrap();
        sb.write_all(&(b.len() as u32).to_be_bytes()).await.unwrap();
        sb.write_all(&b[..10_000]).await.unwrap();
        sb.write_all(&b[10_000..]).await.unwrap();
        sa.write_all(&a[5_000..]).await.unwrap();
        let mut got = vec![server.next().await, server.next().await];
        got.sort_by_key(|(f, _)| f.len());
        assert!(got == vec![(a, la), (b, lb)]);
        assert_eq!(server.dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_oversize_or_zero_length_is_refused_and_the_server_goes_on() {
        let mut server = start(4).await;
        for len in [MAX_FRAME as u32 + 1, u32::MAX, 0] {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(&len.to_be_bytes()).await.unwrap();
            stream.write_all(&[0x55; 1000]).await.unwrap();
            // Refused on the prefix alone: closed long before the timeout.
            assert!(closed_by_server(&mut stream).await < SHORT);
            assert!(server.nothing_queued());
        }
        deliver(server.addr, b"still served").await.unwrap();
        assert_eq!(server.next().await.0, b"still served");
    }

    #[tokio::test]
    async fn empty_and_truncated_connections_deliver_nothing() {
        let mut server = start(4).await;
        let truncated: [&[u8]; 4] = [
            b"",
            b"\x00\x00",
            b"\x00\x00\x00\x09",
            b"\x00\x00\x00\x09abc",
        ];
        for bytes in truncated {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(bytes).await.unwrap();
            stream.shutdown().await.unwrap();
            // The sender's close ends the read at once; no wait for the timeout.
            assert!(closed_by_server(&mut stream).await < SHORT);
            assert!(server.nothing_queued());
        }
        // Bytes after the frame are ignored: one frame per connection.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"\x00\x00\x00\x02hi and more")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(server.next().await.0, b"hi");
    }

    #[tokio::test]
    async fn half_a_frame_then_a_stall_is_cut_at_the_timeout() {
        let mut server = start(4).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&1000u32.to_be_bytes()).await.unwrap();
        stream.write_all(&[1; 500]).await.unwrap();
        let took = closed_by_server(&mut stream).await;
        assert!(took >= SHORT - Duration::from_millis(50), "{took:?}");
        assert!(server.nothing_queued());
    }

    #[tokio::test]
    async fn a_slow_drip_is_cut_at_the_timeout_too() {
        let mut server = start(4).await;
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        write.write_all(&1000u32.to_be_bytes()).await.unwrap();
        // A byte every 20 ms: every read of the server's gets something, but the frame would
        // take 20 s.
        let drip = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if write.write_all(&[1]).await.is_err() {
                    break;
                }
            }
        });
        let took = closed_by_server(&mut read).await;
        drip.abort();
        assert!(took >= SHORT - Duration::from_millis(50), "{took:?}");
        assert!(server.nothing_queued());
    }

    #[tokio::test]
    async fn beyond_max_inbound_a_connection_is_closed_at_once_and_served_again_later() {
        let mut server = start(4).await;
        let mut idle = Vec::new();
        for _ in 0..MAX_INBOUND {
            idle.push(TcpStream::connect(server.addr).await.unwrap());
        }
        // Accepted in order, so the idle ones hold every permit: this one is closed at once,
        // its frame unread.
        let mut extra = TcpStream::connect(server.addr).await.unwrap();
        extra.write_all(b"\x00\x00\x00\x05extra").await.unwrap();
        assert!(closed_by_server(&mut extra).await < SHORT);
        // The idle ones are cut at the timeout, and free their permits as they go.
        for stream in &mut idle {
            closed_by_server(stream).await;
        }
        deliver(server.addr, b"good").await.unwrap();
        assert_eq!(server.next().await.0, b"good");
        assert!(server.nothing_queued());
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_frame_and_counts_it() {
        let mut server = start(1).await;
        deliver(server.addr, b"first").await.unwrap();
        deliver(server.addr, b"second").await.unwrap();
        let deadline = Instant::now() + WAIT;
        while server.dropped.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the second frame was never dropped"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(server.next().await.0, b"first");
        assert!(server.nothing_queued());
        assert_eq!(server.dropped.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn shutdown_stops_the_server_and_its_connections() {
        let server = start(4).await;
        let mut stalled = TcpStream::connect(server.addr).await.unwrap();
        stalled.write_all(&100u32.to_be_bytes()).await.unwrap();
        let start = Instant::now();
        assert!(server.trigger.shutdown(WAIT).await);
        tokio::time::timeout(WAIT, server.task)
            .await
            .unwrap()
            .unwrap();
        // The stalled connection is dropped with the server, not left to its timeout.
        closed_by_server(&mut stalled).await;
        assert!(start.elapsed() < SHORT, "{:?}", start.elapsed());
        assert!(TcpStream::connect(server.addr).await.is_err());
    }

    #[tokio::test]
    async fn deliver_to_a_closed_port_fails_without_hanging() {
        let (listener, port) = bind(LOCALHOST).await.unwrap();
        drop(listener);
        let to = SocketAddr::from((LOCALHOST, port));
        let result = tokio::time::timeout(WAIT, deliver(to, b"chunk"))
            .await
            .expect("no hang");
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn deliver_refuses_an_empty_or_oversize_frame() {
        let (listener, port) = bind(LOCALHOST).await.unwrap();
        let to = SocketAddr::from((LOCALHOST, port));
        for len in [0, MAX_FRAME + 1] {
            let err = deliver(to, &vec![0; len]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        // Refused before connecting.
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err());
    }

    #[test]
    fn try_start_gives_max_outbound_permits_then_none() {
        let deliveries = Deliveries::new();
        let shared = deliveries.clone();
        let permits: Vec<_> = (0..MAX_OUTBOUND)
            .map(|_| shared.try_start().expect("a permit"))
            .collect();
        assert!(deliveries.try_start().is_none());
        drop(permits);
        assert!(deliveries.try_start().is_some());
    }

    #[test]
    fn max_frame_holds_a_header_an_auth_line_and_a_chunk() {
        assert_eq!(MAX_FRAME, 4096 + 256 + 64_000);
        assert!(u32::try_from(MAX_FRAME).is_ok());
    }
}
