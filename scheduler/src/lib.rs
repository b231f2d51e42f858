//! `dashlight-scheduler`: fires the periodic jobs.
//!
//! One apalis-cron worker per periodic task turns its cron expression into ticks; each tick is
//! *claimed* in Postgres (`scheduler_ticks`, first INSERT wins) and, in the same transaction,
//! enqueued as a [`PeriodicJob`] for the workers. Any number of replicas may run: each tick fires
//! once. On start, a task whose latest scheduled tick was missed (downtime) fires once for it,
//! not once per missed tick. The heavy lifting runs in the workers.

use std::{collections::HashMap, future::Future, str::FromStr, time::Duration};

use anyhow::Context as _;
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use chrono::{DateTime, TimeZone, Utc};
use cron::Schedule;
use dashlight_core::{
    Clock, Config,
    jobs::{self, NewJob, PeriodicJob, PeriodicTask, QUEUE_PERIODIC},
};
use sqlx::PgPool;

/// The default cron expression (with seconds, UTC) of each task.
pub fn default_schedule(task: PeriodicTask) -> &'static str {
    match task {
        PeriodicTask::ReminderSweep => "*/10 * * * * *",
        PeriodicTask::RecurringBookings => "0 5 * * * *",
        PeriodicTask::Invoices => "30 * * * * *",
        PeriodicTask::AnalyticsRollup => "0 */15 * * * *",
        PeriodicTask::DailyAgenda => "0 */15 * * * *",
        PeriodicTask::TestReminders => "0 */15 * * * *",
        PeriodicTask::CrmFollowUp => "0 0 * * * *",
        PeriodicTask::PruneJobs => "0 30 3 * * *",
        PeriodicTask::Retention => "0 45 * * * *",
    }
}

/// The environment variable that overrides a task's schedule, e.g. `SCHEDULE_INVOICES`.
pub fn schedule_var(task: PeriodicTask) -> String {
    format!("SCHEDULE_{}", task.as_str().to_uppercase())
}

/// Every task's schedule, from `SCHEDULE_<TASK>` or the default. A bad expression names its variable.
pub fn schedules_from_env() -> anyhow::Result<Vec<(PeriodicTask, Schedule)>> {
    PeriodicTask::ALL
        .into_iter()
        .map(|task| {
            let var = schedule_var(task);
            let expr = std::env::var(&var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default_schedule(task).to_owned());
            let schedule = Schedule::from_str(&expr)
                .map_err(|e| anyhow::anyhow!("{var}: {expr:?} is not a cron expression (sec min hour day month weekday): {e}"))?;
            Ok((task, schedule))
        })
        .collect()
}

/// Claims `tick` of `task` and enqueues its job, in one transaction. Returns whether this
/// replica won the tick.
pub async fn fire(pool: &PgPool, task: PeriodicTask, tick: DateTime<Utc>, replica: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let won = sqlx::query!(
        "INSERT INTO scheduler_ticks (job, tick_at, claimed_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        task.as_str(),
        tick,
        replica,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if won {
        let job = PeriodicJob { task, tick };
        let priority = if task == PeriodicTask::ReminderSweep { 5 } else { 0 };
        jobs::enqueue(
            &mut tx,
            &[NewJob::new(QUEUE_PERIODIC, &job)
                .priority(priority)
                .idempotency_key(format!("{}:{}", task.as_str(), tick.timestamp()))],
        )
        .await?;
    }
    tx.commit().await?;
    if won {
        tracing::info!(task = task.as_str(), %tick, replica, "tick fired");
    }
    Ok(won)
}

/// The latest scheduled time of `schedule` at or before `now` (looking back at most 8 days).
pub fn latest_tick(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut from = now - chrono::Duration::days(8);
    let mut last = None;
    // Walk forward in chunks so frequent schedules stay cheap: jump close to `now` first.
    for window in [chrono::Duration::days(8), chrono::Duration::hours(2), chrono::Duration::minutes(2)] {
        let start = now - window;
        if schedule.after(&start).next().is_some_and(|t| t <= now) {
            from = start;
            break;
        }
    }
    for t in schedule.after(&from) {
        if t > now {
            break;
        }
        last = Some(t);
    }
    last
}

/// After downtime: each task whose latest scheduled tick was never claimed fires once for it.
pub async fn catch_up(
    pool: &PgPool,
    schedules: &[(PeriodicTask, Schedule)],
    now: DateTime<Utc>,
    replica: &str,
) -> Result<Vec<PeriodicTask>, sqlx::Error> {
    let mut fired = Vec::new();
    for (task, schedule) in schedules {
        let Some(latest) = latest_tick(schedule, now) else { continue };
        let last_claimed: Option<DateTime<Utc>> =
            sqlx::query_scalar!("SELECT max(tick_at) FROM scheduler_ticks WHERE job = $1", task.as_str())
                .fetch_one(pool)
                .await?;
        if last_claimed.is_none_or(|l| l < latest) && fire(pool, *task, latest, replica).await? {
            fired.push(*task);
        }
    }
    Ok(fired)
}

/// Deletes claimed ticks older than `keep` (they only guard against double firing).
pub async fn prune_ticks(pool: &PgPool, now: DateTime<Utc>, keep: chrono::Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!("DELETE FROM scheduler_ticks WHERE tick_at < $1", now - keep)
        .execute(pool)
        .await?
        .rows_affected())
}

