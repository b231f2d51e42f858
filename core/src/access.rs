//! A page of one's own (docs/own-page.md): the per-user secret of `/me/{token}` and what the page
//! reads. The secret is `users.access_token` (64 hex digits from two v4 UUIDs, made by the
//! column's default when the user is created, so every user has one); it is looked up, then
//! compared again in constant time, and [`rotate`] replaces it. It is stored as it is, not
//! hashed, because confirmation and reminder emails carry the link long after it was made (as
//! the calendar feed's address is); rotating is the remedy for a leaked link.
//!
//! Owns `users.access_token` and `notifications.read_at` (a person marking their own
//! notification read); reads bookings and notifications for the page. Devices and preferences
//! stay [`crate::people`]'s.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{FromRow, PgConnection};

use crate::{analytics, error::DomainError, states::ConfirmedVia};

/// How many notifications the page's feed shows (newest first).
pub const FEED_LIMIT: i64 = 50;

/// Lessons starting sooner than this can no longer be cancelled from the page: the person is
/// asked to call the school instead (the school "allows" a cancel request until then).
pub const CANCEL_NOTICE_HOURS: i64 = 24;

/// Whether `s` looks like an access token at all (64 lowercase hex digits); anything else is
/// refused before the database is asked.
pub fn well_formed(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Equality whose time does not depend on where the strings differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The page's address for a token: `{base}/me/{token}` (`base` without a trailing slash).
pub fn page_url(base: &str, token: &str) -> String {
    format!("{}/me/{token}", base.trim_end_matches('/'))
}

/// The owner of a page.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Owner {
    /// `users.id`.
    pub user_id: i64,
    /// `student` or `instructor` (or staff/admin).
    pub role: String,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// Email address.
    pub email: String,
    /// IANA time zone.
    pub timezone: String,
    /// The calendar feed's secret.
    pub calendar_token: String,
    /// The page's secret.
    #[serde(skip)]
    pub access_token: String,
}

/// The active user whose page `token` opens, or `None` (unknown, rotated, malformed, disabled).
pub async fn owner(conn: &mut PgConnection, token: &str) -> Result<Option<Owner>, sqlx::Error> {
    if !well_formed(token) {
        return Ok(None);
    }
    let o: Option<Owner> = sqlx::query_as!(
        Owner,
        "SELECT id AS user_id, role, first_name, last_name, email, timezone, calendar_token, access_token
         FROM users WHERE access_token = $1 AND status = 'active'",
        token,
    )
    .fetch_optional(conn)
    .await?;
    Ok(o.filter(|o| constant_time_eq(&o.access_token, token)))
}

/// A user's current token (`NotFound` for no such user).
pub async fn token_of(conn: &mut PgConnection, user_id: i64) -> Result<String, DomainError> {
    let t: Option<String> = sqlx::query_scalar!("SELECT access_token FROM users WHERE id = $1", user_id)
        .fetch_optional(conn)
        .await?;
    t.ok_or(DomainError::NotFound("user"))
}

/// The `device_id` prefix of devices registered from the page (`POST /me/{token}/devices`).
pub const PAGE_DEVICE_PREFIX: &str = "browser-";

