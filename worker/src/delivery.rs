//! Deliveries: turning one notification into channel attempts, and recording every one.
//!
//! Owns `notification_deliveries` and `delivery_attempts` (and the status of notifications once
//! they are being processed). The flow of one [`DeliverJob`]:
//!
//! 1. Load the notification; cancelled → close its open deliveries; expired → skip them.
//! 2. Plan deliveries from the kind's policy, the recipient's preferences, addresses, devices and
//!    quiet hours (`plan`). Unusable channels are recorded `skipped` with the reason.
//! 3. Send each due delivery: claim it (`pending|retrying → sending`, attempts + 1) — the claim
//!    is what makes two workers never send the same delivery — record the attempt, call the
//!    channel, record the result right after.
//! 4. Transient failure → `retrying` with exponential backoff + jitter (or `Retry-After`) and a new
//!    job at that time; out of attempts → `dead`. Permanent → `failed`; a `first` policy then plans
//!    the next channel of its list.
//!
//! **The crash window.** Between the provider accepting a message and our UPDATE recording
//! `sent`, a crash leaves the delivery `sending`. Nothing re-sends it silently: the sweep
//! ([`recover_stuck`]) finds deliveries `sending` for longer than the send timeout, records the
//! attempt as `interrupted` ("the provider may have accepted it") and puts them back to
//! `retrying`, so the recipient may get that one message twice, and the operator sees why.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use dashlight_core::{
    Clock,
    jobs::{self, DeliverJob, NewJob, QUEUE_NOTIFICATIONS},
    kinds::{Channel, Kind, Policy},
};
use lettre::message::Mailbox;
use rand::Rng;
use serde_json::{Value, json};
use sqlx::{FromRow, PgConnection, PgPool};

use crate::{
    channels::{
        SendError, Sent,
        email::{Email, EmailAttachment, EmailSender},
        push::{PushMessage, PushSender},
        sms::SmsSender,
    },
    render::{Part, Renderer},
};

/// How long a send may take before a delivery left `sending` is considered interrupted.
pub const SENDING_TIMEOUT: Duration = Duration::from_secs(120);

/// Retry and identity settings of the pipeline.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Attempts per delivery before `dead`.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// School name for templates.
    pub school_name: String,
    /// School time zone.
    pub school_tz: Tz,
    /// The name of this worker (attempt records).
    pub worker_name: String,
}

/// Everything a delivery needs: database, clock, templates and channels.
#[derive(Clone)]
pub struct Pipeline {
    /// Database.
    pub pool: PgPool,
    /// Injected time.
    pub clock: Clock,
    /// Templates, loaded and checked at start-up.
    pub renderer: Arc<Renderer>,
    /// Email channel.
    pub email: EmailSender,
    /// SMS channel.
    pub sms: SmsSender,
    /// Push channel.
    pub push: PushSender,
    /// Settings.
    pub settings: DeliverySettings,
}

/// A failure of the pipeline itself (not of a channel).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The database failed: the job is retried by apalis.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The job can never succeed (its notification is gone, its payload is wrong).
    #[error("{0}")]
    Poison(String),
}

#[derive(Debug, Clone, FromRow)]
pub(crate) struct NotificationRow {
    pub(crate) id: i64,
    pub(crate) user_id: Option<i64>,
    pub(crate) recipient_email: Option<String>,
    #[sqlx(rename = "type")]
    pub(crate) kind: String,
    pub(crate) channels: Vec<String>,
    pub(crate) policy: String,
    pub(crate) data: Value,
    pub(crate) booking_id: Option<i64>,
    pub(crate) due_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) status: String,
    pub(crate) priority: i16,
}

#[derive(Debug, Clone, FromRow)]
pub(crate) struct Recipient {
    pub(crate) email: String,
    pub(crate) phone: Option<String>,
    pub(crate) first_name: String,
    pub(crate) last_name: String,
    pub(crate) timezone: String,
    pub(crate) email_on: bool,
    pub(crate) sms_on: bool,
    pub(crate) push_on: bool,
    pub(crate) quiet_start: Option<NaiveTime>,
    pub(crate) quiet_end: Option<NaiveTime>,
}

#[derive(Debug, Clone, FromRow)]
pub(crate) struct Device {
    pub(crate) id: i64,
    pub(crate) push_endpoint: String,
    p256dh: String,
    pub(crate) auth: String,
}

#[derive(Debug, Clone, FromRow)]
pub(crate) struct DeliveryRow {
    pub(crate) id: i64,
    pub(crate) channel: String,
    pub(crate) target: String,
    pub(crate) device_id: Option<i64>,
    pub(crate) status: String,
    pub(crate) next_attempt_at: Option<DateTime<Utc>>,
}

