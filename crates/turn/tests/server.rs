//! The TURN state machine driven the way a client and a peer would, with messages built by the stun-types
//! codec on the client side. Interoperability with a client nobody here wrote is in the bubble-server's
//! `tests/turn.rs` (coturn's turnutils_uclient).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerbubble_turn::credentials::{TurnSecret, Verifier, issue};
use peerbubble_turn::peer::{Cidr, PeerPolicy};
use peerbubble_turn::{
    AllocationId, BindFailure, ClientAction, Config, Event, FiveTuple, FromClient, FromPeer, PeerAction, Server,
    Transport,
};
use stun_types::attribute::{
    AttributeType, AttributeWrite, ErrorCode, Nonce, Realm, UnknownAttributes, Username, XorMappedAddress,
};
use stun_types::message::{
    BINDING, IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageWrite, MessageWriteExt as _,
    MessageWriteVec,
};
use turn_types::AddressFamily;
use turn_types::attribute::{
    ChannelNumber, Data, Icmp, Lifetime, RequestedAddressFamily, RequestedTransport, XorPeerAddress, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};

const REALM: &str = "peerbubble";
const UNIX: u64 = 1_800_000_000;

fn secret(text: &str) -> TurnSecret {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(32, b'.');
    TurnSecret::new(bytes).unwrap()
}

type Turn = Server<SocketAddr, SocketAddr>;

struct Rig {
    server: Turn,
    now: Instant,
    out: Vec<u8>,
    next_port: u16,
}

struct Client {
    tuple: FiveTuple,
    username: String,
    password: String,
    nonce: Option<String>,
    relayed: Option<SocketAddr>,
    id: Option<AllocationId>,
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

impl Rig {
    fn new(config: Config, policy: PeerPolicy) -> Self {
        let start = Instant::now();
        let mut server = Server::new(config, Verifier::new(secret("bubble-secret")), policy, (start, UNIX), [7; 32]);
        server.set_members(["alice".to_owned(), "bob".to_owned()]);
        Self { server, now: start, out: Vec::new(), next_port: 50_000 }
    }

    fn open() -> Self {
        Self::new(Config::default(), PeerPolicy::default())
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now);
    }

    fn client(&self, member: &str, port: u16, transport: Transport) -> Client {
        let creds = issue(&secret("bubble-secret"), member, UNIX, 3600).unwrap();
        Client {
            tuple: FiveTuple {
                transport,
                client: addr(&format!("203.0.113.9:{port}")),
                server: addr("192.0.2.1:3478"),
            },
            username: creds.username,
            password: creds.password.to_string(),
            nonce: None,
            relayed: None,
            id: None,
        }
    }

    fn send(&mut self, client: &Client, bytes: &[u8]) -> ClientAction<SocketAddr, SocketAddr> {
        self.server.handle_client(self.now, client.tuple, &client.tuple.client, bytes, &mut self.out)
    }

    fn reply(&self) -> Message<'_> {
        Message::from_bytes(&self.out).expect("a STUN reply")
    }

    /// Sends an authenticated request, learning the nonce from a 401 first if needed; returns the reply.
    fn request(
        &mut self,
        client: &mut Client,
        method: stun_types::message::Method,
        attrs: &[&dyn AttributeWrite],
    ) -> Vec<u8> {
        for _ in 0..2 {
            let bytes = build(client, method, attrs);
            match self.send(client, &bytes) {
                ClientAction::Reply => {}
                ClientAction::Allocate(pending) => {
                    let ipv6 = pending.ipv6();
                    self.next_port += 2;
                    let bound = if ipv6 {
                        addr(&format!("[fd00::5]:{}", self.next_port))
                    } else {
                        addr(&format!("10.0.0.5:{}", self.next_port))
                    };
                    let id =
                        self.server.complete_allocation(self.now, pending, Ok((bound, bound, bound)), &mut self.out);
                    client.id = id;
                }
                other => panic!("unexpected {other:?}"),
            }
            let reply = self.reply();
            if reply.class() == MessageClass::Error {
                let code = reply.attribute::<ErrorCode>().unwrap().code();
                if (code == 401 || code == 438) && reply.attribute::<Nonce>().is_ok() {
                    let fresh = reply.attribute::<Nonce>().unwrap().nonce().to_owned();
                    if client.nonce.is_none() || code == 438 {
                        client.nonce = Some(fresh);
                        continue;
                    }
                }
            } else if let Ok(relayed) = reply.attribute::<XorRelayedAddress>() {
                client.relayed = Some(relayed.addr(reply.transaction_id()));
            }
            return self.out.clone();
        }
        self.out.clone()
    }

    fn allocate(&mut self, client: &mut Client) -> Vec<u8> {
        self.request(client, ALLOCATE, &[&RequestedTransport::new(17)])
    }

    fn permit(&mut self, client: &mut Client, peer: SocketAddr) -> Vec<u8> {
        // XOR-PEER-ADDRESS depends on the transaction id, so it is built inside the request.
        let bytes = build_with(client, CREATE_PERMISSION, |msg| {
            let txid = msg.transaction_id();
            msg.add_attribute(&XorPeerAddress::new(peer, txid)).unwrap();
        });
        let _ = self.send(client, &bytes);
        self.out.clone()
    }

    fn bind_channel(&mut self, client: &mut Client, number: u16, peer: SocketAddr) -> Vec<u8> {
        let bytes = build_with(client, CHANNEL_BIND, |msg| {
            let txid = msg.transaction_id();
            msg.add_attribute(&ChannelNumber::new(number)).unwrap();
            msg.add_attribute(&XorPeerAddress::new(peer, txid)).unwrap();
        });
        let _ = self.send(client, &bytes);
        self.out.clone()
    }
}

