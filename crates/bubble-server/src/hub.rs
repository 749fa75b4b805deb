//! Who is online, and the routes between them: sessions per member, presence fan-out scoped by the directory,
//! envelope delivery with per-session byte budgets (a slow reader never grows server memory unboundedly), and
//! the ordering of MLS commits per group.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use peerbubble_proto::health::{MAX_EVENTS_PER_REPORT, SessionEvent, SessionEventKind};
use peerbubble_proto::{
    DirectoryEntry, ErrorCode, GroupId, MemberId, Opaque, Recipients, ServerFrame, SessionId, encode_deliver,
    encode_frame,
};
use tokio::sync::{mpsc, watch};

use crate::directory::Directory;
use crate::mailbox::{Full, Mailbox};
use crate::metrics::Metrics;
use crate::session::{Claim, CommitLedger, TokenBucket};
use crate::shared_mailbox::SharedMailbox;

/// Session events kept for health reports while the admin API cannot take them.
const EVENT_BUFFER: usize = 10_000;

/// What a connection writes, in order.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame; its length was counted in the session's queued bytes.
    Text(Utf8Bytes),
    /// A frame of the mailbox's backlog, not counted in the session's queued bytes: a returning member's
    /// backlog (bounded by the mailbox's quota) must not make its first live frames look like a slow reader's.
    Backlog(Utf8Bytes),
    /// A last `error` frame, then a close frame with this code.
    Close { frame: Utf8Bytes, code: u16, reason: &'static str },
}

/// A request to close a session from outside its connection task.
#[derive(Debug)]
pub(crate) struct Kill {
    pub code: ErrorCode,
    pub message: &'static str,
}

