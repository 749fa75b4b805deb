//! The link between a bubble's replicas: several bubble-server processes of one bubble share presence, routing
//! and the MLS commit ledger through NATS with JetStream, so that two members who land on different replicas
//! see and reach each other, and a group keeps one commit order.
//!
//! - Presence: each replica publishes the changes of its own members (numbered, in hub order) and a heartbeat
//!   on `pb.<bubble>.presence` ([`PresenceMessage`]); the others keep [`Peers`], ask for a snapshot
//!   (`pb.<bubble>.snap.<replica>`) when they missed a change or meet a replica, and drop a replica's members
//!   when it leaves or stops beating. The hub merges them into who is online ([`Hub::remote_presence`]).
//! - Routing: an envelope for a member with sessions elsewhere is forwarded, as the very `deliver` frame a
//!   session gets (bodies opaque, as on the wire), to `pb.<bubble>.to.<replica>` with a reply subject, in
//!   batches of what arrived together; the answers (batched too) complete the sender's `ack`. One publisher, so a
//!   sender's envelopes keep their order.
//! - Ledger: "the first commit for an epoch wins" is a JetStream key-value update with an expected revision
//!   (bucket `pb-ledger-<bubble>`, one key per group), so two replicas can never both accept an epoch.
//!
//! Rate limits and need-to-know stay where the member is connected: a replica forwards only what its own
//! session core accepted. Bubbles are kept apart by NATS itself (an account, or subject permissions, per
//! bubble; docs/kubernetes.md).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};
use peerbubble_proto::cluster::PresenceMessage;
use peerbubble_proto::{ErrorCode, GroupId, MemberId, Opaque, Recipients, ServerFrame, SessionId, encode_frame};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::connection::{error_frame, refusal};
use crate::hub::{LocalPresence, Routed, SessionHandle};
use crate::session::Claim;
use crate::shared_mailbox::{Keep, KeepDone};
use crate::state::AppState;

/// A batch of forwarded envelopes is closed past this many bytes (NATS's default limit is 1 MiB; batches that fit
/// the client's buffers avoid copies and fresh pages).
const BATCH_BYTES: usize = 48 * 1024;
/// Jobs or messages handled before what they produced is flushed, so that a busy link still answers promptly.
const BATCH_JOBS: usize = 512;

/// How a bubble-server reaches the bubble's other replicas.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The NATS server, e.g. `nats://nats:4222`.
    pub url: String,
    /// A `.creds` file, or a directory with `creds`, `token`, or `user` and `password`.
    pub credentials: Option<PathBuf>,
    /// How often a replica says it is alive.
    pub heartbeat: Duration,
    /// A replica not heard from for this long is gone: its members are offline.
    pub replica_timeout: Duration,
    /// How long a forwarded envelope waits for the other replica's answer.
    pub forward_timeout: Duration,
    /// How long the shared ledger remembers a group nobody commits to.
    pub ledger_max_age: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a user and password.
        f.debug_struct("ClusterConfig")
            .field("url", &redact_url(&self.url))
            .field("credentials", &self.credentials)
            .field("heartbeat", &self.heartbeat)
            .field("replica_timeout", &self.replica_timeout)
            .finish_non_exhaustive()
    }
}

/// `nats://user:secret@host` → `nats://…@host`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}…{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

impl ClusterConfig {
    /// The defaults, for `url`.
    pub fn new(url: String) -> Self {
        Self {
            url,
            credentials: None,
            heartbeat: Duration::from_secs(1),
            replica_timeout: Duration::from_millis(3500),
            forward_timeout: Duration::from_secs(3),
            ledger_max_age: Duration::from_secs(14 * 24 * 3600),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("nats://") || self.url.starts_with("tls://")) {
            return Err("nats must be a nats:// or tls:// URL".into());
        }
        if self.heartbeat.is_zero() || self.replica_timeout < self.heartbeat * 2 {
            return Err("the replica timeout must be at least two heartbeats".into());
        }
        Ok(())
    }
}

/// Errors reaching NATS.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The credentials could not be read.
    #[error("cannot read the NATS credentials at {path}: {reason}")]
    Credentials {
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The connection could not be set up.
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

async fn connect_options(config: &ClusterConfig) -> Result<async_nats::ConnectOptions, ClusterError> {
    let bad = |path: &Path, reason: String| ClusterError::Credentials { path: path.to_owned(), reason };
    let options = match &config.credentials {
        None => async_nats::ConnectOptions::new(),
        Some(path) if path.is_file() => {
            async_nats::ConnectOptions::with_credentials_file(path).await.map_err(|e| bad(path, e.to_string()))?
        }
        Some(dir) => {
            let read = |name: &str| -> Option<Zeroizing<String>> {
                std::fs::read_to_string(dir.join(name)).ok().map(|s| Zeroizing::new(s.trim().to_owned()))
            };
            if let Some(creds) = read("creds") {
                async_nats::ConnectOptions::with_credentials(&creds).map_err(|e| bad(dir, e.to_string()))?
            } else if let Some(token) = read("token") {
                async_nats::ConnectOptions::with_token(token.to_string())
            } else if let (Some(user), Some(password)) = (read("user"), read("password")) {
                async_nats::ConnectOptions::with_user_and_password(user.to_string(), password.to_string())
            } else {
                return Err(bad(dir, "expected a file `creds`, `token`, or `user` and `password`".into()));
            }
        }
    };
    Ok(options
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| Duration::from_millis((100 * attempts as u64).min(2000))))
}

