//! The sans-IO core of one signaling connection: challenge, authentication, rate limits, frame validation and
//! need-to-know checks. It takes bytes and `now`, and returns [`Event`]s and its next deadline; sockets,
//! timers and routing live in `server.rs` and `hub.rs`. Also the [`CommitLedger`], the bubble's order of MLS
//! commits, which the hub consults under its lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use peerbubble_proto::{
    ClientFrame, CodecError, ErrorCode, GroupId, MemberId, Nonce, Opaque, Purpose, Recipients, ServerFrame, SessionId,
    auth_message, decode_client_frame,
};

use crate::directory::Directory;
pub use peerbubble_proto::limits::TokenBucket;

/// Nonces already answered, remembered for the challenge lifetime so that a replayed answer is recognised as
/// such (and refused) on any connection.
#[derive(Debug)]
pub struct NonceLedger {
    ttl: Duration,
    used: Mutex<HashMap<[u8; 32], Instant>>,
}

impl NonceLedger {
    /// Remembers nonces for `ttl` (the challenge lifetime; older answers are refused as expired anyway).
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, used: Mutex::new(HashMap::new()) }
    }

    /// Records `nonce` as answered; false if it already was.
    fn consume(&self, nonce: &Nonce, now: Instant) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if used.len() > 4096 {
            let ttl = self.ttl;
            used.retain(|_, at| now.saturating_duration_since(*at) <= ttl);
        }
        used.insert(*nonce.as_bytes(), now).is_none()
    }

    fn was_used(&self, nonce: &Nonce, now: Instant) -> bool {
        let used = self.used.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        used.get(nonce.as_bytes()).is_some_and(|at| now.saturating_duration_since(*at) <= self.ttl)
    }
}

/// The MLS delivery service's ordering (RFC 9420 §14): for each group, the next epoch a commit may be made in.
/// The first commit for an epoch wins and moves the group to the next one; any other is a conflict. An unknown
/// group accepts any epoch (a new group, or one this ledger forgot). Bounded: past `max_groups`, the group
/// least recently committed to is forgotten. Members check epochs themselves (MLS refuses a commit for another
/// epoch), so forgetting a group costs ordering for one commit, never a member's state.
#[derive(Debug)]
pub struct CommitLedger {
    max_groups: usize,
    /// Group -> (next epoch, when last committed to).
    groups: HashMap<GroupId, (u64, u64)>,
    /// When last committed to -> group: the eviction order.
    recency: BTreeMap<u64, GroupId>,
    clock: u64,
}

/// What the ledger says about a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The commit is the first for its epoch: relay it. The group is now at the next epoch.
    Accepted,
    /// The group is at `current`; the commit was made in another epoch. Relay nothing.
    Conflict {
        /// The epoch the next commit for the group must be made in.
        current: u64,
    },
}

impl CommitLedger {
    /// An empty ledger remembering at most `max_groups` groups (at least one).
    pub fn new(max_groups: usize) -> Self {
        Self { max_groups: max_groups.max(1), groups: HashMap::new(), recency: BTreeMap::new(), clock: 0 }
    }

    /// Decides a commit for `group` made in `epoch`, and records it when accepted.
    pub fn claim(&mut self, group: GroupId, epoch: u64) -> Claim {
        let Some(next) = epoch.checked_add(1) else {
            // The codec refuses this epoch; never accept what the ledger could not record.
            return Claim::Conflict { current: self.groups.get(&group).map_or(0, |(next, _)| *next) };
        };
        self.clock += 1;
        match self.groups.get_mut(&group) {
            Some((current, _)) if *current != epoch => Claim::Conflict { current: *current },
            Some((current, stamp)) => {
                self.recency.remove(&*stamp);
                (*current, *stamp) = (next, self.clock);
                self.recency.insert(self.clock, group);
                Claim::Accepted
            }
            None => {
                if self.groups.len() >= self.max_groups
                    && let Some((_, oldest)) = self.recency.pop_first()
                {
                    self.groups.remove(&oldest);
                }
                self.groups.insert(group, (next, self.clock));
                self.recency.insert(self.clock, group);
                Claim::Accepted
            }
        }
    }

