//! The bubble-server's TURN relay, without IO (RFC 8656, STUN of RFC 8489). It relays ciphertext between
//! members who cannot reach each other directly, and must never become a way into the network it runs in.
//!
//! - [`server`]: the sans-IO state machine — credentials, allocations, permissions, channels, quotas,
//!   relay-to-relay, metrics counters;
//! - [`framing`]: splitting TCP/TLS streams into STUN messages and ChannelData;
//! - [`peer`]: which peer addresses a relay may send to — loopback, private, link-local (cloud metadata),
//!   CGNAT, multicast, documentation and reserved ranges and the cluster's own CIDRs are refused, after
//!   unwrapping every IPv6 form that can carry an IPv4 address;
//! - [`credentials`]: short-lived TURN credentials in the TURN REST API form (`expiry:member`, HMAC-SHA1),
//!   issued to authenticated members and checked with a rotation overlap.
//!
//! It never opens a socket, never reads relayed bytes, and never logs addresses of peers.

#![forbid(unsafe_code)]

pub mod credentials;
pub mod framing;
pub mod peer;
pub mod server;

pub use server::{
    AllocationId, BindFailure, ClientAction, Config, DataPath, Event, FiveTuple, FromClient, FromPeer, PeerAction,
    PendingAllocation, Server, Stats, Transport,
};
