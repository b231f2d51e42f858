//! Driving-test reminders: 7 days and 1 day before, created once, moved or cancelled with the
//! date.

use dashlight_core::{Clock, jobs::PeriodicTask};
use dashlight_tests::world::World;
use dashlight_worker::periodic::Context;
use serde_json::json;

use crate::{assert_renders, notes, run, set_tests, t};

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
        reminders[0].data["test"],
        json!({"date": "2026-03-13T09:14:00+00:00", "days_before": 7})
    );
    // Every notification to a person carries the path of their own page (docs/own-page.md).
    assert!(reminders[0].data["page_path"].as_str().is_some_and(|p| p.starts_with("/me/")));
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
