//! `dashlight-worker`: drains the queues.
//!
//! - [`drain`]: the notification queue's loop: fetch, hold until due, dispatch, acknowledge.
//! - [`delivery`]: notification → deliveries → attempts: the planner, the messages, and the one
//!   recorder of delivery state ([`delivery::record`]: a sent email is recorded there, and so
//!   is a provider's later report, `delivered` / `undelivered`, through a receipt job).
//! - [`limits`]: providers' quotas shared by every worker (a token bucket per channel in
//!   Postgres), a provider's `Retry-After` hold, and send slots handed out by priority.
//! - [`channels`]: email, SMS, push, outbox — the only code that talks to providers.
//! - [`render`]: templates, loaded and checked at start-up.
//! - [`periodic`]: the periodic jobs the scheduler fires (reminder sweep, invoices, ...).
//!
//! The queue tables belong to `dashlight_core::queue`. [`serve_metrics`] gives the worker
//! program its own Prometheus `/metrics` (`WORKER_METRICS_ADDR`). [`run`] starts the notification drain
//! and a stock apalis worker for the periodic queue (on `dashlight_core::queue::PausableStorage`,
//! apalis-postgres's statements with a fetch that honours a pause), and stops cleanly when `shutdown` resolves:
//! in-flight sends finish, nothing new is fetched.

pub mod channels;
pub mod delivery;
pub mod drain;
pub mod limits;
pub mod periodic;
pub mod render;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use apalis::prelude::*;
use apalis_postgres::Config as PgConfig;
use dashlight_core::{
    Clock, Config, db,
    jobs::{PeriodicJob, QUEUE_PERIODIC},
    queue::PausableStorage,
};
use futures::FutureExt as _;
use sqlx::PgPool;

use crate::{
    channels::{email, outbox::Outbox, push::PushSender, sms::SmsSender},
    delivery::{DeliverySettings, Pipeline},
    render::Renderer,
};

/// A unique name for this process's workers: host, pid and a random suffix. apalis rescues the
/// jobs of a dead worker only if a restarted one does not reuse its name.
pub fn worker_name(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_else(|| "host".into());
    format!("{}-{role}-{}-{:04x}", host.trim(), std::process::id(), rand::random::<u16>())
}

/// Serves this process's metrics (every `dashlight_*` metric the worker records: send lateness,
/// job waits, provider holds, the retention purge, ...) in Prometheus's text format at
/// `http://{addr}/metrics`, with `metrics-exporter-prometheus`'s own listener. Call it once, from
/// within the runtime, before [`run`]; an address that cannot be bound is an error at start-up.
/// (`dashlight up` does not call it: there the admin API's `/metrics` serves the whole process.)
pub fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("WORKER_METRICS_ADDR {addr}: cannot serve /metrics"))?;
    tracing::info!(%addr, "metrics served at http://{addr}/metrics");
    Ok(())
}