/// One session's outgoing queue, shared by the hub (every sender) and the connection task that writes it.
///
/// Costs nothing while empty (an idle connection keeps no buffer); wakes the connection task only when it
/// asked to be woken, so that a burst of frames costs one wake-up, and a session's own replies, queued while
/// its task runs, none.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    inner: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Outbound>,
    /// Bytes of [`Outbound::Text`] frames queued and not yet taken by the writer.
    queued: usize,
    /// The first request to close, if any.
    kill: Option<Kill>,
    /// The connection task, when it waits.
    waker: Option<Waker>,
    /// The connection is gone: nothing more is queued.
    closed: bool,
    /// Live frames held while the mailbox's backlog is read (a session that registered with a shared mailbox):
    /// what waited comes first.
    held: Option<VecDeque<Outbound>>,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `out`; a [`Outbound::Text`] frame only if it fits `budget` bytes queued (when given).
    fn push(&self, out: Outbound, budget: Option<usize>) -> Result<(), Congested> {
        let mut queue = self.lock();
        if queue.closed {
            return Err(Congested);
        }
        if let Outbound::Text(text) = &out {
            let n = text.len();
            if budget.is_some_and(|budget| queue.queued + n > budget) {
                return Err(Congested);
            }
            queue.queued += n;
            if let Some(held) = &mut queue.held {
                held.push_back(out);
                return Ok(());
            }
        }
        queue.frames.push_back(out);
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Asks the connection to close; the first request wins.
    fn kill(&self, kill: Kill) {
        let mut queue = self.lock();
        if queue.closed || queue.kill.is_some() {
            return;
        }
        queue.kill = Some(kill);
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The connection task is running: frames queued from now on need not wake it (it looks again before it
    /// sleeps). Answers the request to close, if one came.
    pub fn begin(&self) -> Option<Kill> {
        let mut queue = self.lock();
        queue.waker = None;
        queue.kill.take()
    }

    /// The request to close, if one came.
    #[cfg(test)]
    pub fn take_kill(&self) -> Option<Kill> {
        self.lock().kill.take()
    }

    /// Takes queued frames, in order, into `each` until it answers false (that frame is taken too).
    pub fn take(&self, mut each: impl FnMut(Outbound) -> bool) {
        let mut queue = self.lock();
        while let Some(out) = queue.frames.pop_front() {
            if let Outbound::Text(text) = &out {
                queue.queued -= text.len();
            }
            if !each(out) {
                break;
            }
        }
        if queue.frames.is_empty() && queue.frames.capacity() > 0 {
            // A burst is over: give its memory back.
            queue.frames = VecDeque::new();
        }
    }

    /// Remembers `waker` to wake when a frame or a kill arrives; true if one is already there (`frames` only
    /// counts when the caller can take them now).
    pub fn wait(&self, waker: &Waker, frames: bool) -> bool {
        let mut queue = self.lock();
        if queue.kill.is_some() || (frames && !queue.frames.is_empty()) {
            return true;
        }
        match &queue.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => queue.waker = Some(waker.clone()),
        }
        false
    }

    /// Holds live frames from now on (see [`Queue::held`]).
    fn hold(&self) {
        self.lock().held.get_or_insert_with(VecDeque::new);
    }

    /// Lets the held frames go, after what was queued meanwhile outside the hold.
    fn release(&self) {
        let mut queue = self.lock();
        if let Some(held) = queue.held.take() {
            queue.frames.extend(held);
        }
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The connection is gone: refuse what comes next, and free what is queued.
    pub fn close(&self) {
        let mut queue = self.lock();
        queue.closed = true;
        queue.held = None;
        queue.frames = VecDeque::new();
        queue.queued = 0;
        queue.waker = None;
    }
}

/// The sending side of one session, held by the hub.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    pub id: SessionId,
    outbox: Arc<Outbox>,
    budget: usize,
}

/// The budgeted send failed: the reader is too slow.
#[derive(Debug)]
pub(crate) struct Congested;

impl SessionHandle {
    pub fn new(outbox: Arc<Outbox>, budget: usize) -> Self {
        Self { id: SessionId(0), outbox, budget }
    }

    /// Queues `text` if it fits the session's byte budget.
    pub fn try_send(&self, text: &Utf8Bytes) -> Result<(), Congested> {
        self.outbox.push(Outbound::Text(text.clone()), Some(self.budget))
    }

    /// Queues `text` regardless of the budget (handshake frames the session cannot work without).
    pub fn force_send(&self, text: Utf8Bytes) {
        let _ = self.outbox.push(Outbound::Text(text), None);
    }

    /// Queues a frame of the mailbox's backlog, outside the byte budget (see [`Outbound::Backlog`]).
    pub fn send_backlog(&self, text: Utf8Bytes) {
        let _ = self.outbox.push(Outbound::Backlog(text), None);
    }

    /// Holds live frames until [`SessionHandle::release`]; frames of the backlog and the close still go.
    pub fn hold(&self) {
        self.outbox.hold();
    }

    /// Lets the held frames go.
    pub fn release(&self) {
        self.outbox.release();
    }

    /// The connection is gone.
    pub fn is_closed(&self) -> bool {
        self.outbox.is_closed()
    }

    /// Queues the last frames: an `error` frame, then the close frame with `code`.
    pub fn close(&self, frame: Utf8Bytes, code: u16, reason: &'static str) {
        let _ = self.outbox.push(Outbound::Close { frame, code, reason }, None);
    }

    /// Sends a frame that must arrive for the session to stay consistent; a reader that is too slow for it
    /// is closed (it reconnects and gets a fresh state) rather than silently missing it.
    pub fn send_or_kill(&self, text: &Utf8Bytes) {
        if self.try_send(text).is_err() {
            self.kill(ErrorCode::SlowConsumer, "this session fell behind; reconnect");
        }
    }

    pub fn kill(&self, code: ErrorCode, message: &'static str) {
        self.outbox.kill(Kill { code, message });
    }
}

#[derive(Debug)]
struct MemberEntry {
    sessions: Vec<SessionHandle>,
    bucket: Mutex<TokenBucket>,
}

/// Session ids carry the replica that holds them in these high bits, so that a session id names its replica.
const REPLICA_SHIFT: u32 = 32;
/// Replica numbers use 20 bits: session ids stay below 2^53, exact as JavaScript numbers.
pub(crate) const MAX_REPLICA: u32 = (1 << 20) - 1;

/// The replica holding `session` (0 for a bubble-server that runs alone).
pub(crate) fn replica_of(session: SessionId) -> u32 {
    (session.0 >> REPLICA_SHIFT) as u32
}

/// Who is online: sessions on this replica, and members with sessions on other replicas of the bubble.
#[derive(Debug, Default)]
struct Online {
    local: HashMap<MemberId, MemberEntry>,
    /// Members with sessions on other replicas, and which replicas (what the cluster link last heard).
    remote: HashMap<MemberId, Vec<u32>>,
}

impl Online {
    fn is_online(&self, member: &MemberId) -> bool {
        self.local.contains_key(member) || self.remote.contains_key(member)
    }
}

/// A change in which members have sessions on this replica, for the other replicas (in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalPresence {
    pub member: MemberId,
    pub online: bool,
}

