use super::*;

use std::sync::Mutex;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::shutdown::Trigger;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The serve timeout in tests: short, so stalls are cut quickly.
const SHORT: Duration = Duration::from_millis(300);
/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(2);

/// Every request the test holder got, and from where.
type Asked = Arc<Mutex<Vec<(Vec<u8>, SocketAddr)>>>;

/// A holder whose answer to a request is the request reversed ("none": no answer), and who
/// notes every request with its address.
struct Server {
    addr: SocketAddr,
    asked: Asked,
    refused: Arc<AtomicU64>,
    trigger: Trigger,
    task: JoinHandle<()>,
}

async fn start() -> Server {
    let (listener, port) = bind(LOCALHOST).await.unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let trigger = Trigger::new();
    let log = asked.clone();
    let answer = move |request: Vec<u8>, from: SocketAddr| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push((request.clone(), from));
            (request != b"none").then(|| request.iter().rev().copied().collect())
        }
    };
    let task = tokio::spawn(serve_with(
        listener,
        answer,
        refused.clone(),
        trigger.subscribe(),
        SHORT,
    ));
    Server {
        addr: SocketAddr::from((LOCALHOST, port)),
        asked,
        refused,
        trigger,
        task,
    }
}

impl Server {
    fn asked(&self) -> usize {
        self.asked.lock().unwrap().len()
    }
}

/// Waits until the server closes `stream` (EOF, or a reset when it left bytes unread);
/// returns how long that took.
async fn closed_by_server(stream: &mut (impl AsyncReadExt + Unpin)) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("closed by the server within WAIT");
    assert!(!matches!(read, Ok(n) if n > 0), "no answer was due");
    start.elapsed()
}

#[tokio::test]
async fn a_pull_gets_the_answer_and_the_holder_sees_who_asked() {
    let server = start().await;
    assert_eq!(pull(server.addr, b"abc").await.unwrap(), b"cba");
    let (request, from) = server.asked.lock().unwrap()[0].clone();
    assert_eq!(request, b"abc");
    assert_eq!(from.ip(), LOCALHOST);
    // The largest request, and an answer the size of a whole chunk frame.
    let big: Vec<u8> = (0..MAX_REQUEST).map(|i| (i % 251) as u8).collect();
    let answer = pull(server.addr, &big).await.unwrap();
    assert!(answer.iter().rev().eq(big.iter()));
}

#[tokio::test]
async fn several_requests_on_one_connection_are_answered_in_turn() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for word in [&b"one"[..], b"two", b"three"] {
        write_frame(&mut stream, word).await.unwrap();
        let got = read_frame(&mut stream, MAX_FRAME).await.unwrap().unwrap();
        assert!(got.iter().rev().eq(word.iter()));
    }
    // No answer: the connection is closed.
    write_frame(&mut stream, b"none").await.unwrap();
    assert!(read_frame(&mut stream, MAX_FRAME).await.unwrap().is_none());
    assert_eq!(server.asked(), 4);
    let e = pull(server.addr, b"none").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
}

#[tokio::test]
async fn an_oversize_or_zero_length_request_is_refused_and_the_server_goes_on() {
    let server = start().await;
    for len in [MAX_REQUEST as u32 + 1, u32::MAX, 0] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&len.to_be_bytes()).await.unwrap();
        stream.write_all(&[0x55; 1000]).await.unwrap();
        // Refused on the prefix alone: closed long before the timeout.
        assert!(closed_by_server(&mut stream).await < SHORT);
    }
    assert_eq!(server.asked(), 0);
    assert_eq!(server.refused.load(Ordering::Relaxed), 3);
    assert_eq!(pull(server.addr, b"still").await.unwrap(), b"llits");
}

#[tokio::test]
async fn empty_and_truncated_connections_ask_nothing() {
    let server = start().await;
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
    }
    assert_eq!(server.asked(), 0);
}

#[tokio::test]
async fn half_a_request_then_a_stall_or_a_slow_drip_is_cut_at_the_timeout() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&100u32.to_be_bytes()).await.unwrap();
    stream.write_all(&[1; 50]).await.unwrap();
    let took = closed_by_server(&mut stream).await;
    assert!(took >= SHORT - Duration::from_millis(50), "{took:?}");

    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(&100u32.to_be_bytes()).await.unwrap();
    // A byte every 20 ms: every read of the server's gets something, but the request would
    // take 2 s.
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
    // An idle connection after an answer is cut the same way.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    write_frame(&mut stream, b"hi").await.unwrap();
    read_frame(&mut stream, MAX_FRAME).await.unwrap().unwrap();
    let took = closed_by_server(&mut stream).await;
    assert!(took >= SHORT - Duration::from_millis(50), "{took:?}");
    assert_eq!(server.asked(), 1);
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_and_the_others_are_still_served() {
    let server = start().await;
    let mut idle = Vec::new();
    for _ in 0..MAX_INBOUND_PER_SOURCE {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Accepted in order, so the idle ones hold this address's share: this one is closed at
    // once, its request unread.
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    write_frame(&mut extra, b"extra").await.unwrap();
    assert!(closed_by_server(&mut extra).await < SHORT);
    // Another address of this host is served meanwhile.
    let other = TcpSocketFrom::new(Ipv4Addr::new(127, 0, 0, 2));
    let mut stream = other.connect(server.addr).await;
    write_frame(&mut stream, b"other").await.unwrap();
    assert_eq!(
        read_frame(&mut stream, MAX_FRAME).await.unwrap().unwrap(),
        b"rehto"
    );
    drop(stream);
    // The idle ones are cut at the timeout, and free their places as they go.
    for stream in &mut idle {
        closed_by_server(stream).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pull(server.addr, b"good").await.unwrap(), b"doog");
    assert_eq!(server.asked(), 2);
}

#[tokio::test]
async fn beyond_max_inbound_a_connection_is_closed_at_once() {
    let server = start().await;
    let mut idle = Vec::new();
    for i in 0..MAX_INBOUND {
        let from = TcpSocketFrom::new(Ipv4Addr::new(
            127,
            0,
            1,
            (i / MAX_INBOUND_PER_SOURCE) as u8 + 1,
        ));
        idle.push(from.connect(server.addr).await);
    }
    let from = TcpSocketFrom::new(Ipv4Addr::new(127, 0, 2, 1));
    let mut extra = from.connect(server.addr).await;
    write_frame(&mut extra, b"extra").await.unwrap();
    assert!(closed_by_server(&mut extra).await < SHORT);
    assert_eq!(server.asked(), 0);
}

/// Connections from a chosen loopback address.
struct TcpSocketFrom(Ipv4Addr);

impl TcpSocketFrom {
    fn new(ip: Ipv4Addr) -> TcpSocketFrom {
        TcpSocketFrom(ip)
    }

    async fn connect(&self, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((self.0, 0))).unwrap();
        socket.connect(to).await.unwrap()
    }
}

