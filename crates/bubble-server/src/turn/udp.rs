//! Batched datagram IO for the relay: a UDP socket read many datagrams per system call (`recvmmsg`, and GRO
//! where a sender segments), and written many per call (GSO: datagrams to one destination leave as one
//! segmented send), through quinn-udp. What a batch gathers keeps each flow's order.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Largest datagram received or relayed.
pub(super) const DATAGRAM: usize = 65_536;
/// Datagrams read per system call.
pub(super) const BATCH: usize = quinn_udp::BATCH_SIZE;
/// Most bytes one segmented send carries: a UDP payload is at most 65 507 bytes over IPv4.
const MAX_SEGMENTED: usize = 65_000;
/// A group's buffer keeps at most this much capacity between batches.
const KEPT_CAPACITY: usize = 16 << 10;

/// A UDP socket with quinn-udp's per-socket state.
#[derive(Debug)]
pub(super) struct Udp {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl Udp {
    pub(super) fn new(socket: UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&socket).into())?;
        // quinn-udp sets don't-fragment, as QUIC sizes its own datagrams. A relay does not choose the sizes it
        // relays, and RFC 8656 §14.8 has it leave DF unset unless asked: back to the kernel's default, where
        // what is larger than the path's MTU is fragmented as it was before this socket was batched.
        #[cfg(target_os = "linux")]
        {
            use rustix::net::sockopt;
            if socket.local_addr()?.is_ipv6() {
                sockopt::set_ipv6_mtu_discover(&socket, sockopt::Ipv6PathMtuDiscovery::WANT)?;
                if !sockopt::ipv6_v6only(&socket)? {
                    sockopt::set_ip_mtu_discover(&socket, sockopt::Ipv4PathMtuDiscovery::WANT)?;
                }
            } else {
                sockopt::set_ip_mtu_discover(&socket, sockopt::Ipv4PathMtuDiscovery::WANT)?;
            }
        }
        Ok(Self { socket, state })
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub(super) async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Reads the datagrams that are there, without waiting: how many `meta` describes (a `WouldBlock` error
    /// when there are none).
    pub(super) fn try_recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        self.socket.try_io(Interest::READABLE, || self.state.recv((&self.socket).into(), bufs, meta))
    }

    /// Sends `contents` to `to` without waiting, as datagrams of `segment` bytes (the last may be shorter)
    /// when `segment` is given. A full socket buffer drops them, as the network would; a system that refuses
    /// segmented sends gets them one by one (and no more segmented sends).
    fn try_send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let transmit = Transmit { destination: to, ecn: None, contents, segment_size: segment, src_ip: None };
        let sent = self.socket.try_io(Interest::WRITABLE, || self.state.try_send((&self.socket).into(), &transmit));
        if let (Err(error), Some(segment)) = (sent, segment)
            && error.kind() != io::ErrorKind::WouldBlock
        {
            for datagram in contents.chunks(segment) {
                self.try_send(to, datagram, None);
            }
        }
    }

    /// Segments one send may carry.
    fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }
}

/// Receive buffers and their descriptions for one batch.
pub(super) struct RecvBuffers {
    bytes: Pages,
    /// Datagrams read per call, at most [`BATCH`].
    count: usize,
    meta: [RecvMeta; BATCH],
}

impl std::fmt::Debug for RecvBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuffers").finish_non_exhaustive()
    }
}

impl RecvBuffers {
    /// Buffers for `count` datagrams of the largest size (at most [`BATCH`]).
    pub(super) fn new(count: usize) -> Self {
        let count = count.clamp(1, BATCH);
        Self { bytes: Pages::new(count * DATAGRAM), count, meta: [RecvMeta::default(); BATCH] }
    }

    /// Reads a batch from `udp` and calls `each` with every datagram (a GRO-coalesced buffer is cut back into
    /// its datagrams) and its sender. `Ok(false)` when nothing was there.
    pub(super) fn recv(&mut self, udp: &Udp, mut each: impl FnMut(SocketAddr, &[u8])) -> io::Result<bool> {
        let mut chunks = self.bytes.as_mut().chunks_mut(DATAGRAM);
        let mut slices: [IoSliceMut<'_>; BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        let slices = slices.get_mut(..self.count).unwrap_or_default();
        let count = match udp.try_recv(slices, &mut self.meta) {
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(error) => return Err(error),
        };
        for (meta, slice) in self.meta.iter().zip(slices.iter()).take(count) {
            let data = slice.get(..meta.len).unwrap_or_default();
            for datagram in data.chunks(meta.stride.max(1)) {
                each(meta.addr, datagram);
            }
        }
        Ok(true)
    }
}

/// Memory for receive buffers, mapped anonymously: pages become resident only where the kernel writes a
/// datagram, so 32 buffers of 64 KiB cost a page each while datagrams are small (a zeroed heap allocation may be
/// written whole by the allocator). On a system that refuses the mapping, the heap.
enum Pages {
    Mapped(memmap2::MmapMut),
    Heap(Vec<u8>),
}

impl Pages {
    fn new(len: usize) -> Self {
        memmap2::MmapMut::map_anon(len).map_or_else(|_| Self::Heap(vec![0; len]), Self::Mapped)
    }

    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Heap(bytes) => bytes,
        }
    }
}

