//! The queue contract: queue names, job payloads and [`NewJob`]. The statements that put jobs
//! into apalis's table (and every other statement on it) live in [`crate::queue`]; [`enqueue`]
//! is re-exported here for producers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Queue of notification deliveries.
pub const QUEUE_NOTIFICATIONS: &str = "dashlight.notifications";
/// Queue of periodic work fired by the scheduler.
pub const QUEUE_PERIODIC: &str = "dashlight.periodic";
/// Every queue the workers drain.
pub const QUEUES: [&str; 2] = [QUEUE_NOTIFICATIONS, QUEUE_PERIODIC];

/// Attempts apalis gives a job before it is `Killed`. Delivery retries are ours (each retry is a
/// new job at its backoff time), so a job only fails when its handler hit an unexpected error.
pub const JOB_MAX_ATTEMPTS: i32 = 5;

/// Process one notification: plan its deliveries and send what is due.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliverJob {
    /// `notifications.id`.
    pub notification_id: i64,
    /// Set by an operator's retry: this delivery is put back on its way even if failed or dead.
    #[serde(default)]
    pub retry_delivery_id: Option<i64>,
    /// Set by a provider's report (`delivery_receipts.id`, [`crate::receipts`]): the worker
    /// applies it to its delivery (`delivered` / `undelivered`, and a `first` policy's next
    /// channel after `undelivered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<i64>,
    /// Set by an operator's cancel of the notification's job ([`crate::queue::cancel_job`]):
    /// the worker records the notification `cancelled` with this reason and closes its open
    /// deliveries, instead of delivering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
}

/// Periodic work, fired once per tick across scheduler replicas.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum PeriodicTask {
    /// Re-enqueue notifications whose job should have run (safety net) and recover deliveries
    /// stuck in `sending` after a crash.
    ReminderSweep,
    /// Expand weekly series into bookings over the horizon.
    RecurringBookings,
    /// Issue invoices for successful payments without one.
    Invoices,
    /// Recompute daily rollups of recent days.
    AnalyticsRollup,
    /// Send instructors their 07:00 agenda.
    DailyAgenda,
    /// Driving-test reminders 7 days and 1 day before.
    TestReminders,
    /// Follow-ups for leads with no interaction for 7 days.
    CrmFollowUp,
    /// Delete finished jobs older than the retention.
    PruneJobs,
    /// Purge deliveries, attempts, receipts and inbound emails past `RETENTION_DELIVERIES`, and
    /// invoices and payments past `RETENTION_INVOICES`, in small batches.
    Retention,
}

impl PeriodicTask {
    /// Every periodic task.
    pub const ALL: [PeriodicTask; 9] = [
        PeriodicTask::ReminderSweep,
        PeriodicTask::RecurringBookings,
        PeriodicTask::Invoices,
        PeriodicTask::AnalyticsRollup,
        PeriodicTask::DailyAgenda,
        PeriodicTask::TestReminders,
        PeriodicTask::CrmFollowUp,
        PeriodicTask::PruneJobs,
        PeriodicTask::Retention,
    ];

    /// Stable name (tick claims, config variables, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodicTask::ReminderSweep => "reminder_sweep",
            PeriodicTask::RecurringBookings => "recurring_bookings",
            PeriodicTask::Invoices => "invoices",
            PeriodicTask::AnalyticsRollup => "analytics_rollup",
            PeriodicTask::DailyAgenda => "daily_agenda",
            PeriodicTask::TestReminders => "test_reminders",
            PeriodicTask::CrmFollowUp => "crm_follow_up",
            PeriodicTask::PruneJobs => "prune_jobs",
            PeriodicTask::Retention => "retention",
        }
    }
}

/// A periodic job: which task, for which tick.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeriodicJob {
    /// What to run.
    pub task: PeriodicTask,
    /// The tick (scheduled time) it was fired for; jobs use it as their "now".
    pub tick: DateTime<Utc>,
}

/// The real time at which a job should run for something due at `at` on a clock that reads
/// `now` (an injected clock in tests may stand anywhere): `None` = at once.
pub fn real_run_at(at: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (at > now).then(|| Utc::now() + (at - now))
}

/// One job to insert.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// Queue name (apalis `job_type`).
    pub queue: &'a str,
    /// JSON payload.
    pub payload: serde_json::Value,
    /// When it may run; `None` = now.
    pub run_at: Option<DateTime<Utc>>,
    /// Higher runs first.
    pub priority: i32,
    /// A second job with the same queue and key is not inserted.
    pub idempotency_key: Option<String>,
}

impl<'a> NewJob<'a> {
    /// A job for `queue` with `payload`, due now, priority 0.
    pub fn new<T: Serialize>(queue: &'a str, payload: &T) -> Self {
        NewJob {
            queue,
            payload: serde_json::to_value(payload).expect("job payloads serialize"),
            run_at: None,
            priority: 0,
            idempotency_key: None,
        }
    }

    /// Sets the real due time.
    pub fn run_at(mut self, t: DateTime<Utc>) -> Self {
        self.run_at = Some(t);
        self
    }

    /// Runs when `at` comes on a clock that now reads `now` (see [`real_run_at`]).
    pub fn due(mut self, at: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        self.run_at = real_run_at(at, now);
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

pub use crate::queue::enqueue;
