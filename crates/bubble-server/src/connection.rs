//! One signaling connection, between the sans-IO [`Session`] and the [`Hub`]: it turns the session's events
//! into hub calls and outbound frames, and owns the session's registration in the hub. IO-free (the socket
//! loop in `server.rs` only feeds it [`Input`]s and writes what it queues), so that the tests drive exactly
//! the code that runs.
//!
//! A session ends in one place: its [`Registration`] is dropped, whether the server closed it (any fatal
//! refusal, idle timeout, slow consumer, removal, shutdown) or the client went away, and dropping it
//! unregisters the session from the hub, tells those who see the member it went offline when it was the last
//! session, frees the slot and updates the gauges, exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use peerbubble_proto::{ErrorCode, GroupId, MemberId, Nonce, Opaque, Recipients, ServerFrame, SessionId, encode_frame};

use crate::cluster::{Absent, Answer, CommitJob, Job};
use crate::directory::Directory;
use crate::hub::{Hub, Kill, Routed, SessionHandle, SliceHash};
use crate::mailbox::Full;
use crate::session::{Event, Session, TokenBucket};
use crate::shared_mailbox::{Keep, KeepDone};
use crate::state::AppState;

/// Close code for a text message that is not UTF-8 (RFC 6455 §7.4.1: inconsistent data).
pub(crate) const CLOSE_INVALID_UTF8: u16 = 1007;

/// What happened on the connection.
#[derive(Debug)]
pub(crate) enum Input<'b> {
    /// A text message.
    Text(&'b [u8]),
    /// A binary message of this length.
    Binary(usize),
    /// A text message that is not valid UTF-8: the connection fails (RFC 6455 §8.1).
    InvalidUtf8,
    /// A message the WebSocket layer cut off (over twice `max_frame_bytes`).
    TooLong,
    /// The session's deadline ([`Connection::poll_timeout`]) passed.
    Timeout,
    /// Something outside the connection closes it (slow consumer, stalled write).
    Kill(Kill),
    /// The bubble's directory changed.
    DirectoryChanged(Arc<Directory>),
    /// Time to send fresh TURN credentials.
    IceRefresh,
    /// The server is shutting down.
    Shutdown,
}

/// Where the connection loop is going next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// A session registered in the hub. Dropping it is the one way a session ends.
struct Registration<'a> {
    hub: &'a Hub,
    member: MemberId,
    session: SessionId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.hub.unregister(self.member, self.session);
        tracing::info!(member = %self.member, session = self.session.0, "session closed");
    }
}

pub(crate) struct Connection<'a> {
    state: &'a AppState,
    session: Session,
    handle: SessionHandle,
    directory: Arc<Directory>,
    registration: Option<Registration<'a>>,
    closed: bool,
    /// The slice last sent, to send directory updates only on real change.
    sent_slice: SliceHash,
    /// The Host the client connected to, for TURN URLs when no public host is configured.
    host: Option<String>,
    /// When to send fresh TURN credentials; taken by the connection loop to re-arm its timer.
    pub ice_refresh: Option<Instant>,
    /// KeyPackage claims: each takes a one-time KeyPackage of another member, so a member may not drain them
    /// all (a group of many absent members is still made at once, from the burst).
    claims: TokenBucket,
}

/// KeyPackage claims per second on one connection, sustained, and in a burst.
const CLAIMS_PER_SECOND: u32 = 1;
const CLAIM_BURST: u32 = 32;

/// What a refused `send` tells the sender, and when to retry.
pub(crate) fn refusal(code: ErrorCode) -> (&'static str, Option<Duration>) {
    match code {
        ErrorCode::RecipientCongested => ("the recipient is not reading fast enough", Some(Duration::from_millis(250))),
        ErrorCode::MailboxFull => {
            ("the recipient is away and what the bubble keeps for it is full; nothing was kept", None)
        }
        _ => ("the recipient has no session", None),
    }
}

pub(crate) fn error_frame(code: ErrorCode, message: &str, id: Option<u64>, retry_after: Option<Duration>) -> Utf8Bytes {
    Utf8Bytes::from(encode_frame(&ServerFrame::Error {
        code,
        message: message.to_owned(),
        id,
        retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
    }))
}

