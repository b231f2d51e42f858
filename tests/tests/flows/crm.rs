//! CRM: a student user comes with their contact (a lead until they book, then active); leads
//! without a user and staff interactions are recorded through the API.

use chrono::{Duration, Utc};
use serde_json::json;

use crate::{Flow, lesson_start};

#[tokio::test]
async fn students_leads_and_interactions() {
    let f = Flow::start().await;
    let (student_user, student) = f.student("olga").await;
    let (staff, instructor) = f.instructor("sara").await;
    let contact: (String, String, String, Option<String>) =
        sqlx::query_as("SELECT name, contact_type, lead_status, email FROM crm_contacts WHERE user_id = $1")
            .bind(student_user)
            .fetch_one(f.pool())
            .await
            .unwrap();
    assert_eq!(
        contact,
        (
            "olga Learner".into(),
            "student".into(),
            "lead".into(),
            Some("olga@school.test".into())
        )
    );
    assert_eq!(
        f.count(&format!("SELECT count(*) FROM crm_contacts WHERE user_id = {staff}")).await,
        0,
        "instructors are not contacts"
    );
    f.book(student, instructor, lesson_start(3)).await;
    let status: String = sqlx::query_scalar("SELECT lead_status FROM crm_contacts WHERE user_id = $1")
        .bind(student_user)
        .fetch_one(f.pool())
        .await
        .unwrap();
    assert_eq!(status, "active", "a booking makes the lead active");

    let lead = f
        .post(
            "/api/crm/contacts",
            json!({"name": "Oliver Bennett", "email": "oliver@example.com", "phone": "+447700900123", "source": "website"}),
        )
        .await
        .expect(201);
    let lead_id = lead["id"].as_i64().unwrap();
    assert_eq!(
        (lead["contact_type"].clone(), lead["lead_status"].clone(), lead["user_id"].clone()),
        (json!("lead"), json!("lead"), json!(null))
    );
    assert!(lead["last_interaction_at"].is_null());
    f.post("/api/crm/contacts", json!({"name": "Bad Phone", "phone": "07700900123"}))
        .await
        .expect_error(422, "invalid_value", Some("phone"));
    f.post("/api/crm/contacts", json!({"name": "Bad Mail", "email": "nope"}))
        .await
        .expect_error(422, "invalid_value", Some("email"));
    f.post("/api/crm/contacts", json!({"name": "  "}))
        .await
        .expect_error(422, "invalid_value", Some("name"));

    let before = Utc::now();
    let call = f
        .post("/api/crm/interactions", json!({"contact_id": lead_id, "staff_user_id": staff, "interaction_type": "call", "notes": "Wants an intensive course in May."}))
        .await
        .expect(201);
    let at = chrono::DateTime::parse_from_rfc3339(call["interaction_date"].as_str().unwrap()).unwrap();
    assert!(at >= before - Duration::seconds(1));
    assert_eq!(call["contact"]["last_interaction_at"], call["interaction_date"]);
    // A note about an older conversation does not move the contact back in time.
    let old = (Utc::now() - Duration::days(3)).to_rfc3339();
    let note = f
        .post(
            "/api/crm/interactions",
            json!({"contact_id": lead_id, "interaction_type": "note", "interaction_date": old}),
        )
        .await
        .expect(201);
    assert_eq!(note["contact"]["last_interaction_at"], call["interaction_date"]);
    assert_eq!(
        f.count(&format!("SELECT count(*) FROM crm_interactions WHERE contact_id = {lead_id}"))
            .await,
        2
    );
    f.post("/api/crm/interactions", json!({"contact_id": 999999, "interaction_type": "call"}))
        .await
        .expect_error(422, "invalid_value", Some("contact_id"));
    f.post("/api/crm/interactions", json!({"contact_id": lead_id, "interaction_type": "fax"}))
        .await
        .expect_error(422, "invalid_value", Some("interaction_type"));
    f.post(
        "/api/crm/interactions",
        json!({"contact_id": lead_id, "staff_user_id": 999999, "interaction_type": "call"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("staff_user_id"));
    f.post(
        "/api/crm/interactions",
        json!({"contact_id": lead_id, "interaction_type": "call", "interaction_date": "tomorrow"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("interaction_date"));

    let created = f.events("crm_contact_created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["contact_id"], lead_id);
    let recorded = f.events("crm_interaction_recorded").await;
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0]["interaction_type"], "call");
    f.stop().await;
}
