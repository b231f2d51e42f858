//! Scale: the due scans of the periodic tasks use indexes among 200,000 past bookings and jobs,
//! and still find what is due.

use chrono::{DateTime, Utc};
use dashlight_core::{Clock, jobs::PeriodicTask};
use dashlight_tests::world::World;
use dashlight_worker::periodic::{self, Context};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{payments, run, set_tests, t};

/// Every relation a plan scans sequentially.
fn seq_scans(plan: &Value, out: &mut Vec<String>) {
    if plan["Node Type"] == json!("Seq Scan") {
        out.push(plan["Relation Name"].as_str().unwrap_or("?").to_owned());
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        seq_scans(child, out);
    }
}

fn index_used(plan: &Value) -> bool {
    let t = plan["Node Type"].as_str().unwrap_or_default();
    t.contains("Index") || plan["Plans"].as_array().into_iter().flatten().any(index_used)
}

/// A parameter of an EXPLAINed query.
enum Arg {
    Time(DateTime<Utc>),
    Ids(Vec<i64>),
    Int(i64),
}

/// The plan of `sql` with `args`, as Postgres would run it.
async fn explain(pool: &PgPool, sql: &str, args: Vec<Arg>) -> Value {
    let mut q = sqlx::query_scalar::<_, Value>(sqlx::AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {sql}")));
    for a in args {
        q = match a {
            Arg::Time(t) => q.bind(t),
            Arg::Ids(ids) => q.bind(ids),
            Arg::Int(n) => q.bind(n),
        };
    }
    let out = q.fetch_one(pool).await.unwrap();
    out[0]["Plan"].clone()
}

#[tokio::test]
async fn due_scans_use_indexes_with_two_hundred_thousand_past_bookings() {
    let w = World::start().await;
    let student = w.person("student", "Yara", None).await;
    let instructor = w.person("instructor", "Zeno", None).await;
    let now = t("2026-11-25T09:00:00Z");
    let pool = w.pool();
    // 200,000 past lessons, one an hour going back (~23 years), each paid and invoiced, each with
    // its confirmation notification long done; 50,000 students whose tests are behind them.
    sqlx::query(
        "INSERT INTO bookings (student_id, instructor_id, booking_date, start_time, end_time, status, created_at)
         SELECT $1, $2, ($3 - g * interval '1 hour')::date, $3 - g * interval '1 hour', $3 - g * interval '1 hour' + interval '50 minutes',
                'completed', $3 - g * interval '1 hour' - interval '3 days'
         FROM generate_series(1, 200000) g",
    )
    .bind(student.profile_id)
    .bind(instructor.profile_id)
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO payments (student_id, booking_id, amount_minor, currency, method, status, paid_at, invoiced_at)
         SELECT student_id, id, 4500, 'GBP', 'card', 'succeeded', start_time, start_time FROM bookings",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO notifications (user_id, type, title, content, channels, policy, booking_id, dedupe_key, due_at, next_check_at, status)
         SELECT $1, 'booking_confirmed', 'Lesson booked', 'Lesson booked', ARRAY['email'], 'all', id, 'scale:' || id, created_at, created_at, 'done'
         FROM bookings",
    )
    .bind(student.user_id)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "WITH u AS (INSERT INTO users (email, role, first_name, last_name)
                    SELECT 'scale' || g || '@school.test', 'student', 'Scale', 'Student' || g FROM generate_series(1, 50000) g RETURNING id)
         INSERT INTO students (user_id, test_dates) SELECT id, ARRAY[$1 - (id % 900) * interval '1 day'] FROM u",
    )
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
    // 200,000 finished jobs of the last few days, none old enough to prune.
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, done_at)
         SELECT apalis.generate_ulid(), 'dashlight.notifications', '{}'::bytea, 'Done', 1, 5, $1 - g * interval '1 second', 0, ''::hstore,
                $1 - g * interval '1 second'
         FROM generate_series(1, 200000) g",
    )
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
    // What is due now: a new payment, today's lessons, one test ahead, one open notification.
    payments(&w, &student, 1, now).await;
    w.book(&student, &instructor, now + chrono::Duration::hours(3), now).await;
    set_tests(&w, &student, &[now + chrono::Duration::days(10)]).await;
    sqlx::query("ANALYZE").execute(pool).await.unwrap();

    let sweep = "SELECT id FROM notifications WHERE status IN ('pending', 'processing') AND next_check_at < $1 ORDER BY next_check_at LIMIT 5000 FOR UPDATE SKIP LOCKED";
    let made = "SELECT instructor_id, count(*) FROM bookings WHERE created_at >= $1 AND created_at < $2 GROUP BY GROUPING SETS ((instructor_id), ())";
    let day_ago = now - chrono::Duration::days(1);
    let plans = [
        (
            "invoice scan",
            explain(pool, periodic::invoices::SCAN_SQL, vec![Arg::Ids(vec![])]).await,
            "payments",
        ),
        (
            "agenda scan",
            explain(pool, periodic::agenda::SCAN_SQL, vec![Arg::Time(now)]).await,
            "bookings",
        ),
        (
            "test-reminder scan",
            explain(pool, periodic::test_reminders::SCAN_SQL, vec![Arg::Time(now)]).await,
            "students",
        ),
        (
            "reminder sweep (notifications_open_check_idx)",
            explain(pool, sweep, vec![Arg::Time(now)]).await,
            "notifications",
        ),
        (
            "rollup: bookings made",
            explain(pool, made, vec![Arg::Time(day_ago), Arg::Time(now)]).await,
            "bookings",
        ),
        (
            "prune",
            explain(
                pool,
                periodic::prune::DELETE_DONE_SQL,
                vec![Arg::Time(now - chrono::Duration::days(7)), Arg::Int(10_000)],
            )
            .await,
            "jobs",
        ),
    ];
    for (what, plan, big) in &plans {
        let mut seq = Vec::new();
        seq_scans(plan, &mut seq);
        assert!(!seq.iter().any(|r| r == big), "{what} scans {big} sequentially: {plan:#}");
        assert!(index_used(plan), "{what} uses no index: {plan:#}");
    }

    // And they find what is due among it all.
    let (clock, _hand) = Clock::manual(now);
    let ctx = Context::new(&w.config, pool.clone(), clock);
    assert!(run(&ctx, PeriodicTask::Invoices, now).await.starts_with("issued 1 invoices"));
    assert!(
        run(&ctx, PeriodicTask::TestReminders, now)
            .await
            .contains("2 test reminders created")
    );
    assert!(
        run(&ctx, PeriodicTask::DailyAgenda, now)
            .await
            .starts_with("1 daily agendas created")
    );
}