/// What a connection asks of the cluster link.
#[derive(Debug)]
pub(crate) enum Job {
    /// Forward an accepted envelope (an encoded `deliver` frame) to the replicas in `routed.remote`, then
    /// answer frame `id` with everything it reached.
    Forward { reply: Answer, text: Utf8Bytes, to_session: Option<SessionId>, routed: Routed },
    /// Order a commit through the shared ledger, then deliver it.
    Commit(CommitJob),
}

/// A commit waiting for the shared ledger.
#[derive(Debug)]
pub(crate) struct CommitJob {
    pub reply: Answer,
    pub from: MemberId,
    pub from_session: SessionId,
    pub group: GroupId,
    pub epoch: u64,
    pub to: Recipients,
    pub body: Opaque,
}

/// Where and how a forwarded frame is answered.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub handle: SessionHandle,
    pub id: u64,
    /// A commit is acknowledged even when it reached no session (its epoch is taken); a `send` is refused.
    pub commit: bool,
    /// A `send` to a member's every session, to keep in the shared mailbox if the replicas it was forwarded to
    /// all say the member has no session there any more (it left while the envelope was on its way).
    pub keep: Option<Absent>,
}

/// A `send` to keep for its recipient if every replica it was forwarded to answers that the member left.
#[derive(Debug, Clone)]
pub(crate) struct Absent {
    pub from: MemberId,
    pub from_session: SessionId,
    pub to: MemberId,
    pub body: Opaque,
}

impl Answer {
    /// Answers a forward every replica answered: a `send` that reached no session (and no slow one) is kept
    /// for its recipient when the bubble has a shared mailbox, as if the sender's replica had seen the member
    /// away; otherwise as [`send`](Self::send).
    fn settled(self, state: &AppState, sessions: u32, congested: bool) {
        let mailbox = state.hub.shared_mailbox().filter(|_| sessions == 0 && !congested);
        match (mailbox, self.keep) {
            (Some(mailbox), Some(Absent { from, from_session, to, body })) => {
                let done = KeepDone::Send { handle: self.handle, id: self.id };
                mailbox.keep(Keep { from, from_session, body, group: None, to: vec![to], done });
            }
            (_, keep) => Self { keep, ..self }.send(state, sessions, 0, congested),
        }
    }

    fn send(&self, state: &AppState, sessions: u32, stored: u32, congested: bool) {
        if sessions > 0 || stored > 0 || self.commit {
            let ack = ServerFrame::Ack { id: self.id, sessions, stored };
            self.handle.send_or_kill(&Utf8Bytes::from(encode_frame(&ack)));
            return;
        }
        let code = if congested { ErrorCode::RecipientCongested } else { ErrorCode::RecipientOffline };
        state.metrics.refused(code.as_str());
        let (message, retry) = refusal(code);
        self.handle.send_or_kill(&error_frame(code, message, Some(self.id), retry));
    }
}

/// The connection side of the link.
#[derive(Debug)]
pub(crate) struct Link {
    pub replica: u32,
    jobs: mpsc::UnboundedSender<Job>,
    ready: Arc<AtomicBool>,
}

/// The link's receiving ends, for [`run`].
#[derive(Debug)]
pub(crate) struct LinkTasks {
    presence: mpsc::UnboundedReceiver<LocalPresence>,
    jobs: mpsc::UnboundedReceiver<Job>,
    ready: Arc<AtomicBool>,
}

impl Link {
    /// A link for a new replica with a random number, the hub's presence channel, and what [`run`] drives.
    pub fn new() -> (Self, mpsc::UnboundedSender<LocalPresence>, LinkTasks) {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        let replica = (u32::from_be_bytes(bytes) % crate::hub::MAX_REPLICA) + 1;
        let (presence_tx, presence) = mpsc::unbounded_channel();
        let (jobs_tx, jobs) = mpsc::unbounded_channel();
        let ready = Arc::new(AtomicBool::new(false));
        (Self { replica, jobs: jobs_tx, ready: ready.clone() }, presence_tx, LinkTasks { presence, jobs, ready })
    }

    pub fn submit(&self, job: Job) {
        let _ = self.jobs.send(job);
    }

