//! The client side of signaling v1 (docs/protocol.md) as a sans-IO state machine, driven alike by the browser
//! worker and the native peer: it answers the challenge with the identity key it owns (the key never leaves
//! it), checks `welcome`, reassembles the directory, follows presence and TURN credentials, numbers and checks
//! what we send, keeps the session alive with pings, and decides when and whether to reconnect.
//!
//! The edge owns the WebSocket: it opens one on [`SignalEvent::Connect`], calls [`Signaling::connected`], feeds
//! every text message to [`Signaling::handle_text`], writes what [`Signaling::poll_transmit`] gives, closes on
//! [`SignalEvent::Disconnect`], reports the end with [`Signaling::disconnected`] and calls
//! [`Signaling::handle_timeout`] at [`Signaling::poll_timeout`]. Times are milliseconds on any monotonic clock.

use std::collections::{BTreeMap, VecDeque};

use peerbubble_proto::{
    ClientFrame, DirectoryEntry, ErrorCode, GroupId, IceServer, IdentityKey, Limits, MemberId, Opaque, Purpose,
    Recipients, ServerFrame, SessionId, auth_message, decode_server_frame, encode_frame,
};

/// How long each step of the handshake (challenge, welcome, directory) may take before we give up and retry.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// First reconnection delay; doubled after each failed attempt, up to [`MAX_BACKOFF_MS`].
pub const MIN_BACKOFF_MS: u64 = 500;
/// Longest reconnection delay.
pub const MAX_BACKOFF_MS: u64 = 30_000;
/// `unknown_member` refusals tolerated before a first accepted session: a member who has just enrolled may
/// connect before the bubble-server has picked the enrollment up (it follows the admin API every few seconds).
/// With the back-off this covers about half a minute. Once accepted, `unknown_member` is final at once.
pub const UNKNOWN_MEMBER_RETRIES: u32 = 6;

/// Why a call or a server frame was refused. Nothing was sent or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalingError {
    /// There is no authenticated session right now; the edge is (re)connecting.
    #[error("not connected to the bubble; wait for the session to be ready")]
    NotReady,
    /// The member is not in our directory: need-to-know forbids reaching it.
    #[error("member {0} is not in your directory")]
    NotVisible(MemberId),
    /// What we would send breaks a limit the server announced or a protocol rule.
    #[error("refused before sending: {0}")]
    Invalid(String),
    /// The server broke the protocol; the edge must close the connection (it will be retried).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The session ended for good (removed from the bubble, or our key is not a member).
    #[error("the bubble refused this member for good: {0:?}")]
    Stopped(ErrorCode),
}

