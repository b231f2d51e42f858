//! Fetch and hold: [`Drain::run`]'s loop fetches jobs as far as the room allows (the room
//! counts units; its last half batch is kept for time-critical jobs), groups them by due time and
//! holds each group until due (`dispatch`) before the `planner` hands it, merged with the other
//! groups that fell due while it was busy, to the executor; the heartbeat
//! keeps this worker alive and rescues the jobs of stopped workers; `listen` wakes the loop when
//! a job is inserted due now. On a stop, held jobs go back to the queue.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::anyhow;
use dashlight_core::{
    jobs::{DeliverJob, QUEUE_NOTIFICATIONS},
    kinds::TIME_CRITICAL,
    queue::{FetchedJob, InsertListener},
};
use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinSet,
};

use super::{Drain, HEARTBEAT, Out, completer::recorder};
use crate::{
    delivery::record::{self, Stuck},
    limits::PriorityPermits,
};

/// The drain's room, in units: a semaphore whose permits are the units that may still be fetched,
/// and the units fetched beyond it (a fetch of whole jobs may overshoot), paid back first.
pub(super) struct Room {
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
    pub(super) fn give(&self, n: usize) {
        let mut debt = self.debt.lock().expect("room");
        let pay = (*debt).min(n);
        *debt -= pay;
        self.sem.add_permits(n - pay);
    }
}

/// The fetched jobs that fit in `units` (highest priority first, then earliest due; at least
/// one), and the ids of the rest.
fn fit(mut fetched: Vec<FetchedJob>, units: usize) -> (Vec<FetchedJob>, Vec<String>) {
    fetched.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.due_in));
    let mut taken = 0usize;
    let mut keep = Vec::with_capacity(fetched.len());
    let mut excess = Vec::new();
    for job in fetched {
        let n = units_of(&job);
        if keep.is_empty() || taken + n <= units {
            taken += n;
            keep.push(job);
        } else {
            excess.push(job.id);
        }
    }
    (keep, excess)
}

/// How many notifications (units) a job's payload carries; 1 for one that does not decode.
fn units_of(job: &FetchedJob) -> usize {
    serde_json::from_slice::<DeliverJob>(&job.payload).map_or(1, |d| d.notifications().len().max(1))
}

impl Drain {
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
        // Groups falling due go to the planner, which merges those that wait for it.
        let (due_tx, due_rx) = mpsc::unbounded_channel::<Vec<FetchedJob>>();
        tasks.spawn(planner(this.clone(), due_rx, tx.clone(), sends.clone()));
        let mut died: Option<anyhow::Error> = None;
        // Units per job in the last fetch of each kind (any job; time-critical only): the next
        // fetch's estimate. One estimate for both took ten reminders at a time after a fetch of
        // bulk jobs of a hundred.
        let mut per_job = [1usize; 2];
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
            let kind = usize::from(min_priority.is_some());
            let limit = units.div_ceil(per_job[kind]).max(1);
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
            // A fetch that met bigger jobs than the last one (a bulk of grouped jobs after
            // singletons) keeps what fits in the room it asked for and puts the rest back at
            // once: the room the time-critical jobs need is never taken by one fetch.
            let returned = fetched.len();
            let (fetched, excess) = fit(fetched, units);
            if !excess.is_empty() {
                match this.queue.release(&excess).await {
                    Ok(n) => tracing::debug!(released = n, "jobs beyond the room put back"),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not put back jobs beyond the room; they return after the heartbeat timeout")
                    }
                }
            }
            let got = fetched.len();
            if got > 0 {
                let fetched_units: usize = fetched.iter().map(units_of).sum();
                per_job[kind] = fetched_units.div_ceil(got).max(1);
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
                dispatch(fetched, &due_tx, &held_tx, &mut tasks, stop.clone());
            }
            // Fewer jobs than asked for, none put back: nothing more is due. (A fetch that put
            // jobs back was cut by the room, not by what is due: it goes on as soon as there is
            // room, rather than waiting for the next poll while reminders fall due.)
            if returned < limit && excess.is_empty() {
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
        // The planner ends once every group has gone to it or back to the queue.
        drop(due_tx);
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
/// until its jobs are due and then handing them to the [`planner`].
fn dispatch(
    jobs: Vec<FetchedJob>,
    due_tx: &mpsc::UnboundedSender<Vec<FetchedJob>>,
    held: &mpsc::UnboundedSender<Vec<FetchedJob>>,
    tasks: &mut JoinSet<()>,
    stop: watch::Receiver<bool>,
) {
    let mut groups: std::collections::BTreeMap<u128, Vec<FetchedJob>> = Default::default();
    for job in jobs {
        groups.entry(job.due_in.as_millis() / 5 * 5).or_default().push(job);
    }
    for (_, group) in groups {
        let due = group.iter().map(|j| j.due_in).max().unwrap_or_default();
        if due.is_zero() {
            let _ = due_tx.send(group);
            continue;
        }
        let (due_tx, held, mut stop) = (due_tx.clone(), held.clone(), stop.clone());
        tasks.spawn(async move {
            // Any wait, even under the 5 ms of the grouping: a job run before its `run_at` may
            // find its retry not yet due.
            tokio::select! {
                _ = tokio::time::sleep(due) => { let _ = due_tx.send(group); }
                _ = stop.wait_for(|s| *s) => { let _ = held.send(group); }
            }
        });
    }
}

/// Groups being planned (loaded and decided) at once.
const PLANNERS: usize = 2;

/// Plans the groups that fell due, at most [`PLANNERS`] at a time: the groups that fell due
/// while both were busy are merged and planned together (one load, then claims of whole chunks),
/// so under load the work per database round trip grows instead of the round trips (a task per
/// 5 ms bucket, each with its own load and claim, made 200 loads and 200 claims a second at 1,000
/// reminders a second, all at once beside a bulk). Ends when every group has come and been
/// handled.
async fn planner(this: Arc<Drain>, mut due: mpsc::UnboundedReceiver<Vec<FetchedJob>>, out: Out, sends: Arc<PriorityPermits>) {
    let gate = Arc::new(Semaphore::new(PLANNERS));
    let mut handles = JoinSet::new();
    loop {
        let permit = gate.clone().acquire_owned().await.expect("the gate is never closed");
        let Some(mut jobs) = due.recv().await else { break };
        while let Ok(more) = due.try_recv() {
            jobs.extend(more);
        }
        while handles.try_join_next().is_some() {}
        handles.spawn(this.clone().handle(jobs, out.clone(), sends.clone(), permit));
    }
    while handles.join_next().await.is_some() {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, priority: i32, ids: &[i64]) -> FetchedJob {
        FetchedJob {
            id: id.into(),
            payload: serde_json::to_vec(&DeliverJob::deliver_all(ids)).unwrap(),
            attempts: 1,
            max_attempts: 5,
            priority,
            due_in: Duration::ZERO,
            waited: Duration::ZERO,
        }
    }

    #[test]
    fn a_fetch_keeps_what_fits_in_its_room_urgent_first_and_puts_the_rest_back() {
        let bulk: Vec<i64> = (1..=100).collect();
        let fetched = vec![job("bulk1", 10, &bulk), job("reminder", 20, &[7]), job("bulk2", 10, &bulk)];
        let (keep, excess) = fit(fetched, 150);
        let kept: Vec<&str> = keep.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(kept, ["reminder", "bulk1"]);
        assert_eq!(excess, ["bulk2"]);
        // At least one job, however big.
        let (keep, excess) = fit(vec![job("bulk", 10, &bulk)], 10);
        assert_eq!((keep.len(), excess.len()), (1, 0));
    }
}
