//! The IO edge of the embedded TURN relay: UDP, TCP and TLS listeners, one UDP relay socket per allocation,
//! a timer, and the ICE server list handed to members. Every decision is made by the sans-IO
//! [`peerbubble_turn::Server`] and the allocations' [`DataPath`]s; this module only moves bytes and never
//! reads them.
//!
//! The hot path takes no lock shared by every listener: a listener or connection keeps the data path of each
//! client it relays for and hands it ChannelData directly (only that allocation's own lock is taken), and an
//! allocation's relay socket task holds its own data path. The server's lock is taken for requests (Allocate,
//! Refresh, CreatePermission, ChannelBind, Send), for a client's first ChannelData, and for relay-to-relay
//! traffic. Datagrams are read and written in batches ([`udp`]): one system call reads up to 32 of them,
//! and what a batch relays to one destination leaves in one segmented send.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peerbubble_proto::IceServer;
use peerbubble_turn::credentials::{TurnSecret, Verifier};
use peerbubble_turn::framing::frame_len;
use peerbubble_turn::peer::{Cidr, PeerPolicy};
use peerbubble_turn::{
    BindFailure, ClientAction, DataPath, Event, FiveTuple, FromClient, FromPeer, PeerAction, PendingAllocation, Server,
    Stats, Transport,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

mod udp;

use udp::{Batch, RecvBuffers, Udp, Via};

/// Errors starting the relay.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// A listener could not be bound.
    #[error("cannot listen for TURN on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error("TURN TLS certificate: {0}")]
    Tls(String),
    /// The secret file could not be read or is too short.
    #[error("TURN secret: {0}")]
    Secret(String),
}

pub use crate::tls::TlsSource;

/// The relay's settings, resolved from configuration.
#[derive(Clone)]
pub struct TurnConfig {
    /// The shared secret for credentials.
    pub secret: TurnSecret,
    /// The file it was read from, re-read every second: a changed secret is a rotation (the old one stays
    /// valid for one credential lifetime).
    pub secret_file: Option<PathBuf>,
    /// Addresses to listen on; UDP and TCP share the port.
    pub listen: Vec<SocketAddr>,
    /// TLS port on the same addresses; `None` for no TLS listener.
    pub tls_port: Option<u16>,
    /// TLS certificate.
    pub tls: TlsSource,
    /// Addresses relay sockets bind to, one per family.
    pub relay_ips: Vec<IpAddr>,
    /// The address clients are told for relay sockets of that family when it differs (1:1 NAT, a cloud
    /// load balancer's IP); unset to advertise the bound address.
    pub external_ips: Vec<IpAddr>,
    /// Relay port range.
    pub ports: (u16, u16),
    /// Host name or address put in the ICE server URLs; unset to use the host the member connected to.
    pub public_host: Option<String>,
    /// How long issued credentials are valid.
    pub credential_ttl: Duration,
    /// Cluster CIDRs (refused) and operator-allowed ranges (let through).
    pub cluster: Vec<Cidr>,
    /// Ranges an operator allows although special.
    pub allowed: Vec<Cidr>,
    /// The state machine's settings (quotas, lifetimes, realm).
    pub core: peerbubble_turn::Config,
    /// Most TCP/TLS connections at once.
    pub max_connections: usize,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("listen", &self.listen)
            .field("tls_port", &self.tls_port)
            .field("relay_ips", &self.relay_ips)
            .field("ports", &self.ports)
            .field("public_host", &self.public_host)
            .finish_non_exhaustive()
    }
}

/// An allocation's relay socket, and how its task is told the allocation ended.
#[derive(Clone, Debug)]
struct RelaySocket {
    udp: Arc<Udp>,
    closed: Arc<Notify>,
}

/// The way back to a client: a UDP listener and the client's address, or a TCP/TLS connection's write queue.
type Core = Server<RelaySocket, Via>;
type Path = DataPath<RelaySocket, Via>;