    /// Connected to NATS, with the shared ledger open.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// What the link learnt about another replica's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerAction {
    /// `member` has (or no longer has) sessions on `replica`.
    Presence { replica: u32, member: MemberId, online: bool },
    /// Ask `replica` for its members.
    Snapshot(u32),
}

#[derive(Debug)]
struct Peer {
    /// The last change applied.
    seq: u64,
    members: HashSet<MemberId>,
    last_heard: Instant,
    /// Changes came in order since the last snapshot; otherwise they wait for one.
    synced: bool,
    /// Changes heard while waiting for a snapshot, applied after it.
    pending: Vec<(u64, MemberId, bool)>,
    asked: bool,
}

/// The other replicas' members, as heard on NATS (sans-IO: the tests drive it with messages and instants).
#[derive(Debug)]
pub(crate) struct Peers {
    me: u32,
    peers: HashMap<u32, Peer>,
    timeout: Duration,
}

/// Changes kept while a snapshot is awaited (beyond it the replica is asked again).
const MAX_PENDING: usize = 100_000;

impl Peers {
    pub fn new(me: u32, timeout: Duration) -> Self {
        Self { me, peers: HashMap::new(), timeout }
    }

    fn peer(&mut self, replica: u32, now: Instant, out: &mut Vec<PeerAction>) -> &mut Peer {
        let peer = self.peers.entry(replica).or_insert_with(|| Peer {
            seq: 0,
            members: HashSet::new(),
            last_heard: now,
            synced: false,
            pending: Vec::new(),
            asked: false,
        });
        peer.last_heard = now;
        if !peer.synced && !peer.asked {
            peer.asked = true;
            out.push(PeerAction::Snapshot(replica));
        }
        peer
    }

    /// Handles one message from NATS.
    pub fn message(&mut self, message: PresenceMessage, now: Instant) -> Vec<PeerAction> {
        let mut out = Vec::new();
        let replica = message.replica();
        if replica == self.me {
            tracing::error!(replica, "another bubble-server uses this replica number; presence may be wrong");
            return out;
        }
        match message {
            PresenceMessage::Heartbeat { seq, .. } => {
                let peer = self.peer(replica, now, &mut out);
                if peer.synced && seq > peer.seq {
                    // A change was lost on the way.
                    peer.synced = false;
                    peer.asked = true;
                    out.push(PeerAction::Snapshot(replica));
                }
            }
            PresenceMessage::Change { seq, member, online, .. } => {
                let peer = self.peer(replica, now, &mut out);
                if !peer.synced {
                    if peer.pending.len() < MAX_PENDING {
                        peer.pending.push((seq, member, online));
                    }
                } else if seq == peer.seq + 1 {
                    peer.seq = seq;
                    apply(peer, replica, member, online, &mut out);
                } else if seq > peer.seq + 1 {
                    peer.synced = false;
                    peer.asked = true;
                    peer.pending.push((seq, member, online));
                    out.push(PeerAction::Snapshot(replica));
                }
            }
            PresenceMessage::Snapshot { seq, members, .. } => {
                let peer = self.peer(replica, now, &mut out);
                peer.asked = false;
                if peer.synced && seq <= peer.seq {
                    return out;
                }
                let members: HashSet<MemberId> = members.into_iter().collect();
                for gone in peer.members.difference(&members) {
                    out.push(PeerAction::Presence { replica, member: *gone, online: false });
                }
                for new in members.difference(&peer.members) {
                    out.push(PeerAction::Presence { replica, member: *new, online: true });
                }
                peer.members = members;
                peer.seq = seq;
                peer.synced = true;
                let mut pending = std::mem::take(&mut peer.pending);
                pending.sort_by_key(|(seq, ..)| *seq);
                for (seq, member, online) in pending {
                    if seq <= peer.seq {
                        continue;
                    }
                    if seq != peer.seq + 1 {
                        peer.synced = false;
                        peer.asked = true;
                        out.push(PeerAction::Snapshot(replica));
                        break;
                    }
                    peer.seq = seq;
                    apply(peer, replica, member, online, &mut out);
                }
            }
            PresenceMessage::Leaving { .. } => self.forget(replica, &mut out),
        }
        out
    }

    /// A snapshot request failed: ask again at the next heartbeat.
    pub fn snapshot_failed(&mut self, replica: u32) {
        if let Some(peer) = self.peers.get_mut(&replica) {
            peer.asked = false;
        }
    }

