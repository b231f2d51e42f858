//! Operators' levers on the queues (docs/operating.md, "Operating the queues"): pausing and resuming a
//! queue or a channel, with who did it and when on record. The one writer of `queue_pauses` and
//! `queue_control_events`.
//!
//! - A paused **queue** is not fetched by any worker: the notification queue's
//!   [`crate::queue::JobQueue::fetch`] has the pause in its statement, and the periodic queue's
//!   stock apalis worker fetches through a storage that asks [`queue_paused`] first
//!   (`core/src/queue/stock.rs`). Jobs already held finish. [`resume`] wakes the workers the
//!   way apalis's insert trigger does.
//! - A paused **channel** leaves its sends `pending` with the pause as their `hold_reason`: the
//!   worker's recorder reads [`held_channels`] in the transaction that claims sends (so a resume
//!   that commits first is always seen) and holds those sends instead of claiming them. Other
//!   channels go on. [`resume`] enqueues a job for every notification it held, oldest due first,
//!   so they are sent at once; the recorder clears the hold when it claims them.
//!
//! The pause rows survive restarts and are shared by every worker (they are rows, read at each
//! fetch and claim). The send budgets and a provider's `Retry-After` hold are the worker's
//! limiter's (`channel_budgets`, worker/src/limits.rs).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgExecutor};

use crate::{
    jobs::{DeliverJob, NOTIFICATIONS_PER_JOB, NewJob, QUEUE_NOTIFICATIONS, QUEUES},
    kinds::Channel,
    queue,
};

/// What is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// A queue of apalis's table (`dashlight.notifications`, `dashlight.periodic`).
    Queue,
    /// A delivery channel (`email`, `sms`, `push`).
    Channel,
}

impl Scope {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Queue => "queue",
            Scope::Channel => "channel",
        }
    }
}

/// Checks a pause target: a queue of [`QUEUES`] or a channel name. Returns the message for a
/// bad one.
pub fn check_target(scope: Scope, name: &str) -> Result<(), String> {
    match scope {
        Scope::Queue if QUEUES.contains(&name) => Ok(()),
        Scope::Queue => Err(format!("expected one of {}", QUEUES.join(", "))),
        Scope::Channel if Channel::parse(name).is_some() => Ok(()),
        Scope::Channel => Err("expected one of email, sms, push".into()),
    }
}

/// Whether `queue` is paused: asked by the periodic queue's fetch, in its transaction, just
/// before it claims jobs (the notification queue's fetch has the same condition in its own
/// statement).
pub async fn queue_paused<'c>(exec: impl PgExecutor<'c>, queue: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM queue_pauses WHERE scope = 'queue' AND name = $1) AS "paused!""#,
        queue
    )
    .fetch_one(exec)
    .await
}

/// A pause in force.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct Pause {
    /// Queue or channel.
    pub scope: Scope,
    /// Its name.
    pub name: String,
    /// Who paused it.
    pub paused_by: String,
    /// When.
    pub paused_at: DateTime<Utc>,
    /// Why, as the operator said.
    pub reason: Option<String>,
}

/// One pause or resume, as recorded.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct ControlEvent {
    /// Queue or channel.
    pub scope: Scope,
    /// Its name.
    pub name: String,
    /// `pause` or `resume`.
    pub action: String,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Pauses a queue or channel (checked with [`check_target`] first) as `actor`. Returns the pause
/// in force: a second pause keeps the first one's author and time, and is not recorded again.
pub async fn pause(conn: &mut PgConnection, scope: Scope, name: &str, actor: &str, reason: Option<&str>) -> Result<Pause, sqlx::Error> {
    let inserted: Option<Pause> = sqlx::query_as!(
        Pause,
        r#"INSERT INTO queue_pauses (scope, name, paused_by, reason) VALUES ($1, $2, $3, $4)
         ON CONFLICT (scope, name) DO NOTHING
         RETURNING scope AS "scope: Scope", name, paused_by, paused_at, reason"#,
        scope as Scope,
        name,
        actor,
        reason,
    )
    .fetch_optional(&mut *conn)
    .await?;
    match inserted {
        Some(p) => {
            record_event(&mut *conn, scope, name, "pause", actor, reason).await?;
            tracing::warn!(scope = scope.as_str(), name, actor, reason, "paused");
            Ok(p)
        }
        None => {
            sqlx::query_as!(
                Pause,
                r#"SELECT scope AS "scope: Scope", name, paused_by, paused_at, reason FROM queue_pauses WHERE scope = $1 AND name = $2"#,
                scope as Scope,
                name,
            )
            .fetch_one(conn)
            .await
        }
    }
}

/// What a resume did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Resumed {
    /// Whether it was paused.
    pub was_paused: bool,
    /// Notifications put back on their way (a channel's held sends).
    pub woken: u64,
}

