//! Creating notifications: the producers' side of the pipeline. A notification row is the
//! logical message; it is unique for its triggering event (`dedupe_key`), so producing the same
//! event twice creates nothing new. Creating notifications enqueues their [`DeliverJob`]s at their
//! due time on the same connection ([`create`] for one, [`create_all`] for many, which share jobs
//! when due together). Owns inserts into `notifications` and the one write of `cancelled`
//! ([`record_cancelled`]), which every cancel goes through: a booking's ([`cancel_for_booking`]),
//! by key ([`cancel_by_key`]), a person's ([`cancel_for_user`]), and an operator's of one
//! ([`cancel_one`]), whose cancel job the worker's recorder applies with it; deliveries belong to
//! the worker.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use crate::{
    jobs::{self, DeliverJob, NewJob, QUEUE_NOTIFICATIONS},
    kinds::{Channel, Kind},
    states::NotificationStatus,
};

/// A notification to create.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// Recipient user, or `None` with `recipient_email` for school-facing kinds.
    pub user_id: Option<i64>,
    /// Address for recipients that are not users (the school's `MAIL_FROM`).
    pub recipient_email: Option<String>,
    /// Kind (template folder, routing).
    pub kind: Kind,
    /// Short plain title (for lists and the dashboard).
    pub title: String,
    /// Plain one-line summary.
    pub content: String,
    /// The template context of the kind (see `templates/`).
    pub data: Value,
    /// Related booking.
    pub booking_id: Option<i64>,
    /// Related payment.
    pub payment_id: Option<i64>,
    /// Related message.
    pub message_id: Option<i64>,
    /// The triggering event; unique.
    pub dedupe_key: String,
    /// When it should reach the recipient.
    pub due_at: DateTime<Utc>,
    /// After this it is skipped rather than sent late.
    pub expires_at: Option<DateTime<Utc>>,
    /// The producer's "now" (its clock may be injected): the job runs `due_at - produced_at`
    /// from the real now.
    pub produced_at: DateTime<Utc>,
    /// Record it as `skipped` with this reason instead of sending (e.g. a reminder whose moment
    /// had already passed when the booking was made).
    pub skip_reason: Option<String>,
    /// Overrides the kind's channel list (its policy still applies), e.g. the push-now and
    /// email-later halves of a `new_message`. `None` (or empty) = the kind's routing.
    pub channels: Option<Vec<Channel>>,
}

impl NewNotification {
    /// A notification of `kind` to `user_id`, due now, keyed by `dedupe_key`.
    pub fn to_user(kind: Kind, user_id: i64, dedupe_key: String, now: DateTime<Utc>) -> Self {
        NewNotification {
            user_id: Some(user_id),
            recipient_email: None,
            kind,
            title: String::new(),
            content: String::new(),
            data: Value::Object(Default::default()),
            booking_id: None,
            payment_id: None,
            message_id: None,
            dedupe_key,
            due_at: now,
            produced_at: now,
            expires_at: None,
            skip_reason: None,
            channels: None,
        }
    }
}

/// Inserts the notification and enqueues its job ([`create_all`] of one). A person's
/// notification gets `page_path` (`/me/{token}`, [`crate::access`]) added to its data: where its
/// push opens. Returns its id, or `None` when the event was already notified (same `dedupe_key`).
pub async fn create(conn: &mut PgConnection, n: NewNotification) -> Result<Option<i64>, sqlx::Error> {
    Ok(create_all(conn, vec![n]).await?.pop().flatten())
}

