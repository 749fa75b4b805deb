//! The native peer: client-core's [`Session`] driven by real IO — the same sans-IO session the browser worker
//! drives, so routing (relay or DataChannel, commit ordering, need-to-know on deliveries, envelopes held while
//! signaling reconnects, mailbox acknowledgements after a save) is one tested copy. One task owns the session,
//! the WebSocket and an RTCPeerConnection per contact; it does what the session says (write this frame, open
//! or close the socket, send this on a DataChannel, accept only this DTLS certificate) and feeds back what the
//! network says. A [`Node`] handle sends it commands and receives its events.
//!
//! The session reconnects on its own with back-off (an open DataChannel keeps working meanwhile).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use peerbubble_client_core::files::{FileHasher, TransferConfig, TransferId};
use peerbubble_client_core::message::{CallSignal, ConversationKind, MessageId};
use peerbubble_client_core::session::{Session, SessionEvent};
use peerbubble_client_core::{Client, ConversationId, Event, SignalEvent};
use peerbubble_proto::{DirectoryEntry, IdentityKey, MemberId};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use zeroize::Zeroizing;

use crate::rtc::{RtcConfig, RtcEvent, RtcPeer};
use crate::signal::{ClientError as SignalError, Ws};

/// How a node behaves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Signaling URL, e.g. `ws://127.0.0.1:8480/v1/signal`.
    pub url: String,
    /// Only relayed (TURN) candidates: the contact never learns this host's addresses.
    pub relay_only: bool,
    /// Open a DataChannel as soon as a 1:1 conversation is ready (the member that opened it calls; the other, if
    /// it has the lower id, calls after a pause should no call come).
    pub auto_connect: bool,
    /// Accept offered files into this directory.
    pub download_dir: Option<PathBuf>,
    /// Keep received files encrypted as they arrived (`NAME.sealed` in the download directory, their keys in the
    /// client's state, which the key store keeps): [`Node::save_file`] decrypts a copy on demand. Without it
    /// files are saved decrypted (a node without a key store could not open them after a restart).
    pub keep_sealed: bool,
    /// Answer every chat message with `echo: <text>`.
    pub echo: bool,
    /// File-transfer tuning.
    pub files: TransferConfig,
    /// Local UDP addresses for WebRTC: a wildcard means every non-loopback interface (default: those and
    /// loopback).
    pub bind: Vec<SocketAddr>,
    /// Whom to trust for a `wss://` URL (default: the system's certificate authorities).
    pub trust: peerbubble_tls_trust::Trust,
}

impl NodeConfig {
    /// Defaults for `url`: auto-connect, no downloads, no echo.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            relay_only: false,
            auto_connect: true,
            download_dir: None,
            keep_sealed: false,
            echo: false,
            files: TransferConfig::default(),
            bind: vec![SocketAddr::from(([0, 0, 0, 0], 0)), SocketAddr::from(([127, 0, 0, 1], 0))],
            trust: peerbubble_tls_trust::Trust::System,
        }
    }
}

/// What the node reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// From the client state machine (file chunks are written, not reported).
    Core(Event),
    /// A DataChannel with this contact opened, its DTLS certificate being the MLS-announced one.
    ChannelOpen(MemberId),
    /// The DataChannel with this contact closed.
    ChannelClosed(MemberId),
    /// The signaling session is (again) up.
    SignalingUp,
    /// The signaling session broke; the node reconnects.
    SignalingDown,
    /// A received file is whole, verified and saved here.
    FileSaved {
        /// Which.
        transfer: TransferId,
        /// Where.
        path: PathBuf,
    },
    /// A received file is whole and verified, and kept encrypted here ([`NodeConfig::keep_sealed`]).
    FileKept {
        /// Which.
        transfer: TransferId,
        /// Where.
        path: PathBuf,
    },
    /// This contact is away: what we sent waits in the bubble's mailbox until it comes back.
    StoredForLater(MemberId),
    /// Envelopes the bubble kept for us were lost while we were away (their time to live passed, or the
    /// mailbox was full); the groups that lost commits were asked to add us again.
    MissedWhileAway(u64),
    /// Something failed (text for people; never content).
    Error(String),
}