/// The online state of one bubble-server.
#[derive(Debug)]
pub(crate) struct Hub {
    members: RwLock<Online>,
    /// This replica's number (0 when the bubble-server runs alone).
    replica: u32,
    /// Local presence changes for the cluster link, when the bubble has several replicas.
    cluster: Option<mpsc::UnboundedSender<LocalPresence>>,
    next_session: AtomicU64,
    max_sessions: usize,
    member_rate: u32,
    max_frame_bytes: usize,
    metrics: Metrics,
    /// The order of MLS commits per group, for the whole bubble when it runs alone (replicas share theirs
    /// through the cluster link instead).
    commits: Mutex<CommitLedger>,
    /// Session events since the last health report (bounded).
    events: Mutex<(VecDeque<SessionEvent>, u64)>,
    /// The newest directory. Presence and slices always use it, never a connection's older snapshot: during
    /// a reload, a member who just became visible must also be told when it leaves.
    directory: watch::Receiver<Option<Arc<Directory>>>,
    /// What waits for members with no session, when the bubble keeps it in a file.
    mailbox: Option<Mailbox>,
    /// What waits for members with no session on any replica, when the bubble's replicas keep it in JetStream.
    shared: Option<Arc<SharedMailbox>>,
}

/// Where a `send` or `commit` went.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Routed {
    /// Recipient sessions it was queued to.
    pub sessions: u32,
    /// Absent recipients it was kept for in the mailbox.
    pub stored: u32,
    /// A recipient session here was over its budget.
    pub congested: bool,
    /// Other replicas holding recipient sessions, with the recipients each holds: the cluster link forwards
    /// the envelope to them and completes the `ack`.
    pub remote: Vec<(u32, Vec<MemberId>)>,
    /// Recipients with no session anywhere, for the shared mailbox to keep it for (then counted in `stored`).
    pub keep: Vec<MemberId>,
}

impl Routed {
    fn forward(&mut self, replica: u32, member: MemberId) {
        match self.remote.iter_mut().find(|(r, _)| *r == replica) {
            Some((_, members)) => members.push(member),
            None => self.remote.push((replica, vec![member])),
        }
    }
}

