//! The notification queue's drain: fetching, holding until due, dispatching, acknowledging.
//! What a job means and every state it writes belong to [`crate::delivery`]; the queue's
//! statements to [`dashlight_core::queue`].
//!
//! One loop per worker process fetches batches of jobs ([`JobQueue::fetch`], due now or within
//! the look-ahead; those are held in memory until their due time, so reminders leave on time)
//! and hands each group of jobs due together to the planner, which plans at most two groups at
//! once and merges the groups that fell due while it was busy (under load, fewer and larger
//! round trips rather than more of them). A job carries one notification or
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
//!
//! The rooms, after River's producer, executor and completer:
//!
//! - `producer.rs`: [`Drain::run`], the fetch loop and its room, the dispatch of groups held
//!   until due, the planner that merges the groups due while it is busy, the heartbeat and the
//!   LISTEN that wakes the loop.
//! - `executor.rs`: one group's handling: decide its units, apply them in chunks, send.
//! - `completer.rs`: the recorder task and the tickets that decide a job's outcome when its
//!   last unit finishes.

mod completer;
mod executor;
mod producer;

use std::time::Duration;

use dashlight_core::{
    jobs::QUEUE_NOTIFICATIONS,
    queue::{JobOutcome, JobQueue},
};
use tokio::sync::mpsc;

use crate::{delivery::Pipeline, delivery::record::Attempted, limits::Limits};
use completer::Tickets;

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

/// Where units' results and finished jobs go: the recorder task.
type Out = mpsc::UnboundedSender<Record>;

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
}
