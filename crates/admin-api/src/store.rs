//! Storage: one set of portable SQL migrations and queries on sqlx's `Any` driver, SQLite by default (a file in
//! the data dir) and PostgreSQL when `DATABASE_URL` says so. Tests run the same suite on both.

use std::collections::HashMap;

use peerbubble_proto::directory::{BubbleFile, CategoryFile, MemberFile};
use peerbubble_proto::health::HealthReport;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row as _};

mod console;
pub use console::{AuditFilter, InviteRow};

/// Storage errors. Messages never contain keys or tokens.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the operation.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The row already exists.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// A referenced row does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The invite cannot be redeemed.
    #[error("invite {0}")]
    Invite(InviteRefusal),
    /// The row is still needed by others (the message says by whom).
    #[error("in use: {0}")]
    InUse(String),
}

/// Why an invite was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteRefusal {
    /// No invite has this token.
    Unknown,
    /// The invite expired.
    Expired,
    /// The invite was already used.
    Used,
    /// The key is already a member of the bubble.
    KeyTaken,
    /// The key is a member of another bubble: a member has one identity per bubble (DESIGN.md invariant 5).
    KeyInOtherBubble,
    /// An administrator withdrew the invite.
    Revoked,
}

impl std::fmt::Display for InviteRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InviteRefusal::Unknown => "is unknown",
            InviteRefusal::Expired => "has expired",
            InviteRefusal::Used => "was already used",
            InviteRefusal::KeyTaken => "cannot enroll a key that is already a member",
            InviteRefusal::KeyInOtherBubble => {
                "cannot enroll a key that belongs to another bubble: each bubble gets its own key"
            }
            InviteRefusal::Revoked => "was withdrawn by an administrator",
        })
    }
}

fn classify(err: sqlx::Error, what: &'static str) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        if db.is_unique_violation() {
            return StoreError::Conflict(what);
        }
        if db.is_foreign_key_violation() {
            return StoreError::NotFound("referenced bubble or category");
        }
    }
    StoreError::Database(err)
}

/// A health sample from a row that has its columns by name.
fn health_sample(r: &sqlx::any::AnyRow) -> Result<HealthSample, sqlx::Error> {
    Ok(HealthSample {
        at: r.try_get("at")?,
        online_members: r.try_get("online_members")?,
        sessions: r.try_get("sessions")?,
        connections: r.try_get("connections")?,
        envelopes_relayed: r.try_get("envelopes_relayed")?,
        envelopes_refused: r.try_get("envelopes_refused")?,
        auth_failures: r.try_get("auth_failures")?,
        turn_allocations: r.try_get("turn_allocations")?,
        turn_bytes_relayed: r.try_get("turn_bytes_relayed")?,
    })
}

/// Marks the bubble's directory changed, inside the caller's transaction (migration 0006): every write to what
/// [`Store::directory`] returns calls this before committing, so the revision never lags the content.
async fn touch_directory(tx: &mut sqlx::AnyConnection, bubble: &str) -> Result<(), StoreError> {
    let mut revision = [0u8; 12];
    getrandom::fill(&mut revision).map_err(|e| StoreError::Database(sqlx::Error::Protocol(e.to_string())))?;
    sqlx::query("UPDATE bubbles SET directory_revision = $1 WHERE id = $2")
        .bind(crate::token::hex(&revision))
        .bind(bubble)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Stores what category `id` sees (inside the caller's transaction).
async fn insert_sees(tx: &mut sqlx::AnyConnection, bubble: &str, id: &str, sees: &[String]) -> Result<(), StoreError> {
    for seen in sees {
        sqlx::query("INSERT INTO category_sees (bubble_id, category_id, sees_id) VALUES ($1, $2, $3)")
            .bind(bubble)
            .bind(id)
            .bind(seen)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, "category relation"))?;
    }
    Ok(())
}

/// A bubble as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct BubbleRow {
    /// Id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A category as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct CategoryRow {
    /// Id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Categories its members see.
    pub sees: Vec<String>,
}

/// A member as listed (public key only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct MemberRow {
    /// Member id.
    pub member: String,
    /// Public key.
    pub public_key: String,
    /// Display name.
    pub display_name: String,
    /// `active` or `revoked`.
    pub status: String,
    /// Categories.
    pub categories: Vec<String>,
    /// Unix seconds.
    pub enrolled_at: i64,
    /// The last session event the bubble-servers reported (Unix seconds), if any.
    pub last_seen: Option<i64>,
    /// Whether a session is open now, as far as the bubble's last report tells.
    pub online: bool,
}

