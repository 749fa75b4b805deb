//! One member's client, whole and without IO: the [`Signaling`] session and the [`Client`] state machine
//! wired together, so that every edge (the browser worker, the native peer) drives the same routing instead of
//! re-implementing it: relay envelopes go out through signaling, commits are ordered by the server and their
//! verdicts fed back, delivered envelopes reach the client, the directory the server sent is the one the client
//! checks need-to-know against, and envelopes wait (bounded) while signaling reconnects.
//!
//! The edge still owns the sockets and the clock: it calls [`Session::connected`], [`Session::handle_text`],
//! [`Session::handle_timeout`]… and does what [`Session::poll_transmit`] and [`Session::poll_event`] say.
//! DataChannels stay the edge's (RTCPeerConnection is window-only in browsers); their bytes come in through
//! [`Session::handle_channel`] and go out as [`SessionEvent::ChannelSend`].
//!
//! What it must never do: send an envelope to a member outside the directory, or lose track of a commit (each
//! one is answered to the client exactly once: accepted, or rejected so that it is retried).

use std::collections::{HashMap, VecDeque};

use peerbubble_proto::{ErrorCode, IdentityKey, MemberId};

use crate::client::{Client, ClientError, Event, MAX_RELAY_BODY, Output, Path};
use crate::files::CHUNK_FRAME_TAG;
use crate::signaling::{SignalEvent, Signaling, SignalingError};

/// Relay envelopes kept while signaling is down; older ones are dropped first (the client's own retries and
/// receipts recover what matters).
pub const MAX_HELD_ENVELOPES: usize = 256;

/// What the edge must know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// From signaling (`Deliver`, and `Ack`/`Refused` of commits, are consumed here and never appear).
    Signal(SignalEvent),
    /// From the client state machine.
    Core(Event),
    /// Send these bytes on the DataChannel with `to`.
    ChannelSend {
        /// Recipient.
        to: MemberId,
        /// Message bytes.
        bytes: Vec<u8>,
    },
    /// An envelope could not be relayed (the reason is for people; never content).
    Undeliverable {
        /// Recipient.
        to: MemberId,
        /// Why.
        reason: String,
    },
    /// `to` is away: the envelope waits in the bubble's mailbox until it comes back ("stored for later").
    StoredForLater {
        /// Recipient.
        to: MemberId,
    },
    /// Envelopes the bubble kept for us were lost while we were away (their time to live passed, or the
    /// mailbox was full); the groups that lost commits were asked to add us again.
    MissedWhileAway {
        /// How many envelopes.
        lost: u64,
    },
}

