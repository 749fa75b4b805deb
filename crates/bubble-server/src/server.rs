//! The IO edge: axum routes, the WebSocket connection task around the sans-IO [`Session`], health, metrics
//! and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use futures_util::{SinkExt as _, StreamExt as _};
use peerbubble_proto::{ErrorCode, GroupId, Nonce, Opaque, Recipients, ServerFrame, SessionId, encode_frame};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::directory::{Directory, DirectorySource, follow};
use crate::hub::{Hub, Kill, Outbound, SessionHandle};
use crate::metrics::Metrics;
use crate::session::{Event, NonceLedger, Session, SessionConfig};
use crate::turn::{TurnError, TurnRelay};

/// A write that takes longer than this marks the reader as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial WebSocket read buffer per connection (grows for large frames).
const READ_BUFFER_BYTES: usize = 4096;
/// Bytes tungstenite gathers before writing to the socket; the writer task flushes after each batch anyway.
const WRITE_BUFFER_BYTES: usize = 32 * 1024;
/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("server failed: {0}")]
    Serve(#[from] std::io::Error),
    /// The TURN relay could not start.
    #[error(transparent)]
    Turn(#[from] TurnError),
}

struct AppState {
    config: Config,
    session_config: SessionConfig,
    hub: Hub,
    nonces: NonceLedger,
    metrics: Metrics,
    directory: watch::Receiver<Option<Arc<Directory>>>,
    shutdown: watch::Receiver<bool>,
    shutting_down: AtomicBool,
    open: AtomicUsize,
    turn: Option<Arc<TurnRelay>>,
}

/// A running bubble-server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    state: Arc<AppStateHandle>,
    serve: JoinHandle<Result<(), std::io::Error>>,
    follower: JoinHandle<()>,
    turn_members: Option<JoinHandle<()>>,
}

/// Keeps `AppState` private while letting [`Server`] derive `Debug`.
struct AppStateHandle(Arc<AppState>);

impl std::fmt::Debug for AppStateHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppState")
    }
}

impl Server {
    /// Binds `config.listen`, starts following the directory source and serves.
    pub async fn start<S: DirectorySource>(config: Config, source: S) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        Self::start_on(config, source, listener).await
    }

    /// Serves on an already bound listener.
    pub async fn start_on<S: DirectorySource>(
        config: Config,
        source: S,
        listener: TcpListener,
    ) -> Result<Self, ServerError> {
        let addr = listener.local_addr()?;
        let metrics = Metrics::new();
        let (dir_tx, dir_rx) = watch::channel(None);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let follower = tokio::spawn(follow(source, dir_tx, metrics.clone()));
        let turn = match &config.turn {
            Some(turn) => Some(TurnRelay::start(turn.clone()).await?),
            None => None,
        };
        let turn_members = turn.as_ref().map(|turn| {
            metrics.set_turn(turn.clone());
            tokio::spawn(follow_members(turn.clone(), dir_rx.clone()))
        });
        let session_config = SessionConfig {
            max_frame_bytes: config.max_frame_bytes as usize,
            frames_per_second: config.frames_per_second,
            frame_burst: config.frame_burst,
            idle_timeout: config.idle_timeout,
            challenge_ttl: config.challenge_ttl,
        };
        let state = Arc::new(AppState {
            hub: Hub::new(
                config.max_sessions_per_member,
                config.member_frames_per_second,
                config.max_frame_bytes as usize,
                config.max_groups,
                metrics.clone(),
                dir_rx.clone(),
            ),
            nonces: NonceLedger::new(config.challenge_ttl),
            session_config,
            config,
            metrics,
            directory: dir_rx,
            shutdown: shutdown_rx.clone(),
            shutting_down: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            turn,
        });
        let app = Router::new()
            .route("/v1/signal", get(signal))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(state.clone());
        let mut stop = shutdown_rx;
        // Signaling frames are small and latency-bound: never hold them back for Nagle's algorithm.
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
        });
        let serve = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
        tracing::info!(%addr, "bubble-server listening");
        Ok(Self { addr, shutdown: shutdown_tx, state: Arc::new(AppStateHandle(state)), serve, follower, turn_members })
    }

    /// The embedded TURN relay, when configured.
    pub fn turn(&self) -> Option<&Arc<TurnRelay>> {
        self.state.0.turn.as_ref()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until a directory has been loaded (readiness).
    pub async fn ready(&self) {
        let mut rx = self.state.0.directory.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// A handle for health reports (counts and session events), usable after the server moves.
    pub fn health(&self) -> HealthHandle {
        HealthHandle(self.state.0.clone())
    }

    /// The metrics, in text exposition format.
    pub fn metrics_text(&self) -> String {
        self.state.0.metrics.encode()
    }

    /// Graceful shutdown: becomes unready, tells every client to reconnect later (`server_shutdown` and close
    /// code 1012), waits for connections to close, then stops.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let state = &self.state.0;
        state.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while state.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.follower.abort();
        if let Some(task) = self.turn_members {
            task.abort();
        }
        if let Some(turn) = &state.turn {
            turn.shutdown().await;
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, self.serve).await {
            Ok(Ok(result)) => result.map_err(ServerError::Serve),
            _ => Ok(()),
        }
    }
}

