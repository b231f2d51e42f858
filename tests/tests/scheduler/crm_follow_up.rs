//! CRM follow-ups: one for a lead silent for a week, none for a fresh or recently contacted one.

use chrono::{DateTime, Utc};
use dashlight_core::{Clock, jobs::PeriodicTask};
use dashlight_tests::world::World;
use dashlight_worker::periodic::Context;
use serde_json::{Value, json};

use crate::{assert_renders, notes, run, t};

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
