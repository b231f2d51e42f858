//! Ticks: one tick fired by two replicas enqueues one job; a scheduler back after downtime
//! fires the latest missed tick once, not once per missed tick.

use chrono::{DateTime, Utc};
use dashlight_core::jobs::{PeriodicJob, PeriodicTask, QUEUE_PERIODIC};
use dashlight_tests::db::TestDb;
use std::str::FromStr;

use crate::{count, t};

#[tokio::test]
async fn two_replicas_firing_one_tick_enqueue_one_job() {
    let db = TestDb::new().await;
    let tick = t("2026-03-03T10:15:00Z");
    let a = dashlight_scheduler::fire(&db.pool, PeriodicTask::DailyAgenda, tick, "replica-a")
        .await
        .unwrap();
    let b = dashlight_scheduler::fire(&db.pool, PeriodicTask::DailyAgenda, tick, "replica-b")
        .await
        .unwrap();
    assert!(a && !b, "the first replica wins, the second sees the claim: {a} {b}");

    // At the same moment, too.
    let tick2 = t("2026-03-03T10:30:00Z");
    let (a, b) = tokio::join!(
        dashlight_scheduler::fire(&db.pool, PeriodicTask::DailyAgenda, tick2, "replica-a"),
        dashlight_scheduler::fire(&db.pool, PeriodicTask::DailyAgenda, tick2, "replica-b"),
    );
    assert_eq!(u8::from(a.unwrap()) + u8::from(b.unwrap()), 1, "exactly one replica wins a tick");

    let jobs: Vec<Vec<u8>> = sqlx::query_scalar("SELECT job FROM apalis.jobs WHERE job_type = $1 ORDER BY run_at")
        .bind(QUEUE_PERIODIC)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2, "one job per tick");
    let first: PeriodicJob = serde_json::from_slice(&jobs[0]).unwrap();
    assert_eq!(
        first,
        PeriodicJob {
            task: PeriodicTask::DailyAgenda,
            tick
        }
    );
}

#[tokio::test]
async fn catch_up_after_a_gap_fires_once_not_per_missed_tick() {
    let db = TestDb::new().await;
    let every_15 = cron::Schedule::from_str("0 */15 * * * *").unwrap();
    let schedules = vec![(PeriodicTask::TestReminders, every_15)];
    assert!(
        dashlight_scheduler::fire(&db.pool, PeriodicTask::TestReminders, t("2026-03-03T10:00:00Z"), "a")
            .await
            .unwrap()
    );

    // Down for three hours: twelve ticks missed.
    let fired = dashlight_scheduler::catch_up(&db.pool, &schedules, t("2026-03-03T13:07:00Z"), "b")
        .await
        .unwrap();
    assert_eq!(fired, vec![PeriodicTask::TestReminders]);
    let ticks: Vec<DateTime<Utc>> = sqlx::query_scalar("SELECT tick_at FROM scheduler_ticks ORDER BY tick_at")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        ticks,
        vec![t("2026-03-03T10:00:00Z"), t("2026-03-03T13:00:00Z")],
        "only the latest missed tick fires"
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM apalis.jobs").await, 2);

    // A second replica starting a moment later has nothing to catch up.
    let (a, b) = tokio::join!(
        dashlight_scheduler::catch_up(&db.pool, &schedules, t("2026-03-03T13:08:00Z"), "c"),
        dashlight_scheduler::catch_up(&db.pool, &schedules, t("2026-03-03T13:08:00Z"), "d"),
    );
    assert!(a.unwrap().is_empty() && b.unwrap().is_empty());
    assert_eq!(count(&db.pool, "SELECT count(*) FROM apalis.jobs").await, 2);
}
