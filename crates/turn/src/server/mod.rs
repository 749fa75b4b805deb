//! The sans-IO TURN server (RFC 8656 with the STUN Binding of RFC 8489): bytes and `now` in, what to send and
//! where out. Sockets live in the bubble-server; this module never opens one.
//!
//! Shape, after firezone's relay: [`Server::handle_client`] takes what a client sent on one of the listeners,
//! [`Server::handle_peer`] what a peer sent to a relay socket, [`Server::complete_allocation`] finishes an
//! Allocate once the IO edge has bound the relay socket, [`Server::handle_timeout`] expires allocations,
//! permissions and channels, and [`Server::poll_event`] tells the edge which relay sockets to close.
//!
//! The server is generic over two handles the edge chooses: `R`, a relay socket, and `C`, the way back to a
//! client (a UDP listener and address, or a TCP/TLS connection). It stores them with each allocation so that
//! relaying a packet is one lookup.
//!
//! What it enforces: long-term credentials in the TURN REST API form (checked by
//! [`crate::credentials::Verifier`]) with stateless, expiring nonces; the peer-address policy of
//! [`crate::peer`] on CreatePermission and ChannelBind (403) and on Send (dropped, as an indication has no
//! answer); relay-to-relay between this server's own allocations, which the policy would otherwise refuse
//! because relay addresses are internal; allocation quotas per member and in total; a bandwidth budget per
//! allocation; the lifetimes of RFC 8656 (allocations 10 min by default, at most 1 h; permissions 5 min;
//! channels 10 min). It relays bytes it never interprets: they are ciphertext (DTLS/SRTP).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use sha1::Sha1;
use stun_types::attribute::{
    AttributeStaticType as _, Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, Realm, UnknownAttributes,
    Userhash, Username, XorMappedAddress,
};
use stun_types::message::{
    BINDING, IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageType, MessageWrite, MessageWriteExt as _, MessageWriteVec, Method, TransactionId,
};
use turn_types::AddressFamily;
use turn_types::attribute::{
    AdditionalAddressFamily, ChannelNumber, Data, EvenPort, Lifetime, RequestedAddressFamily, RequestedTransport,
    ReservationToken, XorPeerAddress, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use zeroize::Zeroizing;

use crate::credentials::{CredentialError, Credentials, TurnSecret, Verifier, issue};
use crate::peer::{PeerPolicy, Refusal};

mod allocation;
mod encode;
mod path;
mod table;

use allocation::{Allocation, Channel, TokenBucket};
use encode::{add_error, add_software, icmp_prohibited, refusal_reason, unknown_attributes};
use path::{Counters, channel_data};
pub use path::{DataPath, FromClient, FromPeer};
use table::Allocations;

/// Channel numbers a client may bind: RFC 8656 §12 narrowed them to 0x4000-0x4FFF, but RFC 5766 clients
/// (coturn's own tools among them) still use up to 0x7FFE, and ChannelData framing tells both apart the same.
pub const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x7ffe;
/// How long a permission lasts (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// A channel number or peer stays reserved this long after its binding expired (RFC 8656 §12).
const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// IANA protocol number of UDP, the only relayed transport (RFC 8656 §14.7).
const UDP: u8 = 17;
/// Largest payload relayed: a Data indication around it stays below 65535 bytes.
const MAX_RELAYED: u16 = 65_000;

/// Settings of the relay. Defaults suit a small bubble.
#[derive(Debug, Clone)]
pub struct Config {
    /// The REALM clients put in their credentials.
    pub realm: String,
    /// Whether IPv4 and IPv6 relay addresses can be allocated (the edge bound relay sockets of that family).
    pub families: (bool, bool),
    /// Allocations at once, in total (508 Insufficient Capacity beyond).
    pub max_allocations: usize,
    /// Allocations at once per member (486 Allocation Quota Reached beyond).
    pub max_allocations_per_member: usize,
    /// Peers one allocation may hold permissions for (508 beyond).
    pub max_permissions: usize,
    /// Bytes per second one allocation may relay, both directions together; 0 for no limit. Excess is dropped,
    /// as a congested link would.
    pub bandwidth: u64,
    /// Allocation lifetime when the client asks for less or nothing.
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted.
    pub max_lifetime: Duration,
    /// How long a NONCE stays valid (438 Stale Nonce after).
    pub nonce_lifetime: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            realm: "peerbubble".to_owned(),
            families: (true, true),
            max_allocations: 1000,
            max_allocations_per_member: 10,
            max_permissions: 64,
            bandwidth: 5_000_000,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            nonce_lifetime: Duration::from_secs(600),
        }
    }
}

/// The transport a client reached a listener over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }
}

/// A client's 5-tuple: how an allocation is found (RFC 8656 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The transport.
    pub transport: Transport,
    /// The client's address as the server sees it.
    pub client: SocketAddr,
    /// The listener's address.
    pub server: SocketAddr,
}

