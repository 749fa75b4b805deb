//! Every allocation, found by its id, by its client's 5-tuple or by its relay address, and counted per member:
//! the indices change together, here and nowhere else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::allocation::Allocation;
use super::{AllocationId, FiveTuple};

pub(super) struct Allocations<R, C> {
    next_id: u64,
    by_id: HashMap<AllocationId, Allocation<R, C>>,
    by_tuple: HashMap<FiveTuple, AllocationId>,
    by_relay: HashMap<SocketAddr, AllocationId>,
    per_member: HashMap<Arc<str>, usize>,
}

impl<R, C> Allocations<R, C> {
    pub(super) fn new() -> Self {
        Self {
            next_id: 1,
            by_id: HashMap::new(),
            by_tuple: HashMap::new(),
            by_relay: HashMap::new(),
            per_member: HashMap::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Allocations `member` holds.
    pub(super) fn of_member(&self, member: &str) -> usize {
        self.per_member.get(member).copied().unwrap_or(0)
    }

    /// The allocation of a client's 5-tuple.
    pub(super) fn id_of_tuple(&self, tuple: &FiveTuple) -> Option<AllocationId> {
        self.by_tuple.get(tuple).copied()
    }

    /// The allocation whose relay address (advertised or bound) this is.
    pub(super) fn id_of_relay(&self, addr: &SocketAddr) -> Option<AllocationId> {
        self.by_relay.get(addr).copied()
    }

    pub(super) fn get(&self, id: &AllocationId) -> Option<&Allocation<R, C>> {
        self.by_id.get(id)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&AllocationId, &Allocation<R, C>)> {
        self.by_id.iter()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Allocation<R, C>> {
        self.by_id.values()
    }

    /// Adds the allocation `make` builds with a fresh id, found by its 5-tuple and both its relay addresses.
    pub(super) fn insert_with(&mut self, make: impl FnOnce(AllocationId) -> Allocation<R, C>) -> AllocationId {
        let id = AllocationId(self.next_id);
        self.next_id += 1;
        let allocation = make(id);
        *self.per_member.entry(allocation.member.clone()).or_default() += 1;
        self.by_tuple.insert(allocation.tuple, id);
        self.by_relay.insert(allocation.path.relayed(), id);
        self.by_relay.insert(allocation.bound, id);
        self.by_id.insert(id, allocation);
        id
    }

    /// Removes an allocation from every index.
    pub(super) fn remove(&mut self, id: AllocationId) -> Option<Allocation<R, C>> {
        let allocation = self.by_id.remove(&id)?;
        self.by_tuple.remove(&allocation.tuple);
        self.by_relay.remove(&allocation.path.relayed());
        self.by_relay.remove(&allocation.bound);
        if let Some(count) = self.per_member.get_mut(&allocation.member) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_member.remove(&allocation.member);
            }
        }
        Some(allocation)
    }
}
