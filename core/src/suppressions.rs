//! Addresses and numbers nothing is sent to (docs/hearing-back.md): hard bounces, STOP
//! replies and Twilio's 21610 add one; START and operators lift it. The one writer of
//! `suppressions`. The worker's planner reads them and records sends to them as `skipped`
//! (`suppressed` for a bounce, `opted_out` for a STOP, `erased` for an erased person).
//!
//! **Erased people.** When a person is erased ([`crate::privacy`]) their addresses and numbers
//! are kept here only as keyed hashes, `hmac-sha256:<hex>` of
//! HMAC-SHA256(signing key, `dashlight/suppression/v1 ‖ 0 ‖ channel ‖ 0 ‖ target`) under the
//! reason `erased` ([`erase_targets`]). [`among`] hashes the targets it is asked about in the
//! database with the same key (`hmac_sha256_pad`, see the migration `…030100_person_erasure`), so
//! a later import or booking with the same address is skipped without the address being stored.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};

use crate::{
    kinds::Channel,
    signing::{Key, Purpose, SUPPRESSION_LABEL},
};

/// Why nothing is sent to a target (`suppressions.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A hard bounce (RFC 3464, 5.x.x).
    Bounced,
    /// The person texted STOP (or the provider answered 21610).
    OptedOut,
    /// The person was erased; the target is kept only as a keyed hash.
    Erased,
}

impl Reason {
    /// The `skip_reason` of a send to a target suppressed for this reason.
    pub fn skip_reason(self) -> &'static str {
        match self {
            Reason::Bounced => "suppressed",
            Reason::OptedOut => "opted_out",
            Reason::Erased => "erased",
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

/// The stored form of an erased person's target: `hmac-sha256:<64 hex digits>` (see the
/// module map). Matches what [`among`] computes in the database.
pub fn hashed_target(key: &Key, channel: Channel, target: &str) -> String {
    let mut payload = channel.as_str().as_bytes().to_vec();
    payload.push(0);
    payload.extend_from_slice(normalise(channel, target).as_bytes());
    let hash = key.keyed_hash(Purpose::Suppression, &payload);
    let mut out = String::with_capacity(12 + 64);
    out.push_str("hmac-sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Replaces an erased person's targets of one channel by their keyed hashes: plain rows of
/// these targets go, a hashed row (reason `erased`) stays for each. Returns how many hashed rows
/// are new.
pub async fn erase_targets(conn: &mut PgConnection, key: &Key, channel: Channel, targets: &[String]) -> Result<u64, sqlx::Error> {
    let plain: Vec<String> = targets.iter().map(|t| normalise(channel, t)).filter(|t| !t.is_empty()).collect();
    if plain.is_empty() {
        return Ok(0);
    }
    let hashed: Vec<String> = plain.iter().map(|t| hashed_target(key, channel, t)).collect();
    sqlx::query!(
        "DELETE FROM suppressions WHERE channel = $1 AND target = ANY($2)",
        channel as Channel,
        &plain,
    )
    .execute(&mut *conn)
    .await?;
    let r = sqlx::query!(
        "INSERT INTO suppressions (channel, target, reason) SELECT $1, t, 'erased' FROM unnest($2::text[]) AS t
         ON CONFLICT (channel, target) DO NOTHING",
        channel as Channel,
        &hashed,
    )
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
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
/// A target matches its plain row or, for an erased person, its keyed hash (computed here in the
/// database with the signing key: the inner and outer padded keys once per statement, then two
/// built-in `sha256` per target).
pub async fn among(conn: &mut PgConnection, channel: Channel, targets: &[String]) -> Result<Vec<(String, Reason)>, sqlx::Error> {
    let normalised: Vec<String> = targets.iter().map(|t| normalise(channel, t)).collect();
    Ok(sqlx::query!(
        r#"WITH k AS (SELECT hmac_sha256_pad(secret, 54) AS inner_key, hmac_sha256_pad(secret, 92) AS outer_key
                     FROM signing_keys WHERE name = 'links'),
                t AS (SELECT DISTINCT target FROM unnest($2::text[]) AS target),
                h AS (SELECT t.target,
                             'hmac-sha256:' || encode(sha256(k.outer_key || sha256(k.inner_key || convert_to($3, 'UTF8') || '\x00'::bytea
                                 || convert_to($1, 'UTF8') || '\x00'::bytea || convert_to(t.target, 'UTF8'))), 'hex') AS hashed
                      FROM t, k
                      WHERE EXISTS (SELECT 1 FROM suppressions WHERE reason = 'erased'))
           SELECT t.target AS "target!", s.reason AS "reason!: Reason"
           FROM t JOIN suppressions s ON s.channel = $1 AND s.target = t.target
           UNION ALL
           SELECT h.target, s.reason FROM h JOIN suppressions s ON s.channel = $1 AND s.target = h.hashed"#,
        channel as Channel,
        &normalised,
        SUPPRESSION_LABEL,
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| (r.target, r.reason))
    .collect())
}
