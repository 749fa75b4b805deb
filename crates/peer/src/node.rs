//! The native peer: client-core driven by real IO. One task owns the signaling session, the client state
//! machine and an RTCPeerConnection per contact; it does what the state machine says (relay this envelope,
//! order this commit, send this on a DataChannel, accept only this DTLS certificate) and feeds back what the
//! network says. A [`Node`] handle sends it commands and receives its events.
//!
//! The signaling session reconnects on its own (an open DataChannel keeps working meanwhile); envelopes meant
//! for the relay wait for it.

use std::collections::{HashMap, VecDeque};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use peerbubble_client_core::files::{FileHasher, TransferConfig, TransferId};
use peerbubble_client_core::message::{CallSignal, ConversationKind, MessageId};
use peerbubble_client_core::{Client, ConversationId, Event, Output, Path as Via};
use peerbubble_proto::{DirectoryEntry, ErrorCode, IdentityKey, MemberId, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::rtc::{RtcConfig, RtcEvent, RtcPeer};
use crate::signal::{ClientError as SignalError, SignalClient};

/// How a node behaves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Signaling URL, e.g. `ws://127.0.0.1:8480/v1/signal`.
    pub url: String,
    /// Only relayed (TURN) candidates: the contact never learns this host's addresses.
    pub relay_only: bool,
    /// Open a DataChannel as soon as a 1:1 conversation is ready (the member with the lower id calls).
    pub auto_connect: bool,
    /// Accept offered files into this directory.
    pub download_dir: Option<PathBuf>,
    /// Answer every chat message with `echo: <text>`.
    pub echo: bool,
    /// File-transfer tuning.
    pub files: TransferConfig,
    /// Local UDP addresses for WebRTC: a wildcard means every non-loopback interface (default: those and
    /// loopback).
    pub bind: Vec<SocketAddr>,
}

