//! A person's data over time: the export (`GET /api/users/{id}/export`), the erasure
//! (`POST /api/users/{id}/erase`) with the deletion of their lesson attachments' files, and the
//! retention purge, end to end with a real worker, real loopback SMTP / SMS / push peers, real
//! files in the test's own directory and the admin API over HTTP.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use chrono::Utc;
use dashlight_core::{Clock, kinds::Channel, signing, suppressions};
use dashlight_tests::{
    api::{RunningApi, lesson_start, spawn_api},
    wait::try_wait_until,
    world::{Person, World},
};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

const FIRST: &str = "Zebulon";
const LAST: &str = "Quixotefield";
const EMAIL: &str = "zebulon.quixotefield@pupils.test";
const PHONE: &str = "+447700900777";

/// The student to erase, made through the API (so their CRM contact is made too).
async fn student(api: &RunningApi, instructor: &Person) -> Person {
    let b = api
        .post(
            "/api/users",
            json!({"role": "student", "email": EMAIL, "phone": PHONE, "first_name": FIRST, "last_name": LAST,
                   "student": {"current_instructor_id": instructor.profile_id}}),
        )
        .await
        .expect(201);
    Person {
        user_id: b["id"].as_i64().unwrap(),
        profile_id: b["student_id"].as_i64().unwrap(),
        email: EMAIL.into(),
        phone: Some(PHONE.into()),
    }
}