fn build(client: &Client, method: stun_types::message::Method, attrs: &[&dyn AttributeWrite]) -> Vec<u8> {
    build_with(client, method, |msg| {
        for attr in attrs {
            msg.add_attribute(*attr).unwrap();
        }
    })
}

fn build_with(
    client: &Client,
    method: stun_types::message::Method,
    fill: impl FnOnce(&mut MessageWriteVec),
) -> Vec<u8> {
    let mut msg = Message::builder_request(method, MessageWriteVec::new());
    fill(&mut msg);
    if let Some(nonce) = &client.nonce {
        msg.add_attribute(&Username::new(&client.username).unwrap()).unwrap();
        msg.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
        msg.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
        let creds = LongTermKeyCredentials::new(client.username.clone(), client.password.clone(), REALM.to_owned());
        msg.add_message_integrity(&creds.into(), IntegrityAlgorithm::Sha1).unwrap();
    }
    msg.add_fingerprint().unwrap();
    msg.finish()
}

fn code(bytes: &[u8]) -> Option<u16> {
    let msg = Message::from_bytes(bytes).unwrap();
    (msg.class() == MessageClass::Error).then(|| msg.attribute::<ErrorCode>().unwrap().code())
}

fn reason(bytes: &[u8]) -> String {
    Message::from_bytes(bytes).unwrap().attribute::<ErrorCode>().unwrap().reason().to_owned()
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut msg = Message::builder_indication(SEND, MessageWriteVec::new());
    let txid = msg.transaction_id();
    msg.add_attribute(&XorPeerAddress::new(peer, txid)).unwrap();
    msg.add_attribute(&Data::new(data)).unwrap();
    msg.finish()
}

fn channel_data(number: u16, data: &[u8]) -> Vec<u8> {
    let mut out = number.to_be_bytes().to_vec();
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn binding_reflects_the_client_address_without_credentials() {
    let mut rig = Rig::open();
    let client = rig.client("alice", 40_000, Transport::Udp);
    let request = Message::builder_request(BINDING, MessageWriteVec::new()).finish();
    assert!(matches!(rig.send(&client, &request), ClientAction::Reply));
    let reply = rig.reply();
    assert_eq!(reply.class(), MessageClass::Success);
    assert_eq!(reply.attribute::<XorMappedAddress>().unwrap().addr(reply.transaction_id()), client.tuple.client);
}

#[test]
fn allocate_challenges_then_grants_a_relay_address_with_integrity() {
    let mut rig = Rig::open();
    let mut client = rig.client("alice", 40_000, Transport::Udp);
    let first = build(&client, ALLOCATE, &[&RequestedTransport::new(17)]);
    assert!(matches!(rig.send(&client, &first), ClientAction::Reply));
    assert_eq!(code(&rig.out), Some(401));
    assert_eq!(rig.reply().attribute::<Realm>().unwrap().realm(), REALM);

    let reply = rig.allocate(&mut client);
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.class(), MessageClass::Success, "{}", reason_or_ok(&reply));
    let creds = LongTermKeyCredentials::new(client.username.clone(), client.password.clone(), REALM.to_owned());
    msg.validate_integrity(&creds.into()).expect("the response is signed with the client's key");
    assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 600);
    assert_eq!(client.relayed.unwrap().ip().to_string(), "10.0.0.5");
    assert_eq!(msg.attribute::<XorMappedAddress>().unwrap().addr(msg.transaction_id()), client.tuple.client);
    assert_eq!(rig.server.allocations(), 1);
    assert_eq!(rig.server.stats().allocations_created, 1);

    // A second Allocate on the same 5-tuple is a mismatch; a retransmission of the first is answered again.
    let again = rig.allocate(&mut client);
    assert_eq!(code(&again), Some(437));
    let creds = LongTermKeyCredentials::new(client.username.clone(), client.password.clone(), REALM.to_owned());
    let error = Message::from_bytes(&again).unwrap();
    error.validate_integrity(&creds.into()).expect("errors after authentication are signed too");
    // So is an error from CreatePermission.
    let refused = rig.permit(&mut client, addr("127.0.0.1:22"));
    assert_eq!(code(&refused), Some(403));
    let creds = LongTermKeyCredentials::new(client.username.clone(), client.password.clone(), REALM.to_owned());
    Message::from_bytes(&refused).unwrap().validate_integrity(&creds.into()).expect("a signed 403");
}

