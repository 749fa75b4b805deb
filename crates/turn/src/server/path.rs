//! One allocation's data path: what relaying a datagram needs (its permissions, channels and their lifetimes,
//! its bandwidth budget, the way to its relay socket and back to its client) behind a lock of its own.
//!
//! The [`super::Server`] owns the allocation table and every decision that changes it; the data path is shared
//! with the IO edge so that relaying a ChannelData datagram or a peer's datagram takes this allocation's lock
//! and no other: listeners and relay sockets never wait on each other, nor on Allocate or Refresh requests of
//! other members. Only the two directions of one allocation share a lock, and only for the few instructions
//! of a lookup and a budget check.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::allocation::{Channel, TokenBucket};
use super::encode::data_indication;
use super::{AllocationId, MAX_RELAYED, Stats};

/// What the edge does with a ChannelData message a client sent, from [`DataPath::from_client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromClient {
    /// Send `input[payload]` from the allocation's relay socket to `peer`.
    ToPeer {
        /// Where to.
        peer: SocketAddr,
        /// The bytes to relay, within the input.
        payload: Range<usize>,
    },
    /// Dropped (unknown or expired channel, over budget); counted.
    Drop,
    /// Not for the data path: hand the whole input to [`super::Server::handle_client`] (malformed, a channel
    /// to another allocation of this server, or the allocation has ended). Nothing was counted or spent.
    Server,
}

/// What the edge does with a datagram a peer sent, from [`DataPath::from_peer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromPeer {
    /// The ChannelData message or Data indication for the client was appended to the output.
    Relay,
    /// Dropped (no permission, over budget, too large, allocation expired); counted.
    Drop,
    /// The allocation ended: close the relay socket.
    Gone,
}

/// Why the data path dropped a datagram: a fixed set, counted without a map on the hot path.
#[derive(Debug, Clone, Copy)]
enum Dropped {
    NoPermission,
    Bandwidth,
    TooLarge,
    UnknownChannel,
}

impl Dropped {
    const ALL: [Self; 4] = [Self::NoPermission, Self::Bandwidth, Self::TooLarge, Self::UnknownChannel];

    const fn as_str(self) -> &'static str {
        match self {
            Self::NoPermission => "no_permission",
            Self::Bandwidth => "bandwidth",
            Self::TooLarge => "too_large",
            Self::UnknownChannel => "unknown_channel",
        }
    }
}

/// What one data path relayed and dropped; added to the server's [`Stats`] when read and when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    to_peer: (u64, u64),
    to_client: (u64, u64),
    dropped: [u64; Dropped::ALL.len()],
}

impl Counters {
    fn drop(&mut self, why: Dropped) {
        if let Some(count) = self.dropped.get_mut(why as usize) {
            *count += 1;
        }
    }

    pub(super) fn add_into(&self, total: &mut Self) {
        total.to_peer.0 += self.to_peer.0;
        total.to_peer.1 += self.to_peer.1;
        total.to_client.0 += self.to_client.0;
        total.to_client.1 += self.to_client.1;
        for (sum, count) in total.dropped.iter_mut().zip(self.dropped) {
            *sum += count;
        }
    }

    pub(super) fn add_to(&self, stats: &mut Stats) {
        stats.to_peer.0 += self.to_peer.0;
        stats.to_peer.1 += self.to_peer.1;
        stats.to_client.0 += self.to_client.0;
        stats.to_client.1 += self.to_client.1;
        for (why, count) in Dropped::ALL.iter().zip(self.dropped) {
            if count > 0 {
                *stats.dropped.entry(why.as_str()).or_default() += count;
            }
        }
    }
}

/// The mutable part of a data path.
pub(super) struct PathState {
    pub(super) expires: Instant,
    /// The allocation left the server's table; the edge forgets the path.
    pub(super) freed: bool,
    pub(super) permissions: HashMap<IpAddr, Instant>,
    pub(super) channels: HashMap<u16, Channel>,
    pub(super) channel_of_peer: HashMap<SocketAddr, u16>,
    pub(super) bucket: TokenBucket,
    pub(super) counters: Counters,
    indication_id: u128,
}

impl PathState {
    pub(super) fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|until| *until > now)
    }

    pub(super) fn channel(&self, number: u16, now: Instant) -> Option<&Channel> {
        self.channels.get(&number).filter(|c| c.expires > now)
    }

    /// Spends `bytes` of the budget for the client-to-peer direction, counting it either way.
    pub(super) fn spend_to_peer(&mut self, bytes: usize, now: Instant) -> bool {
        if !self.bucket.take(bytes, now) {
            self.counters.drop(Dropped::Bandwidth);
            return false;
        }
        self.counters.to_peer.0 += 1;
        self.counters.to_peer.1 += bytes as u64;
        true
    }

    pub(super) fn count_no_permission(&mut self) {
        self.counters.drop(Dropped::NoPermission);
    }

    fn next_indication_id(&mut self) -> [u8; 12] {
        self.indication_id = self.indication_id.wrapping_add(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        let bytes = self.indication_id.to_be_bytes();
        let mut id = [0; 12];
        id.copy_from_slice(&bytes[4..]);
        id
    }
}

