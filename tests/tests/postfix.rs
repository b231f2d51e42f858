//! The Postfix recipe for bounces (docs/operating.md, "Postfix: bounces to the hook"), followed
//! to the letter with Debian's Postfix on loopback: the worker sends a real email through it to a
//! user that does not exist, Postfix bounces it with a real DSN to the VERP address, the recipe's
//! pipe posts that to `/hooks/email/inbound` with curl as `nobody`, and the delivery becomes
//! `undelivered` and the address suppressed. A recipe that drifts from what works (a token file
//! the pipe's user cannot read, a missing recipient limit) fails here.

use std::time::Duration;

use dashlight_core::{Clock, states::DeliveryStatus};
use dashlight_tests::{
    api::{lesson_start, spawn_api},
    postfix::{self, BOUNCE_DOMAIN, LOCAL_DOMAIN, Postfix, Recipe},
    wait::try_wait_until,
    world::World,
};

const LONG: Duration = Duration::from_secs(120);
const INBOUND: &str = "inbound-token-postfix-0123456789abcdef0123";

#[tokio::test(flavor = "multi_thread")]
async fn a_real_bounce_through_the_documented_postfix_recipe_suppresses_the_address() {
    if let Err(why) = postfix::available() {
        panic!("this test runs Debian's postfix: {why}");
    }
    let recipe = Recipe::from_docs().expect("the recipe in docs/operating.md");
    // The pipe's D flag needs one recipient per delivery: the docs must say so.
    assert!(
        recipe.main_cf.contains("dashlight_destination_recipient_limit = 1"),
        "{}",
        recipe.main_cf
    );

    let mut w = World::start().await;
    w.config.mail_from = "Dashlight School <no-reply@school.example>".into();
    w.config.mail_bounce_domain = BOUNCE_DOMAIN.into();
    w.config.inbound_email_token = Some(INBOUND.into());
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    w.config.public_base_url = api.base.clone();

    let mta = Postfix::start(&w.db.name, &recipe, &api.base, INBOUND).expect("postfix starts");
    // The recipe's token file: readable by the pipe's user (nobody), by no one else but root.
    let meta = std::fs::metadata(mta.token_file()).expect("the token file");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o640);
    let as_nobody = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
        .arg(mta.token_file())
        .output()
        .expect("setpriv");
    assert!(
        String::from_utf8_lossy(&as_nobody.stdout).starts_with(&format!("Authorization: Bearer {INBOUND}")),
        "nobody cannot read the token file: {}",
        String::from_utf8_lossy(&as_nobody.stderr)
    );

    // Email goes through this Postfix; the student's address is a user it does not have.
    w.config.smtp = Some(dashlight_core::config::SmtpConfig {
        url: format!("smtp://{}", mta.smtp_addr),
    });
    let student = w.person("student", "Amelia", None).await;
    let instructor = w.person("instructor", "Ivan", None).await;
    let address = format!("no-such-student@{LOCAL_DOMAIN}");
    for (user, email) in [
        (student.user_id, address.clone()),
        (instructor.user_id, format!("no-such-instructor@{LOCAL_DOMAIN}")),
    ] {
        sqlx::query("UPDATE users SET email = $2 WHERE id = $1")
            .bind(user)
            .bind(email)
            .execute(w.pool())
            .await
            .expect("address");
    }
    let worker = w.spawn_worker(Clock::system());
    let booking = w.book(&student, &instructor, lesson_start(10), chrono::Utc::now()).await;

    let pool = w.pool().clone();
    let outcome = try_wait_until("the bounce makes the confirmation undelivered", LONG, || {
        let pool = pool.clone();
        async move {
            let row: Option<(i64, String, Option<String>)> = sqlx::query_as(
                "SELECT d.id, d.status, d.last_error FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
                  WHERE n.booking_id = $1 AND n.type = 'booking_confirmed' AND d.channel = 'email'",
            )
            .bind(booking.id)
            .fetch_optional(&pool)
            .await?;
            Ok(row.filter(|(_, status, _)| status == DeliveryStatus::Undelivered.as_str()))
        }
    })
    .await;
    let (delivery_id, _, last_error) = match outcome {
        Ok(found) => found,
        Err(e) => {
            let hooks: Vec<(String, Option<String>)> = sqlx::query_as("SELECT verdict, detail FROM inbound_emails ORDER BY id")
                .fetch_all(w.pool())
                .await
                .unwrap_or_default();
            panic!(
                "{e}\ninbound emails: {hooks:?}\ndeliveries: {:?}\npostfix's log:\n{}",
                w.delivery_statuses().await,
                mta.log()
            );
        }
    };
    assert!(last_error.as_deref().is_some_and(|e| e.contains("5.1.1")), "{last_error:?}");

    let verdict: String = sqlx::query_scalar("SELECT verdict FROM inbound_emails WHERE delivery_id = $1")
        .bind(delivery_id)
        .fetch_one(w.pool())
        .await
        .expect("the DSN was recorded");
    assert_eq!(verdict, "bounced");
    let (reason, suppressed_by): (String, Option<i64>) =
        sqlx::query_as("SELECT reason, delivery_id FROM suppressions WHERE channel = 'email' AND target = $1")
            .bind(&address)
            .fetch_one(w.pool())
            .await
            .expect("the address is suppressed");
    assert_eq!((reason.as_str(), suppressed_by), ("bounced", Some(delivery_id)));
    assert!(
        mta.log().contains("relay=dashlight"),
        "the DSN went through the recipe's pipe:\n{}",
        mta.log()
    );

    worker.stop().await.expect("worker stops");
    api.stop().await;
    drop(mta);
}