/// A new invite.
#[derive(Debug, Clone)]
pub struct NewInvite<'a> {
    /// SHA-256 hex of the token.
    pub token_hash: &'a str,
    /// Bubble.
    pub bubble: &'a str,
    /// Name of the person invited.
    pub display_name: &'a str,
    /// Categories granted.
    pub categories: &'a [String],
    /// Unix seconds.
    pub now: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

/// An audit event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Unix seconds.
    pub at: i64,
    /// Bubble concerned, if any.
    pub bubble: Option<String>,
    /// Who: `admin:<name>`, `member:<id>`, `system`.
    pub actor: String,
    /// What, e.g. `invite.created`.
    pub action: String,
    /// Details (ids and names, never keys, tokens or content).
    pub detail: String,
}

/// One health sample of a bubble.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct HealthSample {
    /// Unix seconds.
    pub at: i64,
    /// Members online.
    pub online_members: i64,
    /// Sessions.
    pub sessions: i64,
    /// Connections.
    pub connections: i64,
    /// Envelopes relayed since the server started.
    pub envelopes_relayed: i64,
    /// Envelopes refused since the server started.
    pub envelopes_refused: i64,
    /// Refused authentications since the server started.
    pub auth_failures: i64,
    /// TURN allocations.
    pub turn_allocations: i64,
    /// Bytes relayed by TURN since the server started.
    pub turn_bytes_relayed: i64,
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The admin API's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    audit_writes: std::sync::Arc<AuditWrites>,
}