/// Errors of the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Signaling failed.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// The client refused.
    #[error(transparent)]
    Client(#[from] peerbubble_client_core::ClientError),
    /// WebRTC failed.
    #[error(transparent)]
    Rtc(#[from] crate::rtc::RtcError),
    /// A local file could not be read or written.
    #[error("file: {0}")]
    Io(#[from] std::io::Error),
    /// The node task ended.
    #[error("the node stopped")]
    Stopped,
    /// Nothing matching arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// This peer does not do that.
    #[error("not supported by this peer: {0}")]
    NotSupported(&'static str),
}

type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

enum Command {
    StartDirect(MemberId, Reply<()>),
    CreateGroup(String, Vec<MemberId>, Reply<ConversationId>),
    AddMember(ConversationId, MemberId, Reply<()>),
    RemoveMember(ConversationId, MemberId, Reply<()>),
    Leave(ConversationId, Reply<()>),
    RemoveContact(MemberId, Reply<()>),
    SendText(ConversationId, String, Reply<MessageId>),
    Connect(MemberId, Reply<()>),
    DropChannel(MemberId, Reply<()>),
    SendFile(MemberId, PathBuf, Reply<TransferId>),
    SaveFile(PathBuf, PathBuf, Reply<u64>),
    Direct(MemberId, Reply<Option<ConversationId>>),
    Directory(Reply<Vec<DirectoryEntry>>),
    Members(ConversationId, Reply<Vec<MemberId>>),
    Snapshot(Reply<Zeroizing<Vec<u8>>>),
    Shutdown(Reply<()>),
}

/// A running native peer.
#[derive(Debug)]
pub struct Node {
    member: MemberId,
    commands: mpsc::Sender<Command>,
    events: mpsc::UnboundedReceiver<NodeEvent>,
    backlog: VecDeque<NodeEvent>,
}

/// Saves the client's state (into the member's encrypted key store); an error is said and nothing is
/// acknowledged to the bubble's mailbox until a save succeeds.
pub type Saver = Box<dyn FnMut(&Client) -> Result<(), String> + Send>;

impl Node {
    /// Connects to the bubble as the holder of `key` and starts the node task, with no state kept.
    pub async fn start(config: NodeConfig, key: IdentityKey) -> Result<Self, NodeError> {
        let core = Client::new(&key);
        Self::start_with(config, key, core, None).await
    }

    /// Like [`Node::start`], from `core` (restored from the key store) and saving it with `saver` whenever it
    /// changed; what the bubble's mailbox delivered is acknowledged only after that. Returns once the session
    /// is authenticated with a complete directory, or with the first refusal or connection error.
    pub async fn start_with(
        config: NodeConfig,
        key: IdentityKey,
        mut core: Client,
        saver: Option<Saver>,
    ) -> Result<Self, NodeError> {
        core.set_file_config(config.files);
        let member = core.member();
        let (commands, rx) = mpsc::channel(64);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (rtc_tx, rtc_rx) = mpsc::channel(1024);
        let mut state = State {
            config,
            session: Session::new(key, None, core),
            ws: None,
            connecting: None,
            started: false,
            up: false,
            start_error: None,
            saver,
            rtcs: HashMap::new(),
            opened: std::collections::HashSet::new(),
            fallbacks: Vec::new(),
            generation: 0,
            rtc_tx,
            outgoing_files: HashMap::new(),
            incoming_files: HashMap::new(),
            events: events_tx,
        };
        state.handshake().await?;
        tokio::spawn(state.run(rx, rtc_rx));
        Ok(Self { member, commands, events, backlog: VecDeque::new() })
    }

    /// Our member id.
    pub fn member(&self) -> MemberId {
        self.member
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Starts a 1:1 conversation.
    pub async fn start_direct(&self, peer: MemberId) -> Result<(), NodeError> {
        self.ask(|r| Command::StartDirect(peer, r)).await
    }

    /// Creates a group chat and invites `members`.
    pub async fn create_group(&self, name: &str, members: &[MemberId]) -> Result<ConversationId, NodeError> {
        self.ask(|r| Command::CreateGroup(name.to_owned(), members.to_vec(), r)).await
    }

    /// Adds a member to a group.
    pub async fn add_member(&self, conversation: ConversationId, member: MemberId) -> Result<(), NodeError> {
        self.ask(|r| Command::AddMember(conversation, member, r)).await
    }

    /// Removes a member from a group.
    pub async fn remove_member(&self, conversation: ConversationId, member: MemberId) -> Result<(), NodeError> {
        self.ask(|r| Command::RemoveMember(conversation, member, r)).await
    }

    /// Leaves a conversation (its state and keys are destroyed).
    pub async fn leave(&self, conversation: ConversationId) -> Result<(), NodeError> {
        self.ask(|r| Command::Leave(conversation, r)).await
    }

    /// Removes a contact (the 1:1 conversation's state and keys are destroyed, the connection closed).
    pub async fn remove_contact(&self, peer: MemberId) -> Result<(), NodeError> {
        self.ask(|r| Command::RemoveContact(peer, r)).await
    }

    /// Sends a chat message.
    pub async fn send_text(&self, conversation: ConversationId, text: &str) -> Result<MessageId, NodeError> {
        self.ask(|r| Command::SendText(conversation, text.to_owned(), r)).await
    }

    /// Opens a DataChannel with the contact of a 1:1 conversation.
    pub async fn connect(&self, peer: MemberId) -> Result<(), NodeError> {
        self.ask(|r| Command::Connect(peer, r)).await
    }

    /// Closes the connection with a contact as if the network dropped it.
    pub async fn drop_channel(&self, peer: MemberId) -> Result<(), NodeError> {
        self.ask(|r| Command::DropChannel(peer, r)).await
    }

    /// Offers a file to a contact; it is sent once accepted.
    pub async fn send_file(&self, peer: MemberId, path: &Path) -> Result<TransferId, NodeError> {
        self.ask(|r| Command::SendFile(peer, path.to_owned(), r)).await
    }

    /// Decrypts a received file kept encrypted (`sealed`, as [`NodeEvent::FileKept`] named it) into `to`, which
    /// must not exist yet; checks the SHA-256 the sender signed. Answers the bytes written.
    pub async fn save_file(&self, sealed: &Path, to: &Path) -> Result<u64, NodeError> {
        self.ask(|r| Command::SaveFile(sealed.to_owned(), to.to_owned(), r)).await
    }

    /// The 1:1 conversation with a contact.
    pub async fn direct(&self, peer: MemberId) -> Result<Option<ConversationId>, NodeError> {
        self.ask(|r| Command::Direct(peer, r)).await
    }

    /// The members we may see.
    pub async fn directory(&self) -> Result<Vec<DirectoryEntry>, NodeError> {
        self.ask(Command::Directory).await
    }

    /// The other members of a conversation.
    pub async fn members(&self, conversation: ConversationId) -> Result<Vec<MemberId>, NodeError> {
        self.ask(|r| Command::Members(conversation, r)).await
    }

    /// The client's MLS state, serialised (secret: for the encrypted key store and for tests).
    pub async fn mls_snapshot(&self) -> Result<Zeroizing<Vec<u8>>, NodeError> {
        self.ask(Command::Snapshot).await
    }

    /// Stops the node (closes connections).
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.ask(Command::Shutdown).await
    }

    /// The next event.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<NodeEvent> {
        if let Some(event) = self.backlog.pop_front() {
            return Some(event);
        }
        tokio::time::timeout(timeout, self.events.recv()).await.ok().flatten()
    }

    /// Waits for an event matching `pred`; the others are kept for later calls, in order.
    pub async fn wait_for(
        &mut self,
        what: &'static str,
        timeout: Duration,
        mut pred: impl FnMut(&NodeEvent) -> bool,
    ) -> Result<NodeEvent, NodeError> {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return self.backlog.remove(i).ok_or(NodeError::Stopped);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| NodeError::Timeout(what))?
                .ok_or(NodeError::Stopped)?;
            if pred(&event) {
                return Ok(event);
            }
            self.backlog.push_back(event);
        }
    }

    /// Every event that arrived so far, without waiting.
    pub fn drain(&mut self) -> Vec<NodeEvent> {
        let mut out: Vec<_> = self.backlog.drain(..).collect();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }
}