/// What the edge must know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalEvent {
    /// Open a new WebSocket to the bubble now, then call [`Signaling::connected`].
    Connect,
    /// Close the WebSocket now (handshake timeout or a protocol violation), then call
    /// [`Signaling::disconnected`].
    Disconnect,
    /// Authenticated, with a complete directory: sending works.
    Ready {
        /// This session's id.
        session: SessionId,
    },
    /// A new complete directory replaced the previous one (members may have appeared or gone).
    DirectoryChanged,
    /// A member we see came online or went offline.
    Presence {
        /// Who.
        member: MemberId,
        /// Online now.
        online: bool,
    },
    /// Fresh TURN credentials ([`Signaling::ice_servers`]).
    IceServers,
    /// The bubble's policy changed ([`Signaling::policy`]); hand it to the client ([`crate::Client::set_policy`]).
    PolicyChanged,
    /// An envelope from a member we see (or from another session of ourselves).
    Deliver {
        /// The sender.
        from: MemberId,
        /// The sender's session.
        from_session: SessionId,
        /// End-to-end-encrypted bytes.
        body: Opaque,
        /// Its place in our mailbox when it waited for us while we were away.
        seq: Option<u64>,
    },
    /// Envelopes the bubble kept for us were lost before we came back (time to live, or quota).
    Gap {
        /// How many.
        lost: u64,
        /// Groups whose commits were among them: we missed epochs of these.
        groups: Vec<GroupId>,
    },
    /// The server queued our frame `id` to this many sessions (a commit: it won its epoch), and kept it for
    /// `stored` recipients who were away.
    Ack {
        /// Our frame id.
        id: u64,
        /// Recipient sessions.
        sessions: u32,
        /// Absent recipients it waits for in the bubble's mailbox.
        stored: u32,
    },
    /// The server refused something (for our frame `id` when given). Fatal refusals end the connection.
    Refused {
        /// Our frame id, when the refusal names one.
        id: Option<u64>,
        /// Why.
        code: ErrorCode,
        /// When to retry, if the server said.
        retry_after_ms: Option<u64>,
    },
    /// The bubble keeps this many of our KeyPackages for members who add us while we are away (it says so once
    /// per session, and only when it keeps them): top the stock up ([`Signaling::publish_key_package`]).
    KeyPackageStock {
        /// One-time KeyPackages kept.
        one_time: u32,
        /// Whether our last-resort KeyPackage is kept.
        last_resort: bool,
    },
    /// The answer to [`Signaling::claim_key_package`] `id`: one of `member`'s KeyPackages, or none.
    ClaimedKeyPackage {
        /// Our claim's id.
        id: u64,
        /// Whose.
        member: MemberId,
        /// The KeyPackage (unchecked: the client checks it like any other).
        key_package: Option<Opaque>,
    },
    /// The connection ended. With `retry_in_ms`, a [`SignalEvent::Connect`] follows after that delay; without,
    /// the member was refused for good (`code` says why) and nothing more happens.
    Closed {
        /// The refusal that ended it, if the server said.
        code: Option<ErrorCode>,
        /// Delay before the next attempt.
        retry_in_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting to reconnect.
    Disconnected {
        retry_at: u64,
    },
    /// [`SignalEvent::Connect`] was given; the socket is being opened.
    Connecting,
    AwaitChallenge {
        deadline: u64,
    },
    AwaitWelcome {
        deadline: u64,
    },
    AwaitDirectory {
        deadline: u64,
        session: SessionId,
    },
    Ready {
        session: SessionId,
    },
    /// Closing after [`SignalEvent::Disconnect`]; waiting for [`Signaling::disconnected`].
    Closing,
    /// Refused for good.
    Stopped(ErrorCode),
}

/// One member's signaling connection to one bubble, across reconnections.
pub struct Signaling {
    identity: IdentityKey,
    member: MemberId,
    bubble: Option<String>,
    state: State,
    directory: BTreeMap<MemberId, DirectoryEntry>,
    pending_directory: Vec<DirectoryEntry>,
    next_part: u32,
    ice_servers: Vec<IceServer>,
    policy: peerbubble_proto::BubblePolicy,
    limits: Option<Limits>,
    display_name: String,
    next_id: u64,
    last_sent: u64,
    /// The fatal refusal the server sent before closing, if any.
    fatal: Option<(ErrorCode, Option<u64>)>,
    attempts: u32,
    /// A session of ours reached its directory at least once.
    accepted: bool,
    /// `unknown_member` refusals in a row before the first accepted session.
    unknown_refusals: u32,
    jitter: u64,
    transmits: VecDeque<String>,
    events: VecDeque<SignalEvent>,
    /// How long the bubble keeps envelopes for absent members, from `welcome`.
    mailbox_ttl_ms: Option<u64>,
    /// The highest mailbox `seq` received on this connection, and the highest acknowledged.
    mailbox_seen: Option<u64>,
    mailbox_acked: Option<u64>,
}

impl std::fmt::Debug for Signaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signaling")
            .field("member", &self.member)
            .field("bubble", &self.bubble)
            .field("state", &self.state)
            .field("directory", &self.directory.len())
            .finish_non_exhaustive()
    }
}

