//! The scheduler and the periodic jobs: ticks claimed once across replicas, caught up once after
//! downtime, and every periodic task idempotent and index-driven against real Postgres, with
//! time injected (a manual clock and explicit ticks; nothing waits for real time to pass).

use std::{collections::BTreeSet, str::FromStr, time::Duration};

use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
use chrono_tz::Europe::London;
use dashlight_core::{
    Clock,
    jobs::{self, NewJob, PeriodicJob, PeriodicTask, QUEUE_PERIODIC},
    series::{self, NewSeries},
};
use dashlight_tests::{
    db::TestDb,
    wait::try_wait_until,
    world::{Person, World},
};
use dashlight_worker::{
    periodic::{self, Context},
    render::{Part, Renderer},
};
use serde_json::{Value, json};
use sqlx::PgPool;

const LONG: Duration = Duration::from_secs(60);

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Runs one periodic task the way the worker's handler does.
async fn run(ctx: &Context, task: PeriodicTask, tick: DateTime<Utc>) -> String {
    periodic::run(ctx, &PeriodicJob { task, tick })
        .await
        .unwrap_or_else(|e| panic!("{}: {e:#}", task.as_str()))
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Note {
    user_id: Option<i64>,
    recipient_email: Option<String>,
    dedupe_key: String,
    status: String,
    due_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    data: Value,
}

async fn notes(pool: &PgPool, kind: &str) -> Vec<Note> {
    sqlx::query_as(
        "SELECT user_id, recipient_email, dedupe_key, status, due_at, expires_at, data FROM notifications WHERE type = $1 ORDER BY id",
    )
    .bind(kind)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Renders every part of every notification of `kind` with the shipped templates, the way the
/// worker builds the context (data + recipient + school): the producers keep to the contract.
async fn assert_renders(w: &World, kind: &str) {
    let renderer = Renderer::load(&w.config.templates_dir).expect("templates load");
    for n in notes(w.pool(), kind).await {
        let mut ctx = n.data.clone();
        ctx["recipient"] = match n.user_id {
            Some(uid) => {
                let (first, last, tz): (String, String, String) =
                    sqlx::query_as("SELECT first_name, last_name, timezone FROM users WHERE id = $1")
                        .bind(uid)
                        .fetch_one(w.pool())
                        .await
                        .unwrap();
                json!({"first_name": first, "last_name": last, "timezone": tz})
            }
            None => json!({"first_name": w.config.school_name, "last_name": "", "timezone": w.config.school_timezone.name()}),
        };
        ctx["school"] = json!({"name": w.config.school_name});
        for part in Part::ALL {
            let out = renderer
                .render(kind, part, &ctx)
                .unwrap_or_else(|e| panic!("{kind} {part} of {}: {e}\n{ctx:#}", n.dedupe_key));
            assert!(!out.trim().is_empty(), "{kind} {part} is empty");
        }
    }
}

async fn set_timezone(w: &World, p: &Person, tz: &str) {
    sqlx::query("UPDATE users SET timezone = $2 WHERE id = $1")
        .bind(p.user_id)
        .bind(tz)
        .execute(w.pool())
        .await
        .unwrap();
}

// --- ticks ------------------------------------------------------------------------------

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

// --- recurring bookings -----------------------------------------------------------------

async fn new_series(
    w: &World,
    student: &Person,
    instructor: &Person,
    weekdays: Vec<i16>,
    starts_on: NaiveDate,
    until_on: Option<NaiveDate>,
) -> i64 {
    let mut conn = w.pool().acquire().await.unwrap();
    series::create(
        &mut conn,
        NewSeries {
            student_id: student.profile_id,
            instructor_id: instructor.profile_id,
            weekdays,
            local_start_time: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
            duration_minutes: 60,
            timezone: None,
            pickup_location: Some("Station Road".into()),
            starts_on,
            until_on,
            occurrence_count: None,
        },
    )
    .await
    .unwrap()
    .id
}

async fn series_bookings(pool: &PgPool, series_id: i64) -> Vec<(i64, DateTime<Utc>, String)> {
    sqlx::query_as("SELECT id, start_time, status FROM bookings WHERE series_id = $1 ORDER BY start_time")
        .bind(series_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn series_expansion_is_idempotent_skips_conflicts_and_tells_student_and_school() {
    let w = World::start().await;
    let student = w.person("student", "Sofia", Some("+447700900301")).await;
    let other = w.person("student", "Omar", None).await;
    let instructor = w.person("instructor", "Ingrid", None).await;
    // Tuesdays only, 09:00-19:00 London.
    sqlx::query("INSERT INTO instructor_availability (instructor_id, day_of_week, start_time, end_time) VALUES ($1, 2, '09:00', '19:00')")
        .bind(instructor.profile_id)
        .execute(w.pool())
        .await
        .unwrap();
    let now = t("2026-01-05T12:00:00Z"); // a Monday
    let (clock, hand) = Clock::manual(now);
    // Omar already has Ingrid on Tuesday 13 January at 17:00.
    let clash = w.book(&other, &instructor, t("2026-01-13T17:00:00Z"), now).await;
    // Tuesdays and Saturdays at 17:00, from a date already past.
    let sid = new_series(
        &w,
        &student,
        &instructor,
        vec![2, 6],
        NaiveDate::from_ymd_opt(2025, 12, 1).unwrap(),
        None,
    )
    .await;
    // A series whose time zone is broken (written around the API) fails alone.
    let broken = new_series(&w, &other, &instructor, vec![2], NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(), None).await;
    sqlx::query("UPDATE booking_series SET timezone = 'Mars/Olympus_Mons' WHERE id = $1")
        .bind(broken)
        .execute(w.pool())
        .await
        .unwrap();
    let ctx = Context::new(&w.config, w.pool().clone(), clock.clone());

    let summary = run(&ctx, PeriodicTask::RecurringBookings, now).await;
    assert!(summary.contains("1 failed"), "{summary}");
    assert!(series_bookings(w.pool(), broken).await.is_empty());
    let booked = series_bookings(w.pool(), sid).await;
    let starts: Vec<DateTime<Utc>> = booked.iter().map(|b| b.1).collect();
    // The horizon (28 days) ends on Monday 2 February: Tuesdays 6, 13, 20, 27; Saturdays 10, 17, 24, 31.
    assert_eq!(
        starts,
        vec![t("2026-01-06T17:00:00Z"), t("2026-01-20T17:00:00Z"), t("2026-01-27T17:00:00Z")],
        "{summary}"
    );
    assert!(starts.iter().all(|s| *s > now), "nothing before now is ever booked");

    let conflicts = notes(w.pool(), "recurring_conflict").await;
    let to_student: Vec<&Note> = conflicts.iter().filter(|n| n.user_id == Some(student.user_id)).collect();
    let to_school: Vec<&Note> = conflicts.iter().filter(|n| n.user_id.is_none()).collect();
    assert_eq!(to_student.len(), 5, "the clash and four Saturdays: {conflicts:#?}");
    assert_eq!(to_school.len(), 5);
    assert!(to_school.iter().all(|n| n.recipient_email.as_deref() == Some("no-reply@localhost")));
    let clash_note = to_student
        .iter()
        .find(|n| n.data["date"] == json!("2026-01-13T17:00:00+00:00"))
        .expect("the clash is reported");
    assert!(
        clash_note.data["reason"].as_str().unwrap().contains("already booked"),
        "{:?}",
        clash_note.data
    );
    let saturday = to_student
        .iter()
        .find(|n| n.data["date"] == json!("2026-01-10T17:00:00+00:00"))
        .expect("Saturday is reported");
    assert!(
        saturday.data["reason"].as_str().unwrap().contains("availability"),
        "{:?}",
        saturday.data
    );
    assert_renders(&w, "recurring_conflict").await;

    // A second run (a retried job, another worker) books and notifies nothing new.
    let before = count(w.pool(), "SELECT count(*) FROM notifications").await;
    run(&ctx, PeriodicTask::RecurringBookings, now).await;
    assert_eq!(series_bookings(w.pool(), sid).await, booked);
    assert_eq!(count(w.pool(), "SELECT count(*) FROM notifications").await, before);
    assert_eq!(
        count(w.pool(), "SELECT count(*) FROM bookings").await,
        4,
        "Omar's booking and three of the series"
    );

    // A week on, the horizon moves: Tuesday 3 February is booked, Saturday 7 reported; the
    // bookings made earlier are left exactly as they were.
    hand.set(now + chrono::Duration::days(7));
    run(&ctx, PeriodicTask::RecurringBookings, now + chrono::Duration::days(7)).await;
    let later = series_bookings(w.pool(), sid).await;
    assert_eq!(later.len(), 4);
    assert_eq!(&later[..3], &booked[..]);
    assert_eq!(later[3].1, t("2026-02-03T17:00:00Z"));
    assert_eq!(notes(w.pool(), "recurring_conflict").await.len(), 12);

    // Ended: nothing more is booked, what was booked stays.
    sqlx::query("UPDATE booking_series SET status = 'ended', ended_at = $2 WHERE id = $1")
        .bind(sid)
        .bind(now)
        .execute(w.pool())
        .await
        .unwrap();
    hand.set(now + chrono::Duration::days(21));
    run(&ctx, PeriodicTask::RecurringBookings, now + chrono::Duration::days(21)).await;
    assert_eq!(series_bookings(w.pool(), sid).await, later);
    let clash_status: String = sqlx::query_scalar("SELECT status FROM bookings WHERE id = $1")
        .bind(clash.id)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(clash_status, "confirmed");
}

#[tokio::test]
async fn weekly_series_keeps_its_local_time_across_both_dst_changes() {
    let w = World::start().await;
    let student = w.person("student", "Dora", None).await;
    let instructor = w.person("instructor", "Emil", None).await;
    let now = t("2026-03-01T12:00:00Z");
    let (clock, _hand) = Clock::manual(now);
    // Thursdays at 17:00 London, March to November.
    let sid = new_series(
        &w,
        &student,
        &instructor,
        vec![4],
        NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        NaiveDate::from_ymd_opt(2026, 11, 30),
    )
    .await;
    let mut config = w.config.clone();
    config.recurring_horizon_days = 280;
    let ctx = Context::new(&config, w.pool().clone(), clock);
    run(&ctx, PeriodicTask::RecurringBookings, now).await;

    let booked = series_bookings(w.pool(), sid).await;
    assert_eq!(booked.len(), 39, "every Thursday from 5 March to 26 November");
    for (_, start, _) in &booked {
        let local = start.with_timezone(&London);
        assert_eq!((local.hour(), local.minute()), (17, 0), "{start} is not 17:00 in London");
        let summer = *start > t("2026-03-29T01:00:00Z") && *start < t("2026-10-25T01:00:00Z");
        assert_eq!(start.hour(), if summer { 16 } else { 17 }, "{start}");
    }
    let starts: BTreeSet<DateTime<Utc>> = booked.iter().map(|b| b.1).collect();
    for expected in [
        "2026-03-26T17:00:00Z",
        "2026-04-02T16:00:00Z",
        "2026-10-22T16:00:00Z",
        "2026-10-29T17:00:00Z",
    ] {
        assert!(starts.contains(&t(expected)), "{expected} missing");
    }
    let status: String = sqlx::query_scalar("SELECT status FROM booking_series WHERE id = $1")
        .bind(sid)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(status, "ended", "nothing left after until_on");
}

// --- invoices ---------------------------------------------------------------------------

async fn payments(w: &World, student: &Person, n: i64, paid_at: DateTime<Utc>) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO payments (student_id, amount_minor, currency, method, status, paid_at)
         SELECT $1, 4000 + g * 7, 'GBP', 'card', 'succeeded', $3 FROM generate_series(1, $2) g RETURNING id",
    )
    .bind(student.profile_id)
    .bind(n as i32)
    .bind(paid_at)
    .fetch_all(w.pool())
    .await
    .unwrap()
}

#[derive(Debug, sqlx::FromRow)]
struct Invoice {
    payment_id: i64,
    seq: i32,
    invoice_number: String,
    net_minor: i64,
    tax_minor: i64,
    total_minor: i64,
    pdf_path: Option<String>,
}

#[tokio::test]
async fn concurrent_invoice_runs_number_thirty_payments_without_gaps_and_write_real_pdfs() {
    let w = World::start().await;
    let student = w.person("student", "Hannah", None).await;
    let instructor = w.person("instructor", "Ivan", None).await;
    let now = t("2026-03-03T09:00:00Z");
    let (clock, _hand) = Clock::manual(now);
    let lesson = w.book(&student, &instructor, t("2026-03-05T10:00:00Z"), now).await;
    let ids = payments(&w, &student, 30, now).await;
    sqlx::query("UPDATE payments SET booking_id = $2 WHERE id = $1")
        .bind(ids[0])
        .bind(lesson.id)
        .execute(w.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO payments (student_id, amount_minor, currency, method, status) VALUES ($1, 5000, 'GBP', 'card', 'pending')")
        .bind(student.profile_id)
        .execute(w.pool())
        .await
        .unwrap();

    // An unwritable invoice directory: every issue rolls back, and with it its number.
    let mut broken = w.config.clone();
    broken.invoice_dir = "/dev/null/invoices".into();
    let summary = run(&Context::new(&broken, w.pool().clone(), clock.clone()), PeriodicTask::Invoices, now).await;
    assert!(summary.contains("30 failed"), "{summary}");
    assert_eq!(count(w.pool(), "SELECT count(*) FROM invoices").await, 0);
    assert_eq!(
        count(w.pool(), "SELECT count(*) FROM invoice_counters").await,
        0,
        "rolled-back numbers are given back"
    );

    // Four workers at once.
    let ctx = Context::new(&w.config, w.pool().clone(), clock.clone());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let ctx = ctx.clone();
            tokio::spawn(async move { run(&ctx, PeriodicTask::Invoices, now).await })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let rows: Vec<Invoice> =
        sqlx::query_as("SELECT payment_id, seq, invoice_number, net_minor, tax_minor, total_minor, pdf_path FROM invoices ORDER BY seq")
            .fetch_all(w.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 30);
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>(),
        "numbers 1..30, no gap, no duplicate"
    );
    assert_eq!(
        rows.iter().map(|r| r.payment_id).collect::<BTreeSet<_>>(),
        ids.iter().copied().collect::<BTreeSet<_>>(),
        "one invoice per payment"
    );
    for r in &rows {
        assert_eq!(r.invoice_number, format!("INV-2026-{:06}", r.seq));
        assert_eq!(r.net_minor + r.tax_minor, r.total_minor);
        assert_eq!(
            r.tax_minor,
            (r.total_minor as f64 / 6.0).round() as i64,
            "VAT is a sixth of a tax-inclusive total"
        );
    }
    assert_eq!(
        count(w.pool(), "SELECT last_seq::bigint FROM invoice_counters WHERE year = 2026").await,
        30
    );

    // One invoice_issued per invoice, pointing at its PDF.
    let issued = notes(w.pool(), "invoice_issued").await;
    assert_eq!(issued.len(), 30);
    assert!(issued.iter().all(|n| n.user_id == Some(student.user_id)));
    assert_renders(&w, "invoice_issued").await;
    let first = issued
        .iter()
        .find(|n| n.data["invoice"]["number"] == json!("INV-2026-000001"))
        .unwrap();
    assert_eq!(first.data["invoice"]["currency"], json!("GBP"));
    assert_eq!(first.data["invoice"]["issued_at"], json!(now.to_rfc3339()));
    let path = first.data["invoice"]["pdf_path"].as_str().unwrap();
    assert_eq!(Some(path.to_owned()), rows[0].pdf_path);
    assert!(path.ends_with("/2026/INV-2026-000001.pdf"), "{path}");

    // The PDF is a real one, and says what it is.
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.starts_with(b"%PDF"));
    let doc = lopdf::Document::load_mem(&bytes).expect("lopdf parses the invoice");
    let text = doc.extract_text(&[1]).unwrap();
    for expected in [
        "INV-2026-000001",
        "Hannah Tester",
        "hannah@school.test",
        "Dashlight Driving School",
        "VAT",
    ] {
        assert!(text.contains(expected), "{expected:?} not in the PDF text: {text}");
    }
    let lesson_invoice = rows.iter().find(|r| r.payment_id == ids[0]).unwrap();
    let lesson_pdf = lopdf::Document::load_mem(&std::fs::read(lesson_invoice.pdf_path.as_ref().unwrap()).unwrap())
        .unwrap()
        .extract_text(&[1])
        .unwrap();
    assert!(
        lesson_pdf.contains("Driving lesson") && lesson_pdf.contains("Ivan Tester"),
        "{lesson_pdf}"
    );
    assert!(lesson_pdf.contains("Thursday 5 March 2026, 10:00"), "{lesson_pdf}");
    let leftovers: Vec<String> = std::fs::read_dir(std::path::Path::new(path).parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".pdf"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Nothing is left to do: a re-run issues nothing.
    let summary = run(&ctx, PeriodicTask::Invoices, now).await;
    assert!(summary.starts_with("issued 0 invoices"), "{summary}");
    assert_eq!(count(w.pool(), "SELECT count(*) FROM invoices").await, 30);
    assert_eq!(notes(w.pool(), "invoice_issued").await.len(), 30);
}

#[tokio::test]
async fn invoice_email_arrives_with_the_pdf_attached() {
    let w = World::start().await;
    let student = w.person("student", "Isla", None).await;
    payments(&w, &student, 1, Utc::now()).await;
    let worker = w.spawn_worker(Clock::system());
    let ctx = Context::new(&w.config, w.pool().clone(), Clock::system());
    let summary = run(&ctx, PeriodicTask::Invoices, Utc::now()).await;
    assert!(summary.starts_with("issued 1 invoices"), "{summary}");

    let mails = w.smtp.wait_for_messages(1, LONG).await.unwrap();
    assert_eq!(mails[0].rcpt_to, vec![student.email.clone()]);
    let msg = mail_parser::MessageParser::default().parse(&mails[0].data).expect("parses");
    assert!(msg.subject().unwrap().contains("INV-"), "{:?}", msg.subject());
    let pdfs: Vec<_> = msg
        .attachments()
        .filter(|a| {
            use mail_parser::MimeHeaders;
            a.content_type()
                .is_some_and(|ct| ct.ctype() == "application" && ct.subtype() == Some("pdf"))
        })
        .collect();
    assert_eq!(pdfs.len(), 1, "one application/pdf attachment");
    assert!(pdfs[0].contents().starts_with(b"%PDF"));
    {
        use mail_parser::MimeHeaders;
        assert!(
            pdfs[0]
                .attachment_name()
                .is_some_and(|n| n.starts_with("INV-") && n.ends_with(".pdf")),
            "{:?}",
            pdfs[0].attachment_name()
        );
    }
    try_wait_until("the delivery is recorded as sent", LONG, || async {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_deliveries WHERE status = 'sent'")
            .fetch_one(w.pool())
            .await?;
        Ok((sent == 1).then_some(()))
    })
    .await
    .unwrap();
    worker.stop().await.unwrap();
}

// --- analytics rollup -------------------------------------------------------------------

async fn rollup_rows(pool: &PgPool) -> Value {
    sqlx::query_scalar(
        "SELECT coalesce(json_agg(x ORDER BY x.day, x.instructor_id NULLS FIRST), '[]')::jsonb FROM (
            SELECT id, day, instructor_id, bookings_made, lessons_completed, cancellations, no_shows, revenue_minor, deliveries,
                   delivery_success_rate, due_to_sent_p50_ms, due_to_sent_p95_ms, events FROM daily_rollups) x",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn rollup_of_a_day_run_twice_gives_identical_rows() {
    let w = World::start().await;
    let s1 = w.person("student", "Ruth", None).await;
    let s2 = w.person("student", "Sam", None).await;
    let i1 = w.person("instructor", "Tara", None).await;
    let i2 = w.person("instructor", "Umar", None).await;
    // Bookings are stamped with the database's clock: run the rollup at the real now.
    let now = Utc::now();
    let (clock, _hand) = Clock::manual(now);
    let day = chrono::Duration::days(1);
    let b1 = w.book(&s1, &i1, now + day * 2, now).await;
    let _b2 = w.book(&s2, &i1, now + day * 3, now).await;
    let b3 = w.book(&s1, &i2, now + day * 4, now).await;
    let b4 = w.book(&s2, &i2, now, now).await;
    let mut conn = w.pool().acquire().await.unwrap();
    dashlight_core::bookings::cancel(&mut conn, &w.booking_settings(), b1.id, Some("ill".into()), now)
        .await
        .unwrap();
    sqlx::query("UPDATE bookings SET status = 'no_show' WHERE id = $1")
        .bind(b4.id)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO lessons (booking_id, instructor_id, student_id, completed_at) VALUES ($1, $2, $3, $4)")
        .bind(b3.id)
        .bind(i2.profile_id)
        .bind(s1.profile_id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO payments (student_id, booking_id, amount_minor, currency, method, status, paid_at) VALUES ($1, $2, 4500, 'GBP', 'card', 'succeeded', $3), ($4, NULL, 10000, 'GBP', 'card', 'succeeded', $3)")
        .bind(s1.profile_id)
        .bind(b3.id)
        .bind(now)
        .bind(s2.profile_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    // Deliveries of Tara's first confirmation: an email sent 1.5 s after it was due, an SMS dead.
    let confirmation: (i64, DateTime<Utc>) = sqlx::query_as("SELECT id, due_at FROM notifications WHERE dedupe_key = $1")
        .bind(format!("booking_confirmed:{}", b1.id))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO notification_deliveries (notification_id, channel, target, status, sent_at, attempts) VALUES
            ($1, 'email', 'ruth@school.test', 'sent', $2, 1), ($1, 'sms', '+447700900999', 'dead', NULL, 8)",
    )
    .bind(confirmation.0)
    .bind(confirmation.1 + chrono::Duration::milliseconds(1500))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("INSERT INTO crm_contacts (user_id, name, lead_status) VALUES ($1, 'Ruth Tester', 'lead'), (NULL, 'Walk-in', 'lead')")
        .bind(s1.user_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    let ctx = Context::new(&w.config, w.pool().clone(), clock);
    run(&ctx, PeriodicTask::AnalyticsRollup, now).await;
    let first = rollup_rows(w.pool()).await;
    let crm_first: Value = sqlx::query_scalar("SELECT json_agg(c ORDER BY id)::jsonb FROM crm_contacts c")
        .fetch_one(w.pool())
        .await
        .unwrap();
    run(&ctx, PeriodicTask::AnalyticsRollup, now + chrono::Duration::minutes(15)).await;
    assert_eq!(rollup_rows(w.pool()).await, first, "recomputing changes nothing");
    let crm_second: Value = sqlx::query_scalar("SELECT json_agg(c ORDER BY id)::jsonb FROM crm_contacts c")
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(crm_second, crm_first, "the CRM rows are not even touched again");

    let rows = first.as_array().unwrap();
    let today = now.with_timezone(&London).date_naive().to_string();
    assert_eq!(rows.len(), 5, "three school rows and two instructors today: {first:#}");
    let row = |instructor: Option<i64>| {
        rows.iter()
            .find(|r| r["day"] == json!(today) && r["instructor_id"] == json!(instructor))
            .unwrap_or_else(|| panic!("{instructor:?}: {first:#}"))
    };
    let school = row(None);
    assert_eq!(
        (
            school["bookings_made"].clone(),
            school["cancellations"].clone(),
            school["no_shows"].clone()
        ),
        (json!(4), json!(1), json!(1))
    );
    assert_eq!(
        (school["lessons_completed"].clone(), school["revenue_minor"].clone()),
        (json!(1), json!(14500))
    );
    assert_eq!(school["deliveries"]["email"], json!({"sent": 1, "failed": 0, "dead": 0}));
    assert_eq!(school["deliveries"]["sms"], json!({"sent": 0, "failed": 0, "dead": 1}));
    assert_eq!(school["delivery_success_rate"].as_f64(), Some(0.5));
    assert_eq!(school["due_to_sent_p50_ms"].as_f64(), Some(1500.0));
    assert_eq!(school["due_to_sent_p95_ms"].as_f64(), Some(1500.0));
    assert!(school["events"].as_i64().unwrap() >= 5, "4 bookings and a cancellation: {school}");
    let tara = row(Some(i1.profile_id));
    assert_eq!(
        (
            tara["bookings_made"].clone(),
            tara["cancellations"].clone(),
            tara["revenue_minor"].clone()
        ),
        (json!(2), json!(1), json!(0))
    );
    assert_eq!(tara["deliveries"]["email"]["sent"], json!(1));
    assert_eq!(tara["events"], json!(2), "the two booking_created events naming Tara");
    let umar = row(Some(i2.profile_id));
    assert_eq!(
        (
            umar["bookings_made"].clone(),
            umar["no_shows"].clone(),
            umar["lessons_completed"].clone(),
            umar["revenue_minor"].clone()
        ),
        (json!(2), json!(1), json!(1), json!(4500))
    );
    assert_eq!(umar["delivery_success_rate"], Value::Null);

    let ruth: (String, i64) = sqlx::query_as("SELECT lead_status, lifetime_value_minor FROM crm_contacts WHERE user_id = $1")
        .bind(s1.user_id)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(
        ruth,
        ("active".to_owned(), 4500),
        "a lead who booked is active; lifetime value from succeeded payments"
    );
    let walk_in: String = sqlx::query_scalar("SELECT lead_status FROM crm_contacts WHERE user_id IS NULL")
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(walk_in, "lead");
}

// --- daily agenda -----------------------------------------------------------------------

#[tokio::test]
async fn daily_agenda_goes_out_at_seven_local_time_once_per_instructor() {
    let w = World::start().await;
    let student = w.person("student", "Vera", None).await;
    let london = w.person("instructor", "Lena", None).await;
    let new_york = w.person("instructor", "Nate", None).await;
    let idle = w.person("instructor", "Otto", None).await;
    set_timezone(&w, &new_york, "America/New_York").await;
    let booked_at = t("2026-03-01T00:00:00Z");
    // Lena (London, GMT in March): two lessons on Tuesday 3 March, one on the 4th.
    w.book(&student, &london, t("2026-03-03T14:00:00Z"), booked_at).await;
    w.book(&student, &london, t("2026-03-03T09:30:00Z"), booked_at).await;
    w.book(&student, &london, t("2026-03-04T09:00:00Z"), booked_at).await;
    // Nate (New York, UTC-5): 10:00 and 22:00 on 3 March, the latter already the 4th in UTC.
    w.book(&student, &new_york, t("2026-03-03T15:00:00Z"), booked_at).await;
    w.book(&student, &new_york, t("2026-03-04T03:00:00Z"), booked_at).await;
    // Otto: nothing on the 3rd.
    w.book(&student, &idle, t("2026-03-05T12:00:00Z"), booked_at).await;

    let (clock, hand) = Clock::manual(t("2026-03-03T06:59:00Z"));
    let ctx = Context::new(&w.config, w.pool().clone(), clock);
    run(&ctx, PeriodicTask::DailyAgenda, t("2026-03-03T06:59:00Z")).await;
    assert!(notes(w.pool(), "daily_agenda").await.is_empty(), "nobody before 07:00 local");

    // 08:00 in London is 03:00 in New York.
    for tick in ["2026-03-03T07:00:00Z", "2026-03-03T07:15:00Z", "2026-03-03T08:00:00Z"] {
        hand.set(t(tick));
        run(&ctx, PeriodicTask::DailyAgenda, t(tick)).await;
    }
    let agendas = notes(w.pool(), "daily_agenda").await;
    assert_eq!(agendas.len(), 1, "only Lena, once: {agendas:#?}");
    let lena = &agendas[0];
    assert_eq!(lena.user_id, Some(london.user_id));
    assert_eq!(lena.dedupe_key, format!("daily_agenda:{}:2026-03-03", london.profile_id));
    assert_eq!(lena.data["date"], json!("2026-03-03"));
    assert_eq!(lena.data["count"], json!(2));
    let starts: Vec<&str> = lena.data["lessons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["start_time"].as_str().unwrap())
        .collect();
    assert_eq!(starts, vec!["2026-03-03T09:30:00+00:00", "2026-03-03T14:00:00+00:00"]);
    assert_eq!(lena.data["lessons"][0]["student_name"], json!("Vera Tester"));
    assert_eq!(lena.data["lessons"][0]["pickup_location"], json!("Station Road"));
    assert_eq!(
        lena.expires_at,
        Some(t("2026-03-04T00:00:00Z")),
        "an agenda is pointless after its day"
    );

    // 07:15 in New York.
    for tick in ["2026-03-03T12:15:00Z", "2026-03-03T12:30:00Z", "2026-03-03T18:00:00Z"] {
        hand.set(t(tick));
        run(&ctx, PeriodicTask::DailyAgenda, t(tick)).await;
    }
    let agendas = notes(w.pool(), "daily_agenda").await;
    assert_eq!(agendas.len(), 2, "Lena and Nate, once each; Otto has no lessons: {agendas:#?}");
    let nate = &agendas[1];
    assert_eq!(nate.user_id, Some(new_york.user_id));
    assert_eq!(nate.due_at, t("2026-03-03T12:15:00Z"));
    assert_eq!(nate.data["count"], json!(2), "the 22:00 lesson is on his 3 March");
    assert_eq!(nate.expires_at, Some(t("2026-03-04T05:00:00Z")));
    assert!(agendas.iter().all(|a| a.user_id != Some(idle.user_id)));
    assert_renders(&w, "daily_agenda").await;

    // The next morning in London: Lena's one lesson of the 4th.
    hand.set(t("2026-03-04T07:00:00Z"));
    run(&ctx, PeriodicTask::DailyAgenda, t("2026-03-04T07:00:00Z")).await;
    let agendas = notes(w.pool(), "daily_agenda").await;
    assert_eq!(agendas.len(), 3);
    assert_eq!(agendas[2].data["count"], json!(1));
    assert_eq!(agendas[2].dedupe_key, format!("daily_agenda:{}:2026-03-04", london.profile_id));
}

// --- test reminders ---------------------------------------------------------------------

async fn set_tests(w: &World, p: &Person, dates: &[DateTime<Utc>]) {
    sqlx::query("UPDATE students SET test_dates = $2 WHERE id = $1")
        .bind(p.profile_id)
        .bind(dates)
        .execute(w.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn test_reminders_are_created_once_and_move_with_the_date() {
    let w = World::start().await;
    let student = w.person("student", "Wren", None).await;
    let past = w.person("student", "Xavi", None).await;
    let now = t("2026-03-03T09:00:00Z");
    let (clock, hand) = Clock::manual(now);
    let ctx = Context::new(&w.config, w.pool().clone(), clock);
    let test = t("2026-03-13T09:14:00Z");
    set_tests(&w, &student, &[test]).await;
    set_tests(&w, &past, &[t("2026-02-01T09:00:00Z")]).await;

    for minutes in [0, 15, 30] {
        let at = now + chrono::Duration::minutes(minutes);
        hand.set(at);
        run(&ctx, PeriodicTask::TestReminders, at).await;
    }
    let reminders = notes(w.pool(), "test_reminder").await;
    assert_eq!(reminders.len(), 2, "7 days and 1 day before, once: {reminders:#?}");
    let unix = test.timestamp();
    assert_eq!(reminders[0].dedupe_key, format!("test_reminder:{}:{unix}:7d", student.profile_id));
    assert_eq!(reminders[0].due_at, t("2026-03-06T09:14:00Z"));
    assert_eq!(reminders[0].expires_at, Some(test));
    assert_eq!(
        reminders[0].data,
        json!({"test": {"date": "2026-03-13T09:14:00+00:00", "days_before": 7}})
    );
    assert_eq!(reminders[1].dedupe_key, format!("test_reminder:{}:{unix}:1d", student.profile_id));
    assert_eq!(reminders[1].due_at, t("2026-03-12T09:14:00Z"));
    assert!(
        reminders
            .iter()
            .all(|r| r.status == "pending" && r.user_id == Some(student.user_id))
    );
    assert_renders(&w, "test_reminder").await;

    // The test moves to Friday 6 March: the old reminders are cancelled; the new 7-day one is
    // already past (recorded as skipped), the 1-day one is due on the 5th.
    let moved = t("2026-03-06T10:00:00Z");
    set_tests(&w, &student, &[moved]).await;
    for minutes in [45, 60] {
        let at = now + chrono::Duration::minutes(minutes);
        hand.set(at);
        run(&ctx, PeriodicTask::TestReminders, at).await;
    }
    let reminders = notes(w.pool(), "test_reminder").await;
    assert_eq!(reminders.len(), 4, "{reminders:#?}");
    assert_eq!(
        (reminders[0].status.as_str(), reminders[1].status.as_str()),
        ("cancelled", "cancelled")
    );
    assert_eq!(
        reminders[2].dedupe_key,
        format!("test_reminder:{}:{}:7d", student.profile_id, moved.timestamp())
    );
    assert_eq!(reminders[2].status, "skipped");
    assert_eq!(
        reminders[3].dedupe_key,
        format!("test_reminder:{}:{}:1d", student.profile_id, moved.timestamp())
    );
    assert_eq!(
        (reminders[3].status.as_str(), reminders[3].due_at),
        ("pending", t("2026-03-05T10:00:00Z"))
    );

    // Dates removed altogether: the open reminder is cancelled too.
    set_tests(&w, &student, &[]).await;
    run(&ctx, PeriodicTask::TestReminders, now + chrono::Duration::minutes(75)).await;
    let statuses: Vec<String> = notes(w.pool(), "test_reminder").await.into_iter().map(|n| n.status).collect();
    assert_eq!(statuses, vec!["cancelled", "cancelled", "skipped", "cancelled"]);
}

// --- CRM follow-ups ---------------------------------------------------------------------

#[tokio::test]
async fn crm_lead_untouched_for_eight_days_gets_one_follow_up_a_fresh_one_none() {
    let w = World::start().await;
    let now = t("2026-03-10T09:00:00Z");
    let (clock, hand) = Clock::manual(now);
    let ctx = Context::new(&w.config, w.pool().clone(), clock);
    let days = |n: i64| now - chrono::Duration::days(n);
    let contact = |name: &'static str, created: DateTime<Utc>, status: &'static str| {
        let pool = w.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("INSERT INTO crm_contacts (name, email, phone, lead_status, created_at) VALUES ($1, $2, '+447700900555', $3, $4) RETURNING id")
                .bind(name)
                .bind(format!("{}@example.com", name.to_lowercase()))
                .bind(status)
                .bind(created)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let stale = contact("Ada", days(8), "lead").await;
    let _fresh = contact("Bea", days(1), "lead").await;
    let talked = contact("Cal", days(20), "lead").await;
    let _active = contact("Dee", days(30), "active").await;
    // Cal was called two days ago; the denormalised column has not caught up.
    sqlx::query("INSERT INTO crm_interactions (contact_id, interaction_type, interaction_date) VALUES ($1, 'call', $2)")
        .bind(talked)
        .bind(days(2))
        .execute(w.pool())
        .await
        .unwrap();

    run(&ctx, PeriodicTask::CrmFollowUp, now).await;
    run(&ctx, PeriodicTask::CrmFollowUp, now + chrono::Duration::hours(1)).await;
    let follow_ups = notes(w.pool(), "crm_follow_up").await;
    assert_eq!(follow_ups.len(), 1, "{follow_ups:#?}");
    let ada = &follow_ups[0];
    assert_eq!(
        (ada.user_id, ada.recipient_email.as_deref()),
        (None, Some("no-reply@localhost")),
        "to the school"
    );
    assert_eq!(ada.dedupe_key, format!("crm_follow_up:{stale}:2026-03-02"));
    assert_eq!(ada.data["contact"]["name"], json!("Ada"));
    assert_eq!(ada.data["contact"]["days_since"], json!(8));
    assert_eq!(ada.data["contact"]["last_interaction_at"], Value::Null);
    assert_renders(&w, "crm_follow_up").await;

    // Someone calls Ada: quiet again for a week, then one more follow-up.
    sqlx::query("INSERT INTO crm_interactions (contact_id, interaction_type, interaction_date) VALUES ($1, 'call', $2)")
        .bind(stale)
        .bind(now)
        .execute(w.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE crm_contacts SET last_interaction_at = $2 WHERE id = $1")
        .bind(stale)
        .bind(now)
        .execute(w.pool())
        .await
        .unwrap();
    hand.set(now + chrono::Duration::days(3));
    run(&ctx, PeriodicTask::CrmFollowUp, now + chrono::Duration::days(3)).await;
    assert_eq!(
        notes(w.pool(), "crm_follow_up")
            .await
            .iter()
            .filter(|n| n.dedupe_key.starts_with(&format!("crm_follow_up:{stale}:")))
            .count(),
        1
    );
    hand.set(now + chrono::Duration::days(7));
    run(&ctx, PeriodicTask::CrmFollowUp, now + chrono::Duration::days(7)).await;
    let ada_keys: Vec<String> = notes(w.pool(), "crm_follow_up")
        .await
        .into_iter()
        .map(|n| n.dedupe_key)
        .filter(|k| k.starts_with(&format!("crm_follow_up:{stale}:")))
        .collect();
    assert_eq!(
        ada_keys,
        vec![
            format!("crm_follow_up:{stale}:2026-03-02"),
            format!("crm_follow_up:{stale}:2026-03-10")
        ]
    );
}

// --- pruning ----------------------------------------------------------------------------

#[tokio::test]
async fn prune_deletes_only_old_done_jobs_and_old_ticks() {
    let db = TestDb::new().await;
    let now = Utc::now();
    let mut conn = db.pool.acquire().await.unwrap();
    let keys = ["old-done-1", "old-done-2", "new-done", "old-failed", "old-killed", "pending"];
    let payload = PeriodicJob {
        task: PeriodicTask::PruneJobs,
        tick: now,
    };
    let new_jobs: Vec<NewJob> = keys
        .iter()
        .map(|k| NewJob::new(QUEUE_PERIODIC, &payload).idempotency_key(*k))
        .collect();
    jobs::enqueue(&mut conn, &new_jobs).await.unwrap();
    for (key, status, age_days) in [
        ("old-done-1", "Done", 10),
        ("old-done-2", "Done", 8),
        ("new-done", "Done", 1),
        ("old-failed", "Failed", 10),
        ("old-killed", "Killed", 10),
    ] {
        sqlx::query("UPDATE apalis.jobs SET status = $2, done_at = $3 WHERE idempotency_key = $1")
            .bind(key)
            .bind(status)
            .bind(now - chrono::Duration::days(age_days))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO scheduler_ticks (job, tick_at, claimed_by) VALUES ('invoices', $1, 'a'), ('invoices', $2, 'a')")
        .bind(now - chrono::Duration::days(9))
        .bind(now - chrono::Duration::hours(1))
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    let ctx = Context::new(&db.config(), db.pool.clone(), Clock::system());
    let summary = run(&ctx, PeriodicTask::PruneJobs, now).await;
    assert!(summary.starts_with("deleted 2 finished jobs and 1 scheduler ticks"), "{summary}");
    let left: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM apalis.jobs ORDER BY idempotency_key")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, vec!["new-done", "old-failed", "old-killed", "pending"]);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM scheduler_ticks").await, 1);
    let again = run(&ctx, PeriodicTask::PruneJobs, now).await;
    assert!(again.starts_with("deleted 0 finished jobs and 0 scheduler ticks"), "{again}");
}

// --- scale ------------------------------------------------------------------------------

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