struct Shared {
    core: Mutex<Core>,
    config: TurnConfig,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug; the state is still consistent enough to go on.
        self.core.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The running relay.
pub struct TurnRelay {
    shared: Arc<Shared>,
    udp: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    tasks: Mutex<JoinSet<()>>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for TurnRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRelay").field("udp", &self.udp).field("tls", &self.tls).finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TurnRelay {
    /// Binds every listener and starts relaying.
    pub async fn start(config: TurnConfig) -> Result<Arc<Self>, TurnError> {
        let mut nonce_key = [0u8; 32];
        getrandom::fill(&mut nonce_key).map_err(|e| TurnError::Secret(e.to_string()))?;
        let mut core_config = config.core.clone();
        core_config.families =
            (config.relay_ips.iter().any(IpAddr::is_ipv4), config.relay_ips.iter().any(IpAddr::is_ipv6));
        let policy = PeerPolicy::new(config.cluster.clone(), config.allowed.clone());
        let core = Server::new(
            core_config,
            Verifier::new(config.secret.clone()),
            policy,
            (Instant::now(), unix_now()),
            nonce_key,
        );
        let acceptor = match config.tls_port {
            Some(_) => Some(tls_acceptor(&config.tls)?),
            None => None,
        };
        let shared = Arc::new(Shared { core: Mutex::new(core), config: config.clone() });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut udp = Vec::new();
        let mut tls = Vec::new();
        let connections = Arc::new(Semaphore::new(config.max_connections));
        for addr in &config.listen {
            let (socket, tcp) = bind_udp_and_tcp(*addr).await?;
            enlarge_buffers(&socket, LISTENER_SOCKET_BUFFER);
            let socket = Udp::new(socket).map_err(|source| TurnError::Bind { addr: *addr, source })?;
            let local = socket.local_addr().map_err(|source| TurnError::Bind { addr: *addr, source })?;
            udp.push(local);
            tasks.spawn(udp_listener(shared.clone(), Arc::new(socket), stop_rx.clone()));
            tasks.spawn(stream_listener(shared.clone(), tcp, None, connections.clone(), stop_rx.clone()));
            if let (Some(port), Some(acceptor)) = (config.tls_port, &acceptor) {
                let at = SocketAddr::new(addr.ip(), port);
                let listener = TcpListener::bind(at).await.map_err(|source| TurnError::Bind { addr: at, source })?;
                let local = listener.local_addr().map_err(|source| TurnError::Bind { addr: at, source })?;
                tls.push(local);
                tasks.spawn(stream_listener(
                    shared.clone(),
                    listener,
                    Some(acceptor.clone()),
                    connections.clone(),
                    stop_rx.clone(),
                ));
            }
        }
        tasks.spawn(timer(shared.clone(), stop_rx));
        tracing::info!(?udp, ?tls, "TURN relay listening");
        Ok(Arc::new(Self { shared, udp, tls, tasks: Mutex::new(tasks), stop }))
    }

    /// The UDP (and TCP) listener addresses.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    /// The TLS listener addresses.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls
    }

    /// Members whose credentials are accepted; allocations of others end at once.
    pub fn set_members(&self, members: impl IntoIterator<Item = String>) {
        let mut core = self.shared.core();
        core.set_members(members);
        close_freed(&mut core);
    }

    /// Counters for metrics.
    pub fn stats(&self) -> (Stats, usize) {
        let core = self.shared.core();
        (core.stats(), core.allocations())
    }