impl Signaling {
    /// A machine for `identity`, which it keeps. With `bubble`, a challenge for another bubble is refused (an
    /// invite or a saved profile names the bubble; a server of another bubble must not get our signature).
    /// Asks for the first connection at once ([`SignalEvent::Connect`]).
    pub fn new(identity: IdentityKey, bubble: Option<String>) -> Self {
        let mut seed = [0u8; 8];
        // Jitter only spreads reconnections; without randomness they are merely less spread.
        let _ = getrandom::fill(&mut seed);
        let member = identity.public_key().member_id();
        let mut machine = Self {
            identity,
            member,
            bubble,
            state: State::Connecting,
            directory: BTreeMap::new(),
            pending_directory: Vec::new(),
            next_part: 0,
            ice_servers: Vec::new(),
            policy: peerbubble_proto::BubblePolicy::default(),
            limits: None,
            display_name: String::new(),
            next_id: 1,
            last_sent: 0,
            fatal: None,
            attempts: 0,
            accepted: false,
            unknown_refusals: 0,
            jitter: u64::from_le_bytes(seed) | 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            mailbox_ttl_ms: None,
            mailbox_seen: None,
            mailbox_acked: None,
        };
        machine.connect();
        machine
    }

    fn connect(&mut self) {
        self.state = State::Connecting;
        self.events.push_back(SignalEvent::Connect);
    }

    /// Our member id.
    pub fn member(&self) -> MemberId {
        self.member
    }

    /// The bubble, once a challenge named it (or as given).
    pub fn bubble(&self) -> Option<&str> {
        self.bubble.as_deref()
    }

    /// Our display name, from `welcome`.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// The session id while ready.
    pub fn session(&self) -> Option<SessionId> {
        match self.state {
            State::Ready { session } => Some(session),
            _ => None,
        }
    }

    /// Whether sending works now.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// The refusal that stopped us for good, if one did.
    pub fn stopped(&self) -> Option<ErrorCode> {
        match self.state {
            State::Stopped(code) => Some(code),
            _ => None,
        }
    }

    /// The members we see (the last complete directory), kept across reconnections.
    pub fn directory(&self) -> &BTreeMap<MemberId, DirectoryEntry> {
        &self.directory
    }

    /// What the bubble requires of this client (the default until `welcome`).
    pub fn policy(&self) -> &peerbubble_proto::BubblePolicy {
        &self.policy
    }

    /// How long the bubble keeps what is sent to a member who is away (None: it keeps nothing).
    pub fn mailbox_ttl_ms(&self) -> Option<u64> {
        self.mailbox_ttl_ms
    }

    fn set_policy(&mut self, policy: peerbubble_proto::BubblePolicy) {
        if policy != self.policy {
            self.policy = policy;
            self.events.push_back(SignalEvent::PolicyChanged);
        }
    }