#[tokio::test]
async fn shutdown_stops_the_server_and_its_connections() {
    let server = start().await;
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
async fn a_pull_from_a_closed_port_or_a_silent_holder_fails_without_hanging() {
    let (listener, port) = bind(LOCALHOST).await.unwrap();
    drop(listener);
    let to = SocketAddr::from((LOCALHOST, port));
    let result = tokio::time::timeout(WAIT, pull(to, b"chunk"))
        .await
        .expect("no hang");
    assert!(result.is_err());
    // Accepts, never answers.
    let (listener, port) = bind(LOCALHOST).await.unwrap();
    let to = SocketAddr::from((LOCALHOST, port));
    let holder = tokio::spawn(async move { listener.accept().await });
    let e = pull_with(to, b"chunk", SHORT).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    holder.abort();
}

#[tokio::test]
async fn pull_refuses_an_empty_or_oversize_request_before_connecting() {
    let (listener, port) = bind(LOCALHOST).await.unwrap();
    let to = SocketAddr::from((LOCALHOST, port));
    for len in [0, MAX_REQUEST + 1] {
        let err = pull(to, &vec![0; len]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
    let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
    assert!(accepted.is_err());
}

#[test]
fn try_start_gives_max_outbound_permits_then_none() {
    let pulls = Pulls::new();
    let shared = pulls.clone();
    let permits: Vec<_> = (0..MAX_OUTBOUND)
        .map(|_| shared.try_start().expect("a permit"))
        .collect();
    assert!(pulls.try_start().is_none());
    drop(permits);
    assert!(pulls.try_start().is_some());
}

#[tokio::test]
async fn many_pulls_to_one_holder_use_no_more_connections_than_it_serves_from_one_address() {
    let server = start().await;
    let pulls = Pulls::new();
    let asks: Vec<_> = (0..4 * MAX_OUTBOUND)
        .map(|i| {
            let (pulls, to) = (pulls.clone(), server.addr);
            tokio::spawn(async move { pulls.pull(to, format!("{i}").as_bytes()).await })
        })
        .collect();
    for ask in asks {
        ask.await
            .unwrap()
            .expect("every pull answered, none refused");
    }
    assert_eq!(server.refused.load(Ordering::Relaxed), 0);
    let mut addresses: Vec<SocketAddr> = (server.asked.lock().unwrap().iter())
        .map(|(_, a)| *a)
        .collect();
    addresses.sort();
    addresses.dedup();
    assert!(
        addresses.len() <= MAX_PER_HOLDER,
        "{} connections",
        addresses.len()
    );
}

#[tokio::test]
async fn pulls_reuse_a_connection_and_survive_one_the_holder_closed() {
    let server = start().await;
    let pulls = Pulls::new();
    for word in [&b"one"[..], b"two", b"three"] {
        let answer = pulls.pull(server.addr, word).await.unwrap();
        assert!(answer.iter().rev().eq(word.iter()));
    }
    let addresses: Vec<SocketAddr> = server
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|(_, a)| *a)
        .collect();
    assert!(
        addresses.iter().all(|a| *a == addresses[0]),
        "one connection: {addresses:?}"
    );
    // The holder cuts the idle connection at its timeout: the next pull connects again.
    tokio::time::sleep(SHORT + Duration::from_millis(100)).await;
    assert_eq!(pulls.pull(server.addr, b"four").await.unwrap(), b"ruof");
    assert_eq!(server.asked(), 4);
    // No answer: an error, and the connection is not kept.
    assert!(pulls.pull(server.addr, b"none").await.is_err());
    assert!(pulls.take_idle(server.addr).is_none());
}

#[test]
fn max_frame_holds_a_header_an_auth_line_and_a_chunk() {
    assert_eq!(MAX_FRAME, 4096 + 256 + 64_000);
    assert_eq!(MAX_REQUEST, 4096 + 256);
    assert!(u32::try_from(MAX_FRAME).is_ok());
}