    /// ICE servers with fresh credentials for `member`, for a client that reached signaling as `host`.
    pub fn ice_servers(&self, member: &str, host: Option<&str>) -> Option<(Vec<IceServer>, Duration)> {
        let config = &self.shared.config;
        let ttl = config.credential_ttl;
        let creds = self.shared.core().issue(member, unix_now(), ttl.as_secs()).ok()?;
        let host = config.public_host.as_deref().or(host).map(url_host)?;
        let port = self.udp.first()?.port();
        let mut urls = vec![format!("turn:{host}:{port}?transport=udp"), format!("turn:{host}:{port}?transport=tcp")];
        if let Some(tls) = self.tls.first() {
            urls.push(format!("turns:{host}:{}?transport=tcp", tls.port()));
        }
        Some((
            vec![
                IceServer { urls: vec![format!("stun:{host}:{port}")], username: None, credential: None },
                IceServer { urls, username: Some(creds.username), credential: Some(creds.password.to_string()) },
            ],
            ttl,
        ))
    }

    /// Stops every listener and relay socket.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        {
            let mut core = self.shared.core();
            core.set_members(std::iter::empty());
            close_freed(&mut core);
        }
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// A UDP socket and a TCP listener on the same port. With port 0 the kernel picks the UDP port, which TCP may
/// already use: then another pair is tried.
async fn bind_udp_and_tcp(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), TurnError> {
    let bind_error = |addr, source| TurnError::Bind { addr, source };
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await.map_err(|source| bind_error(addr, source))?;
        let local = udp.local_addr().map_err(|source| bind_error(addr, source))?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) if addr.port() != 0 || source.kind() != io::ErrorKind::AddrInUse => {
                return Err(bind_error(local, source));
            }
            Err(_) => continue,
        }
    }
    Err(bind_error(addr, io::Error::from(io::ErrorKind::AddrInUse)))
}

/// `host` as it goes in a URL: an IPv6 address in brackets, a `host:port` from a Host header without the port.
fn url_host(host: &str) -> String {
    if let Ok(IpAddr::V6(v6)) = host.parse::<IpAddr>() {
        return format!("[{v6}]");
    }
    if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        return host[..end + 2].to_owned();
    }
    host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host, |(h, _)| h).to_owned()
}

fn close_freed(core: &mut Core) {
    while let Some(Event::Freed { relay, .. }) = core.poll_event() {
        relay.closed.notify_one();
    }
}

fn tls_acceptor(source: &TlsSource) -> Result<TlsAcceptor, TurnError> {
    Ok(crate::tls::ServerTls::load(source, &[]).map_err(|e| TurnError::Tls(e.to_string()))?.acceptor())
}

/// Kernel buffers of the shared UDP listener: a burst from many clients must not overflow the default
/// 208 KiB while the relay is busy (the kernel caps it at net.core.rmem_max / wmem_max).
const LISTENER_SOCKET_BUFFER: usize = 4 << 20;
/// Kernel buffers of one allocation's relay socket: one media flow's bursts.
const RELAY_SOCKET_BUFFER: usize = 1 << 20;

fn enlarge_buffers(socket: &UdpSocket, bytes: usize) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(bytes);
    let _ = socket.set_send_buffer_size(bytes);
}

/// Resolves when the relay is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The data paths a listener or connection relays ChannelData through, by client address. It holds them
/// weakly: an ended allocation's relay socket closes when the server and its task let go, and its entry is
/// dropped when next met or swept.
#[derive(Debug, Default)]
struct Paths {
    by_client: HashMap<SocketAddr, Weak<Path>>,
    sweep_at: usize,
}

impl Paths {
    fn get(&self, client: &SocketAddr) -> Option<Arc<Path>> {
        self.by_client.get(client).and_then(Weak::upgrade)
    }

    fn forget(&mut self, client: &SocketAddr) {
        self.by_client.remove(client);
    }

    fn insert(&mut self, client: SocketAddr, path: &Arc<Path>) {
        if self.by_client.len() >= self.sweep_at {
            self.by_client.retain(|_, path| path.strong_count() > 0);
            self.sweep_at = (2 * self.by_client.len()).max(64);
        }
        self.by_client.insert(client, Arc::downgrade(path));
    }
}

/// Whether `input` is ChannelData (RFC 8656 §12.4), the data path's message.
fn is_channel_data(input: &[u8]) -> bool {
    input.first().is_some_and(|b| b >> 6 == 0b01)
}

