//! One allocation (RFC 8656): who owns it, on which 5-tuple, and the [`DataPath`] holding its permissions
//! and channels with their lifetimes and the bandwidth budget it relays within.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use stun_types::message::TransactionId;

use super::FiveTuple;
use super::path::DataPath;

pub(super) struct TokenBucket {
    pub(super) rate: u64,
    pub(super) tokens: u64,
    pub(super) last: Instant,
}

impl TokenBucket {
    pub(super) fn new(rate: u64, now: Instant) -> Self {
        Self { rate, tokens: rate, last: now }
    }

    pub(super) fn take(&mut self, bytes: usize, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        let refill = elapsed.as_nanos().saturating_mul(u128::from(self.rate)) / 1_000_000_000;
        if refill > 0 {
            self.tokens = self.rate.min(self.tokens.saturating_add(u64::try_from(refill).unwrap_or(u64::MAX)));
            self.last = now;
        }
        let bytes = bytes as u64;
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

pub(super) struct Channel {
    pub(super) peer: SocketAddr,
    pub(super) expires: Instant,
    /// The peer was another allocation of this server when bound: relayed by the server, not the data path.
    pub(super) local: bool,
}

/// An allocation as the server's table holds it: who owns it and on which 5-tuple, and its data path.
pub(super) struct Allocation<R, C> {
    pub(super) tuple: FiveTuple,
    pub(super) member: Arc<str>,
    pub(super) bound: SocketAddr,
    pub(super) transaction: TransactionId,
    pub(super) path: Arc<DataPath<R, C>>,
}