struct Connection {
    rtc: Arc<RtcPeer>,
    generation: u64,
    open: bool,
}

struct IncomingFile {
    file: std::fs::File,
    path: PathBuf,
    sealed: bool,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Ws, SignalError>> + Send>>;

/// How long [`Node::start`] waits for the first session.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A 1:1 conversation a contact opened: how long its offer may take before this side (the lower id) offers.
const JOINER_OFFERS_AFTER_MS: u64 = 3_000;

struct State {
    config: NodeConfig,
    session: Session,
    /// The open WebSocket, once the session asked for it and it opened.
    ws: Option<Ws>,
    /// The WebSocket being opened.
    connecting: Option<Connecting>,
    /// The first session was ready ([`Node::start`] returned).
    started: bool,
    /// The session is ready now (a break is reported once, not at every attempt to come back).
    up: bool,
    /// Why the first session did not come up.
    start_error: Option<SignalError>,
    saver: Option<Saver>,
    rtcs: HashMap<MemberId, Connection>,
    /// Contacts this node opened a 1:1 conversation with that is not ready yet: it offers the connection once
    /// it is, whatever the ids.
    opened: std::collections::HashSet<MemberId>,
    /// A 1:1 conversation a contact opened: the contact offers; if no connection exists by the time (wall ms),
    /// this node offers (it has the lower id; an older contact leaves it to the lower id).
    fallbacks: Vec<(u64, MemberId)>,
    generation: u64,
    rtc_tx: mpsc::Sender<(MemberId, u64, RtcEvent)>,
    outgoing_files: HashMap<TransferId, std::fs::File>,
    incoming_files: HashMap<TransferId, IncomingFile>,
    events: mpsc::UnboundedSender<NodeEvent>,
}

async fn next_message(ws: &mut Option<Ws>) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    use futures_util::StreamExt as _;
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn opened(connecting: &mut Option<Connecting>) -> Result<Ws, SignalError> {
    match connecting {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl State {
    /// Drives the session until it is ready (or refused, or the socket cannot be opened).
    async fn handshake(&mut self) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            self.settle().await;
            if self.started {
                return Ok(());
            }
            if let Some(e) = self.start_error.take() {
                self.close_socket().await;
                return Err(e.into());
            }
            let wake = self.wake();
            tokio::select! {
                message = next_message(&mut self.ws) => self.on_message(message).await,
                socket = opened(&mut self.connecting) => self.on_opened(socket),
                _ = tokio::time::sleep(wake) => self.session.handle_timeout(wall_ms()),
                _ = tokio::time::sleep_until(deadline) => {
                    self.close_socket().await;
                    return Err(SignalError::Timeout.into());
                }
            }
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut rtc_rx: mpsc::Receiver<(MemberId, u64, RtcEvent)>,
    ) {
        loop {
            self.settle().await;
            let wake = self.wake();
            tokio::select! {
                message = next_message(&mut self.ws) => self.on_message(message).await,
                socket = opened(&mut self.connecting) => self.on_opened(socket),
                Some((peer, generation, event)) = rtc_rx.recv() => self.on_rtc(peer, generation, event).await,
                command = commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        for (_, c) in self.rtcs.drain() {
                            c.rtc.close().await;
                        }
                        self.close_socket().await;
                        let _ = reply.send(Ok(()));
                        return;
                    }
                    Some(command) => self.on_command(command).await,
                    None => return,
                },
                _ = tokio::time::sleep(wake) => {
                    self.session.handle_timeout(wall_ms());
                    self.offer_fallbacks().await;
                }
            }
        }
    }