/// Relays one message a client sent over `tuple`: ChannelData through the client's data path where it has
/// one, everything else (and a first ChannelData) through the server. What it sends goes into `batch`. `back`
/// makes the way back to the client, which only the server's path needs (not cloned per relayed datagram).
fn from_client(
    shared: &Arc<Shared>,
    paths: &mut Paths,
    tuple: FiveTuple,
    back: impl FnOnce() -> Via,
    input: &[u8],
    out: &mut Vec<u8>,
    batch: &mut Batch,
) {
    let now = Instant::now();
    let channel_data = is_channel_data(input);
    if channel_data && let Some(path) = paths.get(&tuple.client) {
        match path.from_client(now, input) {
            FromClient::ToPeer { peer, payload } => {
                let relay = Via::Udp(path.relay().udp.clone(), peer);
                batch.push(&relay, input.get(payload).unwrap_or_default());
                return;
            }
            FromClient::Drop => return,
            FromClient::Server if path.is_freed() => paths.forget(&tuple.client),
            FromClient::Server => {}
        }
    }
    let back = back();
    let (action, path) = {
        let mut core = shared.core();
        let action = core.handle_client(now, tuple, &back, input, out);
        let path = if channel_data { core.data_path_of(&tuple) } else { None };
        (action, path)
    };
    if let Some(path) = path {
        paths.insert(tuple.client, &path);
    }
    act(shared, action, input, out, &back, batch);
}

async fn udp_listener(shared: Arc<Shared>, socket: Arc<Udp>, mut stop: watch::Receiver<bool>) {
    let Ok(local) = socket.local_addr() else { return };
    let mut buffers = RecvBuffers::new(udp::BATCH);
    let mut out = Vec::new();
    let mut batch = Batch::default();
    let mut paths = Paths::default();
    loop {
        tokio::select! {
            ready = socket.readable() => if ready.is_err() { return },
            () = stopped(&mut stop) => return,
        }
        // Drain the socket without awaiting: every send is a non-blocking try (UDP may drop anyway).
        loop {
            let received = buffers.recv(&socket, |from, input| {
                let tuple = FiveTuple { transport: Transport::Udp, client: from, server: local };
                let back = || Via::Udp(socket.clone(), from);
                from_client(&shared, &mut paths, tuple, back, input, &mut out, &mut batch);
            });
            batch.flush();
            match received {
                Ok(true) => {}
                Ok(false) => break,
                // ICMP port unreachable from an earlier send shows up here on some systems; keep serving.
                Err(_) => {}
            }
        }
    }
}

/// Carries out a client action into `batch`, so that it keeps its place among the datagrams around it.
fn act(
    shared: &Arc<Shared>,
    action: ClientAction<RelaySocket, Via>,
    input: &[u8],
    out: &mut Vec<u8>,
    back: &Via,
    batch: &mut Batch,
) {
    match action {
        ClientAction::None => {}
        ClientAction::Reply => batch.push(back, out),
        ClientAction::ToPeer { relay, peer, payload } => {
            batch.push(&Via::Udp(relay.udp, peer), input.get(payload).unwrap_or_default());
        }
        ClientAction::ToClient(other) => batch.push(&other, out),
        ClientAction::Allocate(pending) => {
            allocate(shared, pending, out);
            batch.push(back, out);
        }
    }
}

fn allocate(shared: &Arc<Shared>, pending: PendingAllocation<Via>, out: &mut Vec<u8>) {
    let bound = bind_relay(&shared.config, pending.ipv6());
    let path = {
        let mut core = shared.core();
        core.complete_allocation(Instant::now(), pending, bound, out).and_then(|id| core.data_path(id))
    };
    if let Some(path) = path {
        tokio::spawn(relay_task(shared.clone(), path));
    }
}

