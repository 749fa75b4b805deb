//! What the TURN relay reads from clients: STUN/TURN messages and ChannelData on UDP, and the same split out of
//! a TCP/TLS byte stream. Whatever arrives, the server must not panic, must answer at most with a well-formed
//! STUN message, and must never relay to a peer it did not grant a permission for.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use peerbubble_turn::credentials::{TurnSecret, Verifier};
use peerbubble_turn::framing::frame_len;
use peerbubble_turn::peer::PeerPolicy;
use peerbubble_turn::{ClientAction, Config, FiveTuple, Server, Transport};

fuzz_target!(|data: &[u8]| {
    let Ok(secret) = TurnSecret::new(vec![7; 32]) else { return };
    let start = Instant::now();
    let mut server: Server<u8, u8> =
        Server::new(Config::default(), Verifier::new(secret), PeerPolicy::default(), (start, 1_800_000_000), [1; 32]);
    server.set_members(["m".to_owned()]);
    let server_addr: SocketAddr = ([192, 0, 2, 1], 3478).into();
    let client: SocketAddr = ([198, 51, 100, 7], 40000).into();
    let mut out = Vec::new();
    // UDP: the whole input as one datagram.
    let udp = FiveTuple { transport: Transport::Udp, client, server: server_addr };
    check(server.handle_client(start, udp, &0, data, &mut out), &out);
    // Stream: framed as a TCP connection would be.
    let tcp = FiveTuple { transport: Transport::Tcp, client, server: server_addr };
    let mut rest = data;
    while let Ok(Some(len)) = frame_len(rest) {
        let Some(frame) = rest.get(..len) else { break };
        check(server.handle_client(start + Duration::from_millis(1), tcp, &1, frame, &mut out), &out);
        rest = &rest[len..];
    }
    server.handle_timeout(start + Duration::from_secs(4000));
    assert_eq!(server.allocations(), 0);
});

fn check(action: ClientAction<u8, u8>, out: &[u8]) {
    match action {
        ClientAction::Reply => {
            // Replies start with a STUN header whose length matches.
            assert!(out.len() >= 20);
            assert_eq!(usize::from(u16::from_be_bytes([out[2], out[3]])) + 20, out.len());
        }
        // Without valid credentials nothing can be allocated, so nothing can be relayed.
        ClientAction::ToPeer { .. } | ClientAction::ToClient(_) | ClientAction::Allocate(_) => {
            panic!("relayed or allocated without credentials")
        }
        ClientAction::None => {}
    }
}
