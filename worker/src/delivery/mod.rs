//! Deliveries: turning notifications into channel attempts, and recording every one. The one
//! owner of `notification_deliveries` and `delivery_attempt_log` (with the successful attempts
//! kept on their deliveries, every attempt: the view `delivery_attempts`), of device disabling
//! (`user_devices.active`), and of a notification's status once a worker acts on it. Every job
//! — the common new notification and every uncommon case — takes the same way:
//!
//! 1. [`load`]: the batch's notifications with recipients, preferences, devices and existing
//!    deliveries, in three statements.
//! 2. [`plan`]: what each job means (`plan::decide`: deliver, cancel, expire, later — an
//!    `Applicable` decision — or a wait, which the drain holds and decides again) and
//!    which deliveries a policy, preferences, addresses, devices and quiet hours give
//!    (`plan::plan`). No I/O.
//! 3. `record::apply`: writes the decisions of a chunk of jobs in one transaction (a pure step
//!    turns them into a plan of writes, then one step per statement group writes it). New
//!    deliveries to send are inserted `sending`, naming the worker and job sending attempt 1
//!    (the insert is the claim: `ON CONFLICT DO NOTHING` lets one worker win); due ones are claimed by a conditional
//!    UPDATE; skipped, held, cancelled and expired ones are written as such; jobs with nothing
//!    to send are acknowledged in the same transaction. The drain claims a chunk only when it
//!    has room to send all of it at once, so what a crash leaves `sending` is what was in flight.
//! 4. [`message`]: each claimed delivery is rendered and handed to its channel.
//! 5. `record::record`: the single recorder of send outcomes. One transaction per batch of
//!    results: delivery states, attempts (written once, with the result; a success stays on its
//!    delivery's row, any other outcome is a row of the attempt log), devices gone, retry
//!    jobs, the next stage of a `first` policy (a job the planner turns into that stage),
//!    notification states, and the acknowledgement of the jobs whose deliveries are all recorded.
//! 6. Provider reports: a job naming a receipt (`DeliverJob::receipt_id`, kept by
//!    `dashlight_core::receipts` when a status callback or a bounce arrives) is loaded with its
//!    report (`load::receipts`), planned (`plan::receipt`: only a `sent` delivery moves, to
//!    `delivered` or `undelivered`, never back) and applied by the recorder (`receipt`, from
//!    `record::apply`): an `undelivered` under `first` reopens the notification for its next
//!    channel. The planner also skips suppressed addresses and numbers and per-kind email
//!    opt-outs (`suppressed`, `opted_out`, `unsubscribed`).
//! 7. [`sweep`]: the safety net: deliveries left `sending` by a dead worker are recorded
//!    `interrupted` and retried (at once when the dead worker's jobs are rescued, after
//!    [`SENDING_TIMEOUT`] otherwise), and open notifications whose job was lost get a new one.
//!
//! A single job is a batch of one. [`crate::drain`] only fetches, holds jobs until due,
//! dispatches them here and hands results to the recorder.
//!
//! **The crash window.** Between the provider accepting a message and the recorder writing
//! `sent`, a crash leaves the delivery `sending`. Nothing re-sends it silently: it is recorded
//! `interrupted` ("the provider may have accepted it") and retried, so the recipient may get
//! that one message twice, and the operator sees why in its attempts.

pub mod load;
pub mod message;
pub mod plan;
mod receipt;
pub mod record;
pub mod sweep;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use dashlight_core::{
    Clock,
    kinds::{Channel, Kind, Policy},
    states::{DeliveryStatus, NotificationStatus},
    suppressions,
};
use serde_json::Value;
use sqlx::PgPool;

pub use sweep::{SENDING_TIMEOUT, SWEEP_OVERDUE_SQL, recover_stuck, sweep_overdue};

use crate::{
    channels::{email::EmailSender, push::PushSender, sms::SmsSender},
    render::Renderer,
};

/// Retry and identity settings of the pipeline.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Attempts per delivery before `dead`.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay (also the cap on a provider's `Retry-After`).
    pub retry_max: Duration,
    /// School name for templates.
    pub school_name: String,
    /// School time zone.
    pub school_tz: Tz,
    /// The name of this worker (the queue's lock holder and the attempt records' `worker`).
    pub worker_name: String,
}

pub(crate) type Settings = DeliverySettings;

impl DeliverySettings {
    /// The recipient of a school-facing notification (no user: the school's own address).
    pub(crate) fn school_recipient(&self, n: &NotificationRow) -> Recipient {
        Recipient {
            email: n.recipient_email.clone().unwrap_or_default(),
            phone: None,
            first_name: self.school_name.clone(),
            last_name: String::new(),
            timezone: self.school_tz.name().to_owned(),
            email_on: true,
            sms_on: false,
            push_on: false,
            quiet_start: None,
            quiet_end: None,
            email_opted_out: false,
            email_suppressed: None,
            sms_suppressed: None,
        }
    }
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

/// A notification as the planner and the channels see it.
#[derive(Debug, Clone)]
pub(crate) struct NotificationRow {
    pub(crate) id: i64,
    pub(crate) user_id: Option<i64>,
    pub(crate) recipient_email: Option<String>,
    pub(crate) kind: Kind,
    pub(crate) channels: Vec<Channel>,
    pub(crate) policy: Policy,
    pub(crate) data: Value,
    pub(crate) booking_id: Option<i64>,
    pub(crate) due_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) status: NotificationStatus,
    pub(crate) priority: i16,
}

/// Who a notification goes to, with their preferences.
#[derive(Debug, Clone)]
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
    /// They turned this notification's kind off on email (`email_opt_outs`).
    pub(crate) email_opted_out: bool,
    /// Their address is suppressed (a bounce), and why.
    pub(crate) email_suppressed: Option<suppressions::Reason>,
    /// Their number is suppressed (STOP, Twilio 21610), and why.
    pub(crate) sms_suppressed: Option<suppressions::Reason>,
}

impl Recipient {
    /// Why nothing may be sent to them on `channel` whatever their preferences: a suppressed
    /// address or number (`suppressed` / `opted_out`), or this kind turned off on email
    /// (`unsubscribed`).
    pub(crate) fn blocked(&self, channel: Channel) -> Option<&'static str> {
        match channel {
            Channel::Email => self
                .email_suppressed
                .map(suppressions::Reason::skip_reason)
                .or(self.email_opted_out.then_some("unsubscribed")),
            Channel::Sms => self.sms_suppressed.map(suppressions::Reason::skip_reason),
            Channel::Push => None,
        }
    }
}

/// An active push subscription.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub(crate) id: i64,
    pub(crate) push_endpoint: String,
    pub(crate) p256dh: String,
    pub(crate) auth: String,
}

/// A delivery as stored.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryRow {
    pub(crate) id: i64,
    pub(crate) channel: Channel,
    pub(crate) status: DeliveryStatus,
    pub(crate) next_attempt_at: Option<DateTime<Utc>>,
}

/// A notification with everything planning and sending it needs.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) n: NotificationRow,
    pub(crate) recipient: Recipient,
    pub(crate) devices: Vec<Device>,
    /// Its deliveries so far, oldest first.
    pub(crate) deliveries: Vec<DeliveryRow>,
}