    /// Groups remembered.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no group is remembered.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Frames above this size are refused (fatal).
    pub max_frame_bytes: usize,
    /// Per-connection rate.
    pub frames_per_second: u32,
    /// Per-connection burst; also how many refused frames in a row close the connection.
    pub frame_burst: u32,
    /// Silence after which the connection is closed.
    pub idle_timeout: Duration,
    /// Time to answer the challenge.
    pub challenge_ttl: Duration,
}

/// What the connection must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Send this frame to the client.
    Reply(ServerFrame),
    /// The client proved it holds `member`'s key; register the session (which may still be refused).
    Authenticated {
        /// The member.
        member: MemberId,
    },
    /// Relay `body` to `to`, already checked as visible to the sender.
    Relay {
        /// The client's `send` id.
        id: u64,
        /// Recipient member.
        to: MemberId,
        /// One session of it, or all.
        to_session: Option<SessionId>,
        /// The envelope.
        body: Opaque,
    },
    /// Order and relay a commit to `to`, every one of them already checked as visible to the sender.
    Commit {
        /// The client's `commit` id.
        id: u64,
        /// The MLS group.
        group: GroupId,
        /// The epoch the commit was made in.
        epoch: u64,
        /// Recipient members (not the sender).
        to: Recipients,
        /// The envelope.
        body: Opaque,
    },
    /// The member handled what its mailbox kept up to `upto`: delete it.
    Received {
        /// The highest `seq` handled.
        upto: u64,
    },
    /// Keep one of the member's own KeyPackages for others to claim.
    PublishKeyPackage {
        /// The KeyPackage (public data; its signature is the claimer's to check).
        key_package: Opaque,
        /// Whether it is the last-resort one.
        last_resort: bool,
    },
    /// Hand out a KeyPackage of `member`, already checked as visible to the claimer.
    ClaimKeyPackage {
        /// The client's `claim_key_package` id.
        id: u64,
        /// Whose KeyPackage.
        member: MemberId,
    },
    /// Refuse something: send an `error` frame; close the connection when `fatal`.
    Refuse {
        /// Why.
        code: ErrorCode,
        /// Explanation for the client (no content).
        message: String,
        /// The refused frame's id.
        id: Option<u64>,
        /// When to retry.
        retry_after: Option<Duration>,
        /// Close after sending.
        fatal: bool,
    },
}

impl Event {
    fn refuse(code: ErrorCode, message: impl Into<String>, id: Option<u64>) -> Self {
        Event::Refuse { code, message: message.into(), id, retry_after: None, fatal: code.is_fatal() }
    }
}

#[derive(Debug)]
enum State {
    Challenged { nonce: Nonce, issued: Instant },
    Authenticating { member: MemberId },
    Authenticated { member: MemberId, session: SessionId },
    Closed,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    bucket: TokenBucket,
    refused_in_a_row: u32,
    last_seen: Instant,
}

impl Session {
    /// A new connection: returns the session and the `challenge` to send first.
    pub fn new(config: SessionConfig, bubble: &str, nonce: Nonce, now: Instant) -> (Self, ServerFrame) {
        let challenge = ServerFrame::Challenge {
            protocol: peerbubble_proto::PROTOCOL_VERSION,
            bubble: bubble.to_owned(),
            nonce: nonce.clone(),
            expires_in_ms: config.challenge_ttl.as_millis() as u64,
        };
        let session = Self {
            config,
            state: State::Challenged { nonce, issued: now },
            bucket: TokenBucket::new(config.frames_per_second, config.frame_burst, now),
            refused_in_a_row: 0,
            last_seen: now,
        };
        (session, challenge)
    }

    /// The authenticated member and session, once registered.
    pub fn identity(&self) -> Option<(MemberId, SessionId)> {
        match self.state {
            State::Authenticated { member, session } => Some((member, session)),
            _ => None,
        }
    }

    /// The hub accepted the session.
    pub fn bind(&mut self, session: SessionId) {
        if let State::Authenticating { member } = self.state {
            self.state = State::Authenticated { member, session };
        }
    }

    /// The connection is closing; nothing more is processed.
    pub fn close(&mut self) {
        self.state = State::Closed;
    }

