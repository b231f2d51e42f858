//! The periodic queue's apalis backend: apalis-postgres's storage, statement for statement
//! (`apalis_postgres::queries`: register, heartbeat and orphan rescue, fetch, acknowledgements,
//! release on shutdown), driven by apalis-core's own [`Persisted`] state machine, with one
//! difference: its fetch claims nothing while the queue is paused
//! ([`crate::controls::queue_paused`], read in the fetch's transaction just before
//! apalis's `get_jobs`).
//!
//! Why not apalis's worker-level pause ([`WorkerContext::pause`]): it stops the worker from asking
//! its backend for the next task, so a fetch already in flight is left half-done (its transaction
//! open and its jobs locked) until the resume, and it is per process, not shared. A paused fetch
//! here simply finds nothing: held jobs finish, heartbeats and acknowledgements go on, and the
//! worker keeps waking at its poll interval and on apalis's insert notifications, so the
//! resume's notification ([`crate::controls::resume`]) has it fetch at once. Nothing is
//! fetched and given back.
//!
//! Part of [`crate::queue`], the one owner of apalis's tables: the statements are apalis's own
//! (`apalis_postgres::queries`), the pauses [`crate::controls`]'s.

use std::{
    marker::PhantomData,
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use apalis_codec::json::JsonCodec;
use apalis_core::{
    backend::{
        Backend, BackendConfig, WireFormatBackend,
        finalize::Durable,
        persistence::{Persisted, Persistence, TaskEvent, TaskPersistLayer},
    },
    worker::context::WorkerContext,
};
use apalis_postgres::{Config, Error, PgTask, queries};
use serde_json::Value;
use sqlx::PgPool;

/// apalis-postgres's statements on one queue, with a pause-aware fetch.
#[derive(Debug, Clone)]
struct PausableQueries {
    pool: PgPool,
    config: Config,
}

impl Persistence for PausableQueries {
    type Compact = Vec<u8>;
    type Response = Value;
    type Error = Error;

    /// Rescues dead workers' jobs and registers this worker (apalis's `register`).
    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        let rescued = queries::reenqueue_orphaned(&mut *tx, queue, self.config.orphaned_duration().as_secs()).await?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        queries::register_worker(&mut *tx, queue, worker, &now.into(), "PgStorage").await?;
        tx.commit().await?;
        if rescued > 0 {
            tracing::info!(queue, rescued, worker = worker.name(), "re-enqueued jobs of dead workers");
        }
        Ok(())
    }

    /// Marks the worker alive and rescues dead workers' jobs (apalis's `heartbeat`).
    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        queries::keep_alive(&mut *tx, queue, worker).await?;
        let rescued = queries::reenqueue_orphaned(&mut *tx, queue, self.config.orphaned_duration().as_secs()).await?;
        tx.commit().await?;
        if rescued > 0 {
            tracing::info!(queue, rescued, worker = worker.name(), "re-enqueued jobs of dead workers");
        }
        Ok(())
    }

    /// apalis's fetch, unless the queue is paused: then nothing, and the worker waits for its
    /// next wake-up (poll interval, insert notification, the resume's notification).
    async fn fetch_next(&mut self, worker: &WorkerContext) -> Result<Vec<PgTask>, Error> {
        let mut tx = self.pool.begin().await?;
        if crate::controls::queue_paused(&mut *tx, self.config.queue.as_ref()).await? {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let tasks = queries::fetch_next(&mut *tx, &self.config, worker).await?;
        tx.commit().await?;
        Ok(tasks)
    }

    /// Puts back jobs fetched but never started (shutdown).
    async fn reenqueue_abandoned(&mut self, tasks: Vec<PgTask>, worker: &WorkerContext) -> Result<u64, Error> {
        let ids: Vec<String> = tasks.iter().filter_map(|t| t.task_id().map(ToString::to_string)).collect();
        let mut tx = self.pool.begin().await?;
        let count = queries::reenqueue_abandoned(&mut *tx, self.config.queue.as_ref(), worker.name(), &ids).await?;
        if count as usize != tasks.len() {
            return Err(Error::ReenqueueMismatch {
                queued: tasks.len(),
                abandoned: count as usize,
            });
        }
        tx.commit().await?;
        Ok(count)
    }

    /// Acknowledgements and locks, in one transaction (apalis's `handle_events`).
    async fn handle_events(&mut self, events: Vec<TaskEvent<Value>>, worker: &WorkerContext) -> Result<(), Error> {
        let results: Vec<&queries::ResultPayload> = events
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Complete(payload) => Some(payload),
                _ => None,
            })
            .collect();
        let acked: std::collections::HashSet<String> = results.iter().map(|r| r.task_id().to_string()).collect();
        let locks: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Lock { task_id, .. } => Some(task_id.to_string()),
                _ => None,
            })
            .filter(|id| !acked.contains(id))
            .collect();
        if results.is_empty() && locks.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if !results.is_empty() {
            queries::handle_results(&mut *tx, &results, worker.name()).await?;
        }
        if !locks.is_empty() {
            queries::lock_tasks(&mut *tx, &locks, worker.name()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Jobs pushed through the backend (Dashlight enqueues through `dashlight_core::queue`).
    async fn push_tasks(&mut self, tasks: Vec<PgTask>) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        queries::push_tasks(&mut *tx, self.config.queue.as_ref(), tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A queue of apalis's table for a stock apalis `Worker`, as `apalis_postgres::PostgresStorage`
/// with a fetch that claims nothing while the queue is paused.
pub struct PausableStorage<Args> {
    persistence: Persisted<PausableQueries>,
    codec: JsonCodec,
    _args: PhantomData<Args>,
}

impl<Args> Clone for PausableStorage<Args> {
    fn clone(&self) -> Self {
        PausableStorage {
            persistence: self.persistence.clone(),
            codec: self.codec.clone(),
            _args: PhantomData,
        }
    }
}

impl<Args> std::fmt::Debug for PausableStorage<Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PausableStorage")
            .field("queue", &self.persistence.config.queue)
            .finish()
    }
}

impl<Args> PausableStorage<Args> {
    /// The queue `config.queue` on `pool`.
    pub fn new(pool: &PgPool, config: Config) -> Self {
        PausableStorage {
            persistence: Persisted::new(PausableQueries {
                pool: pool.clone(),
                config,
            }),
            codec: JsonCodec::default(),
            _args: PhantomData,
        }
    }
}

impl<Args> Backend for PausableStorage<Args> {
    type Task = PgTask;
    type Error = Error;

    fn poll_ready(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Error>> {
        let heartbeat = self.persistence.config.heartbeat_interval;
        self.persistence.poll_ready(cx, worker, heartbeat)
    }

    fn poll_next(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Option<Result<PgTask, Error>>> {
        self.persistence.poll_next(cx, worker)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Error>> {
        self.persistence.poll_close(cx, worker)
    }
}

impl<Args> BackendConfig for PausableStorage<Args> {
    type Args = Args;
    type Kind = Durable;
    type Id = apalis_core::task::task_id::TaskId;
    type Config = Config;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &Config {
        &self.persistence.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        let (batch, persist, lock) = {
            let c = &self.persistence.config;
            (c.batch_size, c.persist_results, c.lock_tasks)
        };
        self.persistence
            .layer(JsonCodec::<Value>::default(), batch)
            .persist_results(persist)
            .lock_tasks(lock)
    }
}

impl<Args> WireFormatBackend for PausableStorage<Args> {
    type Codec = JsonCodec;
    type Compact = Vec<u8>;

    fn codec(&self) -> &JsonCodec {
        &self.codec
    }
}
