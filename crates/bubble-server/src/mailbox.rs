//! The offline mailbox: what a member with no session would have been relayed (envelopes and the commits of
//! its groups) is kept in a queue of its own with a sequence number, delivered in order before any live traffic
//! when the member comes back, and deleted once the member acknowledges it with `received`.
//!
//! Server-blind: an entry is exactly the `deliver` frame the member would have got (sender, sender's session,
//! the end-to-end-encrypted body, untouched) and, for a commit, the group id the commit ledger already sees.
//! Nothing is decrypted, parsed or indexed by content.
//!
//! The queues live in memory, so that keeping and delivering run under the hub's locks exactly like live routing
//! (a member who connects while an envelope is routed gets it once, in order), and in SQLite, so that they
//! survive a restart: one writer task applies the changes in order, a batch per transaction, and only then sends
//! the sender its `ack` ("stored for later"). A queue past its quota, or entries past their time to live, turn
//! into one `gap` entry that says how many were lost and which groups lost a commit (the member rejoins them).
//! A member removed from the bubble has its queue purged at once.
//!
//! The mailbox also keeps the KeyPackages members publish (public data, signed by their identity key): a few
//! one-time ones, each handed out once, and a last-resort one, handed out when none is left, so that a member
//! can be added to a group while it is away (the Welcome then waits here with the rest). They count towards the
//! bubble's quota and go with a removed member's queue.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use peerbubble_proto::limits::KEY_PACKAGES_KEPT;
use peerbubble_proto::{GroupId, MemberId, Opaque, ServerFrame, SessionId, encode_deliver_seq, encode_frame};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::mpsc;

use crate::hub::SessionHandle;

/// The longest a bubble may keep an envelope for an absent member.
pub const MAX_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

/// Where and how much the mailbox keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxConfig {
    /// The SQLite file (created when missing); unused when `jetstream`.
    pub path: PathBuf,
    /// Kept in the bubble's JetStream stream instead, shared by its replicas (needs the cluster link).
    pub jetstream: bool,
    /// How long an envelope waits for its recipient (default 72 h, at most 14 days).
    pub ttl: Duration,
    /// Bytes kept for one member (default 16 MiB).
    pub member_bytes: usize,
    /// Envelopes kept for one member (default 20 000).
    pub member_entries: usize,
    /// Bytes kept for the whole bubble (default 128 MiB): the mailbox lives in memory too.
    pub total_bytes: usize,
    /// How often expired envelopes are looked for (default 60 s).
    pub sweep_interval: Duration,
}

impl MailboxConfig {
    /// The defaults, at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            jetstream: false,
            ttl: Duration::from_secs(72 * 3600),
            member_bytes: 16 << 20,
            member_entries: 20_000,
            total_bytes: 128 << 20,
            sweep_interval: Duration::from_secs(60),
        }
    }

    /// The defaults, in the bubble's JetStream stream.
    pub fn on_jetstream() -> Self {
        Self { jetstream: true, ..Self::at(PathBuf::new()) }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.ttl.is_zero() || self.ttl > MAX_TTL {
            return Err("mailbox_ttl_secs must be between 1 and 1209600 (14 days)");
        }
        if self.member_entries == 0 || self.member_bytes < 65_536 || self.total_bytes < self.member_bytes {
            return Err("mailbox quotas: at least one entry and 64 KiB per member, and the total at least that");
        }
        if self.sweep_interval.is_zero() {
            return Err("mailbox_sweep_ms must be positive");
        }
        Ok(())
    }
}

/// Errors of the mailbox store.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The SQLite file could not be opened or migrated.
    #[error("cannot open the mailbox {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: sqlx::Error,
    },
    /// A stored row does not parse (the file was edited or damaged).
    #[error("the mailbox {path} holds a damaged entry (seq {seq}): {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The entry.
        seq: i64,
        /// What is wrong.
        reason: String,
    },
}

/// Why an envelope was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// One kept thing, in a member's queue.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    /// Unix seconds when kept.
    at: i64,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A `deliver` frame carrying `seq`, ready to write.
    Envelope { from: MemberId, frame: Utf8Bytes, group: Option<GroupId> },
    /// Envelopes lost before the member came back.
    Gap { lost: u64, groups: Vec<GroupId> },
}

