//! The offline mailbox of a bubble with several replicas, kept in NATS JetStream so that what waits for a member
//! reaches it whichever replica it returns to (ADR 0024, decision 9).
//!
//! Server-blind like the SQLite mailbox ([`crate::mailbox`]): an entry is the opaque body a `deliver` frame would
//! carry, with the sender, the sender's session, the commit's group id and the time it was kept in headers.
//!
//! - **Kept means durable.** One stream per bubble, `pb-mbox-<bubble>`, one subject per recipient
//!   (`pb.<bubble>.mbox.<member>`), file storage. The sender's `ack` says "stored" only once JetStream
//!   acknowledged the publish. Envelopes per member and bytes per bubble are the stream's own limits, refusing
//!   new entries rather than dropping old ones, so a refusal is known and turned into a gap. Bytes per member
//!   (JetStream has no such limit) are counted in a header: each entry carries `Pb-Upto`, the bytes kept for
//!   its member through it, so the last entry and the first say how much the queue holds ([`Held`]).
//! - **Order.** An envelope's `seq` is twice its stream sequence; a gap marker placed after stream sequence `s`
//!   has `seq` `2s + 1`. Both grow per member, which is all the client needs.
//! - **Gaps.** What a member lost (a refused entry, or entries past the time to live) is recorded in the key-value
//!   bucket `pb-gaps-<bubble>` (one record per member, updated with an expected revision): the marker's place,
//!   how many were lost and which groups lost a commit. Expiry is done here, not by JetStream's `max_age` (which
//!   drops silently): a sweep on every replica turns the expired prefix of an absent member's subject into one
//!   marker (the record names the last expired sequence, so two replicas sweeping at once count it once), then
//!   purges it. The stream's `max_age` is only a backstop past the time to live.
//! - **Returning.** A session that registers holds its live frames; a task sends the KeyPackage stock and the
//!   backlog (direct gets of the member's subject, in order, with the gaps at their place), then releases them.
//!   The task stays while the session lives: a replica that keeps an envelope for a member then says so on
//!   `pb.<bubble>.kept` (the member's id and its own number), and a replica holding that member's sessions
//!   reads on. So an envelope kept by a replica that had not yet heard the member come back is delivered at
//!   once, not at the next visit.
//! - **Received.** `received {upto}` purges the member's subject up to that point and drops the gaps before it.
//! - **Revoked.** A member the directory no longer has loses its subject, gap record and KeyPackages, on every
//!   directory change and every sweep, by whichever replica sees it first (idempotent).
//! - **KeyPackages** live in the key-value bucket `pb-kp-<bubble>`, one record per member, each change made with
//!   an expected revision: one-time ones handed out once (oldest first), the last-resort one as often as asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use peerbubble_proto::limits::{KEY_PACKAGES_KEPT, MAX_KEY_PACKAGE_BYTES};
use peerbubble_proto::{
    ErrorCode, GroupId, MemberId, Opaque, ServerFrame, SessionId, encode_deliver_seq, encode_frame,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::connection::{error_frame, refusal};
use crate::directory::Directory;
use crate::hub::SessionHandle;
use crate::mailbox::{MailboxConfig, MailboxCounts};
use crate::state::AppState;

/// How long a returning member's session waits for JetStream before it is closed (it reconnects).
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// How often a session's mailbox task looks whether its session is gone, when nothing wakes it.
const SESSION_CHECK: Duration = Duration::from_secs(5);

/// An envelope kept for absent members, waiting for JetStream.
#[derive(Debug)]
pub(crate) struct Keep {
    pub from: MemberId,
    pub from_session: SessionId,
    pub body: Opaque,
    /// The commit's group, for a commit.
    pub group: Option<GroupId>,
    pub to: Vec<MemberId>,
    pub done: KeepDone,
}

/// Who learns how a [`Keep`] went.
#[derive(Debug)]
pub(crate) enum KeepDone {
    /// A `send`: its `ack` ("stored") or refusal goes to the sender.
    Send { handle: SessionHandle, id: u64 },
    /// A commit: how many recipients it was kept for (its `ack` counts them).
    Commit(oneshot::Sender<u32>),
}

/// Why an envelope was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotKept {
    /// The member's queue or the bubble's mailbox is full: the member gets a gap.
    Full,
    /// JetStream did not answer: nothing was promised.
    Unavailable,
}

/// The bubble's mailbox in JetStream, shared by its replicas.
#[derive(Debug)]
pub(crate) struct SharedMailbox {
    config: MailboxConfig,
    store: OnceLock<Store>,
    keeps: mpsc::UnboundedSender<Keep>,
    keeps_rx: Mutex<Option<mpsc::UnboundedReceiver<Keep>>>,
    /// KeyPackages to keep, one at a time so that a member's come in the order published.
    publishes: mpsc::UnboundedSender<Publish>,
    publishes_rx: Mutex<Option<mpsc::UnboundedReceiver<Publish>>>,
    /// This replica's members with a session, each woken when something was kept for it.
    waiting: Mutex<HashMap<MemberId, (Arc<Notify>, usize)>>,
    counts: Mutex<MailboxCounts>,
    ready: AtomicBool,
    directory: watch::Receiver<Option<Arc<Directory>>>,
}