impl<'a> Connection<'a> {
    /// A new connection: queues the challenge.
    pub fn new(
        state: &'a AppState,
        handle: SessionHandle,
        directory: Arc<Directory>,
        host: Option<String>,
        nonce: Nonce,
        now: Instant,
    ) -> Self {
        let (session, challenge) = Session::new(state.session_config, directory.bubble(), nonce, now);
        handle.force_send(Utf8Bytes::from(encode_frame(&challenge)));
        Self {
            state,
            session,
            handle,
            directory,
            registration: None,
            closed: false,
            sent_slice: 0,
            host,
            ice_refresh: None,
            claims: TokenBucket::new(CLAIMS_PER_SECOND, CLAIM_BURST, now),
        }
    }

    /// When [`Input::Timeout`] is due.
    pub fn poll_timeout(&self) -> Instant {
        self.session.poll_timeout()
    }

    /// Handles one input; after [`Flow::Close`] nothing more is processed.
    pub fn input(&mut self, input: Input<'_>, now: Instant) -> Flow {
        if self.closed {
            return Flow::Close;
        }
        match input {
            Input::Text(bytes) => {
                let events = self.session.handle_text(bytes, now, &self.directory, &self.state.nonces);
                self.handle(events, now)
            }
            Input::Binary(len) => {
                let events = self.session.handle_binary(len, now);
                self.handle(events, now)
            }
            Input::InvalidUtf8 => {
                self.state.metrics.frame_error("invalid_utf8");
                self.close_with(
                    ErrorCode::MalformedFrame,
                    "a text message must be valid UTF-8",
                    None,
                    CLOSE_INVALID_UTF8,
                    "invalid_utf8",
                )
            }
            Input::TooLong => {
                self.state.metrics.frame_error("frame_too_large");
                self.close(ErrorCode::FrameTooLarge, "frame exceeds max_frame_bytes", None)
            }
            Input::Timeout => match self.session.handle_timeout(now) {
                Some(event) => self.handle(vec![event], now),
                None => Flow::Continue,
            },
            Input::Kill(kill) => self.close(kill.code, kill.message, None),
            Input::DirectoryChanged(directory) => self.directory_changed(directory),
            Input::IceRefresh => {
                self.refresh_ice();
                Flow::Continue
            }
            Input::Shutdown => {
                // Spread reconnections so that a restart is not a thundering herd.
                let jitter = 500 + (self.handle.id.0 * 7919) % 2500;
                self.close(
                    ErrorCode::ServerShutdown,
                    "the server is restarting; reconnect",
                    Some(Duration::from_millis(jitter)),
                )
            }
        }
    }

    fn close(&mut self, code: ErrorCode, message: &str, retry_after: Option<Duration>) -> Flow {
        let reason = code.as_str();
        self.close_with(code, message, retry_after, code.close_code(), reason)
    }

    /// Ends the session (unregistered at once, not when the socket is done) and queues the last `error` frame
    /// and the close frame.
    fn close_with(
        &mut self,
        code: ErrorCode,
        message: &str,
        retry_after: Option<Duration>,
        close_code: u16,
        reason: &'static str,
    ) -> Flow {
        self.state.metrics.disconnect(reason);
        if code.is_security_event() {
            let event = code.as_str();
            self.state.metrics.security_event(event);
            let member = self.session.identity().map(|(m, _)| m.to_string());
            tracing::warn!(target: "peerbubble::security", event, member = member.as_deref(), "connection closed");
        }
        self.closed = true;
        self.session.close();
        self.registration = None;
        self.handle.close(error_frame(code, message, None, retry_after), close_code, reason);
        Flow::Close
    }

    fn handle(&mut self, events: Vec<Event>, now: Instant) -> Flow {
        for event in events {
            let flow = match event {
                Event::Reply(frame) => {
                    self.handle.send_or_kill(&Utf8Bytes::from(encode_frame(&frame)));
                    Flow::Continue
                }
                Event::Authenticated { member } => self.authenticated(member),
                Event::Relay { id, to, to_session, body } => self.relay(id, to, to_session, body, now),
                Event::Commit { id, group, epoch, to, body } => self.commit(id, group, epoch, &to, &body, now),
                Event::Received { upto } => {
                    if let (Some(mailbox), Some((member, _))) = (self.state.hub.mailbox(), self.session.identity()) {
                        mailbox.received(member, upto);
                        self.state.metrics.mailbox_counts(mailbox.counts());
                    }
                    if let (Some(mailbox), Some((member, _))) =
                        (self.state.hub.shared_mailbox(), self.session.identity())
                    {
                        mailbox.received(member, upto);
                    }
                    Flow::Continue
                }
                Event::PublishKeyPackage { key_package, last_resort } => {
                    self.publish_key_package(key_package, last_resort);
                    Flow::Continue
                }
                Event::ClaimKeyPackage { id, member } => {
                    self.claim_key_package(id, member, now);
                    Flow::Continue
                }
                Event::Refuse { code, message, id, retry_after, fatal } => {
                    if fatal {
                        if code.is_frame_error() {
                            self.state.metrics.frame_error(code.as_str());
                        }
                        if code.is_auth_failure() {
                            self.state.metrics.auth_failure(code.as_str());
                        }
                        return self.close(code, &message, retry_after);
                    }
                    self.refuse(code, &message, id, retry_after);
                    Flow::Continue
                }
            };
            if flow == Flow::Close {
                return flow;
            }
        }
        Flow::Continue
    }