#[derive(Clone)]
struct TickCtx {
    pool: PgPool,
    task: PeriodicTask,
    replica: String,
}

async fn on_tick(tick: Tick, ctx: Data<TickCtx>) -> Result<(), BoxDynError> {
    let at = Utc
        .timestamp_opt(tick.get_timestamp() as i64, 0)
        .single()
        .ok_or("tick out of range")?;
    fire(&ctx.pool, ctx.task, at, &ctx.replica).await?;
    Ok(())
}

/// Runs the scheduler until `shutdown` resolves.
pub async fn run(_config: &Config, pool: PgPool, clock: Clock, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let schedules = schedules_from_env()?;
    let replica = dashlight_worker_name();
    // The database may be away at start (or go away during the catch-up, as in a restart): keep
    // trying until it is back or we are told to stop, rather than exit.
    let mut shutdown = Box::pin(shutdown);
    let fired = loop {
        match catch_up(&pool, &schedules, clock.now(), &replica).await {
            Ok(fired) => break fired,
            Err(e) => {
                tracing::warn!(error = %e, "catching up missed ticks failed; retrying in 1 s");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    if !fired.is_empty() {
        tracing::info!(tasks = ?fired.iter().map(|t| t.as_str()).collect::<Vec<_>>(), "fired missed ticks once after downtime");
    }
    let _ = prune_ticks(&pool, clock.now(), chrono::Duration::days(7)).await;
    let summary: HashMap<&str, String> = schedules.iter().map(|(t, s)| (t.as_str(), s.source().to_owned())).collect();
    tracing::info!(replica = %replica, schedules = ?summary, "scheduler starting");
    let mut monitor = Monitor::new().shutdown_timeout(Duration::from_secs(10));
    for (task, schedule) in schedules {
        let ctx = TickCtx {
            pool: pool.clone(),
            task,
            replica: replica.clone(),
        };
        let name = format!("{replica}-{}", task.as_str());
        monitor = monitor.register(move |_| {
            WorkerBuilder::new(name.clone())
                .backend(CronScheduler::new(schedule.clone()))
                .data(ctx.clone())
                .build(on_tick)
        });
    }
    monitor
        .run_with_signal(async move {
            shutdown.await;
            Ok(())
        })
        .await
        .context("scheduler monitor")?;
    tracing::info!("scheduler stopped");
    Ok(())
}

fn dashlight_worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "host".into());
    format!("{}-scheduler-{}-{:04x}", host.trim(), std::process::id(), rand_suffix())
}

fn rand_suffix() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        & 0xffff) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_latest_tick() {
        for t in PeriodicTask::ALL {
            Schedule::from_str(default_schedule(t)).unwrap();
        }
        let s = Schedule::from_str("0 */15 * * * *").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 3, 3, 10, 7, 0).unwrap();
        assert_eq!(latest_tick(&s, now), Some(Utc.with_ymd_and_hms(2026, 3, 3, 10, 0, 0).unwrap()));
        let daily = Schedule::from_str("0 30 3 * * *").unwrap();
        assert_eq!(latest_tick(&daily, now), Some(Utc.with_ymd_and_hms(2026, 3, 3, 3, 30, 0).unwrap()));
    }
}
