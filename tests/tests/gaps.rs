//! Filling gaps end to end (docs/gap-filling.md): each test starts a [`World`] (its own
//! database, loopback SMTP server, SMS API and push service), the admin API on `127.0.0.1:0`
//! and a worker, all on one injected clock, and drives everything through HTTP: students join
//! the waitlist, a cancellation (or a move) offers the freed slot, students open and accept
//! their links. What was sent is read back from the SMTP server, what was written from the
//! database.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveTime, Timelike, Utc};
use chrono_tz::Tz;
use dashlight_core::{
    Clock, Config,
    clock::ManualClock,
    jobs::{PeriodicJob, PeriodicTask},
};
use dashlight_tests::{
    api::Reply,
    smtp::ReceivedMail,
    wait::try_wait_until,
    world::{WorkerHandle, World},
};
use mail_parser::MessageParser;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

const TOKEN: &str = dashlight_tests::api::TOKEN;
/// How long anything sent may take to arrive.
const LONG: Duration = Duration::from_secs(60);

/// The world, the API and a worker on one manual clock.
struct Gap {
    w: World,
    base: String,
    http: reqwest::Client,
    clock: ManualClock,
    reader: Clock,
    worker: Option<WorkerHandle>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Gap {
    async fn start() -> Gap {
        Gap::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut Config)) -> Gap {
        let mut w = World::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        w.config.public_base_url = base.clone();
        tweak(&mut w.config);
        let (clock, handle) = Clock::manual(Utc::now());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let (config, pool, clock) = (w.config.clone(), w.pool().clone(), clock.clone());
            async move {
                dashlight_admin_api::serve(&config, pool, clock, listener, async move {
                    let _ = rx.await;
                })
                .await
            }
        });
        let worker = w.spawn_worker(clock.clone());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        Gap {
            w,
            base,
            http,
            clock: handle,
            reader: clock,
            worker: Some(worker),
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.w.pool()
    }

    fn now(&self) -> DateTime<Utc> {
        self.reader.now()
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::read(req.send().await.expect("request")).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// A request to an offer link, as a browser (`html`) or a JSON client, without any token.
    async fn link(&self, method: Method, url: &str, html: bool) -> Reply {
        let accept = if html {
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        } else {
            "application/json"
        };
        let mut req = self.http.request(method.clone(), url).header("accept", accept);
        if method == Method::POST {
            req = req.header("content-type", "application/x-www-form-urlencoded").body("");
        }
        Reply::read(req.send().await.expect("request")).await
    }

    /// A dashboard page, signed in with the admin token.
    async fn dashboard(&self, path: &str) -> Reply {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let res = http
            .post(format!("{}/sign-in", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={TOKEN}"))
            .send()
            .await
            .expect("sign in");
        let cookie = res
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("a session cookie")
            .to_owned();
        Reply::read(
            http.get(format!("{}{path}", self.base))
                .header("cookie", cookie)
                .send()
                .await
                .expect("page"),
        )
        .await
    }

    /// A student through the API in `timezone`; returns `(user_id, student_id)`.
    async fn student(&self, name: &str, timezone: &str) -> (i64, i64) {
        let b = self
            .post("/api/users", json!({"role": "student", "email": format!("{name}@school.test"), "first_name": name, "last_name": "Learner", "timezone": timezone}))
            .await
            .expect(201);
        (b["id"].as_i64().unwrap(), b["student_id"].as_i64().unwrap())
    }

    /// An instructor (reachable by SMS, so their alerts never reach the SMTP server).
    async fn instructor(&self, name: &str) -> i64 {
        let b = self
            .post(
                "/api/users",
                json!({"role": "instructor", "email": format!("{name}@school.test"), "phone": "+447700900101", "first_name": name, "last_name": "Teacher",
                       "timezone": "Europe/London", "instructor": {"license_number": format!("ADI-{name}")}}),
            )
            .await
            .expect(201);
        b["instructor_id"].as_i64().unwrap()
    }

    /// Books a lesson of `minutes` through the API; returns the booking id.
    async fn book(&self, student: i64, instructor: i64, start: DateTime<Utc>, minutes: i64) -> i64 {
        self.post(
            "/api/bookings",
            json!({"student_id": student, "instructor_id": instructor, "start_time": start.to_rfc3339(),
                   "end_time": (start + chrono::Duration::minutes(minutes)).to_rfc3339(), "pickup_location": "Station Road"}),
        )
        .await
        .expect(201)["id"]
            .as_i64()
            .unwrap()
    }

    async fn waitlist(&self, student: i64, body: Value) -> Value {
        self.put(&format!("/api/students/{student}/waitlist"), body).await.expect(200)
    }

    /// The offer links sent for a booking's freed slot: `(student_id, url)` by offer id.
    async fn links(&self, booking: i64) -> Vec<(i64, String)> {
        sqlx::query_as(
            "SELECT o.student_id, n.data->'offer'->>'url' FROM slot_offers o
             JOIN notifications n ON n.dedupe_key = 'slot_offer:' || o.id
             WHERE o.booking_id = $1 ORDER BY o.id",
        )
        .bind(booking)
        .fetch_all(self.pool())
        .await
        .expect("links")
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(self.pool())
            .await
            .expect("count")
    }

    fn mails_to(&self, to: &str) -> Vec<ReceivedMail> {
        self.w
            .smtp
            .messages()
            .into_iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r == to))
            .collect()
    }

    /// Waits until an email whose subject starts with `subject` reached `to`; returns its text.
    async fn wait_for_mail(&self, to: &str, subject: &str) -> String {
        try_wait_until(&format!("{subject:?} to {to}"), LONG, || async {
            Ok(self.mails_to(to).into_iter().find_map(|m| {
                let msg = MessageParser::default().parse(&m.data)?;
                msg.subject()
                    .is_some_and(|s| s.starts_with(subject))
                    .then(|| msg.body_text(0).map(|t| t.into_owned()).unwrap_or_default())
            }))
        })
        .await
        .unwrap()
    }

    fn subjects_to(&self, to: &str) -> Vec<String> {
        self.mails_to(to)
            .iter()
            .filter_map(|m| MessageParser::default().parse(&m.data).and_then(|p| p.subject().map(str::to_owned)))
            .collect()
    }

    /// Runs a periodic task now, as the scheduler would fire it.
    async fn periodic(&self, task: PeriodicTask, now: DateTime<Utc>) -> String {
        let ctx = dashlight_worker::periodic::Context::new(&self.w.config, self.pool().clone(), Clock::system());
        dashlight_worker::periodic::run(&ctx, &PeriodicJob { task, tick: now })
            .await
            .expect("periodic job")
    }

    async fn stop(mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().await.expect("the worker stops cleanly");
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the API stops within 10 s")
                .expect("no panic")
                .expect("the API ended cleanly");
        }
    }
}