/// Where a datagram or frame goes.
#[derive(Debug, Clone)]
pub(super) enum Via {
    /// From a UDP socket to an address.
    Udp(Arc<Udp>, SocketAddr),
    /// Into a TCP/TLS connection's write queue.
    Stream(mpsc::Sender<Vec<u8>>),
}

#[derive(Debug)]
struct Group {
    /// The socket and destination; `None` once sent: a slot keeps no socket open.
    to: Option<(Arc<Udp>, SocketAddr)>,
    /// Size of each datagram but the last.
    segment: usize,
    count: usize,
    /// A shorter datagram ended the group: nothing more fits after it.
    closed: bool,
    bytes: Vec<u8>,
}

/// Datagrams gathered while a batch is handled, sent by [`Batch::flush`]: per destination, equal-sized
/// datagrams in one segmented send. A destination's datagrams keep their order.
#[derive(Debug, Default)]
pub(super) struct Batch {
    groups: Vec<Group>,
    used: usize,
}

impl Batch {
    /// Queues `data` for `via`. A frame for a stream goes to its connection's queue at once, one write each:
    /// coturn's own TLS client reads one frame per TLS record (frames coalesced into one write were lost).
    pub(super) fn push(&mut self, via: &Via, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let (udp, to) = match via {
            Via::Udp(udp, to) => (udp, *to),
            Via::Stream(tx) => {
                let _ = tx.try_send(data.to_vec());
                return;
            }
        };
        let room = udp.max_segments().min(MAX_SEGMENTED / data.len()).max(1);
        let same = |group: &&mut Group| group.to.as_ref().is_some_and(|(u, t)| Arc::ptr_eq(u, udp) && *t == to);
        // Only the destination's last group may take more: an earlier one would overtake what follows it.
        if let Some(group) = self.groups.get_mut(..self.used).and_then(|g| g.iter_mut().rev().find(same))
            && !group.closed
            && group.count < room
            && data.len() <= group.segment
            && group.bytes.len() + data.len() <= MAX_SEGMENTED
        {
            group.bytes.extend_from_slice(data);
            group.count += 1;
            group.closed = data.len() < group.segment;
            return;
        }
        if let Some(group) = self.groups.get_mut(self.used) {
            group.to = Some((udp.clone(), to));
            group.segment = data.len();
            group.count = 1;
            group.closed = false;
            group.bytes.clear();
            group.bytes.extend_from_slice(data);
        } else {
            let group = Group {
                to: Some((udp.clone(), to)),
                segment: data.len(),
                count: 1,
                closed: false,
                bytes: data.to_vec(),
            };
            self.groups.push(group);
        }
        self.used += 1;
    }