    /// Until the session's next timer (or a fallback offer).
    fn wake(&self) -> Duration {
        let at = self.session.poll_timeout().unwrap_or_else(|| wall_ms() + 60_000);
        let at = self.fallbacks.iter().map(|(due, _)| *due).fold(at, u64::min);
        Duration::from_millis(at.saturating_sub(wall_ms()))
    }

    /// Offers to the contacts whose own offer did not come in time.
    async fn offer_fallbacks(&mut self) {
        let now = wall_ms();
        let (due, later): (Vec<_>, Vec<_>) = self.fallbacks.drain(..).partition(|(at, _)| *at <= now);
        self.fallbacks = later;
        for (_, peer) in due {
            if !self.rtcs.contains_key(&peer)
                && let Err(e) = self.call(peer).await
            {
                self.emit(NodeEvent::Error(format!("call set-up failed: {e}")));
            }
        }
    }

    fn emit(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }

    async fn close_socket(&mut self) {
        self.connecting = None;
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }

    fn on_opened(&mut self, socket: Result<Ws, SignalError>) {
        self.connecting = None;
        match socket {
            Ok(ws) => {
                self.ws = Some(ws);
                self.session.connected(wall_ms());
            }
            Err(e) => {
                if !self.started {
                    self.start_error.get_or_insert(e);
                }
                self.session.disconnected(None, wall_ms());
            }
        }
    }

    async fn on_message(&mut self, message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
        let now = wall_ms();
        match message {
            Some(Ok(Message::Text(text))) => {
                // A violation queued a Disconnect: handled with the other events.
                let _ = self.session.handle_text(text.as_bytes(), now);
            }
            // Signaling v1 is text only: binary is a violation, the session says so.
            Some(Ok(Message::Binary(bytes))) => {
                let _ = self.session.handle_text(&bytes, now);
            }
            Some(Ok(Message::Close(frame))) => {
                self.ws = None;
                self.session.disconnected(frame.map(|f| u16::from(f.code)), now);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                self.ws = None;
                self.session.disconnected(None, now);
            }
        }
    }

    /// Everything the session produced, done: the state saved when it changed (before anything that used its
    /// secrets leaves, and before the mailbox is told it may forget what it delivered), frames written, events
    /// handled — until the session is quiet.
    async fn settle(&mut self) {
        loop {
            if self.session.take_changed() && self.persist() {
                self.session.saved(wall_ms());
            }
            let mut moved = false;
            while let Some(frame) = self.session.poll_transmit() {
                moved = true;
                self.write(frame).await;
            }
            // In batches: what handling an event produces waits for the next save.
            let batch: Vec<SessionEvent> = std::iter::from_fn(|| self.session.poll_event()).collect();
            for event in batch {
                moved = true;
                self.on_session_event(event).await;
            }
            if !moved {
                return;
            }
        }
    }

    async fn write(&mut self, frame: String) {
        use futures_util::SinkExt as _;
        let Some(ws) = &mut self.ws else { return };
        if ws.send(Message::text(frame)).await.is_err() {
            self.ws = None;
            self.session.disconnected(None, wall_ms());
        }
    }

    /// Saves the client's state (when the node keeps one); false when that failed (nothing is acknowledged to
    /// the mailbox then: it delivers again on the next connection).
    fn persist(&mut self) -> bool {
        let Some(saver) = &mut self.saver else { return true };
        if let Err(e) = saver(self.session.client()) {
            self.emit(NodeEvent::Error(format!("cannot save the conversations: {e}")));
            return false;
        }
        true
    }