/// 10:00 UTC `days` from now: a whole hour, far from local midnight in London and New York.
fn slot(days: i64) -> DateTime<Utc> {
    let d = (Utc::now() + chrono::Duration::days(days)).date_naive();
    d.and_time(NaiveTime::from_hms_opt(10, 0, 0).unwrap()).and_utc()
}

/// A window around `t` (from an hour before to two hours after) in `tz`, shifted by `days`.
fn window_around(t: DateTime<Utc>, tz: Tz, days: u32) -> Value {
    let local = t.with_timezone(&tz);
    let dow = (local.weekday().number_from_monday() - 1 + days) % 7 + 1;
    json!({"day_of_week": dow, "start_time": format!("{:02}:00", local.hour() - 1), "end_time": format!("{:02}:00", local.hour() + 2)})
}

fn student_ids(offers: &Value) -> Vec<i64> {
    let mut ids: Vec<i64> = offers
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["student_id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn a_cancellation_offers_the_slot_to_matching_waitlisted_students_only() {
    let g = Gap::start().await;
    let now = g.now();
    let london: Tz = "Europe/London".parse().unwrap();
    let new_york: Tz = "America/New_York".parse().unwrap();
    let ivy = g.instructor("ivy").await;
    let jon = g.instructor("jon").await;
    let kim = g.instructor("kim").await;
    let s = slot(3);
    let (_, holder) = g.student("holder", "Europe/London").await;
    let booking = g.book(holder, ivy, s, 60).await;

    // Matching: any instructor and time; Ivy in a window around the slot; a New Yorker whose
    // window is the slot's time in New York.
    let (_, anyone) = g.student("anyone", "Europe/London").await;
    let (_, ivy_fan) = g.student("ivyfan", "Europe/London").await;
    let (_, yorker) = g.student("yorker", "America/New_York").await;
    // Left out: Jon only; the wrong day; a lesson half an hour into the slot; a lesson at that
    // very time with someone else; left the waitlist.
    let (_, jon_fan) = g.student("jonfan", "Europe/London").await;
    let (_, tuesday) = g.student("wrongday", "Europe/London").await;
    let (_, clash) = g.student("clash", "Europe/London").await;
    let (_, busy) = g.student("busy", "Europe/London").await;
    let (_, gone) = g.student("gone", "Europe/London").await;

    let entry = g
        .waitlist(anyone, json!({"instructor_ids": [], "windows": [], "active": true}))
        .await;
    assert_eq!(entry["active"], true);
    assert!(entry["joined_at"].is_string());
    g.waitlist(
        ivy_fan,
        json!({"instructor_ids": [ivy], "windows": [window_around(s, london, 0)], "active": true}),
    )
    .await;
    let ny = g
        .waitlist(
            yorker,
            json!({"instructor_ids": [ivy, kim], "windows": [window_around(s, new_york, 0)], "active": true}),
        )
        .await;
    assert_eq!(ny["timezone"], "America/New_York");
    g.waitlist(jon_fan, json!({"instructor_ids": [jon], "windows": [], "active": true}))
        .await;
    g.waitlist(
        tuesday,
        json!({"instructor_ids": [], "windows": [window_around(s, london, 1)], "active": true}),
    )
    .await;
    g.waitlist(clash, json!({"instructor_ids": [], "windows": [], "active": true}))
        .await;
    g.waitlist(busy, json!({"instructor_ids": [], "windows": [], "active": true})).await;
    g.waitlist(gone, json!({"instructor_ids": [], "windows": [], "active": true})).await;
    let left = g
        .waitlist(gone, json!({"instructor_ids": [], "windows": [], "active": false}))
        .await;
    assert_eq!(
        (left["active"].clone(), left["closed_reason"].clone()),
        (json!(false), json!("left the waitlist"))
    );
    g.book(clash, jon, s + chrono::Duration::minutes(30), 60).await;
    g.book(busy, kim, s, 60).await;

    // The API keeps what was set, and refuses what it cannot use.
    let got = g.get(&format!("/api/students/{ivy_fan}/waitlist")).await.expect(200);
    assert_eq!(got["instructor_ids"], json!([ivy]));
    assert_eq!(got["windows"][0], window_around(s, london, 0));
    let r = g
        .put(
            &format!("/api/students/{anyone}/waitlist"),
            json!({"instructor_ids": [999999], "windows": [], "active": true}),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.body["field"].clone()), (422, json!("instructor_ids")));
    let r = g
        .put(
            &format!("/api/students/{anyone}/waitlist"),
            json!({"instructor_ids": [], "windows": [{"day_of_week": 8, "start_time": "09:00", "end_time": "10:00"}], "active": true}),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.body["field"].clone()), (422, json!("windows[0].day_of_week")));
    g.put("/api/students/999999/waitlist", json!({"active": true})).await.expect(404);
    // Changing one's preferences keeps one's place.
    let again = g
        .waitlist(anyone, json!({"instructor_ids": [], "windows": [], "active": true}))
        .await;
    assert_eq!(again["joined_at"], entry["joined_at"]);

    // No offers before anything is freed.
    assert_eq!(g.get(&format!("/api/bookings/{booking}/offers")).await.expect(200), json!([]));
    g.post(&format!("/api/bookings/{booking}/cancel"), json!({"reason": "ill"}))
        .await
        .expect(200);

    let offers = g.get(&format!("/api/bookings/{booking}/offers")).await.expect(200);
    let mut expected = vec![anyone, ivy_fan, yorker];
    expected.sort_unstable();
    assert_eq!(student_ids(&offers), expected, "offers: {offers}");
    for o in offers.as_array().unwrap() {
        assert_eq!(o["status"], "open");
        assert_eq!(o["booking_version"], 1);
        let expires = DateTime::parse_from_rfc3339(o["expires_at"].as_str().unwrap()).unwrap();
        assert_eq!(expires, s - chrono::Duration::hours(3), "slot start minus the notice");
        assert!(o["opened_at"].is_null());
    }
    // Oldest waitlist entry first.
    assert_eq!(offers[0]["student_id"], anyone);

    // Each is told by the first channel that reaches them (email here), with their own link.
    let links = g.links(booking).await;
    assert_eq!(links.len(), 3);
    for (student, url) in &links {
        assert!(url.starts_with(&format!("{}/offers/", g.base)), "{url}");
        let name = match *student {
            x if x == anyone => "anyone",
            x if x == ivy_fan => "ivyfan",
            _ => "yorker",
        };
        let text = g.wait_for_mail(&format!("{name}@school.test"), "A lesson has come free").await;
        assert!(text.contains(url.as_str()), "{name}'s email carries their link: {text}");
    }
    // The New Yorker's message shows the slot in their own zone: 10:00 UTC is 05:00 or 06:00.
    let ny_text = g.wait_for_mail("yorker@school.test", "A lesson has come free").await;
    let ny_hour = s.with_timezone(&new_york).format("%H:%M").to_string();
    assert!(ny_text.contains(&ny_hour), "{ny_text}");
    for left_out in ["jonfan", "wrongday", "clash", "busy", "gone", "holder"] {
        assert!(
            !g.subjects_to(&format!("{left_out}@school.test"))
                .iter()
                .any(|s| s.starts_with("A lesson has come free")),
            "{left_out} is not offered the slot"
        );
    }

    // The timeline shows the offers and their messages.
    let t = g.get(&format!("/api/bookings/{booking}/timeline")).await.expect(200);
    assert_eq!(t["offers"].as_array().unwrap().len(), 3);
    assert_eq!(
        t["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["kind"] == "slot_offer")
            .count(),
        3,
        "{t}"
    );

    // A cancellation with less notice than GAP_FILL_MIN_NOTICE offers nothing.
    let soon = now + chrono::Duration::hours(2);
    let (_, late) = g.student("late", "Europe/London").await;
    let short = g.book(late, jon, soon, 60).await;
    g.post(&format!("/api/bookings/{short}/cancel"), json!({})).await.expect(200);
    assert_eq!(g.get(&format!("/api/bookings/{short}/offers")).await.expect(200), json!([]));
    assert_eq!(
        g.count(&format!("SELECT count(*) FROM slot_offers WHERE booking_id = {short}"))
            .await,
        0
    );
    g.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_accepts_book_the_slot_exactly_once() {
    let g = Gap::start_with(|c| c.gap_fill_max_offers = 20).await;
    let now = g.now();
    let ivy = g.instructor("ivy").await;
    let s = slot(2);
    let (_, holder) = g.student("holder", "Europe/London").await;
    let booking = g.book(holder, ivy, s, 90).await;
    let mut students = Vec::new();
    for i in 0..20 {
        let (_, id) = g.student(&format!("s{i:02}"), "Europe/London").await;
        g.waitlist(id, json!({"instructor_ids": [ivy], "windows": [], "active": true}))
            .await;
        students.push(id);
    }
    g.post(&format!("/api/bookings/{booking}/cancel"), json!({})).await.expect(200);
    let links = g.links(booking).await;
    assert_eq!(links.len(), 20, "every waitlisted student is offered the slot");

    // Half of them open their link first: a page with an Accept button, no script.
    for (_, url) in links.iter().step_by(2) {
        let r = g.link(Method::GET, url, true).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(r.content_type.starts_with("text/html"));
        assert!(
            r.text.contains("Accept this lesson") && r.text.contains("<form method=\"post\""),
            "{}",
            r.text
        );
        assert!(!r.text.contains("<script"));
    }
    let opened: Vec<i64> = links.iter().step_by(2).map(|(s, _)| *s).collect();
    assert_eq!(
        g.count(&format!(
            "SELECT count(*) FROM slot_offers WHERE booking_id = {booking} AND opened_at IS NOT NULL"
        ))
        .await,
        10
    );

    // Everyone accepts at once.
    let mut tasks = Vec::new();
    for (student, url) in links.clone() {
        let http = g.http.clone();
        tasks.push(tokio::spawn(async move {
            let res = http
                .post(format!("{url}/accept"))
                .header("accept", "application/json")
                .send()
                .await
                .expect("accept");
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (student, status, body)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let winners: Vec<&(i64, u16, Value)> = results.iter().filter(|r| r.1 == 201).collect();
    let losers: Vec<&(i64, u16, Value)> = results.iter().filter(|r| r.1 == 409).collect();
    assert_eq!((winners.len(), losers.len()), (1, 19), "{results:?}");
    for l in &losers {
        assert_eq!(l.2["error"], "conflict", "{:?}", l.2);
    }
    let (winner, _, won) = winners[0].clone();
    let new_booking = won["id"].as_i64().unwrap();
    assert_eq!(won["student_id"], winner);
    assert_eq!(won["status"], "confirmed");
    assert_eq!(won["offer"]["status"], "accepted");
    assert_eq!(
        g.count(&format!(
            "SELECT count(*) FROM bookings WHERE instructor_id = {ivy} AND status = 'confirmed' AND start_time = '{}'",
            s.to_rfc3339()
        ))
        .await,
        1,
        "one booking of the slot"
    );

    // The winner's booking is an ordinary booking: confirmation, instructor alert, reminders.
    let winner_email = sqlx::query_scalar::<_, String>("SELECT u.email FROM students s JOIN users u ON u.id = s.user_id WHERE s.id = $1")
        .bind(winner)
        .fetch_one(g.pool())
        .await
        .unwrap();
    g.wait_for_mail(&winner_email, "Lesson booked").await;
    try_wait_until("the winner's confirmation", LONG, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifications n JOIN notification_deliveries d ON d.notification_id = n.id
             WHERE n.booking_id = $1 AND n.type = 'booking_confirmed' AND d.status = 'sent'",
        )
        .bind(new_booking)
        .fetch_one(g.pool())
        .await?;
        Ok((n > 0).then_some(()))
    })
    .await
    .unwrap();
    let reminders: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT due_at FROM notifications WHERE booking_id = $1 AND type = 'lesson_reminder' ORDER BY due_at")
            .bind(new_booking)
            .fetch_all(g.pool())
            .await
            .unwrap();
    assert_eq!(reminders, vec![s - chrono::Duration::hours(24), s - chrono::Duration::hours(2)]);
    assert_eq!(
        g.count(&format!(
            "SELECT count(*) FROM notifications WHERE booking_id = {new_booking} AND type = 'booking_alert'"
        ))
        .await,
        1
    );

    // The others are withdrawn; those who had opened theirs hear slot_taken, the rest nothing.
    let offers = g.get(&format!("/api/bookings/{booking}/offers")).await.expect(200);
    let states: Vec<(i64, String)> = offers
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["student_id"].as_i64().unwrap(), o["status"].as_str().unwrap().to_owned()))
        .collect();
    for (student, state) in &states {
        let want = if *student == winner { "accepted" } else { "withdrawn" };
        assert_eq!(state, want, "{offers}");
    }
    let taken: Vec<i64> = sqlx::query_scalar(
        "SELECT s.id FROM notifications n JOIN students s ON s.user_id = n.user_id WHERE n.type = 'slot_taken' ORDER BY s.id",
    )
    .fetch_all(g.pool())
    .await
    .unwrap();
    let mut told: Vec<i64> = opened.iter().copied().filter(|s| *s != winner).collect();
    told.sort_unstable();
    assert_eq!(taken, told, "exactly the losers who opened their link are told");
    let some_opened_loser = links.iter().step_by(2).find(|(s, _)| *s != winner).unwrap();
    let email: String = sqlx::query_scalar("SELECT u.email FROM students s JOIN users u ON u.id = s.user_id WHERE s.id = $1")
        .bind(some_opened_loser.0)
        .fetch_one(g.pool())
        .await
        .unwrap();
    g.wait_for_mail(&email, "Lesson taken").await;

    // The winner's waitlist entry is closed; the losers stay on the list.
    let w = g.get(&format!("/api/students/{winner}/waitlist")).await.expect(200);
    assert_eq!(
        (w["active"].clone(), w["closed_reason"].clone()),
        (json!(false), json!("accepted an offer"))
    );
    let l = g.get(&format!("/api/students/{}/waitlist", some_opened_loser.0)).await.expect(200);
    assert_eq!(l["active"], true);

    // Pages: a loser sees that the slot has gone; the winner's second click shows the booking;
    // a foreign token is a 404, never a 500.
    let r = g.link(Method::POST, &format!("{}/accept", some_opened_loser.1), true).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.content_type.starts_with("text/html") && r.text.contains("has gone"), "{}", r.text);
    let r = g.link(Method::GET, &some_opened_loser.1, true).await;
    assert_eq!(r.status, StatusCode::GONE);
    let winner_url = &links.iter().find(|(s, _)| *s == winner).unwrap().1;
    let r = g.link(Method::POST, &format!("{winner_url}/accept"), false).await;
    assert_eq!((r.status.as_u16(), r.body["id"].clone()), (200, json!(new_booking)));
    let r = g.link(Method::POST, &format!("{winner_url}/accept"), true).await;
    assert!(r.text.contains("is yours"), "{}", r.text);
    for html in [true, false] {
        let r = g.link(Method::GET, &format!("{}/offers/not-a-real-token", g.base), html).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = g
            .link(Method::POST, &format!("{}/offers/not-a-real-token/accept", g.base), html)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }

    // The timeline shows who was offered, who opened, who accepted.
    let t = g.get(&format!("/api/bookings/{booking}/timeline")).await.expect(200);
    let tl = t["offers"].as_array().unwrap();
    assert_eq!(tl.len(), 20);
    assert_eq!(tl.iter().filter(|o| o["opened_at"].is_string()).count(), 10);
    assert_eq!(tl.iter().filter(|o| o["status"] == "accepted").count(), 1);

    // The dashboard shows the offers on the booking's timeline, and the waitlist.
    let page = g.dashboard(&format!("/timeline?booking={booking}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains("id=\"offers\""), "{}", page.text);
    assert_eq!(page.text.matches("data-offer-id=").count(), 20);
    assert_eq!(page.text.matches("data-status=\"withdrawn\"").count(), 19);
    let page = g.dashboard("/timeline").await;
    assert!(page.text.contains("id=\"waitlist\""), "{}", page.text);
    assert_eq!(page.text.matches("data-student-id=").count(), 19, "the winner left the waitlist");

    // The rollup counts the slot offered and filled, and how long it took.
    g.periodic(PeriodicTask::AnalyticsRollup, now).await;
    let (offered, filled, minutes): (i32, i32, Option<f64>) = sqlx::query_as(
        "SELECT slots_offered, slots_filled, fill_minutes_p50 FROM daily_rollups WHERE instructor_id IS NULL ORDER BY day DESC LIMIT 1",
    )
    .fetch_one(g.pool())
    .await
    .unwrap();
    assert_eq!((offered, filled), (1, 1));
    assert!(minutes.is_some_and(|m| m >= 0.0), "{minutes:?}");
    g.stop().await;
}