impl NodeConfig {
    /// Defaults for `url`: auto-connect, no downloads, no echo.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            relay_only: false,
            auto_connect: true,
            download_dir: None,
            echo: false,
            files: TransferConfig::default(),
            bind: vec![SocketAddr::from(([0, 0, 0, 0], 0)), SocketAddr::from(([127, 0, 0, 1], 0))],
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
    /// changed; what the bubble's mailbox delivered is acknowledged only after that.
    pub async fn start_with(
        config: NodeConfig,
        key: IdentityKey,
        mut core: Client,
        saver: Option<Saver>,
    ) -> Result<Self, NodeError> {
        let signal = SignalClient::connect(&config.url, &key).await?;
        let member = signal.member();
        core.set_directory(signal.directory().values().cloned());
        core.set_file_config(config.files);
        let (commands, rx) = mpsc::channel(64);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (rtc_tx, rtc_rx) = mpsc::channel(1024);
        let core_generation = core.mls_generation();
        let state = State {
            config,
            key,
            core,
            signal: Some(signal),
            held: VecDeque::new(),
            commits: HashMap::new(),
            relays: HashMap::new(),
            mailbox_upto: None,
            saved_generation: core_generation,
            dirty: false,
            saver,
            rtcs: HashMap::new(),
            generation: 0,
            rtc_tx,
            outgoing_files: HashMap::new(),
            incoming_files: HashMap::new(),
            events: events_tx,
        };
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
}

struct State {
    config: NodeConfig,
    key: IdentityKey,
    core: Client,
    signal: Option<SignalClient>,
    /// Relay envelopes waiting for signaling to come back.
    held: VecDeque<(MemberId, Vec<u8>)>,
    /// Commit frame id -> client token.
    commits: HashMap<u64, u64>,
    /// Send frame id -> recipient, until the server answers.
    relays: HashMap<u64, MemberId>,
    /// The highest mailbox `seq` handled and not acknowledged yet: acknowledged once the state it changed is
    /// saved (at once when the node keeps no state).
    mailbox_upto: Option<u64>,
    /// The client's MLS generation at the last save.
    saved_generation: u64,
    /// Something a save keeps changed since the last save.
    dirty: bool,
    saver: Option<Saver>,
    rtcs: HashMap<MemberId, Connection>,
    generation: u64,
    rtc_tx: mpsc::Sender<(MemberId, u64, RtcEvent)>,
    outgoing_files: HashMap<TransferId, std::fs::File>,
    incoming_files: HashMap<TransferId, IncomingFile>,
    events: mpsc::UnboundedSender<NodeEvent>,
}

async fn next_signal(signal: &mut Option<SignalClient>) -> Result<ServerFrame, SignalError> {
    match signal {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl State {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut rtc_rx: mpsc::Receiver<(MemberId, u64, RtcEvent)>,
    ) {
        let mut ping = tokio::time::interval(Duration::from_secs(10));
        let mut reconnect = tokio::time::interval(Duration::from_millis(250));
        loop {
            self.settle().await;
            let wake = self.core.poll_timeout().map(|at| at.saturating_sub(wall_ms())).unwrap_or(60_000);
            tokio::select! {
                frame = next_signal(&mut self.signal) => self.on_signal(frame),
                Some((peer, generation, event)) = rtc_rx.recv() => self.on_rtc(peer, generation, event).await,
                command = commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        for (_, c) in self.rtcs.drain() {
                            c.rtc.close().await;
                        }
                        if let Some(s) = self.signal.take() {
                            let _ = s.close().await;
                        }
                        let _ = reply.send(Ok(()));
                        return;
                    }
                    Some(command) => self.on_command(command).await,
                    None => return,
                },
                _ = ping.tick() => {
                    if let Some(s) = &mut self.signal && s.ping().await.is_err() {
                        self.signal_down();
                    }
                }
                _ = reconnect.tick(), if self.signal.is_none() => self.reconnect().await,
                _ = tokio::time::sleep(Duration::from_millis(wake)) => self.core.handle_timeout(wall_ms()),
            }
        }
    }

    fn emit(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }

    fn signal_down(&mut self) {
        self.signal = None;
        // Commits in flight are lost with the session: the client retries them.
        for (_, token) in self.commits.drain() {
            self.core.commit_rejected(token);
        }
        // What the mailbox gave and was not acknowledged comes again on the next session.
        self.relays.clear();
        self.mailbox_upto = None;
        self.core.signaling_lost();
        self.emit(NodeEvent::SignalingDown);
    }

    async fn reconnect(&mut self) {
        if let Ok(signal) = SignalClient::connect(&self.config.url, &self.key).await {
            self.core.set_directory(signal.directory().values().cloned());
            self.signal = Some(signal);
            self.emit(NodeEvent::SignalingUp);
            while let Some((to, body)) = self.held.pop_front() {
                self.relay(to, body).await;
            }
        }
    }