/// Builds the pipeline from configuration: templates are loaded (a broken one fails here with its
/// file name), channels configured (a bad `SMTP_URL` or VAPID key fails here).
/// `key` is the installation's signing key ([`dashlight_core::signing::load`]), for the VERP
/// envelope senders and unsubscribe links of emails.
pub fn pipeline(
    config: &Config,
    pool: PgPool,
    clock: Clock,
    worker_name: String,
    key: dashlight_core::signing::Key,
) -> anyhow::Result<Pipeline> {
    let renderer = Renderer::configured(config.templates_dir.as_deref()).map_err(|e| anyhow::anyhow!("templates: {e}"))?;
    let from = email::parse_from(&config.mail_from).map_err(anyhow::Error::msg)?;
    let returns = email::ReturnPaths {
        key,
        bounce_domain: config.mail_bounce_domain.clone(),
        public_base_url: config.public_base_url.clone(),
    };
    let outbox = Outbox::new(&config.outbox_dir);
    let email = match &config.smtp {
        Some(smtp) => email::EmailSender::Smtp {
            transport: email::smtp_transport(&smtp.url, config.worker_concurrency.clamp(1, 256) as u32).map_err(anyhow::Error::msg)?,
            from,
            returns,
        },
        None => email::EmailSender::Outbox {
            outbox: outbox.clone(),
            from,
            returns,
        },
    };
    let http = reqwest::Client::builder()
        .user_agent(concat!("dashlight/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let sms = match &config.sms {
        Some(c) => SmsSender::Api {
            config: c.clone(),
            client: http.clone(),
            status_callback: format!("{}/hooks/sms/status", config.public_base_url.trim_end_matches('/')),
        },
        None => SmsSender::Outbox(outbox.clone()),
    };
    let push = match &config.push {
        // Its own client: SSRF-guarded resolver, no redirects (see channels::push).
        Some(c) => PushSender::from_config(c, config.push_allow_private_endpoints).map_err(anyhow::Error::msg)?,
        None => PushSender::Outbox(outbox),
    };
    Ok(Pipeline {
        pool,
        clock,
        renderer: Arc::new(renderer),
        email,
        sms,
        push,
        settings: DeliverySettings {
            max_attempts: config.delivery_max_attempts,
            retry_base: config.retry_base_delay,
            retry_max: config.retry_max_delay,
            school_name: config.school_name.clone(),
            school_tz: config.school_timezone,
            worker_name,
        },
    })
}

/// Decodes a job's payload in the handler rather than in apalis's codec: a payload that no
/// longer decodes (an older or foreign shape) then fails this one job for good, with a clear
/// error, instead of failing the backend's poll and stalling the batch it came in.
fn decode<T: serde::de::DeserializeOwned>(payload: serde_json::Value, id: &TaskId) -> Result<T, BoxDynError> {
    serde_json::from_value(payload).map_err(|e| {
        tracing::error!(job = %id, error = %e, "job payload does not decode: giving up on it");
        Box::new(AbortError::new(format!("job payload does not decode: {e}"))) as BoxDynError
    })
}

async fn periodic(payload: serde_json::Value, ctx: Data<periodic::Context>, id: TaskId) -> Result<(), BoxDynError> {
    let job: PeriodicJob = decode(payload, &id)?;
    let started = std::time::Instant::now();
    match periodic::run(&ctx, &job).await {
        Ok(summary) => {
            tracing::info!(job = %id, task = job.task.as_str(), tick = %job.tick, took_ms = started.elapsed().as_millis() as u64, %summary, "periodic job done");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(job = %id, task = job.task.as_str(), error = %e, "periodic job failed");
            Err(e.into())
        }
    }
}

/// apalis's storage of `queue`, fetching nothing while the queue is paused.
fn storage<T>(pool: &PgPool, queue: &str, batch: usize) -> PausableStorage<T> {
    PausableStorage::new(
        pool,
        PgConfig::default()
            .queue(queue)
            .batch_size(batch)
            // A dead worker's jobs go back to the queue after 30 s rather than 5 minutes.
            .heartbeat_interval(Duration::from_secs(5))
            .missed_heartbeats(6),
    )
}

/// Runs the workers until `shutdown` resolves, then lets in-flight jobs finish (up to 30 s):
/// the notification queue through the batched [`drain::Drain`], the periodic queue through a
/// stock apalis worker on [`PausableStorage`]. Both honour a pause of their queue.
pub async fn run(config: &Config, pool: PgPool, clock: Clock, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let name = worker_name("worker");
    let key = dashlight_core::signing::load_from(&pool).await?;
    let pipeline = pipeline(config, pool.clone(), clock.clone(), format!("{name}-notifications"), key)?;
    let ctx = periodic::Context::new(config, pool.clone(), clock);
    let concurrency = config.worker_concurrency;
    let poll = config.poll_interval;
    tracing::info!(worker = %name, concurrency, batch = config.worker_batch_size, poll_ms = poll.as_millis() as u64, email = ?pipeline.email, sms = ?std::mem::discriminant(&pipeline.sms), push = ?pipeline.push, "worker starting");

    // LISTEN needs a session: the pool's own in one, a one-connection pool on DATABASE_DIRECT_URL
    // behind a transaction-mode pooler, none (poll at POLL_INTERVAL) without it.
    let listen = match (config.database_pooler, db::listen_url(config)) {
        (db::Pooler::Session, _) => Some(pool.clone()),
        (db::Pooler::Transaction, Some(url)) => Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(db::connect_options(url, db::Pooler::Session, "dashlight-worker-listen").map_err(anyhow::Error::msg)?),
        ),
        (db::Pooler::Transaction, None) => None,
    };
    tracing::info!(wake_ups = if listen.is_some() { "LISTEN" } else { "polling only" }, "job wake-ups");
    let shutdown = shutdown.shared();
    let drain = drain::Drain::new(
        pipeline,
        drain::DrainSettings {
            batch_size: config.worker_batch_size,
            concurrency,
            poll_interval: poll,
            stale_after: drain::HEARTBEAT * 6,
            shutdown_timeout: Duration::from_secs(30),
            listen: listen.clone(),
            limits: limits::Limits::new(pool.clone(), config.rate_limits),
        },
    );
    let periodic_storage = storage::<serde_json::Value>(&pool, QUEUE_PERIODIC, 4);
    let p_name = format!("{name}-periodic");
    let monitor = Monitor::new()
        .shutdown_timeout(Duration::from_secs(30))
        // A worker whose backend failed (the database went away) is started again, so the
        // process heals by itself once Postgres is back. A short pause keeps a long outage from
        // turning into a busy loop; it only ever runs while the database is unreachable.
        .should_restart(|worker, error| {
            tracing::warn!(worker = %worker.name(), restarts = worker.restarts(), error = %error, "worker failed; restarting it in 1 s");
            std::thread::sleep(Duration::from_secs(1));
            true
        });
    // A restarted worker takes a new name: apalis then rescues the jobs the failed one held once
    // its old name's heartbeat goes stale (a reused name would keep them locked).
    let monitor = match listen {
        // Woken by apalis's insert trigger over the session's LISTEN, and polling for what
        // became due.
        Some(listen) => monitor.register(move |restarts| {
            let pubsub = StreamStrategy::new(apalis_postgres::Pubsub::new(listen.clone(), QUEUE_PERIODIC.to_owned()));
            WorkerBuilder::new(format!("{p_name}-{restarts}"))
                .backend(PollWith::new(periodic_storage.clone(), pubsub).poll_with_interval(poll))
                .data(ctx.clone())
                .concurrency(2)
                .build(periodic)
        }),
        // Through a transaction-mode pooler without DATABASE_DIRECT_URL: polling only.
        None => monitor.register(move |restarts| {
            WorkerBuilder::new(format!("{p_name}-{restarts}"))
                .backend(periodic_storage.clone().poll_with_interval(poll))
                .data(ctx.clone())
                .concurrency(2)
                .build(periodic)
        }),
    };
    let stop = shutdown.clone();
    let (drained, monitored) = tokio::join!(
        drain.run(shutdown.clone()),
        monitor.run_with_signal(async move {
            stop.await;
            tracing::info!("worker stopping: finishing in-flight jobs");
            Ok(())
        })
    );
    drained.context("notification drain")?;
    monitored.context("worker monitor")?;
    tracing::info!("worker stopped");
    Ok(())
}
