//! What the web console reads and changes beyond the directory itself: editing and deleting categories, the
//! invites of a bubble (withdrawn before use), members' last sessions, the latest health of every bubble and the
//! audit trail filtered and paged.

use std::collections::HashMap;

use peerbubble_proto::BubblePolicy;
use sqlx::Row as _;

use super::{HealthSample, InviteRefusal, Store, StoreError, classify};

/// An invite as listed: never its token (only its hash is stored), so a listed invite cannot be used from here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct InviteRow {
    /// The SHA-256 (hex) of the token: names the invite, reveals nothing of the token.
    pub id: String,
    /// Name of the person invited.
    pub display_name: String,
    /// Categories granted on enrollment.
    pub categories: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// `pending`, `used`, `expired` or `revoked`.
    pub status: String,
    /// The member it enrolled, once used.
    pub used_by: Option<String>,
}

/// Filters on the audit trail; every one optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// One bubble.
    pub bubble: Option<String>,
    /// Actors whose name contains this text.
    pub actor: Option<String>,
    /// Actions starting with this text (`member.` for every member event).
    pub action: Option<String>,
    /// From this Unix second (included).
    pub since: Option<i64>,
    /// Until this Unix second (excluded).
    pub until: Option<i64>,
}

/// A bound value of a query built at run time.
enum Bind {
    Text(String),
    Int(i64),
}