impl Entry {
    fn bytes(&self) -> usize {
        match &self.kind {
            Kind::Envelope { frame, .. } => frame.len(),
            Kind::Gap { .. } => 0,
        }
    }

    fn frame(&self) -> Utf8Bytes {
        match &self.kind {
            Kind::Envelope { frame, .. } => frame.clone(),
            Kind::Gap { lost, groups } => {
                Utf8Bytes::from(encode_frame(&ServerFrame::Gap { seq: self.seq, lost: *lost, groups: groups.clone() }))
            }
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<Entry>,
    bytes: usize,
}

/// One member's published KeyPackages, each with its row id in the store.
#[derive(Debug, Default)]
struct Stock {
    one_time: VecDeque<(u64, Opaque)>,
    last_resort: Option<(u64, Opaque)>,
}

impl Stock {
    fn bytes(&self) -> usize {
        self.one_time.iter().chain(&self.last_resort).map(|(_, kp)| kp.wire_len()).sum()
    }
}

#[derive(Debug, Default)]
struct Boxes {
    queues: HashMap<MemberId, Queue>,
    bytes: usize,
    next_seq: u64,
    stocks: HashMap<MemberId, Stock>,
    /// Bytes of kept KeyPackages (within the bubble's quota, with `bytes`).
    key_package_bytes: usize,
    next_key_package: u64,
}

/// A change for the writer task, applied in the order made.
#[derive(Debug)]
enum Write {
    Put(MemberId, Entry),
    Delete(Vec<u64>),
    DeleteUpTo(MemberId, u64),
    Purge(MemberId),
    PutKeyPackage {
        id: u64,
        member: MemberId,
        last_resort: bool,
        key_package: Opaque,
    },
    DeleteKeyPackage(u64),
    /// Send `frame` to `to` once everything before it is on disk.
    Then(SessionHandle, Utf8Bytes),
    /// Answer once everything before it is on disk.
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// What the mailbox holds, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailboxCounts {
    /// Members with something kept.
    pub members: usize,
    /// Entries kept (envelopes and gap markers).
    pub entries: usize,
    /// Bytes of kept envelopes.
    pub bytes: usize,
    /// KeyPackages kept (one-time and last-resort).
    pub key_packages: usize,
}

/// The bubble's offline mailbox.
#[derive(Debug)]
pub(crate) struct Mailbox {
    config: MailboxConfig,
    boxes: Mutex<Boxes>,
    writes: mpsc::UnboundedSender<Write>,
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Mailbox {
    /// Opens (or creates) the store, loads what it keeps and starts the writer task.
    pub async fn open(config: MailboxConfig) -> Result<Self, MailboxError> {
        let open_err = |source| MailboxError::Open { path: config.path.clone(), source };
        let options = SqliteConnectOptions::new()
            .filename(&config.path)
            .create_if_missing(true)
            // A rollback journal truncated after each transaction, and deleted rows overwritten with zeros: what
            // was acknowledged, expired or purged (a revoked member's queue) leaves no bytes behind in the files,
            // as a write-ahead log would until its next checkpoint.
            .journal_mode(SqliteJournalMode::Truncate)
            .pragma("secure_delete", "ON")
            // An `ack` says "stored": it must survive a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.map_err(open_err)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS kept (
                seq INTEGER PRIMARY KEY,
                member TEXT NOT NULL,
                at INTEGER NOT NULL,
                sender TEXT,
                grp TEXT,
                frame TEXT,
                lost INTEGER,
                groups TEXT
            )",
        )
        .execute(&pool)
        .await
        .map_err(open_err)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS key_packages (
                id INTEGER PRIMARY KEY,
                member TEXT NOT NULL,
                last_resort INTEGER NOT NULL,
                key_package TEXT NOT NULL
            )",
        )
        .execute(&pool)
        .await
        .map_err(open_err)?;
        let mut boxes = load(&pool, &config.path).await?;
        load_key_packages(&pool, &config.path, &mut boxes).await?;
        let (writes, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(pool, rx));
        Ok(Self { config, boxes: Mutex::new(boxes), writes })
    }

    /// The configuration.
    pub fn config(&self) -> &MailboxConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Boxes> {
        self.boxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, write: Write) {
        // The writer only stops with the runtime; then nothing is kept any more anyway.
        let _ = self.writes.send(write);
    }