/// The JetStream side, once connected.
#[derive(Debug, Clone)]
struct Store {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    gaps: kv::Store,
    key_packages: kv::Store,
    /// `pb.<bubble>`.
    base: String,
}

/// What a member lost, kept until it acknowledges the marker.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Losses {
    /// Markers in order: (placed after this stream sequence, envelopes lost, groups that lost a commit).
    gaps: Vec<(u64, u64, Vec<String>)>,
    /// The last stream sequence already counted as expired.
    expired: u64,
}

/// A member's published KeyPackages (wire form).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Stock {
    one_time: Vec<String>,
    last_resort: Option<String>,
}

/// Header of an entry: the body bytes kept for its member through this entry, a running count that goes on
/// from the member's previous entry. The last entry's count minus what came before the first is the queue.
const UPTO: &str = "Pb-Upto";

/// What a replica knows of a member's queue, in body bytes: the running count through its last entry and
/// before its first. Another replica keeping for the member invalidates it (`kept` pings); acknowledgements
/// only shrink the queue, so a stale `start` can only overstate it, and is read again before a refusal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    end: u64,
    start: u64,
}

impl Held {
    fn bytes(self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn key(member: &MemberId) -> String {
    member.to_string()
}

impl SharedMailbox {
    pub fn new(config: MailboxConfig, directory: watch::Receiver<Option<Arc<Directory>>>) -> Self {
        let (keeps, rx) = mpsc::unbounded_channel();
        let (publishes, publishes_rx) = mpsc::unbounded_channel();
        Self {
            config,
            store: OnceLock::new(),
            keeps,
            keeps_rx: Mutex::new(Some(rx)),
            publishes,
            publishes_rx: Mutex::new(Some(publishes_rx)),
            waiting: Mutex::new(HashMap::new()),
            counts: Mutex::new(MailboxCounts::default()),
            ready: AtomicBool::new(false),
            directory,
        }
    }

    pub fn config(&self) -> &MailboxConfig {
        &self.config
    }

    /// JetStream answered and the stream and buckets exist.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// What is kept now (as of the last sweep or change).
    pub fn counts(&self) -> MailboxCounts {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps an envelope for absent members; the outcome goes to `keep.done`.
    pub fn keep(&self, keep: Keep) {
        if let Err(mpsc::error::SendError(keep)) = self.keeps.send(keep) {
            answer_keep(None, keep.done, 0, Some(NotKept::Unavailable));
        }
    }

    fn notify(&self, member: MemberId) -> Arc<Notify> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let entry = waiting.entry(member).or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        entry.0.clone()
    }

    fn forget(&self, member: MemberId) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = waiting.get_mut(&member) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiting.remove(&member);
            }
        }
    }

    fn wake(&self, member: &MemberId) {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((notify, _)) = waiting.get(member) {
            notify.notify_waiters();
        }
    }

    async fn store(&self, wait: Duration) -> Option<Store> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(store) = self.store.get() {
                return Some(store.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A session of `member` registered holding its live frames: sends the KeyPackage stock and what waited,
    /// then releases them, and goes on delivering what is kept for the member while the session lives.
    pub fn attach(self: &Arc<Self>, member: MemberId, handle: SessionHandle) {
        let mailbox = self.clone();
        let notify = self.notify(member);
        tokio::spawn(async move {
            mailbox.serve(member, &handle, &notify).await;
            mailbox.forget(member);
        });
    }

    async fn serve(&self, member: MemberId, handle: &SessionHandle, notify: &Notify) {
        let Some(store) = self.store(CATCH_UP_WAIT).await else {
            handle.kill(ErrorCode::Internal, "the bubble's mailbox is not reachable; reconnect");
            return;
        };
        let stock = match store.stock(&member).await {
            Ok((stock, _)) => stock,
            Err(err) => {
                tracing::warn!(error = %err, "mailbox: cannot read a returning member's KeyPackages");
                handle.kill(ErrorCode::Internal, "the bubble's mailbox is not reachable; reconnect");
                return;
            }
        };
        let (one_time, last_resort) = (stock.one_time.len() as u32, stock.last_resort.is_some());
        handle.send_backlog(Utf8Bytes::from(encode_frame(&ServerFrame::KeyPackageStock { one_time, last_resort })));
        let mut after = 0;
        let mut first = true;
        loop {
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let directory = self.directory.borrow().clone();
            match store.backlog(member, after, directory.as_deref(), handle).await {
                Ok(last) => after = last,
                Err(err) if first => {
                    tracing::warn!(error = %err, "mailbox: cannot read what waited for a returning member");
                    handle.kill(ErrorCode::Internal, "the bubble's mailbox is not reachable; reconnect");
                    return;
                }
                Err(err) => tracing::warn!(error = %err, "mailbox: cannot read what was kept for a member"),
            }
            if first {
                first = false;
                handle.release();
            }
            // Read again only when woken; meanwhile look now and then whether the session is gone (an idle
            // session costs NATS nothing).
            while tokio::time::timeout(SESSION_CHECK, woken.as_mut()).await.is_err() {
                if handle.is_closed() {
                    return;
                }
            }
            if handle.is_closed() {
                return;
            }
        }
    }

    /// `member` handled everything up to `upto`: delete it.
    pub fn received(self: &Arc<Self>, member: MemberId, upto: u64) {
        let mailbox = self.clone();
        tokio::spawn(async move {
            let Some(store) = mailbox.store.get().cloned() else { return };
            if let Err(err) = store.received(member, upto).await {
                tracing::warn!(error = %err, "mailbox: acknowledged entries not deleted yet (next acknowledgement)");
            }
        });
    }

    /// Keeps a KeyPackage `member` published; a refusal goes to its session.
    pub fn publish_key_package(
        self: &Arc<Self>,
        member: MemberId,
        key_package: Opaque,
        last_resort: bool,
        handle: SessionHandle,
    ) {
        let publish = Publish { member, key_package, last_resort, handle };
        if let Err(mpsc::error::SendError(publish)) = self.publishes.send(publish) {
            publish.refuse();
        }
    }

    /// Hands out one of `member`'s KeyPackages to the session that asked (frame `id`).
    pub fn claim_key_package(self: &Arc<Self>, id: u64, member: MemberId, handle: SessionHandle) {
        let mailbox = self.clone();
        tokio::spawn(async move {
            let key_package = match mailbox.store.get().cloned() {
                Some(store) => store.claim_key_package(member).await.unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "mailbox: a KeyPackage claim was answered with none");
                    None
                }),
                None => None,
            };
            let answer = ServerFrame::ClaimedKeyPackage { id, member, key_package };
            handle.send_or_kill(&Utf8Bytes::from(encode_frame(&answer)));
        });
    }
}