fn reason_or_ok(bytes: &[u8]) -> String {
    match code(bytes) {
        Some(code) => format!("{code} {}", reason(bytes)),
        None => "ok".to_owned(),
    }
}

#[test]
fn expired_forged_revoked_and_stale_credentials_are_refused() {
    let mut rig = Rig::open();

    // Expired: issued an hour before, for ten minutes.
    let mut expired = rig.client("alice", 40_001, Transport::Udp);
    let old = issue(&secret("bubble-secret"), "alice", UNIX - 3600, 600).unwrap();
    expired.username = old.username;
    expired.password = old.password.to_string();
    assert_eq!(code(&rig.allocate(&mut expired)), Some(401));

    // Wrong HMAC: a password from another secret.
    let mut forged = rig.client("alice", 40_002, Transport::Udp);
    forged.password = issue(&secret("other-secret"), "alice", UNIX, 3600).unwrap().password.to_string();
    assert_eq!(code(&rig.allocate(&mut forged)), Some(401));

    // Not a member of the bubble.
    let mut stranger = rig.client("mallory", 40_003, Transport::Udp);
    assert_eq!(code(&rig.allocate(&mut stranger)), Some(401));

    let failures = &rig.server.stats().auth_failures;
    assert_eq!(failures.get("expired"), Some(&1));
    assert_eq!(failures.get("bad_integrity"), Some(&1));
    assert_eq!(failures.get("revoked"), Some(&1));
    assert_eq!(rig.server.allocations(), 0);

    // A member allocates, then is removed from the directory: the allocation ends and so do new requests.
    let mut bob = rig.client("bob", 40_004, Transport::Udp);
    assert_eq!(code(&rig.allocate(&mut bob)), None);
    rig.server.set_members(["alice".to_owned()]);
    assert_eq!(rig.server.allocations(), 0);
    assert!(matches!(rig.server.poll_event(), Some(Event::Freed { id, .. }) if Some(id) == bob.id));
    assert_eq!(code(&rig.request(&mut bob, REFRESH, &[])), Some(401));

    // A nonce older than its lifetime is stale (438) and the answer carries a fresh one.
    let mut alice = rig.client("alice", 40_005, Transport::Udp);
    let reply = rig.request(&mut alice, ALLOCATE, &[&RequestedTransport::new(17), &Lifetime::new(3600)]);
    assert_eq!(code(&reply), None);
    let stale_nonce = alice.nonce.clone();
    rig.advance(Duration::from_secs(601));
    let stale = build(&alice, REFRESH, &[]);
    let _ = rig.send(&alice, &stale);
    assert_eq!(code(&rig.out), Some(438));
    assert_ne!(rig.reply().attribute::<Nonce>().unwrap().nonce(), stale_nonce.unwrap());
    // The client retries with the fresh nonce and succeeds.
    assert_eq!(code(&rig.request(&mut alice, REFRESH, &[])), None);
}

#[test]
fn rotation_keeps_old_credentials_during_the_overlap() {
    let mut rig = Rig::open();
    let mut alice = rig.client("alice", 40_010, Transport::Udp);
    let mut verifier = Verifier::new(secret("bubble-secret"));
    verifier.rotate(secret("next-secret"), UNIX + 60);
    rig.server.set_verifier(verifier);
    assert_eq!(code(&rig.allocate(&mut alice)), None, "old credentials within the overlap");
    rig.advance(Duration::from_secs(120));
    alice.nonce = None;
    assert_eq!(code(&rig.request(&mut alice, REFRESH, &[])), Some(401), "old credentials after the overlap");
    let fresh = issue(&secret("next-secret"), "alice", UNIX + 120, 600).unwrap();
    alice.username = fresh.username;
    alice.password = fresh.password.to_string();
    assert_eq!(code(&rig.request(&mut alice, REFRESH, &[])), None);
}