    fn publish_key_package(&mut self, key_package: Opaque, last_resort: bool) {
        if let (Some(mailbox), Some((member, _))) = (self.state.hub.shared_mailbox(), self.session.identity()) {
            return mailbox.publish_key_package(member, key_package, last_resort, self.handle.clone());
        }
        let (Some(mailbox), Some((member, _))) = (self.state.hub.mailbox(), self.session.identity()) else {
            return self.refuse(
                ErrorCode::InvalidField,
                "this bubble keeps no KeyPackages (it keeps nothing for absent members)",
                None,
                None,
            );
        };
        match mailbox.publish_key_package(member, key_package, last_resort) {
            Ok(()) => self.state.metrics.mailbox_counts(mailbox.counts()),
            Err(Full) => self.refuse(
                ErrorCode::MailboxFull,
                "the bubble keeps as much as it can for absent members; the KeyPackage was not kept",
                None,
                None,
            ),
        }
    }

    fn claim_key_package(&mut self, id: u64, member: MemberId, now: Instant) {
        if let Err(retry) = self.claims.take(now) {
            return self.refuse(
                ErrorCode::RateLimited,
                "too many KeyPackage claims",
                Some(id),
                Some(retry.max(Duration::from_millis(1))),
            );
        }
        if let Some(mailbox) = self.state.hub.shared_mailbox() {
            return mailbox.claim_key_package(id, member, self.handle.clone());
        }
        let key_package = self.state.hub.mailbox().and_then(|mailbox| {
            let kp = mailbox.claim_key_package(member);
            self.state.metrics.mailbox_counts(mailbox.counts());
            kp
        });
        let answer = ServerFrame::ClaimedKeyPackage { id, member, key_package };
        self.handle.send_or_kill(&Utf8Bytes::from(encode_frame(&answer)));
    }

    fn refuse(&mut self, code: ErrorCode, message: &str, id: Option<u64>, retry_after: Option<Duration>) {
        if code.is_frame_error() {
            self.state.metrics.frame_error(code.as_str());
        }
        if code.is_security_event() {
            let event = code.as_str();
            self.state.metrics.security_event(event);
            // A flood is refused frame by frame: counted each time, logged once, when it closes the connection,
            // so that a flooding client cannot flood the logs too.
            if code != ErrorCode::RateLimited {
                let (member, session) =
                    self.session.identity().map_or((None, None), |(m, s)| (Some(m.to_string()), Some(s.0)));
                tracing::warn!(target: "peerbubble::security", event, member = member.as_deref(), session, "refused");
            }
        }
        self.handle.send_or_kill(&error_frame(code, message, id, retry_after));
    }

    fn authenticated(&mut self, member: MemberId) -> Flow {
        let Some(entry) = self.directory.member(&member) else {
            return self.close(ErrorCode::UnknownMember, "this key is not a member of the bubble", None);
        };
        let display_name = entry.display_name.clone();
        let limits = self.state.config.limits();
        let (ice_servers, ice_expires_in_ms) = match self.ice_servers(member) {
            Some((servers, ttl)) => (servers, Some(ttl.as_millis() as u64)),
            None => (Vec::new(), None),
        };
        let policy = *self.directory.policy();
        let mailbox_ttl_ms = self.state.hub.mailbox_ttl().map(|ttl| ttl.as_millis() as u64);
        let welcome = |session| ServerFrame::Welcome {
            member,
            session,
            display_name,
            ice_servers,
            ice_expires_in_ms,
            limits,
            policy,
            mailbox_ttl_ms,
        };
        match self.state.hub.register(member, self.handle.clone(), welcome) {
            Ok((session, sent_slice)) => {
                self.registration = Some(Registration { hub: &self.state.hub, member, session });
                self.handle.id = session;
                self.session.bind(session);
                self.sent_slice = sent_slice;
                tracing::info!(%member, session = session.0, "session opened");
                Flow::Continue
            }
            Err(ErrorCode::TooManySessions) => {
                self.state.metrics.auth_failure(ErrorCode::TooManySessions.as_str());
                self.close(
                    ErrorCode::TooManySessions,
                    "this member already has the most sessions allowed; close one",
                    None,
                )
            }
            Err(code) => self.close(code, "you are not a member of this bubble any more", None),
        }
    }

