//! The IO edge: axum routes, the WebSocket upgrade (each connection then runs in `wire`), health, metrics
//! and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::directory::{Directory, DirectorySource, follow};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::turn::{TurnError, TurnRelay};

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
        let (mailbox, shared) = match &config.mailbox {
            Some(mailbox) if mailbox.jetstream => {
                let shared = crate::shared_mailbox::SharedMailbox::new(mailbox.clone(), dir_rx.clone());
                (None, Some(Arc::new(shared)))
            }
            Some(mailbox) => (Some(crate::mailbox::Mailbox::open(mailbox.clone()).await?), None),
            None => (None, None),
        };
        let cluster = config.cluster.clone().map(|config| {
            let (link, presence, tasks) = crate::cluster::Link::new();
            (config, link, presence, tasks)
        });
        let (cluster_run, cluster) = match cluster {
            Some((config, link, presence, tasks)) => (Some((config, tasks, link.replica)), Some((link, presence))),
            None => (None, None),
        };
        let state =
            Arc::new(AppState::new(config, metrics, dir_rx, shutdown_rx.clone(), turn, mailbox, shared, cluster));
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
        let state = &self.state.0;
        state
            .hub
            .mailbox()
            .map(crate::mailbox::Mailbox::counts)
            .or_else(|| state.hub.shared_mailbox().map(|m| m.counts()))
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

/// The signaling WebSocket: checks the upgrade, answers 101, and serves the connection in its own task.
async fn signal(State(state): State<Arc<AppState>>, mut request: Request) -> Response {
    if state.shutting_down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down; retry shortly").into_response();
    }
    let headers = request.headers();
    let value = |name| headers.get(name).map(HeaderValue::as_bytes);
    let accept = match peerbubble_ws::accept(
        value(header::CONNECTION),
        value(header::UPGRADE),
        value(header::SEC_WEBSOCKET_VERSION),
        value(header::SEC_WEBSOCKET_KEY),
    ) {
        Ok(accept) => accept,
        Err(err) => {
            let status = match err {
                peerbubble_ws::HandshakeError::Version => StatusCode::UPGRADE_REQUIRED,
                _ => StatusCode::BAD_REQUEST,
            };
            let mut response = (status, err.to_string()).into_response();
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return response;
        }
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
    let Some(upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::BAD_REQUEST, "this connection cannot be upgraded").into_response();
    };
    if state.open.fetch_add(1, Ordering::SeqCst) >= state.config.max_connections {
        state.open.fetch_sub(1, Ordering::SeqCst);
        state.metrics.disconnect("max_connections");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections; retry later").into_response();
    }
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            state.metrics.connections().inc();
            crate::wire::serve(hyper_util::rt::TokioIo::new(upgraded), &state, host).await;
            state.metrics.connections().dec();
        }
        state.open.fetch_sub(1, Ordering::SeqCst);
    });
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
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