/// Gives the user a new page secret, so whoever holds the old link is shut out at once: the old
/// link stops working, the devices registered from the page (through any link) are switched off
/// (the person enables alerts again from the new link), and the calendar feed's secret, shown on
/// the page, is replaced too. Returns the new page token.
pub async fn rotate(conn: &mut PgConnection, user_id: i64, now: DateTime<Utc>) -> Result<String, DomainError> {
    let token: Option<String> = sqlx::query_scalar!(
        "UPDATE users SET access_token = replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''),
                          calendar_token = replace(gen_random_uuid()::text, '-', '')
         WHERE id = $1 RETURNING access_token",
        user_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let token = token.ok_or(DomainError::NotFound("user"))?;
    let off = sqlx::query!(
        "UPDATE user_devices SET active = false, disabled_reason = 'the page link was rotated'
         WHERE user_id = $1 AND active AND starts_with(device_id, $2)",
        user_id,
        PAGE_DEVICE_PREFIX,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    analytics::record(
        conn,
        Some(user_id),
        "access_link_rotated",
        json!({"user_id": user_id, "devices_switched_off": off, "calendar_token_rotated": true}),
        now,
    )
    .await?;
    Ok(token)
}

/// An upcoming lesson of the page's owner (as student or as instructor).
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Lesson {
    /// `bookings.id`.
    pub booking_id: i64,
    /// Start.
    pub start_time: DateTime<Utc>,
    /// End.
    pub end_time: DateTime<Utc>,
    /// The instructor's full name.
    pub instructor_name: String,
    /// The student's full name.
    pub student_name: String,
    /// Pick-up place.
    pub pickup_location: Option<String>,
    /// When the student confirmed it.
    pub student_confirmed_at: Option<DateTime<Utc>>,
    /// How the student confirmed it.
    pub student_confirmed_via: Option<ConfirmedVia>,
}

/// The owner's confirmed lessons that have not ended yet, soonest first (at most 50).
pub async fn upcoming_lessons(conn: &mut PgConnection, user_id: i64, now: DateTime<Utc>) -> Result<Vec<Lesson>, sqlx::Error> {
    sqlx::query_as!(
        Lesson,
        r#"SELECT b.id AS booking_id, b.start_time, b.end_time,
                iu.first_name || ' ' || iu.last_name AS "instructor_name!",
                su.first_name || ' ' || su.last_name AS "student_name!", b.pickup_location,
                b.student_confirmed_at, b.student_confirmed_via AS "student_confirmed_via: ConfirmedVia"
         FROM bookings b
         JOIN students s ON s.id = b.student_id JOIN users su ON su.id = s.user_id
         JOIN instructors i ON i.id = b.instructor_id JOIN users iu ON iu.id = i.user_id
         WHERE (su.id = $1 OR iu.id = $1) AND b.status = 'confirmed' AND b.end_time > $2
         ORDER BY b.start_time, b.id LIMIT 50"#,
        user_id,
        now,
    )
    .fetch_all(conn)
    .await
}

/// One entry of the feed.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct FeedItem {
    /// `notifications.id`.
    pub id: i64,
    /// The kind (`notifications.type`).
    pub kind: String,
    /// Short title.
    pub title: String,
    /// One-line summary.
    pub content: String,
    /// When it was due (the moment it concerns the person).
    pub due_at: DateTime<Utc>,
    /// When the person marked it read.
    pub read_at: Option<DateTime<Utc>>,
    /// The booking it is about.
    pub booking_id: Option<i64>,
}

/// The owner's notifications that are due, newest first, whatever channel carried them and
/// also when none did (every channel switched off): the in-app channel. Left out: cancelled
/// ones, and those skipped before any channel was tried (a reminder whose moment had passed
/// when the lesson was booked, one that expired unsent).
pub async fn feed(conn: &mut PgConnection, user_id: i64, now: DateTime<Utc>) -> Result<Vec<FeedItem>, sqlx::Error> {
    sqlx::query_as!(
        FeedItem,
        "SELECT n.id, n.type AS kind, n.title, n.content, n.due_at, n.read_at, n.booking_id
         FROM notifications n
         WHERE n.user_id = $1 AND n.due_at <= $2 AND n.status <> 'cancelled'
           AND NOT (n.status = 'skipped' AND NOT EXISTS (SELECT 1 FROM notification_deliveries d WHERE d.notification_id = n.id))
         ORDER BY n.due_at DESC, n.id DESC LIMIT $3",
        user_id,
        now,
        FEED_LIMIT,
    )
    .fetch_all(conn)
    .await
}

/// Marks one of the owner's notifications read (once: a second call keeps the first time).
/// `NotFound` when it is not theirs or does not exist: nobody learns about others' rows.
pub async fn mark_read(conn: &mut PgConnection, user_id: i64, notification_id: i64, now: DateTime<Utc>) -> Result<(), DomainError> {
    let r = sqlx::query!(
        "UPDATE notifications SET read_at = coalesce(read_at, $3) WHERE id = $1 AND user_id = $2",
        notification_id,
        user_id,
        now,
    )
    .execute(conn)
    .await?;
    if r.rows_affected() == 0 {
        return Err(DomainError::NotFound("notification"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_is_64_lowercase_hex_compared_in_constant_time() {
        let t = "0123456789abcdef".repeat(4);
        assert!(well_formed(&t));
        assert!(!well_formed(&t.to_uppercase()));
        assert!(!well_formed(&t[1..]));
        assert!(!well_formed(&format!("{}/", &t[1..])));
        assert!(constant_time_eq(&t, &t.clone()));
        assert!(!constant_time_eq(&t, &t[1..]));
        assert_eq!(page_url("http://x/", &t), format!("http://x/me/{t}"));
    }
}
