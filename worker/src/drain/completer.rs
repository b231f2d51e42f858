//! Recording: the single recorder task ([`recorder`]) writes every result and every finished
//! job in one transaction per batch, and [`Tickets`] counts each job's units so that its outcome
//! is decided when its last unit finishes (`Drain::unit_done`).

use std::{collections::HashMap, sync::Arc, time::Duration};

use dashlight_core::queue::JobOutcome;
use tokio::sync::mpsc;

use super::{Drain, Out, Record, producer::Room};
use crate::delivery::record;

/// Results the recorder gathers before writing, when they come in faster than it writes.
const RECORD_BATCH: usize = 512;
/// How long the recorder waits for more results before writing what it has.
const RECORD_GATHER: Duration = Duration::from_millis(20);

/// The jobs in hand and how many of their units are not finished yet. A job's outcome is
/// decided when its last unit finishes: `Failed` (fetched again) if any unit hit an error worth
/// trying again, else `Done` if any unit was handled, else `Killed` (every unit unplannable).
#[derive(Default)]
pub(super) struct Tickets(std::sync::Mutex<HashMap<String, Ticket>>);

struct Ticket {
    units: usize,
    left: usize,
    outcome: Option<JobOutcome>,
}

impl Tickets {
    pub(super) fn open(&self, job: &str, units: usize) {
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

impl Drain {
    /// One unit of `job` finished: when it was the job's last, the job's outcome goes to the
    /// recorder (which acknowledges it with the results it writes).
    pub(super) fn unit_done(&self, out: &Out, job: &str, outcome: JobOutcome) {
        if let Some((outcome, units)) = self.tickets.finish(job, outcome) {
            let _ = out.send(Record::Job(job.to_owned(), outcome, units));
        }
    }
}

/// The single writer of results: takes everything that arrived since its last write (waiting up
/// to [`RECORD_GATHER`] for [`RECORD_BATCH`] of them) and records it in one transaction; on a
/// database error keeps it and tries again. Ends when every sender is gone.
pub(super) async fn recorder(this: Arc<Drain>, mut rx: mpsc::UnboundedReceiver<Record>, room: Arc<Room>) {
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
