//! A simulated bubble for client-core: members' clients, a relay that orders commits per group the way the
//! bubble-server does (first commit for an epoch wins), and DataChannels, all in memory and deterministic.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};

use peerbubble_client_core::{Client, ConversationId, Event, Output, Path};
use peerbubble_proto::{DirectoryEntry, IdentityKey, MemberId};

/// One envelope in flight.
#[derive(Debug, Clone)]
pub struct Flight {
    pub from: usize,
    pub to: usize,
    pub bytes: Vec<u8>,
    pub path: Path,
}

pub struct Net {
    pub keys: Vec<IdentityKey>,
    pub ids: Vec<MemberId>,
    pub clients: Vec<Client>,
    pub events: Vec<Vec<Event>>,
    pub online: Vec<bool>,
    pub ledger: HashMap<Vec<u8>, u64>,
    pub flights: VecDeque<Flight>,
    /// Every byte string the relay saw (for canary checks).
    pub relay_log: Vec<Vec<u8>>,
    pub conflicts: usize,
    pub now: u64,
}

impl Net {
    /// `n` members who all see each other.
    pub fn new(n: usize) -> Self {
        let keys: Vec<_> = (0..n).map(|i| IdentityKey::from_seed(&[i as u8 + 1; 32])).collect();
        let mut net = Self {
            clients: keys.iter().map(Client::new).collect(),
            ids: keys.iter().map(|k| k.public_key().member_id()).collect(),
            keys,
            events: vec![Vec::new(); n],
            online: vec![true; n],
            ledger: HashMap::new(),
            flights: VecDeque::new(),
            relay_log: Vec::new(),
            conflicts: 0,
            now: 1_000,
        };
        for i in 0..n {
            let all: Vec<usize> = (0..n).filter(|j| *j != i).collect();
            net.set_visible(i, &all);
        }
        net
    }

    pub fn entry(&self, j: usize) -> DirectoryEntry {
        let public_key = self.keys[j].public_key();
        DirectoryEntry {
            member: public_key.member_id(),
            public_key,
            display_name: format!("m{j}"),
            categories: vec!["c".into()],
            online: true,
        }
    }

    pub fn set_visible(&mut self, i: usize, visible: &[usize]) {
        let entries: Vec<_> = visible.iter().map(|j| self.entry(*j)).collect();
        self.clients[i].set_directory(entries);
    }

    pub fn id(&self, i: usize) -> MemberId {
        self.keys[i].public_key().member_id()
    }

    fn index(&self, member: MemberId) -> usize {
        (0..self.keys.len()).find(|i| self.id(*i) == member).expect("known member")
    }

    /// Moves every output into flight (relay ordering applied to commits).
    pub fn collect(&mut self) -> bool {
        let mut moved = false;
        for i in 0..self.clients.len() {
            while let Some(output) = self.clients[i].poll_output() {
                moved = true;
                match output {
                    Output::Relay { to, body } => {
                        self.relay_log.push(body.clone());
                        let to = self.index(to);
                        self.flights.push_back(Flight { from: i, to, bytes: body, path: Path::Relay });
                    }
                    Output::Channel { to, bytes } => {
                        let to = self.index(to);
                        self.flights.push_back(Flight { from: i, to, bytes, path: Path::Channel });
                    }
                    Output::Commit { token, group, epoch, to, body } => {
                        self.relay_log.push(body.clone());
                        let current = self.ledger.get(&group).copied();
                        if current.is_none_or(|e| e == epoch) {
                            self.ledger.insert(group, epoch + 1);
                            for m in to {
                                let to = self.index(m);
                                self.flights.push_back(Flight { from: i, to, bytes: body.clone(), path: Path::Relay });
                            }
                            self.clients[i].commit_accepted(token);
                        } else {
                            self.conflicts += 1;
                            self.clients[i].commit_rejected(token);
                        }
                    }
                    // Only a client told its stock (`Client::key_package_stock`) makes these; none is here.
                    Output::PublishKeyPackage { .. } | Output::ClaimKeyPackage { .. } => {
                        panic!("no bubble in this model keeps KeyPackages")
                    }
                }
            }
        }
        moved
    }

    /// Delivers everything in flight (offline members lose what is sent to them, as with the real relay).
    pub fn deliver(&mut self) -> bool {
        let mut moved = false;
        while let Some(f) = self.flights.pop_front() {
            moved = true;
            if !self.online[f.to] {
                continue;
            }
            let from = self.id(f.from);
            self.clients[f.to].handle_envelope(from, &f.bytes, f.path, self.now);
        }
        moved
    }

    pub fn drain_events(&mut self) {
        for i in 0..self.clients.len() {
            while let Some(e) = self.clients[i].poll_event() {
                self.events[i].push(e);
            }
        }
    }

    /// Runs until quiet.
    pub fn run(&mut self) {
        for _ in 0..200 {
            let a = self.collect();
            let b = self.deliver();
            self.drain_events();
            if !a && !b {
                return;
            }
        }
        panic!("the simulated bubble never went quiet");
    }

    /// Runs until quiet, DataChannel messages always delivered before relayed ones in flight with them: a
    /// message sent on a channel just after a Welcome or a commit overtakes it (as it can for real).
    pub fn run_channel_first(&mut self) {
        for _ in 0..200 {
            let a = self.collect();
            let mut flights: Vec<Flight> = self.flights.drain(..).collect();
            flights.sort_by_key(|f| f.path != Path::Channel);
            self.flights.extend(flights);
            let b = self.deliver();
            self.drain_events();
            if !a && !b {
                return;
            }
        }
        panic!("the simulated bubble never went quiet");
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
        for c in &mut self.clients {
            c.handle_timeout(self.now);
        }
        self.run();
    }

    pub fn take_events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.events[i])
    }

    /// Texts member `i` received, in order.
    pub fn texts(&mut self, i: usize) -> Vec<String> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::Message { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn refusals(&self, i: usize) -> Vec<String> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::Refused { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    /// Sets up the 1:1 conversation between `a` and `b`; returns its id.
    pub fn direct(&mut self, a: usize, b: usize) -> ConversationId {
        let peer = self.id(b);
        self.clients[a].start_direct(peer).unwrap();
        self.run();
        let id = self.clients[a].direct_conversation(peer).expect("direct conversation at the initiator");
        assert_eq!(self.clients[b].direct_conversation(self.id(a)), Some(id), "same conversation at both");
        id
    }
}
