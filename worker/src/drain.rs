//! The notification queue's drain: fetching, holding until due, dispatching, acknowledging.
//! What a job means and every state it writes belong to [`crate::delivery`]; the queue's
//! statements to [`dashlight_core::queue`].
//!
//! One loop per worker process fetches batches of jobs ([`JobQueue::fetch`], due now or within
//! the look-ahead; those are held in memory until their due time, so reminders leave on time)
//! and hands each group of jobs due together to a task. A job carries one notification or
//! several written and due together; each notification of a job is a *unit*, and the job is
//! finished when all its units are (its outcome decided then: `Failed` if a unit hit an error
//! worth trying again, else `Done`, or `Killed` when no unit could be planned). At most two
//! batches of units are held unacknowledged, and the last half batch of that room only
//! time-critical jobs may take ([`dashlight_core::kinds::TIME_CRITICAL`]): a reminder falling due
//! is not kept waiting for room by held bulk jobs. Each task:
//!
//! 1. loads and plans the group's units ([`crate::delivery::load`], `delivery::plan::decide`);
//! 2. applies the decisions chunk by chunk, highest priority first (`delivery::record::apply`),
//!    a chunk being about half of `WORKER_CONCURRENCY` in sends, claimed only once there is room
//!    to send all of it: what a crash leaves `sending` is what was in flight, not a whole batch.
//!    A chunk whose claim fails on its rows is claimed unit by unit, and the unit that fails
//!    again is recorded `failed` alone;
//! 3. sends each claimed delivery (`delivery::message`) and passes the result to the
//!    recorder.
//!
//! A single recorder task takes every result that arrived since its last write (gathering for up
//! to 20 ms when they trickle in) and records them in one transaction
//! (`delivery::record::record`) with the acknowledgement of the jobs whose units are all
//! finished (a finished job is deleted). A database error keeps the results in memory and
//! retries; nothing is dropped; an error on one result's rows records the results one by one, so
//! only that notification fails. The heartbeat keeps this worker alive in `apalis.workers`,
//! rescues the jobs of workers that stopped beating, and recovers what they left `sending` at
//! once.
//!
//! The long-lived tasks are supervised: if the recorder or the heartbeat ends or panics, the
//! drain stops fetching and [`Drain::run`] returns an error, so the process exits non-zero and
//! its supervisor restarts it (a worker that kept heartbeating with a dead recorder would hold
//! its jobs forever).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use dashlight_core::{
    jobs::{DeliverJob, QUEUE_NOTIFICATIONS},
    kinds::TIME_CRITICAL,
    queue::{FetchedJob, InsertListener, JobOutcome, JobQueue},
};
use futures::FutureExt as _;
use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinSet,
};

use crate::{
    channels::SendError,
    delivery::{
        Pipeline, load,
        plan::{self, Decision},
        record::{self, Attempted, Claimed, Decided, Stuck},
    },
    limits::{Limits, PriorityPermits},
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
    /// Where to `LISTEN` for jobs inserted due now: a pool of sessions (the worker's own pool on
    /// a direct connection, `DATABASE_DIRECT_URL` behind a transaction-mode pooler); `None`
    /// through a transaction-mode pooler without a direct URL, where the drain polls at
    /// `poll_interval` only (a `LISTEN` through the pooler hears nothing once its transaction
    /// ends).
    pub listen: Option<sqlx::PgPool>,
    /// The channels' send budgets and providers' holds, shared with every worker.
    pub limits: Limits,
}

/// Results the recorder gathers before writing, when they come in faster than it writes.
const RECORD_BATCH: usize = 512;
/// How long the recorder waits for more results before writing what it has.
const RECORD_GATHER: Duration = Duration::from_millis(20);

/// Heartbeat period (the stale threshold is six of them).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// The drain of the notification queue for one worker process.
pub struct Drain {
    queue: JobQueue,
    pipeline: Pipeline,
    settings: DrainSettings,
    tickets: Tickets,
}

enum Record {
    Delivery(Box<Attempted>),
    /// A job whose units are all finished, its outcome, and how many units it held of the room.
    Job(String, JobOutcome, usize),
}