    /// Drops the replicas not heard from within the timeout.
    pub fn tick(&mut self, now: Instant) -> Vec<PeerAction> {
        let mut out = Vec::new();
        let gone: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_heard) > self.timeout)
            .map(|(r, _)| *r)
            .collect();
        for replica in gone {
            tracing::warn!(replica, "replica stopped answering; its members are offline until it comes back");
            self.forget(replica, &mut out);
        }
        out
    }

    /// Drops every replica (this one lost NATS: it cannot know who is where).
    pub fn forget_all(&mut self) -> Vec<PeerAction> {
        let mut out = Vec::new();
        let replicas: Vec<u32> = self.peers.keys().copied().collect();
        for replica in replicas {
            self.forget(replica, &mut out);
        }
        out
    }

    fn forget(&mut self, replica: u32, out: &mut Vec<PeerAction>) {
        if let Some(peer) = self.peers.remove(&replica) {
            out.extend(peer.members.into_iter().map(|member| PeerAction::Presence { replica, member, online: false }));
        }
    }

    /// Replicas known now.
    pub fn len(&self) -> usize {
        self.peers.len()
    }
}

fn apply(peer: &mut Peer, replica: u32, member: MemberId, online: bool, out: &mut Vec<PeerAction>) {
    let changed = if online { peer.members.insert(member) } else { peer.members.remove(&member) };
    if changed {
        out.push(PeerAction::Presence { replica, member, online });
    }
}

/// A subject token for the bubble: its name with anything NATS gives a meaning to replaced.
fn token(bubble: &str) -> String {
    bubble.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// A forwarded envelope waiting for its replies.
#[derive(Debug)]
struct Pending {
    answer: Answer,
    sessions: u32,
    congested: bool,
    outstanding: usize,
    deadline: Instant,
}

/// Drives the link until the server stops: connects (and reconnects) to NATS, publishes this replica's
/// presence, follows the others', forwards and answers envelopes, and orders commits.
pub(crate) async fn run(state: Arc<AppState>, config: ClusterConfig, tasks: LinkTasks, replica: u32) {
    let LinkTasks { mut presence, mut jobs, ready } = tasks;
    let mut directory = state.directory.clone();
    let bubble = match directory.wait_for(Option::is_some).await {
        Ok(d) => d.as_ref().map(|d| token(d.bubble())).unwrap_or_default(),
        Err(_) => return,
    };
    let options = match connect_options(&config).await {
        Ok(options) => options,
        Err(err) => {
            tracing::error!(error = %err, "replicas cannot share state");
            return;
        }
    };
    let options = options.name(format!("peerbubble-{bubble}-{replica}"));
    let client = match options.connect(config.url.as_str()).await {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %ClusterError::Connect(err.to_string()), "replicas cannot share state");
            return;
        }
    };
    let base = format!("pb.{bubble}");
    let subscribe = |subject: String| {
        let client = client.clone();
        async move { client.subscribe(subject).await }
    };
    let (Ok(mut presence_in), Ok(mut forwarded), Ok(mut replies), Ok(mut snapshots)) = (
        subscribe(format!("{base}.presence")).await,
        subscribe(format!("{base}.to.{replica}")).await,
        subscribe(format!("{base}.re.{replica}")).await,
        subscribe(format!("{base}.snap.{replica}")).await,
    ) else {
        tracing::error!("cannot subscribe to the bubble's NATS subjects; check the credentials' permissions");
        return;
    };
    let (commit_tx, commit_rx) = mpsc::unbounded_channel();
    let (forward_tx, mut from_ledger) = mpsc::unbounded_channel();
    let ledger_ready = Arc::new(AtomicBool::new(false));
    let ledger = tokio::spawn(order_commits(
        state.clone(),
        client.clone(),
        format!("pb-ledger-{bubble}"),
        config.ledger_max_age,
        commit_rx,
        forward_tx,
        ledger_ready.clone(),
    ));
    let mailbox = state.hub.shared_mailbox().cloned().map(|mailbox| {
        tokio::spawn(crate::shared_mailbox::run(state.clone(), mailbox, client.clone(), bubble.clone()))
    });
    let (snap_tx, mut snap_rx) = mpsc::unbounded_channel::<(u32, Option<Bytes>)>();
    let mut link = Running {
        state,
        client,
        base,
        replica,
        seq: 0,
        mine: HashSet::new(),
        peers: Peers::new(replica, config.replica_timeout),
        pending: HashMap::new(),
        batches: HashMap::new(),
        next_id: 1,
        forward_timeout: config.forward_timeout,
        connected: false,
    };
    let mut beat = tokio::time::interval(config.heartbeat / 4);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat = Instant::now() - config.heartbeat;
    loop {
        tokio::select! {
            change = presence.recv() => match change {
                Some(change) => link.local(change).await,
                None => break,
            },
            job = jobs.recv() => match job {
                Some(Job::Commit(job)) => { let _ = commit_tx.send(job); }
                Some(job) => {
                    link.job(job);
                    for _ in 0..BATCH_JOBS {
                        match jobs.try_recv() {
                            Ok(Job::Commit(job)) => { let _ = commit_tx.send(job); }
                            Ok(job) => link.job(job),
                            Err(_) => break,
                        }
                    }
                    link.flush().await;
                }
                None => break,
            },
            Some(job) = from_ledger.recv() => {
                link.job(job);
                link.flush().await;
            }
            Some(message) = presence_in.next() => {
                match PresenceMessage::decode(&message.payload) {
                    Ok(message) => {
                        let actions = link.peers.message(message, Instant::now());
                        link.act(actions, &snap_tx);
                    }
                    Err(err) => {
                        link.state.metrics.frame_error("cluster_presence");
                        tracing::warn!(error = %err, "ignored a malformed presence message from NATS");
                    }
                }
            }
            Some(message) = forwarded.next() => {
                let mut answers = HashMap::new();
                link.forwarded(message, &mut answers);
                for _ in 0..BATCH_JOBS {
                    match forwarded.next().now_or_never() {
                        Some(Some(message)) => link.forwarded(message, &mut answers),
                        _ => break,
                    }
                }
                link.answer(answers).await;
            }
            Some(message) = replies.next() => link.reply(&message),
            Some(message) = snapshots.next() => link.answer_snapshot(message).await,
            Some((from, snapshot)) = snap_rx.recv() => match snapshot.map(|b| PresenceMessage::decode(&b)) {
                Some(Ok(message @ PresenceMessage::Snapshot { .. })) if message.replica() == from => {
                    let actions = link.peers.message(message, Instant::now());
                    link.act(actions, &snap_tx);
                }
                _ => link.peers.snapshot_failed(from),
            },
            _ = beat.tick() => {
                let now = Instant::now();
                let connected = link.client.connection_state() == async_nats::connection::State::Connected;
                if connected != link.connected {
                    link.connected = connected;
                    if connected {
                        tracing::info!("replica link connected to NATS");
                        last_beat = now - config.heartbeat;
                    } else {
                        tracing::warn!("replica link lost NATS; members on other replicas are offline until it is back");
                        let actions = link.peers.forget_all();
                        link.act(actions, &snap_tx);
                    }
                }
                let mailbox_ready = link.state.hub.shared_mailbox().is_none_or(|m| m.ready());
                ready.store(connected && ledger_ready.load(Ordering::SeqCst) && mailbox_ready, Ordering::SeqCst);
                if connected && now.duration_since(last_beat) >= config.heartbeat {
                    last_beat = now;
                    link.publish_presence(PresenceMessage::Heartbeat { replica, seq: link.seq }).await;
                }
                let actions = link.peers.tick(now);
                link.act(actions, &snap_tx);
                link.expire(now);
                link.state.metrics.replicas(link.peers.len() + 1);
            }
            _ = link.state.stopping() => {
                // Members of this replica were closed first; their last changes go out, then a goodbye.
                while let Ok(change) = presence.try_recv() {
                    link.local(change).await;
                }
                link.publish_presence(PresenceMessage::Leaving { replica }).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), link.client.flush()).await;
                break;
            }
        }
    }
    ready.store(false, Ordering::SeqCst);
    ledger.abort();
    if let Some(mailbox) = mailbox {
        mailbox.abort();
    }
}

