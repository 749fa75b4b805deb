//! The native headless peer. For now: a signaling v1 client (challenge–response, directory, presence,
//! envelopes) used by the CLI, the integration tests and the load generator. WebRTC, MLS and files arrive with
//! client-core. It holds the member's own identity key and nothing else secret.

#![forbid(unsafe_code)]

pub mod node;
pub mod rtc;
pub mod signal;

pub use signal::{ClientError, SignalClient};
