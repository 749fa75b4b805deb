//! Pieces of the bubble-server's TURN relay that need no IO (issue 4, in progress):
//!
//! - [`peer`]: which peer addresses a relay may send to — loopback, private, link-local (cloud metadata),
//!   CGNAT, multicast, documentation and reserved ranges and the cluster's own CIDRs are refused, after
//!   unwrapping every IPv6 form that can carry an IPv4 address;
//! - [`credentials`]: short-lived TURN credentials in the TURN REST API form (`expiry:member`, HMAC-SHA1),
//!   issued to authenticated members and checked with a rotation overlap.
//!
//! Not built yet: the STUN/TURN codec and server, listeners, quotas and metrics.

#![forbid(unsafe_code)]

pub mod credentials;
pub mod peer;