    /// Keeps an envelope for `to` (absent). On a full queue nothing is kept, `to`'s queue ends with a gap
    /// marker counting it (naming `group` when it was a commit), and `Full` is returned.
    pub fn keep(
        &self,
        to: MemberId,
        from: MemberId,
        from_session: SessionId,
        body: &Opaque,
        group: Option<GroupId>,
    ) -> Result<u64, Full> {
        let mut boxes = self.lock();
        let seq = boxes.next_seq;
        let frame = Utf8Bytes::from(encode_deliver_seq(&from, from_session, body, Some(seq)));
        let len = frame.len();
        let queue_full = boxes
            .queues
            .get(&to)
            .is_some_and(|q| q.bytes + len > self.config.member_bytes || q.entries.len() >= self.config.member_entries);
        if queue_full || boxes.bytes + boxes.key_package_bytes + len > self.config.total_bytes {
            self.lose(&mut boxes, to, 1, group);
            return Err(Full);
        }
        boxes.next_seq += 1;
        let entry = Entry { seq, at: now_secs(), kind: Kind::Envelope { from, frame, group } };
        boxes.bytes += len;
        let queue = boxes.queues.entry(to).or_default();
        queue.bytes += len;
        queue.entries.push_back(entry.clone());
        self.write(Write::Put(to, entry));
        Ok(seq)
    }

    /// Counts `lost` envelopes (and `group`'s commit) in the gap marker at the end of `to`'s queue, making one
    /// when the last entry is not a gap.
    fn lose(&self, boxes: &mut Boxes, to: MemberId, lost: u64, group: Option<GroupId>) {
        let queue = boxes.queues.entry(to).or_default();
        let mut marker = match queue.entries.back() {
            Some(last @ Entry { kind: Kind::Gap { .. }, .. }) => {
                let last = last.clone();
                queue.entries.pop_back();
                last
            }
            _ => {
                let seq = boxes.next_seq;
                boxes.next_seq += 1;
                Entry { seq, at: now_secs(), kind: Kind::Gap { lost: 0, groups: Vec::new() } }
            }
        };
        if let Kind::Gap { lost: count, groups } = &mut marker.kind {
            *count += lost;
            add_groups(groups, group);
        }
        queue.entries.push_back(marker.clone());
        self.write(Write::Put(to, marker));
    }

    /// The frames kept for `member`, in order, for a session that just registered; entries from senders
    /// `visible` no longer allows are dropped first (need-to-know holds for what waited too).
    pub fn backlog(&self, member: MemberId, visible: impl Fn(&MemberId) -> bool) -> Vec<Utf8Bytes> {
        let mut boxes = self.lock();
        let Some(queue) = boxes.queues.get_mut(&member) else { return Vec::new() };
        let mut hidden = Vec::new();
        let mut freed = 0;
        queue.entries.retain(|e| match &e.kind {
            Kind::Envelope { from, frame, .. } if !visible(from) => {
                hidden.push(e.seq);
                freed += frame.len();
                false
            }
            _ => true,
        });
        queue.bytes -= freed;
        let frames = queue.entries.iter().map(Entry::frame).collect();
        if queue.entries.is_empty() {
            boxes.queues.remove(&member);
        }
        boxes.bytes -= freed;
        if !hidden.is_empty() {
            self.write(Write::Delete(hidden));
        }
        frames
    }

    /// `member` handled everything up to `upto`: delete it.
    pub fn received(&self, member: MemberId, upto: u64) {
        let mut boxes = self.lock();
        let Some(queue) = boxes.queues.get_mut(&member) else { return };
        let mut freed = 0;
        while queue.entries.front().is_some_and(|e| e.seq <= upto) {
            if let Some(entry) = queue.entries.pop_front() {
                freed += entry.bytes();
            }
        }
        queue.bytes -= freed;
        if queue.entries.is_empty() {
            boxes.queues.remove(&member);
        }
        boxes.bytes -= freed;
        self.write(Write::DeleteUpTo(member, upto));
    }

