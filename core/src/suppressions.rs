//! Addresses and numbers nothing is sent to (docs/hearing-back.md): hard bounces, STOP
//! replies and Twilio's 21610 add one; START and operators lift it. The one writer of
//! `suppressions`. The worker's planner reads them and records sends to them as `skipped`
//! (`suppressed` for a bounce, `opted_out` for a STOP).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};

use crate::kinds::Channel;

/// Why nothing is sent to a target (`suppressions.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A hard bounce (RFC 3464, 5.x.x).
    Bounced,
    /// The person texted STOP (or the provider answered 21610).
    OptedOut,
}

impl Reason {
    /// The `skip_reason` of a send to a target suppressed for this reason.
    pub fn skip_reason(self) -> &'static str {
        match self {
            Reason::Bounced => "suppressed",
            Reason::OptedOut => "opted_out",
        }
    }
}

/// A suppressed address or number.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Suppression {
    /// `suppressions.id`.
    pub id: i64,
    /// `email` or `sms`.
    pub channel: Channel,
    /// The lower-cased address or the E.164 number.
    pub target: String,
    /// Why.
    pub reason: Reason,
    /// The delivery that caused it, if one did.
    pub delivery_id: Option<i64>,
    /// The provider's words (a DSN's diagnostic, an error code).
    pub detail: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// The stored form of a target: email addresses lower-cased, numbers as given (E.164).
pub fn normalise(channel: Channel, target: &str) -> String {
    match channel {
        Channel::Email => target.trim().to_lowercase(),
        _ => target.trim().to_owned(),
    }
}

/// Suppresses a target. A target already suppressed keeps its first record; returns whether a
/// new one was made.
pub async fn suppress(
    conn: &mut PgConnection,
    channel: Channel,
    target: &str,
    reason: Reason,
    delivery_id: Option<i64>,
    detail: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "INSERT INTO suppressions (channel, target, reason, delivery_id, detail) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (channel, target) DO NOTHING",
        channel as Channel,
        normalise(channel, target),
        reason as Reason,
        delivery_id,
        detail.map(|d| d.chars().take(2000).collect::<String>()),
    )
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Lifts the suppression of a target (START/UNSTOP). Returns whether there was one.
pub async fn lift_target(conn: &mut PgConnection, channel: Channel, target: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "DELETE FROM suppressions WHERE channel = $1 AND target = $2",
        channel as Channel,
        normalise(channel, target),
    )
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Lifts a suppression by id (an operator's `DELETE /api/suppressions/{id}`).
pub async fn lift(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!("DELETE FROM suppressions WHERE id = $1", id)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Suppressions, newest first.
pub async fn list(conn: &mut PgConnection, limit: i64, offset: i64) -> Result<Vec<Suppression>, sqlx::Error> {
    sqlx::query_as!(
        Suppression,
        r#"SELECT id, channel AS "channel: Channel", target, reason AS "reason: Reason", delivery_id, detail, created_at FROM suppressions
         ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"#,
        limit,
        offset,
    )
    .fetch_all(&mut *conn)
    .await
}

/// A page of suppressions, newest first (by id): those with an id below `before` when given,
/// of one channel and one reason when given, at most `limit`.
pub async fn page(
    conn: &mut PgConnection,
    channel: Option<Channel>,
    reason: Option<Reason>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Suppression>, sqlx::Error> {
    sqlx::query_as!(
        Suppression,
        r#"SELECT id, channel AS "channel: Channel", target, reason AS "reason: Reason", delivery_id, detail, created_at FROM suppressions
         WHERE ($1::text IS NULL OR channel = $1) AND ($2::text IS NULL OR reason = $2) AND ($3::bigint IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"#,
        channel as Option<Channel>,
        reason as Option<Reason>,
        before,
        limit,
    )
    .fetch_all(&mut *conn)
    .await
}

/// Which of these targets of one channel are suppressed, and why (the planner's batch read).
pub async fn among(conn: &mut PgConnection, channel: Channel, targets: &[String]) -> Result<Vec<(String, Reason)>, sqlx::Error> {
    let normalised: Vec<String> = targets.iter().map(|t| normalise(channel, t)).collect();
    Ok(sqlx::query!(
        r#"SELECT target, reason AS "reason: Reason" FROM suppressions WHERE channel = $1 AND target = ANY($2)"#,
        channel as Channel,
        &normalised,
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| (r.target, r.reason))
    .collect())
}