    /// STUN/TURN servers and credentials, from `welcome` and then `ice_servers`.
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    /// The limits the server announced.
    pub fn limits(&self) -> Option<Limits> {
        self.limits
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SignalEvent> {
        self.events.pop_front()
    }

    /// When [`Signaling::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Disconnected { retry_at } => Some(retry_at),
            State::AwaitChallenge { deadline }
            | State::AwaitWelcome { deadline }
            | State::AwaitDirectory { deadline, .. } => Some(deadline),
            State::Ready { .. } => Some(self.last_sent + self.ping_interval()),
            State::Connecting | State::Closing | State::Stopped(_) => None,
        }
    }

    /// A third of the idle timeout, as the protocol advises.
    fn ping_interval(&self) -> u64 {
        self.limits.map_or(20_000, |l| l.idle_timeout_ms / 3).max(1)
    }

    /// The WebSocket opened.
    pub fn connected(&mut self, now_ms: u64) {
        if matches!(self.state, State::Stopped(_)) {
            return;
        }
        self.fatal = None;
        self.pending_directory.clear();
        self.next_part = 0;
        self.transmits.clear();
        // What was not acknowledged comes again on this connection.
        self.mailbox_seen = None;
        self.mailbox_acked = None;
        self.state = State::AwaitChallenge { deadline: now_ms + HANDSHAKE_TIMEOUT_MS };
    }

    /// The WebSocket closed or failed (`close_code` when the server sent one); schedules the next attempt
    /// unless the bubble refused us for good.
    pub fn disconnected(&mut self, close_code: Option<u16>, now_ms: u64) {
        if matches!(self.state, State::Stopped(_) | State::Disconnected { .. }) {
            return;
        }
        self.transmits.clear();
        let fatal = self.fatal.take();
        let code = fatal.map(|(code, _)| code).or(match close_code {
            Some(4001) => Some(ErrorCode::MemberRemoved),
            _ => None,
        });
        if code == Some(ErrorCode::UnknownMember) && !self.accepted {
            self.unknown_refusals = self.unknown_refusals.saturating_add(1);
        }
        let fresh_enrollment = !self.accepted && self.unknown_refusals <= UNKNOWN_MEMBER_RETRIES;
        if let Some(code) = code.filter(|c| is_final(*c) && !(*c == ErrorCode::UnknownMember && fresh_enrollment)) {
            self.state = State::Stopped(code);
            self.events.push_back(SignalEvent::Closed { code: Some(code), retry_in_ms: None });
            return;
        }
        let backoff = MIN_BACKOFF_MS.saturating_mul(1 << self.attempts.min(6)).min(MAX_BACKOFF_MS);
        self.attempts = self.attempts.saturating_add(1);
        // Up to a quarter more, so that a restarted server is not met by every client at once.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let delay = backoff + self.jitter % (backoff / 4 + 1);
        let delay = fatal.and_then(|(_, retry)| retry).map_or(delay, |retry| retry.max(MIN_BACKOFF_MS));
        self.state = State::Disconnected { retry_at: now_ms + delay };
        self.events.push_back(SignalEvent::Closed { code, retry_in_ms: Some(delay) });
    }

    /// Handshake deadlines, keep-alive pings and reconnection.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        match self.state {
            State::Disconnected { retry_at } if now_ms >= retry_at => self.connect(),
            State::AwaitChallenge { deadline }
            | State::AwaitWelcome { deadline }
            | State::AwaitDirectory { deadline, .. }
                if now_ms >= deadline =>
            {
                self.state = State::Closing;
                self.events.push_back(SignalEvent::Disconnect);
            }
            State::Ready { .. } if now_ms >= self.last_sent + self.ping_interval() => {
                let id = self.take_id();
                self.queue(&ClientFrame::Ping { id }, now_ms);
            }
            _ => {}
        }
    }

    /// A text message arrived. A protocol violation is returned after [`SignalEvent::Disconnect`] was queued.
    pub fn handle_text(&mut self, text: &[u8], now_ms: u64) -> Result<(), SignalingError> {
        let frame = decode_server_frame(text).map_err(|e| self.violation(e.to_string()))?;
        self.handle_frame(&frame, now_ms)
    }

    /// A decoded frame arrived (for edges that decode themselves).
    pub fn handle_frame(&mut self, frame: &ServerFrame, now_ms: u64) -> Result<(), SignalingError> {
        match (self.state, frame) {
            (State::Stopped(code), _) => Err(SignalingError::Stopped(code)),
            (State::AwaitChallenge { .. }, ServerFrame::Challenge { protocol, bubble, nonce, .. }) => {
                if *protocol != peerbubble_proto::PROTOCOL_VERSION {
                    return Err(self.violation(format!("protocol version {protocol} is not spoken here")));
                }
                match &self.bubble {
                    Some(expected) if expected != bubble => {
                        return Err(self.violation("the server serves another bubble".into()));
                    }
                    Some(_) => {}
                    None => self.bubble = Some(bubble.clone()),
                }
                let public_key = self.identity.public_key();
                let signature = self.identity.sign(Purpose::SignalAuth, &auth_message(bubble, nonce, &public_key));
                let nonce = nonce.clone();
                self.queue(&ClientFrame::Auth { public_key, nonce, signature }, now_ms);
                self.state = State::AwaitWelcome { deadline: now_ms + HANDSHAKE_TIMEOUT_MS };
                Ok(())
            }
            (
                State::AwaitWelcome { .. },
                ServerFrame::Welcome {
                    member, session, display_name, ice_servers, limits, policy, mailbox_ttl_ms, ..
                },
            ) => {
                if *member != self.member {
                    return Err(self.violation("welcome names another member".into()));
                }
                self.mailbox_ttl_ms = *mailbox_ttl_ms;
                self.set_policy(*policy);
                self.limits = Some(*limits);
                self.ice_servers.clone_from(ice_servers);
                self.display_name.clone_from(display_name);
                self.state = State::AwaitDirectory { deadline: now_ms + HANDSHAKE_TIMEOUT_MS, session: *session };
                Ok(())
            }
            (State::AwaitDirectory { .. } | State::Ready { .. }, ServerFrame::Directory { part, parts, entries }) => {
                if *part == 0 {
                    self.pending_directory.clear();
                    self.next_part = 0;
                }
                if *part != self.next_part {
                    return Err(self.violation("directory parts out of order".into()));
                }
                if entries.iter().any(|e| e.public_key.member_id() != e.member || e.member == self.member) {
                    return Err(self.violation("directory entry with an inconsistent member id".into()));
                }
                self.next_part += 1;
                self.pending_directory.extend(entries.iter().cloned());
                if part + 1 < *parts {
                    return Ok(());
                }
                self.directory = self.pending_directory.drain(..).map(|e| (e.member, e)).collect();
                match self.state {
                    State::AwaitDirectory { session, .. } => {
                        self.state = State::Ready { session };
                        self.attempts = 0;
                        self.accepted = true;
                        self.unknown_refusals = 0;
                        self.events.push_back(SignalEvent::Ready { session });
                    }
                    _ => self.events.push_back(SignalEvent::DirectoryChanged),
                }
                Ok(())
            }
            (State::AwaitDirectory { .. } | State::Ready { .. }, ServerFrame::Presence { member, online }) => {
                // A presence for someone outside our directory says nothing we may use.
                if let Some(entry) = self.directory.get_mut(member) {
                    entry.online = *online;
                    self.events.push_back(SignalEvent::Presence { member: *member, online: *online });
                }
                Ok(())
            }
            (State::AwaitDirectory { .. } | State::Ready { .. }, ServerFrame::Policy { policy }) => {
                self.set_policy(*policy);
                Ok(())
            }
            (State::AwaitDirectory { .. } | State::Ready { .. }, ServerFrame::IceServers { ice_servers, .. }) => {
                self.ice_servers.clone_from(ice_servers);
                self.events.push_back(SignalEvent::IceServers);
                Ok(())
            }
            (State::Ready { .. }, ServerFrame::Deliver { from, from_session, body, seq }) => {
                if let Some(seq) = seq {
                    self.mailbox_seen(*seq)?;
                }
                // Need-to-know, checked again here: only members we see, or our own other sessions.
                if *from == self.member || self.directory.contains_key(from) {
                    self.events.push_back(SignalEvent::Deliver {
                        from: *from,
                        from_session: *from_session,
                        body: body.clone(),
                        seq: *seq,
                    });
                }
                Ok(())
            }
            (State::Ready { .. }, ServerFrame::Gap { seq, lost, groups }) => {
                self.mailbox_seen(*seq)?;
                self.events.push_back(SignalEvent::Gap { lost: *lost, groups: groups.clone() });
                Ok(())
            }
            (State::Ready { .. }, ServerFrame::Ack { id, sessions, stored }) => {
                self.events.push_back(SignalEvent::Ack { id: *id, sessions: *sessions, stored: *stored });
                Ok(())
            }
            (State::Ready { .. }, ServerFrame::Pong { .. }) => Ok(()),
            (
                State::AwaitDirectory { .. } | State::Ready { .. },
                ServerFrame::KeyPackageStock { one_time, last_resort },
            ) => {
                self.events.push_back(SignalEvent::KeyPackageStock { one_time: *one_time, last_resort: *last_resort });
                Ok(())
            }
            (State::Ready { .. }, ServerFrame::ClaimedKeyPackage { id, member, key_package }) => {
                self.events.push_back(SignalEvent::ClaimedKeyPackage {
                    id: *id,
                    member: *member,
                    key_package: key_package.clone(),
                });
                Ok(())
            }
            (_, ServerFrame::Error { code, id, retry_after_ms, .. }) => {
                if code.is_fatal() {
                    self.fatal = Some((*code, *retry_after_ms));
                }
                self.events.push_back(SignalEvent::Refused { id: *id, code: *code, retry_after_ms: *retry_after_ms });
                Ok(())
            }
            (State::Connecting | State::Closing | State::Disconnected { .. }, _) => Ok(()),
            (_, _) => Err(self.violation("a frame that does not belong at this point of the session".into())),
        }
    }

    /// Mailbox entries come in increasing `seq`; anything else is a server bug or a replay.
    fn mailbox_seen(&mut self, seq: u64) -> Result<(), SignalingError> {
        if self.mailbox_seen.is_some_and(|seen| seq <= seen) {
            return Err(self.violation("mailbox entries out of order".into()));
        }
        self.mailbox_seen = Some(seq);
        Ok(())
    }

    /// The highest mailbox `seq` received on this connection (to acknowledge once the state it changed is saved).
    pub fn mailbox_seen_upto(&self) -> Option<u64> {
        self.mailbox_seen
    }

    /// Tells the server that what its mailbox kept for us, up to `upto`, is handled and saved: it deletes it.
    /// Nothing is sent when that was already said, or when not connected (it all comes again then).
    pub fn acknowledge_mailbox(&mut self, upto: u64, now_ms: u64) {
        if !matches!(self.state, State::Ready { .. }) || self.mailbox_acked.is_some_and(|acked| upto <= acked) {
            return;
        }
        if self.mailbox_seen.is_none_or(|seen| upto > seen) {
            return;
        }
        self.mailbox_acked = Some(upto);
        self.queue(&ClientFrame::Received { upto }, now_ms);
    }

    fn violation(&mut self, reason: String) -> SignalingError {
        if !matches!(self.state, State::Stopped(_)) {
            self.state = State::Closing;
            self.events.push_back(SignalEvent::Disconnect);
        }
        SignalingError::Protocol(reason)
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn queue(&mut self, frame: &ClientFrame, now_ms: u64) {
        self.transmits.push_back(encode_frame(frame));
        self.last_sent = now_ms;
    }

    fn ready(&self) -> Result<(), SignalingError> {
        match self.state {
            State::Ready { .. } => Ok(()),
            State::Stopped(code) => Err(SignalingError::Stopped(code)),
            _ => Err(SignalingError::NotReady),
        }
    }

    fn check_size(&self, frame: &ClientFrame, body_len: usize) -> Result<String, SignalingError> {
        let limits = self.limits.ok_or(SignalingError::NotReady)?;
        if body_len > limits.max_body_bytes as usize {
            return Err(SignalingError::Invalid(format!("the body exceeds {} bytes", limits.max_body_bytes)));
        }
        let text = encode_frame(frame);
        if text.len() > limits.max_frame_bytes as usize {
            return Err(SignalingError::Invalid(format!("the frame exceeds {} bytes", limits.max_frame_bytes)));
        }
        Ok(text)
    }

    /// Sends an envelope to every session of `to`, or to one; returns the id its `ack` or refusal will carry.
    pub fn send(
        &mut self,
        to: MemberId,
        to_session: Option<SessionId>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<u64, SignalingError> {
        self.ready()?;
        if to != self.member && !self.directory.contains_key(&to) {
            return Err(SignalingError::NotVisible(to));
        }
        let body_len = body.len();
        let body = Opaque::from_bytes(body).map_err(|e| SignalingError::Invalid(e.to_string()))?;
        let id = self.next_id;
        let text = self.check_size(&ClientFrame::Send { id, to, to_session, from: None, body }, body_len)?;
        self.next_id += 1;
        self.transmits.push_back(text);
        self.last_sent = now_ms;
        Ok(id)
    }

    /// Sends an MLS commit for the server to order (docs/protocol.md §8): `epoch` is the group's epoch the
    /// commit was made in, `to` the members to relay it to (never ourselves). What the server would refuse as
    /// `invalid_field` is refused here, unsent.
    pub fn commit(
        &mut self,
        group: &[u8],
        epoch: u64,
        to: &[MemberId],
        body: &[u8],
        now_ms: u64,
    ) -> Result<u64, SignalingError> {
        self.ready()?;
        if to.contains(&self.member) {
            return Err(SignalingError::Invalid("a commit's to may not name ourselves".into()));
        }
        if let Some(stranger) = to.iter().find(|m| !self.directory.contains_key(m)) {
            return Err(SignalingError::NotVisible(*stranger));
        }
        if epoch == u64::MAX {
            return Err(SignalingError::Invalid("epoch 2^64 - 1 has no successor".into()));
        }
        let group = GroupId::from_bytes(group).map_err(|e| SignalingError::Invalid(e.to_string()))?;
        let to = Recipients::new(to.to_vec()).map_err(|e| SignalingError::Invalid(e.to_string()))?;
        let body_len = body.len();
        let body = Opaque::from_bytes(body).map_err(|e| SignalingError::Invalid(e.to_string()))?;
        let id = self.next_id;
        let text = self.check_size(&ClientFrame::Commit { id, group, epoch, to, body }, body_len)?;
        self.next_id += 1;
        self.transmits.push_back(text);
        self.last_sent = now_ms;
        Ok(id)
    }

    /// Publishes one of our KeyPackages (public data) for members who add us while we are away (unanswered
    /// unless refused).
    pub fn publish_key_package(
        &mut self,
        key_package: &[u8],
        last_resort: bool,
        now_ms: u64,
    ) -> Result<(), SignalingError> {
        self.ready()?;
        if key_package.len() > peerbubble_proto::limits::MAX_KEY_PACKAGE_BYTES {
            return Err(SignalingError::Invalid("the KeyPackage is too large to publish".into()));
        }
        let key_package = Opaque::from_bytes(key_package).map_err(|e| SignalingError::Invalid(e.to_string()))?;
        self.queue(&ClientFrame::PublishKeyPackage { key_package, last_resort }, now_ms);
        Ok(())
    }

    /// Asks the bubble for one of `member`'s KeyPackages (to add it while it is away); returns the id its
    /// [`SignalEvent::ClaimedKeyPackage`] or refusal will carry.
    pub fn claim_key_package(&mut self, member: MemberId, now_ms: u64) -> Result<u64, SignalingError> {
        self.ready()?;
        if !self.directory.contains_key(&member) {
            return Err(SignalingError::NotVisible(member));
        }
        let id = self.take_id();
        self.queue(&ClientFrame::ClaimKeyPackage { id, member }, now_ms);
        Ok(id)
    }

    /// Sends a keep-alive now (they are also sent on their own, see [`Signaling::handle_timeout`]).
    pub fn ping(&mut self, now_ms: u64) -> Result<u64, SignalingError> {
        self.ready()?;
        let id = self.take_id();
        self.queue(&ClientFrame::Ping { id }, now_ms);
        Ok(id)
    }
}

/// Refusals after which reconnecting cannot help: the member needs (re-)enrollment or the code is wrong.
fn is_final(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::MemberRemoved | ErrorCode::UnknownMember | ErrorCode::BadSignature)
}