/// The notification's row (no job).
async fn insert(conn: &mut PgConnection, n: NewNotification) -> Result<Option<i64>, sqlx::Error> {
    let (policy, routed) = n.kind.routing();
    let channels = n.channels.as_deref().filter(|c| !c.is_empty()).unwrap_or(routed);
    let channels: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
    let status = if n.skip_reason.is_some() {
        NotificationStatus::Skipped
    } else {
        NotificationStatus::Pending
    };
    let id: Option<i64> = sqlx::query_scalar!(
        r#"
        INSERT INTO notifications (user_id, recipient_email, type, title, content, channels, policy, data,
                                   booking_id, payment_id, message_id, dedupe_key, due_at, expires_at,
                                   status, status_reason, priority, next_check_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7,
                CASE WHEN jsonb_typeof($8::jsonb) = 'object'
                     THEN $8::jsonb || coalesce((SELECT jsonb_build_object('page_path', '/me/' || u.access_token)
                                                 FROM users u WHERE u.id = $1), '{}'::jsonb)
                     ELSE $8::jsonb END,
                $9, $10, $11, $12, $13, $14, $15, $16, $17, $13)
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING id
        "#,
        n.user_id,
        n.recipient_email,
        n.kind.as_str(),
        n.title,
        n.content,
        &channels as &[&str],
        policy.as_str(),
        n.data,
        n.booking_id,
        n.payment_id,
        n.message_id,
        n.dedupe_key,
        n.due_at,
        n.expires_at,
        status.as_str(),
        n.skip_reason,
        n.kind.priority() as i16,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if id.is_some() {
        metrics_created(n.kind);
    }
    Ok(id)
}

/// Inserts the notifications and enqueues their jobs, as [`create`] does for one: notifications
/// due at the same instant with the same priority share jobs (up to
/// [`jobs::NOTIFICATIONS_PER_JOB`] each, [`jobs::delivery_jobs`]), so a bulk written at once
/// (a reminder run, an invoice run) costs one job row per hundred, not one each. Returns each
/// notification's id, or `None` where its event was already notified. Use it on a transaction:
/// the notifications and their jobs commit together.
pub async fn create_all(conn: &mut PgConnection, all: Vec<NewNotification>) -> Result<Vec<Option<i64>>, sqlx::Error> {
    let mut ids = Vec::with_capacity(all.len());
    // Grouped by the due time on the producer's clock; each job runs that long after the real now.
    let mut runs = Vec::new();
    let mut produced_at = std::collections::HashMap::new();
    for n in all {
        let run = n.skip_reason.is_none().then_some((n.due_at, n.kind.priority()));
        produced_at.entry(n.due_at).or_insert(n.produced_at);
        let id = insert(conn, n).await?;
        if let (Some(id), Some((due, priority))) = (id, run) {
            runs.push((id, due, priority));
        }
        ids.push(id);
    }
    let grouped = jobs::delivery_jobs(&runs, None);
    let new: Vec<NewJob<'_>> = grouped
        .iter()
        .map(|(job, due, priority)| {
            NewJob::new(QUEUE_NOTIFICATIONS, job)
                .due(*due, produced_at[due])
                .priority(*priority)
        })
        .collect();
    jobs::enqueue(conn, &new).await?;
    Ok(ids)
}

fn metrics_created(kind: Kind) {
    tracing::debug!(kind = kind.as_str(), "notification created");
}

/// Records the open (pending or processing) notifications among `ids` `cancelled` with
/// `reason`: the one statement that writes a notification's `cancelled`, whoever cancels it (a
/// booking change, a message read, an erasure, the worker's recorder applying an operator's
/// cancel). A notification that has ended is left as it is. Returns the ids it cancelled.
///
/// A cancelled notification is never sent afterwards: the worker, meeting it, sends nothing and
/// closes its open deliveries (the recorder closes them in the same transaction when it is the
/// one cancelling).
pub async fn record_cancelled(conn: &mut PgConnection, ids: &[i64], reason: &str) -> Result<Vec<i64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar!(
        "UPDATE notifications SET status = 'cancelled', status_reason = $2
         WHERE id = ANY($1) AND status IN ('pending', 'processing') RETURNING id",
        ids,
        reason,
    )
    .fetch_all(conn)
    .await
}

/// Cancels the open (pending or processing) notifications of a booking of the given kinds
/// ([`record_cancelled`]). Returns how many.
pub async fn cancel_for_booking(conn: &mut PgConnection, booking_id: i64, kinds: &[Kind], reason: &str) -> Result<u64, sqlx::Error> {
    let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    let ids = sqlx::query_scalar!(
        "SELECT id FROM notifications WHERE booking_id = $1 AND type = ANY($2) AND status IN ('pending', 'processing')
         ORDER BY id FOR UPDATE",
        booking_id,
        &kinds as &[&str],
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(record_cancelled(conn, &ids, reason).await?.len() as u64)
}

/// Cancels one open notification by its dedupe key (e.g. the delayed email of a message that was
/// read; [`record_cancelled`]). Returns whether one was cancelled.
pub async fn cancel_by_key(conn: &mut PgConnection, dedupe_key: &str, reason: &str) -> Result<bool, sqlx::Error> {
    let ids = sqlx::query_scalar!(
        "SELECT id FROM notifications WHERE dedupe_key = $1 AND status IN ('pending', 'processing') FOR UPDATE",
        dedupe_key,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(!record_cancelled(conn, &ids, reason).await?.is_empty())
}

/// What [`cancel_one`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOne {
    /// Still open: its cancel is on its way to the worker's recorder, which records it
    /// `cancelled` and closes its open deliveries before any later run of its job sends it.
    Cancelling,
    /// No such notification.
    NotFound,
    /// Nothing left to cancel: it is no longer open (its status).
    NotOpen(NotificationStatus),
}

/// Cancels one open notification as `actor` (an operator's cancel), whichever job carries it:
/// a job due now carrying the cancel is enqueued on `conn`, and the worker's recorder (the one
/// writer of delivery state) records it. The rest of its job is untouched.
pub async fn cancel_one(conn: &mut PgConnection, id: i64, actor: &str) -> Result<CancelOne, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT status AS "status: NotificationStatus", priority FROM notifications WHERE id = $1"#,
        id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(CancelOne::NotFound) };
    if !row.status.is_open() {
        return Ok(CancelOne::NotOpen(row.status));
    }
    let job = DeliverJob::cancel(&[id], format!("cancelled by operator ({actor})"));
    jobs::enqueue(conn, &[NewJob::new(QUEUE_NOTIFICATIONS, &job).priority(i32::from(row.priority))]).await?;
    Ok(CancelOne::Cancelling)
}