    /// Drops the queues of members `keep` refuses (removed from the bubble, revoked), at once.
    pub fn purge(&self, keep: impl Fn(&MemberId) -> bool) -> usize {
        let mut boxes = self.lock();
        let mut gone: Vec<MemberId> =
            boxes.queues.keys().chain(boxes.stocks.keys()).filter(|m| !keep(m)).copied().collect();
        gone.sort_unstable();
        gone.dedup();
        for member in &gone {
            if let Some(queue) = boxes.queues.remove(member) {
                boxes.bytes -= queue.bytes;
            }
            if let Some(stock) = boxes.stocks.remove(member) {
                boxes.key_package_bytes -= stock.bytes();
            }
            self.write(Write::Purge(*member));
        }
        gone.len()
    }

    /// Replaces envelopes older than the time to live with a gap marker, for members `absent` says have no
    /// session (an online member already got them). Returns how many were dropped.
    pub fn expire(&self, now: i64, absent: impl Fn(&MemberId) -> bool) -> u64 {
        let oldest = now - self.config.ttl.as_secs() as i64;
        let mut boxes = self.lock();
        let (mut dropped_total, mut freed_total) = (0, 0);
        for (member, queue) in boxes.queues.iter_mut() {
            if !absent(member) {
                continue;
            }
            // The expired prefix (kept in time order), with any gap markers inside it, becomes one marker at the
            // place of its last entry. Markers themselves never expire: the member must learn of the loss.
            let prefix = queue
                .entries
                .iter()
                .take_while(|e| match e.kind {
                    Kind::Envelope { .. } => e.at < oldest,
                    Kind::Gap { .. } => true,
                })
                .count();
            let expired = queue.entries.iter().take(prefix).filter(|e| matches!(e.kind, Kind::Envelope { .. })).count();
            if expired == 0 {
                continue;
            }
            let (mut lost, mut groups, mut last, mut seqs) = (0u64, Vec::new(), 0u64, Vec::with_capacity(prefix));
            for entry in queue.entries.drain(..prefix) {
                queue.bytes -= entry.bytes();
                freed_total += entry.bytes();
                last = entry.seq;
                seqs.push(entry.seq);
                match entry.kind {
                    Kind::Envelope { group, .. } => {
                        lost += 1;
                        add_groups(&mut groups, group);
                    }
                    Kind::Gap { lost: before, groups: more } => {
                        lost += before;
                        add_groups(&mut groups, more);
                    }
                }
            }
            dropped_total += expired as u64;
            let marker = Entry { seq: last, at: now, kind: Kind::Gap { lost, groups } };
            queue.entries.push_front(marker.clone());
            self.write(Write::Delete(seqs));
            self.write(Write::Put(*member, marker));
        }
        boxes.bytes -= freed_total;
        dropped_total
    }

    /// Keeps a KeyPackage `member` published: a one-time one joins its stock (the oldest dropped past
    /// [`KEY_PACKAGES_KEPT`]), a last-resort one replaces the previous. `Full` when the bubble's quota is reached.
    pub fn publish_key_package(&self, member: MemberId, key_package: Opaque, last_resort: bool) -> Result<(), Full> {
        let mut boxes = self.lock();
        let len = key_package.wire_len();
        if boxes.bytes + boxes.key_package_bytes + len > self.config.total_bytes {
            return Err(Full);
        }
        let id = boxes.next_key_package;
        boxes.next_key_package += 1;
        let stock = boxes.stocks.entry(member).or_default();
        let mut dropped = Vec::new();
        if last_resort {
            dropped.extend(stock.last_resort.replace((id, key_package.clone())));
        } else {
            stock.one_time.push_back((id, key_package.clone()));
            while stock.one_time.len() > KEY_PACKAGES_KEPT {
                dropped.extend(stock.one_time.pop_front());
            }
        }
        let freed: usize = dropped.iter().map(|(_, kp)| kp.wire_len()).sum();
        boxes.key_package_bytes = boxes.key_package_bytes + len - freed;
        for (old, _) in dropped {
            self.write(Write::DeleteKeyPackage(old));
        }
        self.write(Write::PutKeyPackage { id, member, last_resort, key_package });
        Ok(())
    }

    /// `member`'s stock, as `key_package_stock` says it.
    pub fn key_package_stock(&self, member: MemberId) -> (u32, bool) {
        let boxes = self.lock();
        boxes.stocks.get(&member).map_or((0, false), |s| (s.one_time.len() as u32, s.last_resort.is_some()))
    }

