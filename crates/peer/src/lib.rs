//! The native headless peer: the signaling v1 client (also used by the load generator), a WebRTC transport on
//! webrtc-rs (`rtc`), and the node that drives client-core over both (`node`): MLS conversations, call set-up,
//! DataChannels and files, for the CLI (`peerbubble chat`), interop and load tests. Its secrets are the member's
//! identity key and client-core's MLS state; it never logs content, SDP or candidates.

#![forbid(unsafe_code)]

pub mod node;
pub mod rtc;
pub mod signal;
pub mod store;

pub use signal::{ClientError, SignalClient};