/// Puts deliveries back on their way, as [`enqueue_delivery_retry`] does for one: one job each,
/// enqueued together. Returns how many were enqueued (ids that do not exist are skipped).
pub async fn enqueue_delivery_retries(conn: &mut PgConnection, delivery_ids: &[i64]) -> Result<u64, sqlx::Error> {
    if delivery_ids.is_empty() {
        return Ok(0);
    }
    let rows = sqlx::query!(
        "SELECT d.id AS delivery_id, n.id AS notification_id, n.priority FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
         WHERE d.id = ANY($1) ORDER BY d.id",
        delivery_ids,
    )
    .fetch_all(&mut *conn)
    .await?;
    let payloads: Vec<(DeliverJob, i16)> = rows
        .into_iter()
        .map(|r| (DeliverJob::retry(r.notification_id, r.delivery_id), r.priority))
        .collect();
    let jobs: Vec<NewJob<'_>> = payloads
        .iter()
        .map(|(job, priority)| NewJob::new(QUEUE_NOTIFICATIONS, job).priority(i32::from(*priority)))
        .collect();
    jobs::enqueue(conn, &jobs).await?;
    Ok(jobs.len() as u64)
}

/// Puts a delivery back on its way: enqueues a job that retries it now (operator action).
/// Returns false when the delivery does not exist.
pub async fn enqueue_delivery_retry(conn: &mut PgConnection, delivery_id: i64) -> Result<bool, sqlx::Error> {
    let row: Option<(i64, i16)> = sqlx::query!(
        "SELECT n.id, n.priority FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id WHERE d.id = $1",
        delivery_id,
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| (r.id, r.priority));
    let Some((notification_id, priority)) = row else { return Ok(false) };
    let job = DeliverJob::retry(notification_id, delivery_id);
    jobs::enqueue(conn, &[NewJob::new(QUEUE_NOTIFICATIONS, &job).priority(priority as i32)]).await?;
    Ok(true)
}

/// Cancels every open (pending or processing) notification of a user (their erasure;
/// [`record_cancelled`]). Returns how many.
pub async fn cancel_for_user(conn: &mut PgConnection, user_id: i64, reason: &str) -> Result<u64, sqlx::Error> {
    let ids = sqlx::query_scalar!(
        "SELECT id FROM notifications WHERE user_id = $1 AND status IN ('pending', 'processing') ORDER BY id FOR UPDATE",
        user_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(record_cancelled(conn, &ids, reason).await?.len() as u64)
}

/// Erasure: the person's notifications, and other people's notifications about them (of their
/// bookings, or naming them), keep their kind, state and times; the person's name, addresses,
/// numbers and link secrets become the pseudonym in title, content and data, and quoted words
/// (an SMS reply, a message preview) go. Returns the rows changed.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "UPDATE notifications
         SET title = erase_needles(title, $3, $4),
             content = erase_needles(content, $3, $4),
             data = erase_needles_jsonb(data - 'reply' - 'preview' - CASE WHEN user_id = $1 THEN 'page_path' ELSE '' END, $3, $4),
             recipient_email = erase_needles(recipient_email, $3, $4)
         WHERE user_id = $1 OR booking_id = ANY($2)
            OR EXISTS (SELECT 1 FROM unnest($5::text[]) AS s
                       WHERE strpos(lower(title || ' ' || content || ' ' || data::text || ' ' || coalesce(recipient_email, '')), lower(s)) > 0)",
        e.user_id,
        &e.booking_ids,
        &e.needles,
        e.pseudonym,
        &e.strong,
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}