/// Resumes a queue or channel as `actor`, in one transaction of the caller's: the pause row goes,
/// the resume is recorded, and what it held is woken — the workers of a queue through apalis's
/// insert notification, the held sends of a channel through a job per notification, due now,
/// oldest due first.
pub async fn resume(conn: &mut PgConnection, scope: Scope, name: &str, actor: &str) -> Result<Resumed, sqlx::Error> {
    let gone = sqlx::query!("DELETE FROM queue_pauses WHERE scope = $1 AND name = $2", scope as Scope, name)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if gone == 0 {
        return Ok(Resumed::default());
    }
    record_event(&mut *conn, scope, name, "resume", actor, None).await?;
    let woken = match scope {
        Scope::Queue => {
            sqlx::query!(
                "SELECT pg_notify('apalis::job::insert', json_build_object('job_type', $1::text, 'id', '', 'run_at', now())::text)",
                name,
            )
            .fetch_one(&mut *conn)
            .await?;
            0
        }
        Scope::Channel => wake_held(&mut *conn, name).await?,
    };
    tracing::warn!(scope = scope.as_str(), name, actor, woken, "resumed");
    Ok(Resumed { was_paused: true, woken })
}

/// Jobs for the notifications whose sends on `channel` a pause held, oldest due first: one job
/// per run of equal priority (at most [`NOTIFICATIONS_PER_JOB`] notifications), each a
/// microsecond after the one before, so the fetch's `run_at` order is the due order. Returns how
/// many notifications were woken.
async fn wake_held(conn: &mut PgConnection, channel: &str) -> Result<u64, sqlx::Error> {
    let held: Vec<(i64, i16)> = sqlx::query!(
        "SELECT n.id, n.priority FROM notifications n
         WHERE n.id IN (SELECT notification_id FROM notification_deliveries
                        WHERE channel = $1 AND hold_reason IS NOT NULL AND status IN ('pending', 'retrying'))
         ORDER BY n.due_at, n.id",
        channel,
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| (r.id, r.priority))
    .collect();
    let base = Utc::now();
    // Oldest first: one job per run of equal priority (at most NOTIFICATIONS_PER_JOB), each due a
    // microsecond after the one before.
    let mut payloads: Vec<(DeliverJob, i16)> = Vec::new();
    for run in held.chunk_by(|a, b| a.1 == b.1) {
        for part in run.chunks(NOTIFICATIONS_PER_JOB) {
            let ids: Vec<i64> = part.iter().map(|(id, _)| *id).collect();
            payloads.push((DeliverJob::deliver_all(&ids), part[0].1));
        }
    }
    let jobs: Vec<NewJob<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, (job, priority))| {
            NewJob::new(QUEUE_NOTIFICATIONS, job)
                .run_at(base + Duration::microseconds(i as i64))
                .priority(i32::from(*priority))
        })
        .collect();
    queue::enqueue(conn, &jobs).await?;
    Ok(held.len() as u64)
}

async fn record_event(
    conn: &mut PgConnection,
    scope: Scope,
    name: &str,
    action: &str,
    actor: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO queue_control_events (scope, name, action, actor, reason) VALUES ($1, $2, $3, $4, $5)",
        scope as Scope,
        name,
        action,
        actor,
        reason,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The pauses in force, queues first.
pub async fn pauses<'c>(exec: impl PgExecutor<'c>) -> Result<Vec<Pause>, sqlx::Error> {
    sqlx::query_as!(
        Pause,
        r#"SELECT scope AS "scope: Scope", name, paused_by, paused_at, reason FROM queue_pauses ORDER BY scope DESC, name"#
    )
    .fetch_all(exec)
    .await
}

/// The latest pauses and resumes, newest first.
pub async fn events<'c>(exec: impl PgExecutor<'c>, limit: i64) -> Result<Vec<ControlEvent>, sqlx::Error> {
    sqlx::query_as!(
        ControlEvent,
        r#"SELECT scope AS "scope: Scope", name, action, actor, reason, at FROM queue_control_events ORDER BY at DESC, id DESC LIMIT $1"#,
        limit,
    )
    .fetch_all(exec)
    .await
}

/// The paused channels with the reason their sends wait, read in the caller's transaction with a
/// share lock, so a resume committing meanwhile is either seen (the row is gone) or waits for
/// this transaction (and then wakes what it held). Used by the delivery recorder's claim.
pub async fn held_channels(conn: &mut PgConnection) -> Result<Vec<(Channel, String)>, sqlx::Error> {
    let rows =
        sqlx::query!(r#"SELECT name AS "name: Channel", paused_by, paused_at, reason FROM queue_pauses WHERE scope = 'channel' FOR SHARE"#)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let (channel, by, at, reason) = (r.name, r.paused_by, r.paused_at, r.reason);
            let why = match reason {
                Some(r) => format!("{} paused by {by} at {}: {r}", channel.as_str(), at.format("%Y-%m-%d %H:%M:%S UTC")),
                None => format!("{} paused by {by} at {}", channel.as_str(), at.format("%Y-%m-%d %H:%M:%S UTC")),
            };
            (channel, why)
        })
        .collect())
}

/// Providers' holds in force: channel, until when, why (written by the worker's limiter on a
/// 429 with `Retry-After`).
pub async fn provider_holds<'c>(exec: impl PgExecutor<'c>) -> Result<Vec<(Channel, DateTime<Utc>, Option<String>)>, sqlx::Error> {
    Ok(sqlx::query!(
        r#"SELECT channel AS "channel: Channel", held_until AS "held_until!", held_reason FROM channel_budgets
           WHERE held_until > now() ORDER BY channel"#
    )
    .fetch_all(exec)
    .await?
    .into_iter()
    .map(|r| (r.channel, r.held_until, r.held_reason))
    .collect())
}