/// A KeyPackage to keep.
#[derive(Debug)]
pub(crate) struct Publish {
    member: MemberId,
    key_package: Opaque,
    last_resort: bool,
    handle: SessionHandle,
}

impl Publish {
    fn refuse(&self) {
        let message = "the bubble could not keep this KeyPackage right now; it asks again next session";
        self.handle.send_or_kill(&error_frame(ErrorCode::MailboxFull, message, None, None));
    }
}

/// Keeps KeyPackages one at a time, in the order published.
async fn keep_key_packages(store: Store, mut publishes: mpsc::UnboundedReceiver<Publish>) {
    while let Some(publish) = publishes.recv().await {
        let key_package = publish.key_package.clone();
        if let Err(err) = store.publish_key_package(publish.member, key_package, publish.last_resort).await {
            tracing::warn!(error = %err, "mailbox: a KeyPackage was not kept");
            publish.refuse();
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn not_found(err: &stream::DirectGetError) -> bool {
    err.kind() == stream::DirectGetErrorKind::NotFound
}

/// An entry's [`UPTO`] count (0 for an entry without one: it was not written by a replica).
fn upto(headers: &HeaderMap) -> u64 {
    headers.get(UPTO).and_then(|v| v.as_str().parse().ok()).unwrap_or(0)
}

impl Store {
    fn subject(&self, member: &MemberId) -> String {
        format!("{}.mbox.{member}", self.base)
    }

    /// Publishes an envelope for `to`; the returned future resolves with its stream sequence once stored.
    async fn publish(
        &self,
        to: &MemberId,
        keep: &Keep,
        upto: u64,
    ) -> Result<jetstream::context::PublishAckFuture, NotKept> {
        let mut headers = HeaderMap::new();
        headers.insert(UPTO, upto.to_string().as_str());
        headers.insert("Pb-From", keep.from.to_string().as_str());
        headers.insert("Pb-Session", keep.from_session.0.to_string().as_str());
        headers.insert("Pb-At", now_secs().to_string().as_str());
        if let Some(group) = keep.group {
            headers.insert("Pb-Group", String::from(group).as_str());
        }
        let body = Bytes::copy_from_slice(keep.body.as_wire().as_bytes());
        self.js.publish_with_headers(self.subject(to), headers, body).await.map_err(|err| {
            tracing::warn!(error = %err, "mailbox: JetStream refused a publish");
            NotKept::Unavailable
        })
    }

    /// The running count of `member`'s queue before its first entry (`None`: the queue is empty).
    async fn first_start(&self, member: &MemberId) -> Result<Option<u64>, BoxError> {
        match self.stream.direct_get_next_for_subject(self.subject(member), None).await {
            Ok(first) => Ok(Some(upto(&first.headers).saturating_sub(first.payload.len() as u64))),
            Err(err) if not_found(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// What `member`'s queue holds, read from its last and first entries.
    async fn held(&self, member: &MemberId) -> Result<Held, BoxError> {
        let end = match self.stream.direct_get_last_for_subject(self.subject(member)).await {
            Ok(last) => upto(&last.headers),
            Err(err) if not_found(&err) => return Ok(Held::default()),
            Err(err) => return Err(err.into()),
        };
        Ok(Held { end, start: self.first_start(member).await?.unwrap_or(end) })
    }

    /// Makes room for `len` more bytes in `to`'s queue within `quota`: the running count the new entry carries,
    /// or `Full`. `known` is this replica's view, read from JetStream when it has none.
    async fn room(
        &self,
        known: &mut HashMap<MemberId, Held>,
        to: &MemberId,
        len: u64,
        quota: u64,
    ) -> Result<u64, NotKept> {
        let unavailable = |err: BoxError| {
            tracing::warn!(error = %err, "mailbox: cannot read a member's queue in JetStream");
            NotKept::Unavailable
        };
        let mut held = match known.get(to) {
            Some(held) => *held,
            None => self.held(to).await.map_err(unavailable)?,
        };
        if held.bytes() + len > quota {
            // The member may have acknowledged its first entries since: look again before refusing.
            held.start = self.first_start(to).await.map_err(unavailable)?.unwrap_or(held.end);
        }
        let room = held.bytes() + len <= quota;
        if room {
            held.end += len;
        }
        known.insert(*to, held);
        if room { Ok(held.end) } else { Err(NotKept::Full) }
    }

    /// Reads a record of `bucket`, changes it with `change` (None: leave it), and writes it back naming the
    /// revision read, again from the start when another replica wrote first. An empty record is purged.
    async fn modify<T>(bucket: &kv::Store, key: &str, mut change: impl FnMut(&mut T) -> bool) -> Result<T, BoxError>
    where
        T: Serialize + for<'de> Deserialize<'de> + Default + PartialEq,
    {
        for _ in 0..16 {
            let entry = bucket.entry(key).await?.filter(|e| e.operation == kv::Operation::Put);
            let mut value: T = match &entry {
                Some(entry) => serde_json::from_slice(&entry.value)?,
                None => T::default(),
            };
            if !change(&mut value) || (entry.is_none() && value == T::default()) {
                return Ok(value);
            }
            let written =
                if value == T::default() {
                    bucket.purge_expect_revision(key, Some(entry.as_ref().map_or(0, |e| e.revision))).await.map_err(
                        |e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, BoxError::from(e.to_string())),
                    )
                } else {
                    let bytes = Bytes::from(serde_json::to_vec(&value)?);
                    match &entry {
                        Some(entry) => bucket.update(key, bytes, entry.revision).await.map(|_| ()).map_err(|e| {
                            (e.kind() == kv::UpdateErrorKind::WrongLastRevision, BoxError::from(e.to_string()))
                        }),
                        None => bucket.create(key, bytes).await.map(|_| ()).map_err(|e| {
                            (e.kind() == kv::CreateErrorKind::AlreadyExists, BoxError::from(e.to_string()))
                        }),
                    }
                };
            match written {
                Ok(()) => return Ok(value),
                Err((true, _)) => continue,
                Err((false, err)) => return Err(err),
            }
        }
        Err("the record kept changing under this change".into())
    }

    /// A refused entry for `member` (and `group`'s commit) becomes a loss at the end of its queue: added to the
    /// last marker when nothing was kept after it, else a new marker after everything kept so far.
    async fn lose(&self, member: &MemberId, group: Option<GroupId>) -> Result<(), BoxError> {
        let last_kept = match self.stream.direct_get_last_for_subject(self.subject(member)).await {
            Ok(message) => message.sequence,
            Err(err) if not_found(&err) => 0,
            Err(err) => return Err(err.into()),
        };
        let now = self.stream.get_info().await?.state.last_sequence;
        Self::modify(&self.gaps, &key(member), |losses: &mut Losses| {
            match losses.gaps.last_mut() {
                Some((after, lost, groups)) if *after >= last_kept => {
                    *lost += 1;
                    add_group(groups, group);
                }
                _ => {
                    let mut groups = Vec::new();
                    add_group(&mut groups, group);
                    losses.gaps.push((now.max(last_kept), 1, groups));
                }
            }
            true
        })
        .await?;
        Ok(())
    }

    /// Sends what waits for `member` after `seq` `after` (envelopes from senders it may still see, gap markers
    /// at their place) to its session; returns the `seq` of the last one.
    async fn backlog(
        &self,
        member: MemberId,
        after: u64,
        directory: Option<&Directory>,
        handle: &SessionHandle,
    ) -> Result<u64, BoxError> {
        let losses: Losses = match self.gaps.entry(key(&member)).await? {
            Some(entry) if entry.operation == kv::Operation::Put => serde_json::from_slice(&entry.value)?,
            _ => Losses::default(),
        };
        let mut gaps = losses.gaps.into_iter().filter(|(at, _, _)| 2 * at + 1 > after).peekable();
        let subject = self.subject(&member);
        let mut last = after;
        let mut next = after / 2 + 1;
        loop {
            let message = match self.stream.direct_get_next_for_subject(subject.as_str(), Some(next)).await {
                Ok(message) => message,
                Err(err) if not_found(&err) => break,
                Err(err) => return Err(err.into()),
            };
            next = message.sequence + 1;
            while let Some((at, lost, groups)) = gaps.next_if(|(at, _, _)| *at < message.sequence) {
                last = 2 * at + 1;
                handle.send_backlog(gap_frame(last, lost, &groups));
            }
            let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
            let (Some(from), Some(session)) = (
                header("Pb-From").and_then(|v| v.parse::<MemberId>().ok()),
                header("Pb-Session").and_then(|v| v.parse::<u64>().ok()),
            ) else {
                tracing::warn!(seq = message.sequence, "mailbox: skipped a damaged entry");
                continue;
            };
            let Ok(body) = std::str::from_utf8(&message.payload).map(str::to_owned).map(Opaque::try_from) else {
                tracing::warn!(seq = message.sequence, "mailbox: skipped a damaged entry");
                continue;
            };
            let Ok(body) = body else { continue };
            last = 2 * message.sequence;
            // Need-to-know holds for what waited too.
            if directory.is_some_and(|d| d.sees(&member, &from)) {
                let frame = encode_deliver_seq(&from, SessionId(session), &body, Some(last));
                handle.send_backlog(Utf8Bytes::from(frame));
            }
        }
        for (at, lost, groups) in gaps {
            last = 2 * at + 1;
            handle.send_backlog(gap_frame(last, lost, &groups));
        }
        Ok(last)
    }

    async fn received(&self, member: MemberId, upto: u64) -> Result<(), BoxError> {
        self.stream.purge().filter(self.subject(&member)).sequence(upto / 2 + 1).await?;
        Self::modify(&self.gaps, &key(&member), |losses: &mut Losses| {
            let before = losses.gaps.len();
            losses.gaps.retain(|(at, _, _)| 2 * at + 1 > upto);
            if losses.gaps.is_empty() {
                // Nothing left to say: the record goes (what expired before `upto` is purged already).
                losses.expired = 0;
            }
            losses.gaps.len() != before || losses.gaps.is_empty()
        })
        .await?;
        Ok(())
    }

    /// Turns the expired prefix of an absent member's subject into one gap marker, then deletes it. Returns how
    /// many envelopes expired.
    async fn expire(&self, member: MemberId, oldest: u64) -> Result<u64, BoxError> {
        let subject = self.subject(&member);
        let (mut lost, mut groups, mut last) = (0u64, Vec::new(), 0u64);
        let mut next = 1;
        loop {
            let message = match self.stream.direct_get_next_for_subject(subject.as_str(), Some(next)).await {
                Ok(message) => message,
                Err(err) if not_found(&err) => break,
                Err(err) => return Err(err.into()),
            };
            let at = message.headers.get("Pb-At").and_then(|v| v.as_str().parse::<u64>().ok()).unwrap_or(0);
            if at >= oldest {
                break;
            }
            lost += 1;
            last = message.sequence;
            next = last + 1;
            let group = message.headers.get("Pb-Group").and_then(|v| GroupId::try_from(v.as_str().to_owned()).ok());
            add_group(&mut groups, group);
        }
        if lost == 0 {
            return Ok(0);
        }
        let mut counted = true;
        Self::modify(&self.gaps, &key(&member), |losses: &mut Losses| {
            if losses.expired >= last {
                // Another replica counted these already.
                counted = false;
                return false;
            }
            // Markers inside the expired prefix join the new one, at the place of its last entry.
            let (mut total, mut all) = (lost, groups.clone());
            losses.gaps.retain(|(at, n, g)| {
                if *at <= last {
                    total += n;
                    for group in g {
                        if !all.contains(group) {
                            all.push(group.clone());
                        }
                    }
                    false
                } else {
                    true
                }
            });
            losses.gaps.insert(0, (last, total, all));
            losses.expired = last;
            true
        })
        .await?;
        self.stream.purge().filter(subject).sequence(last + 1).await?;
        Ok(if counted { lost } else { 0 })
    }

    /// Drops everything kept for `member` (removed from the bubble): its subject, its gaps, its KeyPackages.
    async fn purge_member(&self, member: &MemberId) -> Result<(), BoxError> {
        self.stream.purge().filter(self.subject(member)).await?;
        self.gaps.purge(key(member)).await?;
        self.key_packages.purge(key(member)).await?;
        Ok(())
    }

    async fn stock(&self, member: &MemberId) -> Result<(Stock, u64), BoxError> {
        match self.key_packages.entry(key(member)).await? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                Ok((serde_json::from_slice(&entry.value)?, entry.revision))
            }
            _ => Ok((Stock::default(), 0)),
        }
    }

    async fn publish_key_package(
        &self,
        member: MemberId,
        key_package: Opaque,
        last_resort: bool,
    ) -> Result<(), BoxError> {
        let wire = key_package.as_wire().to_owned();
        Self::modify(&self.key_packages, &key(&member), |stock: &mut Stock| {
            if last_resort {
                stock.last_resort = Some(wire.clone());
            } else {
                stock.one_time.push(wire.clone());
                let excess = stock.one_time.len().saturating_sub(KEY_PACKAGES_KEPT);
                stock.one_time.drain(..excess);
            }
            true
        })
        .await?;
        Ok(())
    }

    async fn claim_key_package(&self, member: MemberId) -> Result<Option<Opaque>, BoxError> {
        let mut handed = None;
        Self::modify(&self.key_packages, &key(&member), |stock: &mut Stock| {
            if stock.one_time.is_empty() {
                handed = stock.last_resort.clone();
                false
            } else {
                handed = Some(stock.one_time.remove(0));
                true
            }
        })
        .await?;
        Ok(handed.and_then(|wire| Opaque::try_from(wire).ok()))
    }

    /// Who has something kept: members with envelopes (and how many) and members with KeyPackages. Listed once
    /// per sweep or directory change and used for both the purge of removed members and the counts.
    async fn listing(&self) -> Result<Listing, BoxError> {
        let prefix = format!("{}.mbox.", self.base);
        let mut queues = Vec::new();
        let mut subjects = self.stream.info_with_subjects(format!("{prefix}*")).await?;
        while let Some(item) = subjects.next().await {
            let (subject, count) = item?;
            if let Some(member) = subject.strip_prefix(&prefix).and_then(|m| m.parse::<MemberId>().ok()) {
                queues.push((member, count));
            }
        }
        let mut stocks = Vec::new();
        let mut keys = self.key_packages.keys().await?;
        while let Some(k) = keys.next().await {
            if let Ok(member) = k?.parse::<MemberId>() {
                stocks.push(member);
            }
        }
        Ok(Listing { queues, stocks })
    }

    /// What is kept, for the metrics: `listing` says who, the stream and buckets say how much.
    async fn counts(&self, listing: &Listing) -> Result<MailboxCounts, BoxError> {
        let info = self.stream.get_info().await?;
        let mut key_packages = 0;
        for member in &listing.stocks {
            if let Some(entry) = self.key_packages.entry(key(member)).await?
                && let Ok(stock) = serde_json::from_slice::<Stock>(&entry.value)
            {
                key_packages += stock.one_time.len() + usize::from(stock.last_resort.is_some());
            }
        }
        let gaps = self.gaps.keys().await?.count().await;
        Ok(MailboxCounts {
            members: listing.queues.iter().filter(|(_, count)| *count > 0).count(),
            entries: info.state.messages as usize + gaps,
            bytes: info.state.bytes as usize,
            key_packages,
        })
    }
}

/// Who has something kept in the shared mailbox.
#[derive(Debug, Default)]
struct Listing {
    /// Members with a queue, and its entries.
    queues: Vec<(MemberId, usize)>,
    /// Members with published KeyPackages.
    stocks: Vec<MemberId>,
}

fn add_group(groups: &mut Vec<String>, group: Option<GroupId>) {
    if let Some(group) = group.map(String::from)
        && !groups.contains(&group)
    {
        groups.push(group);
    }
}

fn gap_frame(seq: u64, lost: u64, groups: &[String]) -> Utf8Bytes {
    let groups = groups.iter().filter_map(|g| GroupId::try_from(g.clone()).ok()).collect();
    Utf8Bytes::from(encode_frame(&ServerFrame::Gap { seq, lost, groups }))
}

/// Answers a [`Keep`]: `stored` recipients kept, `failed` the first failure.
fn answer_keep(state: Option<&AppState>, done: KeepDone, stored: u32, failed: Option<NotKept>) {
    match done {
        KeepDone::Commit(tx) => {
            let _ = tx.send(stored);
        }
        KeepDone::Send { handle, id } => {
            let frame = match failed.filter(|_| stored == 0) {
                None => Utf8Bytes::from(encode_frame(&ServerFrame::Ack { id, sessions: 0, stored })),
                Some(NotKept::Full) => {
                    if let Some(state) = state {
                        state.metrics.refused(ErrorCode::MailboxFull.as_str());
                    }
                    let (message, retry) = refusal(ErrorCode::MailboxFull);
                    error_frame(ErrorCode::MailboxFull, message, Some(id), retry)
                }
                Some(NotKept::Unavailable) => {
                    let message = "the bubble cannot keep this for the recipient right now; retry";
                    error_frame(ErrorCode::Internal, message, Some(id), Some(Duration::from_secs(1)))
                }
            };
            handle.send_or_kill(&frame);
        }
    }
}

/// The stream, made once per bubble by whichever replica comes first.
async fn open_store(
    client: &async_nats::Client,
    bubble: &str,
    config: &MailboxConfig,
    max_frame: usize,
) -> Result<Store, BoxError> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: format!("pb-mbox-{bubble}"),
            description: Some("PeerBubble: opaque envelopes waiting for absent members".into()),
            subjects: vec![format!("pb.{bubble}.mbox.*")],
            storage: stream::StorageType::File,
            // The sweep expires entries; this only catches what a stopped bubble left behind.
            max_age: config.ttl + 2 * config.sweep_interval + Duration::from_secs(3600),
            max_messages_per_subject: config.member_entries as i64,
            max_bytes: config.total_bytes as i64,
            max_message_size: (max_frame + 1024) as i32,
            discard: stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            allow_direct: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await?;
    let gaps = crate::cluster::open_bucket(
        client,
        &format!("pb-gaps-{bubble}"),
        "PeerBubble: what absent members lost (counts and group ids)",
        Duration::ZERO,
        -1,
    )
    .await?;
    let key_packages = crate::cluster::open_bucket(
        client,
        &format!("pb-kp-{bubble}"),
        "PeerBubble: KeyPackages members published for when they are away (public)",
        Duration::ZERO,
        (KEY_PACKAGES_KEPT as i64 + 1) * (MAX_KEY_PACKAGE_BYTES as i64 * 4 / 3 + 64) + 1024,
    )
    .await?;
    Ok(Store { client: client.clone(), js, stream, gaps, key_packages, base: format!("pb.{bubble}") })
}

/// Runs the shared mailbox of a replica: opens the stream and buckets, keeps envelopes in order (publishes
/// pipelined, answered in order), wakes local sessions when another replica kept something for them, and sweeps.
pub(crate) async fn run(state: Arc<AppState>, mailbox: Arc<SharedMailbox>, client: async_nats::Client, bubble: String) {
    let Some(mut keeps) = mailbox.keeps_rx.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    let store = loop {
        match open_store(&client, &bubble, &mailbox.config, state.config.max_frame_bytes as usize).await {
            Ok(store) => break store,
            Err(err) => {
                tracing::warn!(error = %err, "the shared mailbox is not available yet (JetStream); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let Ok(mut pings) = client.subscribe(format!("{}.kept", store.base)).await else {
        tracing::error!("cannot subscribe to the bubble's NATS subjects; check the credentials' permissions");
        return;
    };
    let _ = mailbox.store.set(store.clone());
    let publishes = mailbox.publishes_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
    let key_packages = publishes.map(|rx| tokio::spawn(keep_key_packages(store.clone(), rx)));
    mailbox.ready.store(true, Ordering::SeqCst);
    let mut directory = state.directory.clone();
    let mut sweep = tokio::time::interval(mailbox.config.sweep_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight = FuturesOrdered::new();
    let mut held = HashMap::new();
    let member_bytes = mailbox.config.member_bytes as u64;
    let replica = state.hub.replica();
    loop {
        tokio::select! {
            keep = keeps.recv() => {
                let Some(keep) = keep else { break };
                let mut acks = Vec::with_capacity(keep.to.len());
                let len = keep.body.as_wire().len() as u64;
                for to in &keep.to {
                    let ack = match store.room(&mut held, to, len, member_bytes).await {
                        Ok(upto) => store.publish(to, &keep, upto).await,
                        Err(not) => Err(not),
                    };
                    acks.push((*to, ack));
                }
                inflight.push_back(async move {
                    let mut outcome = Vec::with_capacity(acks.len());
                    for (to, ack) in acks {
                        let result = match ack {
                            Ok(ack) => ack.await.map(|_| ()).map_err(|err| {
                                // A refusal for the stream's limits is a full mailbox; anything else is JetStream
                                // not answering (nothing was promised).
                                if err.kind() == jetstream::context::PublishErrorKind::Other
                                    && err.to_string().contains("maximum")
                                {
                                    NotKept::Full
                                } else {
                                    tracing::warn!(error = %err, "mailbox: JetStream did not store an entry");
                                    NotKept::Unavailable
                                }
                            }),
                            Err(not) => Err(not),
                        };
                        outcome.push((to, result));
                    }
                    (keep, outcome)
                });
            }
            Some((keep, outcome)) = inflight.next(), if !inflight.is_empty() => {
                let (mut stored, mut failed) = (0u32, None);
                for (to, result) in outcome {
                    match result {
                        Ok(()) => {
                            stored += 1;
                            mailbox.wake(&to);
                            let ping = Bytes::from(format!("{to} {replica}"));
                            let _ = store.client.publish(format!("{}.kept", store.base), ping).await;
                        }
                        Err(not) => {
                            // What this replica counted for the entry was not kept: read the queue again next time.
                            held.remove(&to);
                            if not == NotKept::Full {
                                state.metrics.mailbox_lost(1);
                                if let Err(err) = store.lose(&to, keep.group).await {
                                    tracing::warn!(error = %err, "mailbox: a loss could not be recorded");
                                }
                            }
                            failed = failed.or(Some(not));
                        }
                    }
                }
                if stored > 0 {
                    state.metrics.mailbox_kept(u64::from(stored));
                }
                answer_keep(Some(&state), keep.done, stored, failed);
            }
            Some(message) = pings.next() => {
                // `<member> <replica>`: another replica's entry makes this one's count of that queue stale.
                let text = std::str::from_utf8(&message.payload).unwrap_or_default();
                let (member, from) = text.split_once(' ').unwrap_or((text, ""));
                if let Ok(member) = member.parse::<MemberId>() {
                    if from != replica.to_string() {
                        held.remove(&member);
                    }
                    mailbox.wake(&member);
                }
            }
            changed = directory.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = directory.borrow_and_update().clone();
                if let Some(current) = current {
                    tokio::spawn(purge_removed(state.clone(), mailbox.clone(), store.clone(), current));
                }
            }
            _ = sweep.tick() => {
                // Counts of queues nobody kept for lately are read again when needed: the map stays small.
                held.clear();
                tokio::spawn(sweep_once(state.clone(), mailbox.clone(), store.clone()));
            }
        }
    }
    if let Some(task) = key_packages {
        task.abort();
    }
}

/// Drops what is kept for members the directory no longer has (removed, revoked), then refreshes the counts.
async fn purge_removed(state: Arc<AppState>, mailbox: Arc<SharedMailbox>, store: Store, directory: Arc<Directory>) {
    match store.listing().await {
        Ok(listing) => purge_and_count(&state, &mailbox, &store, Some(&directory), listing).await,
        Err(err) => tracing::warn!(error = %err, "mailbox: cannot list what is kept; the next sweep purges"),
    }
}

async fn purge_and_count(
    state: &AppState,
    mailbox: &SharedMailbox,
    store: &Store,
    directory: Option<&Directory>,
    mut listing: Listing,
) {
    // Without a directory yet, nobody is known to be removed.
    let removed = |m: &MemberId| directory.is_some_and(|d| d.member(m).is_none());
    let mut gone: Vec<MemberId> = listing.queues.iter().map(|(m, _)| *m).filter(|m| removed(m)).collect();
    for member in &listing.stocks {
        if removed(member) && !gone.contains(member) {
            gone.push(*member);
        }
    }
    for member in &gone {
        if let Err(err) = store.purge_member(member).await {
            tracing::warn!(error = %err, "mailbox: a removed member's queue is not purged yet (next sweep)");
        }
    }
    if !gone.is_empty() {
        tracing::info!(members = gone.len(), "mailbox: purged what waited for members no longer in the bubble");
        listing.queues.retain(|(m, _)| !gone.contains(m));
        listing.stocks.retain(|m| !gone.contains(m));
    }
    match store.counts(&listing).await {
        Ok(counts) => {
            *mailbox.counts.lock().unwrap_or_else(|p| p.into_inner()) = counts;
            state.metrics.mailbox_counts(counts);
        }
        Err(err) => tracing::debug!(error = %err, "mailbox: counts not refreshed"),
    }
}

/// Expires what outlived the time to live for absent members, purges removed members, refreshes the counts:
/// from one listing of who has something kept.
async fn sweep_once(state: Arc<AppState>, mailbox: Arc<SharedMailbox>, store: Store) {
    let mut listing = match store.listing().await {
        Ok(listing) => listing,
        Err(err) => {
            tracing::warn!(error = %err, "mailbox: cannot list what is kept (next sweep)");
            return;
        }
    };
    let oldest = now_secs().saturating_sub(mailbox.config.ttl.as_secs());
    for (member, count) in &mut listing.queues {
        if state.hub.is_online(member) {
            continue;
        }
        match store.expire(*member, oldest).await {
            Ok(0) => {}
            Ok(lost) => {
                *count = count.saturating_sub(lost as usize);
                state.metrics.mailbox_lost(lost);
                tracing::info!(envelopes = lost, "mailbox: envelopes expired before their recipient came back");
            }
            Err(err) => tracing::warn!(error = %err, "mailbox: expiry not done (next sweep)"),
        }
    }
    let directory = state.directory.borrow().clone();
    purge_and_count(&state, &mailbox, &store, directory.as_deref(), listing).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_that_say_nothing_are_the_default_and_so_are_purged() {
        assert_eq!(Losses::default(), serde_json::from_str::<Losses>(r#"{"gaps":[],"expired":0}"#).unwrap());
        let stock = Stock { one_time: vec!["a".into()], last_resort: None };
        assert_ne!(stock, Stock::default());
    }
}