fn bind_relay(config: &TurnConfig, ipv6: bool) -> Result<(SocketAddr, SocketAddr, RelaySocket), BindFailure> {
    let Some(ip) = config.relay_ips.iter().copied().find(|ip| ip.is_ipv6() == ipv6) else {
        return Err(BindFailure::FamilyUnsupported);
    };
    let external = config.external_ips.iter().copied().find(|ip| ip.is_ipv6() == ipv6);
    let (low, high) = config.ports;
    let span = u32::from(high.saturating_sub(low)) + 1;
    let mut seed = [0u8; 4];
    let _ = getrandom::fill(&mut seed);
    let start = u32::from_le_bytes(seed) % span;
    // Random start, then linear probing: ports are not predictable, and a busy range is still searched whole
    // (bounded, so that a full range costs a bounded number of bind calls).
    for step in 0..span.min(512) {
        let port = low.saturating_add(u16::try_from((start + step) % span).unwrap_or(0));
        let Ok(std_socket) = std::net::UdpSocket::bind((ip, port)) else { continue };
        if std_socket.set_nonblocking(true).is_err() {
            continue;
        }
        let Ok(socket) = UdpSocket::from_std(std_socket) else { continue };
        enlarge_buffers(&socket, RELAY_SOCKET_BUFFER);
        let Ok(socket) = Udp::new(socket) else { continue };
        let Ok(bound) = socket.local_addr() else { continue };
        let advertised = external.map_or(bound, |ip| SocketAddr::new(ip, bound.port()));
        return Ok((bound, advertised, RelaySocket { udp: Arc::new(socket), closed: Arc::new(Notify::new()) }));
    }
    Err(BindFailure::NoPort)
}

/// What every relay socket served on one thread reads and writes with: an idle allocation holds no buffer of
/// its own, only its socket and a parked task.
#[derive(Debug)]
struct RelayIo {
    buffers: RecvBuffers,
    out: Vec<u8>,
    batch: Batch,
}

thread_local! {
    static RELAY_IO: std::cell::RefCell<Option<RelayIo>> = const { std::cell::RefCell::new(None) };
}

/// Whether a datagram from `from` may come from another relay socket of this server bound to an address it
/// does not advertise: only the server can name such a peer (by its advertised address, which holds the
/// permission), so the data path leaves it to the server.
fn maybe_own_relay(config: &TurnConfig, from: SocketAddr) -> bool {
    !config.external_ips.is_empty()
        && config.relay_ips.contains(&from.ip())
        && (config.ports.0..=config.ports.1).contains(&from.port())
}

async fn relay_task(shared: Arc<Shared>, path: Arc<Path>) {
    let relay = path.relay().clone();
    loop {
        tokio::select! {
            ready = relay.udp.readable() => if ready.is_err() { return },
            () = relay.closed.notified() => return,
        }
        // Drain what is there without awaiting, so the thread's buffers are never held across an await.
        let gone = RELAY_IO.with(|io| {
            let mut io = io.borrow_mut();
            let io = io.get_or_insert_with(|| RelayIo {
                buffers: RecvBuffers::new(udp::BATCH),
                out: Vec::new(),
                batch: Batch::default(),
            });
            let RelayIo { buffers, out, batch } = io;
            let mut gone = false;
            loop {
                let received = buffers.recv(&relay.udp, |from, payload| {
                    if gone {
                        return;
                    }
                    let now = Instant::now();
                    out.clear();
                    let relayed = if maybe_own_relay(&shared.config, from) {
                        match shared.core().handle_peer(now, path.id(), from, payload, out) {
                            PeerAction::ToClient(_) => FromPeer::Relay,
                            PeerAction::Drop => FromPeer::Drop,
                            PeerAction::Gone => FromPeer::Gone,
                        }
                    } else {
                        path.from_peer(now, from, payload, out)
                    };
                    match relayed {
                        FromPeer::Relay => batch.push(path.client(), out),
                        FromPeer::Drop => {}
                        FromPeer::Gone => gone = true,
                    }
                });
                batch.flush();
                match received {
                    Ok(true) if !gone => {}
                    Ok(_) => return gone,
                    Err(_) => {}
                }
            }
        });
        if gone {
            return;
        }
    }
}

