//! The admin API: the organisation's directory (members' public keys, categories, bubbles), one-time invites and
//! enrollment, audit events. It must be safe to lose to an attacker: it never holds a private key, a message
//! key or message content, and it accepts a public key only with a signature proving possession.
//!
//! Not built yet (see the issue notes): OpenID Connect sign-in for administrators (a bootstrap bearer token
//! stands in), roles, the OpenAPI document, health time series, the web console.

#![forbid(unsafe_code)]

pub mod api;
pub mod store;
pub mod token;

pub use api::{ApiState, Clock, router, system_clock};
pub use store::{Store, StoreError};
