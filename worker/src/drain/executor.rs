//! Dispatch and execution: one group of jobs due together becomes units (a notification of a
//! job), which are loaded and decided (`Drain::decide`: a decision to apply or a moment to wait),
//! applied chunk by chunk, highest priority first, each chunk claimed once there is room to send
//! all of it (`Drain::apply_in_chunks`), and sent; each result goes to the recorder. A chunk whose
//! claim fails on its rows is applied unit by unit (`Drain::apply_one_by_one`).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use dashlight_core::{
    jobs::DeliverJob,
    queue::{FetchedJob, JobOutcome},
};
use futures::FutureExt as _;
use tokio::{sync::OwnedSemaphorePermit, task::JoinSet};

use super::{Drain, Out, Record};
use crate::{
    channels::SendError,
    delivery::{
        load,
        plan::{self, Applicable, Decision},
        record::{self, Attempted, Claimed, Decided},
    },
    limits::PriorityPermits,
};

/// What [`Drain::decide`] made of a group: decisions, jobs to hold a moment, duplicate jobs.
type Decisions = (Vec<(FetchedJob, Decided)>, Vec<(FetchedJob, DeliverJob, Duration)>, Vec<FetchedJob>);

impl Drain {
    /// One group of jobs due at the same moment: each job's notifications become units (one
    /// notification of one job); plan them, apply chunk by chunk, send, hand the results to the
    /// recorder.
    /// `planning` is the planner's permit, given back once the group is decided.
    pub(super) async fn handle(
        self: Arc<Self>,
        jobs: Vec<FetchedJob>,
        out: Out,
        sends: Arc<PriorityPermits>,
        planning: OwnedSemaphorePermit,
    ) {
        let mut planning = Some(planning);
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
            drop(planning.take());
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
                (Some(why), _, _) => Applicable::Kill(why.clone()).into(),
                (None, Some(r), _) => plan::on_receipt(l.as_deref(), receipts.get(&r)),
                (None, None, Some(why)) => plan::withdraw(l.as_deref(), why).into(),
                (None, None, None) => plan::decide(l.as_deref(), d.retry_delivery_id, now, system),
            };
            let decision = match decision {
                Decision::Apply(a) => a,
                Decision::Wait(w) => {
                    waiting.push((job, d, w));
                    continue;
                }
            };
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
                decision: Applicable::Kill(String::new()),
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
