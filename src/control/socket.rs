//! Both ends of the control socket's transport: the caller's `call` (one request line with its
//! descriptors, then the replies read back) and the daemon's `read_request` (the line and the
//! descriptors sent with it, counted and bounded as they arrive).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;

use serde::de::DeserializeOwned;

use super::{Answer, Nothing, ProgressEvent, Reply, Request, MAX_FDS, MAX_REQUEST_LINE};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the peerstash daemon at {}: {source} (is peerstashd running? is this the right --config/--socket?)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a socket: is this the right --config/--socket? (peer.control_socket names the daemon's)", .0.display())]
    NotASocket(PathBuf),
    #[error("permission denied on {0}: run as root or as a member of group peerstash (adduser $USER peerstash)")]
    Denied(PathBuf),
    #[error(
        "the daemon closed the connection before answering (see its log: journalctl -u peerstash)"
    )]
    Closed,
    #[error("connection to the daemon failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent a reply this peerstash does not understand: {0}")]
    BadReply(String),
    /// A local file operation of the caller's side (opening what to back up, placing a restore).
    #[error("{0}")]
    Local(String),
}

/// A final reply as the caller reads it: exit code, message, and the payload of the request
/// sent (`D`: its own type; `Answer` when read with `ask`).
pub type Outcome<D = Answer> = (i32, String, Option<D>);

/// Sends one request, with `fds` attached to its first byte, and feeds every progress line to
/// `on_progress` (amounts alone are dropped); returns the final reply, its payload read as `D`.
pub async fn call<D: DeserializeOwned>(
    socket: &Path,
    request: &Request,
    fds: &[BorrowedFd<'_>],
    mut on_progress: impl FnMut(&str),
) -> Result<Outcome<D>, ClientError> {
    call_events(socket, request, fds, |e| {
        if !e.message.is_empty() {
            on_progress(&e.message)
        }
    })
    .await
}

/// `call`, feeding every progress reply, amounts included, to `on_event`.
pub async fn call_events<D: DeserializeOwned>(
    socket: &Path,
    request: &Request,
    fds: &[BorrowedFd<'_>],
    mut on_event: impl FnMut(&ProgressEvent),
) -> Result<Outcome<D>, ClientError> {
    let stream = UnixStream::connect(socket).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::Denied(socket.to_path_buf())
        } else if std::fs::metadata(socket).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            !m.file_type().is_socket()
        }) {
            ClientError::NotASocket(socket.to_path_buf())
        } else {
            ClientError::Connect {
                path: socket.to_path_buf(),
                source,
            }
        }
    })?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push('\n');
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let (read, mut write) = stream.into_split();
    let written = match send_with_fds(write.as_ref(), line.as_bytes(), &raw).await {
        Ok(sent) => write.write_all(&line.as_bytes()[sent..]).await,
        Err(e) => Err(e),
    };
    // A daemon that refuses a connection at once (too many from this user) says why and
    // closes before reading: the write then fails, but its one line is there to read.
    let refused = match written {
        Ok(()) => None,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Some(e)
        }
        Err(e) => return Err(e.into()),
    };
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = match lines.next_line().await {
        Ok(line) => line,
        Err(e) => return Err(refused.unwrap_or(e).into()),
    } {
        match serde_json::from_str::<Reply<D>>(&line) {
            Ok(Reply::Progress { message, amount }) => on_event(&ProgressEvent { message, amount }),
            Ok(Reply::Done {
                code,
                message,
                data,
            }) => return Ok((code, message, data)),
            Err(e) => return Err(ClientError::BadReply(format!("{e}: {line}"))),
        }
    }
    Err(refused.map_or(ClientError::Closed, ClientError::from))
}

