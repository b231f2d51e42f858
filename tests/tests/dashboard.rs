//! The operator dashboard in a real browser: Debian's headless Chromium driven over
//! chromedriver (fantoccini, WebDriver), against the admin API served on `127.0.0.1:0`, a real
//! worker, and the loopback SMTP server scripted to refuse and then accept.
//!
//! The scenario: a wrong token shows an error and no data; the right one signs in; a delivery
//! the SMTP server refused shows as failed with its error; after the server is switched to
//! accept, its Retry button (which calls the JSON API with the session cookie) gets it sent,
//! and "Retry all shown" does the same for a filter; a notification title holding `<script>`
//! shows as text and runs nothing; the queues, timeline and outbox pages show what they should;
//! the layout fits a phone. A screenshot of every page goes to
//! `<target>/test-artifacts/dashboard/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver`: when they are missing the test runs
//! `.ci/setup-browser` to install them, and fails saying so if that cannot; it never skips.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail, ensure};
use chrono::Utc;
use dashlight_core::{
    Clock,
    kinds::Kind,
    notify::{self, NewNotification},
};
use dashlight_tests::{
    api::spawn_api,
    browser::{self, Driver},
    smtp::SmtpMode,
    wait::try_wait_until,
    world::World,
};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

/// The ceiling of every wait: generous, since the browser, the worker and the compiler may
/// share two cores.
const LONG: Duration = Duration::from_secs(90);
/// How many `<script>` elements every dashboard page has: the one `/assets/dashboard.js`.
const PAGE_SCRIPTS: u64 = 1;
const XSS_TITLE: &str = "<script>alert(1)</script>";
const XSS_ERROR: &str = "<img src=x onerror=alert(2)> refused";

/// Where screenshots go: `<target dir>/test-artifacts/dashboard`.
fn artifacts() -> PathBuf {
    browser::artifacts(env!("CARGO_TARGET_TMPDIR"), "dashboard")
}

/// The dashboard's browser window: a desktop.
const DESKTOP: (u32, u32) = (1280, 1000);

/// The browser and where the dashboard is.
struct Ui<'a> {
    c: &'a Client,
    base: &'a str,
}

impl Ui<'_> {
    async fn goto(&self, path: &str) -> anyhow::Result<()> {
        self.c.goto(&format!("{}{path}", self.base)).await?;
        Ok(())
    }

    async fn path(&self) -> anyhow::Result<String> {
        Ok(self.c.current_url().await?.path().to_owned())
    }

    async fn wait_for(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        self.c
            .wait()
            .at_most(LONG)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("waiting for {css}"))
    }

    async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.wait_for(css).await?.text().await?)
    }

    async fn js(&self, script: &str) -> anyhow::Result<Value> {
        Ok(self.c.execute(script, vec![]).await?)
    }

    async fn body_text(&self) -> anyhow::Result<String> {
        Ok(self
            .js("return document.body.innerText")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Nothing injected ran: no alert is open and the page has only its own script.
    async fn no_script_ran(&self) -> anyhow::Result<()> {
        ensure!(self.c.get_alert_text().await.is_err(), "an alert is open: injected script ran");
        let scripts = self.js("return document.querySelectorAll('script').length").await?;
        ensure!(scripts.as_u64() == Some(PAGE_SCRIPTS), "script elements on the page: {scripts}");
        Ok(())
    }

    async fn shot(&self, name: &str) -> anyhow::Result<()> {
        let png = self.c.screenshot().await?;
        let dir = artifacts();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), png)?;
        Ok(())
    }

    /// The status badge of a delivery, read after reloading the page.
    async fn delivery_status_after_reload(&self, id: i64) -> anyhow::Result<Option<String>> {
        self.c.refresh().await?;
        let v = self
            .js(&format!(
                "var b = document.querySelector('[data-delivery-id=\"{id}\"] [data-field=status]'); return b ? b.textContent.trim() : null"
            ))
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Signs in with `token` through the form.
    async fn sign_in(&self, token: &str) -> anyhow::Result<()> {
        let input = self.wait_for("#token").await?;
        input.clear().await?;
        input.send_keys(token).await?;
        self.wait_for("#sign-in").await?.click().await?;
        Ok(())
    }
}