/// Reads the server's health for reports.
#[derive(Clone)]
pub struct HealthHandle(Arc<AppState>);

impl std::fmt::Debug for HealthHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealthHandle")
    }
}

impl HealthHandle {
    /// Current counts, and the session events since the last report.
    pub fn report(&self) -> peerbubble_proto::health::HealthReport {
        let state = &self.0;
        let (online_members, sessions) = state.hub.counts();
        let (connections, envelopes_relayed, envelopes_refused, auth_failures) = state.metrics.counts();
        let (events, events_dropped) = state.hub.take_events();
        peerbubble_proto::health::HealthReport {
            online_members,
            sessions,
            connections,
            envelopes_relayed,
            envelopes_refused,
            auth_failures,
            turn_allocations: state.turn.as_ref().map_or(0, |t| u32::try_from(t.stats().1).unwrap_or(u32::MAX)),
            events,
            events_dropped,
        }
    }

    /// Gives back the events of a report that could not be delivered.
    pub fn restore(&self, report: peerbubble_proto::health::HealthReport) {
        self.0.hub.restore_events(report.events, report.events_dropped);
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.directory.borrow().is_some() && !state.shutting_down.load(Ordering::SeqCst);
    if ready {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}

/// Keeps the relay's accepted members equal to the directory's: a removed member's TURN credentials and
/// allocations stop working with the directory update that removes it.
async fn follow_members(turn: Arc<TurnRelay>, mut directory: watch::Receiver<Option<Arc<Directory>>>) {
    loop {
        let current = directory.borrow_and_update().clone();
        if let Some(current) = current {
            turn.set_members(current.member_ids().map(ToString::to_string));
        }
        if directory.changed().await.is_err() {
            return;
        }
    }
}

async fn signal(State(state): State<Arc<AppState>>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if state.shutting_down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down; retry shortly").into_response();
    }
    if state.open.fetch_add(1, Ordering::SeqCst) >= state.config.max_connections {
        state.open.fetch_sub(1, Ordering::SeqCst);
        state.metrics.disconnect("max_connections");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections; retry later").into_response();
    }
    // Let oversized messages through the WebSocket layer (up to twice the limit) so that the session core
    // can answer them with a clear `frame_too_large` instead of a bare protocol error.
    let ceiling = state.config.max_frame_bytes as usize * 2;
    // Small read buffers keep idle connections cheap; writes are batched by the writer task.
    ws.max_message_size(ceiling)
        .max_frame_size(ceiling)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            state.metrics.connections().inc();
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
            connection(socket, &state, host).await;
            state.metrics.connections().dec();
            state.open.fetch_sub(1, Ordering::SeqCst);
        })
}