    /// Sends every group without waiting.
    pub(super) fn flush(&mut self) {
        for group in self.groups.iter_mut().take(self.used) {
            if let Some((udp, to)) = group.to.take() {
                let segment = (group.count > 1).then_some(group.segment);
                udp.try_send(to, &group.bytes, segment);
                group.bytes.clear();
                group.bytes.shrink_to(KEPT_CAPACITY);
            }
        }
        self.used = 0;
        self.groups.truncate(BATCH);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;

    /// A socket the runtime already knows to be writable (sends are tries: a socket whose readiness the
    /// reactor has not seen yet drops them, as the server's do until their first event).
    async fn udp() -> Arc<Udp> {
        let udp = Udp::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        udp.socket.writable().await.unwrap();
        Arc::new(udp)
    }

    fn receiver() -> std::net::UdpSocket {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        socket
    }

    fn datagrams(socket: &std::net::UdpSocket, count: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; DATAGRAM];
        let mut got = Vec::new();
        for _ in 0..count {
            match socket.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(e) => panic!("{e}: got {:?}", got.iter().map(|d| (d[0], d.len())).collect::<Vec<_>>()),
            }
        }
        got
    }

    /// Datagram `i` of a flow: its number in the first byte, `len` bytes.
    fn numbered(i: u8, len: usize) -> Vec<u8> {
        let mut data = vec![i; len];
        data[0] = i;
        data
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn relay_sockets_let_the_kernel_fragment_as_before() {
        use rustix::net::sockopt;
        let v4 = udp().await;
        assert_eq!(sockopt::ip_mtu_discover(&v4.socket).unwrap(), sockopt::Ipv4PathMtuDiscovery::WANT);
        if let Ok(socket) = UdpSocket::bind("[::1]:0").await {
            let v6 = Udp::new(socket).unwrap();
            assert_eq!(sockopt::ipv6_mtu_discover(&v6.socket).unwrap(), sockopt::Ipv6PathMtuDiscovery::WANT);
        }
    }

    #[tokio::test]
    async fn a_batch_keeps_each_destinations_datagrams_whole_and_in_order() {
        let from = udp().await;
        let (a, b) = (receiver(), receiver());
        let (to_a, to_b) = (Via::Udp(from.clone(), a.local_addr().unwrap()), Via::Udp(from, b.local_addr().unwrap()));
        // Equal sizes leave segmented; a shorter one ends a group; a longer one starts another; two
        // destinations interleave.
        let sizes_a = [1000, 1000, 1000, 400, 1000, 1200, 1200, 1, 1500];
        let sizes_b = [300, 300, 300, 300];
        let mut batch = Batch::default();
        for (i, &len) in sizes_a.iter().enumerate() {
            batch.push(&to_a, &numbered(i as u8, len));
            if let Some(&len) = sizes_b.get(i) {
                batch.push(&to_b, &numbered(100 + i as u8, len));
            }
        }
        assert!(batch.used < sizes_a.len() + sizes_b.len(), "datagrams were gathered: {} sends", batch.used);
        batch.flush();
        let got_a = datagrams(&a, sizes_a.len());
        let got_b = datagrams(&b, sizes_b.len());
        for (i, (got, len)) in got_a.iter().zip(sizes_a).enumerate() {
            assert_eq!(got, &numbered(i as u8, len), "datagram {i} to a");
        }
        for (i, (got, len)) in got_b.iter().zip(sizes_b).enumerate() {
            assert_eq!(got, &numbered(100 + i as u8, len), "datagram {i} to b");
        }
        // Nothing is held once sent.
        assert!(batch.groups.iter().all(|g| g.to.is_none()));
    }

    #[tokio::test]
    async fn many_datagrams_are_read_per_call_and_a_segmented_one_is_cut_back() {
        let socket = udp().await;
        let to = socket.local_addr().unwrap();
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..40u8 {
            plain.send_to(&numbered(i, 100 + usize::from(i)), to).unwrap();
        }
        // A sender segmenting its datagrams (as a QUIC stack does): with GRO they may arrive as one buffer.
        let segmenting = udp().await;
        let mut batch = Batch::default();
        let via = Via::Udp(segmenting.clone(), to);
        for i in 0..5u8 {
            batch.push(&via, &numbered(200 + i, 700));
        }
        batch.flush();

        let mut buffers = RecvBuffers::new(BATCH);
        let mut got: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let mut calls = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < 45 {
            assert!(tokio::time::Instant::now() < deadline, "{} of 45 datagrams arrived", got.len());
            let _ = tokio::time::timeout(Duration::from_millis(100), socket.readable()).await;
            if buffers.recv(&socket, |from, data| got.push((from, data.to_vec()))).unwrap() {
                calls += 1;
            }
        }
        assert!(calls < 45, "datagrams were read in batches ({calls} calls for 45)");
        let from_plain: Vec<&Vec<u8>> =
            got.iter().filter(|(from, _)| *from == plain.local_addr().unwrap()).map(|(_, d)| d).collect();
        let from_segmenting: Vec<&Vec<u8>> =
            got.iter().filter(|(from, _)| *from == segmenting.local_addr().unwrap()).map(|(_, d)| d).collect();
        assert_eq!(from_plain.len(), 40);
        for (i, data) in from_plain.iter().enumerate() {
            assert_eq!(**data, numbered(i as u8, 100 + i), "datagram {i}");
        }
        assert_eq!(from_segmenting.len(), 5);
        for (i, data) in from_segmenting.iter().enumerate() {
            assert_eq!(**data, numbered(200 + i as u8, 700), "segment {i}");
        }
    }
}