async fn exec(pool: &sqlx::PgPool, sql: &str, binds: &[i64]) {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
    for b in binds {
        q = q.bind(*b);
    }
    q.execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar_i64(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every base table of the schema (ours and apalis's), read from the catalogue, each row cast
/// whole to text and searched for each needle, case-insensitively. Returns `table: row` of each
/// hit.
async fn find_anywhere(pool: &sqlx::PgPool, needles: &[String]) -> Vec<String> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_type = 'BASE TABLE' AND table_schema IN ('public', 'apalis') ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(tables.len() > 30, "the catalogue lists our tables: {tables:?}");
    let patterns: Vec<String> = needles
        .iter()
        .map(|n| format!("%{}%", n.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")))
        .collect();
    let mut hits = Vec::new();
    for (schema, table) in tables {
        let sql = format!("SELECT t::text FROM \"{schema}\".\"{table}\" AS t WHERE t::text ILIKE ANY($1)");
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(&patterns)
            .fetch_all(pool)
            .await
            .unwrap();
        hits.extend(rows.into_iter().map(|r| format!("{schema}.{table}: {r}")));
    }
    hits
}

/// A file under `dir` (its folders made), holding its own name; returns its path.
fn file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, name).unwrap();
    path
}

fn pdf_text(path: &str) -> String {
    let bytes = std::fs::read(path).unwrap();
    let doc = lopdf::Document::load_mem(&bytes).expect("lopdf parses the invoice");
    doc.extract_text(&[1]).unwrap()
}

#[tokio::test]
async fn erasure_leaves_only_keyed_hashes_keeps_invoices_and_stays_suppressed() {
    let w = World::start().await;
    let pool = w.pool().clone();
    let api = spawn_api(&w.config, pool.clone(), Clock::system()).await;
    let instructor = w.person("instructor", "Ivanka", None).await;
    let zeb = student(&api, &instructor).await;
    let device = w.device(&zeb, "zebulon-phone").await;
    let (access_token, calendar_token, endpoint, p256dh, auth): (String, String, String, String, String) = sqlx::query_as(
        "SELECT u.access_token, u.calendar_token, d.push_endpoint, d.p256dh, d.auth FROM users u JOIN user_devices d ON d.user_id = u.id WHERE d.id = $1",
    )
    .bind(device)
    .fetch_one(&pool)
    .await
    .unwrap();
    let worker = w.spawn_worker(Clock::system());
    let now = Utc::now();

    // A lesson (confirmation to them, alert to the instructor, reminders pending), sent.
    let booking = w.book(&zeb, &instructor, lesson_start(5), now).await;
    try_wait_until("the confirmation is sent by email and push", LONG, || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
                 WHERE n.type = 'booking_confirmed' AND d.status = 'sent'",
            )
            .fetch_one(&pool)
            .await?;
            Ok((n >= 2).then_some(()))
        }
    })
    .await
    .unwrap();
    // A message they wrote, a lesson with notes about them, a reply they texted, mail that came
    // back, a staff note, a paid invoice.
    api.post(
        "/api/messages",
        json!({"sender_id": zeb.user_id, "participant_ids": [instructor.user_id],
               "content": format!("Hi, {FIRST} here; call me on {PHONE} or write to {EMAIL}")}),
    )
    .await
    .expect(201);
    exec(
        &pool,
        &format!(
            "INSERT INTO lessons (booking_id, instructor_id, student_id, lesson_notes, progress_data, attachments)
             VALUES ($1, $2, $3, '{FIRST} {LAST} was nervous at roundabouts', '{{\"skills\": [{{\"name\": \"Roundabouts\", \"rating\": 2, \"notes\": \"{FIRST} hesitated\"}}]}}',
                     ARRAY['lessons/{FIRST}-{LAST}/roundabouts.jpg'])"
        ),
        &[booking.id, instructor.profile_id, zeb.profile_id],
    )
    .await;
    // Its attachment, a file whose path names them.
    let attachment = file(&w.config.attachments_dir, &format!("lessons/{FIRST}-{LAST}/roundabouts.jpg"));
    exec(
        &pool,
        &format!("INSERT INTO sms_replies (from_number, user_id, booking_id, body, keyword) VALUES ('{PHONE}', $1, $2, 'yes from {FIRST}', 'other')"),
        &[zeb.user_id, booking.id],
    )
    .await;
    exec(
        &pool,
        &format!(
            "INSERT INTO inbound_emails (verdict, size_bytes, sha256, head, user_id)
             VALUES ('auto_reply', 100, sha256('x'::bytea), 'From: {FIRST} {LAST} <{EMAIL}>', $1)"
        ),
        &[zeb.user_id],
    )
    .await;
    exec(
        &pool,
        &format!("INSERT INTO crm_interactions (contact_id, interaction_type, notes) SELECT id, 'call', 'rang {FIRST} about the test' FROM crm_contacts WHERE user_id = $1"),
        &[zeb.user_id],
    )
    .await;
    exec(
        &pool,
        "INSERT INTO payments (student_id, booking_id, amount_minor, currency, method, status, paid_at) VALUES ($1, $2, 4500, 'GBP', 'card', 'succeeded', now())",
        &[zeb.profile_id, booking.id],
    )
    .await;
    let ctx = dashlight_worker::periodic::Context::new(&w.config, pool.clone(), Clock::system());
    dashlight_worker::periodic::invoices::run(&ctx, Utc::now()).await.unwrap();
    let (pdf_path, totals): (String, (i64, i64, i64)) = {
        let r: (String, i64, i64, i64) =
            sqlx::query_as("SELECT pdf_path, net_minor, tax_minor, total_minor FROM invoices i JOIN payments p ON p.id = i.payment_id WHERE p.student_id = $1")
                .bind(zeb.profile_id)
                .fetch_one(&pool)
                .await
                .unwrap();
        (r.0, (r.1, r.2, r.3))
    };
    let pdf_before = pdf_text(&pdf_path);
    assert!(pdf_before.contains(&format!("{FIRST} {LAST}")), "{pdf_before}");
    assert!(
        scalar_i64(
            &pool,
            &format!(
                "SELECT count(*) FROM notifications WHERE user_id = {} AND status = 'pending'",
                zeb.user_id
            )
        )
        .await
            > 0,
        "reminders are pending"
    );

    let needles: Vec<String> = [FIRST, LAST, EMAIL, PHONE, &access_token, &calendar_token, &endpoint, &p256dh, &auth]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(
        !find_anywhere(&pool, &needles).await.is_empty(),
        "the search finds the person before"
    );

    // Erase.
    let r = api
        .post(
            &format!("/api/users/{}/erase", zeb.user_id),
            json!({"reason": format!("{FIRST} asked by email"), "by": "office"}),
        )
        .await
        .expect(200);
    assert_eq!(
        (r["status"].as_str(), r["erased_now"].as_bool()),
        (Some("erased"), Some(true)),
        "{r}"
    );
    let pseudonym = r["pseudonym"].as_str().unwrap().to_owned();
    assert!(pseudonym.starts_with("Erased "), "{pseudonym}");
    assert_eq!(r["erased_by"], "office");
    assert_eq!(r["reason"], json!(format!("{pseudonym} asked by email")));
    // The attachment's file went before the answer; its request (and the path naming them) too.
    assert_eq!(r["summary"]["lesson_attachment_files"], 1, "{r}");
    assert!(!attachment.exists(), "the attachment's file is deleted");

    // Nothing but keyed hashes anywhere, in any table, apalis's included.
    let hits = find_anywhere(&pool, &needles).await;
    assert!(hits.is_empty(), "left behind after erasure:\n{}", hits.join("\n"));
    let key = signing::load_from(&pool).await.unwrap();
    let hashed: Vec<(String, String, String)> = sqlx::query_as("SELECT channel, target, reason FROM suppressions ORDER BY channel")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        hashed,
        vec![
            (
                "email".into(),
                suppressions::hashed_target(&key, Channel::Email, EMAIL),
                "erased".into()
            ),
            (
                "sms".into(),
                suppressions::hashed_target(&key, Channel::Sms, PHONE),
                "erased".into()
            ),
        ]
    );

    // The pseudonym is who they are now; no pending notification, no device, links dead.
    let name: String = sqlx::query_scalar("SELECT first_name || ' ' || last_name FROM users WHERE id = $1")
        .bind(zeb.user_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, pseudonym);
    assert_eq!(
        scalar_i64(
            &pool,
            &format!(
                "SELECT count(*) FROM notifications WHERE user_id = {} AND status IN ('pending', 'processing')",
                zeb.user_id
            )
        )
        .await,
        0
    );
    assert_eq!(
        scalar_i64(&pool, &format!("SELECT count(*) FROM user_devices WHERE user_id = {}", zeb.user_id)).await,
        0
    );
    api.get_open(&format!("/me/{access_token}")).await.expect(404);
    api.get_open(&format!("/calendar/{calendar_token}.ics")).await.expect(404);
    assert!(
        scalar_i64(
            &pool,
            &format!(
                "SELECT count(*) FROM notifications WHERE user_id = {} AND data ? 'page_path'",
                instructor.user_id
            )
        )
        .await
            > 0,
        "other people's notifications about them keep their own page link"
    );
    let erasures = scalar_i64(&pool, "SELECT count(*) FROM person_erasures").await;
    assert_eq!(erasures, 1);

    // Idempotent.
    let again = api
        .post(&format!("/api/users/{}/erase", zeb.user_id), json!({"reason": "again"}))
        .await
        .expect(200);
    assert_eq!(
        (again["status"].as_str(), again["pseudonym"].as_str()),
        (Some("already_erased"), Some(pseudonym.as_str()))
    );
    api.post("/api/users/999999/erase", json!({"reason": "x"})).await.expect(404);

    // The invoice is kept: same totals; its PDF drawn again differs only in the name, the
    // address and the pick-up place (personal too).
    dashlight_worker::periodic::invoices::run(&ctx, Utc::now()).await.unwrap();
    let totals_after: (i64, i64, i64) = sqlx::query_as(
        "SELECT net_minor, tax_minor, total_minor FROM invoices i JOIN payments p ON p.id = i.payment_id WHERE p.student_id = $1",
    )
    .bind(zeb.profile_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(totals_after, totals);
    let pdf_after = pdf_text(&pdf_path);
    let expected = pdf_before
        .replace(&format!("{FIRST} {LAST}"), &pseudonym)
        .replace(EMAIL, &format!("erased-{}@erased.invalid", zeb.user_id))
        .replace(", pick-up: Station Road", "");
    assert_eq!(pdf_after, expected, "only the name changed on the invoice");

    // A new account with the same address and number is never contacted.
    let before_mail = w.smtp.messages().len();
    let b = api
        .post(
            "/api/users",
            json!({"role": "student", "email": EMAIL.to_uppercase(), "phone": PHONE, "first_name": "New", "last_name": "Account"}),
        )
        .await
        .expect(201);
    let again = Person {
        user_id: b["id"].as_i64().unwrap(),
        profile_id: b["student_id"].as_i64().unwrap(),
        email: EMAIL.into(),
        phone: Some(PHONE.into()),
    };
    w.book(&again, &instructor, lesson_start(9), Utc::now()).await;
    let skipped: (String, Option<String>) = try_wait_until("the new account's confirmation email is settled", LONG, || {
        let pool = pool.clone();
        let uid = again.user_id;
        async move {
            let row: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT d.status, d.skip_reason FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
                 WHERE n.user_id = $1 AND n.type = 'booking_confirmed' AND d.channel = 'email' AND d.status NOT IN ('pending', 'sending')",
            )
            .bind(uid)
            .fetch_optional(&pool)
            .await?;
            Ok(row)
        }
    })
    .await
    .unwrap();
    assert_eq!(skipped, ("skipped".into(), Some("erased".into())));
    // The planner's check finds the number too (in any spelling it is stored in).
    let mut conn = pool.acquire().await.unwrap();
    let found = suppressions::among(&mut conn, Channel::Sms, &[PHONE.to_owned(), "+447700900001".to_owned()])
        .await
        .unwrap();
    assert_eq!(found, vec![(PHONE.to_owned(), suppressions::Reason::Erased)]);
    drop(conn);
    assert!(
        w.smtp.messages()[before_mail..]
            .iter()
            .all(|m| m.rcpt_to.iter().all(|r| !r.eq_ignore_ascii_case(EMAIL))),
        "no mail to the erased address"
    );

    worker.stop().await.unwrap();
    api.stop().await;
}