fn error_frame(code: ErrorCode, message: &str, id: Option<u64>, retry_after: Option<Duration>) -> Utf8Bytes {
    Utf8Bytes::from(encode_frame(&ServerFrame::Error {
        code,
        message: message.to_owned(),
        id,
        retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
    }))
}

/// Writes queued frames: everything already queued is fed in one batch and flushed once, so that a busy
/// session costs one write per batch rather than one per frame.
async fn writer(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
    metrics: Metrics,
    kill: mpsc::Sender<Kill>,
) {
    const BATCH_BYTES: usize = 64 * 1024;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut batch = 0;
        let mut closing = None;
        let fed = tokio::time::timeout(WRITE_TIMEOUT, async {
            while let Some(out) = next.take() {
                match out {
                    Outbound::Text(text) => {
                        let n = text.len();
                        let result = sink.feed(Message::Text(text)).await;
                        queued.fetch_sub(n, Ordering::AcqRel);
                        result?;
                        batch += n;
                    }
                    Outbound::Close { frame, code, reason } => {
                        closing = Some((frame, code, reason));
                        break;
                    }
                }
                if batch < BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            sink.flush().await
        })
        .await;
        match fed {
            Ok(Ok(())) => metrics.bytes_out(batch),
            Ok(Err(_)) => return,
            Err(_) => {
                let _ =
                    kill.try_send(Kill { code: ErrorCode::SlowConsumer, message: "writes to this session stalled" });
                return;
            }
        }
        if let Some((frame, code, reason)) = closing {
            let send = async {
                sink.send(Message::Text(frame)).await?;
                sink.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))).await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
            return;
        }
    }
    let _ = sink.close().await;
}

/// Where the connection loop is going next.
enum Flow {
    Continue,
    Close,
}

struct Connection<'a> {
    state: &'a AppState,
    session: Session,
    handle: SessionHandle,
    out: mpsc::UnboundedSender<Outbound>,
    directory: Arc<Directory>,
    /// The slice last sent, to send directory updates only on real change.
    sent_slice: crate::hub::SliceHash,
    /// The Host the client connected to, for TURN URLs when no public host is configured.
    host: Option<String>,
    /// When to send fresh TURN credentials; taken by the connection loop to re-arm its timer.
    ice_refresh: Option<Instant>,
}