impl Store {
    /// The bubble's policy (the default when none was set).
    pub async fn policy(&self, bubble: &str) -> Result<BubblePolicy, StoreError> {
        let row = sqlx::query(
            "SELECT masked_by_default, disappear_within_secs, files_allowed, max_file_bytes, calls_allowed, relay_only \
             FROM bubble_policies WHERE bubble_id = $1",
        )
        .bind(bubble)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(BubblePolicy::default()) };
        let flag = |i: usize| r.try_get::<i64, _>(i).map(|v| v != 0);
        let disappear: i64 = r.try_get(1)?;
        let max_file: i64 = r.try_get(3)?;
        Ok(BubblePolicy {
            masked_by_default: flag(0)?,
            disappear_within_secs: u32::try_from(disappear).unwrap_or(u32::MAX),
            files_allowed: flag(2)?,
            max_file_bytes: u64::try_from(max_file).unwrap_or(0),
            calls_allowed: flag(4)?,
            relay_only: flag(5)?,
        })
    }

    /// Replaces the bubble's policy (checked by the caller).
    pub async fn set_policy(&self, bubble: &str, policy: &BubblePolicy) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM bubble_policies WHERE bubble_id = $1").bind(bubble).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO bubble_policies (bubble_id, masked_by_default, disappear_within_secs, files_allowed, \
             max_file_bytes, calls_allowed, relay_only) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(bubble)
        .bind(i64::from(policy.masked_by_default))
        .bind(i64::from(policy.disappear_within_secs))
        .bind(i64::from(policy.files_allowed))
        .bind(i64::try_from(policy.max_file_bytes).unwrap_or(i64::MAX))
        .bind(i64::from(policy.calls_allowed))
        .bind(i64::from(policy.relay_only))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, "policy"))?;
        super::touch_directory(&mut tx, bubble).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Renames a category and replaces what it sees, atomically.
    pub async fn update_category(
        &self,
        bubble: &str,
        id: &str,
        display_name: &str,
        sees: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE categories SET display_name = $1 WHERE bubble_id = $2 AND id = $3")
            .bind(display_name)
            .bind(bubble)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound("category"));
        }
        sqlx::query("DELETE FROM category_sees WHERE bubble_id = $1 AND category_id = $2")
            .bind(bubble)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        super::insert_sees(&mut tx, bubble, id, sees).await?;
        super::touch_directory(&mut tx, bubble).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a category that no active member and no pending invite holds (what others see of it goes with
    /// it). Refused with [`StoreError::InUse`] otherwise: members would silently lose their visibility.
    pub async fn delete_category(&self, bubble: &str, id: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let holders: i64 = sqlx::query(
            "SELECT COUNT(*) FROM member_categories mc JOIN members m \
             ON m.bubble_id = mc.bubble_id AND m.member_id = mc.member_id \
             WHERE mc.bubble_id = $1 AND mc.category_id = $2 AND m.status = 'active'",
        )
        .bind(bubble)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let pending = sqlx::query(
            "SELECT categories FROM invites WHERE bubble_id = $1 AND used_at IS NULL AND revoked_at IS NULL \
             AND expires_at > $2",
        )
        .bind(bubble)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .filter(|list| list.split(',').any(|c| c == id))
        .count();
        if holders > 0 || pending > 0 {
            return Err(StoreError::InUse(format!(
                "{holders} active member(s) and {pending} pending invite(s) hold this category; move or revoke them first"
            )));
        }
        sqlx::query("DELETE FROM category_sees WHERE bubble_id = $1 AND (category_id = $2 OR sees_id = $2)")
            .bind(bubble)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM member_categories WHERE bubble_id = $1 AND category_id = $2")
            .bind(bubble)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM categories WHERE bubble_id = $1 AND id = $2")
            .bind(bubble)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound("category"));
        }
        super::touch_directory(&mut tx, bubble).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The bubble's invites, newest first, with their status at `now`.
    pub async fn list_invites(&self, bubble: &str, now: i64) -> Result<Vec<InviteRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT token_hash, display_name, categories, created_at, expires_at, used_at, used_by, revoked_at \
             FROM invites WHERE bubble_id = $1 ORDER BY created_at DESC, token_hash",
        )
        .bind(bubble)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let categories: String = r.try_get(2)?;
                let expires_at: i64 = r.try_get(4)?;
                let used_at: Option<i64> = r.try_get(5)?;
                let revoked_at: Option<i64> = r.try_get(7)?;
                let status = match (used_at, revoked_at) {
                    (Some(_), _) => "used",
                    (None, Some(_)) => "revoked",
                    (None, None) if now >= expires_at => "expired",
                    (None, None) => "pending",
                };
                Ok(InviteRow {
                    id: r.try_get(0)?,
                    display_name: r.try_get(1)?,
                    categories: categories.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect(),
                    created_at: r.try_get(3)?,
                    expires_at,
                    status: status.to_owned(),
                    used_by: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Withdraws an unused invite: its link stops working at once. Returns its display name.
    pub async fn revoke_invite(&self, bubble: &str, id: &str, now: i64) -> Result<String, StoreError> {
        let row = sqlx::query(
            "UPDATE invites SET revoked_at = $1 WHERE bubble_id = $2 AND token_hash = $3 AND used_at IS NULL \
             AND revoked_at IS NULL RETURNING display_name",
        )
        .bind(now)
        .bind(bubble)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(row.try_get(0)?),
            None => Err(StoreError::Invite(InviteRefusal::Unknown)),
        }
    }

    /// A member's display name, categories and status, for a new invite in their name.
    pub async fn member_profile(
        &self,
        bubble: &str,
        member: &str,
    ) -> Result<Option<(String, Vec<String>, String)>, StoreError> {
        let Some(row) = sqlx::query("SELECT display_name, status FROM members WHERE bubble_id = $1 AND member_id = $2")
            .bind(bubble)
            .bind(member)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let categories = sqlx::query(
            "SELECT category_id FROM member_categories WHERE bubble_id = $1 AND member_id = $2 ORDER BY category_id",
        )
        .bind(bubble)
        .bind(member)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>, _>>()?;
        Ok(Some((row.try_get(0)?, categories, row.try_get(1)?)))
    }

    /// Each member's last session event: (Unix seconds, whether it was an opening). From the session events the
    /// bubble-servers report; a server that stopped without closing leaves an opening, so callers weigh it
    /// against the bubble's last report.
    pub async fn last_sessions(&self, bubble: &str) -> Result<HashMap<String, (i64, bool)>, StoreError> {
        let rows = sqlx::query(
            "SELECT detail, action, at FROM audit_events WHERE bubble_id = $1 \
             AND action IN ('session.opened', 'session.closed') ORDER BY at, action DESC",
        )
        .bind(bubble)
        .fetch_all(&self.pool)
        .await?;
        let mut open: HashMap<String, i64> = HashMap::new();
        let mut last: HashMap<String, (i64, bool)> = HashMap::new();
        for row in &rows {
            let detail: String = row.try_get(0)?;
            let Some(member) = detail.strip_prefix("member=") else { continue };
            let action: String = row.try_get(1)?;
            let at: i64 = row.try_get(2)?;
            let count = open.entry(member.to_owned()).or_default();
            *count = if action == "session.opened" { *count + 1 } else { (*count - 1).max(0) };
            last.insert(member.to_owned(), (at, *count > 0));
        }
        Ok(last)
    }

    /// The latest health sample of every bubble that has one.
    pub async fn latest_health(&self) -> Result<HashMap<String, HealthSample>, StoreError> {
        let rows = sqlx::query(
            "SELECT h.bubble_id, h.at, h.online_members, h.sessions, h.connections, h.envelopes_relayed, \
             h.envelopes_refused, h.auth_failures, h.turn_allocations, h.turn_bytes_relayed FROM health_samples h \
             JOIN (SELECT bubble_id, MAX(at) AS at FROM health_samples GROUP BY bubble_id) latest \
             ON latest.bubble_id = h.bubble_id AND latest.at = h.at",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::new();
        for r in &rows {
            out.insert(r.try_get("bubble_id")?, super::health_sample(r)?);
        }
        Ok(out)
    }

    /// Audit events matching `filter`, newest first: `limit` of them after skipping `offset`.
    pub async fn search_audit(
        &self,
        filter: &AuditFilter,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<super::AuditEvent>, StoreError> {
        let mut sql = String::from("SELECT at, bubble_id, actor, action, detail FROM audit_events WHERE 1 = 1");
        let mut binds = Vec::new();
        let mut push = |sql: &mut String, clause: &str, bind: Bind| {
            binds.push(bind);
            sql.push_str(&clause.replace('?', &format!("${}", binds.len())));
        };
        if let Some(bubble) = &filter.bubble {
            push(&mut sql, " AND bubble_id = ?", Bind::Text(bubble.clone()));
        }
        if let Some(actor) = &filter.actor {
            push(&mut sql, " AND actor LIKE ? ESCAPE '\\'", Bind::Text(format!("%{}%", like_escape(actor))));
        }
        if let Some(action) = &filter.action {
            push(&mut sql, " AND action LIKE ? ESCAPE '\\'", Bind::Text(format!("{}%", like_escape(action))));
        }
        if let Some(since) = filter.since {
            push(&mut sql, " AND at >= ?", Bind::Int(since));
        }
        if let Some(until) = filter.until {
            push(&mut sql, " AND at < ?", Bind::Int(until));
        }
        push(&mut sql, " ORDER BY at DESC, id LIMIT ?", Bind::Int(limit));
        push(&mut sql, " OFFSET ?", Bind::Int(offset));
        // Built from constant fragments only; every value is a bound parameter.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Int(n) => query.bind(n),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(super::AuditEvent {
                    at: r.try_get(0)?,
                    bubble: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }
}

/// `text` for a LIKE pattern, its wildcards taken literally.
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}