/// Encoded forwarded envelopes for one replica, and their ids.
type Batch = (Vec<u8>, Vec<u64>);

struct Running {
    state: Arc<AppState>,
    client: async_nats::Client,
    base: String,
    replica: u32,
    /// Changes of this replica's members published so far.
    seq: u64,
    /// This replica's members, as published.
    mine: HashSet<MemberId>,
    peers: Peers,
    pending: HashMap<u64, Pending>,
    /// Forwarded envelopes not sent yet, per replica: batches of at most about [`BATCH_BYTES`], with their ids.
    batches: HashMap<u32, Vec<Batch>>,
    next_id: u64,
    forward_timeout: Duration,
    connected: bool,
}

impl Running {
    async fn publish_presence(&self, message: PresenceMessage) {
        let subject = format!("{}.presence", self.base);
        if let Err(err) = self.client.publish(subject, Bytes::from(message.encode())).await {
            tracing::debug!(error = %err, "presence not published");
        }
    }

    async fn local(&mut self, change: LocalPresence) {
        let changed = if change.online { self.mine.insert(change.member) } else { self.mine.remove(&change.member) };
        if !changed {
            return;
        }
        self.seq += 1;
        let message = PresenceMessage::Change {
            replica: self.replica,
            seq: self.seq,
            member: change.member,
            online: change.online,
        };
        self.publish_presence(message).await;
    }

    fn act(&mut self, actions: Vec<PeerAction>, snap_tx: &mpsc::UnboundedSender<(u32, Option<Bytes>)>) {
        for action in actions {
            match action {
                PeerAction::Presence { replica, member, online } => {
                    self.state.hub.remote_presence(replica, member, online);
                }
                PeerAction::Snapshot(replica) => {
                    let client = self.client.clone();
                    let subject = format!("{}.snap.{replica}", self.base);
                    let tx = snap_tx.clone();
                    tokio::spawn(async move {
                        let answer =
                            tokio::time::timeout(Duration::from_secs(2), client.request(subject, Bytes::new()))
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .map(|m| m.payload);
                        let _ = tx.send((replica, answer));
                    });
                }
            }
        }
    }