    /// When [`Session::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        let idle = self.last_seen + self.config.idle_timeout;
        match self.state {
            State::Challenged { issued, .. } => idle.min(issued + self.config.challenge_ttl),
            _ => idle,
        }
    }

    /// Checks the challenge lifetime and the idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Event> {
        if matches!(self.state, State::Closed) {
            return None;
        }
        if let State::Challenged { issued, .. } = self.state
            && now >= issued + self.config.challenge_ttl
        {
            return Some(Event::refuse(ErrorCode::ChallengeExpired, "the challenge was not answered in time", None));
        }
        if now >= self.last_seen + self.config.idle_timeout {
            return Some(Event::refuse(
                ErrorCode::IdleTimeout,
                "nothing received within the idle timeout; send ping",
                None,
            ));
        }
        None
    }

    /// A binary WebSocket message arrived.
    pub fn handle_binary(&mut self, len: usize, now: Instant) -> Vec<Event> {
        self.last_seen = now;
        if len > self.config.max_frame_bytes {
            return vec![Event::refuse(ErrorCode::FrameTooLarge, self.too_large(len), None)];
        }
        if let Some(limited) = self.rate_limit(now) {
            return vec![limited];
        }
        vec![Event::refuse(ErrorCode::BinaryFrame, "signaling v1 uses text frames only", None)]
    }

    /// A text WebSocket message arrived.
    pub fn handle_text(
        &mut self,
        bytes: &[u8],
        now: Instant,
        directory: &Directory,
        nonces: &NonceLedger,
    ) -> Vec<Event> {
        if matches!(self.state, State::Closed) {
            return Vec::new();
        }
        self.last_seen = now;
        if bytes.len() > self.config.max_frame_bytes {
            return vec![Event::refuse(ErrorCode::FrameTooLarge, self.too_large(bytes.len()), None)];
        }
        if let Some(limited) = self.rate_limit(now) {
            return vec![limited];
        }
        let frame = match decode_client_frame(bytes, self.config.max_frame_bytes) {
            Ok(frame) => frame,
            Err(CodecError::TooLarge { size, .. }) => {
                return vec![Event::refuse(ErrorCode::FrameTooLarge, self.too_large(size), None)];
            }
            Err(CodecError::Malformed { reason, field_error }) => {
                let code = if field_error { ErrorCode::InvalidField } else { ErrorCode::MalformedFrame };
                return vec![Event::refuse(code, reason, None)];
            }
        };
        match (&self.state, frame) {
            (State::Challenged { nonce, issued }, ClientFrame::Auth { public_key, nonce: answered, signature }) => {
                let (nonce, issued) = (nonce.clone(), *issued);
                if now >= issued + self.config.challenge_ttl {
                    return vec![Event::refuse(ErrorCode::ChallengeExpired, "the challenge expired; reconnect", None)];
                }
                if answered != nonce {
                    let code = if nonces.was_used(&answered, now) {
                        ErrorCode::ChallengeReplayed
                    } else {
                        ErrorCode::ChallengeMismatch
                    };
                    return vec![Event::refuse(code, "answer the nonce of this connection's challenge", None)];
                }
                if !nonces.consume(&nonce, now) {
                    return vec![Event::refuse(
                        ErrorCode::ChallengeReplayed,
                        "this challenge was already answered",
                        None,
                    )];
                }
                let member = public_key.member_id();
                if directory.member(&member).is_none_or(|m| m.public_key != public_key) {
                    return vec![Event::refuse(
                        ErrorCode::UnknownMember,
                        "this key is not a member of the bubble",
                        None,
                    )];
                }
                let message = auth_message(directory.bubble(), &nonce, &public_key);
                if public_key.verify(Purpose::SignalAuth, &message, &signature).is_err() {
                    return vec![Event::refuse(ErrorCode::BadSignature, "the signature does not verify", None)];
                }
                self.state = State::Authenticating { member };
                vec![Event::Authenticated { member }]
            }
            (State::Challenged { .. }, _) => {
                vec![Event::refuse(ErrorCode::NotAuthenticated, "answer the challenge with auth first", None)]
            }
            (State::Authenticating { .. } | State::Authenticated { .. }, ClientFrame::Auth { .. }) => {
                vec![Event::refuse(ErrorCode::AlreadyAuthenticated, "this session is already authenticated", None)]
            }
            (State::Authenticated { .. } | State::Authenticating { .. }, ClientFrame::Ping { id }) => {
                vec![Event::Reply(ServerFrame::Pong { id })]
            }
            (State::Authenticated { member, .. }, ClientFrame::Send { id, to, to_session, from, body }) => {
                if from.is_some_and(|from| from != *member) {
                    return vec![Event::refuse(ErrorCode::SpoofedSender, "from must be your own member id", Some(id))];
                }
                if !directory.sees(member, &to) {
                    return vec![Event::refuse(
                        ErrorCode::RecipientNotVisible,
                        "no such member in your directory",
                        Some(id),
                    )];
                }
                vec![Event::Relay { id, to, to_session, body }]
            }
            (State::Authenticated { member, .. }, ClientFrame::Commit { id, group, epoch, to, body }) => {
                if to.as_slice().contains(member) {
                    return vec![Event::refuse(
                        ErrorCode::InvalidField,
                        "a commit's to may not name the sender; it already has the new epoch",
                        Some(id),
                    )];
                }
                if let Some(at) = to.as_slice().iter().position(|m| !directory.sees(member, m)) {
                    return vec![Event::refuse(
                        ErrorCode::RecipientNotVisible,
                        format!("to[{at}] is not a member in your directory; nothing was sent"),
                        Some(id),
                    )];
                }
                vec![Event::Commit { id, group, epoch, to, body }]
            }
            (State::Authenticated { .. }, ClientFrame::Received { upto }) => vec![Event::Received { upto }],
            (State::Authenticated { .. }, ClientFrame::PublishKeyPackage { key_package, last_resort }) => {
                vec![Event::PublishKeyPackage { key_package, last_resort }]
            }
            (State::Authenticated { member: me, .. }, ClientFrame::ClaimKeyPackage { id, member }) => {
                if member == *me || !directory.sees(me, &member) {
                    return vec![Event::refuse(
                        ErrorCode::RecipientNotVisible,
                        "no such member in your directory",
                        Some(id),
                    )];
                }
                vec![Event::ClaimKeyPackage { id, member }]
            }
            (
                State::Authenticating { .. },
                ClientFrame::Send { id, .. } | ClientFrame::Commit { id, .. } | ClientFrame::ClaimKeyPackage { id, .. },
            ) => {
                vec![Event::refuse(ErrorCode::NotAuthenticated, "the session is not registered yet", Some(id))]
            }
            (State::Authenticating { .. }, ClientFrame::Received { .. } | ClientFrame::PublishKeyPackage { .. }) => {
                vec![Event::refuse(ErrorCode::NotAuthenticated, "the session is not registered yet", None)]
            }
            (State::Closed, _) => Vec::new(),
        }
    }

    fn too_large(&self, size: usize) -> String {
        format!("frame of {size} bytes exceeds max_frame_bytes={}", self.config.max_frame_bytes)
    }

    fn rate_limit(&mut self, now: Instant) -> Option<Event> {
        match self.bucket.take(now) {
            Ok(()) => {
                self.refused_in_a_row = 0;
                None
            }
            Err(retry) => {
                self.refused_in_a_row += 1;
                // A client that keeps sending while told to wait is flooding: close it.
                let fatal = self.refused_in_a_row > self.config.frame_burst;
                Some(Event::Refuse {
                    code: ErrorCode::RateLimited,
                    message: if fatal { "flooding: closing the connection".into() } else { "too many frames".into() },
                    id: None,
                    retry_after: Some(retry.max(Duration::from_millis(1))),
                    fatal,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerbubble_proto::{IdentityKey, encode_frame};

    const CONFIG: SessionConfig = SessionConfig {
        max_frame_bytes: 4096,
        frames_per_second: 10,
        frame_burst: 5,
        idle_timeout: Duration::from_secs(60),
        challenge_ttl: Duration::from_secs(10),
    };

    fn key(seed: u8) -> IdentityKey {
        IdentityKey::from_seed(&[seed; 32])
    }

    fn directory() -> Directory {
        let yaml = format!(
            "bubble: b\ncategories: [{{id: c}}, {{id: other}}]\nmembers:\n  - {{public_key: {}, display_name: A, categories: [c]}}\n  - {{public_key: {}, display_name: B, categories: [c]}}\n  - {{public_key: {}, display_name: C, categories: [other]}}\n",
            key(1).public_key(),
            key(2).public_key(),
            key(3).public_key()
        );
        crate::directory::from_yaml(yaml.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn auth(key: &IdentityKey, bubble: &str, nonce: &Nonce) -> Vec<u8> {
        let message = auth_message(bubble, nonce, &key.public_key());
        let frame = ClientFrame::Auth {
            public_key: key.public_key(),
            nonce: nonce.clone(),
            signature: key.sign(Purpose::SignalAuth, &message),
        };
        encode_frame(&frame).into_bytes()
    }

    fn code(events: &[Event]) -> Option<(ErrorCode, bool)> {
        match events {
            [Event::Refuse { code, fatal, .. }] => Some((*code, *fatal)),
            _ => None,
        }
    }

    fn authenticated(now: Instant, d: &Directory, ledger: &NonceLedger) -> Session {
        authenticated_with(CONFIG, now, d, ledger)
    }

    fn authenticated_with(config: SessionConfig, now: Instant, d: &Directory, ledger: &NonceLedger) -> Session {
        let nonce = Nonce::from_bytes([9; 32]);
        let (mut s, _) = Session::new(config, "b", nonce.clone(), now);
        let events = s.handle_text(&auth(&key(1), "b", &nonce), now, d, ledger);
        assert_eq!(events, vec![Event::Authenticated { member: key(1).public_key().member_id() }]);
        s.bind(SessionId(1));
        s
    }

    #[test]
    fn good_auth_then_relay_only_to_visible() {
        let (now, d, ledger) = (Instant::now(), directory(), NonceLedger::new(CONFIG.challenge_ttl));
        let mut s = authenticated(now, &d, &ledger);
        let body = Opaque::from_bytes(b"x").unwrap_or_else(|e| panic!("{e}"));
        let send = |to: MemberId, from: Option<MemberId>| {
            encode_frame(&ClientFrame::Send { id: 7, to, to_session: None, from, body: body.clone() }).into_bytes()
        };
        let b = key(2).public_key().member_id();
        assert!(matches!(s.handle_text(&send(b, None), now, &d, &ledger).as_slice(), [Event::Relay { id: 7, .. }]));
        let c = key(3).public_key().member_id();
        assert_eq!(
            code(&s.handle_text(&send(c, None), now, &d, &ledger)),
            Some((ErrorCode::RecipientNotVisible, false))
        );
        assert_eq!(code(&s.handle_text(&send(b, Some(b)), now, &d, &ledger)), Some((ErrorCode::SpoofedSender, false)));
    }

    fn group(n: u8) -> GroupId {
        GroupId::from_bytes(&[n; 16]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn commit_frame(id: u64, epoch: u64, to: &[MemberId]) -> Vec<u8> {
        let to: Vec<String> = to.iter().map(|m| format!("\"{m}\"")).collect();
        format!(
            r#"{{"type":"commit","id":{id},"group":"{}","epoch":{epoch},"to":[{}],"body":"c2VhbGVk"}}"#,
            String::from(group(1)),
            to.join(",")
        )
        .into_bytes()
    }

    fn refusal(events: &[Event]) -> Option<(ErrorCode, Option<u64>, &str)> {
        match events {
            [Event::Refuse { code, id, message, .. }] => Some((*code, *id, message.as_str())),
            _ => None,
        }
    }

    #[test]
    fn commit_to_visible_members_is_passed_on_for_ordering() {
        let (now, d, ledger) = (Instant::now(), directory(), NonceLedger::new(CONFIG.challenge_ttl));
        let mut s = authenticated(now, &d, &ledger);
        let b = key(2).public_key().member_id();
        match s.handle_text(&commit_frame(3, 7, &[b]), now, &d, &ledger).as_slice() {
            [Event::Commit { id: 3, group: g, epoch: 7, to, body }] => {
                assert_eq!((*g, to.as_slice(), body.to_bytes()), (group(1), &[b][..], b"sealed".to_vec()));
            }
            other => panic!("{other:?}"),
        }
        // Nobody to tell: still ordered (a new group's first commit).
        assert!(matches!(
            s.handle_text(&commit_frame(4, 0, &[]), now, &d, &ledger).as_slice(),
            [Event::Commit { id: 4, .. }]
        ));
    }

    #[test]
    fn commit_refusals_name_the_frame_and_change_nothing() {
        let (now, d, ledger) = (Instant::now(), directory(), NonceLedger::new(CONFIG.challenge_ttl));
        let config = SessionConfig { max_frame_bytes: 64 * 1024, frame_burst: 50, ..CONFIG };
        let mut s = authenticated_with(config, now, &d, &ledger);
        let (a, b, c) =
            (key(1).public_key().member_id(), key(2).public_key().member_id(), key(3).public_key().member_id());
        let mut handle = |frame: Vec<u8>| s.handle_text(&frame, now, &d, &ledger);

        // Cat shares no category with Ann: the whole commit is refused, with the frame id and the position.
        let events = handle(commit_frame(5, 0, &[b, c]));
        assert_eq!(refusal(&events).map(|(c, i, _)| (c, i)), Some((ErrorCode::RecipientNotVisible, Some(5))));
        assert!(refusal(&events).is_some_and(|(_, _, m)| m.contains("to[1]")));
        let unknown = key(9).public_key().member_id();
        assert_eq!(
            refusal(&handle(commit_frame(6, 0, &[unknown]))).map(|(c, i, _)| (c, i)),
            Some((ErrorCode::RecipientNotVisible, Some(6)))
        );
        // The sender itself is not a recipient.
        assert_eq!(
            refusal(&handle(commit_frame(7, 0, &[b, a]))).map(|(c, i, _)| (c, i)),
            Some((ErrorCode::InvalidField, Some(7)))
        );
        // Duplicates and too many recipients: refused by the codec (not decoded, so no id).
        assert_eq!(
            refusal(&handle(commit_frame(8, 0, &[b, b]))).map(|(c, i, _)| (c, i)),
            Some((ErrorCode::InvalidField, None))
        );
        let many: Vec<MemberId> = (0..=peerbubble_proto::limits::MAX_COMMIT_RECIPIENTS as u16)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..2].copy_from_slice(&i.to_be_bytes());
                IdentityKey::from_seed(&seed).public_key().member_id()
            })
            .collect();
        let events = handle(commit_frame(9, 0, &many));
        assert_eq!(refusal(&events).map(|(c, i, _)| (c, i)), Some((ErrorCode::InvalidField, None)));
        assert!(refusal(&events).is_some_and(|(_, _, m)| m.contains("at most 256")), "{events:?}");
    }

    #[test]
    fn commit_and_send_are_decoded_strictly() {
        let (now, d, ledger) = (Instant::now(), directory(), NonceLedger::new(CONFIG.challenge_ttl));
        let mut s = authenticated_with(SessionConfig { frame_burst: 50, ..CONFIG }, now, &d, &ledger);
        let b = key(2).public_key().member_id();
        for (frame, code) in [
            // `to` is a list for commit and one member id for send.
            (format!(r#"{{"type":"send","id":1,"to":["{b}"],"body":"c2VhbGVk"}}"#), ErrorCode::MalformedFrame),
            (
                format!(
                    r#"{{"type":"commit","id":1,"group":"{}","epoch":0,"to":"{b}","body":"c2VhbGVk"}}"#,
                    String::from(group(1))
                ),
                ErrorCode::MalformedFrame,
            ),
            (format!(r#"{{"type":"send","id":1,"to":"{b}","epoch":0,"body":"c2VhbGVk"}}"#), ErrorCode::MalformedFrame),
            (
                format!(
                    r#"{{"type":"commit","id":1,"group":"{}","epoch":0,"to":[],"to_session":1,"body":"c2VhbGVk"}}"#,
                    String::from(group(1))
                ),
                ErrorCode::MalformedFrame,
            ),
            (
                r#"{"type":"commit","id":1,"group":"AAAA","epoch":0,"to":[],"body":"c2VhbGVk"}"#.to_owned(),
                ErrorCode::InvalidField,
            ),
        ] {
            assert_eq!(
                refusal(&s.handle_text(frame.as_bytes(), now, &d, &ledger)).map(|(c, i, _)| (c, i)),
                Some((code, None)),
                "{frame}"
            );
        }
        // Before authentication a commit is refused like any other frame.
        let (mut fresh, _) = Session::new(CONFIG, "b", Nonce::from_bytes([5; 32]), now);
        assert_eq!(
            code(&fresh.handle_text(&commit_frame(1, 0, &[b]), now, &d, &ledger)),
            Some((ErrorCode::NotAuthenticated, true))
        );
    }

    #[test]
    fn ledger_orders_commits_first_wins() {
        let mut ledger = CommitLedger::new(10);
        // Unknown groups accept any epoch.
        assert_eq!(ledger.claim(group(1), 0), Claim::Accepted);
        assert_eq!(ledger.claim(group(2), 41), Claim::Accepted);
        // The race: a second commit for the same epoch loses, and learns where the group is.
        assert_eq!(ledger.claim(group(1), 0), Claim::Conflict { current: 1 });
        assert_eq!(ledger.claim(group(1), 1), Claim::Accepted);
        // Stale and future epochs are conflicts too; a conflict moves nothing.
        assert_eq!(ledger.claim(group(1), 0), Claim::Conflict { current: 2 });
        assert_eq!(ledger.claim(group(1), 7), Claim::Conflict { current: 2 });
        assert_eq!(ledger.claim(group(1), 2), Claim::Accepted);
        assert_eq!(ledger.claim(group(2), 42), Claim::Accepted);
        assert_eq!(ledger.len(), 2);
        // Never accepts an epoch it could not move past.
        assert_eq!(ledger.claim(group(3), u64::MAX), Claim::Conflict { current: 0 });
        assert_eq!(ledger.len(), 2);
    }

    #[test]
    fn ledger_forgets_the_least_recently_committed_group() {
        let mut ledger = CommitLedger::new(2);
        assert_eq!(ledger.claim(group(1), 0), Claim::Accepted);
        assert_eq!(ledger.claim(group(2), 0), Claim::Accepted);
        // Group 1 is committed to again (and group 2 only conflicts, which is not a commit): 2 is the oldest.
        assert_eq!(ledger.claim(group(1), 1), Claim::Accepted);
        assert_eq!(ledger.claim(group(2), 5), Claim::Conflict { current: 1 });
        assert_eq!(ledger.claim(group(3), 0), Claim::Accepted);
        assert_eq!(ledger.len(), 2);
        // Group 1 is still ordered; group 2 was forgotten: its next commit wins whatever its epoch, and makes
        // room by forgetting the now oldest, group 1.
        assert_eq!(ledger.claim(group(1), 1), Claim::Conflict { current: 2 });
        assert_eq!(ledger.claim(group(2), 5), Claim::Accepted);
        assert_eq!(ledger.claim(group(3), 0), Claim::Conflict { current: 1 });
        assert_eq!(ledger.claim(group(1), 0), Claim::Accepted, "group 1 was forgotten in turn");
    }

    #[test]
    fn ledger_matches_a_model_while_within_its_bound() {
        // A deterministic pseudo-random walk: commits by several members racing on a few groups.
        let mut ledger = CommitLedger::new(1000);
        let mut model: HashMap<GroupId, u64> = HashMap::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let g = group((state % 7) as u8);
            let current = model.get(&g).copied();
            // Mostly the right epoch, sometimes a stale or a future one.
            let epoch = match (current, (state >> 8) % 4) {
                (None, _) => (state >> 16) % 5,
                (Some(c), 0) => c.saturating_sub(1),
                (Some(c), 1) => c + 1,
                (Some(c), _) => c,
            };
            let expected = match current {
                Some(c) if c != epoch => Claim::Conflict { current: c },
                _ => {
                    model.insert(g, epoch + 1);
                    Claim::Accepted
                }
            };
            assert_eq!(ledger.claim(g, epoch), expected);
        }
        assert_eq!(ledger.len(), model.len());
        // Past the bound it stays bounded.
        let mut small = CommitLedger::new(3);
        for n in 0..50u8 {
            small.claim(group(n), 0);
            assert!(small.len() <= 3);
        }
    }

    #[test]
    fn auth_failures_have_their_codes() {
        let (now, d) = (Instant::now(), directory());
        let nonce = Nonce::from_bytes([1; 32]);
        // Each attempt on a fresh connection with a fresh ledger: an answered nonce is burnt.
        let attempt = |answer: Vec<u8>, at: Instant| {
            let ledger = NonceLedger::new(CONFIG.challenge_ttl);
            code(&Session::new(CONFIG, "b", nonce.clone(), now).0.handle_text(&answer, at, &d, &ledger))
        };
        assert_eq!(attempt(auth(&key(4), "b", &nonce), now), Some((ErrorCode::UnknownMember, true)));
        assert_eq!(
            attempt(auth(&key(1), "x", &nonce), now),
            Some((ErrorCode::BadSignature, true)),
            "signed for another bubble"
        );
        let other = Nonce::from_bytes([2; 32]);
        assert_eq!(attempt(auth(&key(1), "b", &other), now), Some((ErrorCode::ChallengeMismatch, true)));
        let late = now + CONFIG.challenge_ttl;
        assert_eq!(attempt(auth(&key(1), "b", &nonce), late), Some((ErrorCode::ChallengeExpired, true)));
        assert_eq!(attempt(br#"{"type":"ping","id":1}"#.to_vec(), now), Some((ErrorCode::NotAuthenticated, true)));
        assert_eq!(attempt(auth(&key(1), "b", &nonce), now), None, "the good answer passes");
    }

    #[test]
    fn replayed_answer_is_recognised() {
        let (now, d, ledger) = (Instant::now(), directory(), NonceLedger::new(CONFIG.challenge_ttl));
        let nonce = Nonce::from_bytes([9; 32]);
        let answer = auth(&key(1), "b", &nonce);
        let _first = authenticated(now, &d, &ledger);
        let (mut second, _) = Session::new(CONFIG, "b", Nonce::from_bytes([8; 32]), now);
        assert_eq!(code(&second.handle_text(&answer, now, &d, &ledger)), Some((ErrorCode::ChallengeReplayed, true)));
    }

    #[test]
    fn timeouts() {
        let (now, d, ledger) = (Instant::now(), directory(), NonceLedger::new(CONFIG.challenge_ttl));
        let (mut s, _) = Session::new(CONFIG, "b", Nonce::from_bytes([1; 32]), now);
        assert_eq!(s.poll_timeout(), now + CONFIG.challenge_ttl);
        assert_eq!(s.handle_timeout(now + Duration::from_secs(1)), None);
        let expired = s.handle_timeout(now + CONFIG.challenge_ttl);
        assert_eq!(code(&expired.into_iter().collect::<Vec<_>>()), Some((ErrorCode::ChallengeExpired, true)));
        let mut s = authenticated(now, &d, &ledger);
        assert_eq!(s.poll_timeout(), now + CONFIG.idle_timeout);
        let idle = s.handle_timeout(now + CONFIG.idle_timeout);
        assert_eq!(code(&idle.into_iter().collect::<Vec<_>>()), Some((ErrorCode::IdleTimeout, true)));
    }

    #[test]
    fn flooding_is_limited_then_closed() {
        let (now, d, ledger) = (Instant::now(), directory(), NonceLedger::new(CONFIG.challenge_ttl));
        let mut s = authenticated(now, &d, &ledger);
        let ping = br#"{"type":"ping","id":1}"#;
        // The auth frame took one token of the burst.
        for _ in 1..CONFIG.frame_burst {
            assert!(matches!(s.handle_text(ping, now, &d, &ledger).as_slice(), [Event::Reply(_)]));
        }
        for _ in 0..CONFIG.frame_burst {
            assert_eq!(code(&s.handle_text(ping, now, &d, &ledger)), Some((ErrorCode::RateLimited, false)));
        }
        assert_eq!(code(&s.handle_text(ping, now, &d, &ledger)), Some((ErrorCode::RateLimited, true)));
        // After waiting, a fresh connection's bucket refills at the configured rate.
        let mut s = authenticated(now, &d, &NonceLedger::new(CONFIG.challenge_ttl));
        for _ in 1..CONFIG.frame_burst {
            s.handle_text(ping, now, &d, &ledger);
        }
        let later = now + Duration::from_millis(110);
        assert!(matches!(s.handle_text(ping, later, &d, &ledger).as_slice(), [Event::Reply(_)]));
    }

    #[test]
    fn oversized_and_binary_frames() {
        let (now, d, ledger) = (Instant::now(), directory(), NonceLedger::new(CONFIG.challenge_ttl));
        let mut s = authenticated(now, &d, &ledger);
        assert_eq!(code(&s.handle_binary(10, now)), Some((ErrorCode::BinaryFrame, false)));
        let big = vec![b' '; CONFIG.max_frame_bytes + 1];
        assert_eq!(code(&s.handle_text(&big, now, &d, &ledger)), Some((ErrorCode::FrameTooLarge, true)));
    }
}