#[test]
fn every_forbidden_class_is_refused_with_403_including_disguised_forms() {
    let policy = PeerPolicy::new(vec!["10.96.0.0/12".parse::<Cidr>().unwrap()], vec![]);
    let mut rig = Rig::new(Config::default(), policy);
    let mut v4 = rig.client("alice", 40_020, Transport::Udp);
    assert_eq!(code(&rig.allocate(&mut v4)), None);
    let mut v6 = rig.client("alice", 40_021, Transport::Udp);
    let reply = rig.request(
        &mut v6,
        ALLOCATE,
        &[&RequestedTransport::new(17), &RequestedAddressFamily::new(AddressFamily::IPV6)],
    );
    assert_eq!(code(&reply), None);
    assert!(v6.relayed.unwrap().is_ipv6());

    let v4_cases = [
        ("0.0.0.0:80", "unspecified"),
        ("127.0.0.1:22", "loopback"),
        ("169.254.169.254:80", "link-local"),
        ("10.1.2.3:80", "private"),
        ("192.168.1.1:80", "private"),
        ("100.64.0.1:80", "shared"),
        ("224.0.0.1:80", "multicast"),
        ("255.255.255.255:80", "broadcast"),
        ("192.0.2.10:80", "documentation"),
        ("240.0.0.1:80", "reserved"),
        ("10.100.0.10:443", "cluster"),
    ];
    let v6_cases = [
        ("[::]:80", "unspecified"),
        ("[::1]:22", "loopback"),
        ("[::ffff:127.0.0.1]:22", "loopback"),
        ("[::ffff:169.254.169.254]:80", "link-local"),
        ("[64:ff9b::a9fe:a9fe]:80", "link-local"),
        ("[2002:7f00:1::1]:22", "loopback"),
        ("[::127.0.0.1]:22", "reserved"),
        ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]:80", "reserved"),
        ("[fe80::1]:80", "link-local"),
        ("[fd00::1]:80", "private"),
        ("[ff02::1]:80", "multicast"),
        ("[2001:db8::1]:80", "documentation"),
        ("[::ffff:10.100.0.10]:443", "cluster"),
    ];
    for (client, cases) in [(&mut v4, &v4_cases[..]), (&mut v6, &v6_cases[..])] {
        for (peer, class) in cases {
            let reply = rig.permit(client, addr(peer));
            assert_eq!(code(&reply), Some(403), "CreatePermission to {peer}");
            assert!(reason(&reply).contains(class), "{peer}: {}", reason(&reply));
            let reply = rig.bind_channel(client, 0x4000, addr(peer));
            assert_eq!(code(&reply), Some(403), "ChannelBind to {peer}");
        }
    }
    let refused = &rig.server.stats().refused_peers;
    for label in ["unspecified", "loopback", "link_local", "private", "shared_address_space", "multicast"] {
        assert!(refused.get(label).copied().unwrap_or(0) >= 2, "{label}: {refused:?}");
    }
    assert_eq!(refused.get("cluster"), Some(&4));

    // Send has no response: the client gets an ICMP "administratively prohibited" Data indication instead,
    // and nothing leaves the relay.
    let action = rig.send(&v4, &send_indication(addr("169.254.169.254:80"), b"GET /latest/meta-data"));
    assert!(matches!(action, ClientAction::Reply));
    let indication = rig.reply();
    assert_eq!((indication.class(), indication.method()), (MessageClass::Indication, DATA));
    let icmp = indication.attribute::<Icmp>().unwrap();
    assert_eq!((icmp.icmp_type(), icmp.code()), (3, 13));

    // Public peers pass, and a family mismatch is its own error.
    assert_eq!(code(&rig.permit(&mut v4, addr("198.51.99.7:9"))), None);
    assert_eq!(code(&rig.permit(&mut v4, addr("[2a00:1450::1]:9"))), Some(443));
}

