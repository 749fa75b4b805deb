//! The bubble-server: one bubble's authenticated, need-to-know WebSocket signaling.
//!
//! It authenticates members by challenge–response on their identity key, tells each member only its visible
//! slice of the directory and the presence of visible members, and relays opaque envelopes between members who
//! may see each other. It never sees plaintext or keys: envelope bodies are end-to-end encrypted bytes it
//! neither parses nor logs. It embeds the bubble's TURN relay ([`turn`]), which hands each member short-lived
//! credentials over its authenticated session and relays only ciphertext, never to internal addresses.
//!
//! Shape: [`session`] is the sans-IO protocol core of one connection; `connection` joins it to the [`hub`],
//! which holds who is online and routes, and owns each session's registration; `server` is the HTTP edge
//! (axum) and `wire` each connection's IO (WebSocket frames by `peerbubble_ws`, one task); [`turn`] is the IO edge of the
//! sans-IO `peerbubble_turn::Server`.

#![forbid(unsafe_code)]

pub mod admin_source;
pub mod cluster;
pub mod config;
mod connection;
pub mod directory;
pub mod enroll;
mod hub;
pub mod mailbox;
pub mod metrics;
pub mod reporter;
mod server;
pub mod session;
mod shared_mailbox;
mod state;
pub mod tls;
pub mod turn;
mod wire;

/// Log directives every PeerBubble process applies after the user's own (`RUST_LOG`): the WebSocket and HTTP
/// libraries print whole frames at debug and trace level, and frames carry envelopes and routing metadata
/// that must never reach logs (DESIGN.md invariants 1-2, CONVENTIONS.md). `tests/logs.rs` proves it at trace.
pub const LOG_REDACTIONS: &[&str] =
    &["tungstenite=info", "tokio_tungstenite=info", "hyper=info", "h2=info", "axum::extract::ws=info"];

pub use admin_source::{AdminApiSource, BubbleCredential};
pub use cluster::{ClusterConfig, ClusterError};
pub use config::{Config, ConfigError, SignalArgs, TurnArgs};
pub use directory::{Directory, DirectoryError, DirectorySource, FileSource};
pub use enroll::enroll_forwarding;
pub use mailbox::{MailboxConfig, MailboxCounts, MailboxError};
pub use reporter::{AdminApiReporter, HealthSink, spawn_reporter};
pub use server::{HealthHandle, Server, ServerError};
pub use tls::{ServerTls, TlsError, TlsSource};
