//! The PeerBubble operator: turns `Bubble` and `Category` resources into isolated bubble-server deployments.
//!
//! Built so far: [`render`], everything the operator makes for a Bubble, as pure functions with golden tests.
//! Not built yet: the reconcile loop (server-side apply, finalizer, status conditions, events), leader
//! election, metrics and the binary.

#![forbid(unsafe_code)]

pub mod render;