/// An allocation's number, given by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(pub u64);

/// What the edge does with what a client sent.
#[derive(Debug)]
pub enum ClientAction<R, C> {
    /// Nothing to send (a response, an indication that was dropped, or garbage); counted in [`Stats`].
    None,
    /// Send `out` back to the client on the same 5-tuple.
    Reply,
    /// Bind a relay socket of this family, then call [`Server::complete_allocation`].
    Allocate(PendingAllocation<C>),
    /// Send `input[payload]` from this relay socket to `peer`.
    ToPeer {
        /// The allocation's relay socket.
        relay: R,
        /// Where to.
        peer: SocketAddr,
        /// The bytes to relay, within the input.
        payload: Range<usize>,
    },
    /// Relay-to-relay: the peer is another allocation of this server; send `out` to its client.
    ToClient(C),
}

/// What the edge does with what a peer sent to a relay socket.
#[derive(Debug)]
pub enum PeerAction<C> {
    /// Drop it (no permission, over budget); counted in [`Stats`].
    Drop,
    /// The allocation no longer exists: close the relay socket.
    Gone,
    /// Send `out` to this client.
    ToClient(C),
}

/// Something the edge must act on.
#[derive(Debug)]
pub enum Event<R> {
    /// An allocation ended (expired, deleted by Refresh, its member revoked, its connection closed): close
    /// its relay socket.
    Freed {
        /// Which.
        id: AllocationId,
        /// Its relay socket.
        relay: R,
    },
}

/// Why the edge could not bind a relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindFailure {
    /// No address of that family.
    FamilyUnsupported,
    /// No free port in the relay range.
    NoPort,
}

/// An Allocate that passed every check and waits for its relay socket.
pub struct PendingAllocation<C> {
    tuple: FiveTuple,
    family: AddressFamily,
    lifetime: Duration,
    transaction: TransactionId,
    auth: Authenticated,
    fingerprint: bool,
    client: C,
}

impl<C> PendingAllocation<C> {
    /// The family of relay address to bind.
    pub fn ipv6(&self) -> bool {
        self.family == AddressFamily::IPV6
    }
}

impl<C> fmt::Debug for PendingAllocation<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAllocation")
            .field("tuple", &self.tuple)
            .field("family", &self.family)
            .field("member", &self.auth.member)
            .finish_non_exhaustive()
    }
}

/// Counters the bubble-server exports as metrics. Labels are fixed, small sets.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Allocations created since start.
    pub allocations_created: u64,
    /// Packets and bytes relayed from clients to peers.
    pub to_peer: (u64, u64),
    /// Packets and bytes relayed from peers to clients.
    pub to_client: (u64, u64),
    /// Requests refused for their credentials, by reason.
    pub auth_failures: HashMap<&'static str, u64>,
    /// Peer addresses refused by the policy, by class.
    pub refused_peers: HashMap<&'static str, u64>,
    /// Packets dropped, by reason.
    pub dropped: HashMap<&'static str, u64>,
}

fn bump<K: Eq + std::hash::Hash>(map: &mut HashMap<K, u64>, key: K) {
    *map.entry(key).or_default() += 1;
}

#[derive(Clone)]
struct Authenticated {
    member: Arc<str>,
    username: String,
    password: Zeroizing<String>,
    algorithm: IntegrityAlgorithm,
}

impl Authenticated {
    fn credentials(&self, realm: &str) -> MessageIntegrityCredentials {
        LongTermKeyCredentials::new(self.username.clone(), self.password.to_string(), realm.to_owned()).into()
    }
}

/// The TURN server state machine.
pub struct Server<R, C> {
    config: Config,
    verifier: Verifier,
    policy: PeerPolicy,
    members: HashSet<String>,
    nonce_key: Zeroizing<[u8; 32]>,
    clock: (Instant, u64),
    indication_id: u128,
    allocations: Allocations<R, C>,
    events: VecDeque<Event<R>>,
    stats: Stats,
    /// What the data paths of ended allocations relayed and dropped.
    retired: Counters,
}

impl<R, C> fmt::Debug for Server<R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("realm", &self.config.realm)
            .field("allocations", &self.allocations.len())
            .finish_non_exhaustive()
    }
}

/// Why a request is refused: an error code, its reason phrase, and whether the answer carries a fresh nonce.
struct Refuse {
    code: u16,
    reason: &'static str,
    challenge: bool,
}

impl Refuse {
    const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason, challenge: false }
    }
    const fn challenge(code: u16, reason: &'static str) -> Self {
        Self { code, reason, challenge: true }
    }
}