#[tokio::test]
async fn an_offer_past_its_expiry_is_refused() {
    let g = Gap::start().await;
    let now = g.now();
    let ivy = g.instructor("ivy").await;
    let (_, holder) = g.student("holder", "Europe/London").await;
    let (_, waiting) = g.student("waiting", "Europe/London").await;
    g.waitlist(waiting, json!({"instructor_ids": [], "windows": [], "active": true}))
        .await;
    // Four hours ahead: offered with an hour to accept (the notice is three hours).
    let start = now + chrono::Duration::hours(4);
    let booking = g.book(holder, ivy, start, 60).await;
    g.post(&format!("/api/bookings/{booking}/cancel"), json!({})).await.expect(200);
    let links = g.links(booking).await;
    assert_eq!(links.len(), 1);
    let url = links[0].1.clone();
    let r = g.link(Method::GET, &url, false).await;
    assert_eq!((r.status.as_u16(), r.body["status"].clone()), (200, json!("open")));

    g.clock.advance(chrono::Duration::minutes(61));
    let later = now + chrono::Duration::minutes(61);
    let r = g.link(Method::GET, &url, true).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert!(r.text.contains("expired"), "{}", r.text);
    let r = g.link(Method::POST, &format!("{url}/accept"), false).await;
    assert_eq!((r.status.as_u16(), r.body["error"].clone()), (409, json!("conflict")));
    assert!(r.body["message"].as_str().unwrap().contains("expired"), "{}", r.body);
    let r = g.link(Method::POST, &format!("{url}/accept"), true).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.text.contains("expired"), "{}", r.text);
    assert_eq!(
        g.count(&format!(
            "SELECT count(*) FROM bookings WHERE instructor_id = {ivy} AND status = 'confirmed'"
        ))
        .await,
        0
    );
    // The read already says expired; the sweep writes it down.
    assert_eq!(
        g.get(&format!("/api/bookings/{booking}/offers")).await.expect(200)[0]["status"],
        "expired"
    );
    assert_eq!(g.count("SELECT count(*) FROM slot_offers WHERE status = 'open'").await, 1);
    let summary = g.periodic(PeriodicTask::ReminderSweep, later).await;
    assert!(summary.contains("1 slot offers expired"), "{summary}");
    assert_eq!(g.count("SELECT count(*) FROM slot_offers WHERE status = 'expired'").await, 1);
    g.stop().await;
}