/// `call_events` for any request, its payload read as the type of that request and given back
/// as an `Answer`.
pub async fn ask(
    socket: &Path,
    request: &Request,
    fds: &[BorrowedFd<'_>],
    mut on_event: impl FnMut(&ProgressEvent),
) -> Result<Outcome, ClientError> {
    /// The request's own payload type `D`, wrapped by `answer`.
    async fn typed<D: DeserializeOwned>(
        socket: &Path,
        request: &Request,
        fds: &[BorrowedFd<'_>],
        on_event: impl FnMut(&ProgressEvent),
        answer: fn(D) -> Answer,
    ) -> Result<Outcome, ClientError> {
        let (code, message, data) = call_events(socket, request, fds, on_event).await?;
        Ok((code, message, data.map(answer)))
    }
    let on_event = |e: &ProgressEvent| on_event(e);
    match request {
        Request::State { .. } => typed(socket, request, fds, on_event, Answer::State).await,
        Request::Status => typed(socket, request, fds, on_event, Answer::Status).await,
        Request::Peers => typed(socket, request, fds, on_event, Answer::Peers).await,
        Request::Versions { .. } => typed(socket, request, fds, on_event, Answer::Versions).await,
        Request::Folders { .. } => typed(socket, request, fds, on_event, Answer::Folders).await,
        Request::Watched => typed(socket, request, fds, on_event, Answer::Watched).await,
        Request::Restore { .. } => typed(socket, request, fds, on_event, Answer::Restore).await,
        Request::Recover { .. } => typed(socket, request, fds, on_event, Answer::Recovered).await,
        Request::Backup { .. }
        | Request::Delete { .. }
        | Request::Reclaim { .. }
        | Request::HistoryResume { .. }
        | Request::Check
        | Request::Scrub
        | Request::Snapshot
        | Request::RestoredAll => typed(socket, request, fds, on_event, Nothing::answer).await,
    }
}

/// Sends the first bytes of `bytes` with `fds` attached; returns how many bytes went.
async fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(bytes)];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Reads one request line (up to MAX_REQUEST_LINE bytes and its newline) and the descriptors
/// sent with it. Descriptors are counted as they arrive, at every `recvmsg`: once there are more
/// than MAX_FDS, all of them are closed at once and the request is an error, so a caller that
/// sends a line a byte at a time, each byte with descriptors, is refused at its first byte.
/// The caller bounds the time it waits for the newline.
pub async fn read_request(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 8192];
    while !line.contains(&b'\n') && line.len() <= MAX_REQUEST_LINE {
        stream.readable().await?;
        let got = stream.try_io(Interest::READABLE, || {
            recv_with_fds(stream.as_raw_fd(), &mut buf)
        });
        let (n, received, cut) = match got {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => r?,
        };
        fds.extend(received);
        if cut || fds.len() > MAX_FDS {
            // Dropping them closes them now, before anything else is read.
            drop(fds);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("more than {MAX_FDS} descriptor sent with one request: the connection is closed"),
            ));
        }
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
    }
    if let Some(end) = line.iter().position(|b| *b == b'\n') {
        line.truncate(end + 1);
    }
    Ok((line, fds))
}

/// One `recvmsg` into `buf`: the bytes read, the descriptors received (owned: closed when
/// dropped), and whether the kernel had more descriptors than room for them. The room is for
/// MAX_FDS + 1: the kernel installs only what fits and discards the rest without installing
/// them, so one call never gives this process more than that. (nix's `recvmsg` hands back no
/// descriptor of a message that did not fit, though the kernel installed some: they could not
/// be closed.)
fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>, bool)> {
    use nix::libc;
    const ROOM: u32 = (MAX_FDS + 1) as u32 * std::mem::size_of::<RawFd>() as u32;
    // u64 words: aligned for a cmsghdr; 64 bytes hold CMSG_SPACE(ROOM) (24 on Linux).
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a length.
    let space = unsafe { libc::CMSG_SPACE(ROOM) } as usize;
    let space = space.min(std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at iov (over buf) and control, both alive for the call and at least as
    // long as the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel wrote msg_controllen bytes of control messages into control; the
    // CMSG_* macros walk only within them. Each SCM_RIGHTS entry is a descriptor just
    // installed in this process and owned by nothing else: OwnedFd takes it at once.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, fds, msg.msg_flags & libc::MSG_CTRUNC != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_too_many_descriptors_gives_us_at_most_two() {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let send = |n: usize| {
            let fds = vec![null.as_raw_fd(); n];
            let rights = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                a.as_raw_fd(),
                &[IoSlice::new(b"{")],
                &rights,
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        };
        let mut buf = [0u8; 16];
        send(1);
        let (n, fds, cut) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((n, fds.len(), cut), (1, 1, false));
        // SCM_MAX_FD of them: the kernel installs two here and discards the rest.
        send(253);
        let (n, fds, cut) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((n, fds.len(), cut), (1, MAX_FDS + 1, true));
        // What was received is a real descriptor, and ours to close.
        assert!(fds
            .iter()
            .all(|f| nix::sys::stat::fstat(f.as_raw_fd()).is_ok()));
    }
}