    async fn on_session_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Signal(SignalEvent::Connect) => {
                let (url, trust) = (self.config.url.clone(), self.config.trust);
                self.connecting = Some(Box::pin(async move { crate::signal::open_socket(&url, trust).await }));
            }
            SessionEvent::Signal(SignalEvent::Disconnect) => {
                self.close_socket().await;
                self.session.disconnected(None, wall_ms());
            }
            SessionEvent::Signal(SignalEvent::Ready { .. }) => {
                if self.started {
                    self.emit(NodeEvent::SignalingUp);
                }
                self.started = true;
                self.up = true;
            }
            SessionEvent::Signal(SignalEvent::Closed { code, retry_in_ms }) => {
                self.ws = None;
                if !self.started {
                    self.start_error.get_or_insert(match code {
                        Some(code) => SignalError::Refused {
                            code,
                            message: code.as_str().to_owned(),
                            retry_after_ms: retry_in_ms,
                        },
                        None => SignalError::Closed(None),
                    });
                    return;
                }
                if std::mem::take(&mut self.up) {
                    self.emit(NodeEvent::SignalingDown);
                }
                if let (Some(code), None) = (code, retry_in_ms) {
                    self.emit(NodeEvent::Error(format!("the bubble refused this member: {}", code.as_str())));
                }
            }
            SessionEvent::Signal(SignalEvent::Refused { code, .. }) => {
                self.emit(NodeEvent::Error(format!("server: {}", code.as_str())));
            }
            SessionEvent::Signal(_) => {}
            SessionEvent::Core(event) => self.on_core_event(event).await,
            SessionEvent::ChannelSend { to, bytes } => {
                let rtc = self.rtcs.get(&to).filter(|c| c.open).map(|c| c.rtc.clone());
                let sent = match rtc {
                    Some(rtc) => rtc.send(&bytes).await.is_ok(),
                    None => false,
                };
                // The channel went away meanwhile: the session relays an envelope instead.
                if !sent && !self.session.channel_send_failed(to, bytes, wall_ms()) {
                    self.emit(NodeEvent::Error("DataChannel message lost".into()));
                }
            }
            SessionEvent::Undeliverable { to, reason } => {
                self.emit(NodeEvent::Error(format!("not delivered to {to}: {reason}")));
            }
            SessionEvent::StoredForLater { to } => self.emit(NodeEvent::StoredForLater(to)),
            SessionEvent::MissedWhileAway { lost } => self.emit(NodeEvent::MissedWhileAway(lost)),
        }
    }

    async fn on_rtc(&mut self, peer: MemberId, generation: u64, event: RtcEvent) {
        if self.rtcs.get(&peer).is_none_or(|c| c.generation != generation) {
            return;
        }
        match event {
            RtcEvent::Connected { remote_fingerprint } => {
                if !self.session.client_mut().verify_dtls(peer, &remote_fingerprint) {
                    self.close_rtc(peer, false).await;
                    self.emit(NodeEvent::Error("DTLS certificate is not the announced one; call refused".into()));
                }
            }
            RtcEvent::ChannelOpen => {
                if let Some(c) = self.rtcs.get_mut(&peer) {
                    c.open = true;
                }
                self.session.channel(peer, true, wall_ms());
                self.emit(NodeEvent::ChannelOpen(peer));
            }
            RtcEvent::Message(bytes) => self.session.handle_channel(peer, &bytes, wall_ms()),
            RtcEvent::ChannelClosed | RtcEvent::Failed(_) => {
                self.close_rtc(peer, true).await;
            }
            RtcEvent::LocalCandidate(_) | RtcEvent::GatheringComplete => {}
        }
    }

    /// Closes the connection with `peer`; `failed` says the network ended it (reported when it never opened).
    async fn close_rtc(&mut self, peer: MemberId, failed: bool) {
        if let Some(c) = self.rtcs.remove(&peer) {
            c.rtc.close().await;
            self.session.channel(peer, false, wall_ms());
            if c.open {
                self.emit(NodeEvent::ChannelClosed(peer));
            } else if failed {
                self.emit(NodeEvent::Error(format!(
                    "no direct or relayed connection with {peer} could be set up; messages keep using the relay"
                )));
            }
        }
    }

    async fn new_rtc(&mut self, peer: MemberId, offerer: bool) -> Result<Arc<RtcPeer>, NodeError> {
        self.close_rtc(peer, false).await;
        let ice_servers = self.session.signaling().ice_servers().to_vec();
        let (rtc, mut events) = RtcPeer::new(RtcConfig {
            ice_servers,
            relay_only: self.config.relay_only,
            bind: self.config.bind.clone(),
            offerer,
            ..RtcConfig::default()
        })
        .await?;
        let rtc = Arc::new(rtc);
        self.generation += 1;
        let generation = self.generation;
        let tx = self.rtc_tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if tx.send((peer, generation, event)).await.is_err() {
                    return;
                }
            }
        });
        self.rtcs.insert(peer, Connection { rtc: rtc.clone(), generation, open: false });
        Ok(rtc)
    }

    async fn call(&mut self, peer: MemberId) -> Result<(), NodeError> {
        let rtc = self.new_rtc(peer, true).await?;
        let sdp = rtc.create_offer().await?;
        self.session.act(wall_ms(), |c| c.start_call(peer, &sdp, &rtc.local_fingerprint()))?;
        Ok(())
    }

    async fn on_command(&mut self, command: Command) {
        let now = wall_ms();
        match command {
            Command::StartDirect(peer, r) => {
                if self.session.client().direct_conversation(peer).is_none() {
                    self.opened.insert(peer);
                }
                let _ = r.send(self.session.act(now, |c| c.start_direct(peer)).map_err(Into::into));
            }
            Command::CreateGroup(name, members, r) => {
                let _ = r.send(self.session.act(now, |c| c.create_group(&name, &members)).map_err(Into::into));
            }
            Command::AddMember(conversation, m, r) => {
                let _ = r.send(self.session.act(now, |c| c.add_member(conversation, m)).map_err(Into::into));
            }
            Command::RemoveMember(conversation, m, r) => {
                let _ = r.send(self.session.act(now, |c| c.remove_member(conversation, m)).map_err(Into::into));
            }
            Command::Leave(conversation, r) => {
                let _ = r.send(self.session.act(now, |c| c.leave(conversation)).map_err(Into::into));
            }
            Command::RemoveContact(peer, r) => {
                let result = self.session.act(now, |c| c.remove_contact(peer)).map_err(Into::into);
                self.close_rtc(peer, false).await;
                let _ = r.send(result);
            }
            Command::SendText(conversation, text, r) => {
                let _ = r.send(self.session.act(now, |c| c.send_text(conversation, &text)).map_err(Into::into));
            }
            Command::Connect(peer, r) => {
                let result = self.call(peer).await;
                let _ = r.send(result);
            }
            Command::DropChannel(peer, r) => {
                self.close_rtc(peer, false).await;
                let _ = self.session.act(wall_ms(), |c| c.hangup(peer));
                let _ = r.send(Ok(()));
            }
            Command::SendFile(peer, path, r) => {
                let result = self.offer_file(peer, &path);
                let _ = r.send(result);
            }
            Command::SaveFile(sealed, to, r) => {
                let _ = r.send(sealed::save(self.session.client(), &sealed, &to));
            }
            Command::Direct(peer, r) => {
                let _ = r.send(Ok(self.session.client().direct_conversation(peer)));
            }
            Command::Directory(r) => {
                let _ = r.send(Ok(self.session.signaling().directory().values().cloned().collect()));
            }
            Command::Members(conversation, r) => {
                let _ = r.send(self.session.client().members(conversation).map_err(Into::into));
            }
            Command::Snapshot(r) => {
                let _ = r.send(Ok(self.session.client().mls_snapshot()));
            }
            Command::Shutdown(_) => {}
        }
    }

    fn offer_file(&mut self, peer: MemberId, path: &Path) -> Result<TransferId, NodeError> {
        let mut file = std::fs::File::open(path)?;
        let (size, sha256) = hash_file(&mut file)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let transfer = self.session.act(wall_ms(), |c| c.offer_file(peer, name, size, sha256))?;
        self.outgoing_files.insert(transfer, file);
        Ok(transfer)
    }

    async fn on_core_event(&mut self, event: Event) {
        match &event {
            Event::ConversationReady { kind: ConversationKind::Direct, members, .. } => {
                if let [peer] = members.as_slice()
                    && self.config.auto_connect
                {
                    // The side that opened the conversation offers; the other, if it has the lower id, offers
                    // after a pause should no offer come (a contact with the older rule: the lower id offers).
                    if self.opened.remove(peer) {
                        if let Err(e) = self.call(*peer).await {
                            self.emit(NodeEvent::Error(format!("call set-up failed: {e}")));
                        }
                    } else if self.session.member() < *peer {
                        self.fallbacks.push((wall_ms() + JOINER_OFFERS_AFTER_MS, *peer));
                    }
                }
            }
            Event::Call { from, signal: CallSignal::Offer { sdp, fingerprint, .. }, .. } => {
                let (from, sdp, fingerprint) = (*from, sdp.clone(), *fingerprint);
                let open = self.rtcs.get(&from).filter(|c| c.open).map(|c| c.rtc.clone());
                // A call adding its media to the open connection (same certificate, same ICE session): answered
                // only by the echo, which sends every track back; otherwise it is a new connection.
                let reoffer = match &open {
                    Some(rtc) => rtc.is_renegotiation(&sdp).await,
                    None => false,
                };
                let result = async {
                    let (rtc, answer) = match open {
                        Some(rtc) if reoffer => {
                            if !self.config.echo {
                                return Err(NodeError::NotSupported("media calls (only `--echo` answers them)"));
                            }
                            let answer = rtc.accept_media_offer(&sdp, &fingerprint).await?;
                            (rtc, answer)
                        }
                        _ => {
                            let rtc = self.new_rtc(from, false).await?;
                            let answer = rtc.accept_offer(&sdp, &fingerprint).await?;
                            (rtc, answer)
                        }
                    };
                    self.session.act(wall_ms(), |c| c.answer_call(from, &answer, &rtc.local_fingerprint()))?;
                    Ok::<_, NodeError>(())
                }
                .await;
                if let Err(e) = result {
                    // A refused media offer was rolled back: the DataChannel keeps working.
                    if !reoffer {
                        self.close_rtc(from, false).await;
                    }
                    self.emit(NodeEvent::Error(format!("answering a call failed: {e}")));
                }
            }
            // The echo picks up every audio or video call (the caller then adds its media, echoed back); without
            // it the native peer has no media and says so.
            Event::Call { from, signal: CallSignal::Ring { ring, .. }, .. } => {
                let (from, ring) = (*from, *ring);
                let echo = self.config.echo;
                let answered = self.session.act(wall_ms(), |c| {
                    if echo {
                        c.answer_ring(from, ring, true)
                    } else {
                        c.end_ring(from, ring, peerbubble_client_core::message::EndReason::Declined)
                    }
                });
                if let Err(e) = answered {
                    self.emit(NodeEvent::Error(format!("answering a ring failed: {e}")));
                }
            }
            Event::Call { from, signal: CallSignal::Answer { sdp, fingerprint, .. }, .. } => {
                let rtc = self.rtcs.get(from).map(|c| c.rtc.clone());
                if let Some(rtc) = rtc
                    && let Err(e) = rtc.accept_answer(sdp, fingerprint).await
                {
                    let from = *from;
                    self.close_rtc(from, false).await;
                    self.emit(NodeEvent::Error(format!("call answer refused: {e}")));
                }
            }
            // A candidate the contact gathered after its offer or answer left (the browser sends its description
            // at once and trickles the rest); core already checked it is one `candidate:` line of this call.
            Event::Call { from, signal: CallSignal::Candidate { candidate, .. }, .. } => {
                let rtc = self.rtcs.get(from).map(|c| c.rtc.clone());
                if let Some(rtc) = rtc
                    && rtc.add_remote_candidate(candidate).await.is_err()
                {
                    // One unusable candidate (another address family) leaves the others to connect.
                    tracing::debug!(peer = %from, "a trickled candidate could not be used");
                }
            }
            Event::Call { from, signal: CallSignal::Hangup { .. }, .. } => {
                let from = *from;
                self.close_rtc(from, false).await;
            }
            Event::Call { .. } => {}
            Event::Message { conversation, text, from, .. } if self.config.echo && *from != self.session.member() => {
                let (conversation, reply) = (*conversation, format!("echo: {text}"));
                let _ = self.session.act(wall_ms(), |c| c.send_text(conversation, &reply));
            }
            Event::FileOffered { offer, .. } => {
                if let Some(dir) = self.config.download_dir.clone()
                    && let Err(e) = self.accept_file(&dir, offer.transfer, &offer.name)
                {
                    self.emit(NodeEvent::Error(format!("cannot accept file: {e}")));
                }
            }
            Event::FileSendable { transfer, .. } => {
                let transfer = *transfer;
                if let Err(e) = self.pump(transfer).await {
                    self.emit(NodeEvent::Error(format!("file send paused: {e}")));
                }
            }
            Event::FileChunk { transfer, index, offset, plaintext, sealed } => {
                // Kept as received (encrypted), or saved decrypted when the node keeps no key store.
                if let Some(f) = self.incoming_files.get_mut(transfer) {
                    let written = if f.sealed {
                        sealed::append(&mut f.file, *index, sealed)
                    } else {
                        f.file.seek(SeekFrom::Start(*offset)).and_then(|_| f.file.write_all(plaintext))
                    };
                    if let Err(e) = written {
                        self.emit(NodeEvent::Error(format!("cannot write file: {e}")));
                    }
                }
                return;
            }
            Event::FileReceived { transfer, .. } => {
                if let Some(mut f) = self.incoming_files.remove(transfer) {
                    let _ = f.file.flush();
                    let transfer = *transfer;
                    if f.sealed {
                        // The key stays with the client (and its key store) to open the file later.
                        self.emit(NodeEvent::FileKept { transfer, path: f.path });
                    } else {
                        // Saved decrypted: the key kept to open sealed bytes has no use.
                        let _ = self.session.act(wall_ms(), |c| c.forget_file(transfer));
                        self.emit(NodeEvent::FileSaved { transfer, path: f.path });
                    }
                }
            }
            Event::FileSent { transfer } | Event::FileCancelled { transfer, .. } => {
                self.outgoing_files.remove(transfer);
            }
            _ => {}
        }
        self.emit(NodeEvent::Core(event));
    }

    fn accept_file(&mut self, dir: &Path, transfer: TransferId, name: &str) -> Result<(), NodeError> {
        let sealed = self.config.keep_sealed;
        let name = if sealed { format!("{name}.sealed") } else { name.to_owned() };
        let mut path = dir.join(&name);
        let mut n = 1;
        while path.exists() {
            path = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        if sealed {
            sealed::header(&mut file, transfer)?;
        }
        self.session.act(wall_ms(), |c| c.accept_file(transfer))?;
        self.incoming_files.insert(transfer, IncomingFile { file, path, sealed });
        Ok(())
    }

    /// Reads, seals and sends chunks while the transfer's window allows; DataChannel backpressure applies.
    async fn pump(&mut self, transfer: TransferId) -> Result<(), NodeError> {
        let Some(peer) = self.session.client().file_peer(transfer) else { return Ok(()) };
        let mut buf = Vec::new();
        loop {
            let Some(rtc) = self.rtcs.get(&peer).filter(|c| c.open).map(|c| c.rtc.clone()) else {
                return Ok(()); // resumes when the channel is back (the receiver sends Resume)
            };
            let Some(request) = self.session.client_mut().next_file_chunk(transfer) else { return Ok(()) };
            let Some(f) = self.outgoing_files.get_mut(&transfer) else { return Ok(()) };
            buf.resize(request.len as usize, 0);
            f.seek(SeekFrom::Start(request.offset))?;
            f.read_exact(&mut buf)?;
            let frame = self.session.client_mut().seal_file_chunk(transfer, request.index, &buf)?;
            rtc.send(&frame).await?;
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("member", &self.session.member()).finish_non_exhaustive()
    }
}

/// The size and SHA-256 of what `file` holds from where it is to its end.
fn hash_file(file: &mut std::fs::File) -> std::io::Result<(u64, [u8; 32])> {
    let mut hasher = FileHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Received files kept encrypted at rest: a header naming the transfer, then each chunk as it arrived (sealed
/// with the transfer's key, which only the client holds), in arrival order.
mod sealed {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
    use std::path::Path;

    use peerbubble_client_core::Client;
    use peerbubble_client_core::files::TransferId;

    use super::NodeError;

    const MAGIC: &[u8; 16] = b"peerbubble-file1";

    pub(super) fn header(file: &mut std::fs::File, transfer: TransferId) -> std::io::Result<()> {
        file.write_all(MAGIC)?;
        file.write_all(&transfer.0)
    }

    pub(super) fn append(file: &mut std::fs::File, index: u32, sealed: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(sealed.len()).map_err(|_| std::io::Error::other("chunk too large"))?;
        file.seek(SeekFrom::End(0))?;
        file.write_all(&index.to_le_bytes())?;
        file.write_all(&len.to_le_bytes())?;
        file.write_all(sealed)
    }

    fn bad(what: &str) -> NodeError {
        NodeError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()))
    }

    /// Decrypts `sealed` into `to` (created, never overwritten), chunk by chunk, and checks the whole file's
    /// SHA-256 against the sender's signed offer; a copy that does not match is removed.
    pub(super) fn save(client: &Client, sealed: &Path, to: &Path) -> Result<u64, NodeError> {
        let mut input = std::io::BufReader::new(std::fs::File::open(sealed)?);
        let mut head = [0u8; 32];
        input.read_exact(&mut head).map_err(|_| bad("not a file kept by PeerBubble"))?;
        if &head[..16] != MAGIC {
            return Err(bad("not a file kept by PeerBubble"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&head[16..]);
        let transfer = TransferId(id);
        let offer = client.file_offer(transfer).ok_or_else(|| bad("this member holds no key for that file"))?.clone();
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(to)?;
        let result = (|| {
            let mut seen = 0u32;
            loop {
                let mut frame = [0u8; 8];
                match input.read_exact(&mut frame) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.into()),
                }
                let index = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
                let len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
                if index >= offer.chunks || len > offer.chunk_size as usize + 64 {
                    return Err(bad("the kept file is damaged"));
                }
                let mut chunk = vec![0u8; len];
                input.read_exact(&mut chunk).map_err(|_| bad("the kept file is cut short"))?;
                let plain = client.open_stored_chunk(transfer, index, &chunk)?;
                out.seek(SeekFrom::Start(u64::from(index) * u64::from(offer.chunk_size)))?;
                out.write_all(&plain)?;
                seen += 1;
            }
            if seen < offer.chunks {
                return Err(bad("the kept file misses chunks"));
            }
            out.flush()?;
            let (size, sha256) = super::hash_file(&mut std::fs::File::open(to)?)?;
            if size != offer.size || sha256 != offer.sha256 {
                return Err(bad("the decrypted copy does not match what the sender signed"));
            }
            Ok(size)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(to);
        }
        result
    }
}
