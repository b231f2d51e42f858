//! The notification queue's batched drain.
//!
//! One loop per worker process fetches batches of jobs ([`JobQueue::fetch`]) and hands each to a
//! task; a single recorder task writes what the sends produced. Per batch of `n` notifications
//! the database sees a handful of statements instead of ~11 transactions per notification:
//!
//! 1. **fetch**: one `UPDATE … RETURNING` claims the jobs (due now or within the look-ahead;
//!    those are held in memory until their due time, so reminders leave on time).
//! 2. **load**: notifications with their recipients and preferences, then the recipients' push
//!    devices: two queries for the whole batch.
//! 3. **claim**: one transaction inserts every planned delivery, the ones to send already
//!    `sending` (attempt 1) and the unusable ones `skipped`; `ON CONFLICT DO NOTHING` plus
//!    `RETURNING` means a delivery is sent only by the worker whose insert created it.
//! 4. **send**: each claimed delivery is rendered and sent, `WORKER_CONCURRENCY` at a time.
//! 5. **record**: the recorder takes every result that has arrived since its last write and
//!    records them in one transaction: delivery states, attempt rows, devices, retry jobs,
//!    analytics events, notification states and the acknowledgement of the jobs whose
//!    deliveries are all recorded. A database error keeps the results in memory and retries;
//!    nothing is dropped.
//!
//! Everything that is not the common case — an operator's retry, a notification that already has
//! deliveries (a retry, a hold, the sweep's re-run), one cancelled, expired, held by quiet hours or
//! not yet due — goes through [`Pipeline::process`], one job at a time, exactly as before.
//! The crash window is unchanged: a delivery is `sending` from its claim until its result is
//! recorded, and the sweep's [`crate::delivery::recover_stuck`] records an `interrupted` attempt
//! for any left so by a dead worker.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, NaiveTime, Utc};
use dashlight_core::{
    jobs::{self, DeliverJob, NewJob, QUEUE_NOTIFICATIONS},
    kinds::{Channel, Kind, Policy},
};
use futures::FutureExt as _;
use serde_json::json;
use sqlx::{FromRow, PgPool};
use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinSet,
};

use crate::{
    channels::{SendError, Sent},
    delivery::{self, DeliveryRow, Device, NotificationRow, Pipeline, PipelineError, Recipient, Resolution},
    queue::{FetchedJob, JobOutcome, JobQueue},
};

/// How the drain runs.
#[derive(Debug, Clone)]
pub struct DrainSettings {
    /// Jobs per fetch.
    pub batch_size: usize,
    /// Sends in flight at once.
    pub concurrency: usize,
    /// How often an idle drain looks for jobs that became due (LISTEN/NOTIFY wakes it at once
    /// for jobs due on insert); jobs due within this much are fetched early and held.
    pub poll_interval: Duration,
    /// A worker whose heartbeat is older than this has its jobs rescued.
    pub stale_after: Duration,
    /// How long a graceful stop waits for in-flight work.
    pub shutdown_timeout: Duration,
}

/// Heartbeat period (the stale threshold is six of them).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// The drain of the notification queue for one worker process.
pub struct Drain {
    queue: JobQueue,
    pipeline: Pipeline,
    settings: DrainSettings,
}

/// A claimed delivery, ready to send.
struct Claimed {
    n: Arc<Loaded>,
    delivery: DeliveryRow,
    job_id: String,
    max_attempts: i32,
}

/// A notification with what planning and sending it needs.
struct Loaded {
    n: NotificationRow,
    kind: Kind,
    recipient: Recipient,
    devices: Vec<Device>,
}

/// A send's result, on its way to the recorder.
struct Attempted {
    claimed: Claimed,
    channel: Channel,
    finished: DateTime<Utc>,
    result: Result<Sent, SendError>,
}

enum Record {
    Delivery(Box<Attempted>),
    Job(String, JobOutcome),
}

/// What the claim step made of a batch.
#[derive(Default)]
struct Prepared {
    /// Jobs for [`Pipeline::process`].
    slow: Vec<(FetchedJob, DeliverJob)>,
    /// Deliveries to send.
    sends: Vec<Claimed>,
    /// Jobs of the fast path (acknowledged once their sends are recorded).
    fast_jobs: Vec<String>,
}

#[derive(FromRow)]
struct BatchRow {
    #[sqlx(flatten)]
    n: NotificationRow,
    u_email: Option<String>,
    u_phone: Option<String>,
    u_first_name: Option<String>,
    u_last_name: Option<String>,
    u_timezone: Option<String>,
    email_on: bool,
    sms_on: bool,
    push_on: bool,
    quiet_start: Option<NaiveTime>,
    quiet_end: Option<NaiveTime>,
    has_deliveries: bool,
}