/// The jobs in hand and how many of their units are not finished yet. A job's outcome is
/// decided when its last unit finishes: `Failed` (fetched again) if any unit hit an error worth
/// trying again, else `Done` if any unit was handled, else `Killed` (every unit unplannable).
#[derive(Default)]
struct Tickets(std::sync::Mutex<HashMap<String, Ticket>>);

struct Ticket {
    units: usize,
    left: usize,
    outcome: Option<JobOutcome>,
}

impl Tickets {
    fn open(&self, job: &str, units: usize) {
        let mut t = self.0.lock().expect("tickets");
        t.insert(
            job.to_owned(),
            Ticket {
                units,
                left: units,
                outcome: None,
            },
        );
    }

    /// One unit of `job` finished with `outcome`; returns the job's outcome and its unit count
    /// when it was the last.
    fn finish(&self, job: &str, outcome: JobOutcome) -> Option<(JobOutcome, usize)> {
        let mut t = self.0.lock().expect("tickets");
        let ticket = t.get_mut(job)?;
        ticket.outcome = Some(match (ticket.outcome.take(), outcome) {
            (None, o) => o,
            (Some(f @ JobOutcome::Failed { .. }), _) | (_, f @ JobOutcome::Failed { .. }) => f,
            (Some(JobOutcome::Done), _) | (_, JobOutcome::Done) => JobOutcome::Done,
            (Some(k @ JobOutcome::Killed(_)), JobOutcome::Killed(_)) => k,
        });
        ticket.left = ticket.left.saturating_sub(1);
        if ticket.left > 0 {
            return None;
        }
        let ticket = t.remove(job)?;
        Some((ticket.outcome.unwrap_or(JobOutcome::Done), ticket.units))
    }
}

/// The drain's room, in units: a semaphore whose permits are the units that may still be fetched,
/// and the units fetched beyond it (a fetch of whole jobs may overshoot), paid back first.
struct Room {
    sem: Semaphore,
    debt: std::sync::Mutex<usize>,
}

impl Room {
    fn new(units: usize) -> Self {
        Room {
            sem: Semaphore::new(units),
            debt: std::sync::Mutex::new(0),
        }
    }

    /// Takes `n` units (only the fetch loop takes; what is not there becomes debt).
    fn take(&self, n: usize) {
        let have = self.sem.available_permits().min(n);
        if have > 0
            && let Ok(p) = self.sem.try_acquire_many(have as u32)
        {
            p.forget();
        }
        *self.debt.lock().expect("room") += n - have;
    }

    /// Gives back `n` units, paying the debt first.
    fn give(&self, n: usize) {
        let mut debt = self.debt.lock().expect("room");
        let pay = (*debt).min(n);
        *debt -= pay;
        self.sem.add_permits(n - pay);
    }
}

/// How many notifications (units) a job's payload carries; 1 for one that does not decode.
fn units_of(job: &FetchedJob) -> usize {
    serde_json::from_slice::<DeliverJob>(&job.payload).map_or(1, |d| d.notifications().len().max(1))
}

type Out = mpsc::UnboundedSender<Record>;

/// What [`Drain::decide`] made of a group: decisions, jobs to hold a moment, duplicate jobs.
type Decisions = (Vec<(FetchedJob, Decided)>, Vec<(FetchedJob, DeliverJob, Duration)>, Vec<FetchedJob>);

impl Drain {
    /// A drain of the notification queue as the pipeline's worker (its `worker_name`).
    pub fn new(pipeline: Pipeline, settings: DrainSettings) -> Self {
        Drain {
            queue: JobQueue::new(pipeline.pool.clone(), QUEUE_NOTIFICATIONS, &pipeline.settings.worker_name),
            pipeline,
            settings,
            tickets: Tickets::default(),
        }
    }