impl<R: Clone, C: Clone> Server<R, C> {
    /// A server checking credentials with `verifier`, refusing peers per `policy`. `clock` pairs an [`Instant`]
    /// with the unix time in seconds at that instant (credential expiries are unix times); `nonce_key` signs
    /// nonces and should be random.
    pub fn new(
        config: Config,
        verifier: Verifier,
        policy: PeerPolicy,
        clock: (Instant, u64),
        nonce_key: [u8; 32],
    ) -> Self {
        Self {
            config,
            verifier,
            policy,
            members: HashSet::new(),
            nonce_key: Zeroizing::new(nonce_key),
            clock,
            indication_id: u128::from_be_bytes([nonce_key[0]; 16]),
            allocations: Allocations::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            retired: Counters::default(),
        }
    }

    /// The members whose credentials are accepted (the bubble's directory). Allocations of members who are no
    /// longer in it end at once.
    pub fn set_members(&mut self, members: impl IntoIterator<Item = String>) {
        self.members = members.into_iter().collect();
        let revoked: Vec<AllocationId> =
            self.allocations.iter().filter(|(_, a)| !self.members.contains(&*a.member)).map(|(id, _)| *id).collect();
        for id in revoked {
            self.free(id);
        }
    }

    /// Replaces the credential verifier.
    pub fn set_verifier(&mut self, verifier: Verifier) {
        self.verifier = verifier;
    }

    /// Rotates to `next` unless it is the current secret; credentials of the old one stay valid until
    /// `overlap_until` (unix seconds). Whether it rotated.
    pub fn rotate_secret(&mut self, next: TurnSecret, overlap_until: u64) -> bool {
        if *self.verifier.current() == next {
            return false;
        }
        self.verifier.rotate(next, overlap_until);
        true
    }

    /// Credentials for `member` from the current secret, valid for `ttl_secs` from `unix`.
    pub fn issue(&self, member: &str, unix: u64, ttl_secs: u64) -> Result<Credentials, CredentialError> {
        issue(self.verifier.current(), member, unix, ttl_secs)
    }