async fn delivery_of(pool: &sqlx::PgPool, sql: &'static str, key: i64, status: &str) -> anyhow::Result<Option<i64>> {
    let row: Option<(i64, String)> = sqlx::query_as(sql).bind(key).fetch_optional(pool).await?;
    Ok(row.filter(|(_, s)| s == status).map(|(id, _)| id))
}

const CONFIRMATION_EMAIL: &str = "SELECT d.id, d.status FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
     WHERE n.booking_id = $1 AND n.type = 'booking_confirmed' AND d.channel = 'email'";
const EMAIL_OF_NOTIFICATION: &str = "SELECT id, status FROM notification_deliveries WHERE notification_id = $1 AND channel = 'email'";

async fn wait_status(pool: &sqlx::PgPool, what: &str, sql: &'static str, key: i64, status: &str) -> anyhow::Result<i64> {
    try_wait_until(what, LONG, || delivery_of(pool, sql, key, status)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_fixes_a_refused_email_in_the_browser() {
    let driver = Driver::start()
        .await
        .expect("chromedriver (run `.ci/setup-browser` if it is missing)");

    let mut w = World::start().await;
    // Push has no provider here, so the Outbox page has something to show.
    w.config.push = None;
    let student = w.person("student", "Amelia", Some("+447700900201")).await;
    let instructor = w.person("instructor", "Priya", Some("+447700900101")).await;
    w.device(&student, "amelia-phone").await;
    w.smtp.set_mode(SmtpMode::PermFail);
    let worker = w.spawn_worker(Clock::system());
    let server = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let token = w.config.admin_api_token.clone().expect("the test configuration has a token");

    // A booking whose confirmation email the SMTP server refuses (550): failed, not retried.
    let booking = w
        .book(&student, &instructor, Utc::now() + chrono::Duration::days(3), Utc::now())
        .await;
    let refused = wait_status(w.pool(), "the confirmation email to fail", CONFIRMATION_EMAIL, booking.id, "failed")
        .await
        .unwrap();
    // And a second refused email, for "Retry all shown".
    let mut n = NewNotification::to_user(Kind::PackageLow, student.user_id, "dash-package-low".into(), Utc::now());
    n.title = "One lesson left".into();
    n.content = "One lesson left".into();
    n.data = json!({"package": {"name": "Ten lessons", "lessons_remaining": 1, "expires_at": "2027-01-01T00:00:00Z"}});
    let low_note = {
        let mut conn = w.pool().acquire().await.unwrap();
        notify::create(&mut conn, n).await.unwrap().expect("a new notification")
    };
    let low = wait_status(w.pool(), "the package email to fail", EMAIL_OF_NOTIFICATION, low_note, "failed")
        .await
        .unwrap();
    // A notification whose title and error hold markup, straight into the tables.
    let xss_note: i64 = sqlx::query_scalar(
        "INSERT INTO notifications (recipient_email, type, title, content, channels, policy, dedupe_key, status)
         VALUES ('office@school.test', 'crm_follow_up', $1, 'x', '{email}', 'all', 'dash-xss', 'done') RETURNING id",
    )
    .bind(XSS_TITLE)
    .fetch_one(w.pool())
    .await
    .unwrap();
    let xss_delivery: i64 = sqlx::query_scalar(
        "INSERT INTO notification_deliveries (notification_id, channel, target, status, attempts, last_error)
         VALUES ($1, 'email', 'office@school.test', 'dead', 8, $2) RETURNING id",
    )
    .bind(xss_note)
    .bind(XSS_ERROR)
    .fetch_one(w.pool())
    .await
    .unwrap();

    let browser = driver.browser(DESKTOP).await.expect("a Chromium session");
    let ui = Ui {
        c: &browser,
        base: &server.base,
    };
    let outcome = scenario(&ui, &w, &token, booking.id, refused, low, xss_delivery).await;
    let _ = ui.shot("last.png").await;
    browser.close().await.expect("closing the browser");
    outcome.unwrap();

    server.stop().await;
    worker.stop().await.unwrap();
    drop(driver);
}

async fn scenario(ui: &Ui<'_>, w: &World, token: &str, booking: i64, refused: i64, low: i64, xss_delivery: i64) -> anyhow::Result<()> {
    // Not signed in: every page leads to the sign-in form.
    ui.goto("/deliveries").await?;
    ui.wait_for("#token").await?;
    ensure!(ui.path().await? == "/sign-in", "redirected to the sign-in page");
    ui.no_script_ran().await?;
    ui.shot("sign-in.png").await?;

    // A wrong token: an error and no data.
    ui.sign_in("not-the-token").await?;
    let error = ui.text("#sign-in-error").await?;
    ensure!(error.contains("not right"), "the error says so: {error}");
    ensure!(ui.path().await? == "/sign-in");
    let source = ui.c.source().await?;
    for secret in ["amelia@school.test", "booking_confirmed", "SMTP", "dashlight.notifications"] {
        ensure!(
            !source.contains(secret),
            "a failed sign-in shows no data, but the page has {secret:?}"
        );
    }
    ui.shot("sign-in-wrong-token.png").await?;

    // The right token: back to the page asked for, with an HTTP-only session cookie.
    ui.sign_in(token).await?;
    ui.wait_for("#deliveries").await?;
    ensure!(ui.path().await? == "/deliveries", "back on the deliveries page");
    let cookie =
        ui.c.get_named_cookie("dashlight_session")
            .await
            .context("the session cookie is set")?;
    ensure!(cookie.http_only() == Some(true), "HttpOnly");
    ensure!(
        cookie.value() != token && !cookie.value().contains(token),
        "the cookie does not hold the token"
    );
    let visible = ui.js("return document.cookie").await?;
    ensure!(
        !visible.as_str().unwrap_or_default().contains("dashlight_session"),
        "scripts cannot read the cookie"
    );

    // The refused email, failed, with its error in plain words.
    let row = format!("tr[data-delivery-id=\"{refused}\"]");
    let status = ui.text(&format!("{row} [data-field=status]")).await?;
    ensure!(status == "failed", "status {status}");
    let why = ui.text(&format!("{row} [data-field=error]")).await?;
    ensure!(
        why.contains("The mail server refused this message. Not retried on its own."),
        "plain words: {why}"
    );
    ensure!(why.contains("550"), "the server's own reply: {why}");
    ensure!(ui.text(&row).await?.contains("Amelia Tester"), "the recipient's name");
    // Failed and dead come first.
    let order = ui
        .js("return Array.from(document.querySelectorAll('#deliveries tbody tr')).map(r => r.dataset.status)")
        .await?;
    let order: Vec<String> = serde_json::from_value(order)?;
    let first_other = order.iter().position(|s| s != "failed" && s != "dead").unwrap_or(order.len());
    ensure!(
        order[first_other..].iter().all(|s| s != "failed" && s != "dead"),
        "failed and dead first: {order:?}"
    );

    // Markup in user data is text: the literal shows, nothing runs.
    let body = ui.body_text().await?;
    ensure!(body.contains(XSS_TITLE), "the title shows as text");
    ensure!(body.contains(XSS_ERROR), "the error shows as text");
    let title = ui
        .text(&format!("tr[data-delivery-id=\"{xss_delivery}\"] [data-field=title]"))
        .await?;
    ensure!(title == XSS_TITLE, "title text {title:?}");
    ui.no_script_ran().await?;
    let imgs = ui.js("return document.querySelectorAll('#deliveries img').length").await?;
    ensure!(imgs.as_u64() == Some(0), "no injected element");
    ui.shot("deliveries.png").await?;
    // Only the failed ones, as an operator would look first (the screenshot in docs/).
    ui.goto("/deliveries?status=failed").await?;
    ensure!(ui.text("#deliveries").await?.contains("package_low"));
    ui.shot("deliveries-failed.png").await?;
    ui.goto("/deliveries").await?;

    // The API takes the cookie, but a write without X-Requested-With is refused.
    let cookie_header = format!("dashlight_session={}", cookie.value());
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/api/queues", ui.base))
        .header("cookie", &cookie_header)
        .send()
        .await?;
    ensure!(r.status() == 200, "GET with the cookie: {}", r.status());
    let r = http
        .post(format!("{}/api/deliveries/{refused}/retry", ui.base))
        .header("cookie", &cookie_header)
        .send()
        .await?;
    ensure!(r.status() == 401, "a cookie-only write is refused: {}", r.status());

    // The server accepts now; Retry sends it again, through the API.
    w.smtp.set_mode(SmtpMode::Accept);
    ui.wait_for(&format!("button[data-retry=\"{refused}\"]")).await?.click().await?;
    let flash = ui.text("#flash:not([hidden])").await?;
    ensure!(flash.contains(&format!("Delivery #{refused} is queued")), "flash: {flash}");
    wait_status(w.pool(), "the retried email to be sent", EMAIL_OF_DELIVERY, refused, "sent").await?;
    try_wait_until("the page to show it sent", LONG, || async {
        Ok(ui.delivery_status_after_reload(refused).await?.filter(|s| s == "sent"))
    })
    .await?;
    ui.shot("deliveries-after-retry.png").await?;

    // "Retry all shown" for a filter: only that filter's deliveries go again.
    ui.goto("/deliveries?status=failed&channel=email&kind=package_low").await?;
    let button = ui.wait_for("#retry-all").await?;
    ensure!(button.text().await?.contains("(1)"), "one delivery shown");
    button.click().await?;
    let flash = ui.text("#flash:not([hidden])").await?;
    ensure!(flash.contains("1 delivery is queued"), "flash: {flash}");
    wait_status(w.pool(), "the package email to be sent", EMAIL_OF_DELIVERY, low, "sent").await?;
    let untouched: String = sqlx::query_scalar("SELECT status FROM notification_deliveries WHERE id = $1")
        .bind(xss_delivery)
        .fetch_one(w.pool())
        .await?;
    ensure!(untouched == "dead", "outside the filter: {untouched}");

    // Queues: counts per state, a self-refresh, and the chart of the last hour.
    ui.goto("/").await?;
    ui.wait_for("#queues").await?;
    let queues = ui.text("#queues").await?;
    ensure!(
        queues.contains("dashlight.notifications") && queues.contains("dashlight.periodic"),
        "{queues}"
    );
    let refresh = ui
        .js("var m = document.querySelector('meta[http-equiv=refresh]'); return m && m.content")
        .await?;
    ensure!(
        refresh
            .as_str()
            .is_some_and(|s| s.parse::<u32>().is_ok_and(|n| (1..=10).contains(&n))),
        "refresh {refresh}"
    );
    let bars = ui.js("return document.querySelectorAll('#chart rect.bar-done').length").await?;
    ensure!(
        bars.as_u64().is_some_and(|n| n >= 1),
        "jobs done in the last minutes are drawn: {bars}"
    );
    ui.no_script_ran().await?;
    ui.shot("queues.png").await?;

    // Timeline: find the booking by the student's name, then every attempt in order.
    ui.goto("/timeline").await?;
    let q = ui.wait_for("input[name=q]").await?;
    q.send_keys("amelia").await?;
    ui.wait_for("#search button").await?.click().await?;
    ui.wait_for(&format!("a[data-booking=\"{booking}\"]")).await?.click().await?;
    ui.wait_for("#timeline").await?;
    ensure!(ui.text("#booking").await?.contains(&format!("Booking #{booking}")));
    let outcomes = ui
        .js(&format!(
            "return Array.from(document.querySelectorAll('li[data-delivery-id=\"{refused}\"] table.attempts tbody tr td:nth-child(4)')).map(t => t.textContent.trim())"
        ))
        .await?;
    let outcomes: Vec<String> = serde_json::from_value(outcomes)?;
    ensure!(
        outcomes == ["permanent", "sent"],
        "the refused attempt, then the retry: {outcomes:?}"
    );
    ui.shot("timeline.png").await?;
    // By id too.
    ui.goto(&format!("/timeline?q={booking}")).await?;
    ui.wait_for("#timeline").await?;

    // Outbox: push went there; an email written there shows as its recipient would see it. The
    // email channel writes to the outbox exactly the message it sends over SMTP, so one the
    // SMTP server received stands in for it.
    let mail = w.smtp.messages().into_iter().next().context("a message reached the SMTP server")?;
    let name = format!("{}-email-{refused}.eml", Utc::now().format("%Y%m%dT%H%M%S%.6fZ"));
    std::fs::create_dir_all(&w.config.outbox_dir)?;
    std::fs::write(w.config.outbox_dir.join(&name), &mail.data)?;
    let subject = mail_parser::MessageParser::default()
        .parse(&mail.data)
        .and_then(|m| m.subject().map(str::to_owned))
        .context("the mail has a subject")?;
    ui.goto("/outbox").await?;
    ui.wait_for("#outbox").await?;
    ensure!(ui.text("#outbox").await?.contains("push"), "the push message is listed");
    ui.wait_for(&format!("a[href=\"/outbox?file={name}\"]")).await?.click().await?;
    ensure!(ui.text("#mail-subject").await? == subject, "the subject");
    let frame = ui.wait_for("#mail-html").await?;
    ensure!(frame.attr("sandbox").await?.as_deref() == Some(""), "a fully sandboxed frame");
    ensure!(frame.attr("srcdoc").await?.is_some_and(|s| s.contains('<')), "the HTML part");
    ui.no_script_ran().await?;
    ui.shot("outbox.png").await?;

    // A phone: nothing wider than the screen.
    ui.c.set_window_size(390, 844).await?;
    for (path, shot) in [("/deliveries", "deliveries-phone.png"), ("/", "queues-phone.png")] {
        ui.goto(path).await?;
        ui.wait_for("main").await?;
        let overflow = ui
            .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            .await?;
        ensure!(
            overflow.as_i64().is_some_and(|n| n <= 1),
            "{path} scrolls sideways on a phone by {overflow} px"
        );
        ui.shot(shot).await?;
    }
    ui.c.set_window_size(1280, 1000).await?;

    // Signing out ends the session.
    ui.goto("/").await?;
    ui.wait_for(".sign-out button").await?.click().await?;
    ui.wait_for("#token").await?;
    ui.goto("/deliveries").await?;
    ui.wait_for("#token").await?;
    ensure!(ui.path().await? == "/sign-in", "signed out");
    if ui.c.get_named_cookie("dashlight_session").await.is_ok() {
        bail!("the session cookie is cleared");
    }
    Ok(())
}

/// The Pause and Resume buttons of the Queues page, pressed in the browser: a channel paused
/// with a reason typed into the prompt, a queue paused without one, each on record (who, when,
/// why) and shown on the page; each resumed, and the pause lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_pauses_and_resumes_a_channel_and_a_queue_in_the_browser() {
    let driver = Driver::start()
        .await
        .expect("chromedriver (run `.ci/setup-browser` if it is missing)");
    let w = World::start().await;
    let server = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let token = w.config.admin_api_token.clone().expect("the test configuration has a token");
    let browser = driver.browser(DESKTOP).await.expect("a Chromium session");
    let ui = Ui {
        c: &browser,
        base: &server.base,
    };
    let outcome = pause_and_resume(&ui, &server, &token).await;
    let _ = ui.shot("controls-last.png").await;
    browser.close().await.expect("closing the browser");
    outcome.unwrap();
    server.stop().await;
    drop(driver);
}

/// The pauses in force through the API: (scope, name) → (by, at, reason).
async fn pauses_on_record(
    api: &dashlight_tests::api::RunningApi,
) -> anyhow::Result<Vec<(String, String, String, chrono::DateTime<Utc>, Option<String>)>> {
    let body = api.get("/api/pauses").await.expect(200);
    let mut out = Vec::new();
    for p in body["pauses"].as_array().context("pauses")? {
        out.push((
            p["scope"].as_str().context("scope")?.to_owned(),
            p["name"].as_str().context("name")?.to_owned(),
            p["paused_by"].as_str().context("paused_by")?.to_owned(),
            p["paused_at"].as_str().context("paused_at")?.parse()?,
            p["reason"].as_str().map(str::to_owned),
        ));
    }
    Ok(out)
}

/// Presses the button of `action` (`pause` or `resume`) on the row `row` (`channel:sms`), answers
/// a pause's prompt with `reason`, and waits for the reloaded page to offer the other button.
async fn press(ui: &Ui<'_>, row: &str, action: &str, reason: Option<&str>) -> anyhow::Result<String> {
    let other = if action == "pause" { "resume" } else { "pause" };
    // The page reloads itself every few seconds; hold that while the test reads and presses.
    ui.js("window.stop()").await?;
    ui.wait_for(&format!("tr[data-control-row=\"{row}\"] button[data-action={action}]"))
        .await?
        .click()
        .await?;
    if action == "pause" {
        let asked = try_wait_until("the pause's prompt", LONG, || async { Ok(ui.c.get_alert_text().await.ok()) }).await?;
        ensure!(asked.contains("why?"), "the prompt asks why: {asked}");
        if let Some(reason) = reason {
            ui.c.send_alert_text(reason).await?;
        }
        ui.c.accept_alert().await?;
    }
    ui.wait_for(&format!("tr[data-control-row=\"{row}\"] button[data-action={other}]"))
        .await?;
    let flash = try_wait_until("the page's message", LONG, || async {
        let text = ui
            .js("var f = document.getElementById('flash'); return f ? f.textContent : ''")
            .await?;
        Ok(text.as_str().filter(|t| !t.is_empty()).map(str::to_owned))
    })
    .await?;
    ui.js("window.stop()").await?;
    Ok(flash)
}

async fn pause_and_resume(ui: &Ui<'_>, api: &dashlight_tests::api::RunningApi, token: &str) -> anyhow::Result<()> {
    ui.goto("/").await?;
    ui.sign_in(token).await?;
    ui.wait_for("#controls").await?;
    let rows = ui
        .js("return Array.from(document.querySelectorAll('tr[data-control-row]')).map(r => r.getAttribute('data-control-row'))")
        .await?;
    let rows: Vec<String> = serde_json::from_value(rows)?;
    ensure!(
        rows == [
            "queue:dashlight.notifications",
            "queue:dashlight.periodic",
            "channel:email",
            "channel:sms",
            "channel:push"
        ],
        "every queue and channel has its buttons: {rows:?}"
    );
    ensure!(pauses_on_record(api).await?.is_empty(), "nothing paused yet");

    // Pause SMS, with a reason.
    let before = Utc::now() - chrono::Duration::seconds(1);
    let flash = press(ui, "channel:sms", "pause", Some("Twilio incident 1234")).await?;
    ensure!(flash == "channel sms is paused.", "{flash}");
    let on_record = pauses_on_record(api).await?;
    ensure!(on_record.len() == 1, "{on_record:?}");
    let (scope, name, by, at, reason) = &on_record[0];
    ensure!(
        (scope.as_str(), name.as_str(), by.as_str(), reason.as_deref()) == ("channel", "sms", "dashboard", Some("Twilio incident 1234")),
        "{on_record:?}"
    );
    ensure!(*at >= before && *at <= Utc::now(), "paused at {at}");
    let shown = ui.text("tr[data-control-row=\"channel:sms\"]").await?;
    ensure!(
        shown.contains("paused by dashboard at") && shown.contains("Twilio incident 1234"),
        "{shown}"
    );
    ui.shot("controls-sms-paused.png").await?;

    // Pause the periodic queue, no reason given.
    let flash = press(ui, "queue:dashlight.periodic", "pause", None).await?;
    ensure!(flash == "queue dashlight.periodic is paused.", "{flash}");
    let on_record = pauses_on_record(api).await?;
    let queue = on_record.iter().find(|p| p.0 == "queue").context("the queue's pause on record")?;
    ensure!(
        (queue.1.as_str(), queue.2.as_str(), queue.4.as_deref()) == ("dashlight.periodic", "dashboard", None),
        "{on_record:?}"
    );
    let shown = ui.text("tr[data-control-row=\"queue:dashlight.periodic\"]").await?;
    ensure!(shown.contains("paused by dashboard at"), "{shown}");
    let events = ui.text("#control-events").await?;
    ensure!(
        events.contains("dashboard paused queue dashlight.periodic")
            && events.contains("dashboard paused channel sms (Twilio incident 1234)"),
        "{events}"
    );
    ui.shot("controls-both-paused.png").await?;

    // Resume both: the pauses are lifted, the resumes on record.
    let flash = press(ui, "channel:sms", "resume", None).await?;
    ensure!(flash == "channel sms is resumed.", "{flash}");
    ensure!(
        ui.text("tr[data-control-row=\"channel:sms\"]").await?.contains("running"),
        "sms shows running"
    );
    let flash = press(ui, "queue:dashlight.periodic", "resume", None).await?;
    ensure!(flash == "queue dashlight.periodic is resumed.", "{flash}");
    ensure!(pauses_on_record(api).await?.is_empty(), "both pauses lifted");
    let shown = ui.text("tr[data-control-row=\"queue:dashlight.periodic\"]").await?;
    ensure!(shown.contains("running") && !shown.contains("paused"), "{shown}");
    let record = api.get("/api/pauses").await.expect(200);
    let record: Vec<(String, String, String)> = record["events"]
        .as_array()
        .context("events")?
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["actor"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("resume", "dashlight.periodic"),
        ("resume", "sms"),
        ("pause", "dashlight.periodic"),
        ("pause", "sms"),
    ]
    .iter()
    .map(|(a, n)| (a.to_string(), n.to_string(), "dashboard".to_owned()))
    .collect();
    ensure!(record == expected, "on record, newest first: {record:?}");
    ui.no_script_ran().await?;
    ui.shot("controls-resumed.png").await?;
    Ok(())
}

const EMAIL_OF_DELIVERY: &str = "SELECT id, status FROM notification_deliveries WHERE id = $1";

/// The rules around the session, over plain HTTP (no browser needed): redirects, the cookie's
/// flags, the CSRF header on cookie-authenticated writes, and the API's JSON errors untouched.
#[tokio::test]
async fn sessions_and_their_rules_over_http() {
    let w = World::start().await;
    let server = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let token = w.config.admin_api_token.clone().unwrap();
    let base = server.base.clone();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // No session: pages redirect to the sign-in form, which remembers where to go.
    let r = http.get(format!("{base}/deliveries?status=failed")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/sign-in?next=%2Fdeliveries%3Fstatus%3Dfailed");
    let r = http.get(format!("{base}/sign-in")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers()["cache-control"], "no-store");

    // A wrong token: 401, the form again, no session.
    let r = http
        .post(format!("{base}/sign-in"))
        .form(&[("token", "nope"), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert!(r.text().await.unwrap().contains("That token is not right"));

    // The right token: the cookie, and never a redirect off this server.
    let r = http
        .post(format!("{base}/sign-in"))
        .form(&[("token", token.as_str()), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    assert!(!set.contains(&token), "the cookie does not carry the token");
    let cookie = set.split(';').next().unwrap().to_owned();

    let r = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("dashlight.notifications") && page.contains("http-equiv=\"refresh\""));
    // Every channel has a provider in this world: no Outbox entry.
    assert!(!page.contains("href=\"/outbox\""));
    let r = http.get(format!("{base}/outbox")).header("cookie", &cookie).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("Every channel has a provider configured"));

    // A tampered cookie is no session.
    let r = http
        .get(format!("{base}/"))
        .header("cookie", format!("{cookie}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    // The API: the cookie reads; writes also need X-Requested-With.
    let retry = format!("{base}/api/deliveries/retry");
    let r = http.post(&retry).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    let r = http
        .post(&retry)
        .header("cookie", &cookie)
        .header("x-requested-with", "dashlight")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"retried": 0}));
    let r = http.post(&retry).header("x-requested-with", "dashlight").send().await.unwrap();
    assert_eq!(r.status(), 401, "the header alone is nothing");

    // Unknown routes still get the API's JSON error.
    let r = http.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");

    // Signing out clears the cookie.
    let r = http
        .post(format!("{base}/sign-out"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"].to_str().unwrap().starts_with("dashlight_session=; "));
    server.stop().await;
}