    fn on_signal(&mut self, frame: Result<ServerFrame, SignalError>) {
        let now = wall_ms();
        match frame {
            Ok(ServerFrame::Deliver { from, body, seq, .. }) => {
                // Need-to-know, checked again on what the server delivers (as client-core's signaling does).
                let visible = from == self.core.member()
                    || self.signal.as_ref().is_some_and(|s| s.directory().contains_key(&from));
                if visible {
                    self.core.handle_envelope(from, &body.to_bytes(), Via::Relay, now);
                }
                if seq.is_some() {
                    self.mailbox_upto = seq.max(self.mailbox_upto);
                }
            }
            Ok(ServerFrame::Gap { seq, lost, groups }) => {
                for group in &groups {
                    self.core.missed_commits(group.as_bytes());
                }
                self.mailbox_upto = Some(seq).max(self.mailbox_upto);
                self.emit(NodeEvent::MissedWhileAway(lost));
            }
            Ok(ServerFrame::Directory { part, parts, .. }) if part + 1 == parts => {
                if let Some(s) = &self.signal {
                    self.core.set_directory(s.directory().values().cloned());
                }
            }
            // A member coming online gets the KeyPackage requests it missed while offline.
            Ok(ServerFrame::Presence { member, online: true }) => self.core.member_online(member),
            Ok(ServerFrame::Presence { member, online: false }) => self.core.member_offline(member),
            Ok(ServerFrame::Ack { id, stored, .. }) => {
                if let Some(token) = self.commits.remove(&id) {
                    self.core.commit_accepted(token);
                }
                if let Some(to) = self.relays.remove(&id).filter(|_| stored > 0) {
                    self.emit(NodeEvent::StoredForLater(to));
                }
            }
            Ok(ServerFrame::Error { code, id: Some(id), message, .. }) => {
                self.relays.remove(&id);
                if let Some(token) = self.commits.remove(&id) {
                    self.core.commit_rejected(token);
                }
                if code != ErrorCode::CommitConflict {
                    self.emit(NodeEvent::Error(format!("server: {}: {message}", code.as_str())));
                }
            }
            Ok(ServerFrame::Error { code, message, .. }) => {
                self.emit(NodeEvent::Error(format!("server: {}: {message}", code.as_str())))
            }
            Ok(_) => {}
            Err(_) => self.signal_down(),
        }
    }

    async fn on_rtc(&mut self, peer: MemberId, generation: u64, event: RtcEvent) {
        if self.rtcs.get(&peer).is_none_or(|c| c.generation != generation) {
            return;
        }
        match event {
            RtcEvent::Connected { remote_fingerprint } => {
                if !self.core.verify_dtls(peer, &remote_fingerprint) {
                    self.close_rtc(peer, false).await;
                    self.emit(NodeEvent::Error("DTLS certificate is not the announced one; call refused".into()));
                }
            }
            RtcEvent::ChannelOpen => {
                if let Some(c) = self.rtcs.get_mut(&peer) {
                    c.open = true;
                }
                self.core.channel_opened(peer);
                self.emit(NodeEvent::ChannelOpen(peer));
            }
            RtcEvent::Message(bytes) => self.core.handle_envelope(peer, &bytes, Via::Channel, wall_ms()),
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
            self.core.channel_closed(peer);
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
        let ice_servers = self.signal.as_ref().map(|s| s.ice_servers().to_vec()).unwrap_or_default();
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
        self.core.start_call(peer, &sdp, &rtc.local_fingerprint())?;
        Ok(())
    }

    async fn on_command(&mut self, command: Command) {
        self.core.handle_timeout(wall_ms());
        match command {
            Command::StartDirect(peer, r) => {
                let _ = r.send(self.core.start_direct(peer).map_err(Into::into));
            }
            Command::CreateGroup(name, members, r) => {
                let _ = r.send(self.core.create_group(&name, &members).map_err(Into::into));
            }
            Command::AddMember(c, m, r) => {
                let _ = r.send(self.core.add_member(c, m).map_err(Into::into));
            }
            Command::RemoveMember(c, m, r) => {
                let _ = r.send(self.core.remove_member(c, m).map_err(Into::into));
            }
            Command::Leave(c, r) => {
                let _ = r.send(self.core.leave(c).map_err(Into::into));
            }
            Command::RemoveContact(peer, r) => {
                let result = self.core.remove_contact(peer).map_err(Into::into);
                self.close_rtc(peer, false).await;
                let _ = r.send(result);
            }
            Command::SendText(c, text, r) => {
                let _ = r.send(self.core.send_text(c, &text).map_err(Into::into));
            }
            Command::Connect(peer, r) => {
                let result = self.call(peer).await;
                let _ = r.send(result);
            }
            Command::DropChannel(peer, r) => {
                self.close_rtc(peer, false).await;
                let _ = self.core.hangup(peer);
                let _ = r.send(Ok(()));
            }
            Command::SendFile(peer, path, r) => {
                let result = self.offer_file(peer, &path);
                let _ = r.send(result);
            }
            Command::Direct(peer, r) => {
                let _ = r.send(Ok(self.core.direct_conversation(peer)));
            }
            Command::Directory(r) => {
                let _ = r.send(Ok(self
                    .signal
                    .as_ref()
                    .map(|s| s.directory().values().cloned().collect())
                    .unwrap_or_default()));
            }
            Command::Members(c, r) => {
                let _ = r.send(self.core.members(c).map_err(Into::into));
            }
            Command::Snapshot(r) => {
                let _ = r.send(Ok(self.core.mls_snapshot()));
            }
            Command::Shutdown(_) => {}
        }
    }

    fn offer_file(&mut self, peer: MemberId, path: &Path) -> Result<TransferId, NodeError> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = FileHasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let transfer = self.core.offer_file(peer, name, size, hasher.finalize())?;
        self.outgoing_files.insert(transfer, file);
        Ok(transfer)
    }