    /// TURN credentials for `member`, and arms their refresh at two thirds of their life.
    fn ice_servers(&mut self, member: MemberId) -> Option<(Vec<peerbubble_proto::IceServer>, Duration)> {
        let turn = self.state.turn.as_ref()?;
        let (servers, ttl) = turn.ice_servers(&member.to_string(), self.host.as_deref())?;
        self.ice_refresh = Some(Instant::now() + ttl * 2 / 3);
        Some((servers, ttl))
    }

    fn refresh_ice(&mut self) {
        let Some((member, _)) = self.session.identity() else { return };
        if let Some((ice_servers, ttl)) = self.ice_servers(member) {
            let frame = ServerFrame::IceServers { ice_servers, expires_in_ms: ttl.as_millis() as u64 };
            self.handle.send_or_kill(&Utf8Bytes::from(encode_frame(&frame)));
        }
    }

    fn relay(&mut self, id: u64, to: MemberId, to_session: Option<SessionId>, body: Opaque, now: Instant) -> Flow {
        let Some((member, session)) = self.session.identity() else { return Flow::Continue };
        if let Err(retry) = self.state.hub.member_allow(member, 1, now) {
            self.state.metrics.refused("rate_limited");
            self.refuse(ErrorCode::RateLimited, "this member sends too many frames", Some(id), Some(retry));
            return Flow::Continue;
        }
        match self.state.hub.route(member, session, to, to_session, &body) {
            Ok(routed) if !routed.remote.is_empty() => {
                if let Some(link) = &self.state.cluster {
                    let text = Utf8Bytes::from(peerbubble_proto::encode_deliver(&member, session, &body));
                    // A named session cannot wait; the member's every session can, if it left meanwhile.
                    let keep = to_session.is_none().then_some(Absent { from: member, from_session: session, to, body });
                    let reply = Answer { handle: self.handle.clone(), id, commit: false, keep };
                    link.submit(Job::Forward { reply, text, to_session, routed });
                }
            }
            Ok(routed) if !routed.keep.is_empty() => {
                if let Some(mailbox) = self.state.hub.shared_mailbox() {
                    let done = KeepDone::Send { handle: self.handle.clone(), id };
                    let keep = Keep { from: member, from_session: session, body, group: None, to: routed.keep, done };
                    mailbox.keep(keep);
                }
            }
            Ok(routed) => self.ack(id, &routed),
            Err(code) => {
                self.state.metrics.refused(code.as_str());
                let (message, retry) = refusal(code);
                self.refuse(code, message, Some(id), retry);
            }
        }
        Flow::Continue
    }

    fn commit(&mut self, id: u64, group: GroupId, epoch: u64, to: &Recipients, body: &Opaque, now: Instant) -> Flow {
        let Some((member, session)) = self.session.identity() else { return Flow::Continue };
        // Charged like sending the body to each recipient (at least one frame), so that one frame naming many
        // recipients is no cheaper than the sends it replaces; a refused commit claims no epoch.
        let cost = u32::try_from(to.as_slice().len()).unwrap_or(u32::MAX).max(1);
        if let Err(retry) = self.state.hub.member_allow(member, cost, now) {
            self.state.metrics.refused("rate_limited");
            self.refuse(ErrorCode::RateLimited, "this member sends too many frames", Some(id), Some(retry));
            return Flow::Continue;
        }
        if let Some(link) = &self.state.cluster {
            let reply = Answer { handle: self.handle.clone(), id, commit: true, keep: None };
            let (to, body) = (to.clone(), body.clone());
            link.submit(Job::Commit(CommitJob { reply, from: member, from_session: session, group, epoch, to, body }));
            return Flow::Continue;
        }
        match self.state.hub.commit(member, session, group, epoch, to, body) {
            Ok(routed) => self.ack(id, &routed),
            Err(current) => {
                let message = format!("group is at epoch {current}; process the winning commit and retry");
                self.refuse(ErrorCode::CommitConflict, &message, Some(id), None);
            }
        }
        Flow::Continue
    }