#[test]
fn relaying_both_ways_with_channels_and_indications() {
    let policy = PeerPolicy::new(vec![], vec!["198.18.0.0/15".parse().unwrap()]);
    let mut rig = Rig::new(Config::default(), policy);
    let mut alice = rig.client("alice", 40_030, Transport::Udp);
    assert_eq!(code(&rig.allocate(&mut alice)), None);
    let relay = alice.relayed.unwrap();
    let peer = addr("198.18.0.7:6000");

    // Without a permission nothing goes out and nothing comes in.
    assert!(matches!(rig.send(&alice, &send_indication(peer, b"x")), ClientAction::None));
    assert!(matches!(rig.server.handle_peer(rig.now, alice.id.unwrap(), peer, b"in", &mut rig.out), PeerAction::Drop));

    assert_eq!(code(&rig.permit(&mut alice, peer)), None, "an operator-allowed range passes the policy");
    let send = send_indication(peer, b"hello peer");
    match rig.send(&alice, &send) {
        ClientAction::ToPeer { relay: from, peer: to, payload } => {
            assert_eq!((from, to), (relay, peer));
            assert_eq!(&send[payload], b"hello peer");
        }
        other => panic!("{other:?}"),
    }
    // Peer to client without a channel: a Data indication that any STUN codec parses.
    let action = rig.server.handle_peer(rig.now, alice.id.unwrap(), peer, b"hello client", &mut rig.out);
    assert!(matches!(action, PeerAction::ToClient(to) if to == alice.tuple.client));
    let indication = rig.reply();
    assert_eq!((indication.class(), indication.method()), (MessageClass::Indication, DATA));
    assert_eq!(indication.attribute::<XorPeerAddress>().unwrap().addr(indication.transaction_id()), peer);
    assert_eq!(indication.attribute::<Data<'_>>().unwrap().data(), b"hello client");

    // With a channel: ChannelData both ways.
    assert_eq!(code(&rig.bind_channel(&mut alice, 0x4001, peer)), None);
    assert_eq!(code(&rig.bind_channel(&mut alice, 0x4002, peer)), Some(400), "a peer has one channel");
    assert_eq!(code(&rig.bind_channel(&mut alice, 0x3fff, peer)), Some(400), "out of range");
    let frame = channel_data(0x4001, b"via channel");
    match rig.send(&alice, &frame) {
        ClientAction::ToPeer { peer: to, payload, .. } => {
            assert_eq!((to, &frame[payload]), (peer, &b"via channel"[..]))
        }
        other => panic!("{other:?}"),
    }
    let _ = rig.server.handle_peer(rig.now, alice.id.unwrap(), peer, b"back", &mut rig.out);
    assert_eq!(rig.out, channel_data(0x4001, b"back"), "UDP ChannelData is not padded");
    assert!(matches!(rig.send(&alice, &channel_data(0x4005, b"?")), ClientAction::None), "unbound channel");

    let stats = rig.server.stats();
    assert_eq!(stats.to_peer, (2, 21));
    assert_eq!(stats.to_client, (2, 16));
}

#[test]
fn stream_clients_get_padded_channel_data_and_lose_allocations_with_the_connection() {
    let policy = PeerPolicy::new(vec![], vec!["198.18.0.0/15".parse().unwrap()]);
    let mut rig = Rig::new(Config::default(), policy);
    let mut alice = rig.client("alice", 40_040, Transport::Tls);
    assert_eq!(code(&rig.allocate(&mut alice)), None);
    let peer = addr("198.18.0.7:6000");
    assert_eq!(code(&rig.bind_channel(&mut alice, 0x4000, peer)), None);
    let _ = rig.server.handle_peer(rig.now, alice.id.unwrap(), peer, b"abcde", &mut rig.out);
    assert_eq!(rig.out, [&channel_data(0x4000, b"abcde")[..], &[0, 0, 0]].concat());
    rig.server.connection_closed(alice.tuple);
    assert_eq!(rig.server.allocations(), 0);
    assert!(matches!(rig.server.poll_event(), Some(Event::Freed { .. })));
}

#[test]
fn relay_to_relay_inside_the_bubble_passes_although_relay_addresses_are_private() {
    let mut rig = Rig::open();
    let mut alice = rig.client("alice", 40_050, Transport::Udp);
    let mut bob = rig.client("bob", 40_051, Transport::Tcp);
    assert_eq!(code(&rig.allocate(&mut alice)), None);
    assert_eq!(code(&rig.allocate(&mut bob)), None);
    let (a, b) = (alice.relayed.unwrap(), bob.relayed.unwrap());
    assert!(a.ip().to_string().starts_with("10."), "relay addresses are private here");
    assert_eq!(code(&rig.permit(&mut alice, b)), None);
    assert_eq!(code(&rig.permit(&mut bob, a)), None);
    // Another private address on the same host is still refused.
    assert_eq!(code(&rig.permit(&mut alice, addr("10.0.0.5:22"))), Some(403));

    match rig.send(&alice, &send_indication(b, b"to bob")) {
        ClientAction::ToClient(to) => assert_eq!(to, bob.tuple.client),
        other => panic!("{other:?}"),
    }
    let indication = rig.reply();
    assert_eq!(indication.attribute::<XorPeerAddress>().unwrap().addr(indication.transaction_id()), a);
    assert_eq!(indication.attribute::<Data<'_>>().unwrap().data(), b"to bob");

    // Bob answers over a channel bound to Alice's relay address.
    assert_eq!(code(&rig.bind_channel(&mut bob, 0x4000, a)), None);
    assert_eq!(code(&rig.bind_channel(&mut alice, 0x4000, b)), None);
    match rig.send(&bob, &channel_data(0x4000, b"to alice")) {
        ClientAction::ToClient(to) => assert_eq!(to, alice.tuple.client),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.out, channel_data(0x4000, b"to alice"));

    // Packets that travel between the two relay sockets are recognised by either address.
    let action = rig.server.handle_peer(rig.now, alice.id.unwrap(), b, b"via sockets", &mut rig.out);
    assert!(matches!(action, PeerAction::ToClient(_)));
}

#[test]
fn the_data_path_relays_as_the_server_would_and_learns_when_its_allocation_ends() {
    let policy = PeerPolicy::new(vec![], vec!["198.18.0.0/15".parse().unwrap()]);
    let mut rig = Rig::new(Config::default(), policy);
    let mut alice = rig.client("alice", 40_060, Transport::Udp);
    let mut bob = rig.client("bob", 40_061, Transport::Udp);
    assert_eq!(code(&rig.allocate(&mut alice)), None);
    assert_eq!(code(&rig.allocate(&mut bob)), None);
    let (peer, stranger) = (addr("198.18.0.7:6000"), addr("198.18.0.8:6000"));
    assert_eq!(code(&rig.bind_channel(&mut alice, 0x4001, peer)), None);
    assert_eq!(code(&rig.bind_channel(&mut alice, 0x4002, bob.relayed.unwrap())), None);
    assert_eq!(code(&rig.permit(&mut bob, alice.relayed.unwrap())), None);
    let path = rig.server.data_path_of(&alice.tuple).expect("alice's data path");
    assert_eq!(path.id(), alice.id.unwrap());
    assert_eq!(path.relayed(), alice.relayed.unwrap());
    assert_eq!(*path.client(), alice.tuple.client);

    // Client to peer: ChannelData on a bound channel goes out; an unbound one is dropped; what the data path
    // does not handle (not ChannelData, a channel to another allocation of this server) is left to the server.
    let frame = channel_data(0x4001, b"fast path");
    assert_eq!(path.from_client(rig.now, &frame), FromClient::ToPeer { peer, payload: 4..13 });
    assert_eq!(path.from_client(rig.now, &channel_data(0x4009, b"?")), FromClient::Drop);
    assert_eq!(path.from_client(rig.now, &[0x40, 0x01, 0x00, 0x10, 1]), FromClient::Server, "lying length");
    assert_eq!(path.from_client(rig.now, &build(&alice, BINDING, &[])), FromClient::Server);
    let to_bob = channel_data(0x4002, b"to bob");
    assert_eq!(path.from_client(rig.now, &to_bob), FromClient::Server);
    assert!(matches!(rig.send(&alice, &to_bob), ClientAction::ToClient(to) if to == bob.tuple.client));

    // Peer to client: appended to what the edge already gathered, as the server would write it.
    let mut out = b"earlier".to_vec();
    assert_eq!(path.from_peer(rig.now, peer, b"back", &mut out), FromPeer::Relay);
    assert_eq!(out, [&b"earlier"[..], &channel_data(0x4001, b"back")].concat());
    assert_eq!(path.from_peer(rig.now, stranger, b"in", &mut out), FromPeer::Drop, "no permission");
    let _ = rig.server.handle_peer(rig.now, alice.id.unwrap(), peer, b"back", &mut rig.out);
    assert_eq!(rig.out, channel_data(0x4001, b"back"));

    // The server's counters include what data paths relayed and dropped, also once their allocation ended.
    let count = |rig: &Rig| {
        let stats = rig.server.stats();
        (
            stats.to_peer,
            stats.to_client,
            stats.dropped.get("unknown_channel").copied(),
            stats.dropped.get("no_permission").copied(),
        )
    };
    let before = count(&rig);
    assert_eq!(before, ((2, 15), (3, 14), Some(1), Some(1)));
    assert_eq!(code(&rig.request(&mut alice, REFRESH, &[&Lifetime::new(0)])), None);
    assert!(path.is_freed());
    assert_eq!(path.from_client(rig.now, &frame), FromClient::Server, "an ended allocation goes back to the server");
    assert_eq!(path.from_peer(rig.now, peer, b"late", &mut out), FromPeer::Gone);
    assert!(rig.server.data_path_of(&alice.tuple).is_none());
    assert_eq!(count(&rig), before);
}

#[test]
fn quotas_on_allocations_and_bandwidth() {
    let config = Config { max_allocations: 3, max_allocations_per_member: 2, bandwidth: 1000, ..Config::default() };
    let policy = PeerPolicy::new(vec![], vec!["198.18.0.0/15".parse().unwrap()]);
    let mut rig = Rig::new(config, policy);
    let mut clients: Vec<Client> = (0..3).map(|i| rig.client("alice", 41_000 + i, Transport::Udp)).collect();
    assert_eq!(code(&rig.allocate(&mut clients[0])), None);
    assert_eq!(code(&rig.allocate(&mut clients[1])), None);
    assert_eq!(code(&rig.allocate(&mut clients[2])), Some(486), "per-member quota");
    let mut bob = rig.client("bob", 41_100, Transport::Udp);
    let mut carol = rig.client("bob", 41_101, Transport::Udp);
    assert_eq!(code(&rig.allocate(&mut bob)), None);
    assert_eq!(code(&rig.allocate(&mut carol)), Some(508), "total quota");

    // Freeing one makes room again.
    assert_eq!(code(&rig.request(&mut clients[0], REFRESH, &[&Lifetime::new(0)])), None);
    assert!(matches!(rig.server.poll_event(), Some(Event::Freed { .. })));
    assert_eq!(code(&rig.allocate(&mut clients[2])), None);

    // 1000 bytes/s: the second 600-byte packet in the same instant is dropped, and one second later it passes.
    let peer = addr("198.18.0.9:7000");
    let alice = &mut clients[1];
    assert_eq!(code(&rig.permit(alice, peer)), None);
    let packet = send_indication(peer, &[0u8; 600]);
    assert!(matches!(rig.send(alice, &packet), ClientAction::ToPeer { .. }));
    assert!(matches!(rig.send(alice, &packet), ClientAction::None));
    assert_eq!(rig.server.stats().dropped.get("bandwidth"), Some(&1));
    rig.advance(Duration::from_secs(1));
    assert!(matches!(rig.send(alice, &packet), ClientAction::ToPeer { .. }));
}

#[test]
fn lifetimes_expire_allocations_permissions_and_channels() {
    let policy = PeerPolicy::new(vec![], vec!["198.18.0.0/15".parse().unwrap()]);
    let mut rig = Rig::new(Config::default(), policy);
    let mut alice = rig.client("alice", 42_000, Transport::Udp);
    // Asking for a day gets the maximum hour.
    let reply = rig.request(&mut alice, ALLOCATE, &[&RequestedTransport::new(17), &Lifetime::new(86_400)]);
    assert_eq!(Message::from_bytes(&reply).unwrap().attribute::<Lifetime>().unwrap().seconds(), 3600);
    let (permitted, bound) = (addr("198.18.0.1:1"), addr("198.18.0.2:2"));
    assert_eq!(code(&rig.permit(&mut alice, permitted)), None);
    assert_eq!(code(&rig.bind_channel(&mut alice, 0x4100, bound)), None);
    let id = alice.id.unwrap();

    rig.advance(Duration::from_secs(301));
    for peer in [permitted, bound] {
        let action = rig.server.handle_peer(rig.now, id, peer, b"late", &mut rig.out);
        assert!(matches!(action, PeerAction::Drop), "permissions last 5 minutes");
    }
    // Binding the channel again refreshes it and its permission.
    assert_eq!(code(&rig.bind_channel(&mut alice, 0x4100, bound)), None);
    assert!(matches!(rig.server.handle_peer(rig.now, id, bound, b"again", &mut rig.out), PeerAction::ToClient(_)));
    assert!(matches!(rig.send(&alice, &channel_data(0x4100, b"x")), ClientAction::ToPeer { .. }));
    rig.advance(Duration::from_secs(601));
    assert!(matches!(rig.send(&alice, &channel_data(0x4100, b"x")), ClientAction::None), "channels last 10 minutes");

    let reply = rig.request(&mut alice, REFRESH, &[&Lifetime::new(1)]);
    assert_eq!(
        Message::from_bytes(&reply).unwrap().attribute::<Lifetime>().unwrap().seconds(),
        600,
        "at least the default"
    );
    assert!(rig.server.poll_timeout().is_some());
    rig.advance(Duration::from_secs(601));
    assert_eq!(rig.server.allocations(), 0);
    assert!(matches!(rig.server.poll_event(), Some(Event::Freed { id: freed, .. }) if freed == id));
    assert!(matches!(rig.server.handle_peer(rig.now, id, bound, b"gone", &mut rig.out), PeerAction::Gone));
}

#[test]
fn malformed_input_is_answered_or_dropped_and_other_allocations_carry_on() {
    let policy = PeerPolicy::new(vec![], vec!["198.18.0.0/15".parse().unwrap()]);
    let mut rig = Rig::new(Config::default(), policy);
    let mut alice = rig.client("alice", 43_000, Transport::Udp);
    assert_eq!(code(&rig.allocate(&mut alice)), None);
    let peer = addr("198.18.0.1:1");
    assert_eq!(code(&rig.bind_channel(&mut alice, 0x4000, peer)), None);
    let mut mallory = rig.client("bob", 43_001, Transport::Udp);

    // Garbage, truncated headers, lying lengths, a bad fingerprint: dropped, nothing sent.
    let mut bad_fingerprint = build(&mallory, BINDING, &[]);
    let last = bad_fingerprint.len() - 1;
    bad_fingerprint[last] ^= 0xff;
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 40],
        vec![0x00, 0x01, 0x00],
        vec![0x00, 0x01, 0x00, 0x40, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x40, 0x00, 0x10, 0x00, 1, 2],
        bad_fingerprint,
    ];
    for input in &inputs {
        assert!(matches!(rig.send(&mallory, input), ClientAction::None), "{input:?}");
    }
    assert!(rig.server.stats().dropped.get("malformed").copied().unwrap_or(0) >= 5);

    // A request with an unknown comprehension-required attribute gets 420 listing it.
    let unknown = stun_types::attribute::RawAttribute::new(AttributeType::new(0x7777), &[1, 2, 3, 4]);
    let request = build(&mallory, BINDING, &[&unknown]);
    assert!(matches!(rig.send(&mallory, &request), ClientAction::Reply));
    assert_eq!(code(&rig.out), Some(420));
    assert!(rig.reply().attribute::<UnknownAttributes>().unwrap().has_attribute(AttributeType::new(0x7777)));

    // Missing REQUESTED-TRANSPORT is 400; TCP relaying is 442; requests without an allocation are 437.
    assert_eq!(code(&rig.request(&mut mallory, ALLOCATE, &[])), Some(400));
    assert_eq!(code(&rig.request(&mut mallory, ALLOCATE, &[&RequestedTransport::new(6)])), Some(442));
    assert_eq!(code(&rig.request(&mut mallory, REFRESH, &[])), Some(437));

    // Someone else's credentials on Alice's 5-tuple: 441.
    let mut imposter = rig.client("bob", 43_000, Transport::Udp);
    assert_eq!(code(&rig.request(&mut imposter, REFRESH, &[])), Some(441));

    // Alice's relay was never disturbed.
    assert_eq!(rig.server.allocations(), 1);
    assert!(matches!(rig.send(&alice, &channel_data(0x4000, b"still here")), ClientAction::ToPeer { .. }));
}