    /// Sends what the client produced, then handles its events, until both are empty.
    async fn flush(&mut self) {
        loop {
            // Secrets an MLS message used are saved before the message leaves: a restart from an older state
            // would use them again, and the contact refuses reused secrets.
            if self.core.mls_generation() != self.saved_generation {
                self.persist();
            }
            let mut progressed = false;
            while let Some(output) = self.core.poll_output() {
                progressed = true;
                match output {
                    Output::Relay { to, body } => self.relay(to, body).await,
                    Output::Commit { token, group, epoch, to, body } => {
                        let sent = match &mut self.signal {
                            Some(s) => s.commit(&group, epoch, &to, &body).await.ok(),
                            None => None,
                        };
                        match sent {
                            Some(id) => {
                                self.commits.insert(id, token);
                            }
                            None => self.core.commit_rejected(token),
                        }
                    }
                    Output::Channel { to, bytes } => {
                        let rtc = self.rtcs.get(&to).filter(|c| c.open).map(|c| c.rtc.clone());
                        match rtc {
                            Some(rtc) if rtc.send(&bytes).await.is_ok() => {}
                            // The channel went away meanwhile: an envelope takes the relay instead (the same
                            // MLS bytes); a file chunk waits for the receiver's resume.
                            _ if bytes.len() <= peerbubble_client_core::client::MAX_RELAY_BODY
                                && bytes.first() != Some(&peerbubble_client_core::files::CHUNK_FRAME_TAG) =>
                            {
                                self.relay(to, bytes).await
                            }
                            _ => self.emit(NodeEvent::Error("DataChannel message lost".into())),
                        }
                    }
                }
            }
            while let Some(event) = self.core.poll_event() {
                progressed = true;
                self.on_core_event(event).await;
            }
            if !progressed {
                return;
            }
            self.dirty = true;
        }
    }

    /// Saves the client's state (when the node keeps one); false when that failed.
    fn persist(&mut self) -> bool {
        let Some(saver) = &mut self.saver else {
            self.saved_generation = self.core.mls_generation();
            return true;
        };
        if let Err(e) = saver(&self.core) {
            self.emit(NodeEvent::Error(format!("cannot save the conversations: {e}")));
            return false;
        }
        self.dirty = false;
        self.saved_generation = self.core.mls_generation();
        true
    }

    /// Everything routed, the state saved when it changed, then what the mailbox delivered acknowledged.
    async fn settle(&mut self) {
        self.flush().await;
        let changed = self.dirty || self.mailbox_upto.is_some() || self.core.mls_generation() != self.saved_generation;
        if changed && !self.persist() {
            // Nothing acknowledged: the mailbox delivers it again on the next connection.
            self.mailbox_upto = None;
            return;
        }
        self.dirty = false;
        if let (Some(upto), Some(s)) = (self.mailbox_upto.take(), &mut self.signal)
            && s.send_frame(&peerbubble_proto::ClientFrame::Received { upto }).await.is_err()
        {
            self.signal_down();
        }
    }