    /// The `ack` of a `send` or `commit`; when something was kept for later, only once it is on disk.
    fn ack(&mut self, id: u64, routed: &Routed) {
        let frame =
            Utf8Bytes::from(encode_frame(&ServerFrame::Ack { id, sessions: routed.sessions, stored: routed.stored }));
        match self.state.hub.mailbox().filter(|_| routed.stored > 0) {
            Some(mailbox) => mailbox.then_send(self.handle.clone(), frame),
            None => self.handle.send_or_kill(&frame),
        }
    }

    fn directory_changed(&mut self, directory: Arc<Directory>) -> Flow {
        let policy_changed = directory.policy() != self.directory.policy();
        self.directory = directory;
        let Some((member, _)) = self.session.identity() else { return Flow::Continue };
        if self.directory.member(&member).is_none() {
            tracing::info!(%member, "member removed from the bubble; closing its session");
            return self.close(ErrorCode::MemberRemoved, "you were removed from this bubble", None);
        }
        if policy_changed {
            // Before the slice: a client applies the rules before anything the new directory lets it do.
            let frame = ServerFrame::Policy { policy: *self.directory.policy() };
            self.handle.send_or_kill(&Utf8Bytes::from(encode_frame(&frame)));
        }
        self.sent_slice = self.state.hub.send_slice(member, &self.directory, &self.handle, self.sent_slice);
        Flow::Continue
    }
}

/// A model-based test (str0m-style): random sequences of connects, logins, frames, floods, oversized and
/// broken frames, idle time, kills, directory reloads, shutdowns and client closes, driven through the same
/// [`Connection`] and [`Hub`] as the socket loop, against a reference model of who holds which session.
/// After every step: the hub's sessions and members, the sessions gauge, every live session's view of
/// presence and every login's outcome (the slots) match the model.
#[cfg(test)]
mod model {
    use std::collections::{BTreeSet, HashSet};

    use peerbubble_proto::{ClientFrame, IdentityKey, Purpose, auth_message, decode_server_frame};
    use proptest::prelude::*;
    use tokio::sync::watch;

    use super::*;
    use crate::config::Config;
    use crate::hub::{Outbound, Outbox};
    use crate::metrics::Metrics;

    const MEMBERS: usize = 4;
    const MAX_SESSIONS: usize = 2;
    const BURST: u32 = 8;

    fn key(m: usize) -> IdentityKey {
        IdentityKey::from_seed(&[m as u8 + 1; 32])
    }

    fn id(m: usize) -> MemberId {
        key(m).public_key().member_id()
    }

    /// Ann and Bob share `x`, Bob and Cat share `y`, Dan is alone in `z`. Cat may be removed by a reload.
    fn directory(with_cat: bool) -> Arc<Directory> {
        let mut yaml = String::from("bubble: model\ncategories:\n  - {id: x}\n  - {id: y}\n  - {id: z}\nmembers:\n");
        for (m, cats) in [(0, "x"), (1, "x, y"), (2, "y"), (3, "z")] {
            if m == 2 && !with_cat {
                continue;
            }
            yaml += &format!("  - {{public_key: {}, display_name: m{m}, categories: [{cats}]}}\n", key(m).public_key());
        }
        // The version is the content's hash: each toggle is a new version.
        let directory = crate::directory::from_yaml(yaml.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        Arc::new(directory)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Connect(usize),
        Auth(usize),
        Ping(usize),
        Send(usize, usize),
        Malformed(usize),
        Binary(usize),
        Flood(usize),
        Oversized(usize),
        InvalidUtf8(usize),
        TooLong(usize),
        Idle(usize),
        Kill(usize),
        ClientClose(usize),
        ToggleCat,
        Shutdown,
    }

    fn op() -> impl Strategy<Value = Op> {
        let c = 0..24usize;
        prop_oneof![
            6 => (0..MEMBERS).prop_map(Op::Connect),
            6 => c.clone().prop_map(Op::Auth),
            2 => c.clone().prop_map(Op::Ping),
            3 => (c.clone(), 0..MEMBERS).prop_map(|(c, m)| Op::Send(c, m)),
            1 => c.clone().prop_map(Op::Malformed),
            1 => c.clone().prop_map(Op::Binary),
            1 => c.clone().prop_map(Op::Flood),
            1 => c.clone().prop_map(Op::Oversized),
            1 => c.clone().prop_map(Op::InvalidUtf8),
            1 => c.clone().prop_map(Op::TooLong),
            1 => c.clone().prop_map(Op::Idle),
            1 => c.clone().prop_map(Op::Kill),
            2 => c.prop_map(Op::ClientClose),
            1 => Just(Op::ToggleCat),
            1 => Just(Op::Shutdown),
        ]
    }

    struct Client<'a> {
        conn: Option<Connection<'a>>,
        out: Arc<Outbox>,
        member: usize,
        nonce: Nonce,
        /// Registered in the hub, according to the model.
        registered: bool,
        /// Members this client was told are online.
        view: BTreeSet<MemberId>,
        /// Close frames received.
        closes: Vec<u16>,
        acks: Vec<u32>,
    }

