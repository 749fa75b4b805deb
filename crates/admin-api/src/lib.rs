//! The admin API: the organisation's directory (members' public keys, categories, bubbles), one-time invites and
//! enrollment, audit events. It must be safe to lose to an attacker: it never holds a private key, a message
//! key or message content, and it accepts a public key only with a signature proving possession.
//!
//! Administrators sign in with OpenID Connect ([`oidc`]) or a bearer token ([`auth`]); the OpenAPI document is
//! built from the handlers themselves and served with an offline reference page ([`reference`]).

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod control;
pub mod metrics;
pub mod oidc;
pub mod reference;
pub mod retention;
pub mod store;
pub mod token;

pub use api::{ApiState, Clock, record_health, router, system_clock};
pub use metrics::AdminMetrics;
pub use store::{Store, StoreError};