/// A delivery to insert.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planned {
    pub(crate) channel: Channel,
    pub(crate) target: String,
    pub(crate) device_id: Option<i64>,
    /// `Some(reason)` → recorded as skipped.
    pub(crate) skip: Option<String>,
    /// Held (quiet hours) until then.
    pub(crate) hold_until: Option<DateTime<Utc>>,
}

const OPEN: [&str; 3] = ["pending", "retrying", "sending"];

impl Pipeline {
    /// Processes one job. `job_id` is apalis's id, kept on each attempt record.
    pub async fn process(&self, job: &DeliverJob, job_id: &str) -> Result<(), PipelineError> {
        let Some(n) = self.load(job.notification_id).await? else {
            return Err(PipelineError::Poison(format!(
                "notification {} does not exist (deleted?)",
                job.notification_id
            )));
        };
        let kind =
            Kind::parse(&n.kind).ok_or_else(|| PipelineError::Poison(format!("notification {} has unknown kind {}", n.id, n.kind)))?;
        if let Some(did) = job.retry_delivery_id {
            self.reopen(n.id, did).await?;
        }
        match n.status.as_str() {
            "cancelled" => {
                self.close_open(n.id, "cancelled", "the booking changed first").await?;
                return Ok(());
            }
            "skipped" | "done" if job.retry_delivery_id.is_none() => return Ok(()),
            _ => {}
        }
        let mut now = self.clock.now();
        if n.due_at > now {
            let wait = (n.due_at - now).to_std().unwrap_or_default();
            if self.clock.is_system() && wait <= Duration::from_secs(2) {
                // apalis fetches when `run_at < now()`; close the last gap ourselves.
                tokio::time::sleep(wait).await;
                now = self.clock.now();
            } else {
                let mut conn = self.pool.acquire().await?;
                requeue(&mut conn, n.id, n.priority, n.due_at, now).await?;
                return Ok(());
            }
        }
        if n.expires_at.is_some_and(|e| e <= now) {
            self.expire(n.id).await?;
            return Ok(());
        }
        let recipient = self.recipient(&n).await?;
        let devices = match n.user_id {
            Some(uid) => self.devices(uid).await?,
            None => vec![],
        };
        let channels: Vec<Channel> = n.channels.iter().filter_map(|c| Channel::parse(c)).collect();
        let policy = if n.policy == "first" { Policy::First } else { Policy::All };
        // Lessons that start before quiet hours end go by email instead.
        let lesson_start = lesson_start(&n);

        let mut existing = self.deliveries(n.id).await?;
        if existing.is_empty() {
            let planned = plan(policy, &channels, 0, &recipient, &devices, now, lesson_start);
            self.insert_planned(&n, planned).await?;
            existing = self.deliveries(n.id).await?;
        }
        sqlx::query("UPDATE notifications SET status = 'processing' WHERE id = $1 AND status = 'pending'")
            .bind(n.id)
            .execute(&self.pool)
            .await?;
        // A retry's job can start a moment before the retry is due: its run time and the
        // delivery's `next_attempt_at` come from the worker's clock, the fetch's wait from the
        // database's, and the two may be a few ms apart. Close a gap of up to 2 s here; left
        // alone, nothing would be due, no job would remain, and the retry would wait for the
        // sweep.
        let due = |d: &DeliveryRow, now| matches!(d.status.as_str(), "pending" | "retrying") && d.next_attempt_at.is_none_or(|t| t <= now);
        if self.clock.is_system()
            && !existing.iter().any(|d| due(d, now))
            && let Some(next) = existing
                .iter()
                .filter(|d| d.status == "retrying")
                .filter_map(|d| d.next_attempt_at)
                .min()
        {
            let wait = (next - now).to_std().unwrap_or_default();
            if wait <= Duration::from_secs(2) {
                tokio::time::sleep(wait).await;
                now = self.clock.now();
            }
        }

        // Send, and under `first` move down the list while a stage fails; bounded by the list.
        for _ in 0..=channels.len() {
            for d in existing.iter().filter(|d| due(d, now)) {
                self.attempt(&n, kind, &recipient, &devices, d, job_id).await?;
            }
            existing = self.deliveries(n.id).await?;
            if policy != Policy::First {
                break;
            }
            let Some(next_idx) = next_stage(&channels, &existing) else { break };
            let planned = plan(policy, &channels, next_idx, &recipient, &devices, now, lesson_start);
            if planned.is_empty() {
                break;
            }
            self.insert_planned(&n, planned).await?;
            existing = self.deliveries(n.id).await?;
        }
        self.finish(&n, &existing).await?;
        Ok(())
    }