#[test]
fn a_relay_port_that_cannot_be_bound_is_reported_to_the_client() {
    let mut rig = Rig::open();
    let mut alice = rig.client("alice", 44_000, Transport::Udp);
    let _ = rig.send(&alice, &build(&alice, ALLOCATE, &[&RequestedTransport::new(17)]));
    alice.nonce = Some(rig.reply().attribute::<Nonce>().unwrap().nonce().to_owned());
    let ClientAction::Allocate(pending) = rig.send(&alice, &build(&alice, ALLOCATE, &[&RequestedTransport::new(17)]))
    else {
        panic!("expected an allocation to bind")
    };
    assert!(rig.server.complete_allocation(rig.now, pending, Err(BindFailure::NoPort), &mut rig.out).is_none());
    assert_eq!(code(&rig.out), Some(508));
    assert_eq!(rig.server.allocations(), 0);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever bytes arrive, from a stranger or from the allocation's own client, the server neither
        /// panics nor loses the allocation.
        #[test]
        fn arbitrary_bytes_never_break_an_allocation(inputs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..20)) {
            let policy = PeerPolicy::new(vec![], vec!["198.18.0.0/15".parse().unwrap()]);
            let mut rig = Rig::new(Config::default(), policy);
            let mut alice = rig.client("alice", 45_000, Transport::Udp);
            prop_assert_eq!(code(&rig.allocate(&mut alice)), None);
            let peer = addr("198.18.0.1:1");
            prop_assert_eq!(code(&rig.bind_channel(&mut alice, 0x4000, peer)), None);
            for input in &inputs {
                let _ = rig.send(&alice, input);
            }
            prop_assert_eq!(rig.server.allocations(), 1);
            let relayed = matches!(rig.send(&alice, &channel_data(0x4000, b"ok")), ClientAction::ToPeer { .. });
            prop_assert!(relayed, "the allocation still relays");
        }
    }
}

#[test]
fn credentials_that_expire_during_an_allocation_maintain_it_but_make_no_new_one() {
    let mut rig = Rig::open();
    let short = issue(&secret("bubble-secret"), "alice", UNIX, 60).unwrap();
    let mut alice = rig.client("alice", 46_000, Transport::Udp);
    (alice.username, alice.password) = (short.username.clone(), short.password.to_string());
    assert_eq!(code(&rig.allocate(&mut alice)), None);
    rig.advance(Duration::from_secs(120));
    assert_eq!(code(&rig.request(&mut alice, REFRESH, &[])), None, "a call outlives its credentials");
    let mut again = rig.client("alice", 46_001, Transport::Udp);
    (again.username, again.password) = (short.username, short.password.to_string());
    assert_eq!(code(&rig.allocate(&mut again)), Some(401), "a new allocation needs fresh credentials");
    assert_eq!(rig.server.stats().auth_failures.get("expired"), Some(&1));
}