#[tokio::test]
async fn a_reschedule_frees_its_old_slot_the_same_way() {
    let g = Gap::start().await;
    let ivy = g.instructor("ivy").await;
    let s = slot(3);
    let (_, mover) = g.student("mover", "Europe/London").await;
    let (_, waiting) = g.student("waiting", "Europe/London").await;
    g.waitlist(waiting, json!({"instructor_ids": [ivy], "windows": [], "active": true}))
        .await;
    let booking = g.book(mover, ivy, s, 60).await;
    let moved_to = s + chrono::Duration::days(1);
    g.post(
        &format!("/api/bookings/{booking}/reschedule"),
        json!({"start_time": moved_to.to_rfc3339(), "end_time": (moved_to + chrono::Duration::hours(1)).to_rfc3339()}),
    )
    .await
    .expect(200);
    let offers = g.get(&format!("/api/bookings/{booking}/offers")).await.expect(200);
    assert_eq!(student_ids(&offers), vec![waiting]);
    assert_eq!(offers[0]["booking_version"], 1);
    assert_eq!(
        DateTime::parse_from_rfc3339(offers[0]["start_time"].as_str().unwrap()).unwrap(),
        s,
        "the old slot is offered"
    );
    g.wait_for_mail("waiting@school.test", "A lesson has come free").await;
    // The accepted lesson is taken from the student's package like any other booking.
    let pkg = g
        .post(
            "/api/lesson-packages",
            json!({"name": "Taster", "lessons_included": 2, "price": 9000, "validity_days": 30}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    let purchase = g
        .post(&format!("/api/students/{waiting}/packages"), json!({"package_id": pkg}))
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    let url = g.links(booking).await[0].1.clone();
    let r = g.link(Method::POST, &format!("{url}/accept"), true).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.text.contains("Booked"), "{}", r.text);
    let (student, start): (i64, DateTime<Utc>) =
        sqlx::query_as("SELECT student_id, start_time FROM bookings WHERE id <> $1 AND status = 'confirmed'")
            .bind(booking)
            .fetch_one(g.pool())
            .await
            .unwrap();
    assert_eq!((student, start), (waiting, s));
    assert_eq!(
        g.count(&format!(
            "SELECT lessons_remaining::bigint FROM package_purchases WHERE id = {purchase}"
        ))
        .await,
        1,
        "one lesson of the package consumed"
    );
    g.wait_for_mail("waiting@school.test", "Lesson booked").await;
    g.stop().await;
}

#[tokio::test]
async fn the_demo_school_offers_a_cancelled_lesson_to_its_waiting_students() {
    let db = dashlight_tests::db::TestDb::new().await;
    let settings = dashlight_core::bookings::BookingSettings::from_config(&db.config());
    let now = Utc::now();
    dashlight_core::demo::seed(&db.pool, &settings, now).await.unwrap();
    // The latest demo lesson (days ahead): the any-time student is free unless they hold it.
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM bookings WHERE status = 'confirmed' ORDER BY start_time DESC LIMIT 5")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut offered = 0;
    for id in ids {
        let mut tx = db.pool.begin().await.unwrap();
        dashlight_core::bookings::cancel(&mut tx, &settings, id, Some("demo".into()), now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        offered += sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notifications WHERE type = 'slot_offer' AND booking_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if offered > 0 {
            break;
        }
    }
    assert!(offered > 0, "a cancelled demo lesson is offered to a waiting student");
}

#[tokio::test]
async fn a_busy_student_cannot_accept_and_a_double_click_books_once() {
    let g = Gap::start().await;
    let ivy = g.instructor("ivy").await;
    let jon = g.instructor("jon").await;
    let s = slot(3);
    let (_, holder) = g.student("holder", "Europe/London").await;
    let (_, waiting) = g.student("waiting", "Europe/London").await;
    g.waitlist(waiting, json!({"instructor_ids": [], "windows": [], "active": true}))
        .await;
    let booking = g.book(holder, ivy, s, 60).await;
    g.post(&format!("/api/bookings/{booking}/cancel"), json!({})).await.expect(200);
    let url = g.links(booking).await[0].1.clone();
    let busy = g.book(waiting, jon, s, 60).await;
    let r = g.link(Method::POST, &format!("{url}/accept"), false).await;
    assert_eq!((r.status.as_u16(), r.body["error"].clone()), (409, json!("conflict")), "{}", r.text);
    assert_eq!(
        g.count(&format!(
            "SELECT count(*) FROM bookings WHERE instructor_id = {ivy} AND status = 'confirmed'"
        ))
        .await,
        0
    );
    assert_eq!(
        g.get(&format!("/api/bookings/{booking}/offers")).await.expect(200)[0]["status"],
        "open"
    );

    // Free again, the student clicks twice at once: one booking, the second click shows it.
    g.post(&format!("/api/bookings/{busy}/cancel"), json!({})).await.expect(200);
    let accept = format!("{url}/accept");
    let (a, b) = tokio::join!(g.link(Method::POST, &accept, false), g.link(Method::POST, &accept, false));
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 201], "{} / {}", a.text, b.text);
    assert_eq!(a.body["id"], b.body["id"]);
    assert_eq!(
        g.count(&format!(
            "SELECT count(*) FROM bookings WHERE instructor_id = {ivy} AND status = 'confirmed'"
        ))
        .await,
        1
    );
    g.stop().await;
}
