//! The sans-IO core of one signaling connection: challenge, authentication, rate limits, frame validation and
//! need-to-know checks. It takes bytes and `now`, and returns [`Event`]s and its next deadline; sockets,
//! timers and routing live in `server.rs` and `hub.rs`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use peerbubble_proto::{
    ClientFrame, CodecError, ErrorCode, MemberId, Nonce, Opaque, Purpose, ServerFrame, SessionId, auth_message,
    decode_client_frame,
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
            (State::Authenticating { .. }, ClientFrame::Send { id, .. }) => {
                vec![Event::refuse(ErrorCode::NotAuthenticated, "the session is not registered yet", Some(id))]
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
        Directory::from_yaml(yaml.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
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
        let nonce = Nonce::from_bytes([9; 32]);
        let (mut s, _) = Session::new(CONFIG, "b", nonce.clone(), now);
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