async fn timer(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_secret: Option<Zeroizing<Vec<u8>>> = None;
    for round in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopped(&mut stop) => return,
        }
        if round % 2 == 0
            && let Some(path) = &shared.config.secret_file
        {
            reread_secret(&shared, path, &mut last_secret).await;
        }
        let mut core = shared.core();
        core.handle_timeout(Instant::now());
        close_freed(&mut core);
    }
}

/// Follows the secret file: a content that differs from the current secret becomes the issuing secret, and
/// the old one is still accepted for one credential lifetime. An unreadable or too short file changes nothing
/// (and is logged once per content).
async fn reread_secret(shared: &Shared, path: &std::path::Path, last: &mut Option<Zeroizing<Vec<u8>>>) {
    let Ok(bytes) = tokio::fs::read(path).await.map(Zeroizing::new) else { return };
    if last.as_ref() == Some(&bytes) {
        return;
    }
    match TurnSecret::new(bytes.to_vec()) {
        Ok(next) => {
            let overlap_until = unix_now() + shared.config.credential_ttl.as_secs();
            if shared.core().rotate_secret(next, overlap_until) {
                tracing::info!(overlap_until, "TURN secret rotated");
            }
        }
        Err(error) => tracing::warn!(%error, "the new TURN secret is refused; keeping the current one"),
    }
    *last = Some(bytes);
}

async fn stream_listener(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    connections: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(local) = listener.local_addr() else { return };
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let transport = if tls.is_some() { Transport::Tls } else { Transport::Tcp };
            let tuple = FiveTuple { transport, client, server: local };
            match tls {
                Some(acceptor) => {
                    if let Ok(Ok(stream)) = tokio::time::timeout(FIRST_FRAME, acceptor.accept(stream)).await {
                        connection(shared, tuple, stream).await;
                    }
                }
                None => connection(shared, tuple, stream).await,
            }
            drop(permit);
        });
    }
}

/// Bytes read from a TCP/TLS connection at once.
const READ: usize = 65_536;
/// A connection must complete its TLS handshake and first frame within this time (slow-loris).
const FIRST_FRAME: Duration = Duration::from_secs(10);
/// A connection silent for longer than an allocation lifetime plus margin is gone.
const IDLE: Duration = Duration::from_secs(3660);

async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    shared: Arc<Shared>,
    tuple: FiveTuple,
    stream: S,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    let write = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
            // TLS keeps what the socket did not take yet: push it out before waiting for more.
            if rx.is_empty() && writer.flush().await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let back = Via::Stream(tx);
    let mut buf: Vec<u8> = Vec::with_capacity(READ);
    let mut chunk = vec![0u8; READ];
    let mut out = Vec::new();
    let mut batch = Batch::default();
    let mut paths = Paths::default();
    let mut deadline = FIRST_FRAME;
    'read: loop {
        let n = match tokio::time::timeout(deadline, reader.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let mut used = 0;
        loop {
            let rest = buf.get(used..).unwrap_or_default();
            let len = match frame_len(rest) {
                Ok(Some(len)) if rest.len() >= len => len,
                Ok(_) => break,
                Err(error) => {
                    tracing::debug!(%error, "TURN stream lost its framing; closing");
                    batch.flush();
                    break 'read;
                }
            };
            deadline = IDLE;
            let frame = rest.get(..len).unwrap_or_default();
            from_client(&shared, &mut paths, tuple, || back.clone(), frame, &mut out, &mut batch);
            used += len;
        }
        batch.flush();
        buf.drain(..used);
    }
    {
        let mut core = shared.core();
        core.connection_closed(tuple);
        close_freed(&mut core);
    }
    drop(back);
    let _ = write.await;
}