impl Hub {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        max_sessions: u32,
        member_rate: u32,
        max_frame_bytes: usize,
        max_groups: usize,
        metrics: Metrics,
        directory: watch::Receiver<Option<Arc<Directory>>>,
        mailbox: Option<Mailbox>,
        shared: Option<Arc<SharedMailbox>>,
        cluster: Option<(u32, mpsc::UnboundedSender<LocalPresence>)>,
    ) -> Self {
        let replica = cluster.as_ref().map_or(0, |(replica, _)| *replica & MAX_REPLICA);
        Self {
            mailbox,
            shared,
            replica,
            cluster: cluster.map(|(_, tx)| tx),
            commits: Mutex::new(CommitLedger::new(max_groups)),
            events: Mutex::new((VecDeque::new(), 0)),
            directory,
            members: RwLock::new(Online::default()),
            next_session: AtomicU64::new((u64::from(replica) << REPLICA_SHIFT) + 1),
            max_sessions: max_sessions as usize,
            member_rate,
            max_frame_bytes,
            metrics,
        }
    }

    fn record(&self, member: MemberId, kind: SessionEventKind) {
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.0.len() >= EVENT_BUFFER {
            events.0.pop_front();
            events.1 += 1;
        }
        events.0.push_back(SessionEvent { at, member, kind });
    }

    /// Takes the oldest session events (at most one report's worth), and how many were dropped.
    pub fn take_events(&self) -> (Vec<SessionEvent>, u64) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = std::mem::take(&mut events.1);
        let n = events.0.len().min(MAX_EVENTS_PER_REPORT);
        (events.0.drain(..n).collect(), dropped)
    }

    /// Puts back events a report could not deliver (oldest first, within the bound).
    pub fn restore_events(&self, mut back: Vec<SessionEvent>, dropped: u64) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        back.extend(events.0.drain(..));
        let excess = back.len().saturating_sub(EVENT_BUFFER);
        events.1 += dropped + excess as u64;
        events.0 = back.into_iter().skip(excess).collect();
    }

    /// The offline mailbox, when the bubble keeps one.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        self.mailbox.as_ref()
    }

    /// The mailbox shared by the bubble's replicas in JetStream, when it keeps one.
    pub fn shared_mailbox(&self) -> Option<&Arc<SharedMailbox>> {
        self.shared.as_ref()
    }

    /// How long what waits for an absent member is kept, when the bubble keeps it.
    pub fn mailbox_ttl(&self) -> Option<Duration> {
        let file = self.mailbox.as_ref().map(|m| m.config().ttl);
        file.or_else(|| self.shared.as_ref().map(|m| m.config().ttl))
    }

    /// Whether `member` has a session on this replica or, as last heard, on another.
    pub fn is_online(&self, member: &MemberId) -> bool {
        self.read().is_online(member)
    }

    /// Turns envelopes kept past their time to live into gap markers, for members with no session (under the
    /// lock, so that nobody registers and gets them meanwhile).
    pub fn expire_mailbox(&self, now_unix: i64) -> u64 {
        let Some(mailbox) = &self.mailbox else { return 0 };
        let map = self.read();
        let dropped = mailbox.expire(now_unix, |m| !map.local.contains_key(m));
        drop(map);
        self.metrics.mailbox_lost(dropped);
        self.metrics.mailbox_counts(mailbox.counts());
        dropped
    }

    /// Drops at once what was kept for members no longer in the directory (removed, revoked).
    pub fn purge_mailbox(&self, directory: &Directory) -> usize {
        let Some(mailbox) = &self.mailbox else { return 0 };
        let purged = mailbox.purge(|m| directory.member(m).is_some());
        self.metrics.mailbox_counts(mailbox.counts());
        purged
    }

    /// (members online, sessions).
    pub fn counts(&self) -> (u32, u32) {
        let map = self.read();
        (map.local.len() as u32, map.local.values().map(|e| e.sessions.len() as u32).sum())
    }

    fn latest(&self) -> Option<Arc<Directory>> {
        self.directory.borrow().clone()
    }

    /// This replica's number (0 when alone).
    pub fn replica(&self) -> u32 {
        self.replica
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Online> {
        self.members.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Online> {
        self.members.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a session: queues `welcome` and the directory slice to it and tells visible members that
    /// the member came online, all under one lock so that no presence change can slip between them.
    pub fn register(
        &self,
        member: MemberId,
        mut handle: SessionHandle,
        welcome: impl FnOnce(SessionId) -> ServerFrame,
    ) -> Result<(SessionId, SliceHash), ErrorCode> {
        let Some(directory) = self.latest() else { return Err(ErrorCode::Internal) };
        if directory.member(&member).is_none() {
            return Err(ErrorCode::MemberRemoved);
        }
        let mut map = self.write();
        let count = map.local.get(&member).map_or(0, |e| e.sessions.len());
        if count >= self.max_sessions {
            return Err(ErrorCode::TooManySessions);
        }
        let id = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
        handle.id = id;
        handle.force_send(Utf8Bytes::from(encode_frame(&welcome(id))));
        let slice = directory.slice(&member, |m| map.is_online(m));
        let sent = slice_hash(&slice);
        for frame in directory_frames(slice, self.max_frame_bytes) {
            handle.force_send(frame);
        }
        // A bubble that keeps what waits for absent members keeps their KeyPackages too: the member learns its
        // stock and tops it up.
        if let Some(mailbox) = &self.mailbox {
            let (one_time, last_resort) = mailbox.key_package_stock(member);
            handle.force_send(Utf8Bytes::from(encode_frame(&ServerFrame::KeyPackageStock { one_time, last_resort })));
        }
        // What waited comes before anything live (nothing can be routed to the session before the lock is
        // released), and only from members the member may still see.
        if let Some(mailbox) = &self.mailbox {
            for frame in mailbox.backlog(member, |from| directory.sees(&member, from)) {
                handle.send_backlog(frame);
            }
        }
        // Read from JetStream, it comes later: live frames are held until it is queued.
        if let Some(shared) = &self.shared {
            handle.hold();
            shared.attach(member, handle.clone());
        }
        let now = Instant::now();
        map.local
            .entry(member)
            .or_insert_with(|| MemberEntry {
                sessions: Vec::new(),
                bucket: Mutex::new(TokenBucket::new(self.member_rate, self.member_rate.saturating_mul(2), now)),
            })
            .sessions
            .push(handle);
        if count == 0 {
            self.tell_cluster(member, true);
            if !map.remote.contains_key(&member) {
                fan_out_presence(&map, &directory, member, true);
            }
        }
        self.metrics.sessions().inc();
        drop(map);
        self.record(member, SessionEventKind::Opened);
        Ok((id, sent))
    }

    /// Removes a session; the last one takes the member offline for those who see it.
    pub fn unregister(&self, member: MemberId, session: SessionId) {
        let directory = self.latest();
        let mut map = self.write();
        let Some(entry) = map.local.get_mut(&member) else { return };
        let before = entry.sessions.len();
        entry.sessions.retain(|s| s.id != session);
        if entry.sessions.len() == before {
            return;
        }
        self.metrics.sessions().dec();
        if entry.sessions.is_empty() {
            map.local.remove(&member);
            self.tell_cluster(member, false);
            if let Some(directory) = directory.filter(|_| !map.remote.contains_key(&member)) {
                fan_out_presence(&map, &directory, member, false);
            }
        }
        drop(map);
        self.record(member, SessionEventKind::Closed);
    }

    /// Queues the member's current directory slice, with current presence, to `handle` if it differs from the
    /// one last sent (`previous`); returns what is now sent. Under the lock, so that no presence change is
    /// queued between the state it reflects and the frames themselves.
    pub fn send_slice(
        &self,
        member: MemberId,
        directory: &Directory,
        handle: &SessionHandle,
        previous: SliceHash,
    ) -> SliceHash {
        let map = self.read();
        let slice = directory.slice(&member, |m| map.is_online(m));
        let hash = slice_hash(&slice);
        if hash != previous {
            for frame in directory_frames(slice, self.max_frame_bytes) {
                handle.send_or_kill(&frame);
            }
        }
        hash
    }

    /// Charges `cost` frames to the member's rate across all its sessions (all or nothing).
    pub fn member_allow(&self, member: MemberId, cost: u32, now: Instant) -> Result<(), Duration> {
        let map = self.read();
        match map.local.get(&member) {
            Some(entry) => entry.bucket.lock().unwrap_or_else(|p| p.into_inner()).take_n(cost, now),
            None => Ok(()),
        }
    }

    /// Orders a commit: when it is the first for its group and epoch, queues it to every session of every
    /// recipient (keeps it for those with none, when the bubble has a mailbox) and says where it went;
    /// otherwise returns the group's current epoch and sends nothing.
    /// Visibility was checked by the session core. The ledger stays locked while the commit is queued, so that
    /// every recipient session is queued a group's commits in the order the ledger accepted them. Replicas
    /// order commits through the cluster link's shared ledger instead, then call [`Hub::deliver_commit`].
    pub fn commit(
        &self,
        from: MemberId,
        from_session: SessionId,
        group: GroupId,
        epoch: u64,
        to: &Recipients,
        body: &Opaque,
    ) -> Result<Routed, u64> {
        let mut ledger = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        if let Claim::Conflict { current } = ledger.claim(group, epoch) {
            drop(ledger);
            self.metrics.commit(false);
            return Err(current);
        }
        let routed = self.deliver_commit(from, from_session, group, to, body);
        drop(ledger);
        Ok(routed)
    }

    /// Queues an accepted commit to every session of every recipient here, keeps it for recipients with no
    /// session anywhere (when the bubble has a mailbox), and names the replicas holding the others.
    pub fn deliver_commit(
        &self,
        from: MemberId,
        from_session: SessionId,
        group: GroupId,
        to: &Recipients,
        body: &Opaque,
    ) -> Routed {
        let text = Utf8Bytes::from(encode_deliver(&from, from_session, body));
        let map = self.read();
        let mut routed = Routed::default();
        for member in to.as_slice() {
            if let Some(replicas) = map.remote.get(member) {
                for replica in replicas {
                    routed.forward(*replica, *member);
                }
            }
            match map.local.get(member) {
                Some(entry) => {
                    for session in &entry.sessions {
                        // As for `send`, a session over its budget misses the envelope; the others still get it.
                        if session.try_send(&text).is_ok() {
                            routed.sessions += 1;
                        }
                    }
                }
                None if map.remote.contains_key(member) => {}
                None if self.shared.is_some() => routed.keep.push(*member),
                None => {
                    // Over quota, the member's queue ends with a gap naming the group: it rejoins on return.
                    if let Some(mailbox) = &self.mailbox
                        && mailbox.keep(*member, from, from_session, body, Some(group)).is_ok()
                    {
                        routed.stored += 1;
                    }
                }
            }
        }
        drop(map);
        self.metrics.commit(true);
        self.metrics.relayed(u64::from(routed.sessions));
        if let Some(mailbox) = self.mailbox.as_ref().filter(|_| routed.stored > 0) {
            self.metrics.mailbox_kept(u64::from(routed.stored));
            self.metrics.mailbox_counts(mailbox.counts());
        }
        routed
    }

    /// Queues an envelope to `to` (all sessions, or `to_session`), never back to the sending session.
    /// Visibility was checked by the session core. Sessions on other replicas are named in
    /// [`Routed::remote`] for the cluster link to forward to.
    pub fn route(
        &self,
        from: MemberId,
        from_session: SessionId,
        to: MemberId,
        to_session: Option<SessionId>,
        body: &Opaque,
    ) -> Result<Routed, ErrorCode> {
        let map = self.read();
        let mut routed = Routed::default();
        if let Some(replicas) = map.remote.get(&to) {
            for replica in replicas {
                if to_session.is_none_or(|s| replica_of(s) == *replica) {
                    routed.forward(*replica, to);
                }
            }
        }
        let Some(entry) = map.local.get(&to) else {
            if !routed.remote.is_empty() {
                return Ok(routed);
            }
            // No session: kept for later when the bubble has a mailbox (a named session cannot wait).
            if self.shared.is_some() && to_session.is_none() && !map.remote.contains_key(&to) {
                return Ok(Routed { keep: vec![to], ..Routed::default() });
            }
            let mailbox = self.mailbox.as_ref().filter(|_| to_session.is_none() && !map.remote.contains_key(&to));
            let Some(mailbox) = mailbox else { return Err(ErrorCode::RecipientOffline) };
            let kept = mailbox.keep(to, from, from_session, body, None);
            drop(map);
            self.metrics.mailbox_counts(mailbox.counts());
            return match kept {
                Ok(_) => {
                    self.metrics.mailbox_kept(1);
                    Ok(Routed { stored: 1, ..Routed::default() })
                }
                Err(Full) => Err(ErrorCode::MailboxFull),
            };
        };
        let text = Utf8Bytes::from(encode_deliver(&from, from_session, body));
        (routed.sessions, routed.congested) =
            deliver_to(entry, &text, to_session, (to == from).then_some(from_session));
        drop(map);
        self.metrics.relayed(u64::from(routed.sessions));
        match (routed.sessions, routed.congested, routed.remote.is_empty()) {
            (0, true, true) => Err(ErrorCode::RecipientCongested),
            (0, false, true) => Err(ErrorCode::RecipientOffline),
            _ => Ok(routed),
        }
    }

    /// Queues an envelope another replica forwarded (an encoded `deliver` frame) to `to`'s sessions here
    /// (all, or `to_session`): (sessions queued to, whether one was over its budget).
    pub fn deliver_forwarded(&self, to: MemberId, to_session: Option<SessionId>, text: &Utf8Bytes) -> (u32, bool) {
        let map = self.read();
        let Some(entry) = map.local.get(&to) else { return (0, false) };
        let (sessions, congested) = deliver_to(entry, text, to_session, None);
        drop(map);
        self.metrics.relayed(u64::from(sessions));
        (sessions, congested)
    }

    fn tell_cluster(&self, member: MemberId, online: bool) {
        if let Some(cluster) = &self.cluster {
            let _ = cluster.send(LocalPresence { member, online });
        }
    }

    /// What the cluster link heard: `member` has (or no longer has) sessions on `replica`. Members here who
    /// see it are told when that changes whether it is online at all.
    pub fn remote_presence(&self, replica: u32, member: MemberId, online: bool) {
        let directory = self.latest();
        let mut map = self.write();
        let before = map.is_online(&member);
        if online {
            let replicas = map.remote.entry(member).or_default();
            if !replicas.contains(&replica) {
                replicas.push(replica);
            }
        } else if let Some(replicas) = map.remote.get_mut(&member) {
            replicas.retain(|r| *r != replica);
            if replicas.is_empty() {
                map.remote.remove(&member);
            }
        }
        let after = map.is_online(&member);
        if before != after
            && let Some(directory) = directory
        {
            fan_out_presence(&map, &directory, member, after);
        }
    }
}

/// Queues `text` to `entry`'s sessions (only `to_session` when named; never `except`): (queued, congested).
fn deliver_to(
    entry: &MemberEntry,
    text: &Utf8Bytes,
    to_session: Option<SessionId>,
    except: Option<SessionId>,
) -> (u32, bool) {
    let (mut delivered, mut congested) = (0u32, false);
    for session in &entry.sessions {
        if except == Some(session.id) || to_session.is_some_and(|s| s != session.id) {
            continue;
        }
        match session.try_send(text) {
            Ok(()) => delivered += 1,
            Err(Congested) => congested = true,
        }
    }
    (delivered, congested)
}

/// Presence goes only to members here who see `member` (the relation is symmetric). Iterates whichever is
/// smaller: the members `member` may see, or the members online here.
fn fan_out_presence(map: &Online, directory: &Directory, member: MemberId, online: bool) {
    let text = Utf8Bytes::from(encode_frame(&ServerFrame::Presence { member, online }));
    let notify = |entry: &MemberEntry| entry.sessions.iter().for_each(|s| s.send_or_kill(&text));
    if directory.visible_upper_bound(&member) < map.local.len() {
        for other in directory.visible(&member) {
            if let Some(entry) = map.local.get(&other) {
                notify(entry);
            }
        }
    } else {
        for (other, entry) in &map.local {
            if *other != member && directory.sees(&member, other) {
                notify(entry);
            }
        }
    }
}

/// Identifies a directory slice's content, presence excluded (presence travels as `presence` frames).
pub(crate) type SliceHash = u64;

fn slice_hash(entries: &[DirectoryEntry]) -> SliceHash {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for entry in entries {
        (entry.member, entry.public_key.as_bytes(), &entry.display_name, &entry.categories).hash(&mut hasher);
    }
    hasher.finish()
}

/// Splits a slice into `directory` frames that each fit `max_frame_bytes`.
pub(crate) fn directory_frames(entries: Vec<DirectoryEntry>, max_frame_bytes: usize) -> Vec<Utf8Bytes> {
    // Room for the frame's own fields around the entries.
    const OVERHEAD: usize = 96;
    let budget = max_frame_bytes.saturating_sub(OVERHEAD);
    let mut parts: Vec<Vec<DirectoryEntry>> = vec![Vec::new()];
    let mut size = 0;
    for entry in entries {
        let len = encode_frame(&entry).len() + 1;
        if size + len > budget && !parts.last().is_none_or(Vec::is_empty) {
            parts.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = parts.last_mut() {
            last.push(entry);
        }
    }
    let count = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, entries)| {
            Utf8Bytes::from(encode_frame(&ServerFrame::Directory { part: i as u32, parts: count, entries }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerbubble_proto::IdentityKey;

    #[test]
    fn directory_frames_fit_the_frame_limit() {
        let entries: Vec<DirectoryEntry> = (0..500u32)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&i.to_be_bytes());
                let key = IdentityKey::from_seed(&seed).public_key();
                DirectoryEntry {
                    member: key.member_id(),
                    public_key: key,
                    display_name: format!("Member number {i} with a long name"),
                    categories: vec!["a-category".into(), "another-category".into()],
                    online: i % 2 == 0,
                }
            })
            .collect();
        let frames = directory_frames(entries, 8192);
        assert!(frames.len() > 10);
        let mut seen = 0;
        for (i, frame) in frames.iter().enumerate() {
            assert!(frame.len() <= 8192, "part {i} has {} bytes", frame.len());
            match peerbubble_proto::decode_server_frame(frame.as_bytes()) {
                Ok(ServerFrame::Directory { part, parts, entries }) => {
                    assert_eq!((part as usize, parts as usize), (i, frames.len()));
                    seen += entries.len();
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, 500);
        assert_eq!(directory_frames(Vec::new(), 8192).len(), 1, "an empty directory is still sent");
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;
    use peerbubble_proto::IdentityKey;

    #[test]
    fn session_events_are_bounded_and_reported_in_chunks() {
        let (_tx, rx) = watch::channel(None);
        let hub = Hub::new(4, 10, 4096, 16, Metrics::new(), rx, None, None, None);
        let member = IdentityKey::from_seed(&[1; 32]).public_key().member_id();
        for _ in 0..EVENT_BUFFER + 5 {
            hub.record(member, SessionEventKind::Opened);
        }
        let (first, dropped) = hub.take_events();
        assert_eq!((first.len(), dropped), (MAX_EVENTS_PER_REPORT, 5));
        // Undelivered: put back, still within the bound, nothing lost but the overflow.
        hub.restore_events(first, 0);
        let mut total = 0;
        loop {
            let (chunk, _) = hub.take_events();
            if chunk.is_empty() {
                break;
            }
            total += chunk.len();
        }
        assert_eq!(total, EVENT_BUFFER);
    }
}