#[derive(FromRow)]
struct DeviceRow {
    user_id: i64,
    #[sqlx(flatten)]
    device: Device,
}

impl Drain {
    /// A drain of the notification queue as the worker `worker`.
    pub fn new(pool: PgPool, pipeline: Pipeline, worker: &str, settings: DrainSettings) -> Self {
        Drain {
            queue: JobQueue::new(pool, QUEUE_NOTIFICATIONS, worker),
            pipeline,
            settings,
        }
    }

    /// Runs until `shutdown` resolves, then stops fetching and lets in-flight work finish (up to
    /// the shutdown timeout); jobs still held for their due time are put back.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let this = Arc::new(self);
        let (stop_tx, stop) = watch::channel(false);
        let mut shutdown = std::pin::pin!(shutdown);
        // Register (the database may be away at start: keep trying until it is back or we stop).
        loop {
            match this.queue.register().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(worker = this.queue.worker(), error = %e, "cannot register the worker; retrying in 1 s");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let wake = Arc::new(Notify::new());
        let background = [
            tokio::spawn(heartbeat(this.queue.clone(), this.settings.stale_after, stop.clone())),
            tokio::spawn(listen(
                this.pipeline.pool.clone(),
                this.queue.queue().to_owned(),
                wake.clone(),
                stop.clone(),
            )),
        ];
        // Jobs fetched and not yet acknowledged: at most two batches, so a crash or a stop has a
        // bounded amount of work in flight.
        let room = Arc::new(Semaphore::new(this.settings.batch_size * 2));
        let sends = Arc::new(Semaphore::new(this.settings.concurrency));
        let (tx, rx) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(recorder(this.clone(), rx, room.clone()));
        let mut tasks = JoinSet::new();
        let (held_tx, mut held_rx) = mpsc::unbounded_channel::<Vec<FetchedJob>>();
        loop {
            while tasks.try_join_next().is_some() {}
            // Wait for room (or the stop).
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                permit = room.acquire() => drop(permit),
            }
            let limit = room.available_permits().min(this.settings.batch_size);
            let t0 = std::time::Instant::now();
            let fetched = match this.queue.fetch(limit, this.settings.poll_interval).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(queue = this.queue.queue(), error = %e, "fetching jobs failed; retrying in 1 s");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            };
            let got = fetched.len();
            if got > 0 {
                tracing::debug!(got, limit, ms = t0.elapsed().as_millis() as u64, "fetched jobs");
                room.try_acquire_many(got as u32).expect("fetched within the room").forget();
                metrics::counter!("dashlight_jobs_fetched_total", "queue" => QUEUE_NOTIFICATIONS).increment(got as u64);
                dispatch(&this, fetched, &tx, &sends, &held_tx, &mut tasks, stop.clone());
            }
            if got < limit {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(this.settings.poll_interval) => {}
                }
            }
        }
        tracing::info!(
            worker = this.queue.worker(),
            in_flight = tasks.len(),
            "drain stopping: finishing in-flight notifications"
        );
        let _ = stop_tx.send(true);
        let finished = tokio::time::timeout(this.settings.shutdown_timeout, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tracing::warn!("in-flight notifications did not finish within the shutdown timeout; the sweep will recover them");
            tasks.abort_all();
        }
        // Jobs still held for a due time that did not come: back to the queue.
        drop(held_tx);
        let mut held = Vec::new();
        while let Some(jobs) = held_rx.recv().await {
            held.extend(jobs.into_iter().map(|j| j.id));
        }
        if !held.is_empty() {
            match this.queue.release(&held).await {
                Ok(n) => tracing::info!(released = n, "jobs not yet due put back on the queue"),
                Err(e) => tracing::warn!(error = %e, "could not put held jobs back; they return after the heartbeat timeout"),
            }
        }
        drop(tx);
        if tokio::time::timeout(this.settings.shutdown_timeout, recorder).await.is_err() {
            tracing::warn!("the last results could not be recorded within the shutdown timeout; the sweep will recover them");
        }
        for task in background {
            task.abort();
        }
        Ok(())
    }

    /// One group of jobs due at the same moment: claim, send, hand the results to the recorder.
    async fn handle(self: Arc<Self>, jobs: Vec<FetchedJob>, out: mpsc::UnboundedSender<Record>, sends: Arc<Semaphore>) {
        let mut candidates = Vec::with_capacity(jobs.len());
        let mut slow = Vec::new();
        for job in jobs {
            match serde_json::from_slice::<DeliverJob>(&job.payload) {
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "job payload does not decode: giving up on it");
                    let _ = out.send(Record::Job(job.id, JobOutcome::Killed(format!("job payload does not decode: {e}"))));
                }
                Ok(d) if d.retry_delivery_id.is_some() => slow.push((job, d)),
                Ok(d) => candidates.push((job, d)),
            }
        }
        let t0 = std::time::Instant::now();
        let n_candidates = candidates.len();
        let prepared = self.prepare(candidates).await;
        tracing::debug!(jobs = n_candidates, ms = t0.elapsed().as_millis() as u64, "prepared");
        let prepared = match prepared {
            Ok(p) => p,
            Err((jobs, e)) => {
                tracing::warn!(jobs = jobs.len(), error = %e, "claiming a batch failed; its jobs will be fetched again");
                for job in jobs {
                    let retry_in = job_backoff(job.attempts);
                    let _ = out.send(Record::Job(
                        job.id,
                        JobOutcome::Failed {
                            error: e.to_string(),
                            retry_in,
                        },
                    ));
                }
                Prepared::default()
            }
        };
        slow.extend(prepared.slow);
        // A fast job is acknowledged as soon as the last of its deliveries has gone to the
        // recorder (same channel, so in the same write as that delivery or a later one), not
        // when the whole group is done: one slow send holds back only its own job.
        let mut open: HashMap<String, Arc<AtomicUsize>> = prepared
            .fast_jobs
            .into_iter()
            .map(|id| (id, Arc::new(AtomicUsize::new(0))))
            .collect();
        for claimed in &prepared.sends {
            if let Some(c) = open.get(&claimed.job_id) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        open.retain(|id, c| {
            let idle = c.load(Ordering::Relaxed) == 0;
            if idle {
                let _ = out.send(Record::Job(id.clone(), JobOutcome::Done));
            }
            !idle
        });
        let mut set = JoinSet::new();
        for claimed in prepared.sends {
            let permit = sends.clone().acquire_owned().await.expect("never closed");
            let (this, out) = (self.clone(), out.clone());
            let ack = open.get(&claimed.job_id).cloned();
            set.spawn(async move {
                let job_id = claimed.job_id.clone();
                let attempted = this.send(claimed).await;
                drop(permit);
                let _ = out.send(Record::Delivery(Box::new(attempted)));
                if let Some(c) = ack
                    && c.fetch_sub(1, Ordering::AcqRel) == 1
                {
                    let _ = out.send(Record::Job(job_id, JobOutcome::Done));
                }
            });
        }
        for (job, d) in slow {
            let permit = sends.clone().acquire_owned().await.expect("never closed");
            let (this, out) = (self.clone(), out.clone());
            set.spawn(async move {
                let run = std::panic::AssertUnwindSafe(this.pipeline.process(&d, &job.id))
                    .catch_unwind()
                    .await;
                drop(permit);
                let outcome = match run {
                    Ok(Ok(())) => JobOutcome::Done,
                    Ok(Err(PipelineError::Poison(m))) => {
                        tracing::error!(job = %job.id, notification = d.notification_id, error = %m, "job can never succeed: giving up");
                        JobOutcome::Killed(m)
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(job = %job.id, notification = d.notification_id, error = %e, "job failed, it will be fetched again");
                        JobOutcome::Failed {
                            error: e.to_string(),
                            retry_in: job_backoff(job.attempts),
                        }
                    }
                    Err(_) => {
                        tracing::error!(job = %job.id, notification = d.notification_id, "job panicked");
                        JobOutcome::Failed {
                            error: "the handler panicked".into(),
                            retry_in: job_backoff(job.attempts),
                        }
                    }
                };
                let _ = out.send(Record::Job(job.id, outcome));
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Loads, plans and claims the common case; routes the rest to the slow path. On a database
    /// error, returns the jobs it could not handle.
    async fn prepare(&self, candidates: Vec<(FetchedJob, DeliverJob)>) -> Result<Prepared, (Vec<FetchedJob>, sqlx::Error)> {
        let mut prepared = Prepared::default();
        if candidates.is_empty() {
            return Ok(prepared);
        }
        let ids: Vec<i64> = candidates.iter().map(|(_, d)| d.notification_id).collect();
        let loaded = match self.load(&ids).await {
            Ok(l) => l,
            Err(e) => return Err((candidates.into_iter().map(|(j, _)| j).collect(), e)),
        };
        let now = self.pipeline.clock.now();
        let max_attempts = self.pipeline.settings.max_attempts as i32;
        // Rows to insert: (job, loaded, planned delivery).
        let mut plans = Vec::new();
        let mut planned_jobs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut loaded = loaded;
        for (job, d) in candidates {
            let fast = seen.insert(d.notification_id)
                && loaded
                    .get(&d.notification_id)
                    .is_some_and(|l| l.n.status == "pending" && l.n.due_at <= now && l.n.expires_at.is_none_or(|e| e > now));
            if !fast {
                prepared.slow.push((job, d));
                continue;
            }
            let l = loaded.remove(&d.notification_id).expect("checked above");
            let channels: Vec<Channel> = l.n.channels.iter().filter_map(|c| Channel::parse(c)).collect();
            let policy = if l.n.policy == "first" { Policy::First } else { Policy::All };
            let planned = delivery::plan(policy, &channels, 0, &l.recipient, &l.devices, now, delivery::lesson_start(&l.n));
            if planned.iter().any(|p| p.hold_until.is_some()) {
                prepared.slow.push((job, d));
                continue;
            }
            let l = Arc::new(l);
            for p in planned {
                plans.push((planned_jobs.len(), l.clone(), p));
            }
            planned_jobs.push((job, l));
        }
        if planned_jobs.is_empty() {
            return Ok(prepared);
        }
        match self.claim(&plans, &planned_jobs, now, max_attempts).await {
            Ok(sends) => {
                prepared.sends = sends;
                prepared.fast_jobs = planned_jobs.into_iter().map(|(j, _)| j.id).collect();
                Ok(prepared)
            }
            Err(e) => {
                let mut failed: Vec<FetchedJob> = planned_jobs.into_iter().map(|(j, _)| j).collect();
                failed.extend(prepared.slow.into_iter().map(|(j, _)| j));
                Err((failed, e))
            }
        }
    }

    /// Notifications with recipient, preferences and devices, for the fast path. Every lookup
    /// is an index probe per notification (`LATERAL … OFFSET 0` keeps the planner from hashing
    /// whole tables when its statistics are stale, as they are right after a burst of inserts),
    /// so the cost follows the batch, not the tables.
    /// (those with
    /// deliveries already, or whose recipient is gone, are left out: the slow path explains).
    async fn load(&self, ids: &[i64]) -> Result<HashMap<i64, Loaded>, sqlx::Error> {
        let pool = &self.pipeline.pool;
        let rows: Vec<BatchRow> = sqlx::query_as(
            "SELECT n.id, n.user_id, n.recipient_email, n.type, n.channels, n.policy, n.data, n.booking_id, n.due_at, n.expires_at,
                    n.status, n.priority,
                    u.email AS u_email, u.phone AS u_phone, u.first_name AS u_first_name, u.last_name AS u_last_name, u.timezone AS u_timezone,
                    coalesce(p.email_notifications, true) AS email_on, coalesce(p.sms_notifications, true) AS sms_on,
                    coalesce(p.push_notifications, true) AS push_on, p.quiet_hours_start AS quiet_start, p.quiet_hours_end AS quiet_end,
                    d.has_deliveries IS NOT NULL AS has_deliveries
             FROM notifications n
             LEFT JOIN LATERAL (SELECT email, phone, first_name, last_name, timezone FROM users WHERE id = n.user_id OFFSET 0) u ON true
             LEFT JOIN LATERAL (SELECT email_notifications, sms_notifications, push_notifications, quiet_hours_start, quiet_hours_end
                                FROM user_preferences WHERE user_id = n.user_id OFFSET 0) p ON true
             LEFT JOIN LATERAL (SELECT true AS has_deliveries FROM notification_deliveries WHERE notification_id = n.id LIMIT 1) d ON true
             WHERE n.id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(pool)
        .await?;
        let users: Vec<i64> = rows.iter().filter_map(|r| r.n.user_id).collect();
        let mut devices: HashMap<i64, Vec<Device>> = HashMap::new();
        if !users.is_empty() {
            let rows: Vec<DeviceRow> = sqlx::query_as(
                "SELECT user_id, id, push_endpoint, p256dh, auth FROM user_devices WHERE user_id = ANY($1) AND active ORDER BY user_id, id",
            )
            .bind(&users)
            .fetch_all(pool)
            .await?;
            for r in rows {
                devices.entry(r.user_id).or_default().push(r.device);
            }
        }
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            if r.has_deliveries {
                continue;
            }
            let Some(kind) = Kind::parse(&r.n.kind) else { continue };
            let recipient = match r.n.user_id {
                None => self.pipeline.school_recipient(&r.n),
                Some(_) => {
                    let (Some(email), Some(first_name), Some(last_name), Some(timezone)) =
                        (r.u_email, r.u_first_name, r.u_last_name, r.u_timezone)
                    else {
                        continue;
                    };
                    Recipient {
                        email,
                        phone: r.u_phone,
                        first_name,
                        last_name,
                        timezone,
                        email_on: r.email_on,
                        sms_on: r.sms_on,
                        push_on: r.push_on,
                        quiet_start: r.quiet_start,
                        quiet_end: r.quiet_end,
                    }
                }
            };
            let devices = r.n.user_id.and_then(|u| devices.get(&u).cloned()).unwrap_or_default();
            out.insert(
                r.n.id,
                Loaded {
                    n: r.n,
                    kind,
                    recipient,
                    devices,
                },
            );
        }
        Ok(out)
    }

    /// The claim: one transaction inserts every planned delivery — those to send as `sending`
    /// (attempt 1), the others `skipped` — and closes the notifications with nothing to send.
    async fn claim(
        &self,
        plans: &[(usize, Arc<Loaded>, delivery::Planned)],
        jobs: &[(FetchedJob, Arc<Loaded>)],
        now: DateTime<Utc>,
        max_attempts: i32,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        let n = plans.len();
        let (mut nids, mut channels, mut targets, mut devices, mut statuses, mut reasons, mut attempts) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (_, l, p) in plans {
            nids.push(l.n.id);
            channels.push(p.channel.as_str());
            targets.push(p.target.as_str());
            devices.push(p.device_id);
            statuses.push(if p.skip.is_some() { "skipped" } else { "sending" });
            reasons.push(p.skip.as_deref());
            attempts.push(if p.skip.is_some() { 0 } else { 1 });
        }
        let mut tx = self.pipeline.pool.begin().await?;
        let (job_nids, job_ids): (Vec<i64>, Vec<&str>) = jobs.iter().map(|(j, l)| (l.n.id, j.id.as_str())).unzip();
        // The deliveries, and for each one to send its attempt 1 as started (job, worker, time),
        // so a worker that dies mid-send leaves an attempt the sweep marks `interrupted`.
        let inserted: Vec<(i64, i64, String, String, Option<i64>, String)> = sqlx::query_as(
            "WITH ins AS (
                 INSERT INTO notification_deliveries (notification_id, channel, target, device_id, status, skip_reason, attempts, max_attempts, sending_since)
                 SELECT t.nid, t.channel, t.target, t.device, t.status, t.reason, t.attempts, $8, CASE WHEN t.status = 'sending' THEN $9::timestamptz END
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::int[])
                      AS t(nid, channel, target, device, status, reason, attempts)
                 ON CONFLICT (notification_id, channel, target) DO NOTHING
                 RETURNING id, notification_id, channel, target, device_id, status),
             att AS (
                 INSERT INTO delivery_attempts (delivery_id, attempt, job_id, worker, started_at)
                 SELECT ins.id, 1, j.job, $12, $9 FROM ins JOIN unnest($10::bigint[], $11::text[]) AS j(nid, job) ON j.nid = ins.notification_id
                 WHERE ins.status = 'sending')
             SELECT id, notification_id, channel, target, device_id, status FROM ins",
        )
        .bind(&nids)
        .bind(&channels)
        .bind(&targets)
        .bind(&devices)
        .bind(&statuses)
        .bind(&reasons)
        .bind(&attempts)
        .bind(max_attempts)
        .bind(now)
        .bind(&job_nids)
        .bind(&job_ids)
        .bind(&self.pipeline.settings.worker_name)
        .fetch_all(&mut *tx)
        .await?;
        // Notifications with nothing to send (every channel skipped) are done now; one whose
        // insert met another worker's rows is left to that worker.
        let mut rows_per: HashMap<i64, (usize, usize, bool)> = HashMap::new();
        for (_, l, _) in plans {
            rows_per.entry(l.n.id).or_default().0 += 1;
        }
        for (_, nid, _, _, _, status) in &inserted {
            let e = rows_per.entry(*nid).or_default();
            e.1 += 1;
            e.2 |= status == "sending";
        }
        let nothing_to_send: Vec<i64> = jobs
            .iter()
            .map(|(_, l)| l.n.id)
            .filter(|id| {
                rows_per
                    .get(id)
                    .is_none_or(|(planned, inserted, sending)| planned == inserted && !sending)
            })
            .collect();
        if !nothing_to_send.is_empty() {
            sqlx::query("UPDATE notifications SET status = 'done' WHERE id = ANY($1) AND status = 'pending'")
                .bind(&nothing_to_send)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;

        let by_id: HashMap<i64, (&FetchedJob, &Arc<Loaded>)> = jobs.iter().map(|(j, l)| (l.n.id, (j, l))).collect();
        let mut sends = Vec::new();
        for (id, nid, channel, target, device_id, status) in inserted {
            let (job, l) = by_id[&nid];
            if status == "skipped" {
                metrics::counter!("dashlight_deliveries_total", "channel" => channel_label(&channel), "outcome" => "skipped").increment(1);
                continue;
            }
            sends.push(Claimed {
                n: (*l).clone(),
                delivery: DeliveryRow {
                    id,
                    channel,
                    target,
                    device_id,
                    status,
                    next_attempt_at: None,
                },
                job_id: job.id.clone(),
                max_attempts,
            });
        }
        for (_, l, p) in plans {
            if let Some(reason) = &p.skip {
                tracing::info!(notification = l.n.id, kind = %l.n.kind, channel = p.channel.as_str(), %reason, "delivery skipped");
            }
        }
        Ok(sends)
    }

    async fn send(&self, claimed: Claimed) -> Attempted {
        let channel = Channel::parse(&claimed.delivery.channel).expect("the schema allows only known channels");
        let l = &claimed.n;
        let result =
            std::panic::AssertUnwindSafe(
                self.pipeline
                    .render_and_send(&l.n, l.kind, &l.recipient, &l.devices, &claimed.delivery, channel),
            )
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(SendError::transient("the send panicked; retrying")));
        Attempted {
            finished: self.pipeline.clock.now(),
            claimed,
            channel,
            result,
        }
    }

    /// Records results and acknowledgements in one transaction.
    async fn record(&self, deliveries: &[Box<Attempted>], jobs: &[(String, JobOutcome)]) -> Result<(), sqlx::Error> {
        let settings = &self.pipeline.settings;
        let res: Vec<Resolution> = deliveries
            .iter()
            .map(|a| delivery::resolve(&a.result, 1, a.claimed.max_attempts, a.finished, settings))
            .collect();
        let mut tx = self.pipeline.pool.begin().await?;
        if !deliveries.is_empty() {
            let ids: Vec<i64> = deliveries.iter().map(|a| a.claimed.delivery.id).collect();
            let statuses: Vec<&str> = res.iter().map(|r| r.status).collect();
            let finished: Vec<DateTime<Utc>> = deliveries.iter().map(|a| a.finished).collect();
            let provider: Vec<Option<&str>> = res.iter().map(|r| r.provider_id.as_deref()).collect();
            let errors: Vec<Option<&str>> = res.iter().map(|r| r.error.as_deref()).collect();
            let next: Vec<Option<DateTime<Utc>>> = res.iter().map(|r| r.next_attempt_at).collect();
            sqlx::query(
                "UPDATE notification_deliveries d
                 SET status = t.status, sent_at = CASE WHEN t.status = 'sent' THEN t.finished ELSE d.sent_at END,
                     provider_message_id = coalesce(t.provider, d.provider_message_id), last_error = t.error,
                     next_attempt_at = t.next, sending_since = NULL
                 FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::timestamptz[])
                      AS t(id, status, finished, provider, error, next)
                 WHERE d.id = t.id AND d.id = ANY($1)",
            )
            .bind(&ids)
            .bind(&statuses)
            .bind(&finished)
            .bind(&provider)
            .bind(&errors)
            .bind(&next)
            .execute(&mut *tx)
            .await?;
            let outcomes: Vec<&str> = res.iter().map(|r| r.outcome).collect();
            let retry_after: Vec<Option<i64>> = res.iter().map(|r| r.retry_after_ms).collect();
            // The claim inserted attempt 1 of every delivery it sent (so a crash leaves it on
            // record); here it is finished.
            sqlx::query(
                "UPDATE delivery_attempts a
                 SET finished_at = t.finished, outcome = t.outcome, error = t.error,
                     provider_message_id = t.provider, retry_after_ms = t.retry_after
                 FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::bigint[])
                      AS t(id, finished, outcome, error, provider, retry_after)
                 WHERE a.delivery_id = t.id AND a.attempt = 1 AND a.delivery_id = ANY($1)",
            )
            .bind(&ids)
            .bind(&finished)
            .bind(&outcomes)
            .bind(&errors)
            .bind(&provider)
            .bind(&retry_after)
            .execute(&mut *tx)
            .await?;

            // Devices: last use (at most once a minute), subscriptions gone.
            let now = self.pipeline.clock.now();
            let used: Vec<i64> = deliveries
                .iter()
                .zip(&res)
                .filter(|(_, r)| r.status == "sent")
                .filter_map(|(a, _)| a.claimed.delivery.device_id)
                .collect();
            if !used.is_empty() {
                sqlx::query(
                    "UPDATE user_devices SET last_used_at = $2 WHERE id = ANY($1) AND (last_used_at IS NULL OR last_used_at < $2 - interval '1 minute')",
                )
                .bind(&used)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            for (a, r) in deliveries.iter().zip(&res).filter(|(_, r)| r.disable_device) {
                if let Some(dev) = a.claimed.delivery.device_id {
                    sqlx::query("UPDATE user_devices SET active = false, disabled_reason = $2 WHERE id = $1")
                        .bind(dev)
                        .bind(&r.error)
                        .execute(&mut *tx)
                        .await?;
                }
            }

            // Jobs: retries at their time; under `first`, a failure moves on to the next channel
            // through the slow path (its job plans the next stage).
            let mut next_jobs = Vec::new();
            let mut next_stage = std::collections::HashSet::new();
            for (a, r) in deliveries.iter().zip(&res) {
                let n = &a.claimed.n.n;
                let job = DeliverJob {
                    notification_id: n.id,
                    retry_delivery_id: None,
                };
                if let Some(at) = r.next_attempt_at {
                    next_jobs.push(
                        NewJob::new(QUEUE_NOTIFICATIONS, &job)
                            .due(at, a.finished)
                            .priority(n.priority as i32),
                    );
                } else if matches!(r.status, "failed" | "dead") && n.policy == "first" && next_stage.insert(n.id) {
                    next_jobs.push(NewJob::new(QUEUE_NOTIFICATIONS, &job).priority(n.priority as i32));
                }
            }
            jobs::enqueue(&mut tx, &next_jobs).await?;

            // Analytics events.
            let events: Vec<(Option<i64>, &str, serde_json::Value, DateTime<Utc>)> = deliveries
                .iter()
                .zip(&res)
                .filter_map(|(a, r)| {
                    let n = &a.claimed.n.n;
                    r.event.map(|e| {
                        let data = json!({"notification_id": n.id, "delivery_id": a.claimed.delivery.id, "kind": n.kind, "channel": a.channel.as_str()});
                        (n.user_id, e, data, a.finished)
                    })
                })
                .collect();
            if !events.is_empty() {
                let users: Vec<Option<i64>> = events.iter().map(|e| e.0).collect();
                let types: Vec<&str> = events.iter().map(|e| e.1).collect();
                let data: Vec<&serde_json::Value> = events.iter().map(|e| &e.2).collect();
                let at: Vec<DateTime<Utc>> = events.iter().map(|e| e.3).collect();
                sqlx::query(
                    r#"INSERT INTO analytics_events (user_id, event_type, event_data, "timestamp")
                       SELECT * FROM unnest($1::bigint[], $2::text[], $3::jsonb[], $4::timestamptz[])"#,
                )
                .bind(&users)
                .bind(&types)
                .bind(&data)
                .bind(&at)
                .execute(&mut *tx)
                .await?;
            }

            // Notifications: done when nothing is open any more, else checked again when the
            // earliest open delivery is due.
            let mut touched: Vec<i64> = deliveries
                .iter()
                .map(|a| a.claimed.n.n.id)
                .filter(|id| !next_stage.contains(id))
                .collect();
            touched.sort_unstable();
            touched.dedup();
            sqlx::query(
                "WITH t AS (SELECT unnest($1::bigint[]) AS id),
                      o AS (SELECT d.notification_id AS id, min(coalesce(d.next_attempt_at, $2)) AS next
                            FROM notification_deliveries d
                            WHERE d.notification_id = ANY($1) AND d.status IN ('pending', 'retrying', 'sending') GROUP BY 1)
                 UPDATE notifications n
                 SET status = CASE WHEN o.id IS NULL THEN 'done' ELSE n.status END, next_check_at = coalesce(o.next, n.next_check_at)
                 FROM t LEFT JOIN o ON o.id = t.id
                 WHERE n.id = t.id AND n.id = ANY($1) AND n.status IN ('pending', 'processing')",
            )
            .bind(&touched)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        JobQueue::complete(&mut tx, self.queue.worker(), jobs).await?;
        tx.commit().await?;
        for (a, r) in deliveries.iter().zip(&res) {
            let d = &a.claimed.delivery;
            delivery::log_resolution(&a.claimed.n.n, d.id, d.device_id, a.channel, 1, a.finished, r);
        }
        Ok(())
    }
}

/// Splits a fetched batch by due time (5 ms buckets) and starts a task for each, sleeping
/// until its jobs are due.
fn dispatch(
    this: &Arc<Drain>,
    jobs: Vec<FetchedJob>,
    out: &mpsc::UnboundedSender<Record>,
    sends: &Arc<Semaphore>,
    held: &mpsc::UnboundedSender<Vec<FetchedJob>>,
    tasks: &mut JoinSet<()>,
    stop: watch::Receiver<bool>,
) {
    let mut groups: std::collections::BTreeMap<u128, Vec<FetchedJob>> = Default::default();
    for job in jobs {
        groups.entry(job.due_in.as_millis() / 5 * 5).or_default().push(job);
    }
    for (_, group) in groups {
        let (this, out, sends, held, mut stop) = (this.clone(), out.clone(), sends.clone(), held.clone(), stop.clone());
        let due = group.iter().map(|j| j.due_in).max().unwrap_or_default();
        tasks.spawn(async move {
            // Any wait, even under the 5 ms of the grouping: a job run before its `run_at` may
            // find its retry not yet due.
            if !due.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(due) => {}
                    _ = stop.wait_for(|s| *s) => {
                        let _ = held.send(group);
                        return;
                    }
                }
            }
            this.handle(group, out, sends).await;
        });
    }
}