impl Store {
    /// Connects (creating a SQLite file if needed) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        } else {
            url.to_owned()
        };
        // SQLite serialises writers: one connection avoids "database is locked" under concurrent requests.
        let max = if url.starts_with("sqlite:") { 1 } else { 8 };
        // A database that is down answers 503 within seconds (the console says so and offers to retry) instead of
        // holding every request for sqlx's default 30 s.
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&url)
            .await?;
        if url.starts_with("sqlite:") {
            sqlx::query("PRAGMA foreign_keys = ON").execute(&pool).await?;
        }
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool, audit_writes: Default::default() })
    }

    /// The pool (tests inspect the schema through it).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Is the database answering?
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Creates a bubble.
    pub async fn create_bubble(
        &self,
        id: &str,
        display_name: &str,
        credential_hash: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO bubbles (id, display_name, credential_hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(display_name)
            .bind(credential_hash)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| classify(e, "bubble"))?;
        Ok(())
    }

    /// Deletes a bubble and everything it holds (directory, invites, policy, health samples); its audit events
    /// stay, as the trail of what happened. False if there was no such bubble. Children are deleted explicitly,
    /// not left to `ON DELETE CASCADE`, which SQLite applies only on connections that enabled foreign keys.
    pub async fn delete_bubble(&self, bubble: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        for table in [
            "member_categories",
            "category_sees",
            "members",
            "categories",
            "invites",
            "bubble_policies",
            "health_samples",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE bubble_id = $1")))
                .bind(bubble)
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query("DELETE FROM bubbles WHERE id = $1").bind(bubble).execute(&mut *tx).await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// All bubbles, by id.
    pub async fn list_bubbles(&self) -> Result<Vec<BubbleRow>, StoreError> {
        let rows =
            sqlx::query("SELECT id, display_name, created_at FROM bubbles ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok(BubbleRow { id: r.try_get(0)?, display_name: r.try_get(1)?, created_at: r.try_get(2)? }))
            .collect()
    }

    /// The bubble's credential hash, if the bubble exists.
    pub async fn bubble_credential_hash(&self, bubble: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT credential_hash FROM bubbles WHERE id = $1")
            .bind(bubble)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Creates a category and what it sees, atomically.
    pub async fn create_category(
        &self,
        bubble: &str,
        id: &str,
        display_name: &str,
        sees: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO categories (bubble_id, id, display_name) VALUES ($1, $2, $3)")
            .bind(bubble)
            .bind(id)
            .bind(display_name)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, "category"))?;
        insert_sees(&mut tx, bubble, id, sees).await?;
        touch_directory(&mut tx, bubble).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The bubble's categories, by id.
    pub async fn list_categories(&self, bubble: &str) -> Result<Vec<CategoryRow>, StoreError> {
        let rows = sqlx::query("SELECT id, display_name FROM categories WHERE bubble_id = $1 ORDER BY id")
            .bind(bubble)
            .fetch_all(&self.pool)
            .await?;
        let sees = sqlx::query("SELECT category_id, sees_id FROM category_sees WHERE bubble_id = $1 ORDER BY sees_id")
            .bind(bubble)
            .fetch_all(&self.pool)
            .await?;
        let mut seen_by: HashMap<String, Vec<String>> = HashMap::new();
        for s in &sees {
            seen_by.entry(s.try_get(0)?).or_default().push(s.try_get(1)?);
        }
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                Ok(CategoryRow { display_name: r.try_get(1)?, sees: seen_by.remove(&id).unwrap_or_default(), id })
            })
            .collect()
    }

    /// Stores an invite (its token's hash only).
    pub async fn create_invite(&self, invite: &NewInvite<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO invites (token_hash, bubble_id, display_name, categories, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(invite.token_hash)
        .bind(invite.bubble)
        .bind(invite.display_name)
        .bind(invite.categories.join(","))
        .bind(invite.now)
        .bind(invite.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| classify(e, "invite"))?;
        Ok(())
    }

    /// The bubble an invite is for, to check a signature before redeeming it.
    pub async fn invite_bubble(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT bubble_id FROM invites WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Redeems an invite for a (signature-checked) public key, atomically and at most once even when two
    /// requests race. Returns the bubble and the member's display name.
    pub async fn redeem_invite(
        &self,
        token_hash: &str,
        member_id: &str,
        public_key: &str,
        now: i64,
    ) -> Result<(String, String), StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT bubble_id, display_name, categories, expires_at, used_at, revoked_at FROM invites \
             WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::Invite(InviteRefusal::Unknown))?;
        let (bubble, name, categories, expires_at, used_at): (String, String, String, i64, Option<i64>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
        if used_at.is_some() {
            return Err(StoreError::Invite(InviteRefusal::Used));
        }
        if row.try_get::<Option<i64>, _>(5)?.is_some() {
            return Err(StoreError::Invite(InviteRefusal::Revoked));
        }
        if now >= expires_at {
            return Err(StoreError::Invite(InviteRefusal::Expired));
        }
        let claimed = sqlx::query(
            "UPDATE invites SET used_at = $1, used_by = $2 WHERE token_hash = $3 AND used_at IS NULL \
                 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(member_id)
        .bind(token_hash)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() != 1 {
            return Err(StoreError::Invite(InviteRefusal::Used));
        }
        // One identity per bubble: a key known to another bubble would let the two correlate the person.
        let elsewhere = sqlx::query("SELECT 1 FROM members WHERE public_key = $1 AND bubble_id <> $2")
            .bind(public_key)
            .bind(&bubble)
            .fetch_optional(&mut *tx)
            .await?;
        if elsewhere.is_some() {
            return Err(StoreError::Invite(InviteRefusal::KeyInOtherBubble));
        }
        sqlx::query(
            "INSERT INTO members (bubble_id, member_id, public_key, display_name, status, enrolled_at) \
             VALUES ($1, $2, $3, $4, 'active', $5)",
        )
        .bind(&bubble)
        .bind(member_id)
        .bind(public_key)
        .bind(&name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| match classify(e, "member") {
            StoreError::Conflict(_) => StoreError::Invite(InviteRefusal::KeyTaken),
            other => other,
        })?;
        for category in categories.split(',').filter(|c| !c.is_empty()) {
            sqlx::query("INSERT INTO member_categories (bubble_id, member_id, category_id) VALUES ($1, $2, $3)")
                .bind(&bubble)
                .bind(member_id)
                .bind(category)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(e, "member category"))?;
        }
        touch_directory(&mut tx, &bubble).await?;
        tx.commit().await?;
        Ok((bubble, name))
    }

    /// The bubble's members (public keys only), by display name.
    pub async fn list_members(&self, bubble: &str) -> Result<Vec<MemberRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT member_id, public_key, display_name, status, enrolled_at FROM members WHERE bubble_id = $1 \
             ORDER BY display_name, member_id",
        )
        .bind(bubble)
        .fetch_all(&self.pool)
        .await?;
        let cats = sqlx::query(
            "SELECT member_id, category_id FROM member_categories WHERE bubble_id = $1 ORDER BY category_id",
        )
        .bind(bubble)
        .fetch_all(&self.pool)
        .await?;
        let mut categories_of: HashMap<String, Vec<String>> = HashMap::new();
        for c in &cats {
            categories_of.entry(c.try_get(0)?).or_default().push(c.try_get(1)?);
        }
        rows.iter()
            .map(|r| {
                let member: String = r.try_get(0)?;
                Ok(MemberRow {
                    public_key: r.try_get(1)?,
                    display_name: r.try_get(2)?,
                    status: r.try_get(3)?,
                    enrolled_at: r.try_get(4)?,
                    categories: categories_of.remove(&member).unwrap_or_default(),
                    member,
                    last_seen: None,
                    online: false,
                })
            })
            .collect()
    }

    /// Revokes a member; false if there was no active member with that id.
    pub async fn revoke_member(&self, bubble: &str, member: &str, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE members SET status = 'revoked', revoked_at = $1 WHERE bubble_id = $2 AND member_id = $3 AND status = 'active'",
        )
        .bind(now)
        .bind(bubble)
        .bind(member)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        touch_directory(&mut tx, bubble).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The bubble's directory revision (migration 0006), one indexed row: what a poll reads when nothing changed.
    pub async fn directory_revision(&self, bubble: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT directory_revision FROM bubbles WHERE id = $1")
            .bind(bubble)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// The directory document the bubble's servers follow (categories and active members), with its revision.
    /// The revision is read first: a change landing during the read leaves an older revision beside newer
    /// content, which the next poll reads again, never newer revision beside older content, which it would miss.
    pub async fn directory(&self, bubble: &str) -> Result<Option<(BubbleFile, String)>, StoreError> {
        let Some(row) = sqlx::query("SELECT display_name, directory_revision FROM bubbles WHERE id = $1")
            .bind(bubble)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let revision: String = row.try_get(1)?;
        let categories = self
            .list_categories(bubble)
            .await?
            .into_iter()
            .map(|c| CategoryFile { id: c.id, display_name: Some(c.display_name), sees: c.sees })
            .collect();
        let members = self
            .list_members(bubble)
            .await?
            .into_iter()
            .filter(|m| m.status == "active")
            .map(|m| MemberFile { public_key: m.public_key, display_name: m.display_name, categories: m.categories })
            .collect();
        let policy = self.policy(bubble).await?;
        let file =
            BubbleFile { bubble: bubble.to_owned(), display_name: Some(row.try_get(0)?), categories, members, policy };
        Ok(Some((file, revision)))
    }

    /// Records an audit event.
    pub async fn audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| StoreError::Database(sqlx::Error::Protocol(e.to_string())))?;
        let id = crate::token::hex(&id);
        sqlx::query(
            "INSERT INTO audit_events (id, at, bubble_id, actor, action, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(event.at)
        .bind(event.bubble.as_deref())
        .bind(&event.actor)
        .bind(&event.action)
        .bind(&event.detail)
        .execute(&self.pool)
        .await?;
        self.audit_writes.inc();
        Ok(())
    }

    /// Audit events this process wrote (for `/metrics`).
    pub fn audit_writes(&self) -> u64 {
        self.audit_writes.get()
    }

    /// The database pool: (open connections, idle ones, maximum), for `/metrics`.
    pub fn pool_stats(&self) -> (u32, u32, u32) {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        (self.pool.size(), idle, self.pool.options().get_max_connections())
    }

    /// Stores a health sample and drops the bubble's samples older than `keep_since`.
    pub async fn add_health(
        &self,
        bubble: &str,
        at: i64,
        report: &HealthReport,
        keep_since: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO health_samples (bubble_id, at, online_members, sessions, connections, envelopes_relayed, \
             envelopes_refused, auth_failures, turn_allocations, turn_bytes_relayed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(bubble)
        .bind(at)
        .bind(i64::from(report.online_members))
        .bind(i64::from(report.sessions))
        .bind(i64::from(report.connections))
        .bind(clamp(report.envelopes_relayed))
        .bind(clamp(report.envelopes_refused))
        .bind(clamp(report.auth_failures))
        .bind(i64::from(report.turn_allocations))
        .bind(clamp(report.turn_bytes_relayed))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, "health sample"))?;
        sqlx::query("DELETE FROM health_samples WHERE bubble_id = $1 AND at < $2")
            .bind(bubble)
            .bind(keep_since)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The bubble's health samples since `since`, oldest first.
    pub async fn list_health(&self, bubble: &str, since: i64) -> Result<Vec<HealthSample>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, online_members, sessions, connections, envelopes_relayed, envelopes_refused, auth_failures, \
             turn_allocations, turn_bytes_relayed FROM health_samples WHERE bubble_id = $1 AND at >= $2 ORDER BY at",
        )
        .bind(bubble)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(health_sample).collect::<Result<_, _>>()?)
    }

    /// Stores a scoped API token (its hash).
    pub async fn create_api_token(
        &self,
        token_hash: &str,
        name: &str,
        role: &str,
        bubbles: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO api_tokens (token_hash, name, role, bubbles, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_hash)
            .bind(name)
            .bind(role)
            .bind(bubbles)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| classify(e, "token"))?;
        Ok(())
    }

    /// (name, role, bubbles) of the API token with this hash.
    pub async fn api_token(&self, token_hash: &str) -> Result<Option<(String, String, String)>, StoreError> {
        let row = sqlx::query("SELECT name, role, bubbles FROM api_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).transpose()?)
    }

    /// Deletes audit events older than `before` (retention); returns how many.
    pub async fn prune_audit(&self, before: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM audit_events WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Records a login in progress (see migration 0004: no secret is stored).
    pub async fn begin_login(
        &self,
        state_hash: &str,
        pkce_challenge: &str,
        nonce: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM oidc_logins WHERE expires_at < $1").bind(now).execute(&self.pool).await?;
        sqlx::query("INSERT INTO oidc_logins (state_hash, pkce_challenge, nonce, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(state_hash)
            .bind(pkce_challenge)
            .bind(nonce)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(|e| classify(e, "login"))?;
        Ok(())
    }

    /// Takes a login in progress: (pkce_challenge, nonce) if it exists and has not expired. A state is usable
    /// once: the row is deleted by the same statement that reads it, so two callbacks cannot both succeed.
    pub async fn take_login(&self, state_hash: &str, now: i64) -> Result<Option<(String, String)>, StoreError> {
        let row =
            sqlx::query("DELETE FROM oidc_logins WHERE state_hash = $1 RETURNING pkce_challenge, nonce, expires_at")
                .bind(state_hash)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let expires_at: i64 = row.try_get(2)?;
        if expires_at < now {
            return Ok(None);
        }
        Ok(Some((row.try_get(0)?, row.try_get(1)?)))
    }

    /// Opens an administrator session.
    pub async fn create_session(&self, session: &AdminSession, session_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE expires_at < $1")
            .bind(session.created_at)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO admin_sessions (session_hash, name, role, bubbles, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(session_hash)
        .bind(&session.name)
        .bind(&session.role)
        .bind(&session.bubbles)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| classify(e, "session"))?;
        Ok(())
    }

    /// The unexpired session with this hash.
    pub async fn session(&self, session_hash: &str, now: i64) -> Result<Option<AdminSession>, StoreError> {
        let row = sqlx::query(
            "SELECT name, role, bubbles, created_at, expires_at FROM admin_sessions \
             WHERE session_hash = $1 AND expires_at >= $2",
        )
        .bind(session_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| {
                Ok::<_, sqlx::Error>(AdminSession {
                    name: r.try_get(0)?,
                    role: r.try_get(1)?,
                    bubbles: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    expires_at: r.try_get(4)?,
                })
            })
            .transpose()?)
    }

    /// Ends a session (sign-out).
    pub async fn delete_session(&self, session_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE session_hash = $1")
            .bind(session_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// A signed-in administrator's session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSession {
    /// Who (the ID token's name or subject), for the audit trail.
    pub name: String,
    /// `admin` or `auditor`.
    pub role: String,
    /// `*` or comma-separated bubble ids.
    pub bubbles: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Counts audit writes (kept by the store, read by the collector).
#[derive(Debug, Default)]
pub(crate) struct AuditWrites(std::sync::atomic::AtomicU64);

impl AuditWrites {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