    async fn answer_snapshot(&self, message: async_nats::Message) {
        let Some(reply) = message.reply else { return };
        let snapshot = PresenceMessage::Snapshot {
            replica: self.replica,
            seq: self.seq,
            members: self.mine.iter().copied().collect(),
        };
        if let Err(err) = self.client.publish(reply, Bytes::from(snapshot.encode())).await {
            tracing::debug!(error = %err, "snapshot not sent");
        }
    }

    /// Adds a forward to the batches for its replicas (sent by [`Running::flush`]); answers at once what has
    /// nowhere to go.
    fn job(&mut self, job: Job) {
        let Job::Forward { reply, text, to_session, routed } = job else { return };
        let Routed { sessions, stored, congested, remote, .. } = routed;
        if !self.connected || remote.is_empty() {
            reply.send(&self.state, sessions, stored, congested);
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let outstanding = remote.len();
        for (replica, members) in remote {
            let open = self.batches.entry(replica).or_default();
            if open.last().is_none_or(|(batch, _)| batch.len() >= BATCH_BYTES) {
                open.push((Vec::with_capacity(BATCH_BYTES + 8192), Vec::new()));
            }
            let Some((batch, ids)) = open.last_mut() else { continue };
            peerbubble_proto::cluster::encode_forward(batch, id, to_session.map(|s| s.0), &members, text.as_bytes());
            ids.push(id);
        }
        let deadline = Instant::now() + self.forward_timeout;
        self.pending.insert(id, Pending { answer: reply, sessions, congested, outstanding, deadline });
    }

    /// Sends the batches of forwarded envelopes, a NATS message each.
    async fn flush(&mut self) {
        let reply_to = format!("{}.re.{}", self.base, self.replica);
        for (replica, batches) in std::mem::take(&mut self.batches) {
            let subject = format!("{}.to.{replica}", self.base);
            for (batch, ids) in batches {
                let published =
                    self.client.publish_with_reply(subject.clone(), reply_to.clone(), Bytes::from(batch)).await;
                self.state.metrics.forwarded(ids.len() as u64);
                if let Err(err) = published {
                    tracing::debug!(error = %err, "envelopes not forwarded");
                    // Counted as reaching no session there; the other replicas still answer.
                    for id in ids {
                        self.settle(peerbubble_proto::cluster::ForwardAnswer { id, sessions: 0, congested: false });
                    }
                }
            }
        }
    }

    /// A batch another replica forwarded for members here: queued to their sessions, answers gathered per
    /// replica that asked.
    fn forwarded(&self, message: async_nats::Message, answers: &mut HashMap<String, Vec<u8>>) {
        let forwards = match peerbubble_proto::cluster::decode_forwards(&message.payload) {
            Ok(forwards) => forwards,
            Err(err) => {
                self.state.metrics.frame_error("cluster_forward");
                tracing::warn!(error = %err, "ignored a malformed batch of forwarded envelopes from NATS");
                return;
            }
        };
        let mut out = Vec::new();
        for forward in forwards {
            let (mut sessions, mut congested) = (0, false);
            match std::str::from_utf8(forward.frame) {
                Ok(text) => {
                    // Copied out of the batch: a frame queued to a slow reader must not keep a whole batch alive.
                    let text = Utf8Bytes::from(text.to_owned());
                    for member in &forward.to {
                        let (n, c) =
                            self.state.hub.deliver_forwarded(*member, forward.to_session.map(SessionId), &text);
                        sessions += n;
                        congested |= c;
                    }
                }
                Err(_) => self.state.metrics.frame_error("cluster_forward"),
            }
            let answer = peerbubble_proto::cluster::ForwardAnswer { id: forward.id, sessions, congested };
            peerbubble_proto::cluster::encode_answer(&mut out, answer);
        }
        if let Some(reply) = message.reply {
            answers.entry(reply.to_string()).or_default().extend_from_slice(&out);
        }
    }

    async fn answer(&self, answers: HashMap<String, Vec<u8>>) {
        for (reply, batch) in answers {
            if let Err(err) = self.client.publish(reply, Bytes::from(batch)).await {
                tracing::debug!(error = %err, "forward answers not sent");
            }
        }
    }

    fn reply(&mut self, message: &async_nats::Message) {
        match peerbubble_proto::cluster::decode_answers(&message.payload) {
            Ok(answers) => answers.into_iter().for_each(|a| self.settle(a)),
            Err(err) => {
                self.state.metrics.frame_error("cluster_answer");
                tracing::warn!(error = %err, "ignored a malformed batch of answers from NATS");
            }
        }
    }

    fn settle(&mut self, answer: peerbubble_proto::cluster::ForwardAnswer) {
        let Some(pending) = self.pending.get_mut(&answer.id) else { return };
        pending.sessions = pending.sessions.saturating_add(answer.sessions);
        pending.congested |= answer.congested;
        pending.outstanding = pending.outstanding.saturating_sub(1);
        if pending.outstanding == 0
            && let Some(done) = self.pending.remove(&answer.id)
        {
            done.answer.settled(&self.state, done.sessions, done.congested);
        }
    }

    /// Answers what waited too long for another replica (it reached no session there). Not kept in the
    /// mailbox: the replica may have delivered it and only its answer be late.
    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            if let Some(done) = self.pending.remove(&id) {
                done.answer.send(&self.state, done.sessions, 0, done.congested);
            }
        }
    }
}