    /// Hands out one of `member`'s KeyPackages: the oldest one-time one (removed), else its last-resort one
    /// (kept), else none.
    pub fn claim_key_package(&self, member: MemberId) -> Option<Opaque> {
        let mut boxes = self.lock();
        let stock = boxes.stocks.get_mut(&member)?;
        if let Some((id, kp)) = stock.one_time.pop_front() {
            boxes.key_package_bytes -= kp.wire_len();
            self.write(Write::DeleteKeyPackage(id));
            return Some(kp);
        }
        stock.last_resort.as_ref().map(|(_, kp)| kp.clone())
    }

    /// Sends `frame` to `to` once everything kept so far is on disk (the `ack` of a kept envelope).
    pub fn then_send(&self, to: SessionHandle, frame: Utf8Bytes) {
        self.write(Write::Then(to, frame));
    }

    /// Waits until everything kept so far is on disk.
    pub async fn flushed(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write(Write::Flushed(tx));
        let _ = rx.await;
    }

    /// What is kept now.
    pub fn counts(&self) -> MailboxCounts {
        let boxes = self.lock();
        MailboxCounts {
            members: boxes.queues.len(),
            entries: boxes.queues.values().map(|q| q.entries.len()).sum(),
            bytes: boxes.bytes,
            key_packages: boxes.stocks.values().map(|s| s.one_time.len() + usize::from(s.last_resort.is_some())).sum(),
        }
    }
}

