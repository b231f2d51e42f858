//! The queue contract: queue names, job payloads ([`DeliverJob`], grouped by [`delivery_jobs`]) and [`NewJob`]. The statements that put jobs
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

/// The most notifications one [`DeliverJob`] carries. Notifications written together, due at the
/// same instant with the same priority, share jobs of up to this many: one job row (an insert, a
/// claim and a delete) then serves a hundred notifications instead of one.
pub const NOTIFICATIONS_PER_JOB: usize = 100;

/// Process notifications: plan their deliveries and send what is due. A job names one
/// notification (`notification_id`, the form of every job that acts on one: an operator's retry,
/// a provider's report, a cancel) or several written and due together (`notification_ids`).
/// Build one with its constructors; the drain handles each notification of a job on its own
/// (a unit), and the job is finished when every unit is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliverJob {
    /// `notifications.id` of a job about one notification (0 when `notification_ids` is used).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub notification_id: i64,
    /// The notifications of a grouped job (empty for a job about one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notification_ids: Vec<i64>,
    /// Set by an operator's retry: this delivery is put back on its way even if failed or dead.
    #[serde(default)]
    pub retry_delivery_id: Option<i64>,
    /// Set by a provider's report (`delivery_receipts.id`, [`crate::receipts`]): the worker
    /// applies it to its delivery (`delivered` / `undelivered`, and a `first` policy's next
    /// channel after `undelivered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<i64>,
    /// Set by an operator's cancel of the notification or of its job
    /// ([`crate::notify::cancel_one`], [`crate::queue::cancel_job`]): the worker records the
    /// notification `cancelled` with this reason and closes its open deliveries, instead of
    /// delivering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl DeliverJob {
    /// Deliver one notification (plan it, send what is due).
    pub fn deliver(notification_id: i64) -> Self {
        DeliverJob {
            notification_id,
            ..Default::default()
        }
    }

    /// Deliver these notifications (one job for all of them; one id gives the one-notification form).
    pub fn deliver_all(ids: &[i64]) -> Self {
        match ids {
            [one] => DeliverJob::deliver(*one),
            _ => DeliverJob {
                notification_ids: ids.to_vec(),
                ..Default::default()
            },
        }
    }

    /// Put one delivery of the notification back on its way (an operator's retry).
    pub fn retry(notification_id: i64, delivery_id: i64) -> Self {
        DeliverJob {
            retry_delivery_id: Some(delivery_id),
            ..DeliverJob::deliver(notification_id)
        }
    }

    /// Apply a provider's report to the notification's delivery.
    pub fn receipt(notification_id: i64, receipt_id: i64) -> Self {
        DeliverJob {
            receipt_id: Some(receipt_id),
            ..DeliverJob::deliver(notification_id)
        }
    }

    /// Record the notifications `cancelled` with `reason` (through the worker's recorder, the one
    /// writer of delivery state).
    pub fn cancel(ids: &[i64], reason: impl Into<String>) -> Self {
        DeliverJob {
            cancel: Some(reason.into()),
            ..DeliverJob::deliver_all(ids)
        }
    }

    /// The notifications this job is about, in order.
    pub fn notifications(&self) -> Vec<i64> {
        if self.notification_ids.is_empty() {
            vec![self.notification_id]
        } else {
            self.notification_ids.clone()
        }
    }

    /// The job about one of its notifications (what the drain handles as a unit).
    pub fn unit(&self, notification_id: i64) -> Self {
        DeliverJob {
            notification_id,
            notification_ids: Vec::new(),
            ..self.clone()
        }
    }
}

/// The jobs that deliver `runs` (notification, when, priority): notifications due at the same
/// instant with the same priority share jobs of up to [`NOTIFICATIONS_PER_JOB`]. `now` is the
/// clock the due times are read on ([`real_run_at`]). Returns the payloads with their due time
/// and priority, in the order of first appearance.
pub fn delivery_jobs(runs: &[(i64, DateTime<Utc>, i32)], cancel: Option<&str>) -> Vec<(DeliverJob, DateTime<Utc>, i32)> {
    type Key = (DateTime<Utc>, i32);
    let mut groups: Vec<(Key, Vec<i64>)> = Vec::new();
    let mut index: std::collections::HashMap<Key, usize> = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for &(id, at, priority) in runs {
        let key = (at, priority);
        if !seen.insert((id, key)) {
            continue;
        }
        let i = match index.get(&key) {
            Some(&i) if groups[i].1.len() < NOTIFICATIONS_PER_JOB => i,
            _ => {
                groups.push((key, Vec::new()));
                index.insert(key, groups.len() - 1);
                groups.len() - 1
            }
        };
        groups[i].1.push(id);
    }
    groups
        .into_iter()
        .map(|((at, priority), ids)| {
            let job = match cancel {
                Some(why) => DeliverJob::cancel(&ids, why),
                None => DeliverJob::deliver_all(&ids),
            };
            (job, at, priority)
        })
        .collect()
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
    /// invoices and payments past `RETENTION_INVOICES`, in small batches; delete the files whose
    /// deletion is still requested (`crate::files`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_of_one_notification_keeps_the_one_notification_form() {
        let one = serde_json::to_value(DeliverJob::deliver(7)).unwrap();
        assert_eq!(one, serde_json::json!({"notification_id": 7, "retry_delivery_id": null}));
        let many = serde_json::to_value(DeliverJob::deliver_all(&[7, 8])).unwrap();
        assert_eq!(many, serde_json::json!({"notification_ids": [7, 8], "retry_delivery_id": null}));
        for v in [one, many] {
            let back: DeliverJob = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(back).unwrap(), v);
        }
        // A payload written before jobs carried several notifications still reads.
        let old: DeliverJob = serde_json::from_str(r#"{"notification_id": 9, "retry_delivery_id": null}"#).unwrap();
        assert_eq!(old.notifications(), vec![9]);
    }

    #[test]
    fn notifications_due_together_share_jobs_of_at_most_a_hundred() {
        let t = Utc::now();
        let later = t + chrono::Duration::seconds(1);
        let mut runs: Vec<(i64, DateTime<Utc>, i32)> = (0..250).map(|i| (i, t, 20)).collect();
        runs.push((1000, later, 20));
        runs.push((1001, t, 10));
        runs.push((5, t, 20)); // a second run of one notification adds nothing
        let jobs = delivery_jobs(&runs, None);
        let sizes: Vec<(usize, i32)> = jobs.iter().map(|(j, _, p)| (j.notifications().len(), *p)).collect();
        assert_eq!(sizes, [(100, 20), (100, 20), (50, 20), (1, 20), (1, 10)]);
        assert_eq!(jobs[3].1, later);
        let cancels = delivery_jobs(&[(1, t, 0), (2, t, 0)], Some("why"));
        assert_eq!(cancels[0].0, DeliverJob::cancel(&[1, 2], "why"));
    }
}