/// The group's key in the shared ledger.
fn ledger_key(group: &GroupId) -> String {
    group.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

async fn open_ledger(
    client: &async_nats::Client,
    bucket: &str,
    max_age: Duration,
) -> Result<kv::Store, async_nats::Error> {
    open_bucket(client, bucket, "PeerBubble: the next MLS epoch of each group (first commit wins)", max_age, -1).await
}

/// Opens (or makes) a key-value bucket with one value per key.
pub(crate) async fn open_bucket(
    client: &async_nats::Client,
    bucket: &str,
    description: &str,
    max_age: Duration,
    max_value_size: i64,
) -> Result<kv::Store, async_nats::Error> {
    let jetstream = async_nats::jetstream::new(client.clone());
    if let Ok(store) = jetstream.get_key_value(bucket).await {
        return Ok(store);
    }
    // The bucket's stream, made as the key-value layer makes it (one value per key, rollups, direct gets), but
    // without the account query that NATS servers before 2.10 answer in a form the client cannot read.
    use async_nats::jetstream::stream;
    jetstream
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(description.into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            max_message_size: max_value_size.try_into().unwrap_or(-1),
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await?;
    Ok(jetstream.get_key_value(bucket).await?)
}

/// "The first commit for an epoch wins", atomic across replicas: the group's next epoch moves only by an update
/// that names the revision it read.
async fn claim(store: &kv::Store, group: &GroupId, epoch: u64) -> Result<Claim, async_nats::Error> {
    let key = ledger_key(group);
    for _ in 0..8 {
        let entry = store.entry(key.as_str()).await?;
        let current = entry
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| std::str::from_utf8(&e.value).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0));
        if let Some(current) = current
            && current != epoch
        {
            return Ok(Claim::Conflict { current });
        }
        let Some(next) = epoch.checked_add(1) else { return Ok(Claim::Conflict { current: current.unwrap_or(0) }) };
        let value = Bytes::from(next.to_string());
        let written = match entry.filter(|_| current.is_some()) {
            Some(entry) => store
                .update(key.as_str(), value, entry.revision)
                .await
                .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, async_nats::Error::from(e))),
            None => store
                .create(key.as_str(), value)
                .await
                .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, async_nats::Error::from(e))),
        };
        match written {
            Ok(_) => return Ok(Claim::Accepted),
            // Another replica wrote first: read again, and most likely find a conflict.
            Err((true, _)) => continue,
            Err((false, err)) => return Err(err),
        }
    }
    Err("the ledger kept changing under this commit".into())
}