    /// Counters for metrics: the server's own, and what every data path relayed and dropped.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        self.retired.add_to(&mut stats);
        for allocation in self.allocations.values() {
            allocation.path.state().counters.add_to(&mut stats);
        }
        stats
    }

    /// The data path of allocation `id`, for an edge relaying its datagrams without the server.
    pub fn data_path(&self, id: AllocationId) -> Option<Arc<DataPath<R, C>>> {
        self.allocations.get(&id).map(|a| a.path.clone())
    }

    /// The data path of the allocation on `tuple`.
    pub fn data_path_of(&self, tuple: &FiveTuple) -> Option<Arc<DataPath<R, C>>> {
        self.allocations.id_of_tuple(tuple).and_then(|id| self.data_path(id))
    }

    /// Allocations alive now.
    pub fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// The next event for the edge.
    pub fn poll_event(&mut self) -> Option<Event<R>> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.allocations.values().map(|a| a.path.state().expires).min()
    }

    /// Ends expired allocations and forgets expired permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<AllocationId> =
            self.allocations.iter().filter(|(_, a)| a.path.state().expires <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.free(id);
        }
        for allocation in self.allocations.values() {
            let mut state = allocation.path.state();
            state.permissions.retain(|_, until| *until > now);
            let gone: Vec<u16> =
                state.channels.iter().filter(|(_, c)| c.expires + CHANNEL_COOLDOWN <= now).map(|(n, _)| *n).collect();
            for number in gone {
                if let Some(channel) = state.channels.remove(&number) {
                    state.channel_of_peer.remove(&channel.peer);
                }
            }
        }
    }

    /// A stream connection closed: its allocations end with it (RFC 8656 §3.1).
    pub fn connection_closed(&mut self, tuple: FiveTuple) {
        if let Some(id) = self.allocations.id_of_tuple(&tuple) {
            self.free(id);
        }
    }

    fn free(&mut self, id: AllocationId) {
        let Some(allocation) = self.allocations.remove(id) else { return };
        let counters = {
            let mut state = allocation.path.state();
            state.freed = true;
            state.counters
        };
        counters.add_into(&mut self.retired);
        self.events.push_back(Event::Freed { id, relay: allocation.path.relay().clone() });
    }

    fn unix(&self, now: Instant) -> u64 {
        self.clock.1 + now.saturating_duration_since(self.clock.0).as_secs()
    }

    /// Handles one datagram (UDP) or one frame (TCP/TLS, split with [`crate::framing::frame_len`]) from a
    /// client. `client` is how to reach it again, kept if this creates an allocation. `out` receives what
    /// [`ClientAction::Reply`] and [`ClientAction::ToClient`] send.
    pub fn handle_client(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        client: &C,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction<R, C> {
        out.clear();
        match input.first().map(|b| b >> 6) {
            Some(0b01) => self.client_channel_data(now, tuple, input, out),
            Some(0b00) => match Message::from_bytes(input) {
                Ok(message) => self.client_message(now, tuple, client, &message, input, out),
                Err(_) => {
                    bump(&mut self.stats.dropped, "malformed");
                    ClientAction::None
                }
            },
            _ => {
                bump(&mut self.stats.dropped, "malformed");
                ClientAction::None
            }
        }
    }

    fn client_channel_data(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction<R, C> {
        let Some((number, payload)) = channel_data(input) else {
            bump(&mut self.stats.dropped, "malformed");
            return ClientAction::None;
        };
        let Some(path) = self.data_path_of(&tuple) else {
            bump(&mut self.stats.dropped, "no_allocation");
            return ClientAction::None;
        };
        match path.from_client(now, input) {
            FromClient::ToPeer { peer, payload } => ClientAction::ToPeer { relay: path.relay().clone(), peer, payload },
            FromClient::Drop => ClientAction::None,
            // A channel to another allocation of this server (the path saw a well-formed message of a live one).
            FromClient::Server => {
                let Some(peer) = path.state().channel(number, now).map(|c| c.peer) else { return ClientAction::None };
                self.relay_to_peer(now, &path, peer, payload, input, out)
            }
        }
    }

    /// Relays `input[payload]` from allocation `path` to `peer`, which holds a permission: through the relay
    /// socket, or straight to the client of the allocation `peer` is the relayed address of.
    fn relay_to_peer(
        &mut self,
        now: Instant,
        path: &DataPath<R, C>,
        peer: SocketAddr,
        payload: Range<usize>,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction<R, C> {
        if !path.state().spend_to_peer(payload.len(), now) {
            return ClientAction::None;
        }
        if let Some(target) = self.allocations.id_of_relay(&peer).and_then(|id| self.data_path(id)) {
            let data = input.get(payload).unwrap_or_default();
            out.clear();
            return match target.from_peer(now, path.relayed(), data, out) {
                FromPeer::Relay => ClientAction::ToClient(target.client().clone()),
                FromPeer::Drop | FromPeer::Gone => ClientAction::None,
            };
        }
        ClientAction::ToPeer { relay: path.relay().clone(), peer, payload }
    }

    fn client_message(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        client: &C,
        message: &Message<'_>,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction<R, C> {
        let method = message.method();
        match message.class() {
            MessageClass::Indication if method == SEND => self.send_indication(now, tuple, message, input, out),
            MessageClass::Request => {
                if let Some(unknown) = unknown_attributes(message) {
                    let mut reply = Message::builder_error(message, MessageWriteVec::with_capacity(64));
                    let _ = add_error(&mut reply, 420, "Unknown Attribute");
                    let _ = reply.add_attribute(&UnknownAttributes::new(&unknown));
                    *out = reply.finish();
                    return ClientAction::Reply;
                }
                if method == BINDING {
                    let mut reply = Message::builder_success(message, MessageWriteVec::with_capacity(48));
                    let _ = reply.add_attribute(&XorMappedAddress::new(tuple.client, message.transaction_id()));
                    if message.has_attribute(Fingerprint::TYPE) {
                        let _ = reply.add_fingerprint();
                    }
                    *out = reply.finish();
                    return ClientAction::Reply;
                }
                if ![ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method) {
                    return self.refuse(message, None, Refuse::new(400, "Bad Request: unsupported method"), now, out);
                }
                // Credentials that expired during an allocation's life still maintain it (a call outlives them);
                // a new allocation needs fresh ones.
                let existing = method != ALLOCATE && self.allocations.id_of_tuple(&tuple).is_some();
                let auth = match self.authenticate(message, now, existing) {
                    Ok(auth) => auth,
                    Err(refuse) => return self.refuse(message, None, refuse, now, out),
                };
                let result = match method {
                    m if m == ALLOCATE => self.allocate(now, tuple, client, message, &auth, out),
                    m if m == REFRESH => self.refresh(now, tuple, message, &auth, out),
                    m if m == CREATE_PERMISSION => self.create_permission(now, tuple, message, &auth, out),
                    _ => self.channel_bind(now, tuple, message, &auth, out),
                };
                // Errors after authentication are signed with the client's key (RFC 8489 §9.2.4).
                result.unwrap_or_else(|refuse| self.refuse(message, Some(&auth), refuse, now, out))
            }
            // Responses and other indications have no business here (RFC 8489 §6.3: discard).
            _ => {
                bump(&mut self.stats.dropped, "unexpected_message");
                ClientAction::None
            }
        }
    }

    fn send_indication(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        message: &Message<'_>,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction<R, C> {
        let Some(path) = self.data_path_of(&tuple) else {
            bump(&mut self.stats.dropped, "no_allocation");
            return ClientAction::None;
        };
        let (Ok(peer), Some((offset, data))) =
            (message.attribute::<XorPeerAddress>(), message.raw_attribute_and_offset(Data::TYPE))
        else {
            bump(&mut self.stats.dropped, "malformed");
            return ClientAction::None;
        };
        let peer = peer.addr(message.transaction_id());
        let start = offset + 4;
        let payload = start..start + data.value.len();
        if !path.state().permitted(peer.ip(), now) {
            // A Send to a refused peer never had a permission: count its class, as a CreatePermission would.
            if let Err(refusal) = self.check_peer(peer) {
                bump(&mut self.stats.refused_peers, refusal.as_str());
                icmp_prohibited(peer, self.next_indication_id(), out);
                return ClientAction::Reply;
            }
            path.state().count_no_permission();
            return ClientAction::None;
        }
        if input.len() < payload.end {
            bump(&mut self.stats.dropped, "malformed");
            return ClientAction::None;
        }
        self.relay_to_peer(now, &path, peer, payload, input, out)
    }

    /// Relay-to-relay traffic is allowed whatever the policy says about relay addresses.
    fn check_peer(&self, peer: SocketAddr) -> Result<(), Refusal> {
        if self.allocations.id_of_relay(&peer).is_some() {
            return Ok(());
        }
        self.policy.check(peer.ip())
    }

    fn next_indication_id(&mut self) -> [u8; 12] {
        self.indication_id = self.indication_id.wrapping_add(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        let bytes = self.indication_id.to_be_bytes();
        let mut id = [0; 12];
        id.copy_from_slice(&bytes[4..]);
        id
    }

    fn nonce(&self, now: Instant) -> String {
        let expiry = self.unix(now) + self.config.nonce_lifetime.as_secs();
        let mac = self.nonce_mac(expiry);
        let mut nonce = format!("{expiry:016x}");
        for b in &mac[..8] {
            nonce.push_str(&format!("{b:02x}"));
        }
        nonce
    }

    fn nonce_mac(&self, expiry: u64) -> [u8; 20] {
        let Ok(mut mac) = <Hmac<Sha1>>::new_from_slice(&*self.nonce_key) else { return [0; 20] };
        mac.update(&expiry.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    fn nonce_valid(&self, nonce: &str, now: Instant) -> bool {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return false;
        }
        let (expiry, tag) = nonce.split_at(16);
        let Ok(expiry) = u64::from_str_radix(expiry, 16) else { return false };
        let mut given = [0u8; 8];
        for (i, byte) in given.iter_mut().enumerate() {
            match tag.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => *byte = b,
                None => return false,
            }
        }
        let Ok(mut mac) = <Hmac<Sha1>>::new_from_slice(&*self.nonce_key) else { return false };
        mac.update(&expiry.to_be_bytes());
        mac.verify_truncated_left(&given).is_ok() && expiry > self.unix(now)
    }

    fn authenticate(&mut self, message: &Message<'_>, now: Instant, existing: bool) -> Result<Authenticated, Refuse> {
        let has_integrity =
            message.has_attribute(MessageIntegrity::TYPE) || message.has_attribute(MessageIntegritySha256::TYPE);
        if !has_integrity {
            return Err(Refuse::challenge(401, "Unauthorized"));
        }
        let (Ok(username), Ok(realm), Ok(nonce)) =
            (message.attribute::<Username>(), message.attribute::<Realm>(), message.attribute::<Nonce>())
        else {
            if message.has_attribute(Userhash::TYPE) {
                // USERHASH needs a directory of usernames; REST credentials are computed, not stored.
                bump(&mut self.stats.auth_failures, "userhash");
                return Err(Refuse::challenge(401, "Unauthorized: USERHASH is not supported"));
            }
            bump(&mut self.stats.auth_failures, "malformed");
            return Err(Refuse::new(400, "Bad Request: USERNAME, REALM and NONCE are required"));
        };
        if !self.nonce_valid(nonce.nonce(), now) {
            bump(&mut self.stats.auth_failures, "stale_nonce");
            return Err(Refuse::challenge(438, "Stale Nonce"));
        }
        if realm.realm() != self.config.realm {
            bump(&mut self.stats.auth_failures, "wrong_realm");
            return Err(Refuse::challenge(401, "Unauthorized: wrong realm"));
        }
        let unix = self.unix(now);
        let members = &self.members;
        let (member, passwords) =
            match self.verifier.passwords_with(username.username(), unix, existing, |m| members.contains(m)) {
                Ok(found) => found,
                Err(error) => {
                    let label = match error {
                        CredentialError::Expired(_) => "expired",
                        CredentialError::Revoked => "revoked",
                        _ => "malformed",
                    };
                    bump(&mut self.stats.auth_failures, label);
                    return Err(Refuse::challenge(401, "Unauthorized"));
                }
            };
        for password in passwords {
            let credentials: MessageIntegrityCredentials = LongTermKeyCredentials::new(
                username.username().to_owned(),
                password.to_string(),
                self.config.realm.clone(),
            )
            .into();
            if let Ok(algorithm) = message.validate_integrity(&credentials) {
                return Ok(Authenticated {
                    member: Arc::from(member.as_str()),
                    username: username.username().to_owned(),
                    password,
                    algorithm,
                });
            }
        }
        bump(&mut self.stats.auth_failures, "bad_integrity");
        Err(Refuse::challenge(401, "Unauthorized"))
    }

    fn refuse(
        &mut self,
        message: &Message<'_>,
        auth: Option<&Authenticated>,
        refuse: Refuse,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> ClientAction<R, C> {
        let fingerprint = message.has_attribute(Fingerprint::TYPE);
        *out = self.error_response(message.method(), message.transaction_id(), auth, &refuse, fingerprint, now);
        ClientAction::Reply
    }

    fn error_response(
        &self,
        method: Method,
        transaction: TransactionId,
        auth: Option<&Authenticated>,
        refuse: &Refuse,
        fingerprint: bool,
        now: Instant,
    ) -> Vec<u8> {
        let mtype = MessageType::from_class_method(MessageClass::Error, method);
        let mut reply = Message::builder(mtype, transaction, MessageWriteVec::with_capacity(128));
        let _ = add_error(&mut reply, refuse.code, refuse.reason);
        if refuse.challenge {
            let realm = Realm::new(&self.config.realm);
            let nonce = Nonce::new(&self.nonce(now));
            if let (Ok(realm), Ok(nonce)) = (realm, nonce) {
                let _ = reply.add_attribute(&realm);
                let _ = reply.add_attribute(&nonce);
            }
        }
        add_software(&mut reply);
        if let Some(auth) = auth {
            let _ = reply.add_message_integrity(&auth.credentials(&self.config.realm), auth.algorithm);
        }
        if fingerprint {
            let _ = reply.add_fingerprint();
        }
        reply.finish()
    }

    fn success(
        &self,
        message: &Message<'_>,
        auth: &Authenticated,
        attrs: &[&dyn stun_types::attribute::AttributeWrite],
    ) -> Vec<u8> {
        let fingerprint = message.has_attribute(Fingerprint::TYPE);
        self.success_for(message.method(), message.transaction_id(), auth, attrs, fingerprint)
    }

    fn success_for(
        &self,
        method: Method,
        transaction: TransactionId,
        auth: &Authenticated,
        attrs: &[&dyn stun_types::attribute::AttributeWrite],
        fingerprint: bool,
    ) -> Vec<u8> {
        let mtype = MessageType::from_class_method(MessageClass::Success, method);
        let mut reply = Message::builder(mtype, transaction, MessageWriteVec::with_capacity(128));
        for attr in attrs {
            let _ = reply.add_attribute(*attr);
        }
        add_software(&mut reply);
        let _ = reply.add_message_integrity(&auth.credentials(&self.config.realm), auth.algorithm);
        if fingerprint {
            let _ = reply.add_fingerprint();
        }
        reply.finish()
    }

    fn lifetime(&self, message: &Message<'_>) -> Duration {
        let asked = message.attribute::<Lifetime>().map(|l| Duration::from_secs(u64::from(l.seconds())));
        match asked {
            Ok(asked) => asked.clamp(self.config.default_lifetime, self.config.max_lifetime),
            Err(_) => self.config.default_lifetime,
        }
    }

    fn allocate(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        client: &C,
        message: &Message<'_>,
        auth: &Authenticated,
        out: &mut Vec<u8>,
    ) -> Result<ClientAction<R, C>, Refuse> {
        if let Some(existing) = self.allocations.id_of_tuple(&tuple).and_then(|id| self.allocations.get(&id)) {
            if existing.transaction == message.transaction_id() && *existing.member == *auth.member {
                // A retransmitted Allocate: answer it again (RFC 8656 §7.2).
                let lifetime = existing.path.state().expires.saturating_duration_since(now);
                let (txid, fingerprint) = (message.transaction_id(), message.has_attribute(Fingerprint::TYPE));
                let relayed = existing.path.relayed();
                *out = self.allocate_success(txid, auth, fingerprint, relayed, tuple.client, lifetime);
                return Ok(ClientAction::Reply);
            }
            return Err(Refuse::new(437, "Allocation Mismatch"));
        }
        let Ok(transport) = message.attribute::<RequestedTransport>() else {
            return Err(Refuse::new(400, "Bad Request: REQUESTED-TRANSPORT is required"));
        };
        if transport.protocol() != UDP {
            return Err(Refuse::new(442, "Unsupported Transport Protocol: only UDP is relayed"));
        }
        if message.has_attribute(ReservationToken::TYPE)
            || message.attribute::<EvenPort>().is_ok_and(|even| even.requested())
        {
            // Port pairs for RTP/RTCP are not kept: WebRTC multiplexes them on one port.
            return Err(Refuse::new(508, "Insufficient Capacity: port reservations are not supported"));
        }
        let family = match message.attribute::<RequestedAddressFamily>() {
            Ok(requested) => requested.family(),
            Err(_) => AddressFamily::IPV4,
        };
        if message.has_attribute(AdditionalAddressFamily::TYPE) && message.has_attribute(RequestedAddressFamily::TYPE) {
            return Err(Refuse::new(400, "Bad Request: REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together"));
        }
        let supported = match family {
            AddressFamily::IPV4 => self.config.families.0,
            AddressFamily::IPV6 => self.config.families.1,
        };
        if !supported {
            return Err(Refuse::new(440, "Address Family not Supported"));
        }
        if self.allocations.len() >= self.config.max_allocations {
            return Err(Refuse::new(508, "Insufficient Capacity"));
        }
        if self.allocations.of_member(&auth.member) >= self.config.max_allocations_per_member {
            return Err(Refuse::new(486, "Allocation Quota Reached"));
        }
        Ok(ClientAction::Allocate(PendingAllocation {
            tuple,
            family,
            lifetime: self.lifetime(message),
            transaction: message.transaction_id(),
            auth: auth.clone(),
            fingerprint: message.has_attribute(Fingerprint::TYPE),
            client: client.clone(),
        }))
    }

    fn allocate_success(
        &self,
        txid: TransactionId,
        auth: &Authenticated,
        fingerprint: bool,
        relayed: SocketAddr,
        client: SocketAddr,
        lifetime: Duration,
    ) -> Vec<u8> {
        let lifetime = Lifetime::new(u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX));
        let attrs: [&dyn stun_types::attribute::AttributeWrite; 3] =
            [&XorRelayedAddress::new(relayed, txid), &lifetime, &XorMappedAddress::new(client, txid)];
        self.success_for(ALLOCATE, txid, auth, &attrs, fingerprint)
    }

    /// Finishes an Allocate once the edge bound (or failed to bind) the relay socket: `bound` is the socket's
    /// address, `advertised` the address clients are told (the same, or the external address in front of it).
    /// `out` receives the response for the client.
    pub fn complete_allocation(
        &mut self,
        now: Instant,
        pending: PendingAllocation<C>,
        socket: Result<(SocketAddr, SocketAddr, R), BindFailure>,
        out: &mut Vec<u8>,
    ) -> Option<AllocationId> {
        let PendingAllocation { tuple, family: _, lifetime, transaction, auth, fingerprint, client } = pending;
        let (bound, advertised, relay) = match socket {
            Ok(found) => found,
            Err(failure) => {
                let refuse = match failure {
                    BindFailure::FamilyUnsupported => Refuse::new(440, "Address Family not Supported"),
                    BindFailure::NoPort => Refuse::new(508, "Insufficient Capacity: no relay port free"),
                };
                *out = self.error_response(ALLOCATE, transaction, Some(&auth), &refuse, fingerprint, now);
                return None;
            }
        };
        *out = self.allocate_success(transaction, &auth, fingerprint, advertised, tuple.client, lifetime);
        let _ = self.next_indication_id();
        let seed = self.indication_id.rotate_left(61);
        let id = self.allocations.insert_with(|id| Allocation {
            tuple,
            member: auth.member,
            bound,
            transaction,
            path: Arc::new(DataPath::new(
                id,
                relay,
                client,
                advertised,
                tuple.transport.is_stream(),
                now + lifetime,
                TokenBucket::new(self.config.bandwidth, now),
                seed,
            )),
        });
        self.stats.allocations_created += 1;
        Some(id)
    }

    /// The allocation on `tuple`, if `auth` is its owner.
    fn owned(&self, tuple: FiveTuple, auth: &Authenticated) -> Result<AllocationId, Refuse> {
        let Some(id) = self.allocations.id_of_tuple(&tuple) else {
            return Err(Refuse::new(437, "Allocation Mismatch: no allocation on this 5-tuple"));
        };
        match self.allocations.get(&id) {
            Some(allocation) if *allocation.member == *auth.member => Ok(id),
            Some(_) => Err(Refuse::new(441, "Wrong Credentials")),
            None => Err(Refuse::new(437, "Allocation Mismatch")),
        }
    }

    fn refresh(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        message: &Message<'_>,
        auth: &Authenticated,
        out: &mut Vec<u8>,
    ) -> Result<ClientAction<R, C>, Refuse> {
        let id = self.owned(tuple, auth)?;
        let asked = message.attribute::<Lifetime>().map(|l| l.seconds()).ok();
        let family = self.allocations.get(&id).map(|a| AddressFamily::from(&a.path.relayed()));
        if let Ok(requested) = message.attribute::<RequestedAddressFamily>()
            && Some(requested.family()) != family
        {
            return Err(Refuse::new(443, "Peer Address Family Mismatch"));
        }
        let granted = if asked == Some(0) {
            self.free(id);
            Duration::ZERO
        } else {
            let lifetime = self.lifetime(message);
            if let Some(allocation) = self.allocations.get(&id) {
                allocation.path.state().expires = now + lifetime;
            }
            lifetime
        };
        let lifetime = Lifetime::new(u32::try_from(granted.as_secs()).unwrap_or(u32::MAX));
        *out = self.success(message, auth, &[&lifetime]);
        Ok(ClientAction::Reply)
    }

    /// The peers of a CreatePermission or ChannelBind, checked against the allocation's family and the policy.
    fn checked_peers(&mut self, id: AllocationId, message: &Message<'_>) -> Result<Vec<SocketAddr>, Refuse> {
        let txid = message.transaction_id();
        let peers: Vec<SocketAddr> =
            (0..).map_while(|n| message.nth_attribute::<XorPeerAddress>(n).ok()).map(|attr| attr.addr(txid)).collect();
        if peers.is_empty() {
            return Err(Refuse::new(400, "Bad Request: XOR-PEER-ADDRESS is required"));
        }
        let family = self.allocations.get(&id).map(|a| AddressFamily::from(&a.path.relayed()));
        for peer in &peers {
            if Some(AddressFamily::from(peer)) != family {
                return Err(Refuse::new(443, "Peer Address Family Mismatch"));
            }
            if let Err(refusal) = self.check_peer(*peer) {
                bump(&mut self.stats.refused_peers, refusal.as_str());
                return Err(Refuse::new(refusal.error_code(), refusal_reason(refusal)));
            }
        }
        Ok(peers)
    }

    fn create_permission(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        message: &Message<'_>,
        auth: &Authenticated,
        out: &mut Vec<u8>,
    ) -> Result<ClientAction<R, C>, Refuse> {
        let id = self.owned(tuple, auth)?;
        let peers = self.checked_peers(id, message)?;
        let max = self.config.max_permissions;
        let Some(allocation) = self.allocations.get(&id) else {
            return Err(Refuse::new(437, "Allocation Mismatch"));
        };
        let mut state = allocation.path.state();
        state.permissions.retain(|_, until| *until > now);
        let new = peers.iter().filter(|p| !state.permissions.contains_key(&p.ip())).count();
        if state.permissions.len() + new > max {
            return Err(Refuse::new(508, "Insufficient Capacity: too many permissions"));
        }
        for peer in peers {
            state.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        }
        drop(state);
        *out = self.success(message, auth, &[]);
        Ok(ClientAction::Reply)
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        message: &Message<'_>,
        auth: &Authenticated,
        out: &mut Vec<u8>,
    ) -> Result<ClientAction<R, C>, Refuse> {
        let id = self.owned(tuple, auth)?;
        let Ok(number) = message.attribute::<ChannelNumber>().map(|c| c.channel()) else {
            return Err(Refuse::new(400, "Bad Request: CHANNEL-NUMBER is required"));
        };
        if !CHANNELS.contains(&number) {
            return Err(Refuse::new(400, "Bad Request: channel number out of range"));
        }
        let peers = self.checked_peers(id, message)?;
        let [peer] = peers[..] else {
            return Err(Refuse::new(400, "Bad Request: one XOR-PEER-ADDRESS per ChannelBind"));
        };
        let max = self.config.max_permissions;
        let local = self.allocations.id_of_relay(&peer).is_some();
        let Some(allocation) = self.allocations.get(&id) else {
            return Err(Refuse::new(437, "Allocation Mismatch"));
        };
        let mut state = allocation.path.state();
        let bound_peer = state.channels.get(&number).map(|c| c.peer);
        let bound_number = state.channel_of_peer.get(&peer).copied();
        if bound_peer.is_some_and(|p| p != peer) || bound_number.is_some_and(|n| n != number) {
            return Err(Refuse::new(400, "Bad Request: channel or peer bound otherwise"));
        }
        if !state.permissions.contains_key(&peer.ip()) && state.permissions.len() >= max {
            return Err(Refuse::new(508, "Insufficient Capacity: too many permissions"));
        }
        state.channels.insert(number, Channel { peer, expires: now + CHANNEL_LIFETIME, local });
        state.channel_of_peer.insert(peer, number);
        let until = state.permissions.entry(peer.ip()).or_insert(now);
        *until = (*until).max(now + PERMISSION_LIFETIME);
        drop(state);
        *out = self.success(message, auth, &[]);
        Ok(ClientAction::Reply)
    }

    /// Handles a datagram a peer sent to the relay socket of allocation `id`. `out` receives the ChannelData
    /// or Data indication for the client. An edge holding the allocation's [`DataPath`] may call
    /// [`DataPath::from_peer`] instead, unless the peer may be a relay socket of this server bound to another
    /// address than it advertises (then only the server knows the peer by its advertised address).
    pub fn handle_peer(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: SocketAddr,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> PeerAction<C> {
        out.clear();
        // A relay socket of ours sending to another one: the peer is known by its advertised address.
        let peer =
            self.allocations.id_of_relay(&peer).and_then(|other| self.data_path(other)).map_or(peer, |p| p.relayed());
        let Some(path) = self.data_path(id) else { return PeerAction::Gone };
        match path.from_peer(now, peer, payload, out) {
            FromPeer::Relay => PeerAction::ToClient(path.client().clone()),
            FromPeer::Drop => PeerAction::Drop,
            FromPeer::Gone => PeerAction::Gone,
        }
    }
}