/// A member's client and its signaling session.
pub struct Session {
    signaling: Signaling,
    client: Client,
    /// Relay envelopes waiting for signaling to be ready.
    held: VecDeque<(MemberId, Vec<u8>)>,
    /// Signaling frame id of a commit → the client's token.
    commits: HashMap<u64, u64>,
    /// Signaling frame id of a relayed envelope → its recipient, until the server answers.
    relays: HashMap<u64, MemberId>,
    /// Signaling frame id of a KeyPackage claim → the client's request, until the server answers.
    claims: HashMap<u64, [u8; 16]>,
    /// The mailbox entries the state last handed to a save includes (see [`Session::saved`]).
    saving_upto: Option<u64>,
    events: VecDeque<SessionEvent>,
    /// Something a save would keep changed since [`Session::take_changed`].
    changed: bool,
    /// The client's MLS generation when `changed` was last set for it.
    saved_generation: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("member", &self.client.member())
            .field("ready", &self.signaling.is_ready())
            .field("held", &self.held.len())
            .field("commits", &self.commits.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for `identity` to `bubble`, around `client` (new, or restored from the key store).
    /// The first event is [`SignalEvent::Connect`]: open the WebSocket.
    pub fn new(identity: IdentityKey, bubble: Option<String>, client: Client) -> Self {
        let mut session = Self {
            signaling: Signaling::new(identity, bubble),
            client,
            held: VecDeque::new(),
            commits: HashMap::new(),
            relays: HashMap::new(),
            claims: HashMap::new(),
            saving_upto: None,
            events: VecDeque::new(),
            changed: false,
            saved_generation: 0,
        };
        // Signaling asks to connect as soon as it exists; nothing else can be pending yet.
        session.route(0);
        session
    }

    /// Our member id.
    pub fn member(&self) -> MemberId {
        self.client.member()
    }

    /// The signaling session (directory, presence, ICE servers, state).
    pub fn signaling(&self) -> &Signaling {
        &self.signaling
    }

    /// The client state machine (conversations, histories).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client, for calls that change nothing a save keeps and must not cost a save each: reading and
    /// sealing file chunks ([`Client::next_file_chunk`], [`Client::seal_file_chunk`]), and replaying kept
    /// chunks ([`Client::replay_file_chunk`], followed by one [`Session::act`] to route what it queued).
    /// Everything else goes through [`Session::act`], which routes what the call produced and marks the state
    /// to save.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Runs a command on the client at `now_ms` and routes what it produced.
    pub fn act<T>(
        &mut self,
        now_ms: u64,
        command: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.client.handle_timeout(now_ms);
        let result = command(&mut self.client);
        self.changed = true;
        self.route(now_ms);
        result
    }

    /// The WebSocket opened.
    pub fn connected(&mut self, now_ms: u64) {
        self.signaling.connected(now_ms);
        self.route(now_ms);
    }

    /// The WebSocket closed.
    pub fn disconnected(&mut self, close_code: Option<u16>, now_ms: u64) {
        self.signaling.disconnected(close_code, now_ms);
        self.route(now_ms);
    }

    /// A text message from the WebSocket. A protocol violation is an error, after a `Disconnect` was queued.
    pub fn handle_text(&mut self, text: &[u8], now_ms: u64) -> Result<(), SignalingError> {
        let result = self.signaling.handle_text(text, now_ms);
        self.route(now_ms);
        result
    }

    /// Bytes from the DataChannel with `from` (its DTLS fingerprint was checked by the edge against
    /// [`Client::expected_fingerprint`]).
    pub fn handle_channel(&mut self, from: MemberId, bytes: &[u8], now_ms: u64) {
        self.client.handle_envelope(from, bytes, Path::Channel, now_ms);
        self.route(now_ms);
    }

    /// A DataChannel with `member` opened or closed.
    pub fn channel(&mut self, member: MemberId, open: bool, now_ms: u64) {
        if open {
            self.client.channel_opened(member);
        } else {
            self.client.channel_closed(member);
        }
        self.route(now_ms);
    }

    /// The edge could not put `bytes` (an [`SessionEvent::ChannelSend`]) on the DataChannel with `to`: it closed
    /// meanwhile. An envelope takes the relay instead — the same MLS bytes, refused as a replay should the
    /// channel have delivered it after all; a file chunk is not relayed (the receiver asks to resume once a
    /// channel is back). Returns whether it was relayed.
    pub fn channel_send_failed(&mut self, to: MemberId, bytes: Vec<u8>, now_ms: u64) -> bool {
        let relayable = bytes.len() <= MAX_RELAY_BODY && bytes.first() != Some(&CHUNK_FRAME_TAG);
        if relayable {
            self.relay(to, bytes, now_ms);
            self.route(now_ms);
        }
        relayable
    }

    /// Timers of both machines.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.signaling.handle_timeout(now_ms);
        self.client.handle_timeout(now_ms);
        self.route(now_ms);
    }