/// One allocation's data path, shared by the [`super::Server`] and the IO edge.
pub struct DataPath<R, C> {
    id: AllocationId,
    relay: R,
    client: C,
    relayed: SocketAddr,
    stream: bool,
    state: Mutex<PathState>,
}

impl<R, C> fmt::Debug for DataPath<R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPath").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A ChannelData message's channel number and the range of its payload, if the header and length hold.
pub(super) fn channel_data(input: &[u8]) -> Option<(u16, Range<usize>)> {
    let &[hi, lo, len_hi, len_lo] = input.first_chunk::<4>()?;
    if hi >> 6 != 0b01 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    (input.len() >= 4 + len).then(|| (u16::from_be_bytes([hi, lo]), 4..4 + len))
}

impl<R, C> DataPath<R, C> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: AllocationId,
        relay: R,
        client: C,
        relayed: SocketAddr,
        stream: bool,
        expires: Instant,
        bucket: TokenBucket,
        indication_seed: u128,
    ) -> Self {
        Self {
            id,
            relay,
            client,
            relayed,
            stream,
            state: Mutex::new(PathState {
                expires,
                freed: false,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_of_peer: HashMap::new(),
                bucket,
                counters: Counters::default(),
                indication_id: indication_seed,
            }),
        }
    }

    /// The allocation this path belongs to.
    pub fn id(&self) -> AllocationId {
        self.id
    }

    /// The allocation's relay socket.
    pub fn relay(&self) -> &R {
        &self.relay
    }

    /// The way back to the allocation's client.
    pub fn client(&self) -> &C {
        &self.client
    }

    /// The relayed address clients and peers know.
    pub fn relayed(&self) -> SocketAddr {
        self.relayed
    }

    /// Whether the allocation has ended; an edge keeping the path drops it and asks the server again.
    pub fn is_freed(&self) -> bool {
        self.state().freed
    }

    pub(super) fn state(&self) -> MutexGuard<'_, PathState> {
        // Nothing panics while holding it; were it to, the state is still consistent enough to relay.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ChannelData message (a UDP datagram or one stream frame) the allocation's client sent.
    pub fn from_client(&self, now: Instant, input: &[u8]) -> FromClient {
        let Some((number, payload)) = channel_data(input) else { return FromClient::Server };
        let mut state = self.state();
        if state.freed {
            return FromClient::Server;
        }
        let Some(channel) = state.channel(number, now) else {
            state.counters.drop(Dropped::UnknownChannel);
            return FromClient::Drop;
        };
        if channel.local {
            return FromClient::Server;
        }
        let peer = channel.peer;
        if !state.spend_to_peer(payload.len(), now) {
            return FromClient::Drop;
        }
        FromClient::ToPeer { peer, payload }
    }

    /// A datagram `peer` sent to the relay socket: appends the ChannelData message (padded on streams) or Data
    /// indication for the client to `out`, which it does not clear.
    pub fn from_peer(&self, now: Instant, peer: SocketAddr, payload: &[u8], out: &mut Vec<u8>) -> FromPeer {
        let mut state = self.state();
        if state.freed {
            return FromPeer::Gone;
        }
        if state.expires <= now {
            return FromPeer::Drop;
        }
        if !state.permitted(peer.ip(), now) {
            state.counters.drop(Dropped::NoPermission);
            return FromPeer::Drop;
        }
        if !state.bucket.take(payload.len(), now) {
            state.counters.drop(Dropped::Bandwidth);
            return FromPeer::Drop;
        }
        // The largest UDP payload still fits a Data indication with an IPv6 XOR-PEER-ADDRESS in 65535 bytes.
        let Some(len) = u16::try_from(payload.len()).ok().filter(|len| *len <= MAX_RELAYED) else {
            state.counters.drop(Dropped::TooLarge);
            return FromPeer::Drop;
        };
        let channel = state.channel_of_peer.get(&peer).copied().filter(|n| state.channel(*n, now).is_some());
        match channel {
            Some(number) => {
                let start = out.len();
                out.reserve(4 + payload.len() + 3);
                out.extend_from_slice(&number.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(payload);
                if self.stream {
                    out.resize(start + (out.len() - start).next_multiple_of(4), 0);
                }
            }
            None => {
                let id = state.next_indication_id();
                data_indication(peer, payload, id, out);
            }
        }
        state.counters.to_client.0 += 1;
        state.counters.to_client.1 += payload.len() as u64;
        FromPeer::Relay
    }
}
