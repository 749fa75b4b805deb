//! PeerBubble client logic without IO: the member's segmented local key store, MLS conversations, messages,
//! end-to-end-encrypted call set-up and file transfer, as state machines that take bytes and time in and give
//! bytes, events and deadlines out. The same code runs in the browser (wasm32) and in the native peer.
//!
//! What it must never do: hand a private key, a message key or plaintext to anything but the member's own
//! application, or accept a DTLS connection whose fingerprint its MLS-authenticated partner did not send.

#![forbid(unsafe_code)]

pub mod bench;
mod calls;
pub mod client;
pub mod contacts;
pub mod files;
pub mod fingerprint;
pub mod group_calls;
pub mod keystore;
pub mod message;
pub mod mls;
mod paths;
pub mod session;
pub mod signaling;
pub mod transfers;
pub mod wire;

pub use client::{ChatMessage, Client, ClientError, CloseReason, ConversationId, Event, Output, Path};
pub use fingerprint::Fingerprint;
pub use session::{Session, SessionEvent};
pub use signaling::{SignalEvent, Signaling, SignalingError};