/// The single writer of results: takes everything that arrived since its last write and
/// records it in one transaction; on a database error keeps it and tries again.
async fn recorder(this: Arc<Drain>, mut rx: mpsc::UnboundedReceiver<Record>, room: Arc<Semaphore>) {
    let mut buf = Vec::with_capacity(1024);
    let mut deliveries = Vec::new();
    let mut jobs = Vec::new();
    loop {
        if deliveries.is_empty() && jobs.is_empty() {
            if rx.recv_many(&mut buf, 2048).await == 0 {
                return;
            }
        } else {
            // Results kept from a failed write: add whatever else is there, don't wait for more.
            while buf.len() < 2048
                && let Ok(r) = rx.try_recv()
            {
                buf.push(r);
            }
        }
        for r in buf.drain(..) {
            match r {
                Record::Delivery(a) => deliveries.push(a),
                Record::Job(id, outcome) => jobs.push((id, outcome)),
            }
        }
        let started = std::time::Instant::now();
        match this.record(&deliveries, &jobs).await {
            Ok(()) => {
                metrics::histogram!("dashlight_record_batch_seconds").record(started.elapsed().as_secs_f64());
                metrics::histogram!("dashlight_record_batch_size").record((deliveries.len() + jobs.len()) as f64);
                tracing::debug!(
                    deliveries = deliveries.len(),
                    jobs = jobs.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "recorded"
                );
                room.add_permits(jobs.len());
                deliveries.clear();
                jobs.clear();
            }
            Err(e) => {
                tracing::warn!(deliveries = deliveries.len(), jobs = jobs.len(), error = %e, "recording results failed; keeping them and retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Keeps the worker's heartbeat and rescues the jobs of workers that stopped beating.
async fn heartbeat(queue: JobQueue, stale_after: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match queue.heartbeat(stale_after).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                queue = queue.queue(),
                rescued = n,
                "jobs of a worker that stopped beating went back to the queue"
            ),
            Err(e) => tracing::warn!(queue = queue.queue(), error = %e, "heartbeat failed"),
        }
    }
}

/// Wakes the fetch loop when apalis's insert trigger announces a job due now on this queue.
async fn listen(pool: PgPool, queue: String, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            Err(e) = listen_once(&pool, &queue, &wake) => {
                tracing::debug!(error = %e, "job notifications lost; listening again in 1 s");
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn listen_once(pool: &PgPool, queue: &str, wake: &Notify) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen("apalis::job::insert").await?;
    loop {
        let n = listener.recv().await?;
        let ours = serde_json::from_str::<serde_json::Value>(n.payload())
            .ok()
            .is_some_and(|v| v["job_type"].as_str() == Some(queue));
        if ours {
            wake.notify_one();
        }
    }
}

/// Delay before a failed job is fetched again: 1 s, doubling per attempt, at most a minute.
fn job_backoff(attempts: i32) -> Duration {
    Duration::from_secs(1 << attempts.clamp(0, 6) as u32).min(Duration::from_secs(60))
}

fn channel_label(c: &str) -> &'static str {
    Channel::parse(c).map(Channel::as_str).unwrap_or("unknown")
}