#[tokio::test]
async fn export_holds_a_known_set_of_rows_and_no_device_keys() {
    let w = World::start().await;
    let pool = w.pool().clone();
    let api = spawn_api(&w.config, pool.clone(), Clock::system()).await;
    let instructor = w.person("instructor", "Ivanka", None).await;
    let zeb = student(&api, &instructor).await;
    w.device(&zeb, "zebulon-phone").await;
    let now = Utc::now();
    let first = w.book(&zeb, &instructor, lesson_start(5), now).await;
    w.book(&zeb, &instructor, lesson_start(6), now).await;
    api.post(
        "/api/messages",
        json!({"sender_id": instructor.user_id, "participant_ids": [zeb.user_id], "content": "See you Thursday"}),
    )
    .await
    .expect(201);
    exec(
        &pool,
        "INSERT INTO payments (student_id, booking_id, amount_minor, currency, method, status, paid_at) VALUES ($1, $2, 4500, 'GBP', 'card', 'succeeded', now())",
        &[zeb.profile_id, first.id],
    )
    .await;
    // Many notifications: the export streams them.
    exec(
        &pool,
        "INSERT INTO notifications (user_id, type, title, content, channels, policy, dedupe_key, status)
         SELECT $1, 'new_message', 'm' || g, 'c', '{email}', 'all', 'bulk:' || g, 'done' FROM generate_series(1, 3000) AS g",
        &[zeb.user_id],
    )
    .await;
    exec(
        &pool,
        &format!(
            "INSERT INTO notification_deliveries (notification_id, channel, target, status)
             SELECT id, 'email', '{EMAIL}', 'sent' FROM notifications WHERE user_id = $1 AND dedupe_key LIKE 'bulk:%'"
        ),
        &[zeb.user_id],
    )
    .await;

    let res = api.get(&format!("/api/users/{}/export", zeb.user_id)).await;
    let doc = res.expect(200);
    assert_eq!(doc["format"], "dashlight.person-export.v1");
    assert_eq!(doc["user_id"], zeb.user_id);
    let len = |k: &str| doc[k].as_array().unwrap_or_else(|| panic!("{k} is an array")).len();
    assert_eq!(doc["profile"][0]["email"], EMAIL);
    assert!(doc["profile"][0].get("access_token").is_none() && doc["profile"][0].get("calendar_token").is_none());
    assert_eq!(len("student"), 1);
    assert_eq!(len("instructor"), 0);
    assert_eq!(len("preferences"), 1);
    assert_eq!(len("devices"), 1);
    let dev = &doc["devices"][0];
    assert_eq!(dev["device_id"], "zebulon-phone");
    assert!(dev.get("p256dh").is_none() && dev.get("auth").is_none(), "no device keys: {dev}");
    assert_eq!(len("crm_contacts"), 1);
    assert_eq!(len("bookings"), 2);
    assert_eq!(doc["bookings"][0]["id"], first.id);
    assert_eq!(len("messages"), 1);
    assert_eq!(len("payments"), 1);
    let own: i64 = scalar_i64(
        &pool,
        &format!("SELECT count(*) FROM notifications WHERE user_id = {}", zeb.user_id),
    )
    .await;
    assert!(own > 3000);
    assert_eq!(len("notifications") as i64, own);
    let with_delivery = doc["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["deliveries"].as_array().is_some_and(|d| !d.is_empty()))
        .count();
    assert!(with_delivery >= 3000, "deliveries nested in their notifications");
    assert_eq!(len("suppressions"), 0);
    api.get("/api/users/999999/export").await.expect(404);

    // The instructor's export holds the lessons they teach, not the student's profile.
    let doc: Value = api.get(&format!("/api/users/{}/export", instructor.user_id)).await.expect(200);
    assert_eq!(doc["instructor"].as_array().unwrap().len(), 1);
    assert_eq!(doc["bookings"].as_array().unwrap().len(), 2);
    assert_eq!(doc["student"].as_array().unwrap().len(), 0);
    api.stop().await;
}

/// The lesson attachments of one lesson, set as a tool or an import would.
async fn attach(pool: &sqlx::PgPool, booking_id: i64, student: i64, instructor: i64, paths: &[&str]) {
    sqlx::query("INSERT INTO lessons (booking_id, instructor_id, student_id, attachments) VALUES ($1, $2, $3, $4)")
        .bind(booking_id)
        .bind(instructor)
        .bind(student)
        .bind(paths)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn erasure_deletes_the_lesson_attachment_files_inside_the_directory_only() {
    let w = World::start().await;
    let pool = w.pool().clone();
    let dir = w.config.attachments_dir.clone();
    // The test's own folder, which holds ATTACHMENTS_DIR: what lies there is outside it.
    let beside = dir.parent().unwrap().to_owned();
    let api = spawn_api(&w.config, pool.clone(), Clock::system()).await;
    let instructor = w.person("instructor", "Ivanka", None).await;
    let zeb = student(&api, &instructor).await;
    let otto = w.person("student", "Otto", None).await;
    let now = Utc::now();

    let route = file(&dir, "route.pdf");
    let sketch = file(&dir, "lessons/2026/sketch.jpg");
    let absolute_inside = file(&dir, "absolute.txt");
    let ottos = file(&dir, "otto.jpg");
    let outside = file(&beside, "outside.txt");
    let outside_absolute = file(&beside, "elsewhere/absolute.txt");
    let outside_linked = file(&beside, "elsewhere/linked.txt");
    // A folder inside that is a link to one outside.
    std::os::unix::fs::symlink(beside.join("elsewhere"), dir.join("away")).unwrap();
    let hostile = ["../outside.txt", outside_absolute.to_str().unwrap(), "away/linked.txt"];
    let mut first = vec![
        "route.pdf",
        "lessons/2026/sketch.jpg",
        absolute_inside.to_str().unwrap(),
        "never-there.jpg",
    ];
    first.extend(hostile);
    let b1 = w.book(&zeb, &instructor, lesson_start(5), now).await;
    attach(&pool, b1.id, zeb.profile_id, instructor.profile_id, &first).await;
    // A second lesson of theirs naming a file again; another student's lesson.
    let b2 = w.book(&zeb, &instructor, lesson_start(6), now).await;
    attach(&pool, b2.id, zeb.profile_id, instructor.profile_id, &["route.pdf", ""]).await;
    let b3 = w.book(&otto, &instructor, lesson_start(7), now).await;
    attach(&pool, b3.id, otto.profile_id, instructor.profile_id, &["otto.jpg"]).await;

    let r = api
        .post(&format!("/api/users/{}/erase", zeb.user_id), json!({"reason": "asked"}))
        .await
        .expect(200);
    // Each path once, the empty one left out.
    assert_eq!(r["summary"]["lesson_attachment_files"], 7, "{r}");

    // When the answer comes, their files inside the directory are gone, the rest untouched.
    for gone in [&route, &sketch, &absolute_inside] {
        assert!(!gone.exists(), "{} deleted", gone.display());
    }
    for kept in [&ottos, &outside, &outside_absolute, &outside_linked] {
        assert!(kept.exists(), "{} kept", kept.display());
    }
    assert!(dir.join("away").is_symlink(), "the link is not followed, nor removed");
    // Every request is done: carried out, already gone, or refused and dropped.
    assert_eq!(scalar_i64(&pool, "SELECT count(*) FROM file_deletions").await, 0);
    let lists: Vec<(i64, Vec<String>)> = sqlx::query_as("SELECT student_id, attachments FROM lessons ORDER BY booking_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        lists,
        vec![
            (zeb.profile_id, vec![]),
            (zeb.profile_id, vec![]),
            (otto.profile_id, vec!["otto.jpg".to_owned()])
        ]
    );
    api.stop().await;
}

#[tokio::test]
async fn a_file_deletion_left_behind_is_carried_out_by_the_retention_task() {
    let w = World::start().await;
    let pool = w.pool().clone();
    let dir = w.config.attachments_dir.clone();
    let left = file(&dir, "lessons/left-behind.jpg");
    file(&dir, "a-folder/inside.txt");
    // As if the admin API had stopped right after an erasure's commit; and a request whose path
    // is a folder, which cannot be removed as a file.
    exec(
        &pool,
        "INSERT INTO file_deletions (path) VALUES ('lessons/left-behind.jpg'), ('a-folder')",
        &[],
    )
    .await;

    // A process without the directory does nothing and keeps the requests for one that has it.
    let err = dashlight_core::files::delete_requested(&pool, &dir.join("not-here"))
        .await
        .unwrap_err();
    assert!(matches!(err, dashlight_core::files::DeleteError::Dir { .. }), "{err}");
    assert_eq!(scalar_i64(&pool, "SELECT count(*) FROM file_deletions").await, 2);

    let ctx = dashlight_worker::periodic::Context::new(&w.config, pool.clone(), Clock::system());
    let line = dashlight_worker::periodic::retention::run(&ctx, Utc::now()).await.unwrap();
    assert!(
        line.ends_with("; 1 attachment files deleted, 1 failed (tried again next run)"),
        "{line}"
    );
    assert!(!left.exists());
    // The failed request stays, with its attempt and the OS's reason.
    let (path, attempts, error): (String, i32, Option<String>) = sqlx::query_as("SELECT path, attempts, last_error FROM file_deletions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((path.as_str(), attempts), ("a-folder", 1));
    assert!(error.as_deref().is_some_and(|e| e.contains("directory")), "{error:?}");

    // Once nothing stands in the way, the next run finishes it.
    std::fs::remove_dir_all(dir.join("a-folder")).unwrap();
    let line = dashlight_worker::periodic::retention::run(&ctx, Utc::now()).await.unwrap();
    assert!(line.ends_with("; 1 attachment files deleted (1 already gone)"), "{line}");
    assert_eq!(scalar_i64(&pool, "SELECT count(*) FROM file_deletions").await, 0);
    let line = dashlight_worker::periodic::retention::run(&ctx, Utc::now()).await.unwrap();
    assert!(line.ends_with("; 0 attachment files deleted"), "{line}");
}

/// Old and young rows of every kind the purge looks at; returns the ids that must stay, per
/// table, as `(table, ids)`.
async fn aged_rows(pool: &sqlx::PgPool, user_id: i64, student_id: i64) {
    let sql = format!(
        "DO $$
         DECLARE n bigint; d bigint; p bigint;
         BEGIN
           FOR i IN 1..30 LOOP
             -- i odd: older than the limit; i even: younger. i % 10 = 9: old but still pending.
             INSERT INTO notifications (user_id, type, title, content, channels, policy, dedupe_key, status, created_at)
             VALUES ({user_id}, 'package_low', 't', 'c', '{{email}}', 'all', 'aged:' || i, 'done', now() - interval '1 day' * (CASE WHEN i % 2 = 1 THEN 401 ELSE 399 END))
             RETURNING id INTO n;
             INSERT INTO notification_deliveries (notification_id, channel, target, status, created_at, attempts)
             VALUES (n, 'email', 'aged' || i || '@school.test', CASE WHEN i % 10 = 9 THEN 'pending' ELSE 'failed' END,
                     now() - interval '1 day' * (CASE WHEN i % 2 = 1 THEN 401 ELSE 399 END), 1)
             RETURNING id INTO d;
             -- Each delivery's attempt and receipt are as old as it.
             INSERT INTO delivery_attempt_log (delivery_id, attempt, started_at, finished_at, outcome)
             VALUES (d, 1, now() - interval '1 day' * (CASE WHEN i % 2 = 1 THEN 401 ELSE 399 END),
                           now() - interval '1 day' * (CASE WHEN i % 2 = 1 THEN 401 ELSE 399 END), 'permanent');
             INSERT INTO delivery_receipts (delivery_id, source, status, received_at)
             VALUES (d, 'email_dsn', 'undelivered', now() - interval '1 day' * (CASE WHEN i % 2 = 1 THEN 401 ELSE 399 END));
             INSERT INTO inbound_emails (verdict, size_bytes, sha256, head, received_at)
             VALUES ('other', 1, sha256(i::text::bytea), 'h', now() - interval '1 day' * (CASE WHEN i % 2 = 1 THEN 401 ELSE 399 END));
             -- Invoices: 8 years old (odd) or 6 (even).
             INSERT INTO payments (student_id, amount_minor, method, status, paid_at, created_at)
             VALUES ({student_id}, 100, 'card', 'succeeded', now(), now() - interval '1 year' * (CASE WHEN i % 2 = 1 THEN 8 ELSE 6 END))
             RETURNING id INTO p;
             INSERT INTO invoices (payment_id, invoice_number, year, seq, net_minor, tax_minor, total_minor, currency, issued_at)
             VALUES (p, 'INV-OLD-' || i, 2000, i, 100, 0, 100, 'GBP', now() - interval '1 year' * (CASE WHEN i % 2 = 1 THEN 8 ELSE 6 END));
           END LOOP;
           -- An old attempt and receipt of a young delivery go on their own.
           SELECT id INTO d FROM notification_deliveries WHERE target = 'aged2@school.test';
           INSERT INTO delivery_attempt_log (delivery_id, attempt, started_at, finished_at, outcome)
           VALUES (d, 2, now() - interval '500 days', now() - interval '500 days', 'transient');
         END $$"
    );
    exec(pool, &sql, &[]).await;
}

async fn ids(pool: &sqlx::PgPool, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn retention_deletes_exactly_the_rows_past_the_limit() {
    let w = World::start().await;
    let pool = w.pool().clone();
    let p = w.person("student", "Olde", None).await;
    aged_rows(&pool, p.user_id, p.profile_id).await;
    // A rollup of an old day: its aggregates stay.
    exec(
        &pool,
        "INSERT INTO daily_rollups (day, deliveries, delivery_success_rate) VALUES (current_date - 401, '{\"email\": {\"sent\": 30}}', 1.0)",
        &[],
    )
    .await;
    let rollup_before = ids(&pool, "SELECT to_jsonb(r)::text FROM daily_rollups r").await;

    let ctx = dashlight_worker::periodic::Context::new(&w.config, pool.clone(), Clock::system());
    let o = dashlight_core::privacy::retention::Options {
        batch: 4,
        budget: Duration::from_secs(60),
        pause: Duration::ZERO,
        rest: 0.0,
    };
    let (purged, invoices) = dashlight_worker::periodic::retention::purge(&ctx, Utc::now(), o).await.unwrap();

    // Deliveries: the 15 old ones but the 3 still pending (i = 9, 19, 29).
    assert_eq!(purged.deliveries, 12, "{purged:?}");
    let kept = ids(&pool, "SELECT target FROM notification_deliveries ORDER BY target").await;
    let mut expected: Vec<String> = (1..=30)
        .filter(|i| i % 2 == 0 || i % 10 == 9)
        .map(|i| format!("aged{i}@school.test"))
        .collect();
    expected.sort();
    assert_eq!(kept, expected);
    // Attempts and receipts: those of deleted deliveries went with them; the pending old ones'
    // (finished, old) and the young delivery's old extra attempt went on their own.
    assert_eq!(
        ids(
            &pool,
            "SELECT count(*)::text FROM delivery_attempt_log WHERE started_at < now() - interval '400 days'"
        )
        .await,
        vec!["0".to_owned()]
    );
    assert_eq!(
        ids(&pool, "SELECT count(*)::text FROM delivery_attempt_log").await,
        vec!["15".to_owned()],
        "the young deliveries' attempts stay"
    );
    assert_eq!(
        ids(&pool, "SELECT count(*)::text FROM delivery_receipts").await,
        vec!["15".to_owned()]
    );
    assert_eq!(
        ids(
            &pool,
            "SELECT count(*)::text FROM delivery_receipts WHERE received_at < now() - interval '400 days'"
        )
        .await,
        vec!["0".to_owned()]
    );
    assert_eq!(purged.inbound_emails, 15);
    assert_eq!(
        ids(
            &pool,
            "SELECT count(*)::text FROM inbound_emails WHERE received_at > now() - interval '400 days'"
        )
        .await,
        vec!["15".to_owned()]
    );
    // Invoices and payments: the 8-year-old ones go, the 6-year-old ones stay.
    assert_eq!((invoices, purged.payments), (15, 15));
    assert_eq!(
        ids(&pool, "SELECT string_agg(invoice_number, ',' ORDER BY seq) FROM invoices").await,
        vec![
            (1..=30)
                .filter(|i| i % 2 == 0)
                .map(|i| format!("INV-OLD-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        ]
    );
    assert_eq!(ids(&pool, "SELECT count(*)::text FROM payments").await, vec!["15".to_owned()]);
    // Notifications themselves are not the purge's; the rollup keeps its figures, and a rollup
    // run does not touch a day that old.
    assert_eq!(ids(&pool, "SELECT count(*)::text FROM notifications").await, vec!["30".to_owned()]);
    dashlight_worker::periodic::rollup::run(&ctx, Utc::now()).await.unwrap();
    let rollup_after = ids(
        &pool,
        "SELECT to_jsonb(r)::text FROM daily_rollups r WHERE day = current_date - 401",
    )
    .await;
    assert_eq!(rollup_after, rollup_before);

    // Idempotent: a second run finds nothing.
    let (again, invoices) = dashlight_worker::periodic::retention::purge(&ctx, Utc::now(), o).await.unwrap();
    assert_eq!(
        (
            again.deliveries,
            again.attempts,
            again.receipts,
            again.inbound_emails,
            again.payments,
            invoices
        ),
        (0, 0, 0, 0, 0, 0)
    );
}

/// The deliveries' purge walks them by id, a window of `batch` at a time: a window of old
/// deliveries it must keep (still being sent) does not end the walk, the rows that refer to a
/// purged delivery without belonging to it (a suppression, an inbound email) keep their row and
/// lose the reference, and what was kept goes in a later run once it is settled.
#[tokio::test]
async fn the_purge_walks_past_deliveries_it_must_keep_and_lets_go_of_references() {
    let w = World::start().await;
    let pool = w.pool().clone();
    let p = w.person("student", "Walker", None).await;
    // By id: five old deliveries still pending, five old settled ones, five young ones.
    let user_id = p.user_id;
    exec(
        &pool,
        &format!(
            "DO $$
         DECLARE n bigint;
         BEGIN
           FOR i IN 1..15 LOOP
             INSERT INTO notifications (user_id, type, title, content, channels, policy, dedupe_key, status, created_at)
             VALUES ({user_id}, 'package_low', 't', 'c', '{{email}}', 'all', 'walk:' || i, 'done', now() - interval '500 days')
             RETURNING id INTO n;
             INSERT INTO notification_deliveries (notification_id, channel, target, status, created_at, attempts)
             VALUES (n, 'email', 'walk' || i || '@school.test', CASE WHEN i <= 5 THEN 'pending' ELSE 'failed' END,
                     now() - interval '1 day' * (CASE WHEN i <= 10 THEN 500 ELSE 10 END), 1);
           END LOOP;
         END $$"
        ),
        &[],
    )
    .await;
    let delivery = |i: i64| format!("(SELECT id FROM notification_deliveries WHERE target = 'walk{i}@school.test')");
    exec(
        &pool,
        &format!(
            "INSERT INTO suppressions (channel, target, reason, delivery_id) VALUES ('email', 'walk6@school.test', 'bounced', {})",
            delivery(6)
        ),
        &[],
    )
    .await;
    exec(
        &pool,
        &format!(
            "INSERT INTO inbound_emails (verdict, size_bytes, sha256, head, delivery_id) VALUES ('other', 1, sha256('walk7'::bytea), 'h', {})",
            delivery(7)
        ),
        &[],
    )
    .await;

    let ctx = dashlight_worker::periodic::Context::new(&w.config, pool.clone(), Clock::system());
    let o = dashlight_core::privacy::retention::Options {
        batch: 2,
        budget: Duration::from_secs(60),
        pause: Duration::ZERO,
        rest: 0.0,
    };
    let (purged, _) = dashlight_worker::periodic::retention::purge(&ctx, Utc::now(), o).await.unwrap();
    assert_eq!(purged.deliveries, 5, "{purged:?}");
    let kept = ids(&pool, "SELECT target FROM notification_deliveries ORDER BY id").await;
    let expected: Vec<String> = (1..=5).chain(11..=15).map(|i| format!("walk{i}@school.test")).collect();
    assert_eq!(kept, expected);
    assert_eq!(
        ids(
            &pool,
            "SELECT coalesce(delivery_id::text, 'none') FROM suppressions WHERE target = 'walk6@school.test'"
        )
        .await,
        vec!["none".to_owned()],
        "the suppression stays, without its delivery"
    );
    assert_eq!(
        ids(&pool, "SELECT coalesce(delivery_id::text, 'none') FROM inbound_emails").await,
        vec!["none".to_owned()],
        "the young inbound email stays, without its delivery"
    );

    // Once settled, the old ones go in the next run; the young ones stay.
    exec(
        &pool,
        "UPDATE notification_deliveries SET status = 'failed' WHERE status = 'pending'",
        &[],
    )
    .await;
    let (purged, _) = dashlight_worker::periodic::retention::purge(&ctx, Utc::now(), o).await.unwrap();
    assert_eq!(purged.deliveries, 5, "{purged:?}");
    let kept = ids(&pool, "SELECT target FROM notification_deliveries ORDER BY id").await;
    let expected: Vec<String> = (11..=15).map(|i| format!("walk{i}@school.test")).collect();
    assert_eq!(kept, expected);
}

#[tokio::test]
async fn a_purge_and_a_burst_at_once_lose_nothing() {
    let w = World::start().await;
    let pool = w.pool().clone();
    let p = w.person("student", "Burst", None).await;
    // 20,000 old deliveries to purge.
    exec(
        &pool,
        "WITH n AS (
             INSERT INTO notifications (user_id, type, title, content, channels, policy, dedupe_key, status, created_at)
             SELECT $1, 'package_low', 't', 'c', '{email}', 'all', 'old:' || g, 'done', now() - interval '500 days'
             FROM generate_series(1, 20000) AS g RETURNING id)
         INSERT INTO notification_deliveries (notification_id, channel, target, status, created_at, sent_at, attempts)
         SELECT id, 'email', 'burst@school.test', 'sent', now() - interval '500 days', now() - interval '500 days', 1 FROM n",
        &[p.user_id],
    )
    .await;
    let worker = w.spawn_worker(Clock::system());
    let ctx = dashlight_worker::periodic::Context::new(&w.config, pool.clone(), Clock::system());
    let purge = tokio::spawn(async move {
        let o = dashlight_core::privacy::retention::Options {
            batch: 500,
            budget: Duration::from_secs(120),
            pause: Duration::ZERO,
            rest: 0.0,
        };
        dashlight_worker::periodic::retention::purge(&ctx, Utc::now(), o).await.unwrap()
    });
    // The burst, while the purge runs.
    const BURST: usize = 200;
    for i in 0..BURST {
        let mut conn = pool.acquire().await.unwrap();
        let mut n = dashlight_core::notify::NewNotification::to_user(
            dashlight_core::kinds::Kind::PackageLow,
            p.user_id,
            format!("burst-{i}"),
            Utc::now(),
        );
        n.title = "One lesson left".into();
        n.content = "One lesson left".into();
        n.data = json!({"package": {"name": "Ten lessons", "lessons_remaining": 1, "expires_at": "2027-01-01T00:00:00Z"}});
        dashlight_core::notify::create(&mut conn, n).await.unwrap().unwrap();
    }
    let (purged, _) = purge.await.unwrap();
    assert_eq!(purged.deliveries, 20_000);
    w.smtp.wait_for_messages(BURST, LONG).await.unwrap();
    try_wait_until("every burst delivery sent", LONG, || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_deliveries WHERE status = 'sent'")
                .fetch_one(&pool)
                .await?;
            Ok((n == BURST as i64).then_some(()))
        }
    })
    .await
    .unwrap();
    worker.stop().await.unwrap();
    assert_eq!(w.smtp.messages().len(), BURST, "each burst notification sent exactly once");
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM notifications WHERE dedupe_key LIKE 'burst-%' AND status = 'done'"
        )
        .await,
        BURST as i64
    );
}