    struct World<'a> {
        state: &'a AppState,
        publish: &'a watch::Sender<Option<Arc<Directory>>>,
        clients: Vec<Client<'a>>,
        now: Instant,
        with_cat: bool,
        nonces: u8,
    }

    impl<'a> World<'a> {
        fn current(&self) -> Arc<Directory> {
            self.publish.borrow().clone().unwrap_or_else(|| panic!("no directory"))
        }

        fn live(&mut self, i: usize) -> Option<(&mut Client<'a>, Instant)> {
            let now = self.now;
            let n = self.clients.len();
            if n == 0 {
                return None;
            }
            let client = &mut self.clients[i % n];
            client.conn.is_some().then_some((client, now))
        }

        /// Feeds one input; a close ends the session in the model.
        fn input(&mut self, i: usize, input: Input<'_>) -> Option<Flow> {
            let (client, now) = self.live(i)?;
            let conn = client.conn.as_mut()?;
            let flow = conn.input(input, now);
            if flow == Flow::Close {
                client.conn = None;
                client.registered = false;
            }
            Some(flow)
        }

        fn sessions_of(&self, m: usize) -> usize {
            self.clients.iter().filter(|c| c.member == m && c.registered).count()
        }

        fn step(&mut self, op: &Op) {
            self.now += Duration::from_millis(10);
            match *op {
                Op::Connect(m) => {
                    let out = Arc::new(Outbox::default());
                    let handle = SessionHandle::new(out.clone(), 1 << 40);
                    self.nonces = self.nonces.wrapping_add(1);
                    let nonce = Nonce::from_bytes([self.nonces; 32]);
                    // Fresh nonces only: the ledger refuses a reused one, and 255 connects is plenty per case.
                    let conn = Connection::new(self.state, handle, self.current(), None, nonce.clone(), self.now);
                    self.clients.push(Client {
                        conn: Some(conn),
                        out,
                        member: m,
                        nonce,
                        registered: false,
                        view: BTreeSet::new(),
                        closes: Vec::new(),
                        acks: Vec::new(),
                    });
                }
                Op::Auth(i) => {
                    let Some((client, _)) = self.live(i) else { return };
                    if client.registered {
                        return;
                    }
                    let (m, nonce) = (client.member, client.nonce.clone());
                    let public_key = key(m).public_key();
                    let message = auth_message("model", &nonce, &public_key);
                    let signature = key(m).sign(Purpose::SignalAuth, &message);
                    let frame = encode_frame(&ClientFrame::Auth { public_key, nonce, signature });
                    let present = m != 2 || self.with_cat;
                    let free = self.sessions_of(m) < MAX_SESSIONS;
                    let flow = self.input(i, Input::Text(frame.as_bytes()));
                    let expect = if present && free { Flow::Continue } else { Flow::Close };
                    assert_eq!(flow, Some(expect), "login of m{m}: present {present}, slot free {free}");
                    if expect == Flow::Continue {
                        let n = self.clients.len();
                        self.clients[i % n].registered = true;
                    }
                }
                Op::Ping(i) => {
                    self.input(i, Input::Text(br#"{"type":"ping","id":1}"#));
                }
                Op::Send(i, to) => {
                    let Some((client, _)) = self.live(i) else { return };
                    if !client.registered {
                        return;
                    }
                    let from = client.member;
                    let frame = format!(r#"{{"type":"send","id":9,"to":"{}","body":"AAEC"}}"#, id(to));
                    let before = client.acks.len();
                    assert_eq!(self.input(i, Input::Text(frame.as_bytes())), Some(Flow::Continue));
                    self.drain();
                    let visible = self.current().sees(&id(from), &id(to));
                    // Every live session of the recipient but the sending one.
                    let n = self.clients.len();
                    let expected = self
                        .clients
                        .iter()
                        .enumerate()
                        .filter(|(j, c)| c.member == to && c.registered && *j != i % n)
                        .count();
                    let client = &self.clients[i % n];
                    if visible && expected > 0 {
                        assert_eq!(client.acks[before..], [expected as u32], "m{from} -> m{to}");
                    } else {
                        assert_eq!(client.acks.len(), before, "m{from} -> m{to}: no ack expected");
                    }
                }
                Op::Malformed(i) => {
                    assert_eq!(self.input(i, Input::Text(b"[]")).unwrap_or(Flow::Continue), Flow::Continue);
                }
                Op::Binary(i) => {
                    assert_eq!(self.input(i, Input::Binary(3)).unwrap_or(Flow::Continue), Flow::Continue);
                }
                Op::Flood(i) => {
                    for _ in 0..=3 * BURST {
                        if self.input(i, Input::Text(br#"{"type":"ping","id":2}"#)) != Some(Flow::Continue) {
                            return;
                        }
                    }
                    panic!("flooding never closed the connection");
                }
                Op::Oversized(i) => {
                    let big = vec![b' '; self.state.session_config.max_frame_bytes + 1];
                    assert_eq!(self.input(i, Input::Text(&big)).unwrap_or(Flow::Close), Flow::Close);
                }
                Op::InvalidUtf8(i) => {
                    assert_eq!(self.input(i, Input::InvalidUtf8).unwrap_or(Flow::Close), Flow::Close);
                }
                Op::TooLong(i) => {
                    assert_eq!(self.input(i, Input::TooLong).unwrap_or(Flow::Close), Flow::Close);
                }
                Op::Idle(i) => {
                    // Only this connection's timer fires; the others' would come later.
                    let idle = self.state.session_config.idle_timeout;
                    let Some((client, now)) = self.live(i) else { return };
                    let late = now + idle;
                    let flow = client.conn.as_mut().map(|c| c.input(Input::Timeout, late));
                    assert_eq!(flow, Some(Flow::Close));
                    client.conn = None;
                    client.registered = false;
                }
                Op::Kill(i) => {
                    let kill = Kill { code: ErrorCode::SlowConsumer, message: "test" };
                    assert_eq!(self.input(i, Input::Kill(kill)).unwrap_or(Flow::Close), Flow::Close);
                }
                Op::ClientClose(i) => {
                    if let Some((client, _)) = self.live(i) {
                        client.conn = None;
                        client.registered = false;
                    }
                }
                Op::ToggleCat => {
                    self.with_cat = !self.with_cat;
                    let directory = directory(self.with_cat);
                    self.publish.send_replace(Some(directory.clone()));
                    for i in 0..self.clients.len() {
                        let removed = self.clients[i].member == 2 && !self.with_cat && self.clients[i].registered;
                        let flow = self.input(i, Input::DirectoryChanged(directory.clone()));
                        if removed {
                            assert_eq!(flow, Some(Flow::Close), "a removed member's session ends");
                        }
                    }
                }
                Op::Shutdown => {
                    for i in 0..self.clients.len() {
                        if let Some(flow) = self.input(i, Input::Shutdown) {
                            assert_eq!(flow, Flow::Close);
                        }
                    }
                }
            }
            self.drain();
            self.check();
        }

        /// Reads what each client was sent.
        fn drain(&mut self) {
            for client in &mut self.clients {
                assert!(client.out.take_kill().is_none(), "nothing is slow here");
                let mut taken = Vec::new();
                client.out.take(|out| {
                    taken.push(out);
                    true
                });
                for out in taken {
                    match out {
                        Outbound::Close { code, .. } => client.closes.push(code),
                        // No mailbox in the model.
                        Outbound::Backlog(_) => panic!("a backlog without a mailbox"),
                        Outbound::Text(text) => match decode_server_frame(text.as_bytes()) {
                            Ok(ServerFrame::Presence { member, online: true }) => {
                                assert!(client.view.insert(member), "online twice: {member}");
                            }
                            Ok(ServerFrame::Presence { member, online: false }) => {
                                assert!(client.view.remove(&member), "offline twice: {member}");
                            }
                            Ok(ServerFrame::Directory { part: 0, parts: 1, entries }) => {
                                client.view = entries.iter().filter(|e| e.online).map(|e| e.member).collect();
                            }
                            Ok(ServerFrame::Ack { sessions, .. }) => client.acks.push(sessions),
                            Ok(ServerFrame::Error { code, .. }) => assert!(
                                !matches!(code, ErrorCode::RecipientCongested | ErrorCode::Internal),
                                "{code:?}"
                            ),
                            Ok(_) => {}
                            Err(e) => panic!("the server sent an undecodable frame: {e}"),
                        },
                    }
                }
            }
        }

        fn check(&self) {
            let directory = self.current();
            let online: HashSet<usize> = (0..MEMBERS).filter(|m| self.sessions_of(*m) > 0).collect();
            let sessions: usize = (0..MEMBERS).map(|m| self.sessions_of(m)).sum();
            assert_eq!(self.state.hub.counts(), (online.len() as u32, sessions as u32), "hub vs model");
            assert_eq!(self.state.metrics.sessions().get(), sessions as i64, "sessions gauge");
            for client in &self.clients {
                if client.conn.is_none() {
                    assert!(client.closes.len() <= 1, "closed once: {:?}", client.closes);
                    continue;
                }
                assert!(client.closes.is_empty(), "a live connection was sent a close");
                if !client.registered {
                    continue;
                }
                let me = id(client.member);
                let expected: BTreeSet<MemberId> =
                    online.iter().map(|m| id(*m)).filter(|o| *o != me && directory.sees(&me, o)).collect();
                assert_eq!(client.view, expected, "presence as m{} sees it", client.member);
            }
        }
    }

    fn run(ops: &[Op]) {
        let (publish, directory_rx) = watch::channel(Some(directory(true)));
        let (_stop, shutdown) = watch::channel(false);
        let config = Config {
            max_sessions_per_member: MAX_SESSIONS as u32,
            frame_burst: BURST,
            frames_per_second: 1000,
            member_frames_per_second: 1_000_000,
            max_frame_bytes: 1024,
            ..Config::default()
        };
        let state = AppState::new(config, Metrics::new(), directory_rx, shutdown, None, None, None, None);
        let mut world = World {
            state: &state,
            publish: &publish,
            clients: Vec::new(),
            now: Instant::now(),
            with_cat: true,
            nonces: 0,
        };
        for op in ops {
            world.step(op);
        }
        // Every connection ends: nothing stays registered, no gauge stays up.
        for client in &mut world.clients {
            client.conn = None;
            client.registered = false;
        }
        assert_eq!(state.hub.counts(), (0, 0));
        assert_eq!(state.metrics.sessions().get(), 0);
        // And every member can fill all its slots again.
        let logins: Vec<Op> = (0..MEMBERS)
            .flat_map(|m| (0..MAX_SESSIONS).map(move |_| m))
            .flat_map(|m| [Op::Connect(m), Op::Auth(usize::MAX)])
            .collect();
        if !world.with_cat {
            world.step(&Op::ToggleCat);
        }
        for op in logins {
            match op {
                Op::Auth(_) => {
                    let last = world.clients.len() - 1;
                    world.step(&Op::Auth(last));
                }
                other => world.step(&other),
            }
        }
        assert_eq!(state.hub.counts(), (MEMBERS as u32, (MEMBERS * MAX_SESSIONS) as u32));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        #[test]
        fn sessions_end_exactly_once_whatever_ends_them(ops in proptest::collection::vec(op(), 1..80)) {
            run(&ops);
        }
    }

    #[test]
    fn each_server_close_frees_the_slot_and_says_offline() {
        // The sequences of the report that found the leak: each server-initiated close, then the slots.
        for close in [Op::Flood(1), Op::Oversized(1), Op::InvalidUtf8(1), Op::TooLong(1), Op::Idle(1), Op::Kill(1)] {
            let ops =
                [Op::Connect(0), Op::Auth(0), Op::Connect(1), Op::Auth(1), close.clone(), Op::Connect(1), Op::Auth(2)];
            run(&ops);
        }
        run(&[Op::Connect(2), Op::Auth(0), Op::Connect(1), Op::Auth(1), Op::ToggleCat, Op::ToggleCat]);
        run(&[Op::Connect(0), Op::Auth(0), Op::Connect(1), Op::Auth(1), Op::Shutdown, Op::Connect(1), Op::Auth(2)]);
    }
}
