//! One allocation's own state (RFC 8656): its relayed address and 5-tuple, its permissions and channels with
//! their lifetimes, and the bandwidth budget it relays within.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use stun_types::message::TransactionId;

use super::FiveTuple;

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
}

pub(super) struct Allocation<R, C> {
    pub(super) tuple: FiveTuple,
    pub(super) member: Arc<str>,
    pub(super) relayed: SocketAddr,
    pub(super) bound: SocketAddr,
    pub(super) relay: R,
    pub(super) client: C,
    pub(super) expires: Instant,
    pub(super) transaction: TransactionId,
    pub(super) permissions: HashMap<IpAddr, Instant>,
    pub(super) channels: HashMap<u16, Channel>,
    pub(super) channel_of_peer: HashMap<SocketAddr, u16>,
    pub(super) bucket: TokenBucket,
}

impl<R, C> Allocation<R, C> {
    pub(super) fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|until| *until > now)
    }

    pub(super) fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels.get(&number).filter(|c| c.expires > now).map(|c| c.peer)
    }
}