    async fn relay(&mut self, to: MemberId, body: Vec<u8>) {
        let Some(s) = &mut self.signal else {
            self.held.push_back((to, body));
            return;
        };
        match s.send(to, &body).await {
            Ok(id) => {
                self.relays.insert(id, to);
            }
            Err(_) => {
                self.held.push_back((to, body));
                self.signal_down();
            }
        }
    }

    async fn on_core_event(&mut self, event: Event) {
        match &event {
            Event::ConversationReady { kind: ConversationKind::Direct, members, .. } => {
                if let [peer] = members.as_slice()
                    && self.config.auto_connect
                    && self.core.member() < *peer
                    && let Err(e) = self.call(*peer).await
                {
                    self.emit(NodeEvent::Error(format!("call set-up failed: {e}")));
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
                    self.core.answer_call(from, &answer, &rtc.local_fingerprint())?;
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
                let answered = if self.config.echo {
                    self.core.answer_ring(from, ring, true)
                } else {
                    self.core.end_ring(from, ring, peerbubble_client_core::message::EndReason::Declined)
                };
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
            Event::Call { from, signal: CallSignal::Hangup { .. }, .. } => {
                let from = *from;
                self.close_rtc(from, false).await;
            }
            Event::Call { .. } => {}
            Event::Message { conversation, text, from, .. } if self.config.echo && *from != self.core.member() => {
                let _ = self.core.send_text(*conversation, &format!("echo: {text}"));
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
            Event::FileChunk { transfer, offset, plaintext, .. } => {
                // The native peer keeps no key store yet, so it saves files decrypted (client-core hands out the
                // sealed chunks and the key for clients that keep files encrypted at rest).
                if let Some(f) = self.incoming_files.get_mut(transfer) {
                    let written = f.file.seek(SeekFrom::Start(*offset)).and_then(|_| f.file.write_all(plaintext));
                    if let Err(e) = written {
                        self.emit(NodeEvent::Error(format!("cannot write file: {e}")));
                    }
                }
                return;
            }
            Event::FileReceived { transfer, .. } => {
                if let Some(mut f) = self.incoming_files.remove(transfer) {
                    let _ = f.file.flush();
                    // Saved decrypted (no key store here): the key kept to open sealed bytes has no use.
                    let _ = self.core.forget_file(*transfer);
                    self.emit(NodeEvent::FileSaved { transfer: *transfer, path: f.path });
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
        let mut path = dir.join(name);
        let mut n = 1;
        while path.exists() {
            path = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        self.core.accept_file(transfer)?;
        self.incoming_files.insert(transfer, IncomingFile { file, path });
        Ok(())
    }

    /// Reads, seals and sends chunks while the transfer's window allows; DataChannel backpressure applies.
    async fn pump(&mut self, transfer: TransferId) -> Result<(), NodeError> {
        let Some(peer) = self.core.file_peer(transfer) else { return Ok(()) };
        let mut buf = Vec::new();
        loop {
            let Some(rtc) = self.rtcs.get(&peer).filter(|c| c.open).map(|c| c.rtc.clone()) else {
                return Ok(()); // resumes when the channel is back (the receiver sends Resume)
            };
            let Some(request) = self.core.next_file_chunk(transfer) else { return Ok(()) };
            let Some(f) = self.outgoing_files.get_mut(&transfer) else { return Ok(()) };
            buf.resize(request.len as usize, 0);
            f.seek(SeekFrom::Start(request.offset))?;
            f.read_exact(&mut buf)?;
            let frame = self.core.seal_file_chunk(transfer, request.index, &buf)?;
            rtc.send(&frame).await?;
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("member", &self.core.member()).finish_non_exhaustive()
    }
}