async fn load(pool: &SqlitePool, path: &Path) -> Result<Boxes, MailboxError> {
    type Row = (i64, String, i64, Option<String>, Option<String>, Option<String>, Option<i64>, Option<String>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT seq, member, at, sender, grp, frame, lost, groups FROM kept ORDER BY seq")
            .fetch_all(pool)
            .await
            .map_err(|source| MailboxError::Open { path: path.into(), source })?;
    let mut boxes = Boxes { next_seq: 1, ..Boxes::default() };
    for (seq, member, at, sender, grp, frame, lost, groups) in rows {
        let damaged = |reason: &str| MailboxError::Damaged { path: path.into(), seq, reason: reason.to_owned() };
        let member: MemberId = member.parse().map_err(|_| damaged("member id"))?;
        let group = |text: String| GroupId::try_from(text).map_err(|_| damaged("group id"));
        let kind = match (sender, frame, lost) {
            (Some(sender), Some(frame), None) => Kind::Envelope {
                from: sender.parse().map_err(|_| damaged("sender id"))?,
                frame: Utf8Bytes::from(frame),
                group: grp.map(group).transpose()?,
            },
            (None, None, Some(lost)) => Kind::Gap {
                lost: u64::try_from(lost).map_err(|_| damaged("lost count"))?,
                groups: groups
                    .unwrap_or_default()
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(|g| group(g.to_owned()))
                    .collect::<Result<_, _>>()?,
            },
            _ => return Err(damaged("neither an envelope nor a gap")),
        };
        let seq = u64::try_from(seq).map_err(|_| damaged("sequence"))?;
        let entry = Entry { seq, at, kind };
        let len = entry.bytes();
        boxes.bytes += len;
        let queue = boxes.queues.entry(member).or_default();
        queue.bytes += len;
        queue.entries.push_back(entry);
        boxes.next_seq = boxes.next_seq.max(seq + 1);
    }
    Ok(boxes)
}

async fn load_key_packages(pool: &SqlitePool, path: &Path, boxes: &mut Boxes) -> Result<(), MailboxError> {
    let rows: Vec<(i64, String, i64, String)> =
        sqlx::query_as("SELECT id, member, last_resort, key_package FROM key_packages ORDER BY id")
            .fetch_all(pool)
            .await
            .map_err(|source| MailboxError::Open { path: path.into(), source })?;
    boxes.next_key_package = 1;
    for (id, member, last_resort, key_package) in rows {
        let damaged =
            |reason: &str| MailboxError::Damaged { path: path.into(), seq: id, reason: format!("KeyPackage {reason}") };
        let member: MemberId = member.parse().map_err(|_| damaged("member id"))?;
        let key_package = Opaque::try_from(key_package).map_err(|_| damaged("encoding"))?;
        let id = u64::try_from(id).map_err(|_| damaged("row id"))?;
        boxes.key_package_bytes += key_package.wire_len();
        let stock = boxes.stocks.entry(member).or_default();
        if last_resort != 0 {
            if let Some((_, old)) = stock.last_resort.replace((id, key_package)) {
                boxes.key_package_bytes -= old.wire_len();
            }
        } else {
            stock.one_time.push_back((id, key_package));
        }
        boxes.next_key_package = boxes.next_key_package.max(id + 1);
    }
    Ok(())
}

/// Applies the changes in order, as many as are waiting per transaction, then sends what waited for them.
async fn writer(pool: SqlitePool, mut rx: mpsc::UnboundedReceiver<Write>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 512).await > 0 {
        // A busy or briefly full disk gets a few chances before the batch is given up.
        for attempt in 1..=4u32 {
            match apply(&pool, &batch).await {
                Ok(()) => break,
                Err(err) if attempt < 4 => {
                    tracing::warn!(error = %err, attempt, "mailbox: cannot write to the store; trying again");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(err) => {
                    // Memory still holds the entries and delivers them; only a restart would lose them.
                    tracing::error!(error = %err, "mailbox: cannot write to the store; kept in memory only");
                }
            }
        }
        for write in batch.drain(..) {
            match write {
                Write::Then(to, frame) => to.send_or_kill(&frame),
                Write::Flushed(done) => {
                    let _ = done.send(());
                }
                _ => {}
            }
        }
    }
    pool.close().await;
}

async fn apply(pool: &SqlitePool, batch: &[Write]) -> Result<(), sqlx::Error> {
    if batch.iter().all(|w| matches!(w, Write::Then(..) | Write::Flushed(_))) {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for write in batch {
        match write {
            Write::Put(member, entry) => {
                let (sender, frame, grp, lost, groups) = match &entry.kind {
                    Kind::Envelope { from, frame, group } => {
                        (Some(from.to_string()), Some(frame.as_str().to_owned()), group.map(String::from), None, None)
                    }
                    Kind::Gap { lost, groups } => {
                        let list = groups.iter().map(|g| String::from(*g)).collect::<Vec<_>>().join(",");
                        (None, None, None, Some(*lost as i64), Some(list))
                    }
                };
                sqlx::query(
                    "INSERT OR REPLACE INTO kept (seq, member, at, sender, grp, frame, lost, groups)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(entry.seq as i64)
                .bind(member.to_string())
                .bind(entry.at)
                .bind(sender)
                .bind(grp)
                .bind(frame)
                .bind(lost)
                .bind(groups)
                .execute(&mut *tx)
                .await?;
            }
            Write::Delete(seqs) => {
                for seq in seqs {
                    sqlx::query("DELETE FROM kept WHERE seq = ?").bind(*seq as i64).execute(&mut *tx).await?;
                }
            }
            Write::DeleteUpTo(member, upto) => {
                sqlx::query("DELETE FROM kept WHERE member = ? AND seq <= ?")
                    .bind(member.to_string())
                    .bind(i64::try_from(*upto).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await?;
            }
            Write::Purge(member) => {
                sqlx::query("DELETE FROM kept WHERE member = ?").bind(member.to_string()).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM key_packages WHERE member = ?")
                    .bind(member.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            Write::PutKeyPackage { id, member, last_resort, key_package } => {
                sqlx::query(
                    "INSERT OR REPLACE INTO key_packages (id, member, last_resort, key_package) VALUES (?, ?, ?, ?)",
                )
                .bind(*id as i64)
                .bind(member.to_string())
                .bind(i64::from(*last_resort))
                .bind(key_package.as_wire())
                .execute(&mut *tx)
                .await?;
            }
            Write::DeleteKeyPackage(id) => {
                sqlx::query("DELETE FROM key_packages WHERE id = ?").bind(*id as i64).execute(&mut *tx).await?;
            }
            Write::Then(..) | Write::Flushed(_) => {}
        }
    }
    tx.commit().await
}

/// Adds groups to a gap's list, each once.
fn add_groups(list: &mut Vec<GroupId>, more: impl IntoIterator<Item = GroupId>) {
    for group in more {
        if !list.contains(&group) {
            list.push(group);
        }
    }
}