    async fn load(&self, id: i64) -> Result<Option<NotificationRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, user_id, recipient_email, type, channels, policy, data, booking_id, due_at, expires_at, status, priority
             FROM notifications WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    async fn recipient(&self, n: &NotificationRow) -> Result<Recipient, PipelineError> {
        match n.user_id {
            Some(uid) => sqlx::query_as(
                "SELECT u.email, u.phone, u.first_name, u.last_name, u.timezone,
                        coalesce(p.email_notifications, true) AS email_on, coalesce(p.sms_notifications, true) AS sms_on,
                        coalesce(p.push_notifications, true) AS push_on, p.quiet_hours_start AS quiet_start, p.quiet_hours_end AS quiet_end
                 FROM users u LEFT JOIN user_preferences p ON p.user_id = u.id WHERE u.id = $1",
            )
            .bind(uid)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| PipelineError::Poison(format!("recipient user {uid} of notification {} does not exist", n.id))),
            None => Ok(self.school_recipient(n)),
        }
    }

    /// The recipient of a school-facing notification (no user: the school's own address).
    pub(crate) fn school_recipient(&self, n: &NotificationRow) -> Recipient {
        Recipient {
            email: n.recipient_email.clone().unwrap_or_default(),
            phone: None,
            first_name: self.settings.school_name.clone(),
            last_name: String::new(),
            timezone: self.settings.school_tz.name().to_owned(),
            email_on: true,
            sms_on: false,
            push_on: false,
            quiet_start: None,
            quiet_end: None,
        }
    }

    async fn devices(&self, user_id: i64) -> Result<Vec<Device>, sqlx::Error> {
        sqlx::query_as("SELECT id, push_endpoint, p256dh, auth FROM user_devices WHERE user_id = $1 AND active ORDER BY id")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
    }

    async fn deliveries(&self, notification_id: i64) -> Result<Vec<DeliveryRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, channel, target, device_id, status, next_attempt_at FROM notification_deliveries WHERE notification_id = $1 ORDER BY id")
            .bind(notification_id)
            .fetch_all(&self.pool)
            .await
    }

    async fn insert_planned(&self, n: &NotificationRow, planned: Vec<Planned>) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for p in planned {
            let status = if p.skip.is_some() { "skipped" } else { "pending" };
            let inserted = sqlx::query(
                "INSERT INTO notification_deliveries (notification_id, channel, target, device_id, status, skip_reason, next_attempt_at, max_attempts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (notification_id, channel, target) DO NOTHING",
            )
            .bind(n.id)
            .bind(p.channel.as_str())
            .bind(&p.target)
            .bind(p.device_id)
            .bind(status)
            .bind(&p.skip)
            .bind(p.hold_until)
            .bind(self.settings.max_attempts as i32)
            .execute(&mut *tx)
            .await?;
            if let (Some(t), true) = (p.hold_until, inserted.rows_affected() > 0) {
                requeue(&mut tx, n.id, n.priority, t, self.clock.now()).await?;
            }
            if let Some(reason) = &p.skip {
                tracing::info!(notification = n.id, kind = %n.kind, channel = p.channel.as_str(), %reason, "delivery skipped");
                metrics::counter!("dashlight_deliveries_total", "channel" => p.channel.as_str(), "outcome" => "skipped").increment(1);
            }
        }
        tx.commit().await
    }

    /// One attempt of one delivery.
    async fn attempt(
        &self,
        n: &NotificationRow,
        kind: Kind,
        r: &Recipient,
        devices: &[Device],
        d: &DeliveryRow,
        job_id: &str,
    ) -> Result<(), PipelineError> {
        let Some(channel) = Channel::parse(&d.channel) else { return Ok(()) };
        let now = self.clock.now();
        // The claim: only one worker moves a delivery to `sending`.
        let claimed: Option<(i32, i32)> = sqlx::query_as(
            "WITH c AS (
                UPDATE notification_deliveries SET status = 'sending', attempts = attempts + 1, sending_since = $2
                WHERE id = $1 AND status IN ('pending', 'retrying') RETURNING attempts, max_attempts)
             INSERT INTO delivery_attempts (delivery_id, attempt, job_id, worker, started_at)
             SELECT $1, attempts, $3, $4, $2 FROM c
             RETURNING attempt, (SELECT max_attempts FROM c)",
        )
        .bind(d.id)
        .bind(now)
        .bind(job_id)
        .bind(&self.settings.worker_name)
        .fetch_optional(&self.pool)
        .await?;
        let Some((attempt, max_attempts)) = claimed else { return Ok(()) };

        let result = self.render_and_send(n, kind, r, devices, d, channel).await;
        let finished = self.clock.now();
        let res = resolve(&result, attempt, max_attempts, finished, &self.settings);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE notification_deliveries SET status = $2, sent_at = CASE WHEN $2 = 'sent' THEN $3 ELSE sent_at END,
                    provider_message_id = coalesce($4, provider_message_id), last_error = $5, next_attempt_at = $6, sending_since = NULL
             WHERE id = $1",
        )
        .bind(d.id)
        .bind(res.status)
        .bind(finished)
        .bind(&res.provider_id)
        .bind(&res.error)
        .bind(res.next_attempt_at)
        .execute(&mut *tx)
        .await?;
        if let Some(dev) = d.device_id {
            if res.status == "sent" {
                sqlx::query("UPDATE user_devices SET last_used_at = $2 WHERE id = $1")
                    .bind(dev)
                    .bind(finished)
                    .execute(&mut *tx)
                    .await?;
            } else if res.disable_device {
                sqlx::query("UPDATE user_devices SET active = false, disabled_reason = $2 WHERE id = $1")
                    .bind(dev)
                    .bind(&res.error)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if let Some(next) = res.next_attempt_at {
            requeue(&mut tx, n.id, n.priority, next, finished).await?;
        }
        sqlx::query("UPDATE delivery_attempts SET finished_at = $3, outcome = $4, error = $5, provider_message_id = $6, retry_after_ms = $7 WHERE delivery_id = $1 AND attempt = $2")
            .bind(d.id)
            .bind(attempt)
            .bind(finished)
            .bind(res.outcome)
            .bind(&res.error)
            .bind(&res.provider_id)
            .bind(res.retry_after_ms)
            .execute(&mut *tx)
            .await?;
        if let Some(event) = res.event {
            dashlight_core::analytics::record(
                &mut tx,
                n.user_id,
                event,
                json!({"notification_id": n.id, "delivery_id": d.id, "kind": n.kind, "channel": channel.as_str()}),
                finished,
            )
            .await?;
        }
        tx.commit().await?;
        log_resolution(n, d.id, d.device_id, channel, attempt, finished, &res);
        Ok(())
    }

    pub(crate) async fn render_and_send(
        &self,
        n: &NotificationRow,
        kind: Kind,
        r: &Recipient,
        devices: &[Device],
        d: &DeliveryRow,
        channel: Channel,
    ) -> Result<Sent, SendError> {
        let ctx = self.context(n, r);
        let render = |part| {
            self.renderer
                .render(kind.as_str(), part, &ctx)
                .map_err(|e| SendError::permanent(format!("template: {e}")))
        };
        match channel {
            Channel::Email => {
                let name = format!("{} {}", r.first_name, r.last_name).trim().to_owned();
                let to = match d.target.parse::<lettre::Address>() {
                    Ok(addr) => Mailbox::new(if n.user_id.is_some() { Some(name) } else { None }, addr).to_string(),
                    Err(e) => {
                        return Err(SendError::permanent(format!(
                            "recipient {:?} is not a valid address: {e}",
                            d.target
                        )));
                    }
                };
                let mut email = Email {
                    to,
                    subject: render(Part::Subject)?.trim().to_owned(),
                    text: render(Part::EmailText)?,
                    html: render(Part::EmailHtml)?,
                    attachments: vec![],
                    calendar: None,
                };
                if let Some(path) = n.data.pointer("/invoice/pdf_path").and_then(Value::as_str) {
                    let bytes = tokio::fs::read(path)
                        .await
                        .map_err(|e| SendError::transient(format!("cannot read invoice PDF {path}: {e}")))?;
                    let number = n.data.pointer("/invoice/number").and_then(Value::as_str).unwrap_or("invoice");
                    email.attachments.push(EmailAttachment {
                        filename: format!("{number}.pdf"),
                        content_type: "application/pdf".into(),
                        bytes,
                    });
                }
                if let (Some(method), Some(ics)) = (
                    n.data.pointer("/calendar/method").and_then(Value::as_str),
                    n.data.pointer("/calendar/ics").and_then(Value::as_str),
                ) {
                    email.calendar = Some((method.to_owned(), ics.to_owned()));
                }
                self.email.send(d.id, &email).await
            }
            Channel::Sms => self.sms.send(d.id, &d.target, render(Part::Sms)?.trim()).await,
            Channel::Push => {
                let Some(dev) = devices.iter().find(|x| Some(x.id) == d.device_id) else {
                    return Err(SendError::permanent("push device no longer active"));
                };
                let payload = json!({
                    "title": render(Part::PushTitle)?.trim(),
                    "body": render(Part::PushBody)?.trim(),
                    "url": n.booking_id.map(|b| format!("/bookings/{b}")).unwrap_or_else(|| "/".into()),
                    "tag": format!("{}:{}", n.kind, n.booking_id.unwrap_or(n.id)),
                });
                let now = self.clock.now();
                let ttl = match n.expires_at {
                    Some(e) => (e - now).num_seconds().clamp(60, 86_400) as u32,
                    None => 86_400,
                };
                let msg = PushMessage {
                    endpoint: &dev.push_endpoint,
                    p256dh: &dev.p256dh,
                    auth: &dev.auth,
                    payload: serde_json::to_vec(&payload).expect("json"),
                    ttl,
                    urgency: kind.urgency(),
                };
                self.push.send(d.id, &msg).await
            }
        }
    }

    fn context(&self, n: &NotificationRow, r: &Recipient) -> Value {
        let mut ctx = match &n.data {
            Value::Object(m) => Value::Object(m.clone()),
            _ => json!({}),
        };
        ctx["recipient"] = json!({"first_name": r.first_name, "last_name": r.last_name, "timezone": r.timezone});
        ctx["school"] = json!({"name": self.settings.school_name});
        ctx
    }

    /// Operator retry: a failed or dead delivery gets a new attempt (history kept).
    async fn reopen(&self, notification_id: i64, delivery_id: i64) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE notification_deliveries SET status = 'retrying', next_attempt_at = NULL, max_attempts = GREATEST(max_attempts, attempts + 1)
             WHERE id = $1 AND notification_id = $2 AND status IN ('failed', 'dead')",
        )
        .bind(delivery_id)
        .bind(notification_id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() > 0 {
            sqlx::query("UPDATE notifications SET status = 'processing', status_reason = 'retried by operator' WHERE id = $1 AND status <> 'cancelled'")
                .bind(notification_id)
                .execute(&mut *tx)
                .await?;
            tracing::info!(
                notification = notification_id,
                delivery = delivery_id,
                "delivery reopened by operator retry"
            );
        }
        tx.commit().await
    }

    async fn close_open(&self, notification_id: i64, status: &str, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE notification_deliveries SET status = $2, skip_reason = $3, next_attempt_at = NULL WHERE notification_id = $1 AND status IN ('pending', 'retrying')")
            .bind(notification_id)
            .bind(status)
            .bind(reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn expire(&self, notification_id: i64) -> Result<(), sqlx::Error> {
        let reason = "the lesson had started before it could be sent";
        self.close_open(notification_id, "skipped", reason).await?;
        sqlx::query(
            "UPDATE notifications SET status = 'skipped', status_reason = $2 WHERE id = $1 AND (status IN ('pending', 'processing')) IS TRUE",
        )
        .bind(notification_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        tracing::info!(notification = notification_id, "skipped: expired");
        Ok(())
    }

    async fn finish(&self, n: &NotificationRow, deliveries: &[DeliveryRow]) -> Result<(), sqlx::Error> {
        let open: Vec<&DeliveryRow> = deliveries.iter().filter(|d| OPEN.contains(&d.status.as_str())).collect();
        if open.is_empty() {
            // `(…) IS TRUE`: a status condition the partial index `notifications_open_check_idx`
            // cannot serve, so the row is found by primary key (BENCHMARKS.md measured the
            // planner walking that index, 138 ms a statement, once history existed).
            sqlx::query("UPDATE notifications SET status = 'done' WHERE id = $1 AND (status IN ('pending', 'processing')) IS TRUE")
                .bind(n.id)
                .execute(&self.pool)
                .await?;
        } else {
            let next = open
                .iter()
                .filter_map(|d| d.next_attempt_at)
                .min()
                .unwrap_or_else(|| self.clock.now());
            sqlx::query("UPDATE notifications SET next_check_at = $2 WHERE id = $1")
                .bind(n.id)
                .bind(next)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

/// What one attempt's result means for its delivery and its attempt record.
#[derive(Debug, Clone)]
pub(crate) struct Resolution {
    /// New delivery status: `sent`, `retrying`, `dead` or `failed`.
    pub status: &'static str,
    /// Attempt outcome: `sent`, `transient` or `permanent`.
    pub outcome: &'static str,
    /// The error (delivery `last_error` and attempt `error`).
    pub error: Option<String>,
    /// The provider's id of a sent message.
    pub provider_id: Option<String>,
    /// When the retry is due (`retrying` only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The provider's `Retry-After`, in ms.
    pub retry_after_ms: Option<i64>,
    /// The analytics event it produces.
    pub event: Option<&'static str>,
    /// The push subscription is gone: disable the device.
    pub disable_device: bool,
    /// The retry delay chosen (`retrying` only).
    pub retry_in: Option<Duration>,
}

/// Decides the fate of a delivery from one attempt's result: sent; transient with attempts left
/// → `retrying` after [`backoff`]; transient out of attempts → `dead`; permanent → `failed`.
pub(crate) fn resolve(
    result: &Result<Sent, SendError>,
    attempt: i32,
    max_attempts: i32,
    finished: DateTime<Utc>,
    settings: &DeliverySettings,
) -> Resolution {
    let mut r = Resolution {
        status: "sent",
        outcome: "sent",
        error: None,
        provider_id: None,
        next_attempt_at: None,
        retry_after_ms: None,
        event: None,
        disable_device: false,
        retry_in: None,
    };
    match result {
        Ok(sent) => {
            r.provider_id = sent.provider_message_id.clone();
            r.event = Some("notification_sent");
        }
        Err(e) => {
            r.outcome = e.outcome();
            r.error = Some(e.to_string());
            match e {
                SendError::Transient { retry_after, .. } => {
                    r.retry_after_ms = retry_after.map(|d| d.as_millis() as i64);
                    if attempt < max_attempts {
                        let delay = backoff(attempt as u32, settings.retry_base, settings.retry_max, *retry_after);
                        r.status = "retrying";
                        r.retry_in = Some(delay);
                        r.next_attempt_at = Some(finished + chrono::Duration::from_std(delay).unwrap_or_default());
                    } else {
                        r.status = "dead";
                        r.event = Some("notification_failed");
                    }
                }
                SendError::Permanent { subscription_gone, .. } => {
                    r.status = "failed";
                    r.disable_device = *subscription_gone;
                    r.event = Some("notification_failed");
                }
            }
        }
    }
    r
}

/// The log line and metrics of one resolved attempt.
pub(crate) fn log_resolution(
    n: &NotificationRow,
    delivery: i64,
    device: Option<i64>,
    channel: Channel,
    attempt: i32,
    finished: DateTime<Utc>,
    res: &Resolution,
) {
    let error = res.error.as_deref().unwrap_or_default();
    match res.status {
        "sent" => {
            tracing::info!(notification = n.id, delivery, kind = %n.kind, channel = channel.as_str(), attempt, user = ?n.user_id, "sent");
        }
        "retrying" => {
            let retry_in_ms = res.retry_in.unwrap_or_default().as_millis() as u64;
            tracing::warn!(
                notification = n.id,
                delivery,
                channel = channel.as_str(),
                attempt,
                retry_in_ms,
                error,
                "send failed, will retry"
            );
        }
        "dead" => tracing::error!(
            notification = n.id,
            delivery,
            channel = channel.as_str(),
            attempt,
            error,
            "delivery dead: attempts exhausted"
        ),
        _ => {
            if res.disable_device
                && let Some(dev) = device
            {
                tracing::info!(device = dev, "push subscription gone: device disabled");
            }
            tracing::warn!(
                notification = n.id,
                delivery,
                channel = channel.as_str(),
                attempt,
                error,
                "delivery failed permanently"
            );
        }
    }
    if res.status == "sent" {
        let lateness = (finished - n.due_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("dashlight_delivery_lateness_seconds", "channel" => channel.as_str()).record(lateness);
    }
    metrics::counter!("dashlight_deliveries_total", "channel" => channel.as_str(), "outcome" => res.outcome).increment(1);
}

/// Enqueues another run of a notification at `at` (retry, hold, early fetch).
pub(crate) async fn requeue(
    conn: &mut PgConnection,
    notification_id: i64,
    priority: i16,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let job = DeliverJob {
        notification_id,
        retry_delivery_id: None,
    };
    jobs::enqueue(
        conn,
        &[NewJob::new(QUEUE_NOTIFICATIONS, &job).due(at, now).priority(priority as i32)],
    )
    .await?;
    Ok(())
}

/// Exponential backoff with ±20 % jitter, at least the provider's `Retry-After`.
pub fn backoff(attempt: u32, base: Duration, max: Duration, retry_after: Option<Duration>) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(max);
    let jitter = rand::rng().random_range(0.8..1.2);
    let d = exp.mul_f64(jitter).min(max);
    match retry_after {
        Some(ra) => d.max(ra),
        None => d,
    }
}

/// Under `first`: the index of the next channel to try, when every delivery of the channel
/// tried last has failed for good (failed, dead, skipped) and none was sent.
fn next_stage(channels: &[Channel], deliveries: &[DeliveryRow]) -> Option<usize> {
    if deliveries.iter().any(|d| d.status == "sent" || OPEN.contains(&d.status.as_str())) {
        return None;
    }
    let last = channels.iter().rposition(|c| deliveries.iter().any(|d| d.channel == c.as_str()))?;
    (last + 1 < channels.len()).then_some(last + 1)
}

/// The start of the lesson a notification is about, if any (quiet hours divert such messages
/// to email when the lesson starts before they end).
pub(crate) fn lesson_start(n: &NotificationRow) -> Option<DateTime<Utc>> {
    n.data
        .pointer("/booking/start_time")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Decides the deliveries of a notification from `channels[from..]`.
pub(crate) fn plan(
    policy: Policy,
    channels: &[Channel],
    from: usize,
    r: &Recipient,
    devices: &[Device],
    now: DateTime<Utc>,
    lesson_start: Option<DateTime<Utc>>,
) -> Vec<Planned> {
    let mut out = Vec::new();
    let tz: Tz = r.timezone.parse().unwrap_or(chrono_tz::Europe::London);
    let quiet_until = quiet_end(r.quiet_start, r.quiet_end, now, tz);
    for &channel in &channels[from.min(channels.len())..] {
        let skip = |reason: String| Planned {
            channel,
            target: String::new(),
            device_id: None,
            skip: Some(reason),
            hold_until: None,
        };
        let enabled = match channel {
            Channel::Email => r.email_on,
            Channel::Sms => r.sms_on,
            Channel::Push => r.push_on,
        };
        if !enabled {
            out.push(skip(format!("{} notifications are switched off", channel.as_str())));
            continue;
        }
        let mut hold_until = None;
        if matches!(channel, Channel::Sms | Channel::Push)
            && let Some(until) = quiet_until
        {
            if lesson_start.is_some_and(|s| s <= until) {
                out.push(skip(format!(
                    "quiet hours until {}; the lesson starts before then",
                    until.with_timezone(&tz).format("%H:%M")
                )));
                continue;
            }
            hold_until = Some(until);
        }
        let usable: Vec<Planned> = match channel {
            Channel::Email if r.email.contains('@') => {
                vec![Planned {
                    channel,
                    target: r.email.clone(),
                    device_id: None,
                    skip: None,
                    hold_until,
                }]
            }
            Channel::Sms => match &r.phone {
                Some(p) => vec![Planned {
                    channel,
                    target: p.clone(),
                    device_id: None,
                    skip: None,
                    hold_until,
                }],
                None => vec![],
            },
            Channel::Push => devices
                .iter()
                .map(|d| Planned {
                    channel,
                    target: d.push_endpoint.clone(),
                    device_id: Some(d.id),
                    skip: None,
                    hold_until,
                })
                .collect(),
            Channel::Email => vec![],
        };
        if usable.is_empty() {
            out.push(skip(match channel {
                Channel::Email => "no email address".into(),
                Channel::Sms => "no phone number".into(),
                Channel::Push => "no active push device".into(),
            }));
            continue;
        }
        out.extend(usable);
        if policy == Policy::First {
            break;
        }
    }
    out
}

/// When quiet hours are on at `now`, the moment they end.
fn quiet_end(start: Option<NaiveTime>, end: Option<NaiveTime>, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    let (start, end) = (start?, end?);
    let local = now.with_timezone(&tz);
    let t = local.time();
    let quiet = if start < end {
        t >= start && t < end
    } else {
        t >= start || t < end
    };
    if !quiet {
        return None;
    }
    let mut day = local.date_naive();
    if t >= end && start > end {
        day = day.succ_opt()?;
    }
    // The first instant at or after `end` on that day (DST gaps move it forward).
    let naive = day.and_time(end);
    let at = tz
        .from_local_datetime(&naive)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(naive + chrono::Duration::hours(1))).earliest())?;
    Some(at.with_timezone(&Utc))
}

/// Deliveries left `sending` longer than [`SENDING_TIMEOUT`] by a worker that died: record the
/// attempt as interrupted and put them back to `retrying`, re-enqueuing their notifications.
/// Returns how many were recovered.
pub async fn recover_stuck(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let cutoff = now - chrono::Duration::from_std(SENDING_TIMEOUT).expect("fits");
    let mut tx = pool.begin().await?;
    let rows: Vec<(i64, i64, i16)> = sqlx::query_as(
        "WITH s AS (
            UPDATE notification_deliveries d SET status = 'retrying', next_attempt_at = NULL, sending_since = NULL,
                   last_error = 'interrupted: the worker stopped mid-send; the provider may have accepted it'
            WHERE d.status = 'sending' AND d.sending_since < $1
            RETURNING d.id, d.notification_id, d.attempts)
         , a AS (
            UPDATE delivery_attempts da SET finished_at = $2, outcome = 'interrupted',
                   error = 'the worker stopped mid-send; the provider may have accepted it'
            FROM s WHERE da.delivery_id = s.id AND da.attempt = s.attempts AND da.outcome IS NULL)
         SELECT s.id, s.notification_id, n.priority FROM s JOIN notifications n ON n.id = s.notification_id",
    )
    .bind(cutoff)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    for (delivery, notification, priority) in &rows {
        tracing::warn!(delivery, notification, "recovered a delivery stuck in sending");
        requeue(&mut tx, *notification, *priority, now, now).await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// The statement of [`sweep_overdue`]: `$1` the overdue cutoff, `$2` the next check it sets,
/// `$3` the notification queue. Public for the benchmark, which explains it.
pub const SWEEP_OVERDUE_SQL: &str = r#"WITH queued AS MATERIALIZED (
               SELECT substring(encode(job, 'escape') FROM '"notification_id":\s*([0-9]+)')::bigint AS id
               FROM apalis.jobs
               WHERE job_type = $3 AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts)) AND run_at <= now())
           UPDATE notifications SET next_check_at = $2
           WHERE id IN (SELECT n.id FROM notifications n
                        WHERE n.status IN ('pending', 'processing') AND n.next_check_at < $1
                          AND NOT EXISTS (SELECT 1 FROM queued q WHERE q.id = n.id)
                        ORDER BY n.next_check_at LIMIT 5000 FOR UPDATE OF n SKIP LOCKED)
           RETURNING id, priority"#;

/// The sweep's safety net: open notifications whose worker should have acted on them more than
/// `grace` ago, and whose job is not still waiting in the queue, get a new job. Returns how many.
///
/// A notification whose job is queued but not yet fetched is late because the workers are
/// behind, not lost: a second job would only add to the backlog (up to 5,000 per sweep, every
/// 10 s, while a large burst drains). The ids of the jobs due and not yet fetched (the backlog,
/// through apalis's fetch index; jobs due later are not read) are taken from their payloads once
/// per sweep, with a pattern that cannot fail on a malformed payload. Jobs already
/// fetched (held for their due time or in flight, at most two batches per worker) are not
/// excluded: a second job for one of those finds its deliveries claimed and does nothing.
pub async fn sweep_overdue(pool: &PgPool, now: DateTime<Utc>, grace: Duration) -> Result<u64, sqlx::Error> {
    let cutoff = now - chrono::Duration::from_std(grace).expect("fits");
    let mut tx = pool.begin().await?;
    let rows: Vec<(i64, i16)> = sqlx::query_as(SWEEP_OVERDUE_SQL)
        .bind(cutoff)
        .bind(now + chrono::Duration::minutes(1))
        .bind(QUEUE_NOTIFICATIONS)
        .fetch_all(&mut *tx)
        .await?;
    for (id, priority) in &rows {
        requeue(&mut tx, *id, *priority, now, now).await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient() -> Recipient {
        Recipient {
            email: "s@example.com".into(),
            phone: Some("+447700900123".into()),
            first_name: "Sam".into(),
            last_name: "Student".into(),
            timezone: "Europe/London".into(),
            email_on: true,
            sms_on: true,
            push_on: true,
            quiet_start: None,
            quiet_end: None,
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn first_policy_falls_to_sms_without_devices() {
        let p = plan(
            Policy::First,
            &[Channel::Push, Channel::Sms, Channel::Email],
            0,
            &recipient(),
            &[],
            t("2026-03-03T12:00:00Z"),
            None,
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].skip.as_deref(), Some("no active push device"));
        assert_eq!(p[1].channel, Channel::Sms);
        assert!(p[1].skip.is_none());
    }

    #[test]
    fn quiet_hours_hold_or_divert() {
        let mut r = recipient();
        r.quiet_start = NaiveTime::from_hms_opt(22, 0, 0);
        r.quiet_end = NaiveTime::from_hms_opt(7, 0, 0);
        let dev = Device {
            id: 1,
            push_endpoint: "https://p/1".into(),
            p256dh: String::new(),
            auth: String::new(),
        };
        let now = t("2026-03-03T23:00:00Z");
        let held = plan(
            Policy::First,
            &[Channel::Push, Channel::Sms, Channel::Email],
            0,
            &r,
            std::slice::from_ref(&dev),
            now,
            Some(t("2026-03-04T12:00:00Z")),
        );
        assert_eq!(held[0].hold_until, Some(t("2026-03-04T07:00:00Z")));
        let diverted = plan(
            Policy::First,
            &[Channel::Push, Channel::Sms, Channel::Email],
            0,
            &r,
            &[dev],
            now,
            Some(t("2026-03-04T06:30:00Z")),
        );
        assert_eq!(diverted.last().unwrap().channel, Channel::Email);
        assert!(diverted[..diverted.len() - 1].iter().all(|p| p.skip.is_some()));
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        assert!(backoff(1, b, m, None) <= Duration::from_millis(1200));
        assert!(backoff(4, b, m, None) >= Duration::from_millis(6400));
        assert!(backoff(30, b, m, None) <= m);
        assert!(backoff(1, b, m, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }
}