    /// Runs until `shutdown` resolves, then stops fetching and lets in-flight work finish (up to
    /// the shutdown timeout); jobs still held for their due time are put back. Returns an error
    /// when one of its long-lived tasks died.
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
        let mut heartbeat = tokio::spawn(heartbeat(this.clone(), stop.clone()));
        let listener = this
            .settings
            .listen
            .clone()
            .map(|pool| tokio::spawn(listen(pool, this.queue.queue().to_owned(), wake.clone(), stop.clone())));
        // Units (notifications of jobs) fetched and not yet acknowledged: at most two batches, so
        // a crash or a stop has a bounded amount of work in flight. The last half batch of that
        // room is kept for time-critical jobs: a reminder falling due while bulk jobs fill the
        // room is fetched at once instead of waiting for a bulk job to finish.
        let room = Arc::new(Room::new(this.settings.batch_size * 2));
        let reserve = reserved_room(this.settings.batch_size);
        let sends = Arc::new(PriorityPermits::new(this.settings.concurrency));
        let limits = tokio::spawn(this.settings.limits.clone().run());
        let (tx, rx) = mpsc::unbounded_channel();
        let mut recorder = tokio::spawn(recorder(this.clone(), rx, room.clone()));
        let mut tasks = JoinSet::new();
        let (held_tx, mut held_rx) = mpsc::unbounded_channel::<Vec<FetchedJob>>();
        let mut died: Option<anyhow::Error> = None;
        // Units per job in the last fetch (the next fetch's estimate).
        let mut per_job = 1usize;
        loop {
            while tasks.try_join_next().is_some() {}
            // Wait for room (or the stop, or a dead task).
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                r = &mut recorder => { died = Some(task_died("recorder", r)); break }
                r = &mut heartbeat => { died = Some(task_died("heartbeat", r)); break }
                permit = room.sem.acquire() => drop(permit),
            }
            // Above the reserve, any job (highest priority first); within it, time-critical only.
            // The room counts units; a fetch asks for as many jobs as fit at the size of the
            // jobs last fetched (a job carries up to NOTIFICATIONS_PER_JOB notifications).
            let free = room.sem.available_permits();
            let (units, min_priority) = if free > reserve {
                ((free - reserve).min(this.settings.batch_size), None)
            } else {
                (free, Some(TIME_CRITICAL))
            };
            let limit = units.div_ceil(per_job).max(1);
            let t0 = std::time::Instant::now();
            let fetched = match this.queue.fetch(limit, this.settings.poll_interval, min_priority).await {
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
                let fetched_units: usize = fetched.iter().map(units_of).sum();
                per_job = fetched_units.div_ceil(got).max(1);
                tracing::debug!(
                    got,
                    units = fetched_units,
                    limit,
                    ms = t0.elapsed().as_millis() as u64,
                    "fetched jobs"
                );
                room.take(fetched_units);
                metrics::counter!("dashlight_jobs_fetched_total", "queue" => QUEUE_NOTIFICATIONS).increment(got as u64);
                for job in &fetched {
                    metrics::histogram!("dashlight_job_wait_seconds", "priority" => job.priority.to_string())
                        .record(job.waited.as_secs_f64());
                }
                dispatch(&this, fetched, &tx, &sends, &held_tx, &mut tasks, stop.clone());
            }
            if got < limit {
                // Nothing more due: wait for a new job, the next poll, or (when only the reserve
                // was free) room for bulk jobs again.
                let unreserved = async {
                    match min_priority {
                        Some(_) => drop(room.sem.acquire_many(reserve as u32 + 1).await),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = wake.notified() => {}
                    _ = unreserved => {}
                    _ = tokio::time::sleep(this.settings.poll_interval) => {}
                }
            }
        }
        if let Some(e) = &died {
            tracing::error!(worker = this.queue.worker(), error = %e, "a task of the drain died: stopping so the process is restarted");
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
        if died.is_none() && tokio::time::timeout(this.settings.shutdown_timeout, &mut recorder).await.is_err() {
            tracing::warn!("the last results could not be recorded within the shutdown timeout; the sweep will recover them");
        }
        recorder.abort();
        heartbeat.abort();
        limits.abort();
        if let Some(listener) = listener {
            listener.abort();
        }
        match died {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One group of jobs due at the same moment: each job's notifications become units (one
    /// notification of one job); plan them, apply chunk by chunk, send, hand the results to the
    /// recorder.
    async fn handle(self: Arc<Self>, jobs: Vec<FetchedJob>, out: Out, sends: Arc<PriorityPermits>) {
        let mut candidates = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            match serde_json::from_slice::<DeliverJob>(&job.payload) {
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "job payload does not decode: giving up on it");
                    let _ = out.send(Record::Job(
                        job.id,
                        JobOutcome::Killed(format!("job payload does not decode: {e}")),
                        1,
                    ));
                }
                Ok(d) => {
                    let ids = d.notifications();
                    self.tickets.open(&job.id, ids.len());
                    job.payload = Vec::new();
                    for id in ids {
                        candidates.push((job.clone(), d.unit(id)));
                    }
                }
            }
        }
        let mut set = JoinSet::new();
        while !candidates.is_empty() {
            let t0 = std::time::Instant::now();
            let n = candidates.len();
            let (decided, waiting, duplicates) = match self.decide(candidates).await {
                Ok(d) => d,
                Err((jobs, e)) => {
                    tracing::warn!(units = jobs.len(), error = %e, "loading a batch failed; its jobs will be fetched again");
                    self.fail(&out, jobs, &e);
                    break;
                }
            };
            tracing::debug!(jobs = n, ms = t0.elapsed().as_millis() as u64, "planned");
            // A second job for a notification of the same group has nothing to add.
            for job in duplicates {
                self.unit_done(&out, &job.id, JobOutcome::Done);
            }
            let decided = urgent_first(decided);
            self.apply_in_chunks(decided, &out, &sends, &mut set).await;
            // Jobs that ran a moment early: wait out the gap, then decide again.
            let Some(wait) = waiting.iter().map(|(_, _, w)| *w).max() else {
                break;
            };
            tokio::time::sleep(wait).await;
            candidates = waiting.into_iter().map(|(j, d, _)| (j, d)).collect();
        }
        while set.join_next().await.is_some() {}
    }

    /// Loads a group's notifications and decides each job. Returns the decisions, the jobs that
    /// ran a moment early (with how long to wait) and the second jobs of a notification already
    /// decided in the group (they have nothing to add). On a database error, returns the jobs.
    async fn decide(&self, mut candidates: Vec<(FetchedJob, DeliverJob)>) -> Result<Decisions, (Vec<FetchedJob>, sqlx::Error)> {
        // Receipt jobs first: they read a notification's loaded state without taking it, the
        // other job of that notification takes it afterwards.
        candidates.sort_by_key(|(_, d)| d.receipt_id.is_none());
        let ids: Vec<i64> = candidates.iter().map(|(_, d)| d.notification_id).collect();
        let (mut loaded, unplannable) = match load::load(&self.pipeline.pool, &self.pipeline.settings, &ids).await {
            Ok(l) => l,
            Err(e) => return Err((candidates.into_iter().map(|(j, _)| j).collect(), e)),
        };
        // Provider reports named by receipt jobs (one statement, usually none).
        let receipt_ids: Vec<i64> = candidates.iter().filter_map(|(_, d)| d.receipt_id).collect();
        let receipts = match load::receipts(&self.pipeline.pool, &receipt_ids).await {
            Ok(r) => r,
            Err(e) => return Err((candidates.into_iter().map(|(j, _)| j).collect(), e)),
        };
        let now = self.pipeline.clock.now();
        let system = self.pipeline.clock.is_system();
        let mut seen = std::collections::HashSet::new();
        let mut decided = Vec::with_capacity(candidates.len());
        let mut waiting = Vec::new();
        let mut duplicates = Vec::new();
        // An operator's cancel wins over another job of the same notification in the group.
        let mut candidates = candidates;
        candidates.sort_by_key(|(_, d)| d.cancel.is_none());
        for (job, d) in candidates {
            // Each receipt job applies its own report; other jobs of one notification are one.
            if !seen.insert((d.notification_id, d.receipt_id)) {
                duplicates.push(job);
                continue;
            }
            let l = match loaded.get(&d.notification_id) {
                Some(l) if d.receipt_id.is_some() => Some(Arc::new(l.clone())),
                _ => loaded.remove(&d.notification_id).map(Arc::new),
            };
            let decision = match (unplannable.get(&d.notification_id), d.receipt_id, &d.cancel) {
                (Some(why), _, _) => Decision::Kill(why.clone()),
                (None, Some(r), _) => plan::on_receipt(l.as_deref(), receipts.get(&r)),
                (None, None, Some(why)) => plan::withdraw(l.as_deref(), why),
                (None, None, None) => plan::decide(l.as_deref(), d.retry_delivery_id, now, system),
            };
            if let Decision::Wait(w) = decision {
                waiting.push((job, d, w));
                continue;
            }
            let entry = Decided {
                job_id: job.id.clone(),
                notification: d.notification_id,
                loaded: l,
                decision,
            };
            decided.push((job, entry));
        }
        Ok((decided, waiting, duplicates))
    }

    /// Applies decisions in chunks of about half the concurrency in sends, each claimed once there
    /// is room to send all of it, and sends each chunk's claimed deliveries as soon as it is applied.
    async fn apply_in_chunks(
        self: &Arc<Self>,
        decided: Vec<(FetchedJob, Decided)>,
        out: &Out,
        sends: &Arc<PriorityPermits>,
        set: &mut JoinSet<()>,
    ) {
        // A chunk is about half the sends the worker may have in flight: small enough that what
        // is claimed is what is being sent, large enough that a claim serves many sends (claiming
        // whatever few permits had freed since the last claim made one transaction per handful
        // of notifications).
        let max = self.settings.concurrency.max(1);
        let target = (max / 2).max(1);
        let mut chunk: Vec<(FetchedJob, Decided)> = Vec::new();
        let mut need_total = 0usize;
        for (job, d) in decided {
            let need = d.decision.sends().min(max);
            if need > 0 && need_total + need > target && !chunk.is_empty() {
                self.claim_and_send(std::mem::take(&mut chunk), std::mem::take(&mut need_total), out, sends, set)
                    .await;
            }
            need_total += need;
            chunk.push((job, d));
        }
        if !chunk.is_empty() {
            self.claim_and_send(chunk, need_total, out, sends, set).await;
        }
    }

    /// Waits until the chunk's sends fit (`need` ≤ the concurrency), then applies and sends it.
    async fn claim_and_send(
        self: &Arc<Self>,
        chunk: Vec<(FetchedJob, Decided)>,
        need: usize,
        out: &Out,
        sends: &Arc<PriorityPermits>,
        set: &mut JoinSet<()>,
    ) {
        if need > 0 {
            // Time-critical chunks take the free send slots before the bulk chunks waiting.
            let priority = chunk.iter().map(|(j, _)| j.priority).max().unwrap_or(0);
            sends.acquire(need, priority).await;
        }
        // The claim's round trip runs beside the next chunk's wait for room: permits freed
        // meanwhile go to the next chunk at once.
        let (this, out, sends) = (self.clone(), out.clone(), sends.clone());
        set.spawn(async move { this.apply_chunk(chunk, need, out, sends).await });
    }

    /// Applies one chunk (its send permits already taken), sends what it claimed and waits for
    /// those sends.
    async fn apply_chunk(self: Arc<Self>, chunk: Vec<(FetchedJob, Decided)>, held: usize, out: Out, sends: Arc<PriorityPermits>) {
        let out = &out;
        let sends = &sends;
        let mut set = JoinSet::new();
        let (jobs, decided): (Vec<FetchedJob>, Vec<Decided>) = chunk.into_iter().unzip();
        let now = self.pipeline.clock.now();
        let settings = &self.pipeline.settings;
        let applied = match record::apply(&self.pipeline.pool, settings, self.queue.worker(), &decided, now).await {
            Ok(a) => a,
            Err(e) if record::is_row_error(&e) => {
                // One unit's rows (say an address too long for an index) fail the chunk's
                // statements: apply the units one at a time, so only that one fails.
                tracing::warn!(units = jobs.len(), error = %e, "claiming a chunk failed on its rows; claiming its units one by one");
                self.apply_one_by_one(jobs, decided, now, out).await
            }
            Err(e) => {
                tracing::warn!(units = jobs.len(), error = %e, "claiming a chunk failed; its jobs will be fetched again");
                sends.add_permits(held);
                self.fail(out, jobs, &e);
                return;
            }
        };
        // Permits taken for sends that the claim did not win (another worker, a race) go back.
        sends.add_permits(held.saturating_sub(applied.sends.len()));
        for (job, outcome) in applied.finished {
            self.unit_done(out, &job, outcome);
        }
        // A unit is finished as soon as the last of its deliveries has gone to the recorder
        // (same channel, so in the same write as that delivery or a later one), not when the
        // whole chunk is done: one slow send holds back only its own job.
        let open: HashMap<(String, i64), Arc<AtomicUsize>> =
            applied.open.into_iter().map(|unit| (unit, Arc::new(AtomicUsize::new(0)))).collect();
        for c in &applied.sends {
            if let Some(n) = open.get(&(c.job_id.clone(), c.n.n.id)) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (i, claimed) in applied.sends.into_iter().enumerate() {
            let (this, out, sends) = (self.clone(), out.clone(), sends.clone());
            let ack = open.get(&(claimed.job_id.clone(), claimed.n.n.id)).cloned();
            // One slot per send, as many as were taken (one notification may have more deliveries
            // than the drain's concurrency: those beyond it run without a slot).
            let slot = usize::from(i < held);
            set.spawn(async move {
                let job_id = claimed.job_id.clone();
                // Within the channel's budget and its provider's hold (every worker's).
                this.settings.limits.acquire(claimed.channel, i32::from(claimed.n.n.priority)).await;
                let attempted = this.send(claimed).await;
                this.after_send(&attempted).await;
                sends.add_permits(slot);
                let _ = out.send(Record::Delivery(Box::new(attempted)));
                if let Some(c) = ack
                    && c.fetch_sub(1, Ordering::AcqRel) == 1
                {
                    this.unit_done(&out, &job_id, JobOutcome::Done);
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// A chunk whose claim failed on its rows, applied unit by unit: a unit that fails again on
    /// its rows has its notification recorded `failed` with the error (it fails alone); one that
    /// fails for another reason goes back to the queue with its job.
    async fn apply_one_by_one(&self, jobs: Vec<FetchedJob>, decided: Vec<Decided>, now: DateTime<Utc>, out: &Out) -> record::Applied {
        let settings = &self.pipeline.settings;
        let mut all = record::Applied::default();
        for (job, d) in jobs.into_iter().zip(decided) {
            let notification = d.notification;
            match record::apply(&self.pipeline.pool, settings, self.queue.worker(), std::slice::from_ref(&d), now).await {
                Ok(a) => {
                    all.sends.extend(a.sends);
                    all.open.extend(a.open);
                    all.finished.extend(a.finished);
                }
                Err(e) if record::is_row_error(&e) => match record::fail_alone(&self.pipeline.pool, notification, "claimed", &e).await {
                    Ok(()) => all.finished.push((job.id, JobOutcome::Done)),
                    Err(e) => self.fail(out, vec![job], &e),
                },
                Err(e) => self.fail(out, vec![job], &e),
            }
        }
        all
    }

    /// One unit of `job` finished: when it was the job's last, the job's outcome goes to the
    /// recorder (which acknowledges it with the results it writes).
    fn unit_done(&self, out: &Out, job: &str, outcome: JobOutcome) {
        if let Some((outcome, units)) = self.tickets.finish(job, outcome) {
            let _ = out.send(Record::Job(job.to_owned(), outcome, units));
        }
    }

    /// Units that could not be handled: their jobs go back to the queue after a backoff (the
    /// job's other units, handled meanwhile, find nothing left to do when it runs again).
    fn fail(&self, out: &Out, units: Vec<FetchedJob>, e: &sqlx::Error) {
        for job in units {
            let retry_in = job_backoff(job.attempts);
            self.unit_done(
                out,
                &job.id,
                JobOutcome::Failed {
                    error: e.to_string(),
                    retry_in,
                },
            );
        }
    }

    /// What a send tells every worker: a provider's `Retry-After` holds its channel; the send's
    /// lateness by priority is measured.
    async fn after_send(&self, a: &Attempted) {
        let n = &a.claimed.n.n;
        match &a.result {
            Ok(_) => {
                let late = (a.finished - n.due_at).num_milliseconds().max(0) as f64 / 1000.0;
                metrics::histogram!("dashlight_send_lateness_seconds", "priority" => n.priority.to_string()).record(late);
            }
            Err(SendError::Transient {
                retry_after: Some(wait),
                message,
            }) => {
                let wait = (*wait).min(self.pipeline.settings.retry_max);
                if let Err(e) = self.settings.limits.provider_hold(a.claimed.channel, wait, message).await {
                    tracing::warn!(channel = a.claimed.channel.as_str(), error = %e, "recording the provider's hold failed");
                }
            }
            Err(_) => {}
        }
    }

    async fn send(&self, claimed: Claimed) -> Attempted {
        let l = claimed.n.clone();
        let result = std::panic::AssertUnwindSafe(self.pipeline.render_and_send(&l.n, &l.recipient, &l.devices, &claimed))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(SendError::transient("the send panicked; retrying")));
        Attempted {
            finished: self.pipeline.clock.now(),
            claimed,
            result,
        }
    }
}

/// A group's decisions in the order their chunks are claimed: highest priority first, fetch order
/// otherwise. A fetch takes reminders due now together with bulk jobs, and jobs already due share
/// one group; chunks are claimed in turn, so a reminder behind a thousand invoices would wait for
/// every chunk before it (measured: groups of reminders claimed 1.7 s and 3.9 s late while the
/// bulk drained, BENCHMARKS.md "session 4").
fn urgent_first(mut decided: Vec<(FetchedJob, Decided)>) -> Vec<(FetchedJob, Decided)> {
    decided.sort_by_key(|(job, _)| std::cmp::Reverse(job.priority));
    decided
}

/// The part of a drain's room (two batches) only time-critical jobs may take: half a batch.
fn reserved_room(batch_size: usize) -> usize {
    batch_size / 2
}

fn task_died(what: &str, r: Result<(), tokio::task::JoinError>) -> anyhow::Error {
    match r {
        Err(e) if e.is_panic() => anyhow!("the {what} task panicked"),
        Err(e) => anyhow!("the {what} task failed: {e}"),
        Ok(()) => anyhow!("the {what} task ended"),
    }
}

/// Splits a fetched batch by due time (5 ms buckets) and starts a task for each, sleeping
/// until its jobs are due.
fn dispatch(
    this: &Arc<Drain>,
    jobs: Vec<FetchedJob>,
    out: &Out,
    sends: &Arc<PriorityPermits>,
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

/// The single writer of results: takes everything that arrived since its last write (waiting up
/// to [`RECORD_GATHER`] for [`RECORD_BATCH`] of them) and records it in one transaction; on a
/// database error keeps it and tries again. Ends when every sender is gone.
async fn recorder(this: Arc<Drain>, mut rx: mpsc::UnboundedReceiver<Record>, room: Arc<Room>) {
    let mut buf = Vec::with_capacity(1024);
    let mut deliveries = Vec::new();
    let mut jobs = Vec::new();
    let mut units = 0usize;
    loop {
        if deliveries.is_empty() && jobs.is_empty() {
            if rx.recv_many(&mut buf, 2048).await == 0 {
                return;
            }
            // A busy drain sends results a few at a time: gather for a moment (at most
            // RECORD_GATHER) so that one transaction records many. Send times are taken when each
            // send finishes, so this delays only the write, never a message.
            if buf.len() < RECORD_BATCH {
                let until = tokio::time::Instant::now() + RECORD_GATHER;
                while buf.len() < RECORD_BATCH
                    && let Ok(Some(r)) = tokio::time::timeout_at(until, rx.recv()).await
                {
                    buf.push(r);
                }
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
                Record::Delivery(a) => deliveries.push(*a),
                Record::Job(id, outcome, n) => {
                    jobs.push((id, outcome));
                    units += n;
                }
            }
        }
        let started = std::time::Instant::now();
        let now = this.pipeline.clock.now();
        match record::record(
            &this.pipeline.pool,
            &this.pipeline.settings,
            this.queue.worker(),
            &deliveries,
            &jobs,
            now,
        )
        .await
        {
            Ok(_) => {
                metrics::histogram!("dashlight_record_batch_seconds").record(started.elapsed().as_secs_f64());
                metrics::histogram!("dashlight_record_batch_size").record((deliveries.len() + jobs.len()) as f64);
                tracing::debug!(
                    deliveries = deliveries.len(),
                    jobs = jobs.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "recorded"
                );
                room.give(std::mem::take(&mut units));
                deliveries.clear();
                jobs.clear();
            }
            Err(e) if record::is_row_error(&e) && !deliveries.is_empty() => {
                // One result's rows fail the batch's statements: record the results one at a
                // time; one that fails again on its rows has its notification recorded `failed`
                // (it fails alone), the rest are recorded, the jobs with the next write.
                tracing::warn!(deliveries = deliveries.len(), error = %e, "recording results failed on their rows; recording them one by one");
                let pool = &this.pipeline.pool;
                let mut kept = Vec::new();
                for a in deliveries.drain(..) {
                    match record::record(
                        pool,
                        &this.pipeline.settings,
                        this.queue.worker(),
                        std::slice::from_ref(&a),
                        &[],
                        now,
                    )
                    .await
                    {
                        Ok(_) => {}
                        Err(e) if record::is_row_error(&e) => {
                            if let Err(e) = record::fail_alone(pool, a.claimed.n.n.id, "recorded", &e).await {
                                tracing::warn!(error = %e, "recording a failed notification failed; keeping its result");
                                kept.push(a);
                            }
                        }
                        Err(_) => kept.push(a),
                    }
                }
                deliveries = kept;
            }
            Err(e) => {
                tracing::warn!(deliveries = deliveries.len(), jobs = jobs.len(), error = %e, "recording results failed; keeping them and retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Keeps the worker's heartbeat, rescues the jobs of workers that stopped beating and recovers
/// the deliveries they left `sending` (their attempts `interrupted`), at once. Ends only on the
/// stop.
async fn heartbeat(this: Arc<Drain>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let queue = &this.queue;
        match queue.heartbeat(this.settings.stale_after).await {
            Ok(rescued) if rescued.is_empty() => {}
            Ok(mut rescued) => {
                let jobs = rescued.len();
                rescued.sort_unstable();
                rescued.dedup();
                tracing::warn!(queue = queue.queue(), rescued = jobs, workers = ?rescued, "jobs of a worker that stopped beating went back to the queue");
                let now = this.pipeline.clock.now();
                match record::interrupt(&this.pipeline.pool, Stuck::Of(&rescued), now).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(deliveries = n, workers = ?rescued, "deliveries the stopped worker left in sending recorded interrupted and retried")
                    }
                    Err(e) => tracing::warn!(error = %e, "recovering the stopped worker's deliveries failed; the sweep will"),
                }
            }
            Err(e) => tracing::warn!(queue = queue.queue(), error = %e, "heartbeat failed"),
        }
    }
}

/// Wakes the fetch loop when apalis's insert trigger announces a job due now on this queue.
async fn listen(pool: sqlx::PgPool, queue: String, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
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

async fn listen_once(pool: &sqlx::PgPool, queue: &str, wake: &Notify) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = InsertListener::connect(pool).await?;
    loop {
        listener.next(queue).await?;
        wake.notify_one();
    }
}

/// Delay before a failed job is fetched again: 1 s, doubling per attempt, at most a minute.
fn job_backoff(attempts: i32) -> Duration {
    Duration::from_secs(1 << attempts.clamp(0, 6) as u32).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_time_critical_jobs_are_claimed_before_its_bulk_jobs() {
        let job = |id: &str, priority: i32| {
            let fetched = FetchedJob {
                id: id.into(),
                payload: Vec::new(),
                attempts: 1,
                max_attempts: 25,
                priority,
                due_in: Duration::ZERO,
                waited: Duration::ZERO,
            };
            let decided = Decided {
                job_id: id.into(),
                notification: 0,
                loaded: None,
                decision: Decision::Kill(String::new()),
            };
            (fetched, decided)
        };
        let group = vec![
            job("bulk1", 10),
            job("bulk2", 10),
            job("reminder", 20),
            job("bulk3", 10),
            job("change", 15),
        ];
        let order: Vec<String> = urgent_first(group).into_iter().map(|(j, _)| j.id).collect();
        assert_eq!(order, ["reminder", "change", "bulk1", "bulk2", "bulk3"]);
    }
}