    /// When to call [`Session::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<u64> {
        match (self.signaling.poll_timeout(), self.client.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next text frame to write to the WebSocket.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.signaling.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Whether the client's state changed (and should be saved) since the last call. The state as of now
    /// includes every envelope the mailbox delivered so far: once it is saved, call [`Session::saved`].
    pub fn take_changed(&mut self) -> bool {
        self.saving_upto = self.signaling.mailbox_seen_upto();
        std::mem::take(&mut self.changed)
    }

    /// The state as of the last [`Session::take_changed`] is saved: the server may delete what its mailbox kept
    /// for us up to there (a `received` frame is queued). Without it, the same envelopes come again on the next
    /// connection (and are refused as replays, changing nothing).
    pub fn saved(&mut self, now_ms: u64) {
        if let Some(upto) = self.saving_upto.take() {
            self.signaling.acknowledge_mailbox(upto, now_ms);
        }
    }

    /// Moves everything each machine produced to where it goes, until both are quiet.
    fn route(&mut self, now_ms: u64) {
        loop {
            let mut moved = false;
            while let Some(event) = self.signaling.poll_event() {
                moved = true;
                self.on_signal(event, now_ms);
            }
            while let Some(output) = self.client.poll_output() {
                moved = true;
                self.on_output(output, now_ms);
            }
            while let Some(event) = self.client.poll_event() {
                moved = true;
                // A file chunk changes nothing a save keeps (unless an MLS message went with it, counted
                // below): saving the key store at every 16 KiB would cost more than the transfer.
                if !matches!(event, Event::FileChunk { .. } | Event::FileSendable { .. }) {
                    self.changed = true;
                }
                self.events.push_back(SessionEvent::Core(event));
            }
            if self.client.mls_generation() != self.saved_generation {
                self.saved_generation = self.client.mls_generation();
                self.changed = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn on_signal(&mut self, event: SignalEvent, now_ms: u64) {
        match event {
            SignalEvent::Deliver { from, body, seq, .. } => {
                self.client.handle_envelope(from, &body.to_bytes(), Path::Relay, now_ms);
                if seq.is_some() {
                    // Its acknowledgement waits for a save, even when it changed nothing.
                    self.changed = true;
                }
            }
            SignalEvent::Gap { lost, groups } => {
                for group in &groups {
                    self.client.missed_commits(group.as_bytes());
                }
                self.changed = true;
                self.events.push_back(SessionEvent::MissedWhileAway { lost });
            }
            SignalEvent::Ack { id, stored, .. } if self.relays.contains_key(&id) => {
                if let Some(to) = self.relays.remove(&id).filter(|_| stored > 0) {
                    self.events.push_back(SessionEvent::StoredForLater { to });
                }
            }
            SignalEvent::Refused { id: Some(id), code, retry_after_ms } if self.relays.contains_key(&id) => {
                let to = self.relays.remove(&id);
                match (to, code) {
                    (Some(to), ErrorCode::MailboxFull) => self.events.push_back(SessionEvent::Undeliverable {
                        to,
                        reason: "they are away and the bubble cannot keep more for them".into(),
                    }),
                    _ => self.events.push_back(SessionEvent::Signal(SignalEvent::Refused {
                        id: Some(id),
                        code,
                        retry_after_ms,
                    })),
                }
            }
            SignalEvent::Ack { id, .. } if self.commits.contains_key(&id) => {
                if let Some(token) = self.commits.remove(&id) {
                    self.client.commit_accepted(token);
                }
            }
            SignalEvent::Refused { id: Some(id), code, retry_after_ms } if self.commits.contains_key(&id) => {
                if let Some(token) = self.commits.remove(&id) {
                    self.client.commit_rejected(token);
                }
                if code != ErrorCode::CommitConflict {
                    self.events.push_back(SessionEvent::Signal(SignalEvent::Refused {
                        id: Some(id),
                        code,
                        retry_after_ms,
                    }));
                }
            }
            SignalEvent::Ack { .. } => {}
            SignalEvent::KeyPackageStock { one_time, last_resort } => {
                // New KeyPackages leave private keys in the state: saved before they are published.
                self.changed = true;
                if let Err(err) = self.client.key_package_stock(one_time, last_resort) {
                    let (from, reason) = (self.client.member(), format!("cannot make KeyPackages to publish: {err}"));
                    self.events.push_back(SessionEvent::Core(Event::Refused { from, reason }));
                }
            }
            SignalEvent::ClaimedKeyPackage { id, member, key_package } => {
                if let Some(request) = self.claims.remove(&id) {
                    let bytes = key_package.map(|kp| kp.to_bytes());
                    if let Err(reason) = self.client.claimed_key_package(request, bytes.as_deref()) {
                        self.events.push_back(SessionEvent::Core(Event::Refused { from: member, reason }));
                    }
                }
            }
            SignalEvent::Refused { id: Some(id), .. } if self.claims.contains_key(&id) => {
                // Refused (rate limited, not visible): the member is asked directly instead, which says why if
                // that is refused too.
                if let Some(request) = self.claims.remove(&id) {
                    let _ = self.client.claimed_key_package(request, None);
                }
            }
            SignalEvent::Presence { member, online } => {
                if online {
                    self.client.member_online(member);
                } else {
                    self.client.member_offline(member);
                }
                self.events.push_back(SessionEvent::Signal(SignalEvent::Presence { member, online }));
            }
            SignalEvent::DirectoryChanged => {
                self.client.set_directory(self.signaling.directory().values().cloned());
                self.events.push_back(SessionEvent::Signal(event));
            }
            SignalEvent::PolicyChanged => {
                self.client.set_policy(*self.signaling.policy());
                self.events.push_back(SessionEvent::Signal(event));
            }
            SignalEvent::Ready { .. } => {
                self.client.set_directory(self.signaling.directory().values().cloned());
                self.events.push_back(SessionEvent::Signal(event));
                let held = std::mem::take(&mut self.held);
                for (to, body) in held {
                    self.relay(to, body, now_ms);
                }
            }
            SignalEvent::Closed { .. } | SignalEvent::Disconnect => {
                // Commits in flight are lost with the connection: the client retries them.
                for (_, token) in self.commits.drain() {
                    self.client.commit_rejected(token);
                }
                self.relays.clear();
                for (_, request) in std::mem::take(&mut self.claims) {
                    let _ = self.client.claimed_key_package(request, None);
                }
                self.client.signaling_lost();
                self.events.push_back(SessionEvent::Signal(event));
            }
            other => self.events.push_back(SessionEvent::Signal(other)),
        }
    }

    fn on_output(&mut self, output: Output, now_ms: u64) {
        match output {
            Output::Relay { to, body } => self.relay(to, body, now_ms),
            Output::Commit { token, group, epoch, to, body } => {
                match self.signaling.commit(&group, epoch, &to, &body, now_ms) {
                    Ok(id) => {
                        self.commits.insert(id, token);
                    }
                    // Not connected or refused before sending: the client retries after its back-off.
                    Err(_) => self.client.commit_rejected(token),
                }
            }
            Output::Channel { to, bytes } => self.events.push_back(SessionEvent::ChannelSend { to, bytes }),
            Output::PublishKeyPackage { key_package, last_resort } => {
                // Not connected: the stock comes again on the next session, and is topped up then.
                let _ = self.signaling.publish_key_package(&key_package, last_resort, now_ms);
            }
            Output::ClaimKeyPackage { request, member } => match self.signaling.claim_key_package(member, now_ms) {
                Ok(id) => {
                    self.claims.insert(id, request);
                }
                Err(_) => {
                    let _ = self.client.claimed_key_package(request, None);
                }
            },
        }
    }

    fn relay(&mut self, to: MemberId, body: Vec<u8>, now_ms: u64) {
        match self.signaling.send(to, None, &body, now_ms) {
            Ok(id) => {
                self.relays.insert(id, to);
            }
            Err(SignalingError::NotReady) if self.signaling.stopped().is_none() => {
                if self.held.len() == MAX_HELD_ENVELOPES {
                    self.held.pop_front();
                }
                self.held.push_back((to, body));
            }
            Err(err) => self.events.push_back(SessionEvent::Undeliverable { to, reason: err.to_string() }),
        }
    }
}