impl Connection<'_> {
    fn close(&mut self, code: ErrorCode, message: &str, retry_after: Option<Duration>) -> Flow {
        let reason = code.as_str();
        self.state.metrics.disconnect(reason);
        if code.is_security_event() {
            let event = code.as_str();
            self.state.metrics.security_event(event);
            let member = self.session.identity().map(|(m, _)| m.to_string());
            tracing::warn!(target: "peerbubble::security", event, member = member.as_deref(), "connection closed");
        }
        self.session.close();
        let _ = self.out.send(Outbound::Close {
            frame: error_frame(code, message, None, retry_after),
            code: code.close_code(),
            reason,
        });
        Flow::Close
    }

    fn handle(&mut self, events: Vec<Event>) -> Flow {
        for event in events {
            let flow = match event {
                Event::Reply(frame) => {
                    self.handle.send_or_kill(&Utf8Bytes::from(encode_frame(&frame)));
                    Flow::Continue
                }
                Event::Authenticated { member } => self.authenticated(member),
                Event::Relay { id, to, to_session, body } => self.relay(id, to, to_session, body),
                Event::Commit { id, group, epoch, to, body } => self.commit(id, group, epoch, &to, &body),
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
            if matches!(flow, Flow::Close) {
                return flow;
            }
        }
        Flow::Continue
    }

    fn refuse(&mut self, code: ErrorCode, message: &str, id: Option<u64>, retry_after: Option<Duration>) {
        if code.is_frame_error() {
            self.state.metrics.frame_error(code.as_str());
        }
        if code.is_security_event() {
            let event = code.as_str();
            self.state.metrics.security_event(event);
            let (member, session) =
                self.session.identity().map_or((None, None), |(m, s)| (Some(m.to_string()), Some(s.0)));
            tracing::warn!(target: "peerbubble::security", event, member = member.as_deref(), session, "refused");
        }
        self.handle.send_or_kill(&error_frame(code, message, id, retry_after));
    }

    fn authenticated(&mut self, member: peerbubble_proto::MemberId) -> Flow {
        let Some(entry) = self.directory.member(&member) else {
            return self.close(ErrorCode::UnknownMember, "this key is not a member of the bubble", None);
        };
        let display_name = entry.display_name.clone();
        let limits = self.state.config.limits();
        let (ice_servers, ice_expires_in_ms) = match self.ice_servers(member) {
            Some((servers, ttl)) => (servers, Some(ttl.as_millis() as u64)),
            None => (Vec::new(), None),
        };
        let welcome =
            |session| ServerFrame::Welcome { member, session, display_name, ice_servers, ice_expires_in_ms, limits };
        match self.state.hub.register(member, self.handle.clone(), welcome) {
            Ok((session, sent_slice)) => {
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
    fn ice_servers(
        &mut self,
        member: peerbubble_proto::MemberId,
    ) -> Option<(Vec<peerbubble_proto::IceServer>, Duration)> {
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

    fn relay(&mut self, id: u64, to: peerbubble_proto::MemberId, to_session: Option<SessionId>, body: Opaque) -> Flow {
        let Some((member, session)) = self.session.identity() else { return Flow::Continue };
        if let Err(retry) = self.state.hub.member_allow(member, 1, Instant::now()) {
            self.state.metrics.refused("rate_limited");
            self.refuse(ErrorCode::RateLimited, "this member sends too many frames", Some(id), Some(retry));
            return Flow::Continue;
        }
        match self.state.hub.route(member, session, to, to_session, body) {
            Ok(sessions) => {
                self.handle.send_or_kill(&Utf8Bytes::from(encode_frame(&ServerFrame::Ack { id, sessions })));
            }
            Err(code) => {
                self.state.metrics.refused(code.as_str());
                let (message, retry) = match code {
                    ErrorCode::RecipientCongested => {
                        ("the recipient is not reading fast enough", Some(Duration::from_millis(250)))
                    }
                    _ => ("the recipient has no session", None),
                };
                self.refuse(code, message, Some(id), retry);
            }
        }
        Flow::Continue
    }

    fn commit(&mut self, id: u64, group: GroupId, epoch: u64, to: &Recipients, body: &Opaque) -> Flow {
        let Some((member, session)) = self.session.identity() else { return Flow::Continue };
        // Charged like sending the body to each recipient (at least one frame), so that one frame naming many
        // recipients is no cheaper than the sends it replaces; a refused commit claims no epoch.
        let cost = u32::try_from(to.as_slice().len()).unwrap_or(u32::MAX).max(1);
        if let Err(retry) = self.state.hub.member_allow(member, cost, Instant::now()) {
            self.state.metrics.refused("rate_limited");
            self.refuse(ErrorCode::RateLimited, "this member sends too many frames", Some(id), Some(retry));
            return Flow::Continue;
        }
        match self.state.hub.commit(member, session, group, epoch, to, body) {
            Ok(sessions) => {
                self.handle.send_or_kill(&Utf8Bytes::from(encode_frame(&ServerFrame::Ack { id, sessions })));
            }
            Err(current) => {
                let message = format!("group is at epoch {current}; process the winning commit and retry");
                self.refuse(ErrorCode::CommitConflict, &message, Some(id), None);
            }
        }
        Flow::Continue
    }

    fn directory_changed(&mut self, directory: Arc<Directory>) -> Flow {
        self.directory = directory;
        let Some((member, _)) = self.session.identity() else { return Flow::Continue };
        if self.directory.member(&member).is_none() {
            tracing::info!(%member, "member removed from the bubble; closing its session");
            return self.close(ErrorCode::MemberRemoved, "you were removed from this bubble", None);
        }
        self.sent_slice = self.state.hub.send_slice(member, &self.directory, &self.handle, self.sent_slice);
        Flow::Continue
    }
}

async fn connection(socket: WebSocket, state: &AppState, host: Option<String>) {
    let (sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (kill_tx, mut kill_rx) = mpsc::channel(1);
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(writer(sink, out_rx, queued.clone(), state.metrics.clone(), kill_tx.clone()));
    let handle = SessionHandle::new(out_tx.clone(), queued, state.config.send_queue_bytes, kill_tx);

    let directory = state.directory.borrow().clone();
    let (Some(directory), Ok(nonce)) = (directory, Nonce::random()) else {
        let _ = out_tx.send(Outbound::Close {
            frame: error_frame(
                ErrorCode::Internal,
                "the server has no directory yet; retry shortly",
                None,
                Some(Duration::from_secs(1)),
            ),
            code: 1013,
            reason: "not ready",
        });
        drop(out_tx);
        let _ = writer.await;
        return;
    };
    let (session, challenge) = Session::new(state.session_config, directory.bubble(), nonce, Instant::now());
    handle.force_send(Utf8Bytes::from(encode_frame(&challenge)));
    let mut conn =
        Connection { state, session, handle, out: out_tx, directory, sent_slice: 0, host, ice_refresh: None };
    let mut dir_rx = state.directory.clone();
    dir_rx.mark_unchanged();
    let mut shutdown = state.shutdown.clone();
    // One timer per connection, re-armed only when it fires: the session core says whether anything expired
    // and when to look next, so a busy connection does not touch the timer wheel for every frame.
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(conn.session.poll_timeout()));
    tokio::pin!(timer);
    let ice_timer = tokio::time::sleep(Duration::from_secs(1 << 30));
    tokio::pin!(ice_timer);
    let mut ice_armed = false;

    loop {
        let flow = tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    state.metrics.bytes_in(text.len());
                    let events = conn.session.handle_text(text.as_bytes(), Instant::now(), &conn.directory, &state.nonces);
                    conn.handle(events)
                }
                Some(Ok(Message::Binary(bytes))) => {
                    state.metrics.bytes_in(bytes.len());
                    let events = conn.session.handle_binary(bytes.len(), Instant::now());
                    conn.handle(events)
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(err)) => {
                    // tungstenite refuses messages over twice the limit before we see them.
                    if err.to_string().contains("too long") || err.to_string().contains("Space limit") {
                        state.metrics.frame_error("frame_too_large");
                        conn.close(ErrorCode::FrameTooLarge, "frame exceeds max_frame_bytes", None)
                    } else {
                        break;
                    }
                }
            },
            () = &mut timer => {
                let flow = match conn.session.handle_timeout(Instant::now()) {
                    Some(event) => conn.handle(vec![event]),
                    None => Flow::Continue,
                };
                timer.as_mut().reset(tokio::time::Instant::from_std(conn.session.poll_timeout()));
                flow
            }
            Some(kill) = kill_rx.recv() => conn.close(kill.code, kill.message, None),
            changed = dir_rx.changed() => match (changed, dir_rx.borrow_and_update().clone()) {
                (Ok(()), Some(directory)) => conn.directory_changed(directory),
                _ => Flow::Continue,
            },
            () = &mut ice_timer, if ice_armed => {
                ice_armed = false;
                conn.refresh_ice();
                Flow::Continue
            }
            _ = shutdown.wait_for(|s| *s) => {
                // Spread reconnections so that a restart is not a thundering herd.
                let jitter = 500 + (conn.handle.id.0 * 7919) % 2500;
                conn.close(ErrorCode::ServerShutdown, "the server is restarting; reconnect", Some(Duration::from_millis(jitter)))
            }
        };
        if matches!(flow, Flow::Close) {
            break;
        }
        if let Some(at) = conn.ice_refresh.take() {
            ice_timer.as_mut().reset(tokio::time::Instant::from_std(at));
            ice_armed = true;
        }
    }
    if let Some((member, session)) = conn.session.identity() {
        state.hub.unregister(member, session);
        tracing::info!(%member, session = session.0, "session closed");
    }
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}
