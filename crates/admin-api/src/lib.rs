//! The admin API: the organisation's directory (members' public keys, categories, bubbles), one-time invites and
//! enrollment, audit events. It must be safe to lose to an attacker: it never holds a private key, a message
//! key or message content, and it accepts a public key only with a signature proving possession.
//!
//! Administrators sign in with OpenID Connect ([`sign_in`], over the provider client [`oidc`]) or a bearer token
//! ([`auth`]); the OpenAPI document is built from the handlers themselves ([`api`]) and served with an offline
//! reference page ([`reference`]).
//!
//! Modules depend one way (`tests/layers.rs` fails on a circle): [`token`], [`store`] < [`metrics`], [`error`] <
//! [`principal`], [`control`] < [`oidc`] < [`state`] < [`auth`] < [`sign_in`], [`console`] < [`api`].

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod console;
pub mod control;
pub mod error;
pub mod metrics;
pub mod oidc;
pub mod principal;
pub mod reference;
pub mod retention;
pub mod sign_in;
pub mod state;
pub mod store;
pub mod token;

pub use api::{record_health, router};
pub use metrics::AdminMetrics;
pub use state::{ApiState, Clock, system_clock};
pub use store::{Store, StoreError};
