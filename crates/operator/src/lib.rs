//! The PeerBubble operator: turns `Bubble` and `Category` resources into isolated bubble-server deployments.
//!
//! - [`render`]: everything the operator makes for a Bubble, as pure functions (golden tests);
//! - [`controller`]: the reconcilers (server-side apply, finalizer, status conditions, Events, backoff);
//! - [`run`]: the controllers wired to watches, started once this replica holds the leader lease;
//! - [`metrics`]: reconciles, failures by reason, duration, leadership;
//! - [`telemetry`]: logs, and OTLP traces of every reconcile when configured.

#![forbid(unsafe_code)]

pub mod controller;
pub mod metrics;
pub mod render;
pub mod run;
pub mod status;
pub mod telemetry;

pub use controller::{Context, Error};
