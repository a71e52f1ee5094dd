//! Multicast transport: one UDP socket per channel (MC, MDB, MDR), joined on the configured
//! interface, with the configured TTL, loopback on and large receive buffers (unless the config
//! keeps the kernel's default). Knows datagrams, not messages: parsing happens above.

pub mod faults;
pub mod rcvbuf;
pub mod suggest_id;
pub mod tcp;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::protocol::message::Channel;

/// What we ask the kernel for: room for ~130 datagrams of 64 KB, so a burst of a backup window
/// is not dropped while the daemon is busy.
pub const WANTED_RCVBUF: usize = 8 * 1024 * 1024;
/// Largest UDP payload; a read buffer this size never truncates a datagram.
pub const MAX_DATAGRAM: usize = 65_535;

/// The three channels' sockets, shared by the receive loops and every sender.
#[derive(Clone)]
pub struct Channels {
    mc: Arc<ChannelSocket>,
    mdb: Arc<ChannelSocket>,
    mdr: Arc<ChannelSocket>,
    /// Injected faults (PEERSTASH_FAULTS), for tests.
    pub faults: Option<Arc<faults::Faults>>,
}

pub struct ChannelSocket {
    pub channel: Channel,
    pub group: SocketAddrV4,
    pub socket: UdpSocket,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open the {channel:?} channel on {group} via interface {interface}: {source} (check network.interface and the group addresses in the config)")]
    Open {
        channel: Channel,
        group: SocketAddrV4,
        interface: Ipv4Addr,
        source: io::Error,
    },
    #[error("{0}")]
    Faults(String),
}

impl Channels {
    /// Opens and joins the three channels. Must be called inside a tokio runtime.
    /// `raise_receive_buffers` false: the sockets keep the kernel's default receive buffer.
    pub fn open(
        interface: Ipv4Addr,
        ttl: u32,
        mc: SocketAddrV4,
        mdb: SocketAddrV4,
        mdr: SocketAddrV4,
        raise_receive_buffers: bool,
    ) -> Result<Channels, NetError> {
        let faults = faults::Faults::from_env().map_err(NetError::Faults)?;
        let rcvbuf_max = faults.as_ref().and_then(|f| f.rcvbuf_max());
        let open = |channel, group| {
            open_channel(
                channel,
                group,
                interface,
                ttl,
                raise_receive_buffers,
                rcvbuf_max,
            )
            .map_err(|source| NetError::Open {
                channel,
                group,
                interface,
                source,
            })
        };
        let (mc, mc_buf) = open(Channel::Mc, mc)?;
        let (mdb, mdb_buf) = open(Channel::Mdb, mdb)?;
        let (mdr, mdr_buf) = open(Channel::Mdr, mdr)?;
        // One warning per start for the three sockets (they share one limit), with advice that
        // can be followed where the daemon runs.
        if raise_receive_buffers {
            let granted = mc_buf.min(mdb_buf).min(mdr_buf);
            if granted < WANTED_RCVBUF {
                let container = rcvbuf::detect_container();
                if let Some(warning) = rcvbuf::shortfall_warning(granted, container.as_deref()) {
                    tracing::warn!("{warning}");
                }
            }
        }
        Ok(Channels {
            mc: Arc::new(mc),
            mdb: Arc::new(mdb),
            mdr: Arc::new(mdr),
            faults: faults.map(Arc::new),
        })
    }

    pub fn get(&self, channel: Channel) -> &Arc<ChannelSocket> {
        match channel {
            Channel::Mc => &self.mc,
            Channel::Mdb => &self.mdb,
            Channel::Mdr => &self.mdr,
        }
    }

    pub fn all(&self) -> [&Arc<ChannelSocket>; 3] {
        [&self.mc, &self.mdb, &self.mdr]
    }

    /// Sends one datagram to a channel's group.
    pub async fn send(&self, channel: Channel, datagram: &[u8]) -> io::Result<()> {
        let ch = self.get(channel);
        ch.socket
            .send_to(datagram, SocketAddr::V4(ch.group))
            .await?;
        Ok(())
    }
}

fn open_channel(
    channel: Channel,
    group: SocketAddrV4,
    interface: Ipv4Addr,
    ttl: u32,
    raise_receive_buffer: bool,
    rcvbuf_max: Option<usize>,
) -> io::Result<(ChannelSocket, usize)> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Several peers on one machine share each channel's port.
    socket.set_reuse_address(true)?;
    // Binding the group address (not 0.0.0.0) keeps other groups' traffic on the same port out;
    // IP_MULTICAST_ALL off does the same for any group this socket did not join.
    socket.bind(&SocketAddr::V4(group).into())?;
    socket.set_multicast_all_v4(false)?;
    socket.join_multicast_v4(group.ip(), &interface)?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_ttl_v4(ttl)?;
    socket.set_multicast_loop_v4(true)?;
    let granted = if raise_receive_buffer {
        rcvbuf::grow(&socket, rcvbuf_max)
    } else {
        let size = socket.recv_buffer_size().unwrap_or(0) / 2;
        tracing::debug!("the {channel:?} receive buffer stays the kernel's default: {size} bytes");
        size
    };
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket.into())?;
    Ok((
        ChannelSocket {
            channel,
            group,
            socket,
        },
        granted,
    ))
}