/// Orders commits one at a time through the shared ledger, then delivers the accepted ones.
async fn order_commits(
    state: Arc<AppState>,
    client: async_nats::Client,
    bucket: String,
    max_age: Duration,
    mut jobs: mpsc::UnboundedReceiver<CommitJob>,
    forward: mpsc::UnboundedSender<Job>,
    ready: Arc<AtomicBool>,
) {
    let store = loop {
        match open_ledger(&client, &bucket, max_age).await {
            Ok(store) => break store,
            Err(err) => {
                tracing::warn!(error = %err, "the shared commit ledger is not available yet (JetStream); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    ready.store(true, Ordering::SeqCst);
    while let Some(job) = jobs.recv().await {
        let CommitJob { reply, from, from_session, group, epoch, to, body } = job;
        match claim(&store, &group, epoch).await {
            Ok(Claim::Accepted) => {
                let mut routed = state.hub.deliver_commit(from, from_session, group, &to, &body);
                if let Some(mailbox) = state.hub.shared_mailbox().filter(|_| !routed.keep.is_empty()) {
                    // Kept for the members away everywhere before the `ack` counts them (in commit order).
                    let (done, stored) = tokio::sync::oneshot::channel();
                    let to = std::mem::take(&mut routed.keep);
                    let body = body.clone();
                    mailbox.keep(Keep {
                        from,
                        from_session,
                        body,
                        group: Some(group),
                        to,
                        done: KeepDone::Commit(done),
                    });
                    routed.stored += stored.await.unwrap_or(0);
                }
                let text = Utf8Bytes::from(peerbubble_proto::encode_deliver(&from, from_session, &body));
                let _ = forward.send(Job::Forward { reply, text, to_session: None, routed });
            }
            Ok(Claim::Conflict { current }) => {
                state.metrics.commit(false);
                let message = format!("group is at epoch {current}; process the winning commit and retry");
                reply.handle.send_or_kill(&error_frame(ErrorCode::CommitConflict, &message, Some(reply.id), None));
            }
            Err(err) => {
                tracing::warn!(error = %err, "commit not ordered: the shared ledger did not answer");
                let message = "the bubble's replicas cannot order this commit right now; retry";
                let frame = error_frame(ErrorCode::Internal, message, Some(reply.id), Some(Duration::from_secs(1)));
                reply.handle.send_or_kill(&frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u8) -> MemberId {
        MemberId::from_bytes([n; 16])
    }

    fn on(replica: u32, member: MemberId) -> PeerAction {
        PeerAction::Presence { replica, member, online: true }
    }

    fn off(replica: u32, member: MemberId) -> PeerAction {
        PeerAction::Presence { replica, member, online: false }
    }

    fn change(seq: u64, member: MemberId, online: bool) -> PresenceMessage {
        PresenceMessage::Change { replica: 2, seq, member, online }
    }

    #[test]
    fn a_new_replica_is_asked_for_a_snapshot_and_changes_wait_for_it() {
        let now = Instant::now();
        let mut peers = Peers::new(1, Duration::from_secs(3));
        // Changes 5 and 6 arrive before the snapshot that reflects up to 5.
        assert_eq!(peers.message(change(5, m(1), true), now), vec![PeerAction::Snapshot(2)]);
        assert_eq!(peers.message(change(6, m(2), true), now), vec![]);
        let snapshot = PresenceMessage::Snapshot { replica: 2, seq: 5, members: vec![m(1), m(3)] };
        let mut got = peers.message(snapshot, now);
        got.sort_by_key(|a| format!("{a:?}"));
        let mut want = vec![on(2, m(1)), on(2, m(3)), on(2, m(2))];
        want.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(got, want);
        // In order from now on; a repeat is ignored.
        assert_eq!(peers.message(change(7, m(3), false), now), vec![off(2, m(3))]);
        assert_eq!(peers.message(change(7, m(3), false), now), vec![]);
        assert_eq!(peers.message(PresenceMessage::Heartbeat { replica: 2, seq: 7 }, now), vec![]);
    }

    #[test]
    fn a_lost_change_is_noticed_and_repaired_by_a_snapshot() {
        let now = Instant::now();
        let mut peers = Peers::new(1, Duration::from_secs(3));
        peers.message(PresenceMessage::Snapshot { replica: 2, seq: 0, members: vec![] }, now);
        assert_eq!(peers.message(change(1, m(1), true), now), vec![on(2, m(1))]);
        // Change 2 is lost; the heartbeat says there were two.
        assert_eq!(
            peers.message(PresenceMessage::Heartbeat { replica: 2, seq: 2 }, now),
            vec![PeerAction::Snapshot(2)]
        );
        let repaired = peers.message(PresenceMessage::Snapshot { replica: 2, seq: 2, members: vec![] }, now);
        assert_eq!(repaired, vec![off(2, m(1))]);
        // A gap in the changes themselves asks too.
        assert_eq!(peers.message(change(4, m(2), true), now), vec![PeerAction::Snapshot(2)]);
    }

    #[test]
    fn a_silent_or_leaving_replica_takes_its_members_offline() {
        let now = Instant::now();
        let mut peers = Peers::new(1, Duration::from_secs(3));
        peers.message(PresenceMessage::Snapshot { replica: 2, seq: 1, members: vec![m(1)] }, now);
        peers.message(PresenceMessage::Snapshot { replica: 3, seq: 1, members: vec![m(2)] }, now);
        assert_eq!(peers.tick(now + Duration::from_secs(2)), vec![]);
        peers.message(PresenceMessage::Heartbeat { replica: 3, seq: 1 }, now + Duration::from_secs(2));
        assert_eq!(peers.tick(now + Duration::from_secs(4)), vec![off(2, m(1))]);
        assert_eq!(peers.message(PresenceMessage::Leaving { replica: 3 }, now), vec![off(3, m(2))]);
        assert_eq!(peers.len(), 0);
        // Its own number from elsewhere is ignored, not believed.
        assert_eq!(peers.message(PresenceMessage::Snapshot { replica: 1, seq: 1, members: vec![m(9)] }, now), vec![]);
    }

    #[test]
    fn the_url_is_redacted() {
        assert_eq!(redact_url("nats://bubble-a:s3cret@nats:4222"), "nats://…@nats:4222");
        assert_eq!(redact_url("nats://nats:4222"), "nats://nats:4222");
        let config = ClusterConfig::new("nats://u:s3cret@h:1".into());
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(token("crisis.cell *1"), "crisis_cell__1");
    }
}
