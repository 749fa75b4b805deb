//! The IO edge: axum routes, the WebSocket connection task around the sans-IO [`Session`], health, metrics
//! and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use futures_util::{SinkExt as _, StreamExt as _};
use peerbubble_proto::{ErrorCode, Nonce};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::connection::{Connection, Flow, Input, error_frame};
use crate::directory::{Directory, DirectorySource, follow};
use crate::hub::{Kill, Outbound, SessionHandle};
use crate::metrics::Metrics;
use crate::state::AppState;
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
    /// The offline mailbox could not be opened.
    #[error(transparent)]
    Mailbox(#[from] crate::mailbox::MailboxError),
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
    mailbox_keeper: Option<JoinHandle<()>>,
    cluster_link: Option<JoinHandle<()>>,
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
        Self::start_with_routes(config, source, listener, Router::new()).await
    }

    /// Serves on an already bound listener, with `routes` answering what signaling does not (`peerbubble up`
    /// mounts the admin API there, so that the browser client enrolls on its own origin); what neither
    /// answers is the embedded web client. Every response carries the web client's security headers.
    pub async fn start_with_routes<S: DirectorySource>(
        config: Config,
        source: S,
        listener: TcpListener,
        routes: Router,
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
        let mailbox = match &config.mailbox {
            Some(mailbox) => Some(crate::mailbox::Mailbox::open(mailbox.clone()).await?),
            None => None,
        };
        let cluster = config.cluster.clone().map(|config| {
            let (link, presence, tasks) = crate::cluster::Link::new();
            (config, link, presence, tasks)
        });
        let (cluster_run, cluster) = match cluster {
            Some((config, link, presence, tasks)) => (Some((config, tasks, link.replica)), Some((link, presence))),
            None => (None, None),
        };
        let state = Arc::new(AppState::new(config, metrics, dir_rx, shutdown_rx.clone(), turn, mailbox, cluster));
        let cluster_link = cluster_run.map(|(config, tasks, replica)| {
            tracing::info!(replica, nats = ?config, "sharing state with the bubble's other replicas");
            tokio::spawn(crate::cluster::run(state.clone(), config, tasks, replica))
        });
        let mailbox_keeper = state.hub.mailbox().map(|_| tokio::spawn(keep_mailbox(state.clone())));
        let app = Router::new()
            .route("/v1/signal", get(signal))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(state.clone())
            .fallback_service(routes.fallback_service(peerbubble_web_assets::router()));
        let app = peerbubble_web_assets::secure(app);
        let stop = shutdown_rx;
        let serve = match &state.config.tls {
            Some(tls) => spawn_serve(crate::tls::TlsListener::new(listener, tls)?, app, stop),
            None => {
                // Signaling frames are small and latency-bound: never hold them back for Nagle's algorithm.
                let listener = listener.tap_io(|tcp| {
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                    }
                });
                spawn_serve(listener, app, stop)
            }
        };
        tracing::info!(%addr, "bubble-server listening");
        Ok(Self {
            addr,
            shutdown: shutdown_tx,
            state: Arc::new(AppStateHandle(state)),
            serve,
            follower,
            turn_members,
            mailbox_keeper,
            cluster_link,
        })
    }

    /// The listener's certificate, when it serves HTTPS.
    pub fn tls(&self) -> Option<&crate::tls::ServerTls> {
        self.state.0.config.tls.as_ref()
    }

    /// The embedded TURN relay, when configured.
    pub fn turn(&self) -> Option<&Arc<TurnRelay>> {
        self.state.0.turn.as_ref()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until a directory has been loaded and, for a replica, its link to the others is up (readiness).
    pub async fn ready(&self) {
        let mut rx = self.state.0.directory.clone();
        let _ = rx.wait_for(Option::is_some).await;
        while self.state.0.cluster.as_ref().is_some_and(|link| !link.ready()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// This replica's number among the bubble's replicas (0 when it runs alone).
    pub fn replica(&self) -> u32 {
        self.state.0.hub.replica()
    }

    /// A handle for health reports (counts and session events), usable after the server moves.
    pub fn health(&self) -> HealthHandle {
        HealthHandle(self.state.0.clone())
    }

    /// What the offline mailbox keeps now (None without one).
    pub fn mailbox(&self) -> Option<crate::mailbox::MailboxCounts> {
        self.state.0.hub.mailbox().map(crate::mailbox::Mailbox::counts)
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
        if let Some(task) = self.cluster_link {
            // Every member here is gone: the other replicas hear it now rather than after a timeout.
            state.cluster_stop.notify_one();
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                tracing::warn!("the replica link did not stop in time");
            }
        }
        self.follower.abort();
        if let Some(task) = self.turn_members {
            task.abort();
        }
        if let Some(task) = self.mailbox_keeper {
            task.abort();
        }
        if let Some(mailbox) = state.hub.mailbox() {
            // Everything acknowledged as kept is on disk before the process may exit.
            mailbox.flushed().await;
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
            turn_bytes_relayed: state.turn.as_ref().map_or(0, |t| {
                let stats = t.stats().0;
                stats.to_peer.1.saturating_add(stats.to_client.1)
            }),
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
    // A replica that cannot reach the others would split the bubble: not ready until its link is up.
    let ready = state.directory.borrow().is_some()
        && !state.shutting_down.load(Ordering::SeqCst)
        && state.cluster.as_ref().is_none_or(crate::cluster::Link::ready);
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
                    Outbound::Backlog(text) => {
                        let n = text.len();
                        sink.feed(Message::Text(text)).await?;
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
    let mut conn = Connection::new(state, handle, out_tx, directory, host, nonce, Instant::now());
    let mut dir_rx = state.directory.clone();
    dir_rx.mark_unchanged();
    let mut shutdown = state.shutdown.clone();
    // One timer per connection, re-armed only when it fires: the session core says whether anything expired
    // and when to look next, so a busy connection does not touch the timer wheel for every frame.
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(conn.poll_timeout()));
    tokio::pin!(timer);
    let ice_timer = tokio::time::sleep(Duration::from_secs(1 << 30));
    tokio::pin!(ice_timer);
    let mut ice_armed = false;

    loop {
        let flow = tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    state.metrics.bytes_in(text.len());
                    conn.input(Input::Text(text.as_bytes()), Instant::now())
                }
                Some(Ok(Message::Binary(bytes))) => {
                    state.metrics.bytes_in(bytes.len());
                    conn.input(Input::Binary(bytes.len()), Instant::now())
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                Some(Ok(Message::Close(_))) | None => break,
                // The error's text may quote the message (tungstenite's UTF-8 error does): never log it.
                Some(Err(err)) => match ws_error(&err) {
                    Some(input) => conn.input(input, Instant::now()),
                    None => break,
                },
            },
            () = &mut timer => {
                let flow = conn.input(Input::Timeout, Instant::now());
                timer.as_mut().reset(tokio::time::Instant::from_std(conn.poll_timeout()));
                flow
            }
            Some(kill) = kill_rx.recv() => conn.input(Input::Kill(kill), Instant::now()),
            changed = dir_rx.changed() => match (changed, dir_rx.borrow_and_update().clone()) {
                (Ok(()), Some(directory)) => conn.input(Input::DirectoryChanged(directory), Instant::now()),
                _ => Flow::Continue,
            },
            () = &mut ice_timer, if ice_armed => {
                ice_armed = false;
                conn.input(Input::IceRefresh, Instant::now())
            }
            _ = shutdown.wait_for(|s| *s) => conn.input(Input::Shutdown, Instant::now()),
        };
        if flow == Flow::Close {
            break;
        }
        if let Some(at) = conn.ice_refresh.take() {
            ice_timer.as_mut().reset(tokio::time::Instant::from_std(at));
            ice_armed = true;
        }
    }
    // The client closed or the network dropped, or the server closed the session: either way its
    // registration ends here if it has not already.
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// The WebSocket layer's refusals the client is told about; other errors (reset, protocol violation) end the
/// connection without a word.
fn ws_error(err: &axum::Error) -> Option<Input<'static>> {
    let text = err.to_string();
    if text.starts_with("UTF-8 encoding error") {
        Some(Input::InvalidUtf8)
    } else if text.contains("too long") || text.contains("Space limit") {
        // tungstenite refuses messages over twice the limit before we see them.
        Some(Input::TooLong)
    } else {
        None
    }
}

/// Serves `app` on `listener` until `stop` turns true.
fn spawn_serve<L>(listener: L, app: Router, mut stop: watch::Receiver<bool>) -> JoinHandle<Result<(), std::io::Error>>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    })
}

/// Looks after the offline mailbox: purges what waits for members the directory no longer has (removed or
/// revoked: at once, on every directory change), and turns what outlived its time to live into gap markers.
async fn keep_mailbox(state: Arc<AppState>) {
    let Some(interval) = state.hub.mailbox().map(|m| m.config().sweep_interval) else { return };
    let mut directory = state.directory.clone();
    let mut sweep = tokio::time::interval(interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = directory.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = directory.borrow_and_update().clone();
                if let Some(current) = current {
                    let purged = state.hub.purge_mailbox(&current);
                    if purged > 0 {
                        tracing::info!(members = purged, "mailbox: purged what waited for members no longer in the bubble");
                    }
                }
            }
            _ = sweep.tick() => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let lost = state.hub.expire_mailbox(now);
                if lost > 0 {
                    tracing::info!(envelopes = lost, "mailbox: envelopes expired before their recipient came back");
                }
            }
        }
    }
}
